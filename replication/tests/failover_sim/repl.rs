//! Replication as the model runs it: a replica asks the upstream it follows for what
//! comes after its log, carrying its ack (durable end) and its epoch; the upstream decides
//! with the crate's `divergence::decide_with_history` (continue, cut a divergent tail,
//! full sync, or wait for an upstream behind) and counts the ack only when the replica's
//! log is a prefix of its own. A replica refuses an upstream at a lower epoch; an upstream
//! told of a higher epoch fences itself.

use rand::Rng;
use spool_replication::divergence::{decide_with_history, Decision};

use crate::net::{Addr, Body, Fetch, Frames};
use crate::world::World;

/// Records per answer, and how long (local ms) a replica waits for one.
const BATCH_MAX: u64 = 8;
const FETCH_TIMEOUT_MS: u64 = 300;

impl World {
    /// A replica asks its upstream, unless it waits for an answer.
    pub fn fetch_step(&mut self, x: usize) {
        let local = self.nodes[x].local(self.now);
        let n = &self.nodes[x];
        let Some(up) = n.follow else { return };
        if n.fetching.is_some_and(|(_, until)| local < until) || n.primary {
            return;
        }
        let id = self.next_id();
        let n = &mut self.nodes[x];
        n.fetching = Some((id, local + FETCH_TIMEOUT_MS));
        let f = Fetch {
            id,
            epoch: n.epoch,
            history: n.log.history(),
            end: n.log.end(),
            durable: n.log.durable,
        };
        self.send(Addr::Node(x), Addr::Node(up), Body::Fetch(f));
    }

    /// The upstream `u` answers replica `r`'s fetch.
    pub fn on_fetch(&mut self, u: usize, r: usize, f: Fetch) {
        let n = &self.nodes[u];
        if f.epoch > n.epoch {
            if !n.fenced {
                self.stats.fenced += 1;
                self.note(format!(
                    "{} fenced by {} at epoch {}",
                    n.id, self.nodes[r].id, f.epoch
                ));
            }
            self.nodes[u].fenced = true;
            return;
        }
        let hist = n.log.durable_history();
        let Ok(d) = decide_with_history(&hist, 0, n.log.durable, &f.history, 0, f.end) else {
            return;
        };
        let from = match d {
            Decision::Continue { from } => from,
            Decision::TruncateThenContinue { to } => to,
            Decision::FullSync { from } => from,
            Decision::Ahead { .. } => n.log.durable,
        };
        if d == (Decision::Continue { from: f.end }) && n.primary {
            let a = self.nodes[u].acks.entry(r).or_default();
            *a = (*a).max(f.durable);
        }
        let n = &self.nodes[u];
        let to = n.log.durable.min(from + BATCH_MAX);
        let recs = n.log.recs[from as usize..to as usize].to_vec();
        let fr = Frames {
            id: f.id,
            up_epoch: n.epoch,
            decision: d,
            recs,
        };
        self.send(Addr::Node(u), Addr::Node(r), Body::Frames(fr));
    }

    /// Replica `x` takes its upstream's answer.
    pub fn on_frames(&mut self, x: usize, fr: Frames) {
        let n = &mut self.nodes[x];
        if n.fetching.map(|(id, _)| id) != Some(fr.id) {
            return;
        }
        n.fetching = None;
        if fr.up_epoch < n.epoch {
            self.stats.refused += 1;
            return;
        }
        n.epoch = fr.up_epoch;
        match fr.decision {
            Decision::Continue { from } => n.log.append(from, &fr.recs),
            Decision::TruncateThenContinue { to } | Decision::FullSync { from: to } => {
                let (id, end) = (n.id.clone(), n.log.end());
                n.log.truncate(to);
                n.log.append(to, &fr.recs);
                self.stats.cuts += 1;
                self.note(format!("{id} cuts its log {end} -> {to}"));
            }
            Decision::Ahead { .. } => {}
        }
    }

    /// A peer serves a tail from its durable records.
    pub fn on_tail_req(&mut self, p: usize, x: usize, id: u64, from: u64, to: u64) {
        let log = &self.nodes[p].log;
        let to = to.min(log.durable);
        let recs = if from < to {
            log.recs[from as usize..to as usize].to_vec()
        } else {
            Vec::new()
        };
        let body = Body::Tail {
            id,
            history: log.durable_history(),
            from,
            recs,
        };
        self.send(Addr::Node(p), Addr::Node(x), body);
    }

    /// A group commit on a random node now and then.
    pub fn sync_step(&mut self, x: usize) {
        if self.rng.gen_bool(0.2) {
            self.nodes[x].log.sync();
        }
    }
}
