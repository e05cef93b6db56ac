//! Damage: bytes inside a segment's synced data where frames should be but do not check
//! out (a flipped bit, a bad sector). Never a torn tail: only bytes past what the node can
//! prove it synced may be cut as one (see `recovery`), and damage is never cut at all. It
//! is recorded as a [`Hole`] in its segment, reads of it fail with
//! [`StorageError::DataLoss`] naming the offsets and where to go on, and a repair from a
//! peer holding the same records puts the frames back (`Log::repair`).

use crate::error::FormatError;
use crate::format::{self, DurableMark, HEADER_BYTES, MAGIC};

/// A run of bad bytes in one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hole {
    /// Where the first bad frame starts (a frame boundary of the good data before it).
    pub pos: u64,
    /// The first record offset the damage holds.
    pub first_offset: u64,
    /// Where valid frames resume in the segment: (byte position, offset). None when no
    /// valid frame follows in the segment (the damage runs to the segment's end).
    pub resume: Option<(u64, u64)>,
    /// One past the last byte that may hold data of the damaged run (what a repair or a
    /// truncation must overwrite).
    pub extent_end: u64,
    pub reason: FormatError,
}

impl Hole {
    /// The first offset past the damage, if known (sealed segments: the next one's base).
    pub fn next_offset(&self) -> Option<u64> {
        self.resume.map(|(_, o)| o)
    }

    pub fn contains(&self, offset: u64) -> bool {
        offset >= self.first_offset && self.next_offset().is_none_or(|n| offset < n)
    }
}

/// Where valid frames resume after a bad frame at `pos` that should hold `expected`,
/// searching `seg` up to byte `limit`: first where the bad frame's own header says it ends
/// (if what lies there checks out), else at the first frame further on that checks out and
/// starts past `expected` (below `next_base` in a sealed segment). `None` if no such frame
/// exists: the damage runs to the end.
pub fn resume_after(
    seg: &[u8],
    segment_base: u64,
    pos: u64,
    expected: u64,
    limit: u64,
    next_base: Option<u64>,
) -> Option<(u64, u64)> {
    let limit = (limit as usize).min(seg.len());
    let valid_at = |q: usize, min_offset: u64| -> Option<u64> {
        let h = format::check_frame(seg.get(q..limit)?).ok()?;
        let fits = h.base_offset >= min_offset && next_base.is_none_or(|n| h.next_offset() <= n);
        fits.then_some(h.base_offset)
    };
    if let Ok(h) = format::peek_header(&seg[pos as usize..limit]) {
        let q = pos as usize + h.frame_len as usize;
        let ends_here = next_base == Some(h.next_offset())
            && q <= limit
            && (q + HEADER_BYTES > seg.len() || format::is_zero_header(&seg[q..]));
        let resumes = valid_at(q, h.next_offset()) == Some(h.next_offset())
            || DurableMark::read_at(seg, q as u64, segment_base).is_some()
            || ends_here;
        if h.base_offset == expected && q <= limit && resumes {
            return Some((q as u64, h.next_offset()));
        }
    }
    let magic = MAGIC.to_le_bytes();
    let mut at = pos as usize + 1;
    while at + HEADER_BYTES <= limit {
        let i = seg[at..limit].windows(4).position(|w| w == magic)?;
        let q = at + i;
        if let Some(o) = valid_at(q, expected + 1) {
            return Some((q as u64, o));
        }
        at = q + 1;
    }
    None
}

/// One past the last non-zero byte of `seg` at or after `from` (`from` if none).
pub fn extent_end(seg: &[u8], from: u64) -> u64 {
    let from = (from as usize).min(seg.len());
    seg[from..]
        .iter()
        .rposition(|&b| b != 0)
        .map_or(from, |i| from + i + 1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::FrameBuilder;

    fn frames(base: u64, n: u64) -> (Vec<u8>, Vec<u64>) {
        let mut out = Vec::new();
        let mut starts = Vec::new();
        for i in 0..n {
            let mut b = FrameBuilder::default();
            b.push(format!("record {i} {}", "x".repeat(i as usize * 7)).as_bytes());
            let mut f = b.finish(None, 0);
            format::stamp_frame(&mut f, base + i, 1, 10);
            starts.push(out.len() as u64);
            out.extend_from_slice(&f);
        }
        (out, starts)
    }

    #[test]
    fn resumes_after_a_bad_payload_byte_by_the_frame_length() {
        let (mut seg, starts) = frames(10, 5);
        seg.resize(seg.len() + 4096, 0);
        seg[starts[2] as usize + HEADER_BYTES] ^= 1;
        let r = resume_after(&seg, 10, starts[2], 12, seg.len() as u64, None);
        assert_eq!(r, Some((starts[3], 13)));
    }

    #[test]
    fn resumes_by_search_when_the_length_is_bad() {
        let (mut seg, starts) = frames(0, 6);
        seg.resize(seg.len() + 4096, 0);
        // A bad length field: the header no longer tells where the frame ends.
        seg[starts[1] as usize + 12] ^= 0x40;
        let r = resume_after(&seg, 0, starts[1], 1, seg.len() as u64, None);
        assert_eq!(r, Some((starts[2], 2)));
    }

    #[test]
    fn no_resume_when_nothing_valid_follows() {
        let (mut seg, starts) = frames(0, 3);
        let end = seg.len();
        seg.resize(end + 4096, 0);
        seg[starts[2] as usize + 12] ^= 0x40;
        assert_eq!(
            resume_after(&seg, 0, starts[2], 2, seg.len() as u64, None),
            None
        );
        assert_eq!(extent_end(&seg, starts[2]), end as u64);
    }

    #[test]
    fn the_last_frame_of_a_sealed_segment_resumes_at_its_end() {
        let (mut seg, starts) = frames(0, 3);
        let end = seg.len() as u64;
        seg.resize(seg.len() + 4096, 0);
        seg[starts[2] as usize + HEADER_BYTES + 2] ^= 1;
        let r = resume_after(&seg, 0, starts[2], 2, seg.len() as u64, Some(3));
        assert_eq!(r, Some((end, 3)));
    }
}
