//! What readers may see of a log: up to its durable end, or on a delayed replica up to its
//! horizon. Every read path (Read, Subscribe, Describe/List/Status ends, the frames sent
//! to downstream replicas) goes through here, so nothing past the horizon is ever returned.

use spool_storage::{FrameChunk, Log, LogReader, Record, SegmentSpan, StorageError};
use tokio::sync::watch;

use std::sync::Arc;

use super::replication::delay::{Delay, Horizon};

#[derive(Debug, Clone)]
pub struct Visible {
    reader: LogReader,
    name: String,
    horizon: Option<watch::Receiver<Horizon>>,
}

/// What readers may see, node-wide: everything durable, or on a delayed replica (until it
/// is promoted) up to each log's horizon.
#[derive(Debug, Clone, Default)]
pub struct Visibility {
    delay: Option<Arc<Delay>>,
}

impl Visibility {
    pub fn delayed(delay: Arc<Delay>) -> Visibility {
        Visibility { delay: Some(delay) }
    }

    /// What readers may see of `log`.
    pub fn of(&self, log: &Log) -> Visible {
        Visible::new(self, log)
    }

    /// The delayed replica's state, while it is not promoted.
    pub fn active_delay(&self) -> Option<&Arc<Delay>> {
        self.delay.as_ref().filter(|d| d.is_active())
    }

    /// The delayed replica's state, promoted or not.
    pub fn delay(&self) -> Option<&Arc<Delay>> {
        self.delay.as_ref()
    }
}

impl Visible {
    pub fn new(visibility: &Visibility, log: &Log) -> Visible {
        let horizon = visibility.active_delay().map(|d| d.watch(log));
        Visible {
            reader: log.reader(),
            name: log.name().to_owned(),
            horizon,
        }
    }

    fn snapshot(&self) -> (u64, u64) {
        let durable = self.reader.durable_end();
        match &self.horizon {
            Some(h) => {
                let h = *h.borrow();
                (h.offset.min(durable), h.generation)
            }
            None => (durable, 0),
        }
    }

    /// Readers see records below this offset.
    pub fn end(&self) -> u64 {
        self.snapshot().0
    }

    pub fn start(&self) -> u64 {
        self.reader.start_offset()
    }

    /// Whether the horizon moved back since `generation` (a cut raced the read).
    fn moved_back(&self, generation: u64) -> bool {
        self.horizon
            .as_ref()
            .is_some_and(|h| h.borrow().generation != generation)
    }

    /// Wait until the record at `offset` is visible.
    pub async fn wait_for(&self, offset: u64) -> Result<(), StorageError> {
        if let Some(h) = &self.horizon {
            let mut rx = h.clone();
            loop {
                // Deleted logs and bad offsets fail here rather than wait forever.
                self.reader.read(self.start().min(offset), 0, 0)?;
                if rx.borrow_and_update().offset > offset {
                    break;
                }
                rx.changed()
                    .await
                    .map_err(|_| StorageError::LogNotFound(self.name.clone()))?;
            }
        }
        // Past the horizon means durable too; after a promotion the horizon is unbounded.
        self.reader.wait_for(offset).await
    }

    fn out_of_range(&self, from: u64, end: u64) -> StorageError {
        StorageError::OffsetOutOfRange {
            log: self.name.clone(),
            offset: from,
            start: self.start(),
            end,
        }
    }

    /// Like [`LogReader::read`], never past the visible end.
    pub fn read(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, StorageError> {
        loop {
            let (end, generation) = self.snapshot();
            // Deleted log, offset below the start: the storage's own error.
            self.reader.read(from.min(end), 0, 0)?;
            if from > end {
                return Err(self.out_of_range(from, end));
            }
            let n = max_records.min((end - from) as usize);
            let records = if n == 0 {
                Vec::new()
            } else {
                self.reader.read(from, n, max_bytes)?
            };
            if !self.moved_back(generation) {
                debug_assert!(records.iter().all(|r| r.offset < end));
                return Ok(records);
            }
        }
    }

    /// Like [`LogReader::read_frames`], never past the visible end (horizons fall on frame
    /// boundaries, so whole frames fit exactly).
    pub fn read_frames(&self, from: u64, max_bytes: usize) -> Result<FrameChunk, StorageError> {
        loop {
            let (end, generation) = self.snapshot();
            if from > end {
                return Err(self.out_of_range(from, end));
            }
            let chunk = self.reader.read_frames_until(from, max_bytes, end)?;
            if !self.moved_back(generation) {
                return Ok(chunk);
            }
        }
    }

    /// See [`LogReader::cut_count`].
    pub fn cut_count(&self) -> u64 {
        self.reader.cut_count()
    }

    /// See [`LogReader::lowest_cut_since`].
    pub fn lowest_cut_since(&self, seen: u64) -> Option<u64> {
        self.reader.lowest_cut_since(seen)
    }

    /// The sealed segment holding `offset` as (base, next base), if all of it is visible.
    pub fn sealed_segment(&self, offset: u64) -> Option<(u64, u64)> {
        self.reader
            .sealed_segment(offset)
            .filter(|&(_, next)| next <= self.end())
    }

    /// The visible frames of the active segment from the frame that starts at `from` on
    /// (see [`LogReader::span`]), or None when `from` is not in the active segment.
    pub fn active_span(&self, from: u64) -> Option<SegmentSpan> {
        let base = self.reader.active_base();
        if from < base {
            return None;
        }
        self.reader.span(base, from, self.end()).ok()
    }

    /// See [`LogReader::span`]: a span of a sealed or the active segment, never past the
    /// visible end.
    pub fn span(&self, base: u64, from: u64, limit: u64) -> Result<SegmentSpan, StorageError> {
        self.reader.span(base, from, limit.min(self.end()))
    }

    /// See [`LogReader::sealed_span`]; only of a segment that is visible whole.
    pub fn sealed_span(&self, base: u64, from: u64) -> Result<SegmentSpan, StorageError> {
        match self.sealed_segment(from) {
            Some((b, _)) if b == base => self.reader.sealed_span(base, from),
            _ => Err(StorageError::InvalidInput(format!(
                "offset {from} of log {} is not in a sealed, visible segment starting at {base}",
                self.name
            ))),
        }
    }
}
