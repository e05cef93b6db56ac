//! A segment: one pre-zeroed file of frames, named by the offset of its first record, read
//! through mmap.
//!
//! Segment files keep their full preallocated size for life (sealed ones too): a mapping
//! never outlives its file's length, so no read can SIGBUS. Bytes past the last frame are
//! zero, except for the residue of a write a crash interrupted, which recovery clears.
//! Readers never look past `durable_len`, which only the storage thread advances, after
//! fdatasync.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use memmap2::Mmap;
use parking_lot::{Mutex, RwLock, RwLockReadGuard};

use crate::damage::{self, Hole};
use crate::error::{IoContext, Result, StorageError};
use crate::format::{self, BatchHeader, HEADER_BYTES};
use crate::index::{self, IndexEntry};

pub fn segment_file_name(base: u64) -> String {
    format!("{base:020}.seg")
}

pub fn index_file_name(base: u64) -> String {
    format!("{base:020}.idx")
}

/// Open an existing segment (or index) file for reading and writing.
pub(crate) fn open_rw(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .at(path)
}

/// Base offset of a segment file name, if it is one.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".seg")?;
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
        .then(|| stem.parse().ok())
        .flatten()
}

/// The read side of a segment, shared by readers and the storage thread.
#[derive(Debug)]
pub struct SegmentView {
    pub base_offset: u64,
    pub path: PathBuf,
    map: Mmap,
    /// Bytes `[0, durable_len)` hold durable frames.
    durable_len: AtomicU64,
    /// Offset one past the last durable record in this segment.
    durable_next: AtomicU64,
    /// Timestamp of the last durable batch (0 when empty).
    last_ts_us: AtomicU64,
    /// Sparse index over the durable frames.
    index: RwLock<Vec<IndexEntry>>,
    /// The `.idx` file to read into `index` when it is first needed (a sealed segment
    /// opened from a clean shutdown's record, see `sealed_record`); `deferred` says so
    /// without taking the lock.
    deferred_index: Mutex<Option<(PathBuf, u32)>>,
    deferred: AtomicBool,
    /// Damaged runs inside the data (see `damage`); `damaged` says whether there are any
    /// without taking the lock.
    holes: RwLock<Vec<Hole>>,
    damaged: AtomicBool,
}

/// Where a frame is and what it holds.
#[derive(Debug, Clone, Copy)]
pub struct FrameRef {
    pub pos: u64,
    pub header: BatchHeader,
}

impl SegmentView {
    pub fn map(path: &Path, file: &File, base_offset: u64) -> Result<SegmentView> {
        // SAFETY: segment files are never truncated while mapped (they keep their
        // preallocated size for life) and no other process writes them.
        let map = unsafe { Mmap::map(file) }.at(path)?;
        Ok(SegmentView {
            base_offset,
            path: path.to_owned(),
            map,
            durable_len: AtomicU64::new(0),
            durable_next: AtomicU64::new(base_offset),
            last_ts_us: AtomicU64::new(0),
            index: RwLock::new(Vec::new()),
            deferred_index: Mutex::new(None),
            deferred: AtomicBool::new(false),
            holes: RwLock::new(Vec::new()),
            damaged: AtomicBool::new(false),
        })
    }

    /// The damaged runs of this segment, by position.
    pub fn holes(&self) -> Vec<Hole> {
        if !self.damaged.load(Ordering::Acquire) {
            return Vec::new();
        }
        self.holes.read().clone()
    }

    /// Record a damaged run (recovery, scrub, or a read that found it).
    pub(crate) fn add_hole(&self, hole: Hole) {
        let mut holes = self.holes.write();
        if let Some(h) = holes.iter_mut().find(|h| h.pos == hole.pos) {
            *h = hole;
        } else {
            holes.push(hole);
            holes.sort_by_key(|h| h.pos);
        }
        self.damaged.store(true, Ordering::Release);
    }

    /// Forget the damaged run at `pos` (repaired, or cut away).
    pub(crate) fn remove_holes_from(&self, pos: u64) {
        let mut holes = self.holes.write();
        holes.retain(|h| h.pos < pos);
        self.damaged.store(!holes.is_empty(), Ordering::Release);
    }

    /// Forget the damaged run at `pos` (repaired).
    pub(crate) fn remove_hole_at(&self, pos: u64) {
        let mut holes = self.holes.write();
        holes.retain(|h| h.pos != pos);
        self.damaged.store(!holes.is_empty(), Ordering::Release);
    }

    pub(crate) fn hole_at(&self, pos: u64) -> Option<Hole> {
        if !self.damaged.load(Ordering::Acquire) {
            return None;
        }
        self.holes.read().iter().find(|h| h.pos == pos).cloned()
    }

    fn hole_containing(&self, offset: u64) -> Option<Hole> {
        if !self.damaged.load(Ordering::Acquire) {
            return None;
        }
        self.holes
            .read()
            .iter()
            .find(|h| h.contains(offset))
            .cloned()
    }

    /// The log this segment belongs to, by its directory's name.
    fn log_name(&self) -> String {
        self.path
            .parent()
            .and_then(|d| d.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The error a reader gets at a damaged run.
    pub(crate) fn data_loss(&self, hole: &Hole) -> StorageError {
        StorageError::DataLoss(Box::new(crate::error::DataLoss {
            log: self.log_name(),
            first_offset: hole.first_offset,
            next_offset: hole.next_offset(),
            path: self.path.clone(),
            position: hole.pos,
            reason: hole.reason.clone(),
        }))
    }

    /// A frame at `pos` where `expected` should start failed to check out inside durable
    /// bytes: record the damage (where valid frames resume, if they do) and return the
    /// error for the reader.
    pub(crate) fn damaged_at(
        &self,
        pos: u64,
        expected: u64,
        next_base: Option<u64>,
        reason: crate::error::FormatError,
    ) -> StorageError {
        let hole = self.hole_at(pos).unwrap_or_else(|| {
            let end = self.durable_len();
            let hole = Hole {
                pos,
                first_offset: expected,
                resume: damage::resume_after(
                    &self.map[..end as usize],
                    self.base_offset,
                    pos,
                    expected,
                    end,
                    next_base,
                ),
                extent_end: end,
                reason,
            };
            tracing::error!(segment = %self.path.display(), position = pos, offset = expected, reason = %hole.reason, "damaged frame found by a read");
            self.add_hole(hole.clone());
            hole
        });
        self.data_loss(&hole)
    }

    /// Entries of the index file at `idx_path`, cut back to the last one pointing at a
    /// frame that checks out with the right offset.
    pub(crate) fn trusted_index(&self, idx_path: &Path) -> Vec<IndexEntry> {
        let mut entries = index::load(idx_path, self.base_offset, self.capacity());
        while let Some(e) = entries.last() {
            let at = self.map.get(e.pos as usize..).unwrap_or(&[]);
            match format::check_frame(at) {
                Ok(h) if h.base_offset == e.offset => break,
                _ => {
                    entries.pop();
                }
            }
        }
        entries
    }

    /// Read the index from `idx_path` (entries every `interval` bytes) when it is first
    /// needed instead of now.
    pub(crate) fn defer_index(&self, idx_path: PathBuf, interval: u32) {
        *self.deferred_index.lock() = Some((idx_path, interval));
        self.deferred.store(true, Ordering::Release);
    }

    /// Forget a deferred index: the files are about to be removed (and a new segment may
    /// take the same name), so a late load could read another file. An empty index is
    /// always correct, only slower.
    pub(crate) fn drop_deferred_index(&self) {
        if self.deferred.load(Ordering::Acquire) {
            let mut deferred = self.deferred_index.lock();
            *deferred = None;
            self.deferred.store(false, Ordering::Release);
        }
    }

    #[cfg(test)]
    pub(crate) fn index_is_deferred(&self) -> bool {
        self.deferred.load(Ordering::Acquire)
    }

    fn index(&self) -> RwLockReadGuard<'_, Vec<IndexEntry>> {
        if self.deferred.load(Ordering::Acquire) {
            let mut deferred = self.deferred_index.lock();
            if let Some((path, interval)) = deferred.take() {
                let len = self.durable_len();
                let mut entries = self.trusted_index(&path);
                entries.retain(|e| u64::from(e.pos) < len);
                // Complete it from the last trusted entry, as recovery does: an index
                // file cut short once would otherwise stay short at every restart.
                let from = entries.last().copied().unwrap_or(IndexEntry {
                    offset: self.base_offset,
                    pos: 0,
                });
                let s = scan(
                    &self.map[..len as usize],
                    u64::from(from.pos),
                    from.offset,
                    Some(self.durable_next()),
                    interval,
                    Some(u64::from(from.pos)),
                );
                entries.extend(s.entries);
                *self.index.write() = entries;
                self.deferred.store(false, Ordering::Release);
            }
        }
        self.index.read()
    }

    pub fn capacity(&self) -> u64 {
        self.map.len() as u64
    }

    /// All mapped bytes, including the not-yet-durable region. Storage-thread only.
    pub(crate) fn raw(&self) -> &[u8] {
        &self.map
    }

    pub fn durable_len(&self) -> u64 {
        self.durable_len.load(Ordering::Acquire)
    }

    pub fn durable_next(&self) -> u64 {
        self.durable_next.load(Ordering::Acquire)
    }

    pub fn last_ts_us(&self) -> u64 {
        self.last_ts_us.load(Ordering::Acquire)
    }

    pub fn index_snapshot(&self) -> Vec<IndexEntry> {
        self.index().clone()
    }

    /// Publish newly durable frames. Index entries first, then the length readers trust.
    pub(crate) fn publish(&self, len: u64, next: u64, last_ts_us: u64, entries: &[IndexEntry]) {
        assert!(len <= self.capacity(), "durable_len past the segment");
        assert!(next >= self.base_offset);
        if !entries.is_empty() {
            drop(self.index());
            let mut idx = self.index.write();
            debug_assert!(entries.iter().all(|e| u64::from(e.pos) < len));
            idx.extend_from_slice(entries);
        }
        if last_ts_us > 0 {
            self.last_ts_us.store(last_ts_us, Ordering::Release);
        }
        self.durable_next.store(next, Ordering::Release);
        self.durable_len.store(len, Ordering::Release);
    }

    /// Move the durable end back (truncation), dropping index entries past it.
    pub(crate) fn cut(&self, len: u64, next: u64) {
        self.durable_len.store(len, Ordering::Release);
        self.durable_next.store(next, Ordering::Release);
        drop(self.index());
        self.index.write().retain(|e| u64::from(e.pos) < len);
    }

    pub(crate) fn set_index(&self, entries: Vec<IndexEntry>) {
        let mut deferred = self.deferred_index.lock();
        *deferred = None;
        *self.index.write() = entries;
        self.deferred.store(false, Ordering::Release);
    }

    fn corrupt(&self, pos: u64, reason: crate::error::FormatError) -> StorageError {
        StorageError::Corrupt {
            path: self.path.clone(),
            position: pos,
            reason,
        }
    }

    /// The checked frame at `pos`, within the durable bytes.
    pub fn frame_at(&self, pos: u64) -> Result<(BatchHeader, &[u8])> {
        let end = self.durable_len() as usize;
        let bytes = self.map.get(pos as usize..end).unwrap_or(&[]);
        let header = format::check_frame(bytes).map_err(|e| self.corrupt(pos, e))?;
        Ok((header, &bytes[..header.frame_len as usize]))
    }

    /// Header only (no CRC), for skipping over frames while seeking.
    pub(crate) fn header_at(&self, pos: u64, end: u64) -> Result<BatchHeader> {
        let bytes = self.map.get(pos as usize..end as usize).unwrap_or(&[]);
        let h = format::peek_header(bytes).map_err(|e| self.corrupt(pos, e))?;
        if pos + u64::from(h.frame_len) > end {
            return Err(self.corrupt(
                pos,
                crate::error::FormatError::Truncated {
                    needed: h.frame_len as usize,
                    available: (end - pos) as usize,
                },
            ));
        }
        Ok(h)
    }

    /// The headers of the frames from index entry `start` up to byte `end`, in order, as
    /// (position, header); a frame whose offset does not follow the one before is Corrupt
    /// (and ends the walk).
    fn headers_from(
        &self,
        start: IndexEntry,
        end: u64,
    ) -> impl Iterator<Item = Result<(u64, BatchHeader)>> + '_ {
        let (mut pos, mut expected, mut failed) = (u64::from(start.pos), start.offset, false);
        std::iter::from_fn(move || {
            if failed || pos + HEADER_BYTES as u64 > end {
                return None;
            }
            if let Some(hole) = self.hole_at(pos) {
                match hole.resume {
                    Some((p, o)) if p < end => (pos, expected) = (p, o),
                    _ => {
                        failed = true;
                        return Some(Err(self.data_loss(&hole)));
                    }
                }
            }
            let h = self.header_at(pos, end).and_then(|h| {
                if h.base_offset == expected {
                    Ok(h)
                } else {
                    Err(self.corrupt(
                        pos,
                        crate::error::FormatError::OffsetMismatch {
                            expected,
                            found: h.base_offset,
                        },
                    ))
                }
            });
            match h {
                Ok(h) => {
                    let at = pos;
                    (pos, expected) = (pos + u64::from(h.frame_len), h.next_offset());
                    Some(Ok((at, h)))
                }
                Err(e) => {
                    failed = true;
                    Some(Err(e))
                }
            }
        })
    }

    /// The last frame boundary at or below `limit` inside the durable bytes, as (byte
    /// position, offset). Read against one load of the durable length, so a writer
    /// publishing meanwhile cannot make position and offset disagree.
    pub fn boundary_at_or_below(&self, limit: u64) -> Result<(u64, u64)> {
        let end = self.durable_len();
        let start = {
            let idx = self.index();
            // Entries published after `end` was loaded lie past it: start below them.
            let i = idx.partition_point(|e| e.offset <= limit && u64::from(e.pos) < end);
            i.checked_sub(1).map(|i| idx[i])
        }
        .unwrap_or(IndexEntry {
            offset: self.base_offset,
            pos: 0,
        });
        let (mut pos, mut offset) = (u64::from(start.pos), start.offset);
        for frame in self.headers_from(start, end) {
            let (at, h) = frame?;
            if h.next_offset() > limit {
                break;
            }
            (pos, offset) = (at + u64::from(h.frame_len), h.next_offset());
        }
        Ok((pos, offset))
    }

    /// Find the durable frame holding `offset`, or `None` when `offset` is at or past the
    /// durable end of this segment.
    pub fn locate(&self, offset: u64) -> Result<Option<FrameRef>> {
        let end = self.durable_len();
        if offset < self.base_offset || offset >= self.durable_next() {
            return Ok(None);
        }
        if let Some(hole) = self.hole_containing(offset) {
            return Err(self.data_loss(&hole));
        }
        let start = index::floor(&self.index(), offset).unwrap_or(IndexEntry {
            offset: self.base_offset,
            pos: 0,
        });
        for frame in self.headers_from(start, end) {
            let (pos, header) = frame?;
            if header.contains(offset) {
                return Ok(Some(FrameRef { pos, header }));
            }
        }
        Ok(None)
    }
}

/// How a scan of frames ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanStop {
    /// Reached the requested offset.
    Target,
    /// A zeroed header or a durable mark: the clean end of data.
    Zero,
    /// Not enough room left for a header: the segment is full.
    Full,
    /// Something that is not a valid next frame.
    Invalid {
        pos: u64,
        reason: crate::error::FormatError,
    },
}

#[derive(Debug, Clone)]
pub struct Scan {
    pub end_pos: u64,
    pub next_offset: u64,
    pub last_ts_us: u64,
    /// Index entries for the frames scanned, at the given interval.
    pub entries: Vec<IndexEntry>,
    pub stop: ScanStop,
}

/// Validate frames forward from `pos` (where a frame for `offset` must start) until
/// `stop_at` is reached, the data ends, or a frame does not check out.
pub fn scan(
    bytes: &[u8],
    mut pos: u64,
    mut offset: u64,
    stop_at: Option<u64>,
    interval: u32,
    mut last_index_pos: Option<u64>,
) -> Scan {
    let mut entries = Vec::new();
    let mut last_ts_us = 0;
    let stop = loop {
        if stop_at == Some(offset) {
            break ScanStop::Target;
        }
        let rest = &bytes[(pos as usize).min(bytes.len())..];
        if rest.len() < HEADER_BYTES {
            break ScanStop::Full;
        }
        if format::is_zero_header(rest) || format::is_mark_start(rest) {
            break ScanStop::Zero;
        }
        let h = match format::check_frame(rest) {
            Ok(h) => h,
            Err(reason) => break ScanStop::Invalid { pos, reason },
        };
        if h.base_offset != offset {
            break ScanStop::Invalid {
                pos,
                reason: crate::error::FormatError::OffsetMismatch {
                    expected: offset,
                    found: h.base_offset,
                },
            };
        }
        if last_index_pos.is_none_or(|l| pos - l >= u64::from(interval)) {
            entries.push(IndexEntry {
                offset,
                pos: pos as u32,
            });
            last_index_pos = Some(pos);
        }
        last_ts_us = h.last_ts_us;
        pos += u64::from(h.frame_len);
        offset = h.next_offset();
    };
    Scan {
        end_pos: pos,
        next_offset: offset,
        last_ts_us,
        entries,
        stop,
    }
}
