//! Where the next frame goes: the active segment, or a new one placed first. One state
//! ([`Fill`] of the active segment, [`SpareState`] of its spare) and one decision
//! ([`decide`]), run before every frame.
//!
//! Segments are zero-filled ahead of need (spares) because an fdatasync into a block
//! never written must also commit its extent's conversion. A segment that is only
//! allocated (a log created for a catch-up, or a roll that found no spare ready) takes
//! appends correctly, more slowly: it asks for a spare at its first append and gives way
//! to it once it is ready, replaced where it stands while empty, else sealed early. How
//! each decision is carried out, and undone when it fails half-way, is in `roll`.

/// How the active segment's file was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fill {
    /// Every block written (a zeroed spare): appends go on in it until it is full.
    Zeroed,
    /// Only allocated: it gives way to a zeroed spare as soon as one is ready.
    AllocatedOnly,
    /// Only allocated, and sealing it early failed: it is kept until its normal roll.
    AllocatedKept,
}

/// The log's spare, as placement sees it (see `spare::SpareSlot`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpareState {
    /// Nothing prepared or coming: asking for one would help.
    Idle,
    /// Queued, being zeroed, or failed a moment ago.
    Coming,
    /// A zeroed spare can be taken now.
    Ready,
}

/// What placement needs to know before a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Situation {
    pub fill: Fill,
    pub spare: SpareState,
    /// Where the next frame would start in the active segment.
    pub end: u64,
    /// The next frame's length.
    pub need: u64,
    pub capacity: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// The frame goes into the active segment; `request_spare`: have the next segment
    /// zeroed in the background first.
    Append { request_spare: bool },
    /// Put the ready spare in place of the empty, allocated-only active segment.
    ReplaceEmpty,
    /// Seal the allocated-only active segment early (frames in it) and continue in the
    /// ready spare, as on a roll.
    SealEarly,
    /// Seal the full active segment and continue in a new one.
    Roll,
}

/// What to do when carrying out a decision failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnFailure {
    /// Remove the half-made segment (a stray `<base>.seg` would end the active segment at
    /// `base` at the next open, hiding the frames it goes on taking) and fail the frame.
    UndoAndFail,
    /// The active segment is unchanged: appends go on in it ([`Fill::AllocatedKept`]).
    KeepActive,
    /// The spare took the active segment's name: this writer's file is no longer the
    /// log's, so the log refuses writes until a restart.
    Poison,
}

/// The one placement decision, before each frame.
pub(crate) fn decide(s: Situation) -> Decision {
    if s.fill == Fill::AllocatedOnly && s.spare == SpareState::Ready {
        return if s.end > 0 {
            Decision::SealEarly
        } else {
            Decision::ReplaceEmpty
        };
    }
    if s.end + s.need > s.capacity {
        return Decision::Roll;
    }
    // An allocated-only segment asks at once; a zeroed one once it is half full, so that
    // the spare is ready when it fills.
    let wanted = s.fill == Fill::AllocatedOnly || s.end * 2 >= s.capacity;
    Decision::Append {
        request_spare: wanted && s.spare == SpareState::Idle,
    }
}

impl Decision {
    pub fn on_failure(self) -> OnFailure {
        match self {
            Decision::Roll => OnFailure::UndoAndFail,
            // `roll` undoes it; the early seal is not tried again for this segment.
            Decision::SealEarly => OnFailure::KeepActive,
            Decision::ReplaceEmpty => OnFailure::Poison,
            Decision::Append { .. } => unreachable!("appending changes no file"),
        }
    }
}

impl Fill {
    /// After a successful decision: what the new active segment is.
    pub fn after(self, d: Decision, zeroed: bool) -> Fill {
        match d {
            Decision::Append { .. } => self,
            Decision::ReplaceEmpty => Fill::Zeroed,
            Decision::SealEarly | Decision::Roll if zeroed => Fill::Zeroed,
            Decision::SealEarly | Decision::Roll => Fill::AllocatedOnly,
        }
    }

    /// After a failed decision (`roll` undid what it made).
    pub fn after_failure(self, d: Decision) -> Fill {
        match d.on_failure() {
            OnFailure::KeepActive => Fill::AllocatedKept,
            OnFailure::UndoAndFail | OnFailure::Poison => self,
        }
    }

    pub fn of(zeroed: bool) -> Fill {
        if zeroed {
            Fill::Zeroed
        } else {
            Fill::AllocatedOnly
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: u64 = 1000;

    fn at(fill: Fill, spare: SpareState, end: u64, need: u64) -> Decision {
        decide(Situation {
            fill,
            spare,
            end,
            need,
            capacity: CAP,
        })
    }

    fn append(request_spare: bool) -> Decision {
        Decision::Append { request_spare }
    }

    #[test]
    fn a_zeroed_segment_asks_for_its_spare_at_half_and_rolls_when_full() {
        use SpareState::*;
        assert_eq!(at(Fill::Zeroed, Idle, 0, 10), append(false));
        assert_eq!(at(Fill::Zeroed, Idle, 499, 10), append(false));
        assert_eq!(at(Fill::Zeroed, Idle, 500, 10), append(true));
        assert_eq!(at(Fill::Zeroed, Coming, 500, 10), append(false));
        assert_eq!(at(Fill::Zeroed, Ready, 990, 10), append(false));
        assert_eq!(at(Fill::Zeroed, Ready, 991, 10), Decision::Roll);
        assert_eq!(at(Fill::Zeroed, Idle, 0, CAP + 1), Decision::Roll);
    }

    #[test]
    fn an_allocated_segment_asks_at_once_and_gives_way_when_the_spare_is_ready() {
        use SpareState::*;
        assert_eq!(at(Fill::AllocatedOnly, Idle, 0, 10), append(true));
        assert_eq!(at(Fill::AllocatedOnly, Coming, 10, 10), append(false));
        assert_eq!(
            at(Fill::AllocatedOnly, Ready, 0, 10),
            Decision::ReplaceEmpty
        );
        assert_eq!(at(Fill::AllocatedOnly, Ready, 10, 10), Decision::SealEarly);
        // Full before its spare came: rolls as any segment.
        assert_eq!(at(Fill::AllocatedOnly, Coming, 995, 10), Decision::Roll);
    }

    #[test]
    fn an_allocated_segment_whose_early_seal_failed_is_kept_until_full() {
        use SpareState::*;
        let kept = Fill::AllocatedOnly.after_failure(Decision::SealEarly);
        assert_eq!(kept, Fill::AllocatedKept);
        assert_eq!(at(kept, Ready, 10, 10), append(false));
        assert_eq!(at(kept, Idle, 10, 10), append(false));
        assert_eq!(at(kept, Idle, 600, 10), append(true));
        assert_eq!(at(kept, Ready, 995, 10), Decision::Roll);
    }

    #[test]
    fn failures_and_what_follows() {
        assert_eq!(Decision::Roll.on_failure(), OnFailure::UndoAndFail);
        assert_eq!(Decision::ReplaceEmpty.on_failure(), OnFailure::Poison);
        assert_eq!(Decision::SealEarly.on_failure(), OnFailure::KeepActive);
        assert_eq!(Fill::Zeroed.after_failure(Decision::Roll), Fill::Zeroed);
        assert_eq!(
            Fill::AllocatedOnly.after(Decision::ReplaceEmpty, true),
            Fill::Zeroed
        );
        // A roll that found no spare ready continues in an allocated-only segment.
        assert_eq!(
            Fill::Zeroed.after(Decision::Roll, false),
            Fill::AllocatedOnly
        );
        assert_eq!(
            Fill::AllocatedKept.after(Decision::Roll, true),
            Fill::Zeroed
        );
    }
}
