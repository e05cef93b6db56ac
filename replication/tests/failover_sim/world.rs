//! The simulated cluster: nodes, the coordinator, the network and virtual time. One step
//! advances time a few milliseconds, delivers what is due, runs every node's agent,
//! follower, group commit and acks, maybe a client write and a fault, then checks.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use spool_replication::failover::{LogEnd, Member, Policy};

use crate::coord::Coord;
use crate::log::Rec;
use crate::net::Net;
use crate::node::Node;

/// How long (local ms) the agent waits for one coordinator call.
pub const CALL_TIMEOUT_MS: u64 = 1000;
/// The agent's tick while no node holds the leader key (the server's VACANT_TICK).
pub const VACANT_TICK_MS: u64 = 25;
/// Node clocks run this much faster or slower than the coordinator's, at most.
const DRIFT_MAX: f64 = 0.01;
pub const LOG: &str = "L";

#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub semi_acked: u64,
    pub async_acked: u64,
    pub unacked: u64,
    pub elections: u64,
    pub tails: u64,
    pub cuts: u64,
    pub refused: u64,
    pub crashes: u64,
    pub pauses: u64,
    pub cuts_off: u64,
    pub expired: u64,
    pub fenced: u64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.semi_acked += o.semi_acked;
        self.async_acked += o.async_acked;
        self.unacked += o.unacked;
        self.elections += o.elections;
        self.tails += o.tails;
        self.cuts += o.cuts;
        self.refused += o.refused;
        self.crashes += o.crashes;
        self.pauses += o.pauses;
        self.cuts_off += o.cuts_off;
        self.expired += o.expired;
        self.fenced += o.fenced;
    }
}

#[derive(Debug)]
pub struct World {
    pub rng: StdRng,
    pub now: u64,
    pub nodes: Vec<Node>,
    pub coord: Coord,
    pub net: Net,
    pub policy: Policy,
    pub faults: bool,
    pub next_value: u64,
    ids: u64,
    /// Semi-sync acked records by offset.
    pub committed: BTreeMap<u64, Rec>,
    /// Which node acked writes in each epoch.
    pub ackers: BTreeMap<u64, usize>,
    /// Each node's epoch as last checked.
    pub epochs: Vec<u64>,
    pub trace: Vec<String>,
    pub stats: Stats,
}

impl World {
    pub fn new(seed: u64) -> World {
        let mut rng = StdRng::seed_from_u64(seed);
        let count = rng.gen_range(3..=5);
        // Half the runs configure one node as a sync replica: preferred as candidate even
        // when it lacks semi-sync records, it takes them from its peers first.
        let sync = rng.gen_bool(0.5).then(|| rng.gen_range(0..count));
        let nodes = (0..count)
            .map(|x| {
                let rate = 1.0 + rng.gen_range(-DRIFT_MAX..=DRIFT_MAX);
                let mut n = Node::new(x, rate, rng.gen_range(0..1_000_000));
                n.sync = sync == Some(x);
                n
            })
            .collect();
        World {
            rng,
            now: 0,
            nodes,
            coord: Coord::default(),
            net: Net::default(),
            policy: Policy::default(),
            faults: true,
            next_value: 0,
            ids: 0,
            committed: BTreeMap::new(),
            ackers: BTreeMap::new(),
            epochs: vec![0; count],
            trace: Vec::new(),
            stats: Stats::default(),
        }
    }

    pub fn note(&mut self, s: String) {
        self.trace.push(format!("{:>7} {s}", self.now));
    }

    pub fn next_id(&mut self) -> u64 {
        self.ids += 1;
        self.ids
    }

    pub fn step(&mut self) {
        self.now += self.rng.gen_range(1..=8);
        let gone = self.coord.expire(self.now);
        for l in gone {
            self.stats.expired += 1;
            self.note(format!("coordinator: lease {l} expired"));
        }
        self.deliver();
        for x in 0..self.nodes.len() {
            self.restart_step(x);
            if !self.nodes[x].runs(self.now) {
                continue;
            }
            self.agent_timers(x);
            if self.rng.gen_bool(0.3) {
                self.fetch_step(x);
            }
            self.sync_step(x);
            self.ack_step(x);
        }
        if self.rng.gen_bool(0.1) {
            let x = self.rng.gen_range(0..self.nodes.len());
            if self.faults
                || self.nodes[x].log.recs.last().map(|r| r.epoch) < Some(self.nodes[x].epoch)
            {
                // Once the faults stop, one write in the last epoch: a replica holding an
                // older epoch's tail past the new primary's end cuts it only then.
                self.write(x);
            }
        }
        self.fault_step();
        self.check_step();
    }

    /// This node's member record now, as the agent publishes it.
    pub fn member(&self, x: usize) -> Member {
        let n = &self.nodes[x];
        let end = LogEnd {
            end: n.log.durable,
            last_epoch: n.log.current_epoch(),
        };
        Member {
            id: n.id.clone(),
            addr: n.id.clone(),
            epoch: n.epoch,
            primary: n.primary,
            sync: n.sync,
            seq: n.agent.seq,
            logs: [(LOG.to_owned(), end)].into_iter().collect(),
            ..Member::default()
        }
    }
}

/// A node's local time as the failover code takes it.
pub fn instant(ms: u64) -> std::time::Instant {
    use std::sync::OnceLock;
    static BASE: OnceLock<std::time::Instant> = OnceLock::new();
    *BASE.get_or_init(std::time::Instant::now) + std::time::Duration::from_millis(ms)
}
