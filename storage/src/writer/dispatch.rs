//! Running one command on the storage thread: an append into its log's group, a control
//! command after the pending groups are committed, or, for a log waiting on a job, holding
//! it until the job is done (see `parking`).

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::cmd::Cmd;
use super::{Writer, WriterCtx};
use crate::config::Durability;
use crate::error::{Result, StorageError};
use crate::format;
use crate::io::IoBackend;
use crate::log::{AppendAck, LogShared};
use crate::log_writer::{Done, Finished, Job, LogWriter};
use crate::retention;

impl<B: IoBackend> Writer<B> {
    /// Run `cmd`, or hold it behind its log's job.
    pub(super) async fn dispatch(&mut self, cmd: Cmd) {
        if let Some(id) = cmd.log().map(|l| l.id) {
            if self.parking.is_parked(id) {
                self.parking.hold(id, cmd);
                return;
            }
        }
        match cmd {
            Cmd::Append {
                log,
                frame,
                durability,
                reply,
            } => self.append(log, frame, durability, reply).await,
            Cmd::AppendFrames {
                log,
                frames,
                sync,
                reply,
            } => self.append_frames(log, frames, sync, reply).await,
            other => {
                self.commit_all(false).await;
                if let Some(id) = other.writes_to() {
                    self.mark_due(id);
                    if let Err(e) = self.touch(id) {
                        return other.fail(e);
                    }
                }
                self.control(other).await;
            }
        }
    }

    async fn append(
        &mut self,
        log: Arc<LogShared>,
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
        let job = match lw.make_room(frame.len(), &self.ctx).await {
            Ok(Some(place)) => Some(Job::Place(place)),
            Ok(None) => lw.snapshot_job(format::frame_producer(&frame).is_some()),
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        if let Some(job) = job {
            let cmd = Cmd::Append {
                log: log.clone(),
                frame,
                durability,
                reply,
            };
            return self.park(log.id, Some(cmd), job);
        }
        lw.push_local(frame, durability, reply);
        self.mark_dirty(log.id);
    }

    async fn append_frames(
        &mut self,
        log: Arc<LogShared>,
        frames: Bytes,
        sync: bool,
        reply: oneshot::Sender<Result<u64>>,
    ) {
        if let Err(e) = self.touch(log.id) {
            let _ = reply.send(Err(e));
            return;
        }
        // Frames were CRC-checked by the caller; here they must continue the log exactly.
        let mut pos = 0usize;
        while pos < frames.len() {
            let job = match self.next_frame(&log, &frames, pos, sync).await {
                Ok(Ok(len)) => {
                    pos += len;
                    continue;
                }
                Ok(Err(job)) => job,
                Err(e) => {
                    let _ = reply.send(Err(e));
                    return;
                }
            };
            // The frames before are in the group; these wait for the job.
            self.mark_dirty(log.id);
            let rest = Cmd::AppendFrames {
                log: log.clone(),
                frames: frames.slice(pos..),
                sync,
                reply,
            };
            return self.park(log.id, Some(rest), job);
        }
        match self.logs.get_mut(&log.id) {
            Some(lw) => lw.push_frames_waiter(reply),
            None => {
                let _ = reply.send(Err(StorageError::LogNotFound(log.name.clone())));
                return;
            }
        }
        self.mark_dirty(log.id);
    }

    /// Buffer the frame at `pos` of `frames`: its length, or the job it needs first.
    async fn next_frame(
        &mut self,
        log: &LogShared,
        frames: &Bytes,
        pos: usize,
        sync: bool,
    ) -> Result<std::result::Result<usize, Job>> {
        let Some(lw) = self.logs.get_mut(&log.id) else {
            return Err(StorageError::LogNotFound(log.name.clone()));
        };
        let h = format::peek_header(&frames[pos..]).map_err(|e| StorageError::FrameRejected {
            log: log.name.clone(),
            reason: e.to_string(),
        })?;
        let len = h.frame_len as usize;
        let frame = frames.slice(pos..pos + len);
        if let Some(job) = lw.check_replicated(&frame, &h)? {
            return Ok(Err(job));
        }
        if let Some(place) = lw.make_room(len, &self.ctx).await? {
            return Ok(Err(Job::Place(place)));
        }
        lw.push_replicated(&frame, &h, sync);
        Ok(Ok(len))
    }

    /// Log `id`'s job is done: the writer takes its result, then the command that waited
    /// on it runs again (or fails with its error), then the commands held meanwhile.
    pub(super) async fn job_done(&mut self, id: u64, done: Done) {
        let parked = self.parking.unpark(id);
        let finished = match self.logs.get_mut(&id) {
            Some(lw) => lw.finish(done, &self.backend, &self.ctx),
            None => unreachable!("a log is removed only by its own job"),
        };
        self.mark_due(id);
        match (finished, parked.cause) {
            (Finished::Log(Ok(())), Some(cause)) => self.dispatch(cause).await,
            (Finished::Log(Err(e)), Some(cause)) => cause.fail(e),
            (Finished::Log(r), None) => self.retained(id, r),
            (Finished::Answered, cause) => assert!(cause.is_none(), "answered by its job"),
            (Finished::Deleted(r), cause) => {
                self.forget(id);
                if let Some(Cmd::Delete { reply, .. }) = cause {
                    let _ = reply.send(r);
                }
            }
        }
        for cmd in parked.held {
            self.dispatch(cmd).await;
        }
    }

    /// Periodic retention's job for log `id` is done.
    fn retained(&self, id: u64, r: Result<()>) {
        let Some(lw) = self.logs.get(&id) else { return };
        match r {
            Ok(()) => tracing::debug!(log = %lw.shared.name, "retention removed segment files"),
            Err(e) => tracing::warn!(log = %lw.shared.name, error = %e, "retention failed"),
        }
    }

    /// The log `id` is deleted: no command finds it any more.
    fn forget(&mut self, id: u64) {
        if let Some(lw) = self.logs.remove(&id) {
            self.open.closed(id);
            self.ctx.registry.remove(&lw.shared.name, id);
        }
    }

    async fn control(&mut self, cmd: Cmd) {
        if let Cmd::Register { log, reply } = cmd {
            let _ = reply.send(self.register(*log));
            return;
        }
        let log = cmd.log().expect("a log's control command").clone();
        let Some(lw) = self.logs.get_mut(&log.id) else {
            return cmd.fail(StorageError::LogNotFound(log.name.clone()));
        };
        if let Some((cause, job)) = run_control(lw, cmd, &self.backend, &self.ctx).await {
            self.park(log.id, cause, job);
        }
    }
}

/// Run a log's control command; `Some` when it needs a job first: the job, and the
/// command to run again once it is done (none when the job answers it).
async fn run_control<B: IoBackend>(
    lw: &mut LogWriter<B::File>,
    cmd: Cmd,
    backend: &B,
    ctx: &WriterCtx,
) -> Option<(Option<Cmd>, Job)> {
    match cmd {
        Cmd::Delete { log, reply } => {
            // The log goes away whether or not its last group made it.
            let _ = lw.commit(true, &ctx.stats).await;
            let job = Job::Delete(lw.delete_job());
            Some((Some(Cmd::Delete { log, reply }), job))
        }
        Cmd::Truncate { log, end, reply } => match lw.truncate_to(end, backend, ctx).await {
            Ok(Some(job)) => Some((Some(Cmd::Truncate { log, end, reply }), job)),
            r => {
                let _ = reply.send(r.map(|_| ()));
                None
            }
        },
        Cmd::Reset { start, reply, .. } => {
            let job = lw.reset_job(start, reply, ctx).await?;
            Some((None, job))
        }
        Cmd::DeleteBefore { log, offset, reply } => {
            let n = retention::segments_below(&lw.shared, offset);
            match lw.remove_front(n) {
                Some(job) => Some((
                    Some(Cmd::DeleteBefore { log, offset, reply }),
                    Job::Remove(job),
                )),
                None => {
                    let _ = reply.send(Ok(lw.shared.positions().start));
                    None
                }
            }
        }
        Cmd::InstallSegment { segment, reply, .. } => {
            let job = lw.install_job(*segment, reply, ctx).await?;
            Some((None, job))
        }
        Cmd::BeginEpoch { log, epoch, reply } => match lw.begin_epoch(epoch) {
            Ok(Some(job)) => Some((Some(Cmd::BeginEpoch { log, epoch, reply }), job)),
            r => {
                let _ = reply.send(r.map(|_| ()));
                None
            }
        },
        Cmd::Repair {
            first_offset,
            frames,
            reply,
            ..
        } => {
            let _ = reply.send(lw.repair(first_offset, frames, ctx).await);
            None
        }
        Cmd::Append { .. }
        | Cmd::AppendFrames { .. }
        | Cmd::Register { .. }
        | Cmd::Retention { .. }
        | Cmd::Shutdown { .. } => unreachable!("not a log's control command"),
    }
}
