//! The commands the storage thread takes, and how one is refused.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::catchup::StagedSegment;
use crate::config::Durability;
use crate::error::{Result, StorageError};
use crate::log::{AppendAck, LogShared};
use crate::log_writer::Repaired;
use crate::recovery::RecoveredLog;

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

impl Cmd {
    /// Answer the command with `e` instead of running it.
    pub fn fail(self, e: StorageError) {
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

    /// The log the command is for, if one (commands for a log run in queue order).
    pub fn log(&self) -> Option<&Arc<LogShared>> {
        match self {
            Cmd::Append { log, .. }
            | Cmd::AppendFrames { log, .. }
            | Cmd::Delete { log, .. }
            | Cmd::Truncate { log, .. }
            | Cmd::Reset { log, .. }
            | Cmd::DeleteBefore { log, .. }
            | Cmd::InstallSegment { log, .. }
            | Cmd::BeginEpoch { log, .. }
            | Cmd::Repair { log, .. } => Some(log),
            Cmd::Register { .. } | Cmd::Retention { .. } | Cmd::Shutdown { .. } => None,
        }
    }

    /// The log a control command writes to, if one: its files are opened first.
    pub fn writes_to(&self) -> Option<u64> {
        match self {
            Cmd::Truncate { log, .. }
            | Cmd::Reset { log, .. }
            | Cmd::InstallSegment { log, .. }
            | Cmd::BeginEpoch { log, .. }
            | Cmd::Repair { log, .. } => Some(log.id),
            _ => None,
        }
    }

    /// Bytes of frames the command brings (what a group counts).
    pub fn frame_bytes(&self) -> usize {
        match self {
            Cmd::Append { frame, .. } => frame.len(),
            Cmd::AppendFrames { frames, .. } => frames.len(),
            _ => 0,
        }
    }
}
