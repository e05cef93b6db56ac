//! One log's write side, owned by the storage thread. The parts, one job each:
//! - `active`: the active segment, its files and the positions of the log's end in it;
//! - `group`: the frames buffered for the next write and who waits on them;
//! - `index_writer`: the active segment's sparse index, as frames become durable;
//! - `commit`: one group's write and sync, then publishing and completing;
//! - `mark`: the durable mark after the frames;
//! - `placement` (the decision) and `roll` (carrying it out): where the next frame goes;
//! - `health`: damage at the end and poisoning;
//! - `idempotent`, `truncate`, `repair`, `removal`, `shutdown`: the other commands.
//!
//! This file holds the writer and the entry points of an append.

mod active;
mod commit;
pub(crate) mod group;
mod health;
mod idempotent;
mod index_writer;
mod install;
mod job;
mod mark;
pub(crate) mod placement;
mod removal;
mod repair;
mod roll;
mod shutdown;
mod truncate;

pub(crate) use job::{Done, Finished, Job};
pub use repair::Repaired;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::config::Durability;
use crate::error::{IoContext, Result, StorageError};
use crate::format::{self, BatchHeader};
use crate::io::{IoBackend, IoFile, MetaIo};
use crate::log::{AppendAck, LogShared};
use crate::producers::{KeptBatch, ProducerLimits, Producers};
use crate::recovery::RecoveredLog;
use crate::segment::{self, open_rw};
use crate::spare::SpareSlot;
use crate::writer::{now_us, WriterCtx};
use active::{Active, ActiveFiles};
use group::{Group, Waiter};
use index_writer::IndexWriter;
use placement::Fill;

pub(crate) struct LogWriter<F: IoFile> {
    pub shared: Arc<LogShared>,
    active: Active<F>,
    group: Group,
    index: IndexWriter,
    /// How the active segment's file was made (see `placement`).
    fill: Fill,
    spare: Arc<SpareSlot>,
    /// The newest frame's time: timestamps never go back within a log.
    last_ts_us: u64,
    /// A write failed since the open: its bytes past the end may not all have been zeroed
    /// again, so a clean shutdown does not vouch for the active segment's tail.
    tail_unsure: bool,
    /// The durable mark on disk claims less than is durable: refreshed when idle.
    mark_stale: bool,
    /// The log's end is damaged (offset, end of the bytes the damage may span): no writes
    /// land over it until a repair or a cut (see `damage`).
    damaged: Option<(u64, u64)>,
    /// Idempotent appends: the last batches per producer, updated as frames are buffered
    /// (and forgotten again where they are cut or fail).
    producers: Producers,
    /// The backend's metadata operations: every change to the log's directory.
    io: Arc<dyn MetaIo>,
    /// A cut to this end has its file steps done (see `truncate`): its data cut is next.
    cut_ready: Option<u64>,
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

impl<F: IoFile> LogWriter<F> {
    pub fn new(r: RecoveredLog, ctx: &WriterCtx) -> Result<Self> {
        let seg = r
            .shared
            .segments
            .read()
            .last()
            .cloned()
            .expect("a log always has a segment");
        let mut producers = r.producers;
        let limits = ProducerLimits::of(&ctx.config);
        producers
            .table
            .set_limits(limits, now_us().max(seg.last_ts_us()));
        let interval = r.shared.config.index_interval_bytes;
        Ok(LogWriter {
            producers,
            last_ts_us: seg.last_ts_us(),
            shared: r.shared,
            active: Active::recovered(seg, r.write_pos),
            group: Group::default(),
            index: IndexWriter::new(interval, r.idx_entries_on_disk, r.last_index_pos),
            fill: Fill::of(r.active_zeroed),
            spare: SpareSlot::new(r.spare),
            tail_unsure: false,
            mark_stale: true,
            damaged: r.damaged_tail,
            io: ctx.io.clone(),
            cut_ready: None,
        })
    }

    /// When the oldest write no sync covered yet was made.
    pub fn unsynced_since(&self) -> Option<Instant> {
        self.group.unsynced_since
    }

    pub fn files_open(&self) -> bool {
        self.active.files().is_some()
    }

    /// Open the active segment's files if they are not.
    pub fn open_files<B: IoBackend<File = F>>(&mut self, backend: &B) -> Result<()> {
        if self.active.files().is_none() {
            let path = self.active.seg().path.clone();
            let io = backend.wrap(open_rw(&path)?, &path).at(&path)?;
            let idx = open_idx(&self.idx_path(self.active.seg().base_offset))?;
            self.active.set_files(Some(ActiveFiles { io, idx }));
            // Entries a closed index could not take (see `IndexWriter::write`).
            self.write_index_entries();
        }
        Ok(())
    }

    /// Close the files of a log with nothing in flight (its mark refreshed first); returns
    /// whether they were open and are closed now.
    pub fn close_files_if_idle(&mut self) -> bool {
        self.refresh_mark();
        let idle = self.group.is_idle() && self.active.all_synced();
        if !idle || self.active.files().is_none() {
            return false;
        }
        self.active.set_files(None);
        true
    }

    fn idx_path(&self, base: u64) -> PathBuf {
        self.shared.dir.join(segment::index_file_name(base))
    }

    /// Put `frame` in the group (after its record `offset`'s index entry is noted).
    /// `local`: an append made here, not a frame received from an upstream.
    fn buffer(&mut self, frame: &[u8], offset: u64, next: u64, local: bool) {
        self.group
            .start(self.active.page_head(), self.active.write_pos());
        self.index.note(self.buf_end(), offset);
        self.group.push(frame, local);
        self.active.buffered(next);
    }

    pub fn push_local(
        &mut self,
        mut frame: Vec<u8>,
        durability: Durability,
        reply: oneshot::Sender<Result<AppendAck>>,
    ) {
        let offset = self.active.buffered_next();
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
            let base = self.active.seg().base_offset;
            self.producers.record(&*self.io, p, batch, base);
        }
        self.buffer(&frame, offset, offset + u64::from(count), true);
        self.last_ts_us = ts;
        if durability == Durability::Fsync {
            self.group.request_sync();
        }
        self.group.wait(Waiter::Local {
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

    /// Whether a replicated frame continues the log exactly (its base offset the log's
    /// end, its epoch not older), and what must be done before it is buffered: a new
    /// epoch is durable in the history before its first frame is; a first producer is
    /// preceded by its snapshot.
    pub fn check_replicated(&mut self, frame: &[u8], h: &BatchHeader) -> Result<Option<Job>> {
        self.check_writable()?;
        let reject = |reason: String| StorageError::FrameRejected {
            log: self.shared.name.clone(),
            reason,
        };
        let end = self.active.buffered_next();
        if h.base_offset != end {
            return Err(reject(format!(
                "frame starts at offset {}, the log ends at {end}",
                h.base_offset
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
            return self.epochs_job(&[(h.epoch, h.base_offset)]);
        }
        Ok(self.snapshot_job(h.producer(frame).is_some()))
    }

    /// Buffer a replicated frame [`LogWriter::check_replicated`] passed with nothing to
    /// do. `sync`: fdatasync with this group; otherwise the frames become durable with a
    /// later group or the periodic sync (a replica nobody is waiting on).
    pub fn push_replicated(&mut self, frame: &[u8], h: &BatchHeader, sync: bool) {
        assert_eq!(h.base_offset, self.active.buffered_next());
        assert_eq!(h.epoch, self.shared.epochs.read().current());
        self.buffer(frame, h.base_offset, h.next_offset(), false);
        // A replica knows its primary's producers, to answer retries once promoted.
        let base = self.active.seg().base_offset;
        self.producers.observe(&*self.io, frame, h, base);
        self.last_ts_us = self.last_ts_us.max(h.last_ts_us);
        if sync {
            self.group.request_sync();
        }
    }

    pub fn push_frames_waiter(&mut self, reply: oneshot::Sender<Result<u64>>) {
        let end = self.active.buffered_next();
        self.group.wait(Waiter::Frames { reply, end });
    }

    /// Start `epoch` at the log's end: the job that saves it, if it is new.
    pub fn begin_epoch(&mut self, epoch: u64) -> Result<Option<Job>> {
        self.check_writable()?;
        self.epochs_job(&[(epoch, self.active.buffered_next())])
    }
}
