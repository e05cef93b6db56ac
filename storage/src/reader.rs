//! Reading a log through the segments' mmaps, never past the durable end.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::error::{Result, StorageError};
use crate::format::{self, BatchHeader, Record};
use crate::log::LogShared;
use crate::segment::SegmentView;

/// Reads one log. Cheap to clone; safe while the writer appends, rolls and retention runs.
#[derive(Debug, Clone)]
pub struct LogReader {
    log: Arc<LogShared>,
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
            let Some((h, frame)) = cursor.next_frame()? else {
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
    /// (at least one frame when any is there). The bytes are exactly as stored.
    pub fn read_frames(&self, from: u64, max_bytes: usize) -> Result<FrameChunk> {
        let mut cursor = self.frames(from)?;
        let mut buf = BytesMut::new();
        let mut first = None;
        let mut next = from;
        while let Some((h, frame)) = cursor.next_frame()? {
            if first.is_some() && buf.len() + frame.len() > max_bytes {
                break;
            }
            first.get_or_insert(h.base_offset);
            buf.extend_from_slice(frame);
            next = h.next_offset();
        }
        Ok(FrameChunk {
            first_offset: first.unwrap_or(from),
            next_offset: next,
            bytes: buf.freeze(),
        })
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

    /// The next durable frame (CRC checked), or None at the durable end.
    pub fn next_frame(&mut self) -> Result<Option<(BatchHeader, &[u8])>> {
        loop {
            let Some(seg) = &self.seg else {
                return Ok(None);
            };
            if self.pos < seg.durable_len() {
                break;
            }
            // End of this segment's durable bytes: move on if a later segment starts here.
            match self.segment_for(self.offset) {
                Some(next) if !Arc::ptr_eq(&next, seg) && next.base_offset == self.offset => {
                    self.seg = Some(next);
                    self.pos = 0;
                }
                _ => return Ok(None),
            }
        }
        let seg = self.seg.as_ref().expect("checked above");
        let pos = self.pos;
        let (h, frame) = seg.frame_at(pos)?;
        if h.base_offset != self.offset {
            return Err(StorageError::Corrupt {
                path: seg.path.clone(),
                position: pos,
                reason: crate::error::FormatError::OffsetMismatch {
                    expected: self.offset,
                    found: h.base_offset,
                },
            });
        }
        self.pos += u64::from(h.frame_len);
        self.offset = h.next_offset();
        Ok(Some((h, frame)))
    }
}
