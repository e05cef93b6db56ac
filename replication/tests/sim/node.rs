//! A simulated node: its log, its role (primary with an ack tracker, or a replica of an
//! upstream, maybe delayed), its partly received segment, and what it lost or kept
//! across restarts.

use std::time::Duration;

use spool_replication::ack::{AckConfig, AckMode, AckTracker, TimeoutPolicy};
use spool_replication::delay;
use spool_replication::follow::Import;

use crate::model::{Log, Rec};

pub const ACK_TIMEOUT_MS: u64 = 400;

/// A segment being received whole: where it starts and the frames staged so far.
#[derive(Debug, Clone)]
pub struct Staged {
    pub base: u64,
    pub recs: Vec<Rec>,
}

impl Staged {
    pub fn import(&self) -> Import {
        Import {
            base: self.base,
            staged_to: self.base + self.recs.len() as u64,
        }
    }
}

/// An append on the primary waiting to be durable, then for its ack mode.
#[derive(Debug, Clone, Copy)]
pub struct Write {
    pub req: u64,
    pub first: u64,
    pub end: u64,
    pub mode: AckMode,
}

#[derive(Debug)]
pub struct Node {
    pub name: &'static str,
    /// The node it follows; None on the primary.
    pub up: Option<usize>,
    /// A delayed replica's delay (ms), until it is promoted.
    pub delay: Option<u64>,
    /// Its visible end while delayed.
    pub horizon: u64,
    pub alive: bool,
    pub down_until: u64,
    pub log: Log,
    pub staged: Option<Staged>,
    pub epoch: u64,
    pub led_epoch: u64,
    /// It fetches segments itself.
    pub fetch: bool,
    /// Its session with its upstream.
    pub session: Option<usize>,
    pub reconnect_at: u64,
    pub backoff: u64,
    /// The cuts of its log, in order (a stream past a cut ends).
    pub cuts: Vec<u64>,
    /// On the primary.
    pub tracker: Option<AckTracker>,
    pub writes: Vec<Write>,
}

impl Node {
    pub fn new(name: &'static str, up: Option<usize>, delay: Option<u64>, fetch: bool) -> Node {
        Node {
            name,
            up,
            delay,
            horizon: 0,
            alive: true,
            down_until: 0,
            log: Log::new(if up.is_none() { 7 } else { 0 }),
            staged: None,
            epoch: 1,
            led_epoch: u64::from(up.is_none()),
            fetch,
            session: None,
            reconnect_at: 0,
            backoff: 100,
            cuts: Vec::new(),
            tracker: up.is_none().then(new_tracker),
            writes: Vec::new(),
        }
    }

    pub fn is_primary(&self) -> bool {
        self.up.is_none()
    }

    /// What readers and downstream replicas see.
    pub fn visible(&self) -> u64 {
        match self.delay {
            Some(_) => self.horizon.min(self.log.durable),
            None => self.log.durable,
        }
    }

    /// A delayed replica moves its horizon over records old enough at `now`.
    pub fn advance_horizon(&mut self, now: u64) {
        let Some(d) = self.delay else { return };
        let cutoff = delay::cutoff_us(now * 1000, Duration::from_millis(d), None);
        let from = delay::scan_from(self.horizon, self.log.start, self.log.durable);
        let frames = (from..self.log.durable).map(|o| (o + 1, self.log.get(o).unwrap().ts * 1000));
        self.horizon = delay::scan(from, frames, cutoff);
    }

    /// Cut the log to `to` (`reset`: empty it and continue from `to`), lowering the
    /// horizon first.
    pub fn cut(&mut self, to: u64, reset: bool) {
        self.horizon = delay::after_cut(self.horizon, to, reset);
        if reset {
            // Every record goes: streams that sent any end.
            self.cuts.push(self.log.start.min(to));
            self.log.reset(to);
        } else {
            self.log.truncate(to);
            self.cuts.push(to);
        }
    }

    /// The lowest cut since the `seen`-th below `from`.
    pub fn cut_below(&self, seen: usize, from: u64) -> Option<u64> {
        self.cuts[seen..]
            .iter()
            .copied()
            .filter(|&c| c < from)
            .min()
    }

    /// A crash: what was not durable is lost, maybe only part of it; a partly received
    /// segment survives in its staging file or not; memory (the tracker, waiting appends)
    /// is gone.
    pub fn crash(&mut self, keep: u64, keep_staged: bool) {
        let keep = keep.clamp(self.log.durable, self.log.end());
        self.log.truncate(keep);
        self.log.sync();
        if !keep_staged {
            self.staged = None;
        }
        self.alive = false;
        self.session = None;
        self.writes.clear();
        if self.tracker.is_some() {
            self.tracker = Some(new_tracker());
        }
    }
}

pub fn new_tracker() -> AckTracker {
    AckTracker::new(AckConfig {
        timeout: Duration::from_millis(ACK_TIMEOUT_MS),
        policy: TimeoutPolicy::Fail,
    })
}
