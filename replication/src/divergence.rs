//! Where a connecting replica continues in a log, decided by epoch history as with Kafka's
//! leader epochs (KIP-101).
//!
//! Every promotion starts a new epoch, and an epoch has one primary that began writing it at
//! one offset, so two logs that hold the same epoch at the same offset hold the same record
//! there. The upstream's history lists `(epoch, start offset)` pairs; epoch `e` ends where the
//! first larger epoch starts. A replica whose last epoch is `e` can therefore only keep records
//! below the end of `e` in the upstream's history: anything past that was written by a primary
//! the upstream did not follow.
//!
//! Records written before the first entry of a history belong to epoch 0 (written before any
//! promotion was recorded), on the upstream and on the replica alike.
//!
//! Deciding from the replica's *last* epoch alone ([`decide`]) has a known gap: when the
//! upstream never had that epoch but the replica's records in it began below the upstream's
//! next epoch start, the divergence is found too late (Kafka closed it in KIP-279 by
//! iterating on the replica's earlier epochs). [`decide_with_history`] takes the replica's
//! whole history and finds the first offset where the two logs' epochs differ; replicas send
//! it, and [`decide`] remains for a replica that sends only its last epoch.

#[cfg(test)]
mod tests;

/// What the upstream tells a connecting replica to do for one log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "the decision must be carried out"]
pub enum Decision {
    /// The replica's log is a prefix of the upstream's: stream records from `from`, its end.
    Continue { from: u64 },
    /// The replica's records at and after `to` are not the upstream's (written in an epoch the
    /// upstream did not follow, or past its end): truncate to `to`, then continue from there.
    TruncateThenContinue { to: u64 },
    /// The upstream no longer keeps the offset the replica would continue from: the replica
    /// discards its log and copies the upstream's from `from` (its first kept offset), then
    /// continues with the tail.
    FullSync { from: u64 },
    /// The replica holds records past the upstream's end (`upstream_end`) written in the
    /// epoch the upstream is still in: records the upstream lags behind (a cascaded
    /// upstream, a delayed one) or lost. The replica keeps them all: it continues from its
    /// end once the upstream gets there, and a primary that lost them takes them back from
    /// the replica first. Cutting them would lose acknowledged records.
    Ahead { upstream_end: u64, replica_end: u64 },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DivergenceError {
    /// The replica has seen a newer epoch than the upstream: the upstream is a stale primary
    /// or lags behind it, and a node never follows a lower epoch.
    #[error(
        "replica is at epoch {replica_epoch} but the upstream only at epoch {upstream_epoch}: \
         a node never follows a lower epoch (the upstream is stale; connect to the current primary)"
    )]
    UpstreamBehind {
        replica_epoch: u64,
        upstream_epoch: u64,
    },
}

/// upstream: its epoch history entries (epoch, start offset) ascending, its first kept offset `start`, its durable `end`.
/// replica: the last epoch in its history (0 = none) and its end offset.
///
/// The replica's valid end is the least of its end, the end of its last epoch in the
/// upstream's history and the upstream's end: records past the upstream's end are dropped
/// even in the same epoch, because the upstream cannot vouch for them (the server should not
/// attach a replica to an upstream that lags it).
pub fn decide(
    upstream_epochs: &[(u64, u64)],
    upstream_start: u64,
    upstream_end: u64,
    replica_last_epoch: u64,
    replica_end: u64,
) -> Result<Decision, DivergenceError> {
    debug_assert!(upstream_start <= upstream_end, "start <= end");
    debug_assert!(
        upstream_epochs
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1),
        "epochs and their starts increase strictly: {upstream_epochs:?}"
    );
    debug_assert!(
        upstream_epochs
            .last()
            .is_none_or(|&(_, s)| s <= upstream_end),
        "no epoch starts past the end"
    );

    let upstream_epoch = upstream_epochs.last().map_or(0, |&(e, _)| e);
    if replica_last_epoch > upstream_epoch {
        return Err(DivergenceError::UpstreamBehind {
            replica_epoch: replica_last_epoch,
            upstream_epoch,
        });
    }
    let valid_end = replica_end.min(end_of(upstream_epochs, replica_last_epoch, upstream_end));
    let decision = from_valid_end(valid_end, upstream_start, replica_end);

    // Wherever the replica goes on from, the upstream holds that offset.
    match decision {
        Decision::Continue { from } => {
            debug_assert!(from == replica_end && (upstream_start..=upstream_end).contains(&from));
        }
        Decision::TruncateThenContinue { to } => {
            debug_assert!(to < replica_end && (upstream_start..=upstream_end).contains(&to));
        }
        Decision::FullSync { from } => debug_assert_eq!(from, upstream_start),
        Decision::Ahead { .. } => unreachable!("decide never keeps records past the upstream"),
    }
    Ok(decision)
}

/// Like [`decide`], from the replica's whole epoch history (`(epoch, start)` ascending)
/// and its first kept offset: the replica keeps records below the first offset, among those
/// both logs hold, where the epoch that wrote it differs between the two histories (equal
/// epochs at an offset mean the same record). Past the upstream's end it keeps records of
/// the epoch the upstream is in ([`Decision::Ahead`]) and nothing of an older one.
///
/// Every record the replica holds is compared, from its start (its history says nothing
/// true below that: after a full sync it begins there), also below the upstream's start:
/// the upstream's history still says which epoch wrote those offsets after retention
/// removed them, and a replica that differs there cannot keep them and go on. A difference
/// below the upstream's start means a full sync; where the upstream's history does not
/// reach that far (it was full-synced itself), the replica is copied anew too, which is
/// safe if not needed.
pub fn decide_with_history(
    upstream_epochs: &[(u64, u64)],
    upstream_start: u64,
    upstream_end: u64,
    replica_epochs: &[(u64, u64)],
    replica_start: u64,
    replica_end: u64,
) -> Result<Decision, DivergenceError> {
    let replica_last_epoch = replica_epochs.last().map_or(0, |&(e, _)| e);
    let upstream_epoch = upstream_epochs.last().map_or(0, |&(e, _)| e);
    if replica_last_epoch > upstream_epoch {
        return Err(DivergenceError::UpstreamBehind {
            replica_epoch: replica_last_epoch,
            upstream_epoch,
        });
    }
    let limit = replica_end.min(upstream_end);
    let valid_end = first_difference(upstream_epochs, replica_epochs, replica_start, limit);
    let ahead = valid_end == upstream_end
        && replica_end > upstream_end
        && upstream_end >= upstream_start
        && upstream_end >= replica_start
        && epoch_at(replica_epochs, upstream_end) == epoch_at(upstream_epochs, upstream_end);
    if ahead {
        return Ok(Decision::Ahead {
            upstream_end,
            replica_end,
        });
    }
    let keeps_nothing = valid_end <= replica_start
        && (!replica_epochs.is_empty() || replica_start > upstream_start);
    if keeps_nothing {
        // It would keep none of its records: going on at its start, its history would
        // still speak of epochs the upstream's records there were not written in, and
        // above the upstream's start it would be counted for records it never held. It
        // copies the upstream's log anew instead (a reset clears its history).
        return Ok(Decision::FullSync {
            from: upstream_start,
        });
    }
    Ok(from_valid_end(valid_end, upstream_start, replica_end))
}

/// Whether the frames a replica holds staged in `[from, staged_end)` (received, not yet
/// part of its log), written in the epochs `staged` ((epoch, first offset), the first at
/// `from`), are the upstream's too, so that sending on from `staged_end` completes them:
/// the upstream still holds that far and wrote every offset of it in the same epoch. It
/// may not, if it cut its log inside that range since and wrote on in a later epoch.
pub fn staged_part_matches(
    upstream_epochs: &[(u64, u64)],
    upstream_end: u64,
    staged: &[(u64, u64)],
    from: u64,
    staged_end: u64,
) -> bool {
    staged_end > from
        && staged_end <= upstream_end
        && staged.first().is_some_and(|&(_, start)| start == from)
        && first_difference(upstream_epochs, staged, from, staged_end) == staged_end
}

/// The replica keeps its records below `valid_end`: cut there unless that is its end, and
/// copy everything again if the upstream no longer holds where it would go on from.
fn from_valid_end(valid_end: u64, upstream_start: u64, replica_end: u64) -> Decision {
    let from = valid_end.min(replica_end);
    if from < upstream_start {
        Decision::FullSync {
            from: upstream_start,
        }
    } else if from < replica_end {
        Decision::TruncateThenContinue { to: from }
    } else {
        Decision::Continue { from: replica_end }
    }
}

/// The epoch that wrote `offset` by a history (0 below its first entry).
pub fn epoch_at(epochs: &[(u64, u64)], offset: u64) -> u64 {
    let i = epochs.partition_point(|&(_, start)| start <= offset);
    i.checked_sub(1).map_or(0, |i| epochs[i].0)
}

/// The first offset in `lower..limit` written in different epochs by the two histories, or
/// `limit`. Epochs change only at history entries, so only those offsets need a look.
pub(crate) fn first_difference(a: &[(u64, u64)], b: &[(u64, u64)], lower: u64, limit: u64) -> u64 {
    let mut at: Vec<u64> = std::iter::once(lower)
        .chain(a.iter().chain(b).map(|&(_, s)| s))
        .filter(|&s| s >= lower && s < limit)
        .collect();
    at.sort_unstable();
    at.dedup();
    at.into_iter()
        .find(|&s| epoch_at(a, s) != epoch_at(b, s))
        .unwrap_or(limit)
}

/// End (exclusive) of `epoch` in the upstream's log: the start of the first larger epoch, or
/// the log's end when there is none.
///
/// This one rule also covers the edge cases. An epoch older than every entry ends where the
/// first entry starts: below it the upstream holds epoch-0 records only. An empty history
/// means every upstream record is epoch 0 (and the replica's epoch is 0 too, or it would be
/// ahead), so epoch 0 ends at the log's end; ending it at 0 would discard a matching log.
pub(crate) fn end_of(epochs: &[(u64, u64)], epoch: u64, log_end: u64) -> u64 {
    let later = epochs.partition_point(|&(e, _)| e <= epoch);
    epochs
        .get(later)
        .map_or(log_end, |&(_, start)| start)
        .min(log_end)
}
