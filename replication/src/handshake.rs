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

impl UpstreamLog {
    /// The upstream's node is in `epoch`: whatever it holds past its end comes from that
    /// epoch's primary, which its history says only from the first such record. Said now,
    /// a replica that saw an epoch between follows it, and one holding an older epoch's
    /// records past the upstream's end cuts them, before anything arrives: as after a
    /// promoted node lost the unsynced tail where it had begun the epoch, or below a replica
    /// cut back by a new primary that has written nothing yet. Where the upstream lags in
    /// an older epoch this cuts more than needed, and the cut records come again.
    #[must_use]
    pub fn leading(mut self, epoch: u64) -> Self {
        if self.epochs.last().is_some_and(|&(e, _)| e >= epoch) {
            return self;
        }
        if self.epochs.last().is_some_and(|&(_, s)| s == self.end) {
            self.epochs.pop();
        }
        self.epochs.push((epoch, self.end));
        self
    }
}

/// The upstream's answer for one log.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "the plan must be carried out"]
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

/// Where the records a replica holds stop being the upstream's: the first offset it
/// holds that the upstream did not write in the same epoch (past the upstream's end,
/// every one), or None if every record it holds is the upstream's too. A full sync drops
/// the replica's whole log; from here on what it drops is its own (written as a cut-off
/// primary), which it keeps aside first, as a truncation does.
pub fn own_records_from(up: &UpstreamLog, r: &ReplicaLog) -> Option<u64> {
    let limit = r.end.min(up.end);
    let same_until = if r.epochs.is_empty() {
        // An older replica sends its last epoch only.
        r.end
            .min(divergence::end_of(&up.epochs, r.last_epoch, up.end))
    } else {
        divergence::first_difference(&up.epochs, &r.epochs, r.start, limit)
    };
    let from = same_until.max(r.start);
    (from < r.end).then_some(from)
}

/// What a replica is credited with in one log for acks once it carried out its plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credit {
    /// It counts as holding the log up to here at once.
    pub counted: u64,
    /// Whether that covers everything below where frames for it start: if not, what it
    /// claims there was never checked, and an ack past it would vouch for records it was
    /// never sent, so its acks count for no more than `counted` until it is checked.
    pub whole: bool,
}

impl Plan {
    /// What the replica is credited with at once (see [`Credit`]): what it holds after the
    /// plan, where this upstream checked it. A claim is checked where it covers no record
    /// of the upstream's current epoch (older epochs' records wait for no ack; the
    /// histories say they are the same), or where the replica's last frame is this node's
    /// frame just below the claimed end (it proves it holds those bytes). Records past this
    /// node's end (`Ahead`) cannot be checked until this node holds them: a peer's word
    /// alone never acknowledges a write.
    pub fn credit(
        &self,
        up: &UpstreamLog,
        replica: Option<&ReplicaLog>,
        frame_at: FrameAt<'_>,
    ) -> Credit {
        let current = up.epochs.last().map_or(0, |&(_, s)| s).max(up.start);
        let checked = |end: u64| end <= current || proves(replica, end, frame_at);
        match *self {
            Plan::Follow(Decision::Continue { from: end })
            | Plan::Follow(Decision::TruncateThenContinue { to: end })
                if checked(end) =>
            {
                Credit::whole(end)
            }
            // It holds nothing: nothing of the log below `from` waits on it.
            Plan::Follow(Decision::FullSync { from }) | Plan::Recreate { from } => {
                Credit::whole(from)
            }
            Plan::Diverged { .. } => Credit::whole(0),
            _ => Credit {
                counted: up.start.min(self.held()),
                whole: false,
            },
        }
    }
}

impl Credit {
    fn whole(counted: u64) -> Credit {
        Credit {
            counted,
            whole: true,
        }
    }
}

/// Whether the replica's last frame is the frame this upstream holds just below `end`.
pub fn proves(replica: Option<&ReplicaLog>, end: u64, frame_at: FrameAt<'_>) -> bool {
    let Some(last) = replica.and_then(|r| r.last_frame) else {
        return false;
    };
    end > 0 && frame_at(end - 1) == Some(last)
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
#[must_use]
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

/// While a replica that is ahead waits for the upstream to get to its end: whether the
/// records it holds past `upstream_end` may still be the upstream's, by the upstream's
/// history now (`epochs`). They may not once an epoch other than `epoch` (the one the
/// upstream was in at `upstream_end` when it planned) wrote there or began below
/// `replica_end`: a cascaded upstream that lagged has since learned of a newer primary.
/// The replica then reconnects and has its tail decided again.
pub fn ahead_still_holds(
    epochs: &[(u64, u64)],
    (upstream_end, replica_end): (u64, u64),
    epoch: u64,
) -> bool {
    divergence::epoch_at(epochs, upstream_end) == epoch
        && epochs
            .iter()
            .all(|&(_, s)| s <= upstream_end || s >= replica_end)
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

    /// A replica that wrote 160..200 alone in epoch 1 while the upstream went on in epoch
    /// 2 from 160 and removed everything below 300: a full sync, dropping its own 160..200.
    #[test]
    fn a_full_sync_names_the_records_the_replica_holds_alone() {
        let upstream = UpstreamLog {
            epochs: vec![(1, 0), (2, 160)],
            start: 300,
            end: 500,
            ..up(500)
        };
        let p = plan(&upstream, Some(&replica(200)), &no_frames).unwrap();
        assert_eq!(p, Plan::Follow(Decision::FullSync { from: 300 }));
        assert_eq!(own_records_from(&upstream, &replica(200)), Some(160));
        // One that only lags (all of its records are the upstream's): none of its own.
        assert_eq!(own_records_from(&upstream, &replica(150)), None);
        // An older replica, its last epoch only, the same.
        let old = ReplicaLog {
            epochs: Vec::new(),
            ..replica(200)
        };
        assert_eq!(own_records_from(&upstream, &old), Some(160));
        // Past the upstream's end, nothing is the upstream's.
        let short = UpstreamLog {
            epochs: vec![(1, 0)],
            start: 100,
            end: 120,
            ..up(120)
        };
        assert_eq!(own_records_from(&short, &replica(200)), Some(120));
        // Held from 250 on, all in an epoch the upstream never had at those offsets.
        let late = ReplicaLog {
            start: 250,
            ..replica(280)
        };
        assert_eq!(own_records_from(&upstream, &late), Some(250));
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
    fn only_a_checked_claim_is_credited() {
        let same = |at: u64| Some((at, 0xabcd));
        let r = replica(10);
        let p = plan(&up(20), Some(&r), &same).unwrap();
        let whole = Credit {
            counted: 10,
            whole: true,
        };
        assert_eq!(p.credit(&up(20), Some(&r), &same), whole);
        // The same end without its last frame, or a last frame that is not this node's
        // frame just below the end: nothing of the current epoch is credited.
        let unchecked = Credit {
            counted: 0,
            whole: false,
        };
        let mut bare = replica(10);
        bare.last_frame = None;
        let p = plan(&up(20), Some(&bare), &same).unwrap();
        assert_eq!(p, Plan::Follow(Decision::Continue { from: 10 }));
        assert_eq!(p.credit(&up(20), Some(&bare), &same), unchecked);
        let mut early = replica(10);
        early.last_frame = Some((3, 0xabcd));
        assert_eq!(p.credit(&up(20), Some(&early), &same), unchecked);
        // Past this node's end nothing can be checked yet.
        let ahead = plan(&up(5), Some(&r), &no_frames).unwrap();
        assert_eq!(ahead.credit(&up(5), Some(&r), &no_frames), unchecked);
        // Records of an older epoch than the upstream's current one need no proof.
        let mut newer = up(20);
        newer.epochs.push((2, 12));
        let p = plan(&newer, Some(&bare), &same).unwrap();
        assert_eq!(p.credit(&newer, Some(&bare), &same), whole);
    }

    /// Found by the simulation (seed 8): a promoted node that lost the unsynced tail where
    /// it had begun its epoch looked, to a replica of the epoch between, like a stale
    /// upstream until its first write.
    #[test]
    fn a_primary_vouches_for_its_epoch_before_writing_in_it() {
        let promoted = UpstreamLog {
            incarnation: 7,
            epochs: vec![(1, 0)],
            start: 0,
            end: 26,
        };
        let mut r = replica(40);
        r.epochs = vec![(1, 0), (2, 30)];
        r.last_epoch = 2;
        assert!(plan(&promoted, Some(&r), &no_frames).is_err());
        let leading = promoted.clone().leading(3);
        assert_eq!(leading.epochs, vec![(1, 0), (3, 26)]);
        assert_eq!(
            plan(&leading, Some(&r), &no_frames),
            Ok(Plan::Follow(Decision::TruncateThenContinue { to: 26 }))
        );
        assert_eq!(leading.clone().leading(3), leading, "once");
    }

    /// Found by the simulation (seed 1001413): a replica ahead of a cascaded upstream that
    /// then learned of a newer epoch waited for an end the upstream would never reach.
    #[test]
    fn a_replica_ahead_stops_waiting_once_the_history_changes() {
        let range = (0, 24);
        assert!(ahead_still_holds(&[(1, 0)], range, 1));
        assert!(!ahead_still_holds(&[(1, 0), (2, 4)], range, 1));
        assert!(
            ahead_still_holds(&[(1, 0), (2, 30)], range, 1),
            "past its end"
        );
        assert!(!ahead_still_holds(&[(2, 0)], range, 1));
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
