//! Opening a log directory after a clean stop or a crash.
//!
//! Only the tail is examined, so start-up time does not grow with the data:
//! - sealed segments: from the last index entry that checks out, frames are validated up to
//!   the next segment's base offset (at most one index interval); a mismatch is corruption
//!   in a sealed segment and always an error naming the file and position;
//! - the last segment: from its last good index entry, frames are validated to the first
//!   zero header. Anything else there is a torn or corrupt tail: `TruncateTail` cuts back to
//!   the last whole batch, `Strict` refuses to open. Either way the [`ZERO_AHEAD_BYTES`]
//!   after the end must be zero (a write interrupted by a crash may have left residue
//!   further on); recovery clears them so residue can never pass for data later.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{LogConfig, RecoveryMode, ZERO_AHEAD_BYTES};
use crate::error::{FormatError, IoContext, Result, StorageError};
use crate::extents;
use crate::format;
use crate::index::{self, IndexEntry};
use crate::log::LogShared;
use crate::meta::{self, EpochHistory};
use crate::producers::{self, Producers};
use crate::sealed_record;
use crate::segment::{self, open_rw, ScanStop, SegmentView};
use crate::spare;

/// Writer-side state of a recovered log, handed to the storage thread.
#[derive(Debug)]
pub(crate) struct RecoveredLog {
    pub shared: Arc<LogShared>,
    pub seg_file: File,
    pub idx_file: File,
    pub write_pos: u64,
    pub idx_entries_on_disk: u64,
    pub last_index_pos: Option<u64>,
    pub spare: Option<PathBuf>,
    /// The active segment was zero-filled (false: only allocated, see
    /// `Storage::create_log_for_import`). A hint for speed, never for correctness: an
    /// allocated segment reads as zeros too. After a restart, asked of its last block's
    /// extent (taken as true where the filesystem cannot say).
    pub active_zeroed: bool,
    /// Idempotent appends' producers (see `producers`).
    pub producers: Producers,
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
/// vouches for the active segment (see `sealed_record`).
pub(crate) fn recover_log(
    id: u64,
    name: &str,
    dir: &Path,
    mode: RecoveryMode,
    fresh: bool,
) -> Result<RecoveredLog> {
    let config: LogConfig = meta::read_log_config(dir)?;
    let mut epochs = EpochHistory::load(dir)?;
    // Before the listing, which removes `.tmp` files, the record among them.
    let record = sealed_record::take(dir)?;
    let mut bases = list_segments(dir)?;
    if bases.is_empty() {
        // A log always has an active segment; a crash during creation can leave none.
        let spare = spare::prepare(dir, config.segment_bytes, None)?;
        let path = dir.join(segment::segment_file_name(0));
        fs::rename(&spare, &path).at(&path)?;
        crate::crashsafe::fsync_dir(dir)?;
        bases.push(0);
    }
    let last = bases.len() - 1;
    let record = record.filter(|r| sealed_record::matches(r, &bases));
    let mut views = Vec::with_capacity(bases.len());
    for (i, &base) in bases.iter().enumerate() {
        let path = dir.join(segment::segment_file_name(base));
        let file = File::open(&path).at(&path)?;
        let view = SegmentView::map(&path, &file, base)?;
        if i == last {
            views.push(view);
            break;
        }
        let idx_path = dir.join(segment::index_file_name(base));
        let unchanged = |s: &sealed_record::Sealed| {
            s.len <= view.capacity()
                && sealed_record::identity(&file).is_ok_and(|id| id == (s.ino, s.mtime_ns))
        };
        if let Some(s) = record.as_ref().map(|r| r.sealed[i]).filter(unchanged) {
            // As a clean shutdown left it: nothing to read now.
            view.defer_index(idx_path, config.index_interval_bytes);
            view.publish(s.len, s.next, s.last_ts_us, &[]);
            views.push(view);
            continue;
        }
        let entries = view.trusted_index(&idx_path);
        let from = entries.last().copied().unwrap_or(IndexEntry {
            offset: base,
            pos: 0,
        });
        let next_base = bases[i + 1];
        let s = segment::scan(
            view.raw(),
            u64::from(from.pos),
            from.offset,
            Some(next_base),
            config.index_interval_bytes,
            Some(u64::from(from.pos)),
        );
        if s.stop != ScanStop::Target {
            let (position, reason) = match s.stop {
                ScanStop::Invalid { pos, reason } => (pos, reason),
                _ => (
                    s.end_pos,
                    FormatError::OffsetMismatch {
                        expected: next_base,
                        found: s.next_offset,
                    },
                ),
            };
            return Err(StorageError::Corrupt {
                path,
                position,
                reason,
            });
        }
        let mut all = entries;
        all.extend(s.entries);
        view.set_index(all);
        // The last scanned frame is the segment's last; its time dates the segment.
        let last_ts = last_frame_ts(&view, s.end_pos, from).unwrap_or(0);
        view.publish(s.end_pos, next_base, last_ts, &[]);
        views.push(view);
    }

    // The active segment.
    let base = bases[last];
    let seg_path = dir.join(segment::segment_file_name(base));
    let idx_path = dir.join(segment::index_file_name(base));
    let view = views.pop().expect("last segment");
    let entries = view.trusted_index(&idx_path);
    let from = entries.last().copied().unwrap_or(IndexEntry {
        offset: base,
        pos: 0,
    });
    let s = segment::scan(
        view.raw(),
        u64::from(from.pos),
        from.offset,
        None,
        config.index_interval_bytes,
        entries.last().map(|e| u64::from(e.pos)),
    );
    let seg_file = open_rw(&seg_path)?;
    // A clean shutdown vouched for this file's tail, and the file is as it left it: only
    // zeros past the end, so the zero-ahead check need not read them.
    let clean_tail = record.as_ref().and_then(|r| r.active).is_some_and(|a| {
        a.len == s.end_pos
            && a.next == s.next_offset
            && sealed_record::identity(&seg_file).is_ok_and(|id| id == (a.ino, a.mtime_ns))
    });
    // A segment placed only allocated (a catch-up's, or a roll's that found no spare)
    // keeps its unwritten tail across a restart: without this, it would take appends at
    // the slower rate until its roll instead of giving way to a zeroed spare.
    let active_zeroed = extents::zero_filled(&seg_file, view.capacity());
    let end = s.end_pos;
    let zero_end = (end + ZERO_AHEAD_BYTES).min(view.capacity());
    let residue = if fresh || clean_tail {
        None
    } else {
        first_nonzero(&view.raw()[end as usize..zero_end as usize])
    };
    match (&s.stop, residue) {
        (ScanStop::Zero | ScanStop::Full, None) => {}
        (stop, _) => {
            let (position, reason) = match stop {
                ScanStop::Invalid { pos, reason } => (*pos, reason.clone()),
                _ => (end + residue.unwrap_or(0) as u64, FormatError::BadMagic(0)),
            };
            if mode == RecoveryMode::Strict {
                return Err(StorageError::Corrupt {
                    path: seg_path,
                    position,
                    reason,
                });
            }
            tracing::warn!(
                log = name, segment = %seg_path.display(), position, %reason,
                "torn or corrupt tail: truncating to the last whole batch at byte {end}"
            );
            let zeros = vec![0u8; (zero_end - end) as usize];
            seg_file.write_all_at(&zeros, end).at(&seg_path)?;
            seg_file.sync_data().at(&seg_path)?;
        }
    }
    let mut all = entries;
    all.extend(s.entries);
    let idx_file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&idx_path)
        .at(&idx_path)?;
    idx_file
        .write_all_at(&index::encode(base, &all), 0)
        .at(&idx_path)?;
    idx_file
        .set_len((all.len() * index::ENTRY_BYTES) as u64)
        .at(&idx_path)?;
    let last_ts = if end > 0 {
        last_frame_ts(&view, end, from).unwrap_or(0)
    } else {
        0
    };
    let next = s.next_offset;
    let last_index_pos = all.last().map(|e| u64::from(e.pos));
    let idx_entries_on_disk = all.len() as u64;
    view.set_index(all);
    view.publish(end, next, last_ts, &[]);
    views.push(view);

    // Epochs that start past the end were never written to (the tail was cut).
    let before = epochs.clone();
    epochs.truncate(next + 1);
    if epochs != before {
        epochs.save(dir)?;
    }
    let spare = spare::collect_spares(dir, config.segment_bytes)?;
    let producers = producers::rebuild(dir, views.last().expect("the active segment"), next);
    let shared = Arc::new(LogShared::new(
        id,
        name.to_owned(),
        dir.to_owned(),
        config,
        views.into_iter().map(Arc::new).collect(),
        epochs,
        next,
    ));
    Ok(RecoveredLog {
        shared,
        seg_file,
        idx_file,
        write_pos: end,
        idx_entries_on_disk,
        last_index_pos,
        spare,
        active_zeroed,
        producers,
    })
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
