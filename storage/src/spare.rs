//! Spare segment files, prepared ahead of need on a background thread.
//!
//! fdatasync on a growing or unwritten extent must also commit metadata, so appends go
//! into files whose every block was already written with zeros. A new segment is either a
//! fresh file zero-filled to size, or a segment retention deleted, recycled (zeroed again in
//! place: its blocks stay allocated). A spare is created as `spare-N.tmp`, synced, then
//! renamed to `spare-N.seg`, so a `.seg` spare found at start-up is always complete.
//! Zeros are written with O_DIRECT where possible, so that zeroing competes with the
//! appends for no page cache (figures: docs/decisions/0013-segment-placement-and-writer-split.md).

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::error::{IoContext, Result, StorageError};
use crate::io::MetaIo;

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
    /// a segment ago, and appends into a zero-filled segment sync faster). `None` if none
    /// is coming: the caller makes one now. A job still queued behind other logs' is
    /// cancelled rather than waited for: the caller (the metadata worker) would hold every
    /// other log's jobs meanwhile.
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
    pub fn start(io: Arc<dyn MetaIo>) -> Result<Arc<Self>> {
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
                    let r = prepare(&*io, &job.dir, job.size, job.recycle.as_deref());
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

/// A fresh spare's temporary and final names in `dir`.
fn spare_paths(dir: &Path) -> (PathBuf, PathBuf) {
    let n = SPARE_SEQ.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    (
        dir.join(format!("spare-{pid}-{n}.tmp")),
        dir.join(format!("spare-{pid}-{n}.seg")),
    )
}

/// Make the prepared temporary spare `tmp` durable under its final name `done`; `tmp` is
/// removed if that fails.
fn publish(io: &dyn MetaIo, tmp: &Path, done: &Path, dir: &Path) -> Result<PathBuf> {
    let synced = File::open(tmp)
        .and_then(|f| io.sync_file(&f))
        .at(tmp)
        .and_then(|()| io.rename(tmp, done).at(done));
    if let Err(e) = synced {
        let _ = fs::remove_file(tmp);
        return Err(e);
    }
    crate::crashsafe::sync_dir_with(io, dir)?;
    Ok(done.to_owned())
}

/// Prepare a zero-filled spare of `size` bytes in `dir` now, on this thread: a fresh file,
/// or `recycle` (a removed segment) zeroed in place, whose blocks stay allocated so that
/// the zero writes change no extent metadata.
pub(crate) fn prepare(
    io: &dyn MetaIo,
    dir: &Path,
    size: u64,
    recycle: Option<&Path>,
) -> Result<PathBuf> {
    let (tmp, done) = spare_paths(dir);
    let zeroed = match recycle {
        Some(old) => io.rename(old, &tmp).at(&tmp),
        None => Ok(()),
    }
    .and_then(|()| io.zero_fill(&tmp, size).at(&tmp));
    if let Err(e) = zeroed {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    publish(io, &tmp, &done, dir)
}

/// Prepare a spare at once with fallocate: its extents are allocated but unwritten (they
/// read as zeros, so recovery's invariants hold). Used when the writer needs a segment and
/// no zero-filled one is coming (after a failed preparation, or a reset): appends into it
/// are correct, only its syncs are slower (see `catchup`), and they do not wait for a
/// whole segment's zero-fill. Zero-fills where fallocate is not supported.
pub(crate) fn prepare_now(io: &dyn MetaIo, dir: &Path, size: u64) -> Result<PathBuf> {
    let (tmp, done) = spare_paths(dir);
    match io.allocate(&tmp, size) {
        Ok(()) => publish(io, &tmp, &done, dir),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            match e.kind() {
                std::io::ErrorKind::Unsupported => prepare(io, dir, size, None),
                _ => Err(StorageError::io(&tmp, e)),
            }
        }
    }
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
        let p = Preparer::start(Arc::new(crate::io::std_backend::StdBackend)).unwrap();
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
