//! What goes wrong, one node at a time (semi-sync with one replica survives one fault):
//! a crash (durable records kept), a pause (the process stops, then resumes: a zombie
//! primary), a cut from the coordinator. Messages are lost now and then besides.

use std::ops::RangeInclusive;

use rand::Rng;

use crate::world::World;

const DOWN_MS: RangeInclusive<u64> = 100..=4000;
const PAUSE_MS: RangeInclusive<u64> = 200..=5000;
const CUT_MS: RangeInclusive<u64> = 300..=6000;
/// A fault begins in a step with this chance (while none is going on).
const FAULT_CHANCE: f64 = 0.004;

impl World {
    /// Node `x` is crashed, paused or cut off now.
    pub fn impaired(&self, x: usize) -> bool {
        let n = &self.nodes[x];
        !n.alive || self.now < n.paused_until || self.now < n.cut_until
    }

    pub fn fault_step(&mut self) {
        let any = (0..self.nodes.len()).any(|x| self.impaired(x));
        if !self.faults || any || !self.rng.gen_bool(FAULT_CHANCE) {
            return;
        }
        // The primary half the time: failovers are what is under test.
        let primary = self.nodes.iter().position(|n| n.primary);
        let x = match primary {
            Some(p) if self.rng.gen_bool(0.5) => p,
            _ => self.rng.gen_range(0..self.nodes.len()),
        };
        let id = self.nodes[x].id.clone();
        match self.rng.gen_range(0..3) {
            0 => {
                let ms = self.rng.gen_range(DOWN_MS);
                self.nodes[x].crash();
                self.nodes[x].down_until = self.now + ms;
                self.net.drop_to(x);
                self.stats.crashes += 1;
                self.note(format!("{id} crashes for {ms} ms"));
            }
            1 => {
                let ms = self.rng.gen_range(PAUSE_MS);
                self.nodes[x].paused_until = self.now + ms;
                self.stats.pauses += 1;
                self.note(format!("{id} pauses for {ms} ms"));
            }
            _ => {
                let ms = self.rng.gen_range(CUT_MS);
                self.nodes[x].cut_until = self.now + ms;
                self.stats.cuts_off += 1;
                self.note(format!("{id} is cut off from the coordinator for {ms} ms"));
            }
        }
    }

    /// A crashed node whose time came starts again: its log and role as persisted.
    pub fn restart_step(&mut self, x: usize) {
        let n = &mut self.nodes[x];
        if n.alive || self.now < n.down_until {
            return;
        }
        n.alive = true;
        n.agent.next_round = n.local(self.now);
        let id = n.id.clone();
        self.note(format!("{id} restarts"));
    }
}
