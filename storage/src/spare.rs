//! Spare segment files, prepared ahead of need on a background thread.
//!
//! fdatasync on a growing or unwritten extent must also commit metadata, so appends go
//! into files whose every block was already written with zeros. A new segment is either a
//! fresh file zero-filled to size, or a segment retention deleted, recycled (zeroed again in
//! place: its blocks stay allocated). A spare is created as `spare-N.tmp`, synced, then
//! renamed to `spare-N.seg`, so a `.seg` spare found at start-up is always complete.
//! Zeros are written with O_DIRECT where possible: buffered, the zeroing cost as much CPU
//! and page-cache churn as the appends it prepares for (and its writeback showed up as
//! 80 ms p99 append latency under load).

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::crashsafe::fsync_dir;
use crate::direct_write::{Aligned, ALIGN};
use crate::error::{IoContext, Result, StorageError};
use crate::extents::fallocate;

const ZERO_CHUNK: usize = 1 << 20;
const _: () = assert!(ZERO_CHUNK % ALIGN == 0);

/// After a failed preparation (disk full, usually), wait this long before trying again,
/// so that a full disk does not turn every append into a doomed zero-fill.
const RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug)]
enum State {
    Idle,
    /// Requested; the job waits its turn on the preparer thread (one per node, shared
    /// by every log).
    Queued,
    /// Being zeroed.
    Running,
    Ready(PathBuf),
    Failed(Instant),
}

/// One log's spare: at most one is prepared or kept at a time.
#[derive(Debug)]
pub(crate) struct SpareSlot {
    state: Mutex<State>,
    done: Condvar,
}

impl SpareSlot {
    pub fn new(existing: Option<PathBuf>) -> Arc<Self> {
        Arc::new(SpareSlot {
            state: Mutex::new(existing.map_or(State::Idle, State::Ready)),
            done: Condvar::new(),
        })
    }

    fn finish(&self, result: Result<PathBuf>) {
        let mut s = self.state.lock();
        *s = match result {
            Ok(p) => State::Ready(p),
            Err(_) => State::Failed(Instant::now()),
        };
        self.done.notify_all();
    }

    /// True when nothing is ready or on its way (a new request would be useful).
    pub fn is_idle(&self) -> bool {
        match *self.state.lock() {
            State::Idle => true,
            State::Failed(at) => at.elapsed() >= RETRY_AFTER,
            State::Queued | State::Running | State::Ready(_) => false,
        }
    }

    /// True when a zeroed spare is ready to be taken now.
    pub fn is_ready(&self) -> bool {
        matches!(*self.state.lock(), State::Ready(_))
    }

    /// The preparer takes up this slot's job: false if it was cancelled meanwhile.
    fn start(&self) -> bool {
        let mut s = self.state.lock();
        let queued = matches!(*s, State::Queued);
        if queued {
            *s = State::Running;
        }
        queued
    }

    /// The ready spare, if one is ready now (not waiting for one being zeroed).
    pub fn try_take(&self) -> Option<PathBuf> {
        let mut s = self.state.lock();
        match std::mem::replace(&mut *s, State::Idle) {
            State::Ready(p) => Some(p),
            other => {
                *s = other;
                None
            }
        }
    }

    /// The ready spare, waiting for one being zeroed (nearly done: it was requested half
    /// a segment ago, and a zeroed segment is worth it: measured, appends into a fallocated
    /// one reached half the rate). `None` if none is coming: the caller makes one now. A
    /// job still queued behind other logs' is cancelled rather than waited for: the caller
    /// is the storage thread, and every log's writes would wait with it.
    pub fn take(&self) -> Option<PathBuf> {
        let mut s = self.state.lock();
        while matches!(*s, State::Running) {
            self.done.wait(&mut s);
        }
        match std::mem::replace(&mut *s, State::Idle) {
            State::Ready(p) => Some(p),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Job {
    dir: PathBuf,
    size: u64,
    recycle: Option<PathBuf>,
    slot: Arc<SpareSlot>,
}

/// The background preparer thread (one per node).
#[derive(Debug)]
pub(crate) struct Preparer {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

static SPARE_SEQ: AtomicU64 = AtomicU64::new(0);

impl Preparer {
    pub fn start() -> Result<Arc<Self>> {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("spool-prealloc".into())
            .spawn(move || {
                for job in rx {
                    if !job.slot.start() {
                        if let Some(p) = &job.recycle {
                            let _ = fs::remove_file(p);
                        }
                        continue;
                    }
                    let r = prepare(&job.dir, job.size, job.recycle.as_deref());
                    if let Err(e) = &r {
                        tracing::warn!(dir = %job.dir.display(), error = %e, "preparing a spare segment failed");
                    }
                    job.slot.finish(r);
                }
            })
            .map_err(|e| StorageError::io("spool-prealloc thread", e))?;
        Ok(Arc::new(Preparer {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// Ask for a spare in the background, unless one is ready or coming. With `recycle`,
    /// that file is zeroed and reused (or deleted when a spare already exists).
    pub fn request(&self, slot: &Arc<SpareSlot>, dir: &Path, size: u64, recycle: Option<PathBuf>) {
        {
            let mut s = slot.state.lock();
            if !matches!(*s, State::Idle | State::Failed(_)) {
                if let Some(p) = recycle {
                    let _ = fs::remove_file(p);
                }
                return;
            }
            *s = State::Queued;
        }
        let job = Job {
            dir: dir.to_owned(),
            size,
            recycle,
            slot: slot.clone(),
        };
        let sent = self.tx.lock().as_ref().map(|tx| tx.send(job));
        if !matches!(sent, Some(Ok(()))) {
            slot.finish(Err(StorageError::Closed));
        }
    }

    pub fn stop(&self) {
        self.tx.lock().take();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

/// Prepare a zeroed spare of `size` bytes in `dir` now, on this thread.
/// A fresh spare's temporary and final names in `dir`.
fn spare_paths(dir: &Path) -> (PathBuf, PathBuf) {
    let n = SPARE_SEQ.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    (
        dir.join(format!("spare-{pid}-{n}.tmp")),
        dir.join(format!("spare-{pid}-{n}.seg")),
    )
}

/// Make a prepared temporary spare durable under its final name.
fn publish(f: &File, tmp: &Path, done: &Path, dir: &Path) -> Result<PathBuf> {
    f.sync_all().at(tmp)?;
    fs::rename(tmp, done).at(done)?;
    fsync_dir(dir)?;
    Ok(done.to_owned())
}

pub(crate) fn prepare(dir: &Path, size: u64, recycle: Option<&Path>) -> Result<PathBuf> {
    let (tmp, done) = spare_paths(dir);
    let result = (|| {
        if let Some(old) = recycle {
            fs::rename(old, &tmp).at(&tmp)?;
        }
        // A recycled file is overwritten in place: its blocks stay allocated, so the zero
        // writes change no extent metadata.
        zero_fill(&tmp, size)?;
        let f = OpenOptions::new().write(true).open(&tmp).at(&tmp)?;
        f.set_len(size).at(&tmp)?;
        publish(&f, &tmp, &done, dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Write zeros over the first `size` bytes of `path` (created if missing), with O_DIRECT
/// where the filesystem allows: the zeros go from one buffer to the disk without passing
/// through the page cache (buffered, this took a quarter of a replica's CPU). Pages the
/// writer later fills are not in the cache then; it writes whole pages (see
/// `LogWriter::commit`), so the kernel never reads one back to fill it partly.
fn zero_fill(path: &Path, size: u64) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let direct = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_DIRECT)
        .open(path);
    let (f, mut direct) = match direct {
        Ok(f) => (f, true),
        // No O_DIRECT here (some tmpfs): through the page cache.
        Err(_) => (
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .at(path)?,
            false,
        ),
    };
    let mut backing = Aligned::new(ZERO_CHUNK);
    let zeros = &*backing.bytes();
    // Whole aligned blocks past `size` are fine: the caller sets the length after.
    let end = size.next_multiple_of(ALIGN as u64);
    let mut pos = 0u64;
    while pos < end {
        let n = (end - pos).min(ZERO_CHUNK as u64) as usize;
        match f.write_all_at(&zeros[..n], pos) {
            Ok(()) => pos += n as u64,
            Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => {
                // The filesystem refused the alignment after all: go on buffered.
                direct = false;
                let buffered = OpenOptions::new().write(true).open(path).at(path)?;
                while pos < end {
                    let n = (end - pos).min(ZERO_CHUNK as u64) as usize;
                    buffered.write_all_at(&zeros[..n], pos).at(path)?;
                    pos += n as u64;
                }
            }
            Err(e) => return Err(StorageError::io(path, e)),
        }
    }
    Ok(())
}

/// Prepare a spare at once with fallocate: its extents are allocated but unwritten (they
/// read as zeros, so recovery's invariants hold). Used when the writer needs a segment and
/// no zero-filled one is coming (after a failed preparation, or a reset): fdatasyncs into
/// it also commit extent conversions (measured: half the append rate of a zero-filled
/// segment), but appends do not stall for a 128 MiB zero-fill. Falls back to zero-filling
/// where fallocate is not supported.
pub(crate) fn prepare_now(dir: &Path, size: u64) -> Result<PathBuf> {
    let (tmp, done) = spare_paths(dir);
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .at(&tmp)?;
    if let Err(err) = fallocate(&f, 0, 0, size) {
        drop(f);
        let _ = fs::remove_file(&tmp);
        return match err.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => prepare(dir, size, None),
            _ => Err(StorageError::io(&tmp, err)),
        };
    }
    let result = publish(&f, &tmp, &done, dir);
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Spare files present in a log directory: one complete one of a segment's size (at most
/// `size_max`: segments grow to it) is kept, leftovers are removed.
pub(crate) fn collect_spares(dir: &Path, size_max: u64) -> Result<Option<PathBuf>> {
    let mut keep = None;
    for entry in fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("spare-") {
            continue;
        }
        let path = entry.path();
        let ok = name.ends_with(".seg")
            && entry.metadata().is_ok_and(|m| {
                (crate::config::SEGMENT_BYTES_MIN.min(size_max)..=size_max).contains(&m.len())
            })
            && keep.is_none();
        if ok {
            keep = Some(path);
        } else {
            let _ = fs::remove_file(&path);
        }
    }
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued() -> Arc<SpareSlot> {
        let slot = SpareSlot::new(None);
        *slot.state.lock() = State::Queued;
        slot
    }

    #[test]
    fn a_queued_job_is_cancelled_by_take_and_then_skipped() {
        let slot = queued();
        assert!(!slot.is_idle());
        assert_eq!(slot.try_take(), None, "nothing ready yet");
        assert_eq!(slot.take(), None, "not waited for");
        assert!(slot.is_idle());
        assert!(!slot.start(), "the preparer skips the cancelled job");
    }

    #[test]
    fn a_running_job_is_waited_for() {
        let slot = queued();
        assert!(slot.start());
        let s = slot.clone();
        let finisher = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            s.finish(Ok(PathBuf::from("spare-x.seg")));
        });
        assert_eq!(slot.take(), Some(PathBuf::from("spare-x.seg")));
        finisher.join().unwrap();
        assert!(slot.is_idle());
    }

    #[test]
    fn the_preparer_prepares_a_queued_spare() {
        let dir = tempfile::tempdir().unwrap();
        let p = Preparer::start().unwrap();
        let slot = SpareSlot::new(None);
        p.request(&slot, dir.path(), 64 << 10, None);
        let deadline = Instant::now() + Duration::from_secs(20);
        let spare = loop {
            if let Some(s) = slot.try_take() {
                break s;
            }
            assert!(Instant::now() < deadline, "no spare");
            std::thread::sleep(Duration::from_millis(2));
        };
        assert_eq!(fs::metadata(&spare).unwrap().len(), 64 << 10);
        p.stop();
    }
}
