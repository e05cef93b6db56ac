//! The invariants, checked where they could break: a record a replica receives is the one
//! its primary wrote at that position in that epoch, and one its upstream shows; once a
//! plan is carried out the replica agrees with its upstream on what both hold; an append
//! acknowledged with replicas is durable on them as the primary holds it; and, once the
//! faults stop, every replica converges on its upstream.

use crate::model::Rec;
use crate::world::{World, DELAY_MS};

impl World {
    /// Replica of session `sid` takes `r` at offset `at`.
    pub fn receive(&self, sid: usize, at: u64, r: Rec) {
        let s = &self.sessions[sid];
        let (u, x) = (&self.nodes[s.up], &self.nodes[s.down]);
        assert_eq!(
            self.slots.get(&(at, r.epoch)),
            Some(&r.id),
            "{} received record {} (epoch {}) at {at}, where no primary wrote it in that epoch",
            x.name,
            r.id,
            r.epoch
        );
        if u.delay.is_some() {
            assert!(
                r.ts + DELAY_MS <= self.now,
                "{} got record {} of time {} from delayed {} at {}",
                x.name,
                r.id,
                r.ts,
                u.name,
                self.now
            );
        }
    }

    /// After a plan: the two logs hold the same records where both hold any, up to what
    /// the upstream vouched for (unless it cut its log since, which ends the session).
    pub fn check_agreement(&self, sid: usize) {
        let s = &self.sessions[sid];
        let (u, x) = (&self.nodes[s.up], &self.nodes[s.down]);
        if !s.open || u.cuts.len() != s.cuts_seen {
            return;
        }
        let from = u.log.start.max(x.log.start);
        let to = u.log.end().min(x.log.end()).min(s.vouched);
        for o in from..to {
            assert_eq!(
                u.log.get(o),
                x.log.get(o),
                "{} and its upstream {} disagree at {o} after the plan",
                x.name,
                u.name
            );
        }
    }

    /// Records `[first, end)` were acknowledged as durable on `k` replicas of `p`.
    pub fn check_confirmed(&self, p: usize, first: u64, end: u64, k: u32) {
        let primary = &self.nodes[p];
        let from = first.max(primary.log.start);
        let holders = self
            .nodes
            .iter()
            .filter(|n| n.up == Some(p) && n.delay.is_none())
            .filter(|n| n.log.durable >= end && n.log.start <= from)
            .filter(|n| (from..end).all(|o| n.log.get(o) == primary.log.get(o)))
            .count();
        assert!(
            holders >= k as usize,
            "records {first}..{end} acknowledged with {k} replica(s), held by {holders}"
        );
    }

    /// Every replica holds what its upstream shows, and the primary what it wrote durably.
    pub fn converged(&self) -> Result<(), String> {
        for x in &self.nodes {
            if x.log.end() != x.log.durable || x.visible() != x.log.durable {
                return Err(format!(
                    "{} has records not durable or not visible yet",
                    x.name
                ));
            }
            let Some(u) = x.up.map(|u| &self.nodes[u]) else {
                continue;
            };
            if x.log.durable != u.visible() {
                return Err(format!(
                    "{} ends at {} (durable {}), its upstream {} shows {}",
                    x.name,
                    x.log.end(),
                    x.log.durable,
                    u.name,
                    u.visible()
                ));
            }
            let from = u.log.start.max(x.log.start);
            if let Some(o) = (from..x.log.end()).find(|&o| u.log.get(o) != x.log.get(o)) {
                return Err(format!("{} differs from {} at {o}", x.name, u.name));
            }
        }
        Ok(())
    }
}
