//! The simulated cluster: nodes, sessions, a fake clock and the seeded choice of what
//! happens next. One step is one event; the invariants are checked as it runs
//! (`check.rs`) and convergence once the faults stop.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use spool_replication::ack::AckMode;

use crate::model::Rec;
use crate::net::Session;
use crate::node::{Node, Write};

/// The one log the cluster replicates.
pub const LOG: &str = "L";
/// A delayed replica's delay (ms).
pub const DELAY_MS: u64 = 300;
/// A message takes up to this long (ms).
const NET_DELAY_MAX: u64 = 30;
pub const FAILOVERS_MAX: u32 = 3;

#[derive(Debug)]
pub struct World {
    pub rng: StdRng,
    pub now: u64,
    pub nodes: Vec<Node>,
    pub sessions: Vec<Session>,
    /// Who wrote what: (offset, epoch) to the record written there, by any primary.
    pub slots: HashMap<(u64, u64), u64>,
    /// The appends waiting for their ack mode, by request.
    pub requests: HashMap<u64, Write>,
    pub next_id: u64,
    pub next_req: u64,
    pub faults: bool,
    pub failovers: u32,
    pub trace: Vec<String>,
    pub stats: Stats,
}

/// What a run did, to see that the faults and paths were reached.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub acked: u64,
    pub failovers: u32,
    pub cuts: u64,
    pub full_syncs: u64,
    pub segments: u64,
    pub fetches: u64,
    pub ahead: u64,
    pub restarts: u64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.acked += o.acked;
        self.failovers += o.failovers;
        self.cuts += o.cuts;
        self.full_syncs += o.full_syncs;
        self.segments += o.segments;
        self.fetches += o.fetches;
        self.ahead += o.ahead;
        self.restarts += o.restarts;
    }
}

impl World {
    /// P the primary; R1, R2 its replicas; D delayed; C cascaded below R1 or D.
    pub fn new(seed: u64) -> World {
        let mut rng = StdRng::seed_from_u64(seed);
        let c_up = if rng.gen_bool(0.5) { 1 } else { 3 };
        let nodes = vec![
            Node::new("P", None, None, false),
            Node::new("R1", Some(0), None, rng.gen_bool(0.5)),
            Node::new("R2", Some(0), None, rng.gen_bool(0.5)),
            Node::new("D", Some(0), Some(DELAY_MS), rng.gen_bool(0.5)),
            Node::new("C", Some(c_up), None, rng.gen_bool(0.5)),
        ];
        World {
            rng,
            now: 10_000,
            nodes,
            sessions: Vec::new(),
            slots: HashMap::new(),
            requests: HashMap::new(),
            next_id: 1,
            next_req: 1,
            faults: true,
            failovers: 0,
            trace: Vec::new(),
            stats: Stats::default(),
        }
    }

    pub fn note(&mut self, s: String) {
        self.trace.push(format!("{:>7} {s}", self.now));
    }

    pub fn net_delay(&mut self) -> u64 {
        self.now + self.rng.gen_range(0..=NET_DELAY_MAX)
    }

    pub fn primary(&self) -> Option<usize> {
        self.nodes.iter().position(|n| n.is_primary())
    }

    /// One event, chosen by weight; then what is due happens.
    pub fn step(&mut self) {
        let faults = if self.faults { 4 } else { 0 };
        let w = [20, 15, 25, 12, 25, 10, 5, faults];
        let total: u32 = w.iter().sum();
        let mut pick = self.rng.gen_range(0..total);
        let mut i = 0;
        while pick >= w[i] {
            pick -= w[i];
            i += 1;
        }
        match i {
            0 if self.faults => self.write(),
            1 => self.sync_one(),
            2 => self.deliver_one_down(),
            3 => self.deliver_one_up(),
            4 => self.pump_one(),
            5 => self.tick(),
            6 => self.beat_one(),
            7 => self.fault(),
            _ => {}
        }
        self.due();
    }

    /// Restarts and reconnects whose time has come.
    fn due(&mut self) {
        for x in 0..self.nodes.len() {
            let n = &self.nodes[x];
            if !n.alive && self.now >= n.down_until {
                self.nodes[x].alive = true;
                self.nodes[x].reconnect_at = self.now;
                let name = self.nodes[x].name;
                self.note(format!("{name} restarted"));
            }
            let n = &self.nodes[x];
            if n.alive && n.up.is_some() && n.session.is_none() && self.now >= n.reconnect_at {
                self.open_session(x);
            }
        }
    }

    fn tick(&mut self) {
        self.now += self.rng.gen_range(1..=40);
        let now = self.now;
        for x in 0..self.nodes.len() {
            self.nodes[x].advance_horizon(now);
            if let Some(t) = self.nodes[x].tracker.as_mut() {
                let cmds = t.tick(now_instant(now));
                self.execute(x, cmds);
            }
        }
    }

    /// A client appends 1 to 3 records on the primary, async or semi-sync:1.
    fn write(&mut self) {
        let Some(p) = self.primary().filter(|&p| self.nodes[p].alive) else {
            return;
        };
        let mode = if self.rng.gen_bool(0.5) {
            AckMode::SemiSync(1)
        } else {
            AckMode::Async
        };
        let refused = self.nodes[p].tracker.as_ref().unwrap().cannot_satisfy(mode);
        if refused.is_some() {
            return;
        }
        let n = self.rng.gen_range(1..=3);
        let first = self.nodes[p].log.end();
        for _ in 0..n {
            let rec = Rec {
                id: self.next_id,
                epoch: self.nodes[p].epoch,
                ts: self.now,
            };
            self.next_id += 1;
            let at = self.nodes[p].log.end();
            self.claim_slot(at, rec);
            self.nodes[p].log.push(rec);
        }
        let w = Write {
            req: self.next_req,
            first,
            end: first + n,
            mode,
        };
        self.next_req += 1;
        self.nodes[p].writes.push(w);
        self.requests.insert(w.req, w);
    }

    /// A node's group commit: what it appended is durable; the primary's waiting appends
    /// go to the tracker, a replica acks.
    fn sync_one(&mut self) {
        let x = self.rng.gen_range(0..self.nodes.len());
        if !self.nodes[x].alive {
            return;
        }
        self.nodes[x].log.sync();
        if self.nodes[x].is_primary() {
            self.settle_writes(x);
        } else if let Some(sid) = self.nodes[x].session {
            self.send_ack(sid);
        }
    }

    fn settle_writes(&mut self, p: usize) {
        let durable = self.nodes[p].log.durable;
        let (done, waiting): (Vec<Write>, Vec<Write>) = std::mem::take(&mut self.nodes[p].writes)
            .into_iter()
            .partition(|w| w.end <= durable);
        self.nodes[p].writes = waiting;
        let now = now_instant(self.now);
        for w in done {
            let t = self.nodes[p].tracker.as_mut().unwrap();
            let cmds = t.append(now, w.req, LOG, w.end, w.mode);
            self.execute(p, cmds);
        }
    }

    fn pick_session(&mut self, ok: impl Fn(&Session) -> bool) -> Option<usize> {
        let ids: Vec<usize> = (0..self.sessions.len())
            .filter(|&i| ok(&self.sessions[i]))
            .collect();
        (!ids.is_empty()).then(|| ids[self.rng.gen_range(0..ids.len())])
    }

    fn deliver_one_down(&mut self) {
        let now = self.now;
        if let Some(sid) = self.pick_session(|s| s.due_down(now)) {
            self.deliver_down(sid);
        }
    }

    fn deliver_one_up(&mut self) {
        let now = self.now;
        if let Some(sid) = self.pick_session(|s| s.due_up(now)) {
            self.deliver_up(sid);
        }
    }

    fn pump_one(&mut self) {
        if let Some(sid) = self.pick_session(|s| s.open) {
            self.pump(sid);
        }
    }

    /// The replica's heartbeat carries its acks.
    fn beat_one(&mut self) {
        if let Some(sid) = self.pick_session(|s| s.open) {
            self.send_ack(sid);
        }
    }

    /// Record that the primary wrote `rec` at `at`. A record it wrote there before in the
    /// same epoch was lost before it was durable, so no node may hold it.
    fn claim_slot(&mut self, at: u64, rec: Rec) {
        if let Some(old) = self.slots.insert((at, rec.epoch), rec.id) {
            for n in &self.nodes {
                assert!(
                    n.log.get(at).is_none_or(|r| r.id != old),
                    "{} holds record {old} at {at} in epoch {}, which its primary wrote over",
                    n.name,
                    rec.epoch
                );
            }
        }
    }
}

/// The fake clock as the tracker takes it.
pub fn now_instant(ms: u64) -> std::time::Instant {
    use std::sync::OnceLock;
    static BASE: OnceLock<std::time::Instant> = OnceLock::new();
    *BASE.get_or_init(std::time::Instant::now) + std::time::Duration::from_millis(ms)
}
