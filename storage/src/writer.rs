//! The storage thread: it alone writes segments, and does group commit.
//!
//! Loop: wait for a command, drain the bounded queue up to `group_bytes_max`, stamp each
//! batch with its offset, epoch and time into one buffer per touched log, then per log one
//! write and one fdatasync (linked into one submission on io_uring), then publish the
//! durable end and complete every waiter. Control commands (truncate, delete, epochs,
//! retention) first commit what is pending, so they apply in queue order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::{Durability, StorageConfig};
use crate::error::{Result, StorageError};
use crate::format;
use crate::import::StagedSegment;
use crate::io::{IoBackend, MetaIo};
use crate::log::{AppendAck, LogShared};
use crate::log_writer::{LogWriter, Repaired};
use crate::recovery::RecoveredLog;
use crate::retention;
use crate::spare::Preparer;
use crate::stats::Stats;
use crate::storage::Registry;

pub(crate) enum Cmd {
    Append {
        log: Arc<LogShared>,
        frame: Vec<u8>,
        durability: Durability,
        reply: oneshot::Sender<Result<AppendAck>>,
    },
    AppendFrames {
        log: Arc<LogShared>,
        frames: Bytes,
        sync: bool,
        reply: oneshot::Sender<Result<u64>>,
    },
    Register {
        log: Box<RecoveredLog>,
        reply: oneshot::Sender<Result<()>>,
    },
    Delete {
        log: Arc<LogShared>,
        reply: oneshot::Sender<Result<()>>,
    },
    Truncate {
        log: Arc<LogShared>,
        end: u64,
        reply: oneshot::Sender<Result<()>>,
    },
    Reset {
        log: Arc<LogShared>,
        start: u64,
        reply: oneshot::Sender<Result<()>>,
    },
    DeleteBefore {
        log: Arc<LogShared>,
        offset: u64,
        reply: oneshot::Sender<Result<u64>>,
    },
    InstallSegment {
        log: Arc<LogShared>,
        segment: Box<StagedSegment>,
        reply: oneshot::Sender<Result<u64>>,
    },
    BeginEpoch {
        log: Arc<LogShared>,
        epoch: u64,
        reply: oneshot::Sender<Result<()>>,
    },
    Repair {
        log: Arc<LogShared>,
        first_offset: u64,
        frames: Bytes,
        reply: oneshot::Sender<Result<Repaired>>,
    },
    Retention {
        reply: oneshot::Sender<()>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// Which logs have their files open, by last use: a node keeps at most
/// `StorageConfig::open_logs_max` logs' descriptors open (two each), closing the least
/// recently used idle ones, so thousands of logs fit under the open-files limit.
#[derive(Debug, Default)]
struct OpenLogs {
    tick: u64,
    by_tick: std::collections::BTreeMap<u64, u64>,
    tick_of: HashMap<u64, u64>,
}

impl OpenLogs {
    fn used(&mut self, id: u64) {
        self.tick += 1;
        if let Some(old) = self.tick_of.insert(id, self.tick) {
            self.by_tick.remove(&old);
        }
        self.by_tick.insert(self.tick, id);
    }

    fn closed(&mut self, id: u64) {
        if let Some(t) = self.tick_of.remove(&id) {
            self.by_tick.remove(&t);
        }
    }

    fn len(&self) -> usize {
        self.tick_of.len()
    }

    /// Open logs, least recently used first.
    fn oldest(&self) -> Vec<u64> {
        self.by_tick.values().copied().collect()
    }
}

impl Cmd {
    /// Answer a control command with `e` instead of running it.
    fn fail(self, e: StorageError) {
        match self {
            Cmd::Truncate { reply, .. } | Cmd::Reset { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            Cmd::BeginEpoch { reply, .. } | Cmd::Delete { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            Cmd::InstallSegment { segment, reply, .. } => {
                let _ = std::fs::remove_file(&segment.path);
                let _ = reply.send(Err(e));
            }
            Cmd::Repair { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            Cmd::DeleteBefore { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            Cmd::Register { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            Cmd::Append { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            Cmd::AppendFrames { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            Cmd::Retention { .. } | Cmd::Shutdown { .. } => {}
        }
    }

    /// The log a control command changes, if one.
    fn log_id(&self) -> Option<u64> {
        match self {
            Cmd::Truncate { log, .. }
            | Cmd::Reset { log, .. }
            | Cmd::InstallSegment { log, .. }
            | Cmd::BeginEpoch { log, .. }
            | Cmd::Repair { log, .. } => Some(log.id),
            _ => None,
        }
    }
}

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
}

pub(crate) async fn run<B: IoBackend>(
    backend: B,
    mut rx: mpsc::Receiver<Cmd>,
    ctx: WriterCtx,
    initial: Vec<RecoveredLog>,
) {
    let mut w = Writer {
        next_retention: Instant::now() + ctx.config.retention_check_interval,
        backend,
        ctx,
        logs: HashMap::new(),
        dirty: Vec::new(),
        marks_due: Vec::new(),
        open: OpenLogs::default(),
    };
    for log in initial {
        if let Err(e) = w.register(log) {
            tracing::error!(error = %e, "could not open a log on the storage thread");
        }
    }
    let group_bytes_max = w.ctx.config.group_bytes_max;
    // Bound on commands per group, so a flood of empty appends still commits regularly.
    let group_cmds_max = w.ctx.config.queue_depth.max(1);
    loop {
        if rx.is_empty() {
            // Idle: the marks claim everything synced (see `LogWriter::refresh_mark`).
            w.refresh_marks();
        }
        let deadline = w.next_deadline();
        let first = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(cmd)) => cmd,
            Ok(None) => break,
            Err(_) => {
                w.on_timer().await;
                continue;
            }
        };
        let mut group_bytes = 0usize;
        let mut cmds = 0usize;
        let mut next = Some(first);
        while let Some(cmd) = next {
            cmds += 1;
            match cmd {
                Cmd::Append {
                    log,
                    frame,
                    durability,
                    reply,
                } => {
                    group_bytes += frame.len();
                    w.append(&log, frame, durability, reply).await;
                }
                Cmd::AppendFrames {
                    log,
                    frames,
                    sync,
                    reply,
                } => {
                    group_bytes += frames.len();
                    w.append_frames(&log, frames, sync, reply).await;
                }
                Cmd::Shutdown { reply } => {
                    w.commit_all(true).await;
                    w.record_at_shutdown();
                    w.ctx.preparer.stop();
                    let _ = reply.send(());
                    return;
                }
                other => {
                    w.commit_all(false).await;
                    if let Some(id) = other.log_id() {
                        w.mark_due(id);
                    }
                    match other.log_id().map(|id| w.touch(id)) {
                        Some(Err(e)) => other.fail(e),
                        _ => w.control(other).await,
                    }
                }
            }
            if group_bytes >= group_bytes_max || cmds >= group_cmds_max {
                break;
            }
            next = rx.try_recv().ok();
        }
        w.ctx.stats.record_group(cmds as u64, group_bytes as u64);
        w.commit_all(false).await;
    }
    w.commit_all(true).await;
    w.record_at_shutdown();
    w.ctx.preparer.stop();
}

impl<B: IoBackend> Writer<B> {
    /// A clean stop: what the next open needs to know of the sealed segments.
    fn record_at_shutdown(&mut self) {
        for lw in self.logs.values_mut() {
            lw.record_at_shutdown();
        }
    }

    fn refresh_marks(&mut self) {
        for id in std::mem::take(&mut self.marks_due) {
            if let Some(lw) = self.logs.get_mut(&id) {
                lw.refresh_mark();
            }
        }
    }

    /// Open `id`'s files for a command that writes, first closing the least recently
    /// used idle logs' beyond the budget (busy ones are never closed: the budget may then
    /// be exceeded for a while).
    fn touch(&mut self, id: u64) -> Result<()> {
        let open = self.logs.get(&id).is_some_and(|lw| lw.files_open());
        if !open {
            let max = self.ctx.config.open_logs_max.max(1);
            if self.open.len() >= max {
                for other in self.open.oldest() {
                    if self.open.len() < max {
                        break;
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
            self.run_retention().await;
            self.next_retention = now + self.ctx.config.retention_check_interval;
        }
    }

    fn mark_dirty(&mut self, id: u64) {
        if !self.dirty.contains(&id) {
            self.dirty.push(id);
        }
    }

    async fn append(
        &mut self,
        log: &Arc<LogShared>,
        frame: Vec<u8>,
        durability: Durability,
        reply: oneshot::Sender<Result<AppendAck>>,
    ) {
        if let Err(e) = self.touch(log.id) {
            let _ = reply.send(Err(e));
            return;
        }
        let Some(lw) = self.logs.get_mut(&log.id) else {
            let _ = reply.send(Err(StorageError::LogNotFound(log.name.clone())));
            return;
        };
        if let Err(e) = lw
            .make_room_now(frame.len(), &self.backend, &self.ctx)
            .await
        {
            let _ = reply.send(Err(e));
            return;
        }
        lw.push_local(frame, durability, reply);
        self.mark_dirty(log.id);
    }

    async fn append_frames(
        &mut self,
        log: &Arc<LogShared>,
        frames: Bytes,
        sync: bool,
        reply: oneshot::Sender<Result<u64>>,
    ) {
        if let Err(e) = self.touch(log.id) {
            let _ = reply.send(Err(e));
            return;
        }
        let Some(lw) = self.logs.get_mut(&log.id) else {
            let _ = reply.send(Err(StorageError::LogNotFound(log.name.clone())));
            return;
        };
        // Frames were CRC-checked by the caller; here they must continue the log exactly.
        let mut pos = 0usize;
        while pos < frames.len() {
            let h = match format::peek_header(&frames[pos..]) {
                Ok(h) => h,
                Err(e) => {
                    let _ = reply.send(Err(StorageError::FrameRejected {
                        log: log.name.clone(),
                        reason: e.to_string(),
                    }));
                    return;
                }
            };
            let frame = frames.slice(pos..pos + h.frame_len as usize);
            pos += h.frame_len as usize;
            if let Err(e) = lw
                .make_room_now(frame.len(), &self.backend, &self.ctx)
                .await
            {
                let _ = reply.send(Err(e));
                return;
            }
            if let Err(e) = lw.push_replicated(&frame, &h, sync) {
                let _ = reply.send(Err(e));
                return;
            }
        }
        lw.push_frames_waiter(reply);
        self.mark_dirty(log.id);
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

    async fn control(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Register { log, reply } => {
                let _ = reply.send(self.register(*log));
            }
            Cmd::Delete { log, reply } => {
                let _ = reply.send(self.delete(&log).await);
            }
            Cmd::Truncate { log, end, reply } => {
                let r = match self.logs.get_mut(&log.id) {
                    Some(lw) => lw.truncate_to(end, &self.backend, &self.ctx).await,
                    None => Err(StorageError::LogNotFound(log.name.clone())),
                };
                let _ = reply.send(r);
            }
            Cmd::Reset { log, start, reply } => {
                let r = match self.logs.get_mut(&log.id) {
                    Some(lw) => lw.reset_to(start, &self.backend, &self.ctx).await,
                    None => Err(StorageError::LogNotFound(log.name.clone())),
                };
                let _ = reply.send(r);
            }
            Cmd::DeleteBefore { log, offset, reply } => {
                let r = match self.logs.get_mut(&log.id) {
                    Some(lw) => {
                        let n = retention::segments_below(&lw.shared, offset);
                        lw.remove_front(n, &self.ctx)
                    }
                    None => Err(StorageError::LogNotFound(log.name.clone())),
                };
                let _ = reply.send(r);
            }
            Cmd::InstallSegment {
                log,
                segment,
                reply,
            } => {
                let r = match self.logs.get_mut(&log.id) {
                    Some(lw) => lw.install_segment(*segment, &self.backend, &self.ctx).await,
                    None => {
                        let _ = std::fs::remove_file(&segment.path);
                        Err(StorageError::LogNotFound(log.name.clone()))
                    }
                };
                let _ = reply.send(r);
            }
            Cmd::BeginEpoch { log, epoch, reply } => {
                let r = match self.logs.get_mut(&log.id) {
                    Some(lw) => lw.begin_epoch(epoch),
                    None => Err(StorageError::LogNotFound(log.name.clone())),
                };
                let _ = reply.send(r);
            }
            Cmd::Repair {
                log,
                first_offset,
                frames,
                reply,
            } => {
                let r = match self.logs.get_mut(&log.id) {
                    Some(lw) => lw.repair(first_offset, frames, &self.ctx).await,
                    None => Err(StorageError::LogNotFound(log.name.clone())),
                };
                let _ = reply.send(r);
            }
            Cmd::Retention { reply } => {
                self.run_retention().await;
                let _ = reply.send(());
            }
            Cmd::Append { .. } | Cmd::AppendFrames { .. } | Cmd::Shutdown { .. } => {
                unreachable!("handled by the loop")
            }
        }
    }

    /// Delete a log: its directory moved aside first; if that fails the log is kept as it
    /// was, otherwise it is gone (an error then says the removal may not be durable).
    async fn delete(&mut self, log: &LogShared) -> Result<()> {
        let Some(lw) = self.logs.get_mut(&log.id) else {
            return Err(StorageError::LogNotFound(log.name.clone()));
        };
        // The log goes away whether or not its last group made it.
        let _ = lw.commit(true, &self.ctx.stats).await;
        let trash = lw.move_to_trash()?;
        let mut lw = self.logs.remove(&log.id).expect("found above");
        self.open.closed(log.id);
        self.ctx.registry.remove(&log.name, log.id);
        lw.finish_delete(&trash)
    }

    async fn run_retention(&mut self) {
        let now = now_us();
        for lw in self.logs.values_mut() {
            let n = retention::segments_to_delete(&lw.shared, now);
            if n > 0 {
                match lw.remove_front(n, &self.ctx) {
                    Ok(start) => {
                        tracing::info!(log = %lw.shared.name, segments = n, start, "retention deleted segments")
                    }
                    Err(e) => tracing::warn!(log = %lw.shared.name, error = %e, "retention failed"),
                }
            }
        }
    }
}
