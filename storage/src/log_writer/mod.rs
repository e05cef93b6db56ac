//! One log's write side, owned by the storage thread: the active segment, the group buffer,
//! the waiters, rolling, truncation and segment removal.

mod idempotent;
mod import;
mod removal;
mod repair;
mod truncate;

pub use repair::Repaired;

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::config::{Durability, GROUP_BYTES_CAP};
use crate::crashsafe::sync_dir_with;
use crate::error::{IoContext, Result, StorageError};
use crate::extents;
use crate::format::{self, BatchHeader};
use crate::index::{self, IndexEntry};
use crate::io::{IoBackend, IoFile, MetaIo};
use crate::log::{AppendAck, LogShared};
use crate::producers::{KeptBatch, ProducerLimits, Producers};
use crate::recovery::RecoveredLog;
use crate::sealed_record::{self, Sealed};
use crate::segment::{self, open_rw, SegmentView};
use crate::spare::{self, SpareSlot};
use crate::stats::Stats;
use crate::writer::{now_us, WriterCtx};

/// Page size for whole-page group writes.
const PAGE: u64 = 4096;

enum Waiter {
    Local {
        reply: oneshot::Sender<Result<AppendAck>>,
        ack: AppendAck,
    },
    Frames {
        reply: oneshot::Sender<Result<u64>>,
        end: u64,
    },
}

pub(crate) struct LogWriter<F: IoFile> {
    pub shared: Arc<LogShared>,
    seg: Arc<SegmentView>,
    /// The active segment's files, opened while the log is in use (see `open_files`):
    /// an idle log holds no descriptor, so a node keeps thousands of logs.
    files: Option<ActiveFiles<F>>,
    /// Bytes of the active segment handed to the OS.
    write_pos: u64,
    written_next: u64,
    /// The current group, to be written at `write_pos - buf_head`: first the `buf_head`
    /// bytes already in the segment's partial first page, then the group's frames. Writes
    /// cover whole pages (zero padding after), because spares are zeroed past the page cache
    /// and a partial write into an uncached page would make the kernel read it first.
    buf: Vec<u8>,
    buf_head: usize,
    buf_next: u64,
    durable_pos: u64,
    durable_next: u64,
    last_ts_us: u64,
    /// Position of the newest index entry (durable or pending).
    last_index_pos: Option<u64>,
    /// Entries for frames not yet durable.
    pending_entries: Vec<IndexEntry>,
    /// Entries for durable frames not yet in the `.idx` file (a write failed).
    unwritten_entries: Vec<IndexEntry>,
    idx_entries_on_disk: u64,
    waiters: Vec<Waiter>,
    /// Replicated frames written but not yet synced: their waiters hear at the next sync.
    unsynced_frames: Vec<(oneshot::Sender<Result<u64>>, u64)>,
    sync_requested: bool,
    unsynced_bytes: u64,
    pub unsynced_since: Option<Instant>,
    spare: Arc<SpareSlot>,
    /// The active segment was zero-filled. When not (allocated only), its first append asks
    /// for a spare, and the active segment gives way to it once it is ready.
    active_zeroed: bool,
    /// Sealing this allocated-only active segment early failed: not tried again for it.
    give_way_failed: bool,
    /// A write failed since the open: its bytes past the end may not all have been zeroed
    /// again, so a clean shutdown does not vouch for the active segment's tail.
    tail_unsure: bool,
    /// The durable mark on disk claims less than `durable_pos` (see [`format::DurableMark`]):
    /// refreshed when the storage thread goes idle.
    mark_stale: bool,
    /// The log's end is damaged (offset, end of the bytes the damage may span): no writes
    /// land over it until a repair or a cut (see `damage`).
    damaged: Option<(u64, u64)>,
    /// Idempotent appends: the last batches per producer, updated as frames are buffered
    /// (and forgotten again where they are cut or fail).
    producers: Producers,
    /// The backend's metadata operations: every change to the log's directory.
    io: Arc<dyn MetaIo>,
}

/// The active segment opened for writing and its index.
struct ActiveFiles<F> {
    io: F,
    idx: File,
}

fn open_idx(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .at(path)
}

/// A fresh error of the same kind for each waiter (io errors cannot be cloned).
fn copy_err(e: &StorageError) -> StorageError {
    match e {
        StorageError::DiskFull { path, source } => StorageError::DiskFull {
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        StorageError::Io { path, source } => StorageError::Io {
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        StorageError::Poisoned { log, cause } => StorageError::Poisoned {
            log: log.clone(),
            cause: cause.clone(),
        },
        other => StorageError::InvalidInput(other.to_string()),
    }
}

impl<F: IoFile> LogWriter<F> {
    pub fn new(r: RecoveredLog, ctx: &WriterCtx) -> Result<Self> {
        let seg = r
            .shared
            .segments
            .read()
            .last()
            .cloned()
            .expect("a log always has a segment");
        let next = seg.durable_next();
        assert_eq!(seg.durable_len(), r.write_pos);
        let mut producers = r.producers;
        let limits = ProducerLimits::of(&ctx.config);
        producers
            .table
            .set_limits(limits, now_us().max(seg.last_ts_us()));
        Ok(LogWriter {
            producers,
            last_ts_us: seg.last_ts_us(),
            shared: r.shared,
            files: None,
            write_pos: r.write_pos,
            written_next: next,
            buf: Vec::new(),
            buf_head: 0,
            buf_next: next,
            durable_pos: r.write_pos,
            durable_next: next,
            last_index_pos: r.last_index_pos,
            pending_entries: Vec::new(),
            unwritten_entries: Vec::new(),
            idx_entries_on_disk: r.idx_entries_on_disk,
            waiters: Vec::new(),
            unsynced_frames: Vec::new(),
            sync_requested: false,
            unsynced_bytes: 0,
            unsynced_since: None,
            spare: SpareSlot::new(r.spare),
            active_zeroed: r.active_zeroed,
            give_way_failed: false,
            tail_unsure: false,
            mark_stale: true,
            damaged: r.damaged_tail,
            seg,
            io: ctx.io.clone(),
        })
    }

    /// The active segment's file: open whenever there is anything to write (the storage
    /// thread opens a log's files before handing it any command that writes).
    fn io(&self) -> &F {
        &self.files.as_ref().expect("files open while writing").io
    }

    pub fn files_open(&self) -> bool {
        self.files.is_some()
    }

    /// Open the active segment's files if they are not.
    pub fn open_files<B: IoBackend<File = F>>(&mut self, backend: &B) -> Result<()> {
        if self.files.is_none() {
            let path = &self.seg.path;
            let io = backend.wrap(open_rw(path)?, path).at(path)?;
            let idx = open_idx(&self.idx_path(self.seg.base_offset))?;
            self.files = Some(ActiveFiles { io, idx });
            // Entries a closed index could not take (see `write_index_entries`).
            self.write_index_entries();
        }
        Ok(())
    }

    /// Close the files of a log with nothing in flight (its mark refreshed first); returns
    /// whether they were open and are closed now.
    pub fn close_files_if_idle(&mut self) -> bool {
        self.refresh_mark();
        let idle = self.buf.is_empty()
            && self.waiters.is_empty()
            && self.unsynced_frames.is_empty()
            && self.unsynced_since.is_none()
            && self.write_pos == self.durable_pos;
        if !idle || self.files.is_none() {
            return false;
        }
        self.files = None;
        true
    }

    /// Writes land at the end: not over damage, not after a failed write.
    fn check_writable(&self) -> Result<()> {
        if let Some((offset, _)) = self.damaged {
            return Err(StorageError::Damaged {
                log: self.shared.name.clone(),
                offset,
            });
        }
        self.check_poison()
    }

    fn check_poison(&self) -> Result<()> {
        match &*self.shared.poisoned.lock() {
            Some(cause) => Err(StorageError::Poisoned {
                log: self.shared.name.clone(),
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Ensure the next frame of `len` bytes fits in the active segment, rolling if not.
    pub async fn make_room<B: IoBackend<File = F>>(
        &mut self,
        len: usize,
        backend: &B,
        ctx: &WriterCtx,
    ) -> Result<()> {
        self.check_writable()?;
        let max = self.shared.config.frame_bytes_max();
        if len > max {
            return Err(StorageError::InvalidInput(format!(
                "frame of {len} bytes exceeds the segment's limit of {max}"
            )));
        }
        let wants_spare = !self.active_zeroed && !self.give_way_failed;
        if wants_spare && self.spare.is_ready() {
            self.give_way_to_spare(backend, ctx).await?;
        }
        let cap = self.seg.capacity();
        let end = self.buf_end();
        if wants_spare && self.spare.is_idle() {
            self.request_spare(ctx);
        }
        if end + len as u64 <= cap {
            if end * 2 >= cap && self.spare.is_idle() {
                self.request_spare(ctx);
            }
            return Ok(());
        }
        self.commit(true, &ctx.stats).await?;
        self.roll(backend, ctx, len as u64)
    }

    fn note_index(&mut self, pos: u64, offset: u64) {
        let interval = u64::from(self.shared.config.index_interval_bytes);
        if self.last_index_pos.is_none_or(|l| pos - l >= interval) {
            self.pending_entries.push(IndexEntry {
                offset,
                pos: pos as u32,
            });
            self.last_index_pos = Some(pos);
        }
    }

    /// Segment position where the next frame of the group goes.
    fn buf_end(&self) -> u64 {
        self.write_pos + (self.buf.len() - self.buf_head) as u64
    }

    /// Before a group's first frame: carry the partial page's written bytes, so that the
    /// group's write starts on a page boundary.
    fn start_group(&mut self) {
        if !self.buf.is_empty() {
            return;
        }
        let head = (self.write_pos % PAGE) as usize;
        let from = (self.write_pos - head as u64) as usize;
        self.buf
            .extend_from_slice(&self.seg.raw()[from..self.write_pos as usize]);
        self.buf_head = head;
    }

    pub fn push_local(
        &mut self,
        mut frame: Vec<u8>,
        durability: Durability,
        reply: oneshot::Sender<Result<AppendAck>>,
    ) {
        let offset = self.buf_next;
        let epoch = self.shared.epochs.read().current();
        // Timestamps never go back within a log, whatever the wall clock does.
        let ts = now_us().max(self.last_ts_us);
        let producer = format::frame_producer(&frame);
        let reply = match producer {
            Some(p) => match self.dedupe(p, ts, durability, reply) {
                Some(reply) => reply,
                None => return,
            },
            None => reply,
        };
        format::stamp_frame(&mut frame, offset, epoch, ts);
        let count = format::frame_record_count(&frame);
        if let Some(p) = producer {
            let batch = KeptBatch {
                sequence: p.sequence,
                base_offset: offset,
                record_count: count,
                epoch,
                ts_us: ts,
            };
            self.producers
                .record(&*self.io, p, batch, self.seg.base_offset);
        }
        self.start_group();
        self.note_index(self.buf_end(), offset);
        self.buf.extend_from_slice(&frame);
        self.buf_next += u64::from(count);
        self.last_ts_us = ts;
        if durability == Durability::Fsync {
            self.sync_requested = true;
        }
        self.waiters.push(Waiter::Local {
            reply,
            ack: AppendAck {
                base_offset: offset,
                record_count: count,
                epoch,
                durability,
                duplicate: false,
            },
        });
    }

    /// `sync`: fdatasync with this group; otherwise the frames become durable with a later
    /// group or the periodic sync (a replica nobody is waiting on).
    pub fn push_replicated(&mut self, frame: &[u8], h: &BatchHeader, sync: bool) -> Result<()> {
        let reject = |reason: String| StorageError::FrameRejected {
            log: self.shared.name.clone(),
            reason,
        };
        if h.base_offset != self.buf_next {
            return Err(reject(format!(
                "frame starts at offset {}, the log ends at {}",
                h.base_offset, self.buf_next
            )));
        }
        let current = self.shared.epochs.read().current();
        if h.epoch < current {
            return Err(reject(format!(
                "frame from epoch {} is older than the log's epoch {current}",
                h.epoch
            )));
        }
        if h.epoch > current {
            // The epoch history is durable before the first frame of the epoch is.
            self.begin_epochs(&[(h.epoch, h.base_offset)])?;
        }
        self.start_group();
        self.note_index(self.buf_end(), h.base_offset);
        self.buf.extend_from_slice(frame);
        self.buf_next = h.next_offset();
        // A replica knows its primary's producers, to answer retries once promoted.
        self.producers
            .observe(&*self.io, frame, h, self.seg.base_offset);
        self.last_ts_us = self.last_ts_us.max(h.last_ts_us);
        self.sync_requested |= sync;
        Ok(())
    }

    pub fn push_frames_waiter(&mut self, reply: oneshot::Sender<Result<u64>>) {
        self.waiters.push(Waiter::Frames {
            reply,
            end: self.buf_next,
        });
    }

    /// Write the group buffer (and fdatasync when anyone needs it), then publish and
    /// complete the waiters. On failure every waiter gets the error and the buffered frames
    /// are dropped; the error is returned too.
    pub async fn commit(&mut self, force_sync: bool, stats: &Stats) -> Result<()> {
        let len = (self.buf.len() - self.buf_head) as u64;
        let need_sync =
            force_sync || self.sync_requested || self.unsynced_bytes + len > GROUP_BYTES_CAP as u64;
        if len == 0 && !(need_sync && self.unsynced_bytes > 0) {
            debug_assert!(self.waiters.is_empty());
            return Ok(());
        }
        let pos = self.write_pos;
        let at = pos - self.buf_head as u64;
        let mut buf = std::mem::take(&mut self.buf);
        self.buf_head = 0;
        if len > 0 {
            let data_end = pos + len + self.push_mark(&mut buf, pos + len);
            // Zeros to the end of the last page (already zeros on disk), within the file.
            let end = data_end.next_multiple_of(PAGE).min(self.seg.capacity());
            buf.resize((end - at) as usize, 0);
        }
        let started = std::time::Instant::now();
        let (res, mut buf) = if len == 0 {
            (self.io().sync_data().await, buf)
        } else if need_sync {
            self.io().write_all_at_sync(buf, at).await
        } else {
            self.io().write_all_at(buf, at).await
        };
        if need_sync {
            stats.record_sync(started.elapsed());
        }
        buf.clear();
        if buf.capacity() > 2 * GROUP_BYTES_CAP {
            buf = Vec::new();
        }
        self.buf = buf;
        if let Err(e) = res {
            return Err(self.fail_write(e, pos, len).await);
        }
        self.write_pos += len;
        self.written_next = self.buf_next;
        self.shared
            .written
            .store(self.written_next, Ordering::Release);
        let synced = need_sync;
        if synced {
            self.sync_requested = false;
            self.unsynced_bytes = 0;
            self.unsynced_since = None;
            self.mark_stale = true;
            self.publish_durable();
        } else {
            self.unsynced_bytes += len;
            self.unsynced_since.get_or_insert_with(Instant::now);
        }
        stats.record_appended(len);
        if synced {
            for (reply, end) in self.unsynced_frames.drain(..) {
                let _ = reply.send(Ok(end));
            }
        }
        for w in self.waiters.drain(..) {
            match w {
                Waiter::Local { reply, mut ack } => {
                    if synced {
                        ack.durability = Durability::Fsync;
                    }
                    let _ = reply.send(Ok(ack));
                }
                Waiter::Frames { reply, end } if synced => {
                    let _ = reply.send(Ok(end));
                }
                Waiter::Frames { reply, end } => self.unsynced_frames.push((reply, end)),
            }
        }
        Ok(())
    }

    /// The mark for byte `own_pos` of the active segment: it claims what is durable now,
    /// which a write carrying it cannot make untrue whether or not it completes.
    fn mark_at(&self, own_pos: u64) -> format::DurableMark {
        format::DurableMark {
            segment_base: self.seg.base_offset,
            own_pos,
            synced_len: self.durable_pos,
            synced_next: self.durable_next,
        }
    }

    /// Append the durable mark for `own_pos` (where the group's frames end) to a group's
    /// buffer, if the segment has room; returns the bytes added.
    fn push_mark(&self, buf: &mut Vec<u8>, own_pos: u64) -> u64 {
        if own_pos + format::MARK_BYTES as u64 > self.seg.capacity() {
            return 0;
        }
        buf.extend_from_slice(&self.mark_at(own_pos).encode());
        format::MARK_BYTES as u64
    }

    /// Rewrite the mark after the durable end so that it claims everything synced (the one
    /// written with the last group claims only what was synced before it). A plain page
    /// write, not synced: the mark is a hint whose claims are true either way, and after a
    /// process crash the page cache holds it. Skipped while unsynced frames follow.
    pub fn refresh_mark(&mut self) {
        let pos = self.durable_pos;
        let idle = self.write_pos == pos && self.buf.is_empty();
        if !self.mark_stale || !idle || pos == 0 || self.damaged.is_some() {
            return;
        }
        self.mark_stale = false;
        if pos + format::MARK_BYTES as u64 > self.seg.capacity() {
            return;
        }
        let at = pos - pos % PAGE;
        let mut page = self.seg.raw()[at as usize..pos as usize].to_vec();
        let data_end = pos + self.push_mark(&mut page, pos);
        page.resize(
            (data_end.next_multiple_of(PAGE).min(self.seg.capacity()) - at) as usize,
            0,
        );
        let written = self
            .files
            .as_ref()
            .map(|f| f.io.std_file().write_all_at(&page, at));
        if !matches!(written, Some(Ok(()))) {
            tracing::debug!(log = %self.shared.name, "refreshing the durable mark failed");
        }
    }

    /// Refuse writes until a restart: a change to the files failed half-way, and the disk
    /// and this writer may disagree.
    fn poison(&self, e: &StorageError) {
        let mut p = self.shared.poisoned.lock();
        if p.is_none() {
            *p = Some(e.to_string());
            tracing::error!(log = %self.shared.name, error = %e, "changing the log's files failed; log refuses writes until restart");
        }
    }

    async fn fail_write(&mut self, e: std::io::Error, pos: u64, len: u64) -> StorageError {
        let err = StorageError::io(&self.seg.path, e);
        if !err.is_disk_full() {
            // After a failed write or fsync the page cache can no longer be trusted
            // (fsyncgate): refuse writes until a restart re-reads the disk.
            *self.shared.poisoned.lock() = Some(err.to_string());
            tracing::error!(log = %self.shared.name, error = %err, "write failed; log refuses writes until restart");
        }
        // Best effort: leave no residue of the failed group (nor its mark) that could pass
        // for data.
        self.tail_unsure = true;
        if len > 0 {
            let n = (len + format::MARK_BYTES as u64).min(self.seg.capacity() - pos);
            let _ = self.io().write_all_at(vec![0u8; n as usize], pos).await;
        }
        self.buf_next = self.written_next;
        self.producers.table.forget_from(self.buf_next);
        let keep = self.write_pos;
        self.pending_entries.retain(|e| u64::from(e.pos) < keep);
        self.last_index_pos = self
            .pending_entries
            .last()
            .copied()
            .or_else(|| self.seg.index_snapshot().last().copied())
            .map(|e| u64::from(e.pos));
        for (reply, _) in self.unsynced_frames.drain(..) {
            let _ = reply.send(Err(copy_err(&err)));
        }
        for w in self.waiters.drain(..) {
            match w {
                Waiter::Local { reply, .. } => {
                    let _ = reply.send(Err(copy_err(&err)));
                }
                Waiter::Frames { reply, .. } => {
                    let _ = reply.send(Err(copy_err(&err)));
                }
            }
        }
        self.sync_requested = false;
        err
    }

    fn publish_durable(&mut self) {
        assert!(self.write_pos >= self.durable_pos);
        assert!(self.written_next >= self.durable_next);
        self.durable_pos = self.write_pos;
        self.durable_next = self.written_next;
        let entries = std::mem::take(&mut self.pending_entries);
        self.seg.publish(
            self.durable_pos,
            self.durable_next,
            self.last_ts_us,
            &entries,
        );
        self.unwritten_entries.extend(entries);
        self.write_index_entries();
        self.shared.durable.send_replace(self.durable_next);
    }

    /// Append durable entries to the `.idx` file. Not synced here: the index is a hint that
    /// recovery verifies; it is synced when the segment is sealed.
    fn write_index_entries(&mut self) {
        if self.unwritten_entries.is_empty() {
            return;
        }
        let bytes = index::encode(self.seg.base_offset, &self.unwritten_entries);
        let at = self.idx_entries_on_disk * index::ENTRY_BYTES as u64;
        let Some(files) = &self.files else {
            return; // written when the log is next opened (seal_index, or the next group)
        };
        match files.idx.write_all_at(&bytes, at) {
            Ok(()) => {
                self.idx_entries_on_disk += self.unwritten_entries.len() as u64;
                self.unwritten_entries.clear();
            }
            Err(e) => {
                tracing::warn!(log = %self.shared.name, error = %e, "index write failed; will retry")
            }
        }
    }

    fn idx_path(&self, base: u64) -> PathBuf {
        self.shared.dir.join(segment::index_file_name(base))
    }

    /// Write the record of the log's segments for the next open (see `sealed_record`);
    /// called at a clean shutdown, after the last commit. A log that failed writes gets
    /// none; the active segment is left out when a write into it failed, or not everything
    /// written is durable.
    pub fn record_at_shutdown(&mut self) {
        if self.shared.poisoned.lock().is_some() {
            return;
        }
        self.producers.save(&*self.io, self.durable_next);
        let sealed: Vec<Arc<SegmentView>> = {
            let segs = self.shared.segments.read();
            segs.split_last().map_or(Vec::new(), |(_, s)| s.to_vec())
        };
        let clean_tail = !self.tail_unsure && self.write_pos == self.durable_pos;
        if sealed.is_empty() && !clean_tail {
            return;
        }
        let entry = |s: &SegmentView| {
            let (ino, mtime_ns) = File::open(&s.path)
                .and_then(|f| sealed_record::identity(&f))
                .at(&s.path)?;
            Ok(Sealed {
                base: s.base_offset,
                next: s.durable_next(),
                len: s.durable_len(),
                last_ts_us: s.last_ts_us(),
                ino,
                mtime_ns,
            })
        };
        let record = sealed
            .iter()
            .map(|s| entry(s))
            .collect::<Result<Vec<Sealed>>>()
            .and_then(|sealed| {
                let active = clean_tail.then(|| entry(&self.seg)).transpose()?;
                Ok(sealed_record::Record { sealed, active })
            });
        if let Err(e) = record.and_then(|r| sealed_record::write(&*self.io, &self.shared.dir, &r)) {
            tracing::warn!(log = %self.shared.name, error = %e, "recording the segments failed; the next open reads their tails");
        }
    }

    /// Have the next segment zeroed in the background.
    fn request_spare(&self, ctx: &WriterCtx) {
        let size = self.next_segment_bytes(0);
        ctx.preparer
            .request(&self.spare, &self.shared.dir, size, None);
    }

    /// Put the prepared spare (or a freshly allocated one) in place as segment `base` with
    /// an empty index, durably (directory synced), and open it for writing and reading.
    /// `wait`: wait for a spare being zeroed (a roll's was asked for half a segment ago);
    /// an import does not, since the spare may have been asked for by an append just
    /// before, and the storage thread, every log's writes, would wait with it.
    fn new_segment<B: IoBackend<File = F>>(
        &mut self,
        base: u64,
        backend: &B,
        wait: bool,
        need: u64,
    ) -> Result<(Arc<SegmentView>, F, File)> {
        let dir = self.shared.dir.clone();
        let ready = if wait {
            self.spare.take()
        } else {
            self.spare.try_take()
        };
        // A spare too small for the frame that needs the roll (one prepared while the log
        // was small) goes.
        let fits = |p: &PathBuf| fs::metadata(p).is_ok_and(|m| m.len() >= need);
        let ready = match ready {
            Some(p) if !fits(&p) => {
                let _ = self.io.remove_file(&p);
                None
            }
            r => r,
        };
        let (spare, zeroed) = match ready {
            Some(p) => (p, true),
            None => (
                spare::prepare_now(&*self.io, &dir, self.next_segment_bytes(need))?,
                false,
            ),
        };
        let placed = self.place_segment(&spare, base, backend)?;
        self.active_zeroed = zeroed;
        Ok(placed)
    }

    /// Rename the zeroed file `zeroed` to segment `base` with an empty index, durably
    /// (directory synced), and open it for writing and reading.
    fn place_segment<B: IoBackend<File = F>>(
        &mut self,
        zeroed: &Path,
        base: u64,
        backend: &B,
    ) -> Result<(Arc<SegmentView>, F, File)> {
        let dir = self.shared.dir.clone();
        let path = dir.join(segment::segment_file_name(base));
        if let Err(e) = self.io.rename(zeroed, &path) {
            let _ = self.io.remove_file(zeroed);
            return Err(StorageError::io(&path, e));
        }
        let idx_path = self.idx_path(base);
        let idx_file = self.io.write_file(&idx_path, &[]).at(&idx_path)?;
        sync_dir_with(&*self.io, &dir)?;
        let file = open_rw(&path)?;
        let view = Arc::new(SegmentView::map(&path, &file, base)?);
        let file = backend.wrap(file, &path).at(&path)?;
        Ok((view, file, idx_file))
    }

    /// Make the active segment's index complete and durable (it is being sealed).
    fn seal_index(&mut self) -> Result<()> {
        self.write_index_entries();
        let idx = self.idx_path(self.seg.base_offset);
        if !self.unwritten_entries.is_empty() {
            return Err(StorageError::io(
                idx,
                std::io::Error::other("index entries could not be written"),
            ));
        }
        let files = self.files.as_ref().expect("sealed while open");
        self.io.sync_file(&files.idx).at(&idx)
    }

    /// Make an empty segment the active one (the caller has put it in the segment list).
    fn activate(&mut self, view: Arc<SegmentView>, file: F, idx_file: File) {
        self.seg = view;
        self.files = Some(ActiveFiles {
            io: file,
            idx: idx_file,
        });
        self.write_pos = 0;
        self.durable_pos = 0;
        self.idx_entries_on_disk = 0;
        self.last_index_pos = None;
        self.give_way_failed = false;
        self.mark_stale = true;
    }

    /// Leave the allocated-only active segment for the zeroed spare that is ready: appends
    /// into a fallocated segment run at about half the rate (each fdatasync also commits
    /// the extents it converts). An empty one is replaced where it stands; one with frames
    /// is sealed early, as on a roll. Its spare is asked for at its first append, not
    /// when it was placed, so that the zeros are not written while a catch-up's imports
    /// fill the disk (measured: a partial catch-up ran a third faster).
    async fn give_way_to_spare<B: IoBackend<File = F>>(
        &mut self,
        backend: &B,
        ctx: &WriterCtx,
    ) -> Result<()> {
        if self.buf_end() > 0 {
            self.commit(true, &ctx.stats).await?;
            let (sealed, len) = (self.seg.path.clone(), self.write_pos);
            match self.roll(backend, ctx, 0) {
                Ok(()) => extents::release_tail(&sealed, len),
                Err(e) => {
                    // The active segment is as it was (`roll` undid any half-made one):
                    // appends go on in it, without trying again until its normal roll.
                    self.give_way_failed = true;
                    tracing::warn!(log = %self.shared.name, error = %e, "sealing an allocated-only segment early failed; appends go on in it");
                }
            }
            return Ok(());
        }
        let Some(spare) = self.spare.try_take() else {
            return Ok(());
        };
        let base = self.seg.base_offset;
        // The spare takes the active segment's name: past that rename, this writer's file
        // is no longer the log's, so a failure after it must stop writes.
        let (view, file, idx_file) = match self.place_segment(&spare, base, backend) {
            Ok(placed) => placed,
            Err(e) => {
                self.poison(&e);
                return Err(e);
            }
        };
        *self
            .shared
            .segments
            .write()
            .last_mut()
            .expect("a log has an active segment") = view.clone();
        self.activate(view, file, idx_file);
        self.active_zeroed = true;
        tracing::debug!(log = %self.shared.name, base, "a zeroed spare replaced the empty active segment");
        Ok(())
    }

    /// Seal the active segment and continue in a new one starting at the durable end.
    /// The size of the segment after the active one, holding at least `need` bytes.
    fn next_segment_bytes(&self, need: u64) -> u64 {
        self.shared
            .config
            .next_segment_bytes(self.seg.capacity(), need)
    }

    fn roll<B: IoBackend<File = F>>(
        &mut self,
        backend: &B,
        ctx: &WriterCtx,
        need: u64,
    ) -> Result<()> {
        assert!(self.buf.is_empty() && self.waiters.is_empty());
        assert_eq!(self.durable_pos, self.write_pos);
        self.seal_index()?;
        let base = self.durable_next;
        // Before the new segment: a crash between the two still finds a snapshot that
        // covers the active segment, whichever one it is then.
        self.producers.save(&*self.io, base);
        let (view, file, idx_file) = match self.new_segment(base, backend, true, need) {
            Ok(placed) => placed,
            Err(e) => {
                // The active segment goes on taking frames: a `<base>.seg` left behind would
                // hide them from recovery (it ends the active one at `base`).
                self.undo_new_segment(base);
                return Err(e);
            }
        };
        self.shared.segments.write().push(view.clone());
        self.activate(view, file, idx_file);
        self.request_spare(ctx);
        tracing::debug!(log = %self.shared.name, base, "rolled to a new segment");
        Ok(())
    }

    /// Remove what a failed `new_segment(base)` may have put in place; if that fails too,
    /// the log refuses writes until a restart.
    fn undo_new_segment(&self, base: u64) {
        let path = self.shared.dir.join(segment::segment_file_name(base));
        let gone = |p: &Path| match self.io.remove_file(p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StorageError::io(p, e)),
            _ => Ok(()),
        };
        let undone = gone(&path)
            .and_then(|()| gone(&self.idx_path(base)))
            .and_then(|()| sync_dir_with(&*self.io, &self.shared.dir));
        if let Err(e) = undone {
            tracing::error!(log = %self.shared.name, error = %e, "removing a half-made segment failed; log refuses writes until restart");
            self.poison(&e);
        }
    }

    pub fn begin_epoch(&mut self, epoch: u64) -> Result<()> {
        self.check_writable()?;
        self.begin_epochs(&[(epoch, self.buf_next)])
    }

    /// Begin each (epoch, first offset) of `epochs` in the log's history, durably, before
    /// memory says so. A failed save leaves the history as it was, unless the new file may
    /// have taken its name: memory and disk may then disagree, and the log is poisoned.
    fn begin_epochs(&mut self, epochs: &[(u64, u64)]) -> Result<()> {
        let mut next = self.shared.epochs.read().clone();
        let mut changed = false;
        for &(epoch, start) in epochs {
            changed |= next.begin(epoch, start)?;
        }
        if !changed {
            return Ok(());
        }
        match next.try_save(&*self.io, &self.shared.dir) {
            Ok(()) => {
                *self.shared.epochs.write() = next;
                Ok(())
            }
            Err(f) => {
                if f.renamed {
                    self.poison(&f.error);
                }
                Err(f.error)
            }
        }
    }
}
