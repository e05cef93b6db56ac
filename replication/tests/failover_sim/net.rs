//! Messages between nodes and to and from the coordinator: each arrives after a random
//! delay, or never (lost, or its node is cut off from the coordinator). A paused node's
//! messages wait for it; a crashed one's are dropped.

use crate::coord::{Req, Resp};
use crate::log::Rec;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addr {
    Coord,
    Node(usize),
}

#[derive(Debug, Clone)]
pub enum Body {
    ToCoord(u64, Req),
    FromCoord(u64, Resp),
    /// A replica asks its upstream for what follows its log; it carries the replica's ack
    /// (its durable end) and its epoch.
    Fetch(Fetch),
    Frames(Frames),
    /// A new primary takes a tail from a peer: records `from..to`.
    TailReq {
        id: u64,
        from: u64,
        to: u64,
    },
    Tail {
        id: u64,
        history: Vec<(u64, u64)>,
        from: u64,
        recs: Vec<Rec>,
    },
    /// A node that began its epoch tells the others to look at the coordinator now.
    LookNow,
}

#[derive(Debug, Clone)]
pub struct Fetch {
    pub id: u64,
    pub epoch: u64,
    pub history: Vec<(u64, u64)>,
    pub end: u64,
    pub durable: u64,
}

#[derive(Debug, Clone)]
pub struct Frames {
    pub id: u64,
    pub up_epoch: u64,
    pub decision: spool_replication::divergence::Decision,
    /// Records from the decision's point, up to the upstream's durable end.
    pub recs: Vec<Rec>,
}

#[derive(Debug, Clone)]
pub struct Msg {
    pub at: u64,
    pub from: Addr,
    pub to: Addr,
    pub body: Body,
}

#[derive(Debug, Default)]
pub struct Net {
    pub msgs: Vec<Msg>,
}

impl Net {
    pub fn send(&mut self, m: Msg) {
        self.msgs.push(m);
    }

    /// The first message due by `now` whose receiver may take it.
    pub fn take_due(&mut self, now: u64, ready: impl Fn(Addr) -> bool) -> Option<Msg> {
        let i = (0..self.msgs.len())
            .filter(|&i| self.msgs[i].at <= now && ready(self.msgs[i].to))
            .min_by_key(|&i| self.msgs[i].at)?;
        Some(self.msgs.remove(i))
    }

    /// Drop what is in flight to node `x` (it crashed); what it sent may still arrive.
    pub fn drop_to(&mut self, x: usize) {
        self.msgs.retain(|m| m.to != Addr::Node(x));
    }
}
