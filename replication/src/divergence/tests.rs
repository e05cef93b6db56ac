use proptest::prelude::*;

use super::{decide, decide_with_history, staged_part_matches, Decision, DivergenceError};

use Decision::{Ahead, Continue, FullSync, TruncateThenContinue};

#[test]
fn empty_replica_of_empty_log_continues_from_zero() {
    assert_eq!(decide(&[], 0, 0, 0, 0), Ok(Continue { from: 0 }));
    assert_eq!(decide(&[(1, 0)], 0, 0, 0, 0), Ok(Continue { from: 0 }));
}

#[test]
fn empty_replica_continues_from_zero_while_the_upstream_keeps_it() {
    assert_eq!(decide(&[(1, 0)], 0, 50, 0, 0), Ok(Continue { from: 0 }));
}

#[test]
fn empty_replica_full_syncs_when_retention_removed_the_start() {
    assert_eq!(decide(&[(1, 0)], 20, 50, 0, 0), Ok(FullSync { from: 20 }));
}

#[test]
fn replica_in_the_current_epoch_continues_from_its_end() {
    let up = [(1, 0), (3, 10)];
    assert_eq!(decide(&up, 0, 30, 3, 25), Ok(Continue { from: 25 }));
    assert_eq!(decide(&up, 0, 30, 3, 30), Ok(Continue { from: 30 }));
}

#[test]
fn replica_in_an_earlier_epoch_before_its_end_continues() {
    // It stopped following during epoch 1, before epoch 3 began at 10.
    assert_eq!(
        decide(&[(1, 0), (3, 10)], 0, 30, 1, 7),
        Ok(Continue { from: 7 })
    );
    // Exactly at the boundary: nothing of its epoch 1 is past it.
    assert_eq!(
        decide(&[(1, 0), (3, 10)], 0, 30, 1, 10),
        Ok(Continue { from: 10 })
    );
}

#[test]
fn old_primary_truncates_its_unreplicated_tail() {
    // Old primary wrote epoch 2 up to 40; the replica promoted at 35 as epoch 3.
    let up = [(1, 0), (2, 20), (3, 35)];
    assert_eq!(
        decide(&up, 0, 50, 2, 40),
        Ok(TruncateThenContinue { to: 35 })
    );
}

#[test]
fn old_primary_whose_epoch_the_upstream_never_saw_truncates_to_the_next_epoch() {
    // Epoch 2 began at 20 on the old primary but nothing of it replicated; epoch 3 began at 20.
    let up = [(1, 0), (3, 20)];
    assert_eq!(
        decide(&up, 0, 30, 2, 26),
        Ok(TruncateThenContinue { to: 20 })
    );
}

#[test]
fn promoted_node_that_wrote_nothing_continues() {
    // Promoted to epoch 2 at 20, wrote nothing, then the other side won as epoch 3 at 20.
    assert_eq!(
        decide(&[(1, 0), (3, 20)], 0, 30, 2, 20),
        Ok(Continue { from: 20 })
    );
}

#[test]
fn replica_ahead_of_the_upstream_in_the_same_epoch_truncates_to_its_end() {
    assert_eq!(
        decide(&[(1, 0)], 0, 30, 1, 45),
        Ok(TruncateThenContinue { to: 30 })
    );
}

#[test]
fn a_replica_ahead_in_the_upstreams_epoch_keeps_its_records() {
    // The upstream lags (cascaded) or lost its tail: the replica's records past 30 are
    // of epoch 1, which the upstream is still in.
    assert_eq!(
        decide_with_history(&[(1, 0)], 0, 30, &[(1, 0)], 0, 45),
        Ok(Ahead {
            upstream_end: 30,
            replica_end: 45
        })
    );
    // The upstream began epoch 2 at its end: the replica's epoch-1 records past it are
    // not the new primary's, and go.
    assert_eq!(
        decide_with_history(&[(1, 0), (2, 30)], 0, 30, &[(1, 0)], 0, 45),
        Ok(TruncateThenContinue { to: 30 })
    );
    // A replica ahead in a newer epoch the upstream never saw: refused as ever.
    assert!(decide_with_history(&[(1, 0)], 0, 30, &[(1, 0), (2, 35)], 0, 45).is_err());
}

#[test]
fn replica_below_the_upstream_start_full_syncs() {
    assert_eq!(
        decide(&[(1, 0)], 100, 150, 1, 40),
        Ok(FullSync { from: 100 })
    );
}

#[test]
fn replica_exactly_at_the_upstream_start_continues() {
    assert_eq!(
        decide(&[(1, 0)], 100, 150, 1, 100),
        Ok(Continue { from: 100 })
    );
}

#[test]
fn divergence_below_the_upstream_start_full_syncs() {
    // The replica must drop everything from 35, which the upstream no longer keeps.
    let up = [(1, 0), (2, 20), (3, 35)];
    assert_eq!(decide(&up, 60, 90, 2, 70), Ok(FullSync { from: 60 }));
}

#[test]
fn divergence_at_the_upstream_start_truncates() {
    let up = [(1, 0), (2, 20), (3, 35)];
    assert_eq!(
        decide(&up, 35, 90, 2, 70),
        Ok(TruncateThenContinue { to: 35 })
    );
}

#[test]
fn replica_at_a_newer_epoch_refuses_a_stale_upstream() {
    let err = decide(&[(1, 0), (2, 10)], 0, 30, 3, 12).unwrap_err();
    assert_eq!(
        err,
        DivergenceError::UpstreamBehind {
            replica_epoch: 3,
            upstream_epoch: 2
        }
    );
    let msg = err.to_string();
    assert!(msg.contains("epoch 3") && msg.contains("epoch 2"), "{msg}");
}

#[test]
fn upstream_without_history_is_epoch_zero() {
    // Everything on both sides is epoch 0: only the ends matter.
    assert_eq!(decide(&[], 0, 30, 0, 12), Ok(Continue { from: 12 }));
    assert_eq!(
        decide(&[], 0, 30, 0, 40),
        Ok(TruncateThenContinue { to: 30 })
    );
    assert_eq!(decide(&[], 10, 30, 0, 5), Ok(FullSync { from: 10 }));
    assert_eq!(
        decide(&[], 0, 30, 1, 12),
        Err(DivergenceError::UpstreamBehind {
            replica_epoch: 1,
            upstream_epoch: 0
        })
    );
}

#[test]
fn epoch_zero_replica_keeps_the_epoch_zero_records_the_upstream_has() {
    // Upstream: offsets 0..5 in epoch 0, then epoch 1 from 5.
    let up = [(1, 5)];
    assert_eq!(decide(&up, 0, 20, 0, 3), Ok(Continue { from: 3 }));
    assert_eq!(decide(&up, 0, 20, 0, 5), Ok(Continue { from: 5 }));
    // Its records 5..9 are epoch 0, the upstream's are epoch 1.
    assert_eq!(decide(&up, 0, 20, 0, 9), Ok(TruncateThenContinue { to: 5 }));
    assert_eq!(decide(&up, 8, 20, 0, 9), Ok(FullSync { from: 8 }));
}

#[test]
fn epoch_older_than_the_whole_upstream_history_ends_at_its_first_entry() {
    // The replica's epoch 1 is unknown upstream, whose first epoch (2) starts at 5.
    assert_eq!(
        decide(&[(2, 5)], 0, 20, 1, 9),
        Ok(TruncateThenContinue { to: 5 })
    );
    assert_eq!(
        decide(&[(2, 0)], 0, 20, 1, 9),
        Ok(TruncateThenContinue { to: 0 })
    );
}

#[test]
fn current_epoch_that_wrote_nothing_yet_continues() {
    // Promoted at 30 (epoch 2 entry at the end), nothing written in it yet.
    assert_eq!(
        decide(&[(1, 0), (2, 30)], 0, 30, 1, 30),
        Ok(Continue { from: 30 })
    );
}

#[test]
fn limitation_upstream_missing_the_replica_epoch_uses_the_next_epoch_start() {
    // Replica history [(1,0),(2,5)] end 8; upstream [(1,0),(3,8)]: records 5..8 are epoch 2
    // on the replica and epoch 1 upstream. From the last epoch alone the end of epoch 2 is 8,
    // so the divergence goes unseen (see the module doc: needs concurrent primaries).
    assert_eq!(
        decide(&[(1, 0), (3, 8)], 0, 15, 2, 8),
        Ok(Continue { from: 8 })
    );
}

/// An upstream log: `pre0` records of epoch 0, then `(epoch, len)` runs with increasing epochs
/// (gaps of at least 2 leave room for a diverging epoch between neighbours); the last run may
/// be empty (promoted, nothing written yet).
#[derive(Clone, Debug)]
struct Upstream {
    pre0: u64,
    runs: Vec<(u64, u64)>,
    start: u64,
}

impl Upstream {
    /// History entries (epoch, start).
    fn entries(&self) -> Vec<(u64, u64)> {
        let mut at = self.pre0;
        self.runs
            .iter()
            .map(|&(e, len)| {
                let entry = (e, at);
                at += len;
                entry
            })
            .collect()
    }

    fn end(&self) -> u64 {
        self.pre0 + self.runs.iter().map(|r| r.1).sum::<u64>()
    }

    /// Epoch that wrote `offset` (< end).
    fn epoch_at(&self, offset: u64) -> u64 {
        self.entries()
            .iter()
            .rev()
            .find(|&&(_, s)| s <= offset)
            .map_or(0, |&(e, _)| e)
    }
}

fn upstream() -> impl Strategy<Value = Upstream> {
    (
        0u64..6,
        prop::collection::vec((2u64..5, 1u64..12), 0..6),
        0u64..12,
        any::<prop::sample::Index>(),
    )
        .prop_map(|(pre0, gaps, last_len, start_pick)| {
            let mut epoch = 0;
            let mut runs: Vec<(u64, u64)> = gaps
                .into_iter()
                .map(|(gap, len)| {
                    epoch += gap;
                    (epoch, len)
                })
                .collect();
            if let Some(last) = runs.last_mut() {
                last.1 = last_len;
            }
            let mut up = Upstream {
                pre0,
                runs,
                start: 0,
            };
            up.start = start_pick.index(usize::try_from(up.end()).unwrap() + 1) as u64;
            up
        })
}

proptest! {
    /// A replica holding a prefix of the upstream's log continues from its end.
    #[test]
    fn prefix_replica_continues(up in upstream(), end_pick: prop::sample::Index, at_boundary: bool) {
        let end = end_pick.index(usize::try_from(up.end()).unwrap() + 1) as u64;
        let entries = up.entries();
        // Its last epoch wrote its last record; or, at an epoch boundary, it may already have
        // learned the next epoch without records of it.
        let mut last_epoch = if end == 0 { 0 } else { up.epoch_at(end - 1) };
        if at_boundary {
            if let Some(&(e, _)) = entries.iter().find(|&&(_, s)| s == end) {
                last_epoch = e;
            }
        }
        let got = decide(&entries, up.start, up.end(), last_epoch, end).unwrap();
        let want = if end < up.start { FullSync { from: up.start } } else { Continue { from: end } };
        prop_assert_eq!(got, want);
    }

    /// A replica that shares the log up to `d` and then wrote epochs the upstream never had,
    /// lower than the upstream's epoch starting at `d`, truncates to exactly `d`.
    #[test]
    fn diverged_replica_truncates_to_the_divergence(
        up in upstream(),
        run_pick: prop::sample::Index,
        tail in prop::collection::vec(1u64..10, 1..4),
        epoch_picks in prop::collection::vec(any::<prop::sample::Index>(), 3),
    ) {
        let entries = up.entries();
        prop_assume!(!entries.is_empty());
        let j = run_pick.index(entries.len());
        let (next_epoch, d) = entries[j];
        let prev_epoch = if j == 0 { 0 } else { entries[j - 1].0 };
        // Increasing epochs strictly between prev_epoch and next_epoch (room >= 1).
        let room = next_epoch - prev_epoch - 1;
        let mut picks: Vec<u64> = epoch_picks
            .iter()
            .take(tail.len())
            .map(|p| prev_epoch + 1 + p.index(usize::try_from(room).unwrap()) as u64)
            .collect();
        picks.sort_unstable();
        picks.dedup();
        let last_epoch = *picks.last().unwrap();
        let replica_end = d + tail.iter().take(picks.len()).sum::<u64>();
        prop_assert!(replica_end > d);

        let got = decide(&entries, up.start, up.end(), last_epoch, replica_end).unwrap();
        let want = if d < up.start { FullSync { from: up.start } } else { TruncateThenContinue { to: d } };
        prop_assert_eq!(got, want);
    }

    /// A replica that has seen a newer epoch than the upstream is always refused, and
    /// otherwise the decision lands on an offset the upstream holds.
    #[test]
    fn decision_is_within_the_upstream(up in upstream(), epoch in 0u64..30, end in 0u64..80) {
        let entries = up.entries();
        let current = entries.last().map_or(0, |e| e.0);
        match decide(&entries, up.start, up.end(), epoch, end) {
            Err(DivergenceError::UpstreamBehind { replica_epoch, upstream_epoch }) => {
                prop_assert!(epoch > current);
                prop_assert_eq!((replica_epoch, upstream_epoch), (epoch, current));
            }
            Ok(d) => {
                prop_assert!(epoch <= current);
                let held = up.start..=up.end();
                match d {
                    Continue { from } => prop_assert!(from == end && held.contains(&from)),
                    TruncateThenContinue { to } => prop_assert!(to < end && held.contains(&to)),
                    FullSync { from } => prop_assert_eq!(from, up.start),
                    Ahead { .. } => prop_assert!(false, "decide never keeps records past the upstream"),
                }
            }
        }
    }
}

/// The case [`decide`] gets wrong (see the module docs): the upstream's epoch 2 began at 80
/// while the replica was still writing epoch 1, up to 100. The logs differ from 80.
#[test]
fn whole_history_finds_a_divergence_the_last_epoch_misses() {
    let up = [(1, 0), (2, 80), (4, 120)];
    let replica = [(1, 0), (3, 100)];
    assert_eq!(
        decide(&up, 0, 200, 3, 150),
        Ok(TruncateThenContinue { to: 120 }),
        "the last-epoch rule keeps 80..120, which differ"
    );
    assert_eq!(
        decide_with_history(&up, 0, 200, &replica, 0, 150),
        Ok(TruncateThenContinue { to: 80 })
    );
}

/// Found by the simulation (seed 3): a replica whose records diverge below the upstream's
/// start kept them (they were not compared), so it held records of another history.
#[test]
fn a_divergence_below_the_upstreams_start_is_found() {
    let up = [(1, 0), (3, 30)];
    assert_eq!(
        decide_with_history(&up, 43, 60, &[(1, 0)], 16, 56),
        Ok(FullSync { from: 43 })
    );
    // No divergence there: it goes on.
    assert_eq!(
        decide_with_history(&up, 43, 60, &[(1, 0)], 16, 29),
        Ok(FullSync { from: 43 }),
        "its end is below the upstream's start"
    );
    assert_eq!(
        decide_with_history(&[(1, 0)], 43, 60, &[(1, 0)], 16, 50),
        Ok(Continue { from: 50 })
    );
}

/// Found by the simulation (seed 3): a replica whose retention removed more than the two
/// logs share was told to cut below its own start, and counted for records it never held.
#[test]
fn a_replica_whose_start_is_past_the_divergence_full_syncs() {
    let up = [(1, 0), (3, 30)];
    let replica = [(1, 0), (2, 56)];
    assert_eq!(
        decide_with_history(&up, 35, 54, &replica, 56, 100),
        Ok(FullSync { from: 35 })
    );
    // Its start at the divergence: it would keep nothing, so it is copied anew.
    assert_eq!(
        decide_with_history(&up, 0, 54, &[(1, 0), (2, 40)], 30, 50),
        Ok(FullSync { from: 0 })
    );
    // Empty at an offset above the upstream's start: the same.
    assert_eq!(
        decide_with_history(&up, 10, 54, &[], 40, 40),
        Ok(FullSync { from: 10 })
    );
}

#[test]
fn whole_history_after_a_full_sync_compares_from_the_starts() {
    // The replica full-synced from 100: its history begins there.
    let up = [(3, 0), (5, 120)];
    assert_eq!(
        decide_with_history(&up, 100, 200, &[(3, 100), (5, 120)], 100, 150),
        Ok(Continue { from: 150 })
    );
    assert_eq!(
        decide_with_history(&up, 100, 200, &[(3, 100)], 100, 110),
        Ok(Continue { from: 110 })
    );
}

/// Build a log from its epoch per offset: history entries where the epoch changes.
fn history_of(epochs: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (i, &e) in epochs.iter().enumerate() {
        if e != 0 && out.last().is_none_or(|&(last, _)| last != e) {
            out.push((e, i as u64));
        }
    }
    out
}

/// Two logs as the epoch of every offset: a shared prefix, then each its own increasing
/// epochs. Steps (0 = same epoch as before, else a newer one) turned into nondecreasing
/// epochs; after the shared part the upstream's new epochs are odd and the replica's even:
/// two primaries never share an epoch.
fn two_logs(shared: &[u64], up_tail: &[u64], rep_tail: &[u64]) -> (Vec<u64>, Vec<u64>) {
    let mut shared_epochs = Vec::new();
    let mut e = 0;
    for s in shared {
        e += s;
        shared_epochs.push(e);
    }
    let base = e;
    let tail = |steps: &[u64], parity: u64| {
        let mut e = base;
        let mut out = Vec::new();
        for &s in steps {
            if s > 0 {
                let next = e + 2 * s;
                e = if next % 2 == parity { next } else { next + 1 };
            }
            out.push(e);
        }
        out
    };
    let up: Vec<u64> = shared_epochs
        .iter()
        .copied()
        .chain(tail(up_tail, 1))
        .collect();
    let rep: Vec<u64> = shared_epochs
        .iter()
        .copied()
        .chain(tail(rep_tail, 0))
        .collect();
    (up, rep)
}

proptest! {
    /// Against a model: two logs as the epoch of every offset (a shared prefix, then each
    /// its own increasing epochs). The replica keeps exactly the offsets below the first
    /// where they differ, within both logs, and the decision lands where the model says.
    #[test]
    fn whole_history_matches_a_model(
        shared in prop::collection::vec(0u64..3, 0..12),
        up_tail in prop::collection::vec(0u64..3, 0..12),
        rep_tail in prop::collection::vec(0u64..3, 0..12),
        up_start_pick: prop::sample::Index,
        rep_start_pick: prop::sample::Index,
        rep_retained: bool,
    ) {
        let (up, rep) = two_logs(&shared, &up_tail, &rep_tail);
        let (uh, rh) = (history_of(&up), history_of(&rep));
        let up_start = up_start_pick.index(up.len() + 1) as u64;
        let (up_end, rep_end) = (up.len() as u64, rep.len() as u64);
        // Retention on the replica too, sometimes.
        let rep_start = if rep_retained { rep_start_pick.index(rep.len() + 1) as u64 } else { 0 };
        let rep_last = rh.last().map_or(0, |e| e.0);
        let up_last = uh.last().map_or(0, |e| e.0);
        let got = decide_with_history(&uh, up_start, up_end, &rh, rep_start, rep_end);
        if rep_last > up_last {
            prop_assert!(got.is_err());
            return Ok(());
        }
        let limit = up_end.min(rep_end);
        let agree = (rep_start..limit)
            .find(|&i| up[i as usize] != rep[i as usize])
            .unwrap_or(limit);
        // Past the upstream's end, records of the epoch the upstream is still in are kept.
        let up_epoch_at_end = up_end.checked_sub(1).map_or(0, |i| up[i as usize]);
        let ahead = agree == up_end
            && rep_end > up_end
            && up_end >= up_start
            && up_end >= rep_start
            && rep[up_end as usize] == up_epoch_at_end;
        let want = if ahead {
            Ahead { upstream_end: up_end, replica_end: rep_end }
        } else if agree <= rep_start && (!rh.is_empty() || rep_start > up_start) {
            // Nothing kept: copied anew (its history cleared).
            FullSync { from: up_start }
        } else if agree < rep_end {
            if agree < up_start { FullSync { from: up_start } } else { TruncateThenContinue { to: agree } }
        } else if rep_end < up_start {
            FullSync { from: up_start }
        } else {
            Continue { from: rep_end }
        };
        prop_assert_eq!(got.unwrap(), want);
    }
}

proptest! {
    /// Against the same model: a replica's staged frames `[from, staged_end)` of its own log
    /// match the upstream's exactly when the upstream holds that far and every offset of it
    /// was written in the same epoch on both.
    #[test]
    fn staged_part_matches_a_model(
        shared in prop::collection::vec(0u64..3, 0..12),
        up_tail in prop::collection::vec(0u64..3, 0..12),
        rep_tail in prop::collection::vec(0u64..3, 0..12),
        from_pick: prop::sample::Index,
        len_pick: prop::sample::Index,
    ) {
        let (up, rep) = two_logs(&shared, &up_tail, &rep_tail);
        let from = from_pick.index(rep.len() + 1) as u64;
        let staged_end = from + len_pick.index(rep.len() - from as usize + 1) as u64;
        // The staged frames' epochs as the replica reports them: the first at `from`.
        let mut staged = vec![(rep.get(from as usize).copied().unwrap_or(0), from)];
        staged.extend(
            history_of(&rep[..staged_end as usize])
                .into_iter()
                .filter(|&(_, s)| s > from),
        );
        let want = staged_end > from
            && staged_end <= up.len() as u64
            && (from..staged_end).all(|i| up[i as usize] == rep[i as usize]);
        let got = staged_part_matches(&history_of(&up), up.len() as u64, &staged, from, staged_end);
        prop_assert_eq!(got, want, "up {:?} rep {:?} staged {:?}", up, rep, staged);
    }
}

#[test]
fn staged_part_without_epochs_is_not_resumed() {
    // An older replica sends no staged epochs: it gets the segment again from its end.
    assert!(!staged_part_matches(&[(1, 0)], 100, &[], 10, 50));
    assert!(staged_part_matches(&[(1, 0)], 100, &[(1, 10)], 10, 50));
    // Cut at 30 upstream and written on in epoch 2: the staged epoch-1 frames past 30 are not its.
    assert!(!staged_part_matches(
        &[(1, 0), (2, 30)],
        100,
        &[(1, 10)],
        10,
        50
    ));
    // Past the upstream's end.
    assert!(!staged_part_matches(&[(1, 0)], 40, &[(1, 10)], 10, 50));
}
