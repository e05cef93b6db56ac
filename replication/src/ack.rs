//! When an append may be acknowledged: the ack-mode state machine.
//!
//! The server calls [`AckTracker::append`] once a request's records are durable on the
//! primary, feeds it replica connections and acks, and ticks it; every call returns the
//! [`Command`]s to execute (wake a request with success or failure, log a mode change).
//!
//! Positions: for each (replica, log) the tracker keeps the replica's durable end, which only
//! moves forward. A request waiting for `end_offset` is satisfied once enough counting
//! replicas have a durable end `>= end_offset`. Because durable ends are monotone, a request
//! that is satisfied stays satisfied, and within one log and one requirement the satisfied
//! requests are exactly a prefix ordered by `end_offset`; pending requests are kept in that
//! order so an ack completes a prefix without scanning the rest.
//!
//! Degrading: under [`TimeoutPolicy::DegradeToAsync`] the first timeout switches the whole
//! tracker to async acks (a degraded ack says so), because replicas that cannot keep up
//! would otherwise hold every writer for the full timeout. While degraded, replicated appends
//! complete at once but the newest per log is remembered as a probe; the first probe that
//! becomes satisfied shows the replicas caught up, and normal waiting resumes.

mod pending;
mod replicas;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pending::{PendingSet, Waiting};
use replicas::ReplicaTable;

/// Identifies one append request; chosen by the caller and unique among live requests.
pub type RequestId = u64;

/// How many replicas must have an append durable before it is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckMode {
    /// Durable on the primary only.
    Async,
    /// Durable on the primary and on at least this many counting replicas.
    SemiSync(u32),
    /// Durable on the primary and on every known synchronous replica.
    Sync,
}

/// What a timed-out request turns into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutPolicy {
    /// Fail the request; its records stay in the log and will still replicate.
    Fail,
    /// Acknowledge it as degraded and switch to async acks until replicas catch up.
    DegradeToAsync,
}

#[derive(Clone, Debug)]
pub struct AckConfig {
    /// How long a request may wait for replicas, counted from its `append` call.
    pub timeout: Duration,
    pub policy: TimeoutPolicy,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Acknowledge request `req`: `confirmed` replicas (counting ones) have it durably; `degraded` when it was released without the replicas its mode asks for.
    Complete {
        req: RequestId,
        confirmed: u32,
        degraded: bool,
    },
    /// Fail request `req` (the records stay in the log and will replicate).
    Fail {
        req: RequestId,
        confirmed: u32,
        required: u32,
        reason: String,
    },
    /// Entered degraded (async) mode after a timeout under DegradeToAsync. Emitted once per transition.
    Degraded { reason: String },
    /// Left degraded mode: replicas caught up again. Emitted once per transition.
    Recovered,
}

/// Upper bound on requests waiting for replica acks. Past it a new replicated append fails at
/// once (the caller retries) instead of growing memory while replicas are slow.
pub const PENDING_MAX: usize = 1 << 16;

/// Why a `Sync` append fails when no synchronous replica is known.
const NO_SYNC_REPLICA: &str = "sync ack mode needs a synchronous replica, but none is \
     configured as synchronous or has attached since the server started";

/// What a waiting request needs; `Async` and `SemiSync(0)` never wait, so they have none.
/// Ordered only so that it can key the per-log queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Need {
    /// At least this many (>= 1) counting replicas.
    Replicas(u32),
    /// Every known synchronous replica (and at least one must be known).
    AllSync,
}

impl Need {
    fn of(mode: AckMode) -> Option<Need> {
        match mode {
            AckMode::Async | AckMode::SemiSync(0) => None,
            AckMode::SemiSync(k) => Some(Need::Replicas(k)),
            AckMode::Sync => Some(Need::AllSync),
        }
    }
}

/// While degraded: the newest replicated append of a log, whose satisfaction ends degraded mode.
#[derive(Clone, Copy, Debug)]
struct Probe {
    end: u64,
    need: Need,
}

/// Decides when appends may be acknowledged under their [`AckMode`]. Sans-IO: see the module doc.
#[derive(Debug)]
pub struct AckTracker {
    config: AckConfig,
    replicas: ReplicaTable,
    /// Requests waiting for replicas. Empty while degraded.
    pending: PendingSet,
    degraded: bool,
    /// Newest replicated append per log while degraded; empty otherwise. At most one per log.
    probes: BTreeMap<String, Probe>,
}

impl AckTracker {
    pub fn new(config: AckConfig) -> Self {
        AckTracker {
            config,
            replicas: ReplicaTable::default(),
            pending: PendingSet::default(),
            degraded: false,
            probes: BTreeMap::new(),
        }
    }

    /// A replica (id) attached. `sync`: it was configured as a synchronous replica. `counts`: its acks count toward semi-sync/sync (false for delayed replicas unless configured, and for replicas that are not direct children of the primary).
    ///
    /// The flags replace those of an earlier connection with the same id, so pending requests
    /// are re-examined: one may now be satisfied, and `Sync` requests fail if no synchronous
    /// replica is left.
    #[must_use = "the commands must be executed"]
    pub fn replica_connected(
        &mut self,
        _now: Instant,
        id: &str,
        sync: bool,
        counts: bool,
    ) -> Vec<Command> {
        self.replicas.connect(id, sync, counts);
        let mut out = Vec::new();
        if self.degraded {
            self.try_recover(None, &mut out);
        } else {
            for log in self.pending.logs() {
                self.settle(&log, &mut out);
            }
        }
        self.check_invariants();
        out
    }

    /// A replica went away. Its acks stay valid (the data is durable there) and a synchronous
    /// replica is still waited for, so nothing is decided here; the replica is only marked so
    /// that a bounded number of gone non-synchronous replicas are remembered.
    #[must_use = "the commands must be executed"]
    pub fn replica_disconnected(&mut self, now: Instant, id: &str) -> Vec<Command> {
        self.replicas.disconnect(now, id);
        self.check_invariants();
        Vec::new()
    }

    /// Replica `id` has log `log` durable up to (excluding) `durable_end`. Monotonic per (id, log); an older value is ignored.
    ///
    /// Acks from a replica that never connected are ignored: without its flags it is unknown
    /// whether it counts.
    #[must_use = "the commands must be executed"]
    pub fn replica_acked(
        &mut self,
        _now: Instant,
        id: &str,
        log: &str,
        durable_end: u64,
    ) -> Vec<Command> {
        if !self.replicas.ack(id, log, durable_end) {
            return Vec::new();
        }
        self.position_raised(log)
    }

    /// A replica's position in `log` went up: waiting appends may be satisfied now.
    fn position_raised(&mut self, log: &str) -> Vec<Command> {
        let mut out = Vec::new();
        if self.degraded {
            self.try_recover(Some(log), &mut out);
        } else {
            self.settle(log, &mut out);
        }
        self.check_invariants();
        out
    }

    /// Replica `id` holds `log` up to exactly `durable_end` as its handshake settled it
    /// (after any cut its upstream told it to make): unlike an ack this may lower what it
    /// counts for, since a replica whose log was cut back no longer holds its earlier
    /// acks' records. Unknown replicas are ignored, as for acks.
    #[must_use = "the commands must be executed"]
    pub fn replica_holds(
        &mut self,
        _now: Instant,
        id: &str,
        log: &str,
        durable_end: u64,
    ) -> Vec<Command> {
        if !self.replicas.set(id, log, durable_end) {
            self.check_invariants();
            return Vec::new();
        }
        self.position_raised(log)
    }

    /// A request whose records end at `end_offset` (exclusive) is durable on the primary; decide now or keep it pending.
    ///
    /// `RequestId`s must be unique among live requests; a reused one replaces the old request.
    #[must_use = "the commands must be executed"]
    pub fn append(
        &mut self,
        now: Instant,
        req: RequestId,
        log: &str,
        end_offset: u64,
        mode: AckMode,
    ) -> Vec<Command> {
        debug_assert!(!self.pending.contains(req), "request {req} appended twice");
        self.pending.remove(req);
        let confirmed = self.replicas.confirmed(log, end_offset);
        let mut out = Vec::new();
        let complete = |degraded| Command::Complete {
            req,
            confirmed,
            degraded,
        };
        match Need::of(mode) {
            None => out.push(complete(false)),
            Some(Need::AllSync) if self.replicas.sync_count() == 0 => out.push(Command::Fail {
                req,
                confirmed,
                required: 0,
                reason: NO_SYNC_REPLICA.to_owned(),
            }),
            Some(need) if self.replicas.satisfied(log, end_offset, need) => {
                if self.degraded {
                    self.recover(&mut out);
                }
                out.push(complete(false));
            }
            Some(need) if self.degraded => {
                // Newest wins: catching up to it is what "replicas caught up" means.
                let probe = Probe {
                    end: end_offset,
                    need,
                };
                self.probes.insert(log.to_owned(), probe);
                out.push(complete(true));
            }
            Some(need) if self.pending.len() >= PENDING_MAX => out.push(Command::Fail {
                req,
                confirmed,
                required: self.replicas.required(need),
                reason: format!(
                    "{PENDING_MAX} requests are already waiting for replica acks; retry later"
                ),
            }),
            Some(need) => {
                let waiting = Waiting {
                    log: log.to_owned(),
                    end: end_offset,
                    need,
                    // A timeout too large to represent never expires.
                    deadline: now.checked_add(self.config.timeout),
                };
                self.pending.insert(req, waiting);
            }
        }
        self.check_invariants();
        out
    }

    /// Expires requests whose deadline (append time + timeout) is at or before `now`.
    #[must_use = "the commands must be executed"]
    pub fn tick(&mut self, now: Instant) -> Vec<Command> {
        let expired = self.pending.expired(now);
        let mut out = Vec::new();
        let Some(&first) = expired.first() else {
            return out;
        };
        match self.config.policy {
            TimeoutPolicy::Fail => {
                for req in expired {
                    let w = self
                        .pending
                        .remove(req)
                        .expect("expired request is pending");
                    let (confirmed, required) = self.counts(&w);
                    out.push(Command::Fail {
                        req,
                        confirmed,
                        required,
                        reason: format!(
                            "timed out after {:?} waiting for replicas to confirm log {:?} up to \
                             offset {}: {confirmed} of {required} confirmed (the records stay in \
                             the log and will replicate)",
                            self.config.timeout, w.log, w.end
                        ),
                    });
                }
            }
            TimeoutPolicy::DegradeToAsync => {
                debug_assert!(!self.degraded, "requests wait only while not degraded");
                let w = self.pending.get(first).expect("expired request is pending");
                let (confirmed, required) = self.counts(w);
                let reason = format!(
                    "timed out after {:?} waiting for replicas to confirm log {:?} up to offset \
                     {}: {confirmed} of {required} confirmed; acknowledging without replicas \
                     until they catch up",
                    self.config.timeout, w.log, w.end
                );
                self.degraded = true;
                out.push(Command::Degraded { reason });
                // Degraded means async for everyone: requests that have not timed out yet
                // would only wait out their timeout for the same replicas.
                for (req, w) in self.pending.drain() {
                    let confirmed = self.replicas.confirmed(&w.log, w.end);
                    out.push(Command::Complete {
                        req,
                        confirmed,
                        degraded: true,
                    });
                    let newest = self.probes.get(&w.log).is_none_or(|p| p.end <= w.end);
                    if newest {
                        let probe = Probe {
                            end: w.end,
                            need: w.need,
                        };
                        self.probes.insert(w.log, probe);
                    }
                }
            }
        }
        self.check_invariants();
        out
    }

    /// When [`tick`](Self::tick) next has something to do, if anything is pending.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.next_deadline()
    }

    /// The caller went away: forget the request (no command).
    pub fn cancel(&mut self, req: RequestId) {
        self.pending.remove(req);
        self.check_invariants();
    }

    /// The log was deleted: fail its pending requests and forget every position and probe of
    /// it, so that per-log state does not outlive the log.
    #[must_use = "the commands must be executed"]
    pub fn forget_log(&mut self, log: &str) -> Vec<Command> {
        let mut out = Vec::new();
        for (req, w) in self.pending.take_log(log) {
            let (confirmed, required) = self.counts(&w);
            out.push(Command::Fail {
                req,
                confirmed,
                required,
                reason: format!("log {log:?} was deleted while waiting for replica acks"),
            });
        }
        self.probes.remove(log);
        self.replicas.forget_log(log);
        self.check_invariants();
        out
    }

    pub fn is_degraded(&self) -> bool {
        self.degraded
    }

    /// Why an append in `mode` could not be acknowledged with the replicas known now (a
    /// caller refuses it before writing anything): `Sync` with no synchronous replica,
    /// `SemiSync(k)` with fewer than k counting replicas connected. Under
    /// [`TimeoutPolicy::DegradeToAsync`] nothing is refused: such appends degrade.
    pub fn cannot_satisfy(&self, mode: AckMode) -> Option<String> {
        if self.config.policy == TimeoutPolicy::DegradeToAsync {
            return None;
        }
        match mode {
            AckMode::Sync if self.replicas.sync_count() == 0 => Some(
                "ack mode sync needs a synchronous replica (one started with --sync-replica); \
                 none is known to this primary"
                    .into(),
            ),
            AckMode::SemiSync(k) if self.replicas.connected_counting() < k => Some(format!(
                "ack mode semi-sync:{k} needs {k} replica(s) counted for acks; {} connected",
                self.replicas.connected_counting()
            )),
            _ => None,
        }
    }

    /// How many counting replicas have `log` durable at or beyond `end_offset`.
    pub fn confirmed(&self, log: &str, end_offset: u64) -> u32 {
        self.replicas.confirmed(log, end_offset)
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// (confirmed, required) of a waiting request, for its command.
    fn counts(&self, w: &Waiting) -> (u32, u32) {
        (
            self.replicas.confirmed(&w.log, w.end),
            self.replicas.required(w.need),
        )
    }

    /// Completes the requests of `log` that are now satisfied, in offset order, and fails its
    /// `Sync` requests if no synchronous replica is left.
    fn settle(&mut self, log: &str, out: &mut Vec<Command>) {
        debug_assert!(!self.degraded);
        let mut done = Vec::new();
        for need in self.pending.needs(log) {
            if need == Need::AllSync && self.replicas.sync_count() == 0 {
                for (req, w) in self.pending.take_up_to(log, need, u64::MAX) {
                    out.push(Command::Fail {
                        req,
                        confirmed: self.replicas.confirmed(log, w.end),
                        required: 0,
                        reason: NO_SYNC_REPLICA.to_owned(),
                    });
                }
            } else if let Some(up_to) = self.replicas.satisfied_up_to(log, need) {
                done.extend(self.pending.take_up_to(log, need, up_to));
            }
        }
        done.sort_unstable_by_key(|(req, w)| (w.end, *req));
        for (req, w) in done {
            debug_assert!(self.replicas.satisfied(log, w.end, w.need));
            out.push(Command::Complete {
                req,
                confirmed: self.replicas.confirmed(log, w.end),
                degraded: false,
            });
        }
    }

    /// Leaves degraded mode if a probe (of `log`, or of any log) is now satisfied.
    fn try_recover(&mut self, log: Option<&str>, out: &mut Vec<Command>) {
        debug_assert!(self.degraded);
        let satisfied = |(l, p): (&String, &Probe)| self.replicas.satisfied(l, p.end, p.need);
        let caught_up = match log {
            Some(log) => self.probes.get_key_value(log).is_some_and(satisfied),
            None => self.probes.iter().any(satisfied),
        };
        if caught_up {
            self.recover(out);
        }
    }

    fn recover(&mut self, out: &mut Vec<Command>) {
        debug_assert!(self.degraded && self.pending.is_empty());
        self.degraded = false;
        self.probes.clear();
        out.push(Command::Recovered);
    }

    /// Checked after every state change in debug builds.
    fn check_invariants(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        self.pending.check_invariants();
        self.replicas.check_invariants();
        assert!(self.pending.len() <= PENDING_MAX);
        if self.degraded {
            assert!(self.pending.is_empty(), "nothing waits while degraded");
            for (log, p) in &self.probes {
                assert!(
                    !self.replicas.satisfied(log, p.end, p.need),
                    "a satisfied probe ends degraded mode"
                );
            }
        } else {
            assert!(self.probes.is_empty(), "probes exist only while degraded");
        }
        // Satisfied requests form a prefix of each queue, so an unsatisfied head means every
        // request in the queue is rightly waiting.
        for (log, need, end) in self.pending.heads() {
            assert!(
                !self.replicas.satisfied(log, end, need),
                "satisfied request left pending: log {log:?} end {end} {need:?}"
            );
            assert!(need != Need::AllSync || self.replicas.sync_count() > 0);
        }
    }
}
