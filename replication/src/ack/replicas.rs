//! The replicas the ack tracker knows, with their flags and how far each has each log durable.
//!
//! A replica's acks stay valid after it disconnects (the records are durable there), and a
//! synchronous replica that went away must still confirm `Sync` appends, so replicas are
//! remembered across disconnects. Gone replicas that no `Sync` append waits for are forgotten
//! oldest first past [`DISCONNECTED_MAX`]: forgetting one can only lower confirmation counts,
//! which delays acks and never releases one early.

use std::collections::BTreeMap;
use std::time::Instant;

use super::Need;

/// Disconnected replicas remembered beyond the synchronous ones.
pub(super) const DISCONNECTED_MAX: usize = 64;

#[derive(Debug)]
struct Replica {
    /// Configured synchronous.
    sync: bool,
    /// Its acks count toward semi-sync and sync.
    counts: bool,
    /// `None` while connected, else when it went away.
    disconnected_at: Option<Instant>,
    /// Per log, the end (exclusive) of what is durable there; absent means 0. Acks only
    /// raise it; a handshake sets it (`set`).
    durable_end: BTreeMap<String, u64>,
}

impl Replica {
    /// Member of the set every `Sync` append waits for.
    fn is_sync(&self) -> bool {
        self.sync && self.counts
    }

    fn end(&self, log: &str) -> u64 {
        self.durable_end.get(log).copied().unwrap_or(0)
    }
}

#[derive(Debug, Default)]
pub(super) struct ReplicaTable {
    replicas: BTreeMap<String, Replica>,
}

impl ReplicaTable {
    /// Known replica, or a new one; the flags of the latest connection win.
    pub(super) fn connect(&mut self, id: &str, sync: bool, counts: bool) {
        let r = self
            .replicas
            .entry(id.to_owned())
            .or_insert_with(|| Replica {
                sync,
                counts,
                disconnected_at: None,
                durable_end: BTreeMap::new(),
            });
        r.sync = sync;
        r.counts = counts;
        r.disconnected_at = None;
    }

    pub(super) fn disconnect(&mut self, now: Instant, id: &str) {
        if let Some(r) = self.replicas.get_mut(id) {
            r.disconnected_at.get_or_insert(now);
        }
        self.forget_excess();
    }

    /// Forgets the longest-gone replicas past the bound, never a synchronous one.
    fn forget_excess(&mut self) {
        let mut gone: Vec<(Instant, String)> = self
            .replicas
            .iter()
            .filter(|(_, r)| !r.is_sync())
            .filter_map(|(id, r)| r.disconnected_at.map(|t| (t, id.clone())))
            .collect();
        if gone.len() <= DISCONNECTED_MAX {
            return;
        }
        gone.sort_unstable();
        let excess = gone.len() - DISCONNECTED_MAX;
        for (_, id) in gone.into_iter().take(excess) {
            self.replicas.remove(&id);
        }
    }

    /// Records that `id` holds `log` up to exactly `end` now, lower than known or not (a
    /// replica whose log was cut back since its earlier acks). True when that raised it.
    pub(super) fn set(&mut self, id: &str, log: &str, end: u64) -> bool {
        let Some(r) = self.replicas.get_mut(id) else {
            return false;
        };
        let raised = end > r.end(log);
        r.durable_end.insert(log.to_owned(), end);
        raised
    }

    /// Records that `id` has `log` durable up to `end`. False when nothing changed: an unknown
    /// replica, or a value not beyond the one known (acks may arrive reordered).
    pub(super) fn ack(&mut self, id: &str, log: &str, end: u64) -> bool {
        let Some(r) = self.replicas.get_mut(id) else {
            return false;
        };
        if end <= r.end(log) {
            return false;
        }
        let old = r.durable_end.insert(log.to_owned(), end);
        debug_assert!(old.is_none_or(|o| o < end), "durable ends only grow");
        true
    }

    fn counting(&self) -> impl Iterator<Item = &Replica> {
        self.replicas.values().filter(|r| r.counts)
    }

    /// How many counting replicas have `log` durable at or beyond `end`.
    pub(super) fn confirmed(&self, log: &str, end: u64) -> u32 {
        let n = self.counting().filter(|r| r.end(log) >= end).count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Connected replicas whose acks count.
    pub(super) fn connected_counting(&self) -> u32 {
        let n = self
            .counting()
            .filter(|r| r.disconnected_at.is_none())
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    pub(super) fn sync_count(&self) -> u32 {
        let n = self.replicas.values().filter(|r| r.is_sync()).count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Replicas `need` asks for right now (the sync set can change).
    pub(super) fn required(&self, need: Need) -> u32 {
        match need {
            Need::Replicas(k) => k,
            Need::AllSync => self.sync_count(),
        }
    }

    /// The largest end offset for which `need` holds in `log`: every request of that need with
    /// an end at or below it is satisfied, every other one is not. `None` when no end is
    /// (fewer than k counting replicas known, or no synchronous replica).
    pub(super) fn satisfied_up_to(&self, log: &str, need: Need) -> Option<u64> {
        match need {
            Need::Replicas(k) => {
                debug_assert!(k >= 1, "SemiSync(0) never waits");
                let mut ends: Vec<u64> = self.counting().map(|r| r.end(log)).collect();
                let k = usize::try_from(k).ok()?;
                if ends.len() < k {
                    return None;
                }
                // The k-th largest end: k replicas are at or beyond it.
                ends.sort_unstable_by(|a, b| b.cmp(a));
                Some(ends[k - 1])
            }
            Need::AllSync => self
                .replicas
                .values()
                .filter(|r| r.is_sync())
                .map(|r| r.end(log))
                .min(),
        }
    }

    pub(super) fn satisfied(&self, log: &str, end: u64, need: Need) -> bool {
        let yes = self.satisfied_up_to(log, need).is_some_and(|t| end <= t);
        if cfg!(debug_assertions) {
            // The threshold agrees with counting directly.
            let direct = match need {
                Need::Replicas(k) => self.confirmed(log, end) >= k,
                Need::AllSync => {
                    self.sync_count() > 0
                        && self
                            .replicas
                            .values()
                            .filter(|r| r.is_sync())
                            .all(|r| r.end(log) >= end)
                }
            };
            assert_eq!(yes, direct, "threshold and count disagree");
        }
        yes
    }

    pub(super) fn forget_log(&mut self, log: &str) {
        for r in self.replicas.values_mut() {
            r.durable_end.remove(log);
        }
    }

    pub(super) fn check_invariants(&self) {
        let gone = self
            .replicas
            .values()
            .filter(|r| !r.is_sync() && r.disconnected_at.is_some())
            .count();
        assert!(gone <= DISCONNECTED_MAX, "gone replicas are bounded");
    }
}
