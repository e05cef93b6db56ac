//! Replication sessions over a simulated network: two ordered queues (down: upstream to
//! replica, up: replica to upstream) whose messages arrive after a delay, lost whole when
//! the session breaks.

use std::collections::VecDeque;

use spool_replication::handshake::{Credit, Plan};
use spool_replication::sender::Sender;
use spool_replication::session::ReplicaSession;

use crate::model::Rec;

#[derive(Debug, Clone)]
pub enum Down {
    /// The plan for the log, with the upstream's incarnation.
    Start(Plan, u64),
    Frames {
        first: u64,
        recs: Vec<Rec>,
    },
    /// Frames of the upstream's segment, or (None) an offer to fetch them.
    Chunk {
        segment: (u64, u64),
        first: u64,
        recs: Option<Vec<Rec>>,
    },
}

#[derive(Debug, Clone)]
pub enum Up {
    /// The replica's durable end of the log.
    Ack(u64),
}

/// What the upstream does for the replica's log.
#[derive(Debug)]
pub enum Stream {
    /// Nothing is sent (diverged).
    Blocked,
    /// The replica is ahead: wait until this node holds `replica_end` in the same history.
    Ahead {
        upstream_end: u64,
        replica_end: u64,
        epoch: u64,
    },
    Sending(Sender),
}

#[derive(Debug)]
pub struct Session {
    pub up: usize,
    pub down: usize,
    pub open: bool,
    pub to_down: VecDeque<(u64, Down)>,
    pub to_up: VecDeque<(u64, Up)>,
    pub stream: Stream,
    /// How many of the upstream's cuts the stream has seen.
    pub cuts_seen: usize,
    /// The upstream's visible end when it planned: what it vouched for.
    pub vouched: u64,
    /// The replica side of the session (its ack gate among the rest).
    pub replica: ReplicaSession,
    /// The highest ack the upstream took in this session.
    pub last_ack: u64,
    /// What the replica's plan credited it with (`Plan::credit`): while not whole, its
    /// acks count for no more than that, as on the server.
    pub credit: Credit,
    /// The replica's last frame at hello, checked when an `Ahead` wait ends.
    pub last_frame: Option<(u64, u32)>,
}

/// Messages a session buffers towards a replica: a slow one holds its sender back.
pub const QUEUE_MAX: usize = 6;

impl Session {
    pub fn send_down(&mut self, at: u64, m: Down) {
        let at = self.to_down.back().map_or(at, |&(t, _)| t.max(at));
        self.to_down.push_back((at, m));
    }

    pub fn send_up(&mut self, at: u64, m: Up) {
        let at = self.to_up.back().map_or(at, |&(t, _)| t.max(at));
        self.to_up.push_back((at, m));
    }

    pub fn due_down(&self, now: u64) -> bool {
        self.open && self.to_down.front().is_some_and(|&(t, _)| t <= now)
    }

    pub fn due_up(&self, now: u64) -> bool {
        self.open && self.to_up.front().is_some_and(|&(t, _)| t <= now)
    }
}
