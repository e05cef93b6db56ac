//! Opening a log directory after a clean stop or a crash.
//!
//! Only the tail is examined, so start-up time does not grow with the data:
//! - sealed segments: from the last index entry that checks out, frames are validated up to
//!   the next segment's base offset (at most one index interval);
//! - the last segment: from its last good index entry, frames are validated to the first
//!   zero header or durable mark.
//!
//! A bad frame is one of two things. Past what the node can prove it synced it is a torn
//! tail: `TruncateTail` cuts back to the last whole batch, `Strict` refuses to open. Below
//! that point it is damage, never cut ([`OnCorruption`]): sealed segments were synced
//! whole, and in the active segment the proof is the durable mark after the frames (see
//! [`format::DurableMark`]) or a clean shutdown's record. Damage is recorded as a hole
//! (`damage`) and the walk goes on where valid frames resume, so everything around it
//! stays readable; a log whose end is damaged takes no writes until it is repaired.
//! Past the end the [`ZERO_AHEAD_BYTES`] must be zero (a write interrupted by a crash may
//! have left residue further on); recovery clears them so residue can never pass for data
//! later.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::catchup;
use crate::config::{LogConfig, OnCorruption, RecoveryMode, ZERO_AHEAD_BYTES};
use crate::damage::{self, Hole};
use crate::error::{FormatError, IoContext, Result, StorageError};
use crate::format::{self, DurableMark, MARK_BYTES};
use crate::index::{self, IndexEntry};
use crate::io::MetaIo;
use crate::log::LogShared;
use crate::meta::{self, EpochHistory};
use crate::producers::{self, Producers};
use crate::sealed_record;
use crate::segment::{self, open_rw, Scan, ScanStop, SegmentView};
use crate::spare;

/// Writer-side state of a recovered log, handed to the storage thread.
#[derive(Debug)]
pub(crate) struct RecoveredLog {
    pub shared: Arc<LogShared>,
    pub write_pos: u64,
    pub idx_entries_on_disk: u64,
    pub last_index_pos: Option<u64>,
    pub spare: Option<PathBuf>,
    /// The active segment was zero-filled (false: only allocated, see
    /// `Storage::create_log_for_import`). A hint for speed, never for correctness: an
    /// allocated segment reads as zeros too. After a restart, asked of its last block's
    /// extent (taken as true where the filesystem cannot say).
    pub active_zeroed: bool,
    /// The log's end is damaged at this offset (and may hold data up to the byte
    /// position): no writes until a repair.
    pub damaged_tail: Option<(u64, u64)>,
    /// Idempotent appends' producers (see `producers`).
    pub producers: Producers,
}

/// How recovery treats what it finds: torn tails by `mode`, damage by `on_corruption`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Policy {
    pub mode: RecoveryMode,
    pub on_corruption: OnCorruption,
}

fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let mut bases = Vec::new();
    for entry in fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(base) = segment::parse_segment_name(&name) {
            bases.push(base);
        } else if name.ends_with(".tmp") {
            let _ = fs::remove_file(entry.path());
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// First non-zero byte in `bytes`, if any.
fn first_nonzero(bytes: &[u8]) -> Option<usize> {
    // Word-wise first: this runs over up to ZERO_AHEAD_BYTES at every open.
    let (head, words, _) = unsafe { bytes.align_to::<u64>() };
    if let Some(i) = head.iter().position(|&b| b != 0) {
        return Some(i);
    }
    let w = words.iter().position(|&w| w != 0);
    let from = head.len() + w.unwrap_or(words.len()) * 8;
    bytes[from..].iter().position(|&b| b != 0).map(|i| from + i)
}

/// `fresh`: the log was just created (its segment is a zeroed spare, nothing was ever
/// written): the zero-ahead check is skipped, as it would read tens of MiB of zeros that
/// were written past the page cache. It is skipped too where a clean shutdown's record
/// vouches for the active segment (see `sealed_record`). Files change through `io`, whose
/// `sync_at_open` makes the active segment's data durable where the node cannot prove it
/// is (see `recover_active`).
pub(crate) fn recover_log(
    id: u64,
    name: &str,
    dir: &Path,
    policy: Policy,
    fresh: bool,
    io: &dyn MetaIo,
) -> Result<RecoveredLog> {
    let (config, incarnation): (LogConfig, u64) = meta::read_log_meta(dir)?;
    let mut epochs = EpochHistory::load(dir)?;
    // Before the listing, which removes `.tmp` files, the record among them.
    let record = sealed_record::take(io, dir)?;
    let bases = segment_bases(io, dir, &config)?;
    let record = record.filter(|r| sealed_record::matches(r, &bases));
    let (last, sealed) = bases.split_last().expect("a log has a segment");
    let mut views = Vec::with_capacity(bases.len());
    for (i, &base) in sealed.iter().enumerate() {
        let recorded = record.as_ref().map(|r| r.sealed[i]);
        let next_base = bases[i + 1];
        views.push(open_sealed(
            dir, base, next_base, recorded, &config, policy,
        )?);
    }
    let active = record.as_ref().and_then(|r| r.active);
    let (view, a) = open_active(dir, *last, active, &config, policy, fresh, io)?;
    views.push(view);
    // Epochs that start past the end were never written to (the tail was cut). A damaged
    // end keeps them: a repair checks the records it gets back against them.
    if a.damaged.is_none() {
        let before = epochs.clone();
        epochs.truncate(a.next + 1);
        if epochs != before {
            epochs.save(io, dir)?;
        }
    }
    let spare = spare::collect_spares(dir, config.segment_bytes)?;
    let producers = producers::rebuild(dir, views.last().expect("the active segment"), a.next);
    let shared = Arc::new(LogShared::new(
        id,
        name.to_owned(),
        dir.to_owned(),
        config,
        views.into_iter().map(Arc::new).collect(),
        epochs,
        a.next,
    ));
    shared
        .incarnation
        .store(incarnation, std::sync::atomic::Ordering::Release);
    Ok(RecoveredLog {
        shared,
        write_pos: a.end,
        idx_entries_on_disk: a.idx_entries_on_disk,
        last_index_pos: a.last_index_pos,
        spare,
        active_zeroed: a.active_zeroed,
        damaged_tail: a.damaged,
        producers,
    })
}

/// The base offsets of the log's segments, oldest first. A log always has an active
/// segment; a crash during its creation can leave none, and one is made.
fn segment_bases(io: &dyn MetaIo, dir: &Path, config: &LogConfig) -> Result<Vec<u64>> {
    let bases = list_segments(dir)?;
    if !bases.is_empty() {
        return Ok(bases);
    }
    let spare = spare::prepare(io, dir, config.first_segment_bytes(), None)?;
    let path = dir.join(segment::segment_file_name(0));
    io.rename(&spare, &path).at(&path)?;
    crate::crashsafe::sync_dir_with(io, dir)?;
    Ok(vec![0])
}

/// The active segment as recovery leaves it, for the writer.
struct OpenedActive {
    end: u64,
    next: u64,
    idx_entries_on_disk: u64,
    last_index_pos: Option<u64>,
    active_zeroed: bool,
    damaged: Option<(u64, u64)>,
}

/// Open the active segment `base`: its tail recovered (see [`recover_active`]), its index
/// rewritten to the entries that check out, its view publishing the end.
fn open_active(
    dir: &Path,
    base: u64,
    recorded: Option<sealed_record::Sealed>,
    config: &LogConfig,
    policy: Policy,
    fresh: bool,
    io: &dyn MetaIo,
) -> Result<(SegmentView, OpenedActive)> {
    let seg_path = dir.join(segment::segment_file_name(base));
    let file = File::open(&seg_path).at(&seg_path)?;
    let view = SegmentView::map(&seg_path, &file, base)?;
    let tail = recover_active(&view, &seg_path, recorded, config, policy, fresh, io)?;
    drop(tail.seg_file);
    let idx_path = dir.join(segment::index_file_name(base));
    let idx_file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&idx_path)
        .at(&idx_path)?;
    let all = tail.entries;
    idx_file
        .write_all_at(&index::encode(base, &all), 0)
        .at(&idx_path)?;
    idx_file
        .set_len((all.len() * index::ENTRY_BYTES) as u64)
        .at(&idx_path)?;
    let (end, next) = (tail.end, tail.next);
    let last_ts = match end {
        0 => 0,
        _ => last_frame_ts(&view, end, tail.from).unwrap_or(0),
    };
    let opened = OpenedActive {
        end,
        next,
        idx_entries_on_disk: all.len() as u64,
        last_index_pos: all.last().map(|e| u64::from(e.pos)),
        active_zeroed: tail.active_zeroed,
        damaged: tail.damaged,
    };
    view.set_index(all);
    view.publish(end, next, last_ts, &[]);
    Ok((view, opened))
}

/// Where the walk of a segment's tail starts: its last trusted index entry.
fn walk_start(view: &SegmentView, idx_path: &Path) -> (Vec<IndexEntry>, IndexEntry) {
    let entries = view.trusted_index(idx_path);
    let from = entries.last().copied().unwrap_or(IndexEntry {
        offset: view.base_offset,
        pos: 0,
    });
    (entries, from)
}

/// A sealed segment: as a clean shutdown recorded it (nothing read), or its tail walked to
/// the next segment's base. Sealed segments were synced whole, so anything wrong in them
/// is damage.
fn open_sealed(
    dir: &Path,
    base: u64,
    next_base: u64,
    recorded: Option<sealed_record::Sealed>,
    config: &LogConfig,
    policy: Policy,
) -> Result<SegmentView> {
    let path = dir.join(segment::segment_file_name(base));
    let file = File::open(&path).at(&path)?;
    let view = SegmentView::map(&path, &file, base)?;
    let idx_path = dir.join(segment::index_file_name(base));
    let unchanged = |s: &sealed_record::Sealed| {
        s.len <= view.capacity()
            && sealed_record::identity(&file).is_ok_and(|id| id == (s.ino, s.mtime_ns))
    };
    if let Some(s) = recorded.filter(unchanged) {
        // As a clean shutdown left it: nothing to read now.
        view.defer_index(idx_path, config.index_interval_bytes);
        view.publish(s.len, s.next, s.last_ts_us, &[]);
        return Ok(view);
    }
    let (entries, from) = walk_start(&view, &idx_path);
    let w = walk(
        &view,
        &path,
        from,
        Some(next_base),
        config,
        u64::MAX,
        policy,
    )?;
    let mut len = w.scan.end_pos;
    if w.scan.stop != ScanStop::Target && w.damaged.is_none() {
        // The data stops short of the next segment: the rest of its records are missing.
        let hole = Hole {
            pos: w.scan.end_pos,
            first_offset: w.scan.next_offset,
            resume: None,
            extent_end: damage::extent_end(view.raw(), w.scan.end_pos),
            reason: FormatError::OffsetMismatch {
                expected: next_base,
                found: w.scan.next_offset,
            },
        };
        damage_found(&view, &hole, policy)?;
        len = hole.extent_end;
        view.add_hole(hole);
    }
    if let Some(hole) = &w.damaged {
        len = hole.extent_end;
    }
    let mut all = entries;
    all.extend(w.scan.entries);
    view.set_index(all);
    // The last scanned frame is the segment's last; its time dates the segment.
    let last_ts = last_frame_ts(&view, w.scan.end_pos, w.from).unwrap_or(0);
    view.publish(len.max(w.scan.end_pos), next_base, last_ts, &[]);
    Ok(view)
}

/// The walk of a segment's tail: the last valid frames (`scan`, its entries from every
/// stretch), the holes passed (recorded in the view) and, if it ended in damage with no
/// valid frame after it, that damage.
struct Walk {
    scan: Scan,
    /// Where the last stretch of valid frames began (to date the last frame).
    from: IndexEntry,
    damaged: Option<Hole>,
}

/// Validate frames from `from`; a bad frame below `proven` (bytes the node synced) is
/// damage: recorded as a hole, and the walk resumes where valid frames do. A bad frame at
/// or past `proven` ends the walk (a torn tail, the caller's to judge).
fn walk(
    view: &SegmentView,
    path: &Path,
    mut from: IndexEntry,
    stop_at: Option<u64>,
    config: &LogConfig,
    proven: u64,
    policy: Policy,
) -> Result<Walk> {
    let raw = view.raw();
    let mut entries = Vec::new();
    loop {
        let mut s = segment::scan(
            raw,
            u64::from(from.pos),
            from.offset,
            stop_at,
            config.index_interval_bytes,
            entries
                .last()
                .map(|e: &IndexEntry| u64::from(e.pos))
                .or(Some(u64::from(from.pos))),
        );
        entries.append(&mut s.entries);
        let (pos, reason) = match &s.stop {
            ScanStop::Invalid { pos, reason } if *pos < proven => (*pos, reason.clone()),
            _ => {
                s.entries = entries;
                return Ok(Walk {
                    scan: s,
                    from,
                    damaged: None,
                });
            }
        };
        let resume = damage::resume_after(
            raw,
            view.base_offset,
            pos,
            s.next_offset,
            view.capacity(),
            stop_at,
        );
        let hole = Hole {
            pos,
            first_offset: s.next_offset,
            resume,
            extent_end: resume.map_or_else(|| damage::extent_end(raw, pos), |(p, _)| p),
            reason,
        };
        damage_found(view, &hole, policy).map_err(|e| match e {
            StorageError::Corrupt {
                position, reason, ..
            } => StorageError::Corrupt {
                path: path.to_owned(),
                position,
                reason,
            },
            e => e,
        })?;
        view.add_hole(hole.clone());
        match resume {
            Some((p, o)) => {
                from = IndexEntry {
                    offset: o,
                    pos: p as u32,
                }
            }
            None => {
                s.entries = entries;
                return Ok(Walk {
                    scan: s,
                    from,
                    damaged: Some(hole),
                });
            }
        }
    }
}

/// Say so loudly; refuse to open where the policy says so.
fn damage_found(view: &SegmentView, hole: &Hole, policy: Policy) -> Result<()> {
    if policy.on_corruption == OnCorruption::Refuse || policy.mode == RecoveryMode::Strict {
        return Err(StorageError::Corrupt {
            path: view.path.clone(),
            position: hole.pos,
            reason: hole.reason.clone(),
        });
    }
    tracing::error!(
        segment = %view.path.display(), position = hole.pos, offset = hole.first_offset,
        resume = ?hole.resume, reason = %hole.reason,
        "damaged data: a bad frame where the node had synced frames; nothing is cut, reads \
         of these records fail with DATA_LOSS until they are repaired from a peer"
    );
    Ok(())
}

/// What recovery found of the active segment.
struct ActiveTail {
    seg_file: File,
    entries: Vec<IndexEntry>,
    from: IndexEntry,
    end: u64,
    next: u64,
    active_zeroed: bool,
    damaged: Option<(u64, u64)>,
}

/// How many bytes of the active segment the node can prove it synced: what its durable
/// mark says (found after the last valid frame, or past a bad one), or a clean shutdown's
/// record of the same file.
fn proven_len(
    view: &SegmentView,
    first: &Scan,
    active: Option<sealed_record::Sealed>,
    file: &File,
) -> u64 {
    let raw = view.raw();
    let mark = match &first.stop {
        ScanStop::Zero => DurableMark::read_at(raw, first.end_pos, view.base_offset),
        ScanStop::Invalid { pos, .. } => DurableMark::find_from(raw, *pos, view.base_offset),
        _ => None,
    };
    let same_file = |a: &sealed_record::Sealed| {
        a.base == view.base_offset
            && sealed_record::identity(file).is_ok_and(|(ino, _)| ino == a.ino)
    };
    let recorded = active.filter(same_file).map_or(0, |a| a.len);
    mark.map_or(0, |m| m.synced_len).max(recorded)
}

/// The active segment: walk its tail, tell damage from a torn tail, cut a torn tail (or
/// refuse, `Strict`) and clear residue past the end. Frames kept past what the node can
/// prove it synced are synced before they count as durable: after a crash they were read
/// through the page cache and may never have reached the disk. Published as durable
/// without it, a power loss could take records readers and replicas were given, and the
/// durable mark of the next write would claim them, so that losing them would read as
/// damage.
fn recover_active(
    view: &SegmentView,
    seg_path: &Path,
    active: Option<sealed_record::Sealed>,
    config: &LogConfig,
    policy: Policy,
    fresh: bool,
    io: &dyn MetaIo,
) -> Result<ActiveTail> {
    let idx_path = seg_path.with_extension("idx");
    let (mut entries, from) = walk_start(view, &idx_path);
    let seg_file = open_rw(seg_path)?;
    let first = segment::scan(
        view.raw(),
        u64::from(from.pos),
        from.offset,
        None,
        config.index_interval_bytes,
        None,
    );
    let proven = proven_len(view, &first, active, &seg_file);
    let w = walk(view, seg_path, from, None, config, proven, policy)?;
    // A segment placed only allocated (a catch-up's, or a roll's that found no spare)
    // keeps its unwritten tail across a restart: without this, it would take appends at
    // the slower rate until its roll instead of giving way to a zeroed spare.
    let active_zeroed = !catchup::allocated_only(&seg_file, view.capacity());
    let (end, next) = (w.scan.end_pos, w.scan.next_offset);
    entries.extend(w.scan.entries.iter().copied());
    if let Some(hole) = &w.damaged {
        return Ok(ActiveTail {
            seg_file,
            entries,
            from: w.from,
            end: hole.pos,
            next: hole.first_offset,
            active_zeroed,
            damaged: Some((hole.first_offset, hole.extent_end)),
        });
    }
    let zeros = zero_ahead(view, &seg_file, active, end, next, fresh);
    let tail = Tail {
        view,
        path: seg_path,
        file: &seg_file,
        end,
        next,
        proven,
    };
    settle_tail(&tail, &w.scan.stop, &zeros, policy, io)?;
    Ok(ActiveTail {
        seg_file,
        entries,
        from: w.from,
        end,
        next,
        active_zeroed,
        damaged: None,
    })
}

/// The bytes past the active segment's end that must be zeros (`from..end`), and the
/// first that is not (`residue`).
struct ZeroAhead {
    from: u64,
    end: u64,
    residue: Option<u64>,
}

/// What lies past the end `end` (record `next`) of the active segment. Not read where a
/// fresh log, or a clean shutdown's record of this very file ending there, vouches for
/// the zeros.
fn zero_ahead(
    view: &SegmentView,
    file: &File,
    active: Option<sealed_record::Sealed>,
    end: u64,
    next: u64,
    fresh: bool,
) -> ZeroAhead {
    let clean_tail = active.is_some_and(|a| {
        a.len == end
            && a.next == next
            && sealed_record::identity(file).is_ok_and(|id| id == (a.ino, a.mtime_ns))
    });
    let marked = DurableMark::read_at(view.raw(), end, view.base_offset).is_some();
    let from = if marked { end + MARK_BYTES as u64 } else { end };
    let zero_end = (end + ZERO_AHEAD_BYTES).min(view.capacity());
    let residue = if fresh || clean_tail || from >= zero_end {
        None
    } else {
        first_nonzero(&view.raw()[from as usize..zero_end as usize]).map(|i| from + i as u64)
    };
    ZeroAhead {
        from,
        end: zero_end,
        residue,
    }
}

/// The active segment's tail as the walk left it.
struct Tail<'a> {
    view: &'a SegmentView,
    path: &'a Path,
    file: &'a File,
    end: u64,
    next: u64,
    /// Bytes the node can prove it synced.
    proven: u64,
}

/// A clean end past what was proven synced is synced now; a bad frame or residue past
/// the end is a torn tail: cut (`TruncateTail`) or refused (`Strict`).
fn settle_tail(
    t: &Tail,
    stop: &ScanStop,
    zeros: &ZeroAhead,
    policy: Policy,
    io: &dyn MetaIo,
) -> Result<()> {
    let (end, proven, path) = (t.end, t.proven, t.path);
    let (position, reason) = match (stop, zeros.residue) {
        (ScanStop::Zero | ScanStop::Full, None) if end > proven => {
            tracing::info!(
                segment = %path.display(), proven, end,
                "frames past what was synced before the stop: syncing them"
            );
            return io.sync_at_open(t.file).at(path);
        }
        (ScanStop::Zero | ScanStop::Full, None) => return Ok(()),
        (ScanStop::Invalid { pos, reason }, _) => (*pos, reason.clone()),
        (_, residue) => (residue.unwrap_or(zeros.from), FormatError::BadMagic(0)),
    };
    if policy.mode == RecoveryMode::Strict {
        return Err(StorageError::Corrupt {
            path: path.to_owned(),
            position,
            reason,
        });
    }
    tracing::warn!(
        segment = %path.display(), position, proven, %reason,
        "torn tail past what was synced: truncating to the last whole batch at byte {end}"
    );
    cut_tail(t.view, t.file, path, end, t.next, zeros.end, io)
}

/// Zero a torn tail from `end` to `zero_end` and leave a durable mark claiming the frames
/// before it, which the sync that follows makes true.
fn cut_tail(
    view: &SegmentView,
    file: &File,
    path: &Path,
    end: u64,
    next: u64,
    zero_end: u64,
    io: &dyn MetaIo,
) -> Result<()> {
    let mut zeros = vec![0u8; (zero_end - end) as usize];
    if end + MARK_BYTES as u64 <= zero_end {
        let mark = DurableMark {
            segment_base: view.base_offset,
            own_pos: end,
            synced_len: end,
            synced_next: next,
        };
        zeros[..MARK_BYTES].copy_from_slice(&mark.encode());
    }
    file.write_all_at(&zeros, end).at(path)?;
    io.sync_at_open(file).at(path)
}

/// Timestamp of the frame that ends at `end`, found by walking from a trusted entry.
fn last_frame_ts(view: &SegmentView, end: u64, from: IndexEntry) -> Option<u64> {
    let mut pos = u64::from(from.pos);
    let mut ts = None;
    while pos < end {
        let h = format::peek_header(&view.raw()[pos as usize..]).ok()?;
        ts = Some(h.last_ts_us);
        pos += u64::from(h.frame_len);
    }
    ts
}
