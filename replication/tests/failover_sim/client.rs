//! Clients write to whichever node takes writes (a zombie primary too): semi-sync k=1
//! (acked once durable here and acked by a replica) or async (acked once durable here).
//! An ack goes out only while the node's `LeaseClock` allows it, as the server checks
//! before replying.

use rand::Rng;

use crate::log::Rec;
use crate::node::Write;
use crate::world::{instant, World};

/// A write not acknowledged within this (local ms) fails.
const WRITE_TIMEOUT_MS: u64 = 1000;

impl World {
    /// A client appends 1 to 3 records on node `x` if it takes writes.
    pub fn write(&mut self, x: usize) {
        let n = &self.nodes[x];
        if !n.runs(self.now) || !n.primary || n.fenced {
            return;
        }
        let count = self.rng.gen_range(1..=3);
        let semi_sync = self.rng.gen_bool(0.6);
        let n = &mut self.nodes[x];
        if n.log.current_epoch() < n.epoch {
            n.log.begin_epoch(n.epoch);
        }
        let first = n.log.end();
        for _ in 0..count {
            self.next_value += 1;
            let rec = Rec {
                epoch: self.nodes[x].epoch,
                value: self.next_value,
            };
            self.nodes[x].log.push(rec);
        }
        let n = &mut self.nodes[x];
        let deadline = n.local(self.now) + WRITE_TIMEOUT_MS;
        n.writes.push(Write {
            first,
            end: first + count,
            epoch: n.epoch,
            semi_sync,
            deadline,
        });
    }

    /// Writes whose ack mode is satisfied are acknowledged if the lease allows it now.
    pub fn ack_step(&mut self, x: usize) {
        let local = self.nodes[x].local(self.now);
        let n = &self.nodes[x];
        let replicated = n.acks.values().copied().max().unwrap_or(0);
        let (done, waiting): (Vec<Write>, Vec<Write>) = n.writes.iter().partition(|w| {
            w.end <= n.log.durable && (!w.semi_sync || w.end <= replicated) || local >= w.deadline
        });
        self.nodes[x].writes = waiting;
        for w in done {
            let n = &self.nodes[x];
            let satisfied = w.end <= n.log.durable && (!w.semi_sync || w.end <= replicated);
            if satisfied && n.agent.clock.may_ack(instant(local)) && w.epoch == n.epoch {
                self.check_ack(x, &w);
            } else {
                self.stats.unacked += 1;
            }
        }
    }
}
