//! A node's storage: the data directory, its logs, and the storage thread.
//!
//! Layout:
//!
//! ```text
//! DATA_DIR/LOCK                      flock'd while a process has the directory open
//! DATA_DIR/logs/NAME/meta            log config (crash-safe replace)
//! DATA_DIR/logs/NAME/epochs          epoch history (crash-safe replace)
//! DATA_DIR/logs/NAME/{base:020}.seg  segments, pre-zeroed to segment_bytes
//! DATA_DIR/logs/NAME/{base:020}.idx  sparse index of each segment
//! DATA_DIR/logs/NAME/spare-*.seg     a zeroed segment ready for the next roll
//! ```

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, oneshot};

use crate::config::{LogConfig, StorageConfig};
use crate::crashsafe::sync_dir_with;
use crate::error::{IoContext, Result, StorageError};
use crate::io::std_backend::{StdBackend, StdDirect};
use crate::io::{AppendIo, BackendChoice, IoBackend, MetaIo};
use crate::log::{Log, LogShared};
use crate::meta;
use crate::recovery::{self, RecoveredLog};
use crate::scrub::{self, ScrubReport, ScrubStats};
use crate::segment;
use crate::spare::{self, Preparer};
use crate::stats::Stats;
use crate::writer::{self, Cmd, WriterCtx};

const LOGS_DIR: &str = "logs";
pub const LOG_NAME_BYTES_MAX: usize = 200;

/// Logs by name, shared by handles and the storage thread (which alone changes it).
#[derive(Debug, Default)]
pub(crate) struct Registry {
    by_name: RwLock<HashMap<String, Arc<LogShared>>>,
    next_id: AtomicU64,
}

impl Registry {
    /// Every open log, in no particular order.
    pub fn all(&self) -> Vec<Arc<LogShared>> {
        self.by_name.read().values().cloned().collect()
    }

    pub fn insert(&self, log: Arc<LogShared>) {
        self.by_name.write().insert(log.name.clone(), log);
    }

    pub fn remove(&self, name: &str, id: u64) {
        let mut m = self.by_name.write();
        if m.get(name).is_some_and(|l| l.id == id) {
            m.remove(name);
        }
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

#[derive(Debug)]
pub(crate) struct StorageInner {
    pub config: StorageConfig,
    tx: mpsc::Sender<Cmd>,
    registry: Arc<Registry>,
    stats: Arc<Stats>,
    backend_name: &'static str,
    /// The backend's metadata operations, for work done off the storage thread (creating
    /// a log, its incarnation).
    pub(crate) meta_io: Arc<dyn MetaIo>,
    logs_dir: PathBuf,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Released at shutdown, so the directory can be reopened while handles linger.
    lock: Mutex<Option<File>>,
    scrub: Scrubber,
    /// Names being created now: one create per name at a time, the others see it exist.
    creating: Mutex<std::collections::HashSet<String>>,
}

/// A name claimed for a create until dropped.
struct Claim<'a> {
    inner: &'a StorageInner,
    name: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.inner.creating.lock().remove(&self.name);
    }
}

impl StorageInner {
    /// Claim `name` for a create: ALREADY_EXISTS if a log has it or a create of it runs,
    /// so that of racing creates exactly one goes on.
    fn claim(&self, name: &str) -> Result<Claim<'_>> {
        let mut creating = self.creating.lock();
        if creating.contains(name) || self.registry.by_name.read().contains_key(name) {
            return Err(StorageError::LogExists(name.to_owned()));
        }
        creating.insert(name.to_owned());
        Ok(Claim {
            inner: self,
            name: name.to_owned(),
        })
    }
}

/// The scrub thread (see `scrub`) and what it has done.
#[derive(Debug)]
struct Scrubber {
    tx: Mutex<Option<std::sync::mpsc::Sender<scrub::Request>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    stopping: Arc<std::sync::atomic::AtomicBool>,
    stats: Arc<ScrubStats>,
}

impl Scrubber {
    fn start(registry: Arc<Registry>, config: &StorageConfig) -> Result<Scrubber> {
        let stats = Arc::new(ScrubStats::default());
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let schedule = scrub::Schedule {
            rate: config.scrub_bytes_per_sec,
            interval: config.scrub_interval,
        };
        let (tx, thread) = scrub::spawn(registry, schedule, stats.clone(), stopping.clone())
            .map_err(|e| StorageError::io("spool-scrub thread", e))?;
        Ok(Scrubber {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            stopping,
            stats,
        })
    }

    fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        if let Some(tx) = self.tx.lock().take() {
            let _ = tx.send(scrub::Request::Stop);
        }
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

impl StorageInner {
    pub async fn send(&self, cmd: Cmd) -> Result<()> {
        self.tx.send(cmd).await.map_err(|_| StorageError::Closed)
    }

    /// Send the storage thread the command `cmd` builds around its reply channel, and wait
    /// for the reply.
    pub async fn call<T>(&self, cmd: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.send(cmd(reply)).await?;
        rx.await.map_err(|_| StorageError::Closed)
    }
}

/// Handle to a node's storage. Cheap to clone; the storage thread stops after
/// [`Storage::shutdown`] or when the last handle is dropped.
#[derive(Debug, Clone)]
pub struct Storage {
    inner: Arc<StorageInner>,
}

/// Check a log name: 1 to 200 bytes of `[A-Za-z0-9._-]`, not starting with `.` or `-`.
pub fn validate_log_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= LOG_NAME_BYTES_MAX
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        // Not echoed whole: a name of any length must not make the error a large one.
        let shown: String = name.chars().take(40).collect();
        let more = if shown.len() < name.len() {
            format!("... ({} bytes)", name.len())
        } else {
            String::new()
        };
        Err(StorageError::InvalidInput(format!(
            "invalid log name {shown:?}{more}: use 1 to {LOG_NAME_BYTES_MAX} characters of \
             A-Z a-z 0-9 . _ -, not starting with '.' or '-'"
        )))
    }
}

fn lock_data_dir(dir: &Path) -> Result<File> {
    let path = dir.join("LOCK");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .at(&path)?;
    // SAFETY: flock on a descriptor we own.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        return Err(StorageError::InvalidInput(format!(
            "data directory {} is in use by another spool process",
            dir.display()
        )));
    }
    Ok(f)
}

/// Logs opened at once at start-up. Opening one waits mostly on cold reads (its metadata,
/// index and tail) and on removing its shutdown record durably, which overlap across logs
/// (figures: docs/decisions/0013-segment-placement-and-writer-split.md).
const OPEN_THREADS: usize = 8;

/// Recover the logs `found` (id, name, directory), a few at a time; in the same order.
fn recover_all(
    found: &[(u64, String, PathBuf)],
    policy: recovery::Policy,
    io: &dyn MetaIo,
) -> Result<Vec<RecoveredLog>> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut done: Vec<(usize, Result<RecoveredLog>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..OPEN_THREADS.min(found.len()))
            .map(|_| {
                scope.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((id, name, path)) = found.get(i) else {
                            return out;
                        };
                        let r = recovery::recover_log(*id, name, path, policy, false, io);
                        out.push((i, r));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a log's recovery panicked"))
            .collect()
    });
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

impl Storage {
    /// Open (or create) the data directory, recover every log, start the storage thread.
    pub fn open(config: StorageConfig) -> Result<Storage> {
        match config.backend {
            BackendChoice::Std => Self::open_std(config),
            #[cfg(target_os = "linux")]
            BackendChoice::Auto | BackendChoice::Uring => Self::open_uring(config),
            #[cfg(not(target_os = "linux"))]
            BackendChoice::Auto => Self::open_std(config),
            #[cfg(not(target_os = "linux"))]
            BackendChoice::Uring => Err(StorageError::InvalidInput(
                "io_uring is only available on Linux".into(),
            )),
        }
    }

    /// Open with the std backend, direct group writes as `append_io` says.
    fn open_std(config: StorageConfig) -> Result<Storage> {
        match config.append_io {
            AppendIo::Buffered => Self::open_with(config, StdBackend),
            a => Self::open_with(config, StdDirect(a)),
        }
    }

    /// Open with a specific backend on a plain current-thread runtime (std, fault).
    pub fn open_with<B: IoBackend + Send + Sync>(
        config: StorageConfig,
        backend: B,
    ) -> Result<Storage> {
        let io: Arc<dyn MetaIo> = Arc::new(backend.clone());
        Self::start(config, io, move |rx, ctx, logs| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .map_err(|e| StorageError::io("tokio runtime", e))?;
            let name = backend.name();
            Ok((
                name,
                Box::new(move || rt.block_on(writer::run(backend, rx, ctx, logs))),
            ))
        })
    }

    #[cfg(target_os = "linux")]
    fn open_uring(config: StorageConfig) -> Result<Storage> {
        use crate::io::uring::{self, UringBackend};
        let forced = config.backend == BackendChoice::Uring;
        let append_io = config.append_io;
        let backend = UringBackend::new(append_io);
        Self::start(
            config,
            Arc::new(backend),
            move |rx, ctx, logs| match uring::runtime(256) {
                Ok(rt) => Ok((
                    backend.name(),
                    Box::new(move || rt.block_on(writer::run(backend, rx, ctx, logs))),
                )),
                Err(e) if forced => Err(StorageError::io("io_uring setup", e)),
                Err(e) => {
                    tracing::warn!(error = %e, "io_uring is unavailable; falling back to pwrite+fdatasync");
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_time()
                        .build()
                        .map_err(|e| StorageError::io("tokio runtime", e))?;
                    let std = StdDirect(append_io);
                    Ok((
                        std.name(),
                        Box::new(move || rt.block_on(writer::run(std, rx, ctx, logs))),
                    ))
                }
            },
        )
    }

    /// Recover the logs here (through `io`, the backend's metadata side), then build the
    /// storage thread's runtime on that thread (a tokio-uring runtime is !Send) through
    /// `make`, which returns the backend's name and the thread's body.
    #[allow(clippy::type_complexity)]
    fn start<M>(config: StorageConfig, io: Arc<dyn MetaIo>, make: M) -> Result<Storage>
    where
        M: FnOnce(
                mpsc::Receiver<Cmd>,
                WriterCtx,
                Vec<RecoveredLog>,
            ) -> Result<(&'static str, Box<dyn FnOnce()>)>
            + Send
            + 'static,
    {
        config.validate()?;
        let logs_dir = config.data_dir.join(LOGS_DIR);
        fs::create_dir_all(&logs_dir).at(&logs_dir)?;
        let lock = lock_data_dir(&config.data_dir)?;
        let registry = Arc::new(Registry::default());
        let mut found = Vec::new();
        for entry in fs::read_dir(&logs_dir).at(&logs_dir)? {
            let entry = entry.at(&logs_dir)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with('.') {
                // Leftovers of an interrupted create or delete.
                let _ = fs::remove_dir_all(&path);
                continue;
            }
            if !path.is_dir() || validate_log_name(&name).is_err() {
                tracing::warn!(path = %path.display(), "ignoring unexpected entry in the logs directory");
                continue;
            }
            found.push((registry.next_id(), name, path));
        }
        let recovered = recover_all(&found, config.policy(), &*io)?;
        for log in &recovered {
            // Visible to `log()` at once; the storage thread takes the write side over
            // before it serves its first command.
            registry.insert(log.shared.clone());
        }
        let preparer = Preparer::start(io.clone())?;
        let stats = Arc::new(Stats::default());
        let (tx, rx) = mpsc::channel(config.queue_depth);
        let ctx = WriterCtx {
            config: config.clone(),
            registry: registry.clone(),
            preparer,
            stats: stats.clone(),
            io: io.clone(),
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("spool-storage".into())
            .spawn(move || match make(rx, ctx, recovered) {
                Ok((name, body)) => {
                    let _ = ready_tx.send(Ok(name));
                    body();
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .map_err(|e| StorageError::io("spool-storage thread", e))?;
        let backend_name = ready_rx.recv().map_err(|_| StorageError::Closed)??;
        let scrub = Scrubber::start(registry.clone(), &config)?;
        tracing::info!(backend = backend_name, data_dir = %config.data_dir.display(), "storage open");
        Ok(Storage {
            inner: Arc::new(StorageInner {
                config,
                tx,
                registry,
                stats,
                backend_name,
                meta_io: io,
                logs_dir,
                thread: Mutex::new(Some(thread)),
                lock: Mutex::new(Some(lock)),
                scrub,
                creating: Mutex::new(std::collections::HashSet::new()),
            }),
        })
    }

    pub fn config(&self) -> &StorageConfig {
        &self.inner.config
    }

    /// "uring" or "std" (or "fault" in tests).
    pub fn backend_name(&self) -> &'static str {
        self.inner.backend_name
    }

    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    pub fn log(&self, name: &str) -> Result<Log> {
        let shared = self
            .inner
            .registry
            .by_name
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| StorageError::LogNotFound(name.to_owned()))?;
        Ok(Log {
            shared,
            storage: self.inner.clone(),
        })
    }

    /// Names of all logs, sorted.
    pub fn list_logs(&self) -> Vec<String> {
        let mut v: Vec<String> = self.inner.registry.by_name.read().keys().cloned().collect();
        v.sort();
        v
    }

    /// Create a log with the node's default settings.
    pub async fn create_log(&self, name: &str) -> Result<Log> {
        self.create_log_with(name, self.inner.config.default_log.clone())
            .await
    }

    /// Create a log with a fresh incarnation id (a log created on the primary).
    pub async fn create_log_with(&self, name: &str, config: LogConfig) -> Result<Log> {
        self.create(name, config, true, crate::meta::new_incarnation())
            .await
    }

    /// Create a log that is a copy of another node's incarnation `incarnation` (a replica
    /// creating the log its upstream has).
    pub async fn create_log_copy(
        &self,
        name: &str,
        config: LogConfig,
        incarnation: u64,
    ) -> Result<Log> {
        self.create(name, config, true, incarnation).await
    }

    /// As [`Storage::create_log_copy`], for a log whose first data will be imported
    /// segments ([`Log::begin_import`]), as on a replica that a full sync is about to fill:
    /// its first segment is only allocated, not zero-filled (a 128 MiB zero-fill before
    /// the first byte arrives), and makes way for a zeroed one during the imports. Appends
    /// into it before then are correct, only their syncs are slower.
    pub async fn create_log_for_import(
        &self,
        name: &str,
        config: LogConfig,
        incarnation: u64,
    ) -> Result<Log> {
        self.create(name, config, false, incarnation).await
    }

    async fn create(
        &self,
        name: &str,
        config: LogConfig,
        zero_fill: bool,
        incarnation: u64,
    ) -> Result<Log> {
        validate_log_name(name)?;
        config.validate()?;
        let _claim = self.inner.claim(name)?;
        let inner = self.inner.clone();
        let name_owned = name.to_owned();
        // Zero-filling the first segment takes a while: keep it off the storage thread and
        // off the async workers.
        let recovered = tokio::task::spawn_blocking(move || {
            create_log_dir(
                &*inner.meta_io,
                &inner.logs_dir,
                &name_owned,
                &config,
                zero_fill,
                incarnation,
            )?;
            let id = inner.registry.next_id();
            let mut r = recovery::recover_log(
                id,
                &name_owned,
                &inner.logs_dir.join(&name_owned),
                inner.config.policy(),
                true,
                &*inner.meta_io,
            )?;
            r.active_zeroed = zero_fill;
            Ok::<_, StorageError>(r)
        })
        .await
        .map_err(|e| StorageError::InvalidInput(format!("create task failed: {e}")))??;
        self.inner
            .call(|reply| Cmd::Register {
                log: Box::new(recovered),
                reply,
            })
            .await??;
        self.log(name)
    }

    pub async fn delete_log(&self, name: &str) -> Result<()> {
        let log = self.log(name)?;
        self.inner
            .call(|reply| Cmd::Delete {
                log: log.shared.clone(),
                reply,
            })
            .await?
    }

    /// Scrub the sealed segments of `log` (every log if None) now, unthrottled, on the
    /// scrub thread (after the pass it may be running); damage found is recorded as for a
    /// background pass.
    pub async fn scrub_now(&self, log: Option<&str>) -> Result<ScrubReport> {
        if let Some(name) = log {
            self.log(name)?;
        }
        let (reply, rx) = oneshot::channel();
        let sent = self.inner.scrub.tx.lock().as_ref().map(|tx| {
            tx.send(scrub::Request::Now {
                log: log.map(str::to_owned),
                reply,
            })
        });
        if !matches!(sent, Some(Ok(()))) {
            return Err(StorageError::Closed);
        }
        rx.await.map_err(|_| StorageError::Closed)
    }

    pub fn scrub_stats(&self) -> &ScrubStats {
        &self.inner.scrub.stats
    }

    /// Run retention on every log now (it also runs periodically).
    pub async fn run_retention(&self) -> Result<()> {
        self.inner.call(|reply| Cmd::Retention { reply }).await
    }

    /// Finish pending writes, fsync, stop the storage thread.
    pub async fn shutdown(&self) -> Result<()> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.scrub.stop())
            .await
            .ok();
        let (reply, rx) = oneshot::channel();
        if self.inner.send(Cmd::Shutdown { reply }).await.is_ok() {
            let _ = rx.await;
        }
        let thread = self.inner.thread.lock().take();
        if let Some(t) = thread {
            tokio::task::spawn_blocking(move || t.join()).await.ok();
        }
        self.inner.lock.lock().take();
        Ok(())
    }

    /// Blocking variant of [`Storage::shutdown`] for callers outside any async runtime.
    pub fn shutdown_blocking(&self) {
        self.inner.scrub.stop();
        let (reply, rx) = oneshot::channel();
        if self.inner.tx.blocking_send(Cmd::Shutdown { reply }).is_ok() {
            let _ = rx.blocking_recv();
        }
        if let Some(t) = self.inner.thread.lock().take() {
            let _ = t.join();
        }
        self.inner.lock.lock().take();
    }
}

/// Create `logs/NAME` atomically: build it under a hidden temporary name, then rename.
fn create_log_dir(
    io: &dyn MetaIo,
    logs_dir: &Path,
    name: &str,
    config: &LogConfig,
    zero_fill: bool,
    incarnation: u64,
) -> Result<()> {
    let final_dir = logs_dir.join(name);
    if final_dir.exists() {
        return Err(StorageError::LogExists(name.to_owned()));
    }
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = logs_dir.join(format!(".tmp-{name}-{}-{seq}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir(&tmp).at(&tmp)?;
    let result = (|| {
        meta::write_log_meta(io, &tmp, config, incarnation)?;
        let spare = if zero_fill {
            spare::prepare(io, &tmp, config.first_segment_bytes(), None)?
        } else {
            spare::prepare_now(io, &tmp, config.segment_bytes)?
        };
        let seg = tmp.join(segment::segment_file_name(0));
        io.rename(&spare, &seg).at(&seg)?;
        let idx = tmp.join(segment::index_file_name(0));
        io.write_file(&idx, &[]).at(&idx)?;
        sync_dir_with(io, &tmp)?;
        match io.rename(&tmp, &final_dir) {
            Ok(()) => {}
            Err(e) if final_dir.exists() => {
                let _ = e;
                return Err(StorageError::LogExists(name.to_owned()));
            }
            Err(e) => return Err(StorageError::io(&final_dir, e)),
        }
        if let Err(e) = sync_dir_with(io, logs_dir) {
            // In place but not durably: the create fails, so the log must not appear later.
            let _ = fs::remove_dir_all(&final_dir);
            return Err(e);
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}
