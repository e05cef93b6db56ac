//! The replica side of one replication session as a state machine: each upstream message
//! (and each completion) goes in, the commands to carry out come out, in order. It owns
//! what the session decides from: the upstream's epoch, which logs have a segment install
//! in flight, where each log's next segment begins after one received whole, the logs
//! skipped while a delayed deletion is pending, and the [`AckGate`]. The server's follower
//! executes the commands against storage; the simulation executes them against its model.

use std::collections::{BTreeMap, BTreeSet};

use crate::follow::{self, AckGate, Chunk, ChunkPlan, Import};

/// What the executor carries out, in the order given.
#[must_use = "the commands must be executed"]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Let everything in flight land (appends and installs) before going on.
    Drain,
    /// Drop the log's partly received segment, if any (its staging file goes).
    DropImport(String),
    /// Drop the log's follow-on (where its next segment would have begun).
    DropFollowOn(String),
    /// Acknowledge the durable ends of the logs the gate lets through, now.
    SendAcks,
    /// Append the message's frames to the log; `sync`: the upstream waits on them.
    Append { log: String, sync: bool },
    /// Begin the log's import from its follow-on (the segment received whole before).
    BeginFollowOn(String),
    /// Begin an import where the log ends (checked by [`ReplicaSession::begin_at`]).
    BeginImport(String),
    /// Stage the chunk's frames in the import, or fetch the rest of the segment.
    Receive { log: String, fetch: bool },
    /// Put the segment received whole in place in the background (acked once it lands),
    /// keeping a follow-on where it ends.
    Install(String),
    /// Carry out the upstream's start for the log (continue, cut, reset, or keep).
    ApplyStart(String),
    /// Delete the log here once the replica's delay has passed since `at_us`.
    ScheduleDelete { log: String, at_us: u64 },
    /// Delete the log here now.
    DeleteNow(String),
    /// Skip the log's messages: it follows once its pending deletion here is applied.
    Ignore(String),
}

/// How the upstream starts a log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Start {
    /// A continuation from this offset (None for every other action).
    pub continue_at: Option<u64>,
    /// Another incarnation upstream.
    pub recreate: bool,
    /// The copies hold different records: nothing of this log is acked.
    pub diverged: bool,
}

/// What the executor knows of a log here when a start or a deletion arrives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Here {
    /// This node is a delayed replica: deletions wait for the delay.
    pub delayed: bool,
    pub exists: bool,
    pub deletion_pending: bool,
    /// The log's import in progress (from an earlier session, or this one).
    pub import: Option<Import>,
}

/// One session's state on the replica.
#[derive(Debug, Clone, Default)]
pub struct ReplicaSession {
    up_epoch: u64,
    installing: BTreeSet<String>,
    follow_ons: BTreeMap<String, u64>,
    ignored: BTreeSet<String>,
    gate: AckGate,
}

impl ReplicaSession {
    /// A session with an upstream that said it is at `up_epoch`.
    pub fn new(up_epoch: u64) -> Self {
        ReplicaSession {
            up_epoch,
            ..Default::default()
        }
    }

    pub fn gate(&self) -> &AckGate {
        &self.gate
    }

    /// The logs skipped until their pending deletion here is applied.
    pub fn ignored(&self) -> impl Iterator<Item = &str> {
        self.ignored.iter().map(String::as_str)
    }

    /// Before each message: a node at a newer epoch than the upstream takes nothing more
    /// from it (a newer primary leads).
    pub fn check_upstream(&self, our_epoch: u64) -> Result<(), String> {
        if our_epoch > self.up_epoch {
            return Err(format!(
                "the upstream is at epoch {}, this node at {our_epoch}: a newer primary leads; \
                 nothing more is taken from this one",
                self.up_epoch
            ));
        }
        Ok(())
    }

    /// Before each message: the epoch the upstream sent it in (0: not said, by a node
    /// that predates it) against this node's. A message from an older epoch is refused:
    /// its sender was deposed; a newer one is the upstream's epoch from then on.
    pub fn message(&mut self, sent_in: u64, our_epoch: u64) -> Result<(), String> {
        if sent_in != 0 && sent_in < our_epoch {
            return Err(format!(
                "a message of epoch {sent_in} from the upstream, this node is at {our_epoch}: \
                 a newer primary leads; nothing more is taken from this one"
            ));
        }
        self.up_epoch = self.up_epoch.max(sent_in);
        self.check_upstream(our_epoch)
    }

    /// The upstream's heartbeat says its epoch. Returns the epoch this node keeps.
    #[must_use]
    pub fn heartbeat(&mut self, up_epoch: u64, our_epoch: u64) -> u64 {
        self.up_epoch = self.up_epoch.max(up_epoch);
        up_epoch.max(our_epoch)
    }

    /// Frames of `log`: the upstream continues it itself, so an import cut before will not
    /// be resumed, and a segment installing lands first.
    pub fn frames(&mut self, log: &str, sync: bool) -> Vec<Command> {
        if self.ignored.contains(log) {
            return Vec::new();
        }
        let mut cmds = vec![Command::DropImport(log.to_owned())];
        if self.follow_ons.remove(log).is_some() {
            cmds.push(Command::DropFollowOn(log.to_owned()));
        }
        if self.installing.contains(log) {
            cmds.push(self.drain());
        }
        cmds.push(Command::Append {
            log: log.to_owned(),
            sync,
        });
        cmds
    }

    /// A segment chunk: it continues the import in progress (`import`, or the follow-on
    /// the last segment left), or one begins where the log ends once what is in flight
    /// has landed and been acked.
    pub fn chunk(&mut self, log: &str, chunk: &Chunk, mut import: Option<Import>) -> Vec<Command> {
        if self.ignored.contains(log) {
            return Vec::new();
        }
        let mut cmds = Vec::new();
        if let Some(base) = self.follow_ons.remove(log) {
            if import.is_none() && base == chunk.first {
                cmds.push(Command::BeginFollowOn(log.to_owned()));
                import = Some(Import {
                    base,
                    staged_to: base,
                });
            } else {
                cmds.push(Command::DropFollowOn(log.to_owned()));
            }
        }
        if follow::chunk_plan(import, chunk, u64::MAX) != Ok(ChunkPlan::Continue) {
            cmds.push(Command::DropImport(log.to_owned()));
            cmds.push(self.drain());
            cmds.push(Command::SendAcks);
            cmds.push(Command::BeginImport(log.to_owned()));
        }
        cmds.push(Command::Receive {
            log: log.to_owned(),
            fetch: chunk.fetch,
        });
        cmds
    }

    /// Where [`Command::BeginImport`] begins, the log ending at `log_end` once drained; an
    /// error when the chunk does not follow the log.
    pub fn begin_at(&self, chunk: &Chunk, log_end: u64) -> Result<u64, String> {
        match follow::chunk_plan(None, chunk, log_end)? {
            ChunkPlan::Begin { at } => Ok(at),
            ChunkPlan::Continue => unreachable!("no import to continue"),
        }
    }

    /// The log's import is staged to `staged_to` of a segment ending at `segment_next`:
    /// once whole it installs (after the log's last install: installs land in order) and
    /// the next segment may begin where it ends.
    pub fn staged(&mut self, log: &str, staged_to: u64, segment_next: u64) -> Vec<Command> {
        if staged_to < segment_next {
            return Vec::new();
        }
        let mut cmds = Vec::new();
        if self.installing.contains(log) {
            cmds.push(self.drain());
        }
        self.installing.insert(log.to_owned());
        self.follow_ons.insert(log.to_owned(), staged_to);
        cmds.push(Command::Install(log.to_owned()));
        cmds
    }

    /// An append or install of `log` landed.
    pub fn landed(&mut self, log: &str) {
        self.installing.remove(log);
    }

    /// The upstream starts `log`: what is in flight lands, an import survives only where
    /// the log continues where it began; a delayed replica keeps an older incarnation
    /// until its deletion is applied and skips the new one meanwhile.
    pub fn start(&mut self, log: &str, start: Start, here: Here, now_us: u64) -> Vec<Command> {
        let mut cmds = vec![self.drain()];
        if self.follow_ons.remove(log).is_some() {
            cmds.push(Command::DropFollowOn(log.to_owned()));
        }
        if !follow::start_keeps_import(start.continue_at, here.import) {
            cmds.push(Command::DropImport(log.to_owned()));
        }
        let mut pending = here.delayed && here.deletion_pending;
        if start.recreate && here.delayed && here.exists && !pending {
            cmds.push(Command::ScheduleDelete {
                log: log.to_owned(),
                at_us: now_us,
            });
            pending = true;
        }
        if pending {
            self.ignored.insert(log.to_owned());
            self.gate.forget(log);
            cmds.push(Command::Ignore(log.to_owned()));
            return cmds;
        }
        cmds.push(Command::ApplyStart(log.to_owned()));
        self.gate.started(log, start.diverged);
        cmds
    }

    /// `log` was deleted upstream at `deleted_at_us` (0: not said): here at once, or on a
    /// delayed replica once the delay has passed since then.
    pub fn deleted(
        &mut self,
        log: &str,
        deleted_at_us: u64,
        here: Here,
        now_us: u64,
    ) -> Vec<Command> {
        let mut cmds = vec![self.drain()];
        self.gate.forget(log);
        cmds.push(Command::DropImport(log.to_owned()));
        if self.follow_ons.remove(log).is_some() {
            cmds.push(Command::DropFollowOn(log.to_owned()));
        }
        if !here.delayed {
            cmds.push(Command::DeleteNow(log.to_owned()));
            return cmds;
        }
        self.ignored.remove(log);
        if here.exists {
            let at_us = if deleted_at_us == 0 {
                now_us
            } else {
                deleted_at_us
            };
            cmds.push(Command::ScheduleDelete {
                log: log.to_owned(),
                at_us,
            });
        }
        cmds
    }

    /// The ends of `ends` this session may acknowledge.
    #[must_use]
    pub fn acks(&self, ends: impl IntoIterator<Item = (String, u64)>) -> Vec<(String, u64)> {
        self.gate.filter(ends)
    }

    /// A drain lands every install in flight.
    fn drain(&mut self) -> Command {
        self.installing.clear();
        Command::Drain
    }

    /// Invariant: a log skipped until its deletion here is never acked (its records are
    /// another incarnation's).
    pub fn check(&self) -> Result<(), String> {
        if let Some(l) = self.ignored.iter().find(|l| self.gate.may_ack(l)) {
            return Err(format!("log {l} is skipped but may be acked"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
