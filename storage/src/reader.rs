//! Reading a log through the segments' mmaps, never past the durable end.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Result, StorageError};
use crate::format::{self, BatchHeader, Record};
use crate::log::LogShared;
use crate::segment::SegmentView;

/// Reads one log. Cheap to clone; safe while the writer appends, rolls and retention runs.
#[derive(Debug, Clone)]
pub struct LogReader {
    log: Arc<LogShared>,
}

/// Where a run of a segment's durable frames lies in its file, between two frame
/// boundaries: what a segment fetch sends straight from the file.
#[derive(Debug, Clone)]
pub struct SegmentSpan {
    pub path: std::path::PathBuf,
    /// The segment's base offset.
    pub base: u64,
    /// Byte position of the frame that starts at `first_offset`.
    pub start: u64,
    /// Byte position past the segment's last frame.
    pub end: u64,
    pub first_offset: u64,
    /// Offset past the span's last frame (of a sealed segment taken whole, the next
    /// segment's base).
    pub next_offset: u64,
}

/// A run of whole frames, as stored: what replication ships.
#[derive(Debug, Clone)]
pub struct FrameChunk {
    pub first_offset: u64,
    pub next_offset: u64,
    pub bytes: Bytes,
}

impl LogReader {
    pub(crate) fn new(log: Arc<LogShared>) -> Self {
        LogReader { log }
    }

    pub fn log_name(&self) -> &str {
        &self.log.name
    }

    pub fn durable_end(&self) -> u64 {
        *self.log.durable.borrow()
    }

    pub fn start_offset(&self) -> u64 {
        self.log.start.load(Ordering::Acquire)
    }

    fn check(&self, from: u64) -> Result<()> {
        if self.log.deleted.load(Ordering::Acquire) {
            return Err(StorageError::LogNotFound(self.log.name.clone()));
        }
        let (start, end) = (self.start_offset(), self.durable_end());
        if from < start || from > end {
            return Err(StorageError::OffsetOutOfRange {
                log: self.log.name.clone(),
                offset: from,
                start,
                end,
            });
        }
        Ok(())
    }

    /// A cursor over frames starting with the one that holds `from`.
    pub fn frames(&self, from: u64) -> Result<FrameCursor> {
        self.check(from)?;
        let mut c = FrameCursor {
            log: self.log.clone(),
            seg: None,
            pos: 0,
            offset: from,
        };
        c.seek(from)?;
        Ok(c)
    }

    /// Up to `max_records` records from `from`, stopping before `max_bytes` of values
    /// (at least one record is returned when any is there). Empty at the durable end.
    pub fn read(&self, from: u64, max_records: usize, max_bytes: usize) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut cursor = self.frames(from)?;
        while out.len() < max_records {
            // Records before damage go out first; the next read starting at it gets the error.
            let next = match cursor.next_frame() {
                Err(e) if e.is_data_loss() && !out.is_empty() => return Ok(out),
                next => next?,
            };
            let Some((h, frame)) = next else {
                break;
            };
            let records =
                format::decode_records(frame, &h).map_err(|reason| cursor.corrupt(reason))?;
            for r in records.into_iter().filter(|r| r.offset >= from) {
                if out.len() >= max_records
                    || (!out.is_empty() && bytes + r.value.len() > max_bytes)
                {
                    return Ok(out);
                }
                bytes += r.value.len();
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Whole frames starting with the one that holds `from`, up to about `max_bytes`
    /// (at least one frame when any is there), exactly as stored. See
    /// [`LogReader::read_frames_until`].
    pub fn read_frames(&self, from: u64, max_bytes: usize) -> Result<FrameChunk> {
        self.read_frames_until(from, max_bytes, u64::MAX)
    }

    /// Whole frames from the one that holds `from`, up to about `max_bytes` and never past
    /// offset `until` (a frame ending after it is left out). A chunk stops at the end of its
    /// segment, because its bytes are the segment's mapped pages, not a copy. Headers are
    /// checked here, CRCs are not: the receiver of shipped frames (a replica) checks every
    /// one before it keeps it, so a check here would be a second one.
    pub fn read_frames_until(&self, from: u64, max_bytes: usize, until: u64) -> Result<FrameChunk> {
        let mut cursor = self.frames(from)?;
        let mut span: Option<(Arc<SegmentView>, u64, u64)> = None;
        let mut first = None;
        let mut next = from;
        while let Some((h, seg, pos)) = cursor.next_header()? {
            if h.next_offset() > until {
                break;
            }
            match &mut span {
                None => span = Some((seg, pos, pos + u64::from(h.frame_len))),
                Some((s, start, end)) => {
                    let len = (*end - *start) as usize;
                    if !Arc::ptr_eq(s, &seg) || len + h.frame_len as usize > max_bytes {
                        break;
                    }
                    *end += u64::from(h.frame_len);
                }
            }
            first.get_or_insert(h.base_offset);
            next = h.next_offset();
        }
        let bytes = match span {
            Some((seg, start, end)) => Bytes::from_owner(MappedFrames {
                seg,
                start: start as usize,
                end: end as usize,
            }),
            None => Bytes::new(),
        };
        Ok(FrameChunk {
            first_offset: first.unwrap_or(from),
            next_offset: next,
            bytes,
        })
    }

    /// How many times the log's end was cut back so far; pass it to
    /// [`LogReader::lowest_cut_since`] later.
    pub fn cut_count(&self) -> u64 {
        self.log.cuts.lock().count()
    }

    /// The lowest offset the log's end was cut back to since `cut_count` returned `seen`
    /// (0 if that is too long ago to know), or None if it was not cut since. Records a
    /// reader handed out at or past that offset may since have been replaced.
    pub fn lowest_cut_since(&self, seen: u64) -> Option<u64> {
        self.log.cuts.lock().lowest_since(seen)
    }

    /// The sealed segment holding `offset` (not the active one), as (base, next base).
    pub fn sealed_segment(&self, offset: u64) -> Option<(u64, u64)> {
        self.sealed_view(offset)
            .map(|(s, next)| (s.base_offset, next))
    }

    /// The base offset of the active (last) segment.
    pub fn active_base(&self) -> u64 {
        self.log.segments.read().last().map_or(0, |s| s.base_offset)
    }

    /// The sealed segment holding `offset` (one that another follows) and the next one's
    /// base.
    fn sealed_view(&self, offset: u64) -> Option<(Arc<SegmentView>, u64)> {
        let segs = self.log.segments.read();
        let i = segs.partition_point(|s| s.base_offset <= offset);
        let seg = segs.get(i.checked_sub(1)?)?;
        let next = segs.get(i)?;
        Some((seg.clone(), next.base_offset))
    }

    /// The bytes of sealed segment `base` from the frame that starts at `from` to the
    /// segment's end. `from` must be a frame boundary inside the segment.
    pub fn sealed_span(&self, base: u64, from: u64) -> Result<SegmentSpan> {
        self.check(from)?;
        let Some((seg, _)) = self
            .sealed_view(base)
            .filter(|(s, _)| s.base_offset == base)
        else {
            return Err(StorageError::InvalidInput(format!(
                "log {} has no sealed segment starting at {base}",
                self.log.name
            )));
        };
        // Sealed: its end no longer moves, so length and next offset agree.
        let (end, next_offset) = (seg.durable_len(), seg.durable_next());
        Ok(SegmentSpan {
            start: self.frame_start(&seg, from)?,
            path: seg.path.clone(),
            base,
            end,
            first_offset: from,
            next_offset,
        })
    }

    /// The bytes of segment `base`, sealed or the active one, from the frame that starts at
    /// `from` to the last frame boundary at or below `limit` and the durable end (an empty
    /// span if none is past `from`). Below the durable end a segment's bytes do not change
    /// until a truncation (which readers learn of through [`LogReader::cut_count`]), so
    /// they can be sent straight from the file while the writer appends behind them.
    pub fn span(&self, base: u64, from: u64, limit: u64) -> Result<SegmentSpan> {
        self.check(from)?;
        let seg = {
            let segs = self.log.segments.read();
            let i = segs.partition_point(|s| s.base_offset <= base);
            i.checked_sub(1)
                .map(|i| segs[i].clone())
                .filter(|s| s.base_offset == base)
        };
        let Some(seg) = seg else {
            return Err(StorageError::InvalidInput(format!(
                "log {} has no segment starting at {base}",
                self.log.name
            )));
        };
        let start = self.frame_start(&seg, from)?;
        // The segment publishes its frames just before the log's end moves: not past that.
        let limit = limit.min(self.durable_end());
        let (end, next_offset) = match seg.boundary_at_or_below(limit)? {
            (_, next) if next < from => (start, from),
            b => b,
        };
        Ok(SegmentSpan {
            path: seg.path.clone(),
            base,
            start,
            end,
            first_offset: from,
            next_offset,
        })
    }

    /// Byte position in `seg` of the durable frame that starts at `from`.
    fn frame_start(&self, seg: &SegmentView, from: u64) -> Result<u64> {
        match seg.locate(from)? {
            Some(f) if f.header.base_offset == from => Ok(f.pos),
            _ => Err(StorageError::InvalidInput(format!(
                "offset {from} is not where a durable frame of segment {} of log {} starts",
                seg.base_offset, self.log.name
            ))),
        }
    }

    /// Wait until the record at `offset` is durable (`durable_end > offset`).
    pub async fn wait_for(&self, offset: u64) -> Result<()> {
        let mut rx = self.log.durable.subscribe();
        loop {
            if self.log.deleted.load(Ordering::Acquire) {
                return Err(StorageError::LogNotFound(self.log.name.clone()));
            }
            if *rx.borrow_and_update() > offset {
                return Ok(());
            }
            rx.changed().await.map_err(|_| StorageError::Closed)?;
        }
    }
}

/// Frames inside a mapped segment, kept alive by the mapping (segment files are never
/// shrunk while mapped, so the pages stay readable even after the file is deleted).
struct MappedFrames {
    seg: Arc<SegmentView>,
    start: usize,
    end: usize,
}

impl AsRef<[u8]> for MappedFrames {
    fn as_ref(&self) -> &[u8] {
        &self.seg.raw()[self.start..self.end]
    }
}

/// Walks frames forward across segments; re-reads the durable end at every step, so it
/// follows a growing log.
#[derive(Debug)]
pub struct FrameCursor {
    log: Arc<LogShared>,
    seg: Option<Arc<SegmentView>>,
    pos: u64,
    /// Offset of the next frame expected at `pos`.
    offset: u64,
}

impl FrameCursor {
    fn segment_for(&self, offset: u64) -> Option<Arc<SegmentView>> {
        let segs = self.log.segments.read();
        let i = segs.partition_point(|s| s.base_offset <= offset);
        i.checked_sub(1).map(|i| segs[i].clone())
    }

    fn seek(&mut self, offset: u64) -> Result<()> {
        self.seg = self.segment_for(offset);
        self.offset = offset;
        self.pos = 0;
        if let Some(seg) = &self.seg {
            match seg.locate(offset)? {
                Some(f) => {
                    self.pos = f.pos;
                    self.offset = f.header.base_offset;
                }
                None => {
                    self.pos = seg.durable_len();
                    self.offset = seg.durable_next();
                }
            }
        }
        Ok(())
    }

    fn corrupt(&self, reason: crate::error::FormatError) -> StorageError {
        StorageError::Corrupt {
            path: self
                .seg
                .as_ref()
                .map(|s| s.path.clone())
                .unwrap_or_default(),
            position: self.pos,
            reason,
        }
    }

    /// Offset the next frame starts at.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The segment holding the next durable frame, moving to the next segment at the end
    /// of one; None at the durable end.
    fn advance(&mut self) -> Option<Arc<SegmentView>> {
        loop {
            let seg = self.seg.as_ref()?;
            if self.pos < seg.durable_len() {
                return Some(seg.clone());
            }
            // End of this segment's durable bytes: move on if a later segment starts here.
            match self.segment_for(self.offset) {
                Some(next) if !Arc::ptr_eq(&next, seg) && next.base_offset == self.offset => {
                    self.seg = Some(next);
                    self.pos = 0;
                }
                _ => return None,
            }
        }
    }

    /// The base of the segment after `seg`, if one follows.
    fn next_base(&self, seg: &SegmentView) -> Option<u64> {
        let segs = self.log.segments.read();
        let i = segs.partition_point(|s| s.base_offset <= seg.base_offset);
        segs.get(i).map(|s| s.base_offset)
    }

    /// The frame at the cursor failed to check out: damage (recorded, and DATA_LOSS for
    /// the reader), or an error that is not about the bytes.
    fn damaged(&self, seg: &SegmentView, e: StorageError) -> StorageError {
        match e {
            StorageError::Corrupt { reason, .. } => {
                seg.damaged_at(self.pos, self.offset, self.next_base(seg), reason)
            }
            other => other,
        }
    }

    /// Stop at a known damaged run: the records in it are not here.
    fn check_hole(&self, seg: &SegmentView) -> Result<()> {
        match seg.hole_at(self.pos) {
            Some(hole) => Err(seg.data_loss(&hole)),
            None => Ok(()),
        }
    }

    fn step(&mut self, seg: &SegmentView, h: &BatchHeader) -> Result<()> {
        if h.base_offset != self.offset {
            let reason = crate::error::FormatError::OffsetMismatch {
                expected: self.offset,
                found: h.base_offset,
            };
            return Err(seg.damaged_at(self.pos, self.offset, self.next_base(seg), reason));
        }
        self.pos += u64::from(h.frame_len);
        self.offset = h.next_offset();
        Ok(())
    }

    /// The next durable frame (CRC checked), or None at the durable end.
    pub fn next_frame(&mut self) -> Result<Option<(BatchHeader, &[u8])>> {
        let Some(seg) = self.advance() else {
            return Ok(None);
        };
        let pos = self.pos;
        self.check_hole(&seg)?;
        let h = seg.frame_at(pos).map_err(|e| self.damaged(&seg, e))?.0;
        self.step(&seg, &h)?;
        let seg = self.seg.as_ref().expect("advance set it");
        Ok(Some((
            h,
            &seg.raw()[pos as usize..(pos + u64::from(h.frame_len)) as usize],
        )))
    }

    /// The next durable frame's header (not its CRC), its segment and position there.
    fn next_header(&mut self) -> Result<Option<(BatchHeader, Arc<SegmentView>, u64)>> {
        let Some(seg) = self.advance() else {
            return Ok(None);
        };
        let pos = self.pos;
        self.check_hole(&seg)?;
        let h = seg
            .header_at(pos, seg.durable_len())
            .map_err(|e| self.damaged(&seg, e))?;
        self.step(&seg, &h)?;
        Ok(Some((h, seg, pos)))
    }
}
