//! One node: its log and persisted role (epoch, primary or not), its clock running at its
//! own rate, the cluster agent's state as the server keeps it, its follower and the
//! client writes waiting for their acks.

use std::collections::BTreeMap;

use spool_replication::failover::{LeaseClock, Vacancy};

use crate::agent::Round;
use crate::log::Log;

/// A client write waiting for its ack: records `first..end`, written in `epoch`.
#[derive(Debug, Clone, Copy)]
pub struct Write {
    pub first: u64,
    pub end: u64,
    pub epoch: u64,
    pub semi_sync: bool,
    /// Local time it fails unacknowledged.
    pub deadline: u64,
}

/// The agent's state (lost at a crash, as the server's is).
#[derive(Debug, Default)]
pub struct Agent {
    pub lease: Option<u64>,
    pub clock: LeaseClock,
    /// The epoch whose leader key this node holds, and whether it began it.
    pub leading: Option<(u64, bool)>,
    pub vacancy: Vacancy,
    pub seq: u64,
    /// The leader key as last seen (the agent looks sooner without one).
    pub saw_leader: bool,
    /// Local time the next round starts.
    pub next_round: u64,
    /// A peer's look-now hint came during a round: the next one starts at once.
    pub woken: bool,
    pub round: Option<Round>,
}

#[derive(Debug)]
pub struct Node {
    pub id: String,
    pub log: Log,
    /// Persisted: the node's epoch and whether it is primary.
    pub epoch: u64,
    pub primary: bool,
    /// Persisted: the last epoch this node began as primary.
    pub led: u64,
    /// Told by a replica at a higher epoch: refuses writes until it becomes primary again.
    pub fenced: bool,
    /// Configured as a synchronous replica (preferred as candidate).
    pub sync: bool,
    /// Local clock: `offset + now * rate`.
    pub rate: f64,
    pub offset: u64,
    pub alive: bool,
    pub down_until: u64,
    pub paused_until: u64,
    pub cut_until: u64,
    pub agent: Agent,
    /// The upstream followed (a node index).
    pub follow: Option<usize>,
    /// An outstanding fetch: its id and when (local) it is given up.
    pub fetching: Option<(u64, u64)>,
    /// As primary: replicas' acked durable ends in this epoch.
    pub acks: BTreeMap<usize, u64>,
    pub writes: Vec<Write>,
}

impl Node {
    pub fn new(x: usize, rate: f64, offset: u64) -> Node {
        Node {
            id: format!("n{x}"),
            log: Log::default(),
            epoch: 0,
            primary: false,
            led: 0,
            fenced: false,
            sync: false,
            rate,
            offset,
            alive: true,
            down_until: 0,
            paused_until: 0,
            cut_until: 0,
            agent: Agent::default(),
            follow: None,
            fetching: None,
            acks: BTreeMap::new(),
            writes: Vec::new(),
        }
    }

    /// This node's clock at simulation time `now` (ms).
    pub fn local(&self, now: u64) -> u64 {
        self.offset + (now as f64 * self.rate) as u64
    }

    /// Takes steps now: up and not paused.
    pub fn runs(&self, now: u64) -> bool {
        self.alive && now >= self.paused_until
    }

    /// A crash: what is not durable is lost, and all the process held in memory.
    pub fn crash(&mut self) {
        self.log.crash();
        self.alive = false;
        self.fenced = false;
        self.agent = Agent::default();
        self.follow = None;
        self.fetching = None;
        self.acks.clear();
        self.writes.clear();
    }

    /// Stepping down or losing the lease: no acks, writes waiting fail.
    pub fn become_replica(&mut self) {
        self.primary = false;
        self.fenced = false;
        self.acks.clear();
        self.writes.clear();
    }
}
