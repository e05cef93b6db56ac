//! The invariants: no two nodes ack writes in one epoch; a node acks only while the
//! coordinator holds its lease (and the leader key on it) by the coordinator's clock;
//! a record acked under semi-sync is at its offset in the log of every primary that
//! begins after it, and in every log at the end; a node's epoch never goes back.

use crate::node::Write;
use crate::world::World;

impl World {
    /// Node `x` acknowledges `w` now.
    pub fn check_ack(&mut self, x: usize, w: &Write) {
        let n = &self.nodes[x];
        let by = *self.ackers.entry(w.epoch).or_insert(x);
        assert_eq!(
            by, x,
            "{} acks a write in epoch {}, in which {} acked writes",
            n.id, w.epoch, self.nodes[by].id
        );
        let lease = n.agent.lease.unwrap_or(0);
        assert!(
            self.coord.holds(lease, self.now),
            "{} acks records {}..{} but the coordinator's lease {lease} lapsed ({:?})",
            n.id,
            w.first,
            w.end,
            self.coord.leases.get(&lease)
        );
        let key = self.coord.keys.get(crate::coord::LEADER);
        assert!(
            key.is_some_and(|k| k.lease == lease),
            "{} acks records {}..{} but the leader key is not on its lease: {key:?}",
            n.id,
            w.first,
            w.end
        );
        if w.semi_sync {
            self.stats.semi_acked += 1;
            for o in w.first..w.end {
                let r = n.log.get(o).expect("acked records are held");
                let old = self.committed.insert(o, r);
                assert!(
                    old.is_none_or(|old| old == r),
                    "two acked records at {o}: {old:?} and {r:?}"
                );
            }
        } else {
            self.stats.async_acked += 1;
        }
        let id = n.id.clone();
        self.note(format!(
            "{id} acks {}..{} (semi {})",
            w.first, w.end, w.semi_sync
        ));
    }

    /// Node `x` begins writing as primary: it holds every semi-sync acked record.
    pub fn check_begin(&self, x: usize) {
        let n = &self.nodes[x];
        for (&o, &r) in &self.committed {
            assert_eq!(
                n.log.get(o),
                Some(r),
                "{} begins epoch {} without the acked record at {o}",
                n.id,
                n.epoch
            );
        }
    }

    /// After every step: epochs only grow.
    pub fn check_step(&mut self) {
        for (x, n) in self.nodes.iter().enumerate() {
            assert!(
                n.epoch >= self.epochs[x],
                "{}'s epoch went back from {} to {}",
                n.id,
                self.epochs[x],
                n.epoch
            );
            self.epochs[x] = n.epoch;
        }
    }

    /// Once the faults stopped: one leader, followed by all, every log the same.
    pub fn converged(&self) -> Result<(), String> {
        let leaders: Vec<usize> = (0..self.nodes.len())
            .filter(|&x| matches!(self.nodes[x].agent.leading, Some((_, true))))
            .collect();
        let [p] = leaders[..] else {
            return Err(format!("leaders: {leaders:?}"));
        };
        let lead = &self.nodes[p];
        for (x, n) in self.nodes.iter().enumerate() {
            if !n.runs(self.now) {
                return Err(format!("{} is down", n.id));
            }
            if x != p && (n.primary || n.follow != Some(p) || n.epoch != lead.epoch) {
                return Err(format!("{} does not follow {} yet", n.id, lead.id));
            }
            if n.log.recs != lead.log.recs || n.log.durable != n.log.end() {
                let first =
                    (0..n.log.end().max(lead.log.end())).find(|&o| n.log.get(o) != lead.log.get(o));
                return Err(format!(
                    "{} and {} differ from {first:?}: {:?}/{:?} ends {}/{} durable {} history \
                     {:?}/{:?}",
                    n.id,
                    lead.id,
                    first.and_then(|o| n.log.get(o)),
                    first.and_then(|o| lead.log.get(o)),
                    n.log.end(),
                    lead.log.end(),
                    n.log.durable,
                    n.log.history(),
                    lead.log.history()
                ));
            }
            for (&o, &r) in &self.committed {
                if n.log.get(o) != Some(r) {
                    return Err(format!("{} lacks the acked record at {o}", n.id));
                }
            }
        }
        Ok(())
    }
}
