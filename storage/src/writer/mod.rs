//! The storage thread: it alone writes segments, and does group commit.
//!
//! Loop: wait for a command, drain the bounded queue up to `group_bytes_max`, stamp each
//! batch with its offset, epoch and time into one buffer per touched log, then per log one
//! write and one fdatasync (linked into one submission on io_uring), then publish the
//! durable end and complete every waiter. Control commands (truncate, delete, epochs,
//! retention) first commit what is pending, so they apply in queue order.
//!
//! Work on a log's files that waits on the disk (a roll's rename and directory sync, an
//! epoch's history, removing segments or the log) is a job for the metadata worker
//! (`meta_worker`): the log is parked, its later commands held in order (`parking`), while
//! every other log's groups go on committing; the job's result is handed back to the log
//! and its held commands run.

mod cmd;
mod dispatch;
mod open_logs;
mod parking;

pub(crate) use cmd::Cmd;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::StorageConfig;
use crate::error::Result;
use crate::io::{IoBackend, MetaIo};
use crate::log_writer::{Job, LogWriter};
use crate::meta_worker::{Completed, MetaWorker};
use crate::recovery::RecoveredLog;
use crate::retention;
use crate::spare::Preparer;
use crate::stats::Stats;
use crate::storage::Registry;
use open_logs::OpenLogs;
use parking::Parking;

/// Everything the storage thread needs besides its backend.
pub(crate) struct WriterCtx {
    pub config: StorageConfig,
    pub registry: Arc<Registry>,
    pub preparer: Arc<Preparer>,
    pub stats: Arc<Stats>,
    /// The backend's metadata operations (shared with threads that do metadata work).
    pub io: Arc<dyn MetaIo>,
}

pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

struct Writer<B: IoBackend> {
    backend: B,
    ctx: WriterCtx,
    logs: HashMap<u64, LogWriter<B::File>>,
    /// Logs with frames buffered in the current group.
    dirty: Vec<u64>,
    /// Logs whose durable mark may claim less than they have synced.
    marks_due: Vec<u64>,
    /// Logs whose files are open, least recently used first (see `touch`).
    open: OpenLogs,
    next_retention: Instant,
    worker: MetaWorker,
    done: mpsc::UnboundedReceiver<Completed>,
    /// Logs waiting on a job, and their held commands.
    parking: Parking,
}

/// What woke the storage thread.
enum Event {
    Cmd(Option<Cmd>),
    Done(Completed),
    Timer,
}

pub(crate) async fn run<B: IoBackend>(
    backend: B,
    mut rx: mpsc::Receiver<Cmd>,
    ctx: WriterCtx,
    initial: Vec<RecoveredLog>,
) {
    let (worker, done) = MetaWorker::start(ctx.io.clone());
    let mut w = Writer {
        next_retention: Instant::now() + ctx.config.retention_check_interval,
        parking: Parking::new(ctx.config.queue_depth),
        backend,
        ctx,
        logs: HashMap::new(),
        dirty: Vec::new(),
        marks_due: Vec::new(),
        open: OpenLogs::default(),
        worker,
        done,
    };
    for log in initial {
        if let Err(e) = w.register(log) {
            tracing::error!(error = %e, "could not open a log on the storage thread");
        }
    }
    loop {
        if rx.is_empty() {
            // Idle: the marks claim everything synced (see `LogWriter::refresh_mark`).
            w.refresh_marks();
        }
        let deadline = w.next_deadline();
        let room = w.parking.has_room();
        let event = tokio::select! {
            biased;
            Some(done) = w.done.recv() => Event::Done(done),
            cmd = rx.recv(), if room => Event::Cmd(cmd),
            () = tokio::time::sleep_until(deadline) => Event::Timer,
        };
        match event {
            Event::Timer => {
                w.on_timer().await;
                continue;
            }
            Event::Done((id, done)) => w.job_done(id, done).await,
            Event::Cmd(None) => break,
            Event::Cmd(Some(first)) => {
                if let Some(reply) = w.group(first, &mut rx).await {
                    w.stop().await;
                    let _ = reply.send(());
                    return;
                }
            }
        }
        w.commit_all(false).await;
    }
    w.stop().await;
}

impl<B: IoBackend> Writer<B> {
    /// Take `first` and what follows it in the queue, up to a group's bounds, into the
    /// group. Returns the reply of a shutdown, which ends the group and the thread.
    async fn group(
        &mut self,
        first: Cmd,
        rx: &mut mpsc::Receiver<Cmd>,
    ) -> Option<tokio::sync::oneshot::Sender<()>> {
        let group_bytes_max = self.ctx.config.group_bytes_max;
        // Bound on commands per group, so a flood of empty appends still commits regularly.
        let group_cmds_max = self.ctx.config.queue_depth.max(1);
        let (mut group_bytes, mut cmds) = (0usize, 0usize);
        let mut next = Some(first);
        while let Some(cmd) = next {
            cmds += 1;
            group_bytes += cmd.frame_bytes();
            match cmd {
                Cmd::Shutdown { reply } => return Some(reply),
                Cmd::Retention { reply } => self.retention_now(reply).await,
                cmd => self.dispatch(cmd).await,
            }
            let full = group_bytes >= group_bytes_max || cmds >= group_cmds_max;
            if full || !self.parking.has_room() {
                break;
            }
            next = rx.try_recv().ok();
        }
        self.ctx.stats.record_group(cmds as u64, group_bytes as u64);
        None
    }

    /// A clean stop: every job done and its held commands run, everything synced, what
    /// the next open needs to know of the sealed segments recorded.
    async fn stop(&mut self) {
        self.settle().await;
        self.commit_all(true).await;
        for lw in self.logs.values_mut() {
            lw.record_at_shutdown();
        }
        self.ctx.preparer.stop();
        self.worker.stop();
    }

    /// Wait until no log waits on a job (running what each held meanwhile).
    async fn settle(&mut self) {
        while self.parking.any() {
            match self.done.recv().await {
                Some((id, done)) => self.job_done(id, done).await,
                None => unreachable!("the worker's results outlive the writer"),
            }
        }
    }

    /// Hand log `id`'s job to the worker; `cause` runs again (or fails) once it is done,
    /// and the log's commands wait until then.
    fn park(&mut self, id: u64, cause: Option<Cmd>, job: Job) {
        self.parking.park(id, cause);
        self.worker.submit(id, job);
    }

    fn refresh_marks(&mut self) {
        for id in std::mem::take(&mut self.marks_due) {
            if self.parking.is_parked(id) {
                // Its active segment may be changing; marked again when it goes on.
                continue;
            }
            if let Some(lw) = self.logs.get_mut(&id) {
                lw.refresh_mark();
            }
        }
    }

    /// Open `id`'s files for a command that writes, first closing the least recently
    /// used idle logs' beyond the budget (busy or parked ones are never closed: the budget
    /// may then be exceeded for a while).
    fn touch(&mut self, id: u64) -> Result<()> {
        let open = self.logs.get(&id).is_some_and(|lw| lw.files_open());
        if !open {
            let max = self.ctx.config.open_logs_max.max(1);
            if self.open.len() >= max {
                for other in self.open.oldest() {
                    if self.open.len() < max {
                        break;
                    }
                    if self.parking.is_parked(other) {
                        continue;
                    }
                    if self
                        .logs
                        .get_mut(&other)
                        .is_some_and(|lw| lw.close_files_if_idle())
                    {
                        self.open.closed(other);
                    }
                }
            }
            if let Some(lw) = self.logs.get_mut(&id) {
                lw.open_files(&self.backend)?;
            }
        }
        self.open.used(id);
        Ok(())
    }

    fn mark_due(&mut self, id: u64) {
        if !self.marks_due.contains(&id) {
            self.marks_due.push(id);
        }
    }

    fn mark_dirty(&mut self, id: u64) {
        if !self.dirty.contains(&id) {
            self.dirty.push(id);
        }
    }

    fn register(&mut self, log: RecoveredLog) -> Result<()> {
        let id = log.shared.id;
        let lw = LogWriter::new(log, &self.ctx)?;
        self.ctx.registry.insert(lw.shared.clone());
        self.logs.insert(id, lw);
        Ok(())
    }

    fn next_deadline(&self) -> Instant {
        let flush = self
            .logs
            .values()
            .filter_map(|l| l.unsynced_since())
            .min()
            .map(|t| t + self.ctx.config.unsynced_flush_interval);
        match flush {
            Some(f) if f < self.next_retention => f,
            _ => self.next_retention,
        }
    }

    async fn on_timer(&mut self) {
        let now = Instant::now();
        let interval = self.ctx.config.unsynced_flush_interval;
        let mut flushed = Vec::new();
        for (&id, lw) in self.logs.iter_mut() {
            if lw.unsynced_since().is_some_and(|t| t + interval <= now) {
                // A failure has been logged and poisons the log; nothing waits on it here.
                let _ = lw.commit(true, &self.ctx.stats).await;
                flushed.push(id);
            }
        }
        for id in flushed {
            self.mark_due(id);
        }
        if now >= self.next_retention {
            self.start_retention();
            self.next_retention = now + self.ctx.config.retention_check_interval;
        }
    }

    async fn commit_all(&mut self, force_sync: bool) {
        if force_sync {
            for lw in self.logs.values_mut() {
                // Errors reached the waiters of the failed group already.
                let _ = lw.commit(true, &self.ctx.stats).await;
                lw.refresh_mark();
            }
            self.dirty.clear();
            return;
        }
        for id in std::mem::take(&mut self.dirty) {
            if let Some(lw) = self.logs.get_mut(&id) {
                let _ = lw.commit(false, &self.ctx.stats).await;
                self.mark_due(id);
            }
        }
    }

    /// Retention asked for now: answered once every log's is done (as are the jobs
    /// before it).
    async fn retention_now(&mut self, reply: tokio::sync::oneshot::Sender<()>) {
        self.commit_all(false).await;
        self.settle().await;
        self.start_retention();
        self.settle().await;
        let _ = reply.send(());
    }

    /// Retention by size and age: each log with segments to remove takes them out of its
    /// list now, and the files go as a job (a log waiting on another job is done at the
    /// next check).
    fn start_retention(&mut self) {
        let now = now_us();
        let mut jobs = Vec::new();
        for (&id, lw) in self.logs.iter_mut() {
            if self.parking.is_parked(id) {
                continue;
            }
            let n = retention::segments_to_delete(&lw.shared, now);
            if let Some(job) = lw.remove_front(n) {
                tracing::info!(log = %lw.shared.name, segments = n, start = lw.shared.positions().start, "retention deletes segments");
                jobs.push((id, job));
            }
        }
        for (id, job) in jobs {
            self.park(id, None, Job::Remove(job));
        }
    }
}
