//! Which records this node acknowledged as primary without waiting for replicas (ack
//! modes async and written), so that a failover that later cuts them can count and log
//! them as lost: the failover promise covers sync and semi-sync acks only.
//!
//! Kept in memory for the epoch a log was last written in here: a node restarted before
//! it cuts its tail (a kill -9 while primary) no longer knows which of its records were
//! acknowledged, and counts them among the cut records only.

use std::collections::HashMap;
use std::ops::Range;

use parking_lot::Mutex;

/// Ranges kept per log before the lowest are forgotten (cuts remove tails, so the oldest
/// ranges are the least likely to be cut): bounds the memory of a writer whose acks
/// complete out of order for a long time.
const RANGES_MAX: usize = 4096;

#[derive(Debug, Default)]
pub struct WeakAcks {
    logs: Mutex<HashMap<String, Acked>>,
}

/// The offsets acknowledged under async or written in `epoch`, as sorted disjoint ranges.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Acked {
    epoch: u64,
    ranges: Vec<Range<u64>>,
}

impl WeakAcks {
    /// Records `offsets` of `log`, written in `epoch`, were acknowledged without replicas.
    pub fn note(&self, log: &str, epoch: u64, offsets: Range<u64>) {
        let mut logs = self.logs.lock();
        match logs.get_mut(log) {
            Some(a) => a.note(epoch, offsets),
            None => {
                let mut a = Acked::default();
                a.note(epoch, offsets);
                logs.insert(log.to_owned(), a);
            }
        }
    }

    /// How many of the records of `log` in `offsets`, written in `epoch`, this node
    /// acknowledged without replicas; forgets them (they are being cut).
    pub fn take_cut(&self, log: &str, epoch: u64, offsets: Range<u64>) -> u64 {
        self.logs
            .lock()
            .get_mut(log)
            .map_or(0, |a| a.take_cut(epoch, offsets))
    }
}

impl Acked {
    fn note(&mut self, epoch: u64, r: Range<u64>) {
        if epoch != self.epoch {
            // Acks of an older epoch are of records a later primary may have replaced.
            *self = Acked {
                epoch,
                ranges: Vec::new(),
            };
        }
        if r.is_empty() {
            return;
        }
        // Ranges touching or overlapping `r` merge with it.
        let lo = self.ranges.partition_point(|x| x.end < r.start);
        let hi = self.ranges.partition_point(|x| x.start <= r.end);
        let merged = if lo < hi {
            self.ranges[lo].start.min(r.start)..self.ranges[hi - 1].end.max(r.end)
        } else {
            r
        };
        self.ranges.splice(lo..hi, [merged]);
        if self.ranges.len() > RANGES_MAX {
            self.ranges.remove(0);
        }
    }

    fn take_cut(&mut self, epoch: u64, cut: Range<u64>) -> u64 {
        if epoch != self.epoch {
            return 0;
        }
        let mut n = 0;
        let mut kept = Vec::with_capacity(self.ranges.len());
        for r in self.ranges.drain(..) {
            let (lo, hi) = (r.start.max(cut.start), r.end.min(cut.end));
            if lo >= hi {
                kept.push(r);
                continue;
            }
            n += hi - lo;
            kept.extend(
                [r.start..lo, hi..r.end]
                    .into_iter()
                    .filter(|x| !x.is_empty()),
            );
        }
        self.ranges = kept;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_in_any_order() {
        let mut a = Acked::default();
        for r in [10..12, 0..5, 5..10, 20..30, 12..13] {
            a.note(3, r);
        }
        assert_eq!(a.ranges, vec![0..13, 20..30]);
        a.note(3, 13..20);
        assert_eq!(a.ranges, vec![0..30]);
    }

    #[test]
    fn a_cut_counts_acked_records_of_its_epoch_once() {
        let w = WeakAcks::default();
        w.note("l", 2, 0..10);
        w.note("l", 2, 15..20);
        assert_eq!(w.take_cut("l", 1, 0..100), 0, "another epoch's records");
        assert_eq!(w.take_cut("l", 2, 8..17), 4, "8, 9, 15, 16");
        assert_eq!(w.take_cut("l", 2, 0..100), 11, "0..8 and 17..20 remain");
        assert_eq!(w.take_cut("l", 2, 0..100), 0, "counted once");
        assert_eq!(w.take_cut("other", 2, 0..100), 0);
    }

    #[test]
    fn a_new_epoch_forgets_the_old_acks() {
        let w = WeakAcks::default();
        w.note("l", 2, 0..10);
        w.note("l", 4, 20..25);
        assert_eq!(w.take_cut("l", 2, 0..100), 0);
        assert_eq!(w.take_cut("l", 4, 0..100), 5);
    }
}
