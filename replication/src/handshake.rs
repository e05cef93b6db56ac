//! What an upstream tells a connecting replica for one log (its [`Plan`]), and what the
//! replica holds once it has carried it out.
//!
//! In order: the log's identity (another incarnation is copied anew), the epoch
//! histories ([`crate::divergence`]), and, where the replica keeps its last frame, that
//! frame's bytes against the upstream's at the same offset: two nodes never hold
//! different records at one offset in one epoch without it being said.

use crate::divergence::{self, Decision, DivergenceError};

/// What a replica reports of one log at its hello.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaLog {
    /// 0: not known (written by a version without incarnations).
    pub incarnation: u64,
    /// Its whole epoch history `(epoch, first offset)`; empty from versions that sent only
    /// `last_epoch`.
    pub epochs: Vec<(u64, u64)>,
    pub last_epoch: u64,
    pub start: u64,
    /// Its durable end.
    pub end: u64,
    /// Its last frame: (first offset, CRC); None for an empty log.
    pub last_frame: Option<(u64, u32)>,
    /// A segment partly received: how far it got, and the epochs of what it staged (the
    /// first at `end`).
    pub staged: Option<(u64, Vec<(u64, u64)>)>,
}

/// What the upstream holds of the log, as far as it vouches (a delayed upstream: up to its
/// horizon).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamLog {
    pub incarnation: u64,
    /// Its epoch history, entries starting past `end` left out.
    pub epochs: Vec<(u64, u64)>,
    pub start: u64,
    pub end: u64,
}

/// The upstream's answer for one log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Continue, truncate, full sync or keep what is ahead, as the histories decide.
    Follow(Decision),
    /// The replica's copy is another incarnation: drop it, continue empty from `from`.
    Recreate { from: u64 },
    /// The replica's last frame is not the upstream's though the histories agree.
    Diverged { reason: String },
}

impl Plan {
    /// Where the replica's log ends once it has carried out the plan: what it may be
    /// counted for (never its end before a cut it is told to make, never records the two
    /// do not hold alike).
    pub fn held(&self) -> u64 {
        match self {
            Plan::Follow(Decision::Continue { from }) => *from,
            Plan::Follow(Decision::TruncateThenContinue { to }) => *to,
            Plan::Follow(Decision::FullSync { from }) | Plan::Recreate { from } => *from,
            Plan::Follow(Decision::Ahead { replica_end, .. }) => *replica_end,
            Plan::Diverged { .. } => 0,
        }
    }

    /// Where frames for the replica start, if any are sent.
    pub fn continue_from(&self) -> Option<u64> {
        match self {
            Plan::Follow(Decision::Continue { from } | Decision::FullSync { from })
            | Plan::Recreate { from } => Some(*from),
            Plan::Follow(Decision::TruncateThenContinue { to }) => Some(*to),
            Plan::Follow(Decision::Ahead { replica_end, .. }) => Some(*replica_end),
            Plan::Diverged { .. } => None,
        }
    }

    /// Why nothing is sent yet (for status), empty when frames flow.
    pub fn blocked_reason(&self) -> String {
        match self {
            Plan::Follow(Decision::Ahead {
                upstream_end,
                replica_end,
            }) => format!(
                "ahead: holds {upstream_end}..{replica_end} past this node's end; waiting to get there"
            ),
            Plan::Diverged { reason } => format!("diverged: {reason}"),
            _ => String::new(),
        }
    }
}

/// The frame the upstream holds that covers an offset: (its first offset, its CRC), if it
/// can say (a damaged frame cannot be compared).
pub type FrameAt<'a> = &'a dyn Fn(u64) -> Option<(u64, u32)>;

/// Where the replica goes on in this log, from what it reported.
pub fn plan(
    up: &UpstreamLog,
    replica: Option<&ReplicaLog>,
    frame_at: FrameAt<'_>,
) -> Result<Plan, DivergenceError> {
    if let Some(r) = replica {
        if r.incarnation != 0 && up.incarnation != 0 && r.incarnation != up.incarnation {
            return Ok(Plan::Recreate { from: up.start });
        }
    }
    let decision = match replica {
        // A replica that sends only its last epoch (older versions).
        Some(r) if r.epochs.is_empty() && r.last_epoch > 0 => {
            divergence::decide(&up.epochs, up.start, up.end, r.last_epoch, r.end)?
        }
        Some(r) => divergence::decide_with_history(
            &up.epochs, up.start, up.end, &r.epochs, r.start, r.end,
        )?,
        None => divergence::decide(&up.epochs, up.start, up.end, 0, 0)?,
    };
    if let (Decision::Continue { .. }, Some(r)) = (decision, replica) {
        if let Some(reason) = last_frame_differs(up, r, frame_at) {
            return Ok(Plan::Diverged { reason });
        }
    }
    Ok(Plan::Follow(decision))
}

/// Why the replica's last frame, which it keeps, is not the one the upstream holds at its
/// offset (None when it is, or when there is nothing to compare it with).
fn last_frame_differs(up: &UpstreamLog, r: &ReplicaLog, frame_at: FrameAt<'_>) -> Option<String> {
    let (at, crc) = r.last_frame?;
    if at < up.start || at >= up.end {
        return None;
    }
    let ours = frame_at(at)?;
    if ours == (at, crc) {
        return None;
    }
    Some(format!(
        "the replica's frame at offset {at} (crc {crc:08x}) is not this node's (frame at {} \
         crc {:08x}) although both logs have it in the same epoch: the two nodes wrote \
         different records there; nothing is sent for this log until one copy is removed",
        ours.0, ours.1
    ))
}

/// Where to send on from inside the segment the replica holds partly received, if the
/// plan continues its log as it is and what it staged is the upstream's too (it may have
/// cut its log there since, and written other frames in a later epoch).
pub fn staged_to_resume(
    up: &UpstreamLog,
    plan: &Plan,
    replica: Option<&ReplicaLog>,
) -> Option<u64> {
    let (Plan::Follow(Decision::Continue { from }), Some(r)) = (plan, replica) else {
        return None;
    };
    let (staged_end, epochs) = r.staged.as_ref()?;
    let ours = r.end == *from
        && *staged_end > *from
        && divergence::staged_part_matches(&up.epochs, up.end, epochs, *from, *staged_end);
    ours.then_some(*staged_end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(end: u64) -> UpstreamLog {
        UpstreamLog {
            incarnation: 7,
            epochs: vec![(1, 0)],
            start: 0,
            end,
        }
    }

    fn replica(end: u64) -> ReplicaLog {
        ReplicaLog {
            incarnation: 7,
            epochs: vec![(1, 0)],
            last_epoch: 1,
            end,
            last_frame: Some((end - 1, 0xabcd)),
            ..ReplicaLog::default()
        }
    }

    fn no_frames(_: u64) -> Option<(u64, u32)> {
        None
    }

    #[test]
    fn another_incarnation_is_copied_anew() {
        let mut r = replica(10);
        r.incarnation = 8;
        assert_eq!(
            plan(&up(20), Some(&r), &no_frames),
            Ok(Plan::Recreate { from: 0 })
        );
        r.incarnation = 0; // a copy written before incarnations: adopts the upstream's
        assert!(matches!(
            plan(&up(20), Some(&r), &no_frames),
            Ok(Plan::Follow(_))
        ));
    }

    #[test]
    fn the_last_frame_must_be_the_same_bytes() {
        let same = |at: u64| Some((at, 0xabcd));
        let other = |at: u64| Some((at, 0x1234));
        let p = plan(&up(20), Some(&replica(10)), &same).unwrap();
        assert_eq!(p, Plan::Follow(Decision::Continue { from: 10 }));
        assert_eq!(p.held(), 10);
        let p = plan(&up(20), Some(&replica(10)), &other).unwrap();
        assert!(matches!(p, Plan::Diverged { .. }), "{p:?}");
        assert_eq!((p.held(), p.continue_from()), (0, None));
        assert!(p.blocked_reason().starts_with("diverged"));
    }

    #[test]
    fn a_replica_ahead_holds_its_end_and_waits_there() {
        let p = plan(&up(5), Some(&replica(10)), &no_frames).unwrap();
        assert_eq!(p.held(), 10);
        assert_eq!(p.continue_from(), Some(10));
        assert!(p.blocked_reason().starts_with("ahead"));
    }

    #[test]
    fn staged_frames_resume_only_where_they_are_the_upstreams() {
        let mut r = replica(10);
        r.staged = Some((15, vec![(1, 10)]));
        let p = plan(&up(20), Some(&r), &no_frames).unwrap();
        assert_eq!(staged_to_resume(&up(20), &p, Some(&r)), Some(15));
        let mut cut = up(20);
        cut.epochs.push((2, 12)); // cut at 12 upstream and written on in epoch 2
        assert_eq!(staged_to_resume(&cut, &p, Some(&r)), None);
    }
}
