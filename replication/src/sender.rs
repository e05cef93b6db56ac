//! What an upstream sends a replica next in one log: frames, a sealed segment whole (in
//! chunks, or offered for the replica to fetch from the file itself), or a durable span of
//! the active segment offered the same way. A pure policy over a [`LogView`] (what the
//! upstream's log looks like now); the server reads and sends what it decides.

/// A replica whose end lies inside a sealed segment fetches the rest of it (as a segment
/// of its own, starting there) when at least this much of it is left; less goes as frames.
pub const FETCH_INSIDE_MIN_BYTES: u64 = 4 << 20;

/// A replica this far behind inside the active segment (at least this fraction of a
/// segment, and [`FETCH_INSIDE_MIN_BYTES`]) fetches the durable span as a segment of its
/// own, so that the segments it imports this way are no smaller than that (each seals the
/// replica's own active segment where it begins).
pub const FETCH_ACTIVE_MIN_SEGMENT_FRACTION: u64 = 4;

/// A run of a segment's durable frames between two frame boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// The segment's base offset.
    pub base: u64,
    /// The offset of its first frame and one past its last.
    pub first: u64,
    pub next: u64,
    pub bytes: u64,
}

/// What the sender needs to know of the log as the replica may see it (the durable end,
/// or a delayed upstream's horizon).
pub trait LogView {
    /// The sealed segment holding `offset` (not the active one): (base, next base).
    fn sealed_segment(&self, offset: u64) -> Option<(u64, u64)>;
    /// Bytes of sealed segment `base` from the frame starting at `from` to its end.
    fn sealed_bytes_from(&self, base: u64, from: u64) -> Option<u64>;
    /// The durable span of the active segment from the frame starting at `from`.
    fn active_span(&self, from: u64) -> Option<Span>;
    /// The log's configured (full) segment size.
    fn segment_bytes(&self) -> u64;
}

/// What the replica fetches itself over segment-fetch connections (its hello says).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fetch {
    /// Sealed segments, whole or from inside.
    pub sealed: bool,
    /// Durable spans of the active segment.
    pub active: bool,
}

/// The next thing to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "the step must be sent"]
pub enum Step {
    /// Offer `[first, next)` of segment `base` for the replica to fetch; the stream goes
    /// on from `next`.
    Offer { base: u64, first: u64, next: u64 },
    /// Send whole frames of sealed segment `base` (ending at `next`) from offset `at`, in
    /// a chunk that stays inside the segment; then call [`Sender::chunk_sent`].
    Chunk { base: u64, next: u64, at: u64 },
    /// Send whole frames from offset `at`; then call [`Sender::frames_sent`].
    Frames { at: u64 },
}

/// One log's sender towards one replica.
#[derive(Debug, Clone)]
pub struct Sender {
    /// The next offset the replica gets after what is in flight.
    from: u64,
    /// The sealed segment being sent whole: (base, next base, next offset to send).
    segment: Option<(u64, u64, u64)>,
    /// How far the replica holds a segment partly received (taken at the first step).
    resume_at: Option<u64>,
    /// Before the first step (a catch-up is looked for then).
    first: bool,
    fetch: Fetch,
}

impl Sender {
    pub fn new(from: u64, resume_at: Option<u64>, fetch: Fetch) -> Self {
        Sender {
            from,
            segment: None,
            resume_at,
            first: true,
            fetch,
        }
    }

    /// The offset the replica gets next (the caller waits until the log has it).
    pub fn from(&self) -> u64 {
        self.from
    }

    /// What to send next, now that the log holds `from()`. `held_back`: the replica is
    /// not taking what was sent (the outbound queue is full), when a fetch of the active
    /// segment's span is worth looking for besides at the first step.
    pub fn next(&mut self, view: &impl LogView, held_back: bool) -> Step {
        let resume = self.resume_at.take();
        if self.segment.is_none() {
            self.segment = self.sealed_to_send(view, resume);
        }
        if let (true, Some((base, next, pos))) = (self.fetch.sealed, self.segment) {
            self.segment = None;
            self.from = next;
            return Step::Offer {
                base,
                first: pos,
                next,
            };
        }
        let look = self.segment.is_none() && self.fetch.active && (self.first || held_back);
        self.first = false;
        if let Some(span) = look.then(|| self.active_to_fetch(view, resume)).flatten() {
            self.from = span.next;
            return Step::Offer {
                base: span.base,
                first: span.first,
                next: span.next,
            };
        }
        match self.segment {
            Some((base, next, at)) => Step::Chunk { base, next, at },
            None => Step::Frames { at: self.from },
        }
    }

    /// The sealed segment to send whole from `from`: one starting there, or (to a replica
    /// that fetches) one it is inside with enough left; from where the replica resumes.
    fn sealed_to_send(&self, view: &impl LogView, resume: Option<u64>) -> Option<(u64, u64, u64)> {
        let (base, next) = view.sealed_segment(self.from)?;
        let worth = || {
            view.sealed_bytes_from(base, self.from)
                .is_some_and(|b| b >= FETCH_INSIDE_MIN_BYTES)
        };
        if base != self.from && !(self.fetch.sealed && worth()) {
            return None;
        }
        let pos = resume
            .filter(|&r| r > self.from && r < next)
            .unwrap_or(self.from);
        Some((base, next, pos))
    }

    /// The durable span of the active segment to offer, if worth fetching; where the
    /// replica holds part of one already, the rest of it.
    fn active_to_fetch(&self, view: &impl LogView, resume: Option<u64>) -> Option<Span> {
        if let Some(r) = resume.filter(|&r| r > self.from) {
            if let Some(rest) = view.active_span(r).filter(|s| s.next > s.first) {
                return Some(rest);
            }
        }
        let min =
            FETCH_INSIDE_MIN_BYTES.max(view.segment_bytes() / FETCH_ACTIVE_MIN_SEGMENT_FRACTION);
        view.active_span(self.from).filter(|s| s.bytes >= min)
    }

    /// A chunk of the sealed segment was sent, up to `next_offset`.
    pub fn chunk_sent(&mut self, next_offset: u64) {
        let Some((base, next, _)) = self.segment else {
            debug_assert!(false, "a chunk with no segment being sent");
            return;
        };
        debug_assert!(next_offset <= next, "chunks never cross a segment's end");
        if next_offset >= next {
            self.segment = None;
            self.from = next;
        } else {
            self.segment = Some((base, next, next_offset));
        }
    }

    /// Frames up to `next_offset` were sent.
    pub fn frames_sent(&mut self, next_offset: u64) {
        debug_assert!(self.segment.is_none() && next_offset > self.from);
        self.from = next_offset;
    }

    /// One past the last offset sent (inside the segment being sent whole, where it got;
    /// a segment the replica holds partly received counts as sent).
    pub fn sent_to(&self) -> u64 {
        let pos = self.segment.map_or(self.from, |(_, _, pos)| pos);
        pos.max(self.from).max(self.resume_at.unwrap_or(0))
    }

    /// The log was cut to `at`: whether that removed anything already sent, when the
    /// stream must end (the replica reconnects and has its tail decided again; frames of
    /// the new history must not follow the old ones).
    #[must_use]
    pub fn cut_removes_sent(&self, at: u64) -> bool {
        at < self.sent_to()
    }

    /// Retention removed what the replica needed: it copies the log again from `start`.
    pub fn fell_behind(&mut self, start: u64) {
        self.segment = None;
        self.from = start;
    }

    /// Progress of the sealed segment being sent whole: (sent up to, its end).
    pub fn segment_progress(&self) -> Option<(u64, u64)> {
        self.segment.map(|(_, next, pos)| (pos, next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Segments of 100 records of 1 KiB: sealed below `active`, the active one up to `end`.
    struct Fake {
        active: u64,
        end: u64,
        segment_bytes: u64,
    }

    impl LogView for Fake {
        fn sealed_segment(&self, offset: u64) -> Option<(u64, u64)> {
            let base = offset / 100 * 100;
            (base < self.active).then_some((base, base + 100))
        }
        fn sealed_bytes_from(&self, base: u64, from: u64) -> Option<u64> {
            Some((base + 100 - from) << 20)
        }
        fn active_span(&self, from: u64) -> Option<Span> {
            (from >= self.active && from <= self.end).then_some(Span {
                base: self.active,
                first: from,
                next: self.end,
                bytes: (self.end - from) << 20,
            })
        }
        fn segment_bytes(&self) -> u64 {
            self.segment_bytes
        }
    }

    const NO_FETCH: Fetch = Fetch {
        sealed: false,
        active: false,
    };
    const FETCH: Fetch = Fetch {
        sealed: true,
        active: true,
    };

    #[test]
    fn sealed_segments_go_whole_in_chunks_then_frames() {
        let v = Fake {
            active: 200,
            end: 250,
            segment_bytes: 100 << 20,
        };
        let mut s = Sender::new(100, None, NO_FETCH);
        assert_eq!(
            s.next(&v, false),
            Step::Chunk {
                base: 100,
                next: 200,
                at: 100
            }
        );
        s.chunk_sent(150);
        assert_eq!(s.segment_progress(), Some((150, 200)));
        // Found by the simulation (seed 1035236): a cut inside the segment being sent
        // removes what was sent of it, though the stream's `from` is still its base.
        assert_eq!((s.from(), s.sent_to()), (100, 150));
        assert!(s.cut_removes_sent(120) && !s.cut_removes_sent(150));
        // Found by seed 1160916: what the replica holds staged counts before the first step.
        let resuming = Sender::new(100, Some(130), NO_FETCH);
        assert!(resuming.cut_removes_sent(120));
        assert_eq!(
            s.next(&v, false),
            Step::Chunk {
                base: 100,
                next: 200,
                at: 150
            }
        );
        s.chunk_sent(200);
        assert_eq!(s.next(&v, false), Step::Frames { at: 200 });
        s.frames_sent(230);
        assert_eq!(s.from(), 230);
    }

    #[test]
    fn inside_a_sealed_segment_frames_follow_unless_fetching_is_worth_it() {
        let v = Fake {
            active: 200,
            end: 250,
            segment_bytes: 100 << 20,
        };
        // Without fetch: frames from inside the segment.
        assert_eq!(
            Sender::new(150, None, NO_FETCH).next(&v, false),
            Step::Frames { at: 150 }
        );
        // With fetch and 50 MiB left: offered as a segment of the replica's own.
        let mut s = Sender::new(150, None, FETCH);
        assert_eq!(
            s.next(&v, false),
            Step::Offer {
                base: 100,
                first: 150,
                next: 200
            }
        );
        assert_eq!(s.from(), 200);
        // 2 MiB left: frames.
        assert_eq!(
            Sender::new(198, None, FETCH).next(&v, false),
            Step::Frames { at: 198 }
        );
    }

    #[test]
    fn a_staged_segment_resumes_where_it_stopped() {
        let v = Fake {
            active: 200,
            end: 250,
            segment_bytes: 100 << 20,
        };
        let mut s = Sender::new(100, Some(140), NO_FETCH);
        assert_eq!(
            s.next(&v, false),
            Step::Chunk {
                base: 100,
                next: 200,
                at: 140
            }
        );
        let mut s = Sender::new(100, Some(140), FETCH);
        assert_eq!(
            s.next(&v, false),
            Step::Offer {
                base: 100,
                first: 140,
                next: 200
            }
        );
    }

    #[test]
    fn the_active_span_is_offered_at_the_start_or_when_held_back() {
        let v = Fake {
            active: 200,
            end: 290,
            segment_bytes: 100 << 20,
        };
        let mut s = Sender::new(210, None, FETCH);
        assert_eq!(
            s.next(&v, false),
            Step::Offer {
                base: 200,
                first: 210,
                next: 290
            }
        );
        // Later, keeping up: frames; held back: looked for again.
        let v = Fake {
            active: 200,
            end: 350,
            segment_bytes: 100 << 20,
        };
        assert_eq!(s.next(&v, false), Step::Frames { at: 290 });
        assert_eq!(
            s.next(&v, true),
            Step::Offer {
                base: 200,
                first: 290,
                next: 350
            }
        );
        // Too little behind (under a quarter of a segment): frames.
        let v = Fake {
            active: 200,
            end: 220,
            segment_bytes: 100 << 20,
        };
        assert_eq!(
            Sender::new(210, None, FETCH).next(&v, false),
            Step::Frames { at: 210 }
        );
    }

    #[test]
    fn falling_behind_retention_restarts_from_the_start() {
        let v = Fake {
            active: 300,
            end: 350,
            segment_bytes: 100 << 20,
        };
        let mut s = Sender::new(100, None, NO_FETCH);
        let _ = s.next(&v, false);
        s.fell_behind(200);
        assert_eq!(s.segment_progress(), None);
        assert_eq!(
            s.next(&v, false),
            Step::Chunk {
                base: 200,
                next: 300,
                at: 200
            }
        );
    }
}
