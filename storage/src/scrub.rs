//! Scrub: every sealed segment is read again from the disk (O_DIRECT where the filesystem
//! allows it, so the page cache cannot hide what the disk holds) at a bounded rate, every
//! frame's CRC and offset checked and every index entry matched to a frame start. Damage
//! is recorded as a hole (see `damage`), so reads report it and a repair can find it; an
//! index entry that points nowhere is dropped by rewriting the index from the frames.
//! One thread per node; a pass starts every `scrub_interval`, and `Storage::scrub_now`
//! runs one at once (unthrottled) for one log or all.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::damage::{self, Hole};
use crate::error::FormatError;
use crate::format::{self, HEADER_BYTES};
use crate::index::{self, IndexEntry};
use crate::io::aligned::{Aligned, ALIGN};
use crate::log::LogShared;
use crate::segment::{self, SegmentView};
use crate::storage::Registry;

/// Bytes read per request to the disk.
const CHUNK_BYTES: usize = 1 << 20;
const _: () = assert!(CHUNK_BYTES % ALIGN == 0);

/// What scrubbing has done since the node started (status and metrics).
#[derive(Debug, Default)]
pub struct ScrubStats {
    pub passes: AtomicU64,
    pub segments: AtomicU64,
    pub bytes: AtomicU64,
    pub damage_found: AtomicU64,
    pub index_rebuilt: AtomicU64,
    /// Unix ms when the last whole pass ended (0: none yet).
    pub last_pass_end_ms: AtomicU64,
    pub running: AtomicBool,
}

/// What one scrub found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubReport {
    pub segments: u64,
    pub bytes: u64,
    /// (log, segment base, damaged run) for each run found by this scrub.
    pub damage: Vec<(String, u64, Hole)>,
    /// Segments whose index pointed at something other than a frame start (rewritten).
    pub index_rebuilt: u64,
}

pub(crate) enum Request {
    Now {
        log: Option<String>,
        reply: tokio::sync::oneshot::Sender<ScrubReport>,
    },
    Stop,
}

/// The scrub thread's settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schedule {
    /// Bytes per second of a background pass (0: no background passes).
    pub rate: u64,
    pub interval: Duration,
}

pub(crate) fn spawn(
    registry: Arc<Registry>,
    schedule: Schedule,
    stats: Arc<ScrubStats>,
    stopping: Arc<AtomicBool>,
) -> std::io::Result<(Sender<Request>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("spool-scrub".into())
        .spawn(move || run(&registry, schedule, &stats, &rx, &stopping))?;
    Ok((tx, thread))
}

fn run(
    registry: &Registry,
    schedule: Schedule,
    stats: &ScrubStats,
    rx: &Receiver<Request>,
    stopping: &AtomicBool,
) {
    let mut next_pass = Instant::now() + schedule.interval;
    loop {
        let wait = next_pass.saturating_duration_since(Instant::now());
        let request = match rx.recv_timeout(wait) {
            Ok(r) => Some(r),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        match request {
            Some(Request::Stop) => return,
            Some(Request::Now { log, reply }) => {
                let stop = || false;
                let logs = registry
                    .all()
                    .into_iter()
                    .filter(|l| log.as_ref().is_none_or(|n| *n == l.name));
                let _ = reply.send(pass(logs, None, stats, &stop));
            }
            None if schedule.rate > 0 => {
                let stop = || stopping.load(Ordering::Acquire);
                let report = pass(
                    registry.all().into_iter(),
                    Some(schedule.rate),
                    stats,
                    &stop,
                );
                tracing::info!(
                    segments = report.segments,
                    bytes = report.bytes,
                    damage = report.damage.len(),
                    "scrub pass done"
                );
                next_pass = Instant::now() + schedule.interval;
            }
            None => next_pass = Instant::now() + schedule.interval,
        }
    }
}

/// Scrub the sealed segments of `logs`, at `rate` bytes per second if given.
fn pass(
    logs: impl Iterator<Item = Arc<LogShared>>,
    rate: Option<u64>,
    stats: &ScrubStats,
    stop: &dyn Fn() -> bool,
) -> ScrubReport {
    stats.running.store(true, Ordering::Release);
    let mut report = ScrubReport::default();
    let mut throttle = Throttle::new(rate);
    'logs: for log in logs {
        let segs = log.segments.read().clone();
        for pair in segs.windows(2) {
            if stop() || log.deleted.load(Ordering::Acquire) {
                break 'logs;
            }
            let found = scrub_segment(&log, &pair[0], pair[1].base_offset, &mut throttle, stats);
            report.segments += 1;
            report.bytes += pair[0].durable_len();
            report.index_rebuilt += u64::from(found.index_rebuilt);
            for hole in found.holes {
                report
                    .damage
                    .push((log.name.clone(), pair[0].base_offset, hole));
            }
        }
    }
    if !stop() {
        stats.passes.fetch_add(1, Ordering::Relaxed);
        stats.last_pass_end_ms.store(unix_ms(), Ordering::Relaxed);
        metrics::counter!("spool_scrub_passes_total").increment(1);
    }
    stats.running.store(false, Ordering::Release);
    report
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Holds a pass to its rate: after each chunk, sleeps until the bytes read so far are not
/// ahead of `rate` per second.
struct Throttle {
    rate: Option<u64>,
    started: Instant,
    bytes: u64,
}

impl Throttle {
    fn new(rate: Option<u64>) -> Self {
        Throttle {
            rate: rate.filter(|&r| r > 0),
            started: Instant::now(),
            bytes: 0,
        }
    }

    fn read(&mut self, bytes: u64) {
        self.bytes += bytes;
        if let Some(rate) = self.rate {
            let due = Duration::from_secs_f64(self.bytes as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(self.started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
}

/// What scrubbing one segment found.
#[derive(Debug, Default)]
struct Found {
    holes: Vec<Hole>,
    index_rebuilt: bool,
}

/// The segment's bytes `[0, len)`, read from the disk a chunk at a time.
struct DiskReader {
    file: File,
    direct: bool,
    buf: Aligned,
    len: u64,
}

impl DiskReader {
    fn open(seg: &SegmentView) -> std::io::Result<Self> {
        let direct = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&seg.path);
        let (file, direct) = match direct {
            Ok(f) => (f, true),
            // Filesystems without O_DIRECT (tmpfs before Linux 6.6): through the cache.
            Err(_) => (File::open(&seg.path)?, false),
        };
        Ok(DiskReader {
            file,
            direct,
            buf: Aligned::new(CHUNK_BYTES),
            len: seg.durable_len(),
        })
    }

    /// Append the bytes `[at, at + CHUNK_BYTES)` (within `len`) to `out`; `at` aligned.
    fn read_chunk(&mut self, at: u64, out: &mut Vec<u8>) -> std::io::Result<usize> {
        let want = (self.len - at).min(CHUNK_BYTES as u64) as usize;
        let whole = if self.direct {
            want.next_multiple_of(ALIGN)
        } else {
            want
        };
        let buf = &mut self.buf.bytes()[..whole];
        let mut got = 0;
        while got < want {
            match self.file.read_at(&mut buf[got..], at + got as u64)? {
                0 => break,
                n => got += n,
            }
        }
        let n = got.min(want);
        out.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

/// Check every frame of a sealed segment against what the disk holds.
fn scrub_segment(
    log: &LogShared,
    seg: &SegmentView,
    next_base: u64,
    throttle: &mut Throttle,
    stats: &ScrubStats,
) -> Found {
    let mut found = Found::default();
    let Ok(mut disk) = DiskReader::open(seg) else {
        return found; // removed meanwhile (retention, a cut): nothing to check
    };
    let len = disk.len;
    let (mut window, mut window_at, mut read_to) = (Vec::new(), 0u64, 0u64);
    let (mut pos, mut expected) = (0u64, seg.base_offset);
    let mut starts: Vec<IndexEntry> = Vec::new();
    while pos < len && expected < next_base {
        // Enough bytes for the next frame in the window (its header first, then its length).
        let need = match format::peek_header(&window[(pos - window_at) as usize..]) {
            Ok(h) => u64::from(h.frame_len),
            Err(_) => HEADER_BYTES as u64,
        };
        if pos + need > read_to && read_to < len {
            window.drain(..(pos - window_at) as usize);
            window_at = pos;
            match disk.read_chunk(read_to, &mut window) {
                Ok(n) => {
                    read_to += n as u64;
                    throttle.read(n as u64);
                    stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
                    metrics::counter!("spool_scrub_bytes_total").increment(n as u64);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(segment = %seg.path.display(), error = %e, "scrub could not read the segment");
                    return found;
                }
            }
        }
        if let Some(hole) = seg.hole_at(pos) {
            // Known already: go on where valid frames resume.
            match hole.resume {
                Some((p, o)) => (pos, expected) = (p, o),
                None => break,
            }
            continue;
        }
        let at = &window[(pos - window_at) as usize..];
        let checked = format::check_frame(at).and_then(|h| {
            if h.base_offset == expected {
                Ok(h)
            } else {
                Err(FormatError::OffsetMismatch {
                    expected,
                    found: h.base_offset,
                })
            }
        });
        match checked {
            Ok(h) => {
                starts.push(IndexEntry {
                    offset: expected,
                    pos: pos as u32,
                });
                pos += u64::from(h.frame_len);
                expected = h.next_offset();
            }
            Err(reason) => {
                let hole = damage_on_disk(seg, &mut disk, pos, expected, next_base, reason);
                record_damage(log, seg, &hole, stats);
                found.holes.push(hole.clone());
                match hole.resume {
                    Some((p, o)) => (pos, expected) = (p, o),
                    None => break,
                }
            }
        }
    }
    stats.segments.fetch_add(1, Ordering::Relaxed);
    found.index_rebuilt = check_index(log, seg, &starts);
    found
}

/// Where the damage at `pos` ends, judged on the disk's bytes.
fn damage_on_disk(
    seg: &SegmentView,
    disk: &mut DiskReader,
    pos: u64,
    expected: u64,
    next_base: u64,
    reason: FormatError,
) -> Hole {
    let from = pos - pos % ALIGN as u64;
    let mut bytes = vec![0u8; from as usize];
    let mut at = from;
    while at < disk.len {
        match disk.read_chunk(at, &mut bytes) {
            Ok(0) | Err(_) => break,
            Ok(n) => at += n as u64,
        }
    }
    let end = bytes.len() as u64;
    let resume = damage::resume_after(&bytes, seg.base_offset, pos, expected, end, Some(next_base));
    Hole {
        pos,
        first_offset: expected,
        resume,
        extent_end: resume.map_or_else(|| damage::extent_end(&bytes, pos), |(p, _)| p),
        reason,
    }
}

fn record_damage(log: &LogShared, seg: &SegmentView, hole: &Hole, stats: &ScrubStats) {
    tracing::error!(
        log = %log.name, segment = %seg.path.display(), position = hole.pos,
        offset = hole.first_offset, resume = ?hole.resume, reason = %hole.reason,
        "scrub found damaged data: reads of these records fail with DATA_LOSS until they are repaired from a peer"
    );
    seg.add_hole(hole.clone());
    stats.damage_found.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("spool_scrub_damage_found_total").increment(1);
}

/// Every index entry must name a frame start found by the scrub (`starts`, all of them
/// in order); if one does not, the index is rebuilt from the frames. Returns whether it was.
fn check_index(log: &LogShared, seg: &SegmentView, starts: &[IndexEntry]) -> bool {
    let entries = seg.index_snapshot();
    let bad = entries
        .iter()
        .filter(|e| {
            starts
                .binary_search_by_key(&e.pos, |s| s.pos)
                .map(|i| starts[i].offset)
                != Ok(e.offset)
        })
        .count();
    if bad == 0 {
        return false;
    }
    let interval = u64::from(log.config.index_interval_bytes);
    let mut rebuilt: Vec<IndexEntry> = Vec::new();
    for s in starts {
        if rebuilt
            .last()
            .is_none_or(|l| u64::from(s.pos - l.pos) >= interval)
        {
            rebuilt.push(*s);
        }
    }
    let idx_path = log.dir.join(segment::index_file_name(seg.base_offset));
    if let Err(e) =
        crate::crashsafe::replace_file(&idx_path, &index::encode(seg.base_offset, &rebuilt))
    {
        tracing::warn!(segment = %seg.path.display(), error = %e, "rewriting a bad index failed");
    }
    seg.set_index(rebuilt);
    tracing::warn!(log = %log.name, segment = %seg.path.display(), bad, "scrub found index entries that point at no frame: index rebuilt");
    true
}
