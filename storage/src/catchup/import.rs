//! A sealed segment received whole, for a replica catching up at a segment boundary (a
//! full sync, or a partial one that reached sealed segments). Its frames are checked (CRC,
//! offsets, epochs) and written to a staging file that is synced once at the end and then
//! put in place by the storage thread. Compared with appending the same frames, every byte
//! is written once: no zero-filled spare ahead of it and no fdatasync per group.
//!
//! The staging file is `import-<base>.tmp` in the log's directory; start-up removes such
//! leftovers, so a crash at any point leaves either the log as it was or the segment in
//! place (see `catchup::install` for the order of renames).

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;

use super::direct_write::DirectWriter;
use crate::error::{IoContext, Result, StorageError};
use crate::format;
use crate::index::IndexEntry;
use crate::io::aligned::ALIGN;
use crate::io::meta::fallocate;
use crate::log::Log;
use crate::producers::{KeptBatch, ProducerLimits, ProducerTable};
use crate::writer::Cmd;

/// What the storage thread needs to put a staged segment in place.
#[derive(Debug)]
pub(crate) struct StagedSegment {
    pub base: u64,
    pub next: u64,
    pub len: u64,
    pub path: PathBuf,
    pub entries: Vec<IndexEntry>,
    /// Epochs that begin inside the segment, as (epoch, first offset).
    pub epochs: Vec<(u64, u64)>,
    pub last_ts_us: u64,
    /// Idempotent appends among the frames, for the log's table once installed.
    pub producers: ProducerTable,
}

/// A segment being received. Dropped without [`SegmentImport::install`], its staging file
/// is removed.
#[derive(Debug)]
pub struct SegmentImport {
    log: Log,
    file: File,
    pub(super) staged: StagedSegment,
    /// The log's epoch when the import began: the first frame's, unless it begins one.
    first_epoch: u64,
    last_epoch: u64,
    last_index_pos: Option<u64>,
    pub(super) sink: Sink,
    /// Where the unchecked bytes begin in the block being filled (see `receive`).
    pub(super) unchecked_from: usize,
    installed: bool,
}

/// The segment that follows a staged one, before that one is installed: receiving it may
/// overlap the install. Its own install is refused unless the one before landed first
/// (the log must end where a segment begins). Holds nothing open until begun.
#[derive(Debug, Clone)]
pub struct FollowOn {
    log: Log,
    base: u64,
    epoch: u64,
}

impl FollowOn {
    /// The offset the segment begins at.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Start receiving it: its frames continue the epoch the one before ended in.
    pub fn begin(&self) -> Result<SegmentImport> {
        self.log.open_import(self.base, self.epoch)
    }
}

/// How staged bytes reach the file.
#[derive(Debug)]
pub(super) enum Sink {
    /// O_DIRECT, past the page cache (see `direct_write`).
    Direct(DirectWriter),
    /// Through the page cache, where O_DIRECT is refused (tmpfs, some filesystems).
    /// `writeback_from`: bytes already handed to writeback (see [`WRITEBACK_EVERY`]).
    Buffered { writeback_from: u64 },
}

/// What checked frames add to a staged segment.
struct Checked {
    next: u64,
    last_epoch: u64,
    last_index_pos: Option<u64>,
    last_ts_us: u64,
    entries: Vec<IndexEntry>,
    /// Epochs they begin, as (epoch, first offset).
    epochs: Vec<(u64, u64)>,
    producers: Vec<(crate::format::ProducerSeq, KeptBatch)>,
}

/// Start writeback of staged bytes every this many, so the sync at install finds little
/// left to write (what databases call bytes_per_sync).
const WRITEBACK_EVERY: u64 = 4 << 20;

impl Log {
    /// Start receiving the segment that begins at `base`, which must be this log's end
    /// (with nothing unwritten in flight).
    pub fn begin_import(&self, base: u64) -> Result<SegmentImport> {
        let p = self.positions();
        if p.written != base || p.durable != base {
            return Err(StorageError::InvalidInput(format!(
                "log {} ends at {} ({} written), a segment starting at {base} cannot follow",
                self.name(),
                p.durable,
                p.written
            )));
        }
        self.open_import(base, self.current_epoch())
    }

    /// An import of the segment that begins at `base`, after a log (or staged segment)
    /// whose last epoch is `epoch`.
    fn open_import(&self, base: u64, epoch: u64) -> Result<SegmentImport> {
        let path = self.shared.dir.join(format!("import-{base:020}.tmp"));
        let open = |flags| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(flags)
                .open(&path)
        };
        let (file, sink) = match open(libc::O_DIRECT) {
            Ok(f) => {
                let how = self.storage.config.import_io;
                let w = f
                    .try_clone()
                    .and_then(|f| DirectWriter::new(f, how))
                    .at(&path)?;
                (f, Sink::Direct(w))
            }
            Err(_) => (open(0).at(&path)?, Sink::Buffered { writeback_from: 0 }),
        };
        Ok(SegmentImport {
            first_epoch: epoch,
            last_epoch: epoch,
            log: self.clone(),
            file,
            staged: StagedSegment {
                base,
                next: base,
                len: 0,
                path,
                entries: Vec::new(),
                epochs: Vec::new(),
                last_ts_us: 0,
                producers: ProducerTable::new(ProducerLimits::of(&self.storage.config)),
            },
            last_index_pos: None,
            sink,
            unchecked_from: 0,
            installed: false,
        })
    }
}

impl SegmentImport {
    /// Where the segment after this one begins, to be received while this one installs
    /// (see [`FollowOn`]).
    pub fn follow_on(&self) -> FollowOn {
        FollowOn {
            log: self.log.clone(),
            base: self.staged.next,
            epoch: self.last_epoch,
        }
    }

    pub fn base(&self) -> u64 {
        self.staged.base
    }

    /// Offset the next frame must start at.
    pub fn next_offset(&self) -> u64 {
        self.staged.next
    }

    pub fn staged_bytes(&self) -> u64 {
        self.staged.len
    }

    /// The epochs of the staged frames as (epoch, first offset), the first at the base.
    pub fn staged_epochs(&self) -> Vec<(u64, u64)> {
        let base = self.staged.base;
        let mut out = vec![(self.first_epoch, base)];
        for &(epoch, start) in &self.staged.epochs {
            if start == base {
                out[0] = (epoch, start);
            } else {
                out.push((epoch, start));
            }
        }
        out
    }

    pub fn log_name(&self) -> &str {
        self.log.name()
    }

    /// A direct write failed: what is staged may have a hole, so the import cannot continue
    /// (drop it and start the segment again). A failed buffered write leaves none: the
    /// next write goes to the same place.
    pub fn is_broken(&self) -> bool {
        matches!(&self.sink, Sink::Direct(w) if w.is_closed())
    }

    pub(super) fn reject(&self, reason: String) -> StorageError {
        StorageError::FrameRejected {
            log: self.log.name().to_owned(),
            reason,
        }
    }

    /// Check whole frames that continue the segment and write them to the staging file
    /// (synced once, by [`SegmentImport::install`]). Blocking.
    pub fn write(&mut self, frames: &[u8]) -> Result<()> {
        // Frames continue the checked ones: what a receive cut midway left goes.
        self.discard_unchecked();
        if self.is_broken() {
            return Err(self.reject("an earlier write of this segment failed".into()));
        }
        self.check_size(frames.len())?;
        let checked = self.check(frames)?;
        let path = &self.staged.path;
        let written = match &mut self.sink {
            // Every byte in the blocks is checked: none is left unchecked.
            Sink::Direct(w) => w
                .write(frames)
                .and_then(|()| w.block().map(|(_, filled)| self.unchecked_from = filled)),
            Sink::Buffered { .. } => self.file.write_all_at(frames, self.staged.len),
        };
        written.at(path)?;
        self.apply(checked, frames.len());
        self.start_writeback();
        Ok(())
    }

    /// Allocate the staging file up to `more` bytes past what is staged (a fetch says how
    /// many come). Direct writes inside a file's size may run side by side; each one
    /// that extends it takes the inode's lock alone. Best effort: without it, writes
    /// extend the file. A size past what a segment can hold allocates nothing (receiving
    /// it is refused). Blocking.
    pub fn reserve(&self, more: u64) {
        let end = self.staged.len.saturating_add(more);
        if !matches!(self.sink, Sink::Direct(_)) || end > u64::from(u32::MAX) {
            return;
        }
        let end = end.next_multiple_of(ALIGN as u64);
        if let Err(e) = fallocate(&self.file, 0, 0, end) {
            tracing::debug!(path = %self.staged.path.display(), error = %e, "staging file not allocated ahead");
        }
    }

    /// Whether `more` bytes keep the segment within what a segment position can address.
    pub(super) fn check_size(&self, more: usize) -> Result<()> {
        if self.staged.len + more as u64 > u64::from(u32::MAX) {
            return Err(self.reject("imported segment larger than 4 GiB".into()));
        }
        Ok(())
    }

    /// Check whole `frames` that are already in the staging file's blocks (see
    /// `receive`) and count them staged.
    pub(super) fn stage_checked(&mut self, frames: &[u8]) -> Result<()> {
        if !frames.is_empty() {
            let checked = self.check(frames)?;
            self.apply(checked, frames.len());
        }
        Ok(())
    }

    /// `len` bytes of frames that `checked` describes are staged.
    fn apply(&mut self, checked: Checked, len: usize) {
        self.staged.len += len as u64;
        self.staged.next = checked.next;
        self.staged.last_ts_us = checked.last_ts_us;
        self.staged.entries.extend(checked.entries);
        self.staged.epochs.extend(checked.epochs);
        for (p, batch) in checked.producers {
            self.staged.producers.record(p, batch);
        }
        self.last_epoch = checked.last_epoch;
        self.last_index_pos = checked.last_index_pos;
    }

    /// What whole frames that continue the segment add to it; an error if one does not
    /// check out or continue it (offsets dense, epochs not going back).
    fn check(&self, frames: &[u8]) -> Result<Checked> {
        let interval = u64::from(self.log.config().index_interval_bytes);
        let mut c = Checked {
            next: self.staged.next,
            last_epoch: self.last_epoch,
            last_index_pos: self.last_index_pos,
            last_ts_us: self.staged.last_ts_us,
            entries: Vec::new(),
            epochs: Vec::new(),
            producers: Vec::new(),
        };
        let mut pos = 0usize;
        while pos < frames.len() {
            let h = format::check_frame(&frames[pos..])
                .map_err(|e| self.reject(format!("frame at byte {pos}: {e}")))?;
            if h.base_offset != c.next {
                return Err(self.reject(format!(
                    "frame starts at offset {}, the segment is at {}",
                    h.base_offset, c.next
                )));
            }
            if h.epoch < c.last_epoch {
                return Err(self.reject(format!(
                    "frame from epoch {} after epoch {}",
                    h.epoch, c.last_epoch
                )));
            }
            if h.epoch > c.last_epoch {
                c.epochs.push((h.epoch, h.base_offset));
                c.last_epoch = h.epoch;
            }
            let at = self.staged.len + pos as u64;
            if c.last_index_pos.is_none_or(|l| at - l >= interval) {
                c.entries.push(IndexEntry {
                    offset: h.base_offset,
                    pos: at as u32,
                });
                c.last_index_pos = Some(at);
            }
            if let Some(p) = h.producer(&frames[pos..]) {
                c.producers.push((p, KeptBatch::of_frame(p, &h)));
            }
            c.last_ts_us = c.last_ts_us.max(h.last_ts_us);
            c.next = h.next_offset();
            pos += h.frame_len as usize;
        }
        Ok(c)
    }

    /// Buffered: start writeback of what was staged since the last time, every
    /// [`WRITEBACK_EVERY`] bytes.
    fn start_writeback(&mut self) {
        let Sink::Buffered { writeback_from } = &mut self.sink else {
            return;
        };
        if self.staged.len - *writeback_from < WRITEBACK_EVERY {
            return;
        }
        let (from, len) = (*writeback_from, self.staged.len - *writeback_from);
        // SAFETY: a descriptor we own; the range lies within the file. Only starts
        // writeback (no wait, no durability promise): install still syncs.
        let r = unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                from as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        if r == 0 {
            *writeback_from = self.staged.len;
        }
    }

    /// Sync the staged segment and have the storage thread put it in place after the log's
    /// current end; resolves with the log's new durable end. The log must still end where
    /// the segment begins.
    pub async fn install(mut self) -> Result<u64> {
        if self.staged.len == 0 {
            return Err(self.reject("an imported segment needs at least one frame".into()));
        }
        if self.is_broken() {
            return Err(self.reject("an earlier write of this segment failed".into()));
        }
        if self.has_unchecked() {
            return Err(self.reject("the received segment ends inside a frame".into()));
        }
        let file = self.file.try_clone().at(&self.staged.path)?;
        let (path, len) = (self.staged.path.clone(), self.staged.len);
        let io = self.log.storage.meta_io.clone();
        let mut sink = std::mem::replace(&mut self.sink, Sink::Buffered { writeback_from: 0 });
        tokio::task::spawn_blocking(move || {
            if let Sink::Direct(w) = &mut sink {
                w.finish().at(&path)?;
                // The last block was padded to the block size: the file holds what was
                // received, no more (as a buffered import's does).
                file.set_len(len).at(&path)?;
            }
            io.sync_file(&file).at(&path)
        })
        .await
        .map_err(|e| StorageError::InvalidInput(format!("sync task failed: {e}")))??;
        let staged = std::mem::replace(
            &mut self.staged,
            StagedSegment {
                base: 0,
                next: 0,
                len: 0,
                path: PathBuf::new(),
                entries: Vec::new(),
                epochs: Vec::new(),
                last_ts_us: 0,
                producers: ProducerTable::default(),
            },
        );
        self.installed = true;
        self.log
            .storage
            .call(|reply| Cmd::InstallSegment {
                log: self.log.shared.clone(),
                segment: Box::new(staged),
                reply,
            })
            .await?
    }
}

impl Drop for SegmentImport {
    fn drop(&mut self) {
        if !self.installed {
            let _ = fs::remove_file(&self.staged.path);
        }
    }
}
