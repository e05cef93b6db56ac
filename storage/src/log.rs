//! A named log: the state shared between the storage thread and readers, and the public
//! handle through which callers append, read and manage it.
//!
//! # Positions
//!
//! `written >= durable >= start`, all record offsets:
//! - `written`: one past the last record handed to the OS (page cache), maybe not synced;
//! - `durable`: one past the last record covered by fdatasync; the only end readers and
//!   replication ever see (published through a watch channel);
//! - `start`: the first record still kept (retention removes whole segments below it).
//!
//! Replication adds `committed <= durable` (acknowledged per the ack mode) on top.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{oneshot, watch};

use crate::config::{Compression, Durability, LogConfig};
use crate::error::{Result, StorageError};
use crate::format::{
    self, FrameBuilder, ProducerSeq, HEADER_BYTES, PRODUCER_BYTES, RECORDS_PER_BATCH_MAX,
    RECORD_PREFIX_BYTES,
};
use crate::meta::EpochHistory;
use crate::reader::LogReader;
use crate::segment::SegmentView;
use crate::storage::StorageInner;
use crate::writer::Cmd;

/// What an append got back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendAck {
    pub base_offset: u64,
    pub record_count: u32,
    pub epoch: u64,
    /// The durability actually reached.
    pub durability: Durability,
    /// A retry of an idempotent append the log already holds: these are the original
    /// batch's offsets and epoch, and nothing was written.
    pub duplicate: bool,
}

impl AppendAck {
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }
}

/// One damaged run of a log (see `damage`): its records `first_offset..next_offset` are
/// unreadable here until repaired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamageReport {
    pub segment_base: u64,
    pub path: PathBuf,
    pub position: u64,
    pub first_offset: u64,
    /// Where readers can go on (None: not known: the rest of the segment, or the log's
    /// end when it is the active one).
    pub next_offset: Option<u64>,
    pub reason: String,
}

/// Snapshot of a log's positions (see the module docs for their relations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Positions {
    pub start: u64,
    pub durable: u64,
    pub written: u64,
}

#[derive(Debug)]
pub(crate) struct LogShared {
    pub id: u64,
    pub name: String,
    pub dir: PathBuf,
    pub config: LogConfig,
    pub segments: RwLock<Vec<Arc<SegmentView>>>,
    pub durable: watch::Sender<u64>,
    pub written: AtomicU64,
    pub start: AtomicU64,
    /// Retention never deletes a segment holding records at or above this offset.
    pub retention_floor: AtomicU64,
    pub epochs: RwLock<EpochHistory>,
    pub deleted: AtomicBool,
    /// See [`crate::meta::new_incarnation`].
    pub incarnation: AtomicU64,
    pub poisoned: Mutex<Option<String>>,
    pub cuts: Mutex<Cuts>,
}

/// Cuts of the log's end (a divergent tail truncated after a failover, a promotion at a
/// point, a full-sync reset): a reader that already handed out records past a cut must
/// learn of it, since the offsets will be written again with other records.
#[derive(Debug, Default)]
pub(crate) struct Cuts {
    count: u64,
    /// (count after the cut, offset cut back to), the latest few.
    recent: std::collections::VecDeque<(u64, u64)>,
}

const CUTS_KEPT: usize = 32;

impl Cuts {
    pub fn record(&mut self, offset: u64) {
        self.count += 1;
        if self.recent.len() == CUTS_KEPT {
            self.recent.pop_front();
        }
        self.recent.push_back((self.count, offset));
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The lowest offset cut back to after the first `seen` cuts; 0 when those cuts are
    /// older than the history kept.
    pub fn lowest_since(&self, seen: u64) -> Option<u64> {
        if seen >= self.count {
            return None;
        }
        let oldest_kept = self.recent.front().map_or(u64::MAX, |&(n, _)| n);
        if seen + 1 < oldest_kept {
            return Some(0);
        }
        self.recent
            .iter()
            .filter(|&&(n, _)| n > seen)
            .map(|&(_, o)| o)
            .min()
    }
}

impl LogShared {
    pub fn new(
        id: u64,
        name: String,
        dir: PathBuf,
        config: LogConfig,
        segments: Vec<Arc<SegmentView>>,
        epochs: EpochHistory,
        durable_end: u64,
    ) -> Self {
        let start = segments.first().map_or(0, |s| s.base_offset);
        LogShared {
            id,
            name,
            dir,
            config,
            segments: RwLock::new(segments),
            durable: watch::Sender::new(durable_end),
            written: AtomicU64::new(durable_end),
            start: AtomicU64::new(start),
            retention_floor: AtomicU64::new(u64::MAX),
            epochs: RwLock::new(epochs),
            deleted: AtomicBool::new(false),
            incarnation: AtomicU64::new(crate::meta::INCARNATION_UNKNOWN),
            poisoned: Mutex::new(None),
            cuts: Mutex::new(Cuts::default()),
        }
    }

    pub fn positions(&self) -> Positions {
        let start = self.start.load(Ordering::Acquire);
        let durable = *self.durable.borrow();
        let written = self.written.load(Ordering::Acquire).max(durable);
        debug_assert!(written >= durable && durable >= start);
        Positions {
            start,
            durable,
            written,
        }
    }
}

/// Handle to a named log. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Log {
    pub(crate) shared: Arc<LogShared>,
    pub(crate) storage: Arc<StorageInner>,
}

impl Log {
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn config(&self) -> &LogConfig {
        &self.shared.config
    }

    pub fn positions(&self) -> Positions {
        self.shared.positions()
    }

    pub fn reader(&self) -> LogReader {
        LogReader::new(self.shared.clone())
    }

    /// Durable end offset, updated after every group commit.
    pub fn watch_durable(&self) -> watch::Receiver<u64> {
        self.shared.durable.subscribe()
    }

    pub fn epochs(&self) -> EpochHistory {
        self.shared.epochs.read().clone()
    }

    pub fn current_epoch(&self) -> u64 {
        self.shared.epochs.read().current()
    }

    /// The log's incarnation id (a recreated log is another one); 0: not known yet.
    pub fn incarnation(&self) -> u64 {
        self.shared.incarnation.load(Ordering::Acquire)
    }

    /// Give a log written by a version without incarnations its id (the primary's fresh
    /// one, or on a replica the upstream's). Only from [`crate::meta::INCARNATION_UNKNOWN`].
    pub async fn set_incarnation(&self, id: u64) -> Result<()> {
        if id == crate::meta::INCARNATION_UNKNOWN || self.incarnation() == id {
            return Ok(());
        }
        if self.incarnation() != crate::meta::INCARNATION_UNKNOWN {
            return Err(StorageError::InvalidInput(format!(
                "log {:?} already has incarnation {:016x}",
                self.shared.name,
                self.incarnation()
            )));
        }
        let (dir, config) = (self.shared.dir.clone(), self.shared.config.clone());
        let io = self.storage.meta_io.clone();
        tokio::task::spawn_blocking(move || crate::meta::write_log_meta(&*io, &dir, &config, id))
            .await
            .map_err(|e| {
                StorageError::InvalidInput(format!("writing the log's metadata: {e}"))
            })??;
        self.shared.incarnation.store(id, Ordering::Release);
        Ok(())
    }

    pub fn is_deleted(&self) -> bool {
        self.shared.deleted.load(Ordering::Acquire)
    }

    /// Bytes of frames kept, and bytes the segment files take on disk.
    pub fn size_bytes(&self) -> (u64, u64) {
        let segs = self.shared.segments.read();
        let data = segs.iter().map(|s| s.durable_len()).sum();
        let disk = segs.iter().map(|s| s.capacity()).sum();
        (data, disk)
    }

    /// The damaged runs of this log found so far (by recovery, scrub or reads), oldest
    /// segment first. See `damage`.
    pub fn damage(&self) -> Vec<DamageReport> {
        let segs = self.shared.segments.read().clone();
        segs.iter()
            .flat_map(|s| {
                s.holes().into_iter().map(|h| DamageReport {
                    segment_base: s.base_offset,
                    path: s.path.clone(),
                    position: h.pos,
                    first_offset: h.first_offset,
                    next_offset: h.next_offset(),
                    reason: h.reason.to_string(),
                })
            })
            .collect()
    }

    pub fn segment_count(&self) -> usize {
        self.shared.segments.read().len()
    }

    /// Retention keeps every record at or after `offset` (None lifts the floor).
    /// Replication sets this to what its slowest replica still needs.
    pub fn set_retention_floor(&self, offset: Option<u64>) {
        self.shared
            .retention_floor
            .store(offset.unwrap_or(u64::MAX), Ordering::Release);
    }

    /// Append records as one batch; resolves once the batch reached `durability`.
    pub async fn append<R: AsRef<[u8]>>(
        &self,
        records: &[R],
        durability: Durability,
    ) -> Result<AppendAck> {
        self.submit(records, durability).await?.await
    }

    /// First half of [`Log::append`]: validate, encode and queue the batch for the storage
    /// thread. Batches are written in the order their `submit` calls complete, so a caller
    /// that submits one after another (a pipelined stream) keeps its order while waiting
    /// for durability concurrently. The returned future resolves with the ack.
    pub async fn submit<R: AsRef<[u8]>>(
        &self,
        records: &[R],
        durability: Durability,
    ) -> Result<impl std::future::Future<Output = Result<AppendAck>> + Send + 'static> {
        self.submit_with(records, durability, None).await
    }

    /// Append records as one batch of an idempotent producer: a retry of a batch the log
    /// holds (the same producer and sequence, among its last few) is answered with the
    /// original offsets (`AppendAck::duplicate`) and writes nothing. Sequences go up by
    /// one per batch; a gap is refused with [`StorageError::SequenceOutOfOrder`], a
    /// sequence too old to answer with [`StorageError::SequenceTooOld`].
    pub async fn append_idempotent<R: AsRef<[u8]>>(
        &self,
        records: &[R],
        durability: Durability,
        producer: ProducerSeq,
    ) -> Result<AppendAck> {
        self.submit_idempotent(records, durability, producer)
            .await?
            .await
    }

    /// First half of [`Log::append_idempotent`], as [`Log::submit`] is of [`Log::append`].
    pub async fn submit_idempotent<R: AsRef<[u8]>>(
        &self,
        records: &[R],
        durability: Durability,
        producer: ProducerSeq,
    ) -> Result<impl std::future::Future<Output = Result<AppendAck>> + Send + 'static> {
        self.submit_with(records, durability, Some(producer)).await
    }

    /// [`Log::submit`] or, with a producer, [`Log::submit_idempotent`].
    pub async fn submit_with<R: AsRef<[u8]>>(
        &self,
        records: &[R],
        durability: Durability,
        producer: Option<ProducerSeq>,
    ) -> Result<impl std::future::Future<Output = Result<AppendAck>> + Send + 'static> {
        if producer.is_some_and(|p| p.producer_id == 0) {
            return Err(StorageError::InvalidInput(
                "producer id 0 means no producer; an idempotent producer picks a random \
                 non-zero id"
                    .into(),
            ));
        }
        let frame = self.encode_batch(records, producer)?;
        let (reply, rx) = oneshot::channel();
        self.storage
            .send(Cmd::Append {
                log: self.shared.clone(),
                frame,
                durability,
                reply,
            })
            .await?;
        Ok(async move { rx.await.map_err(|_| StorageError::Closed)? })
    }

    /// Validate and encode records into an unstamped frame (compression happens here, on
    /// the caller's thread, not on the storage thread).
    pub fn encode<R: AsRef<[u8]>>(&self, records: &[R]) -> Result<Vec<u8>> {
        self.encode_batch(records, None)
    }

    fn encode_batch<R: AsRef<[u8]>>(
        &self,
        records: &[R],
        producer: Option<ProducerSeq>,
    ) -> Result<Vec<u8>> {
        if records.is_empty() {
            return Err(StorageError::InvalidInput(
                "an append needs at least one record".into(),
            ));
        }
        if records.len() > RECORDS_PER_BATCH_MAX as usize {
            return Err(StorageError::InvalidInput(format!(
                "{} records in one batch; the maximum is {RECORDS_PER_BATCH_MAX}",
                records.len()
            )));
        }
        let max = self.storage.config.record_bytes_max;
        let mut payload = 0usize;
        for r in records {
            let size = r.as_ref().len();
            if size > max {
                return Err(StorageError::RecordTooLarge { size, max });
            }
            payload += RECORD_PREFIX_BYTES + size;
        }
        let frame_max = self.shared.config.frame_bytes_max();
        let overhead = HEADER_BYTES + producer.map_or(0, |_| PRODUCER_BYTES);
        if overhead + payload > frame_max {
            return Err(StorageError::InvalidInput(format!(
                "batch of {} bytes exceeds the largest frame this log takes ({frame_max} bytes); \
                 split it into smaller appends",
                overhead + payload
            )));
        }
        let mut b = match producer {
            Some(p) => FrameBuilder::with_producer(payload, p),
            None => FrameBuilder::with_capacity(payload),
        };
        for r in records {
            b.push(r.as_ref());
        }
        let level = match self.shared.config.compression {
            Compression::None => None,
            Compression::Zstd { level } => Some(level),
        };
        Ok(b.finish(level, self.shared.config.compress_min_bytes as usize))
    }

    /// Append already stamped frames as they are (the replica path): each must check out
    /// and continue the log's offsets exactly; a higher epoch is recorded before it is
    /// written. Resolves with the new end offset once durable.
    pub async fn append_frames(&self, frames: Bytes) -> Result<u64> {
        self.submit_frames(frames).await?.await
    }

    /// First half of [`Log::append_frames`]: check the frames and queue them (in call
    /// order) for the storage thread; the returned future resolves once they are durable.
    /// Lets a replica keep many messages in flight so they share group commits.
    pub async fn submit_frames(
        &self,
        frames: Bytes,
    ) -> Result<impl std::future::Future<Output = Result<u64>> + Send + 'static> {
        self.submit_frames_with(frames, true).await
    }

    /// [`Log::submit_frames`], choosing whether the group they land in is synced at once
    /// (`sync`) or whether they may wait for a later sync (at most the storage's
    /// `unsynced_flush_interval`). Either way the future resolves only once they are
    /// durable: a replica acks nothing it could lose.
    pub async fn submit_frames_with(
        &self,
        frames: Bytes,
        sync: bool,
    ) -> Result<impl std::future::Future<Output = Result<u64>> + Send + 'static> {
        let mut pos = 0;
        while pos < frames.len() {
            let h =
                format::check_frame(&frames[pos..]).map_err(|e| StorageError::FrameRejected {
                    log: self.shared.name.clone(),
                    reason: format!("frame at byte {pos}: {e}"),
                })?;
            pos += h.frame_len as usize;
        }
        let (reply, rx) = oneshot::channel();
        if frames.is_empty() {
            let _ = reply.send(Ok(self.positions().written));
        } else {
            self.storage
                .send(Cmd::AppendFrames {
                    log: self.shared.clone(),
                    frames,
                    sync,
                    reply,
                })
                .await?;
        }
        Ok(async move { rx.await.map_err(|_| StorageError::Closed)? })
    }

    /// Cut the log so that it ends at `end` (records `>= end` are removed). For a divergent
    /// tail after failover; a batch straddling `end` is rewritten with its first records.
    pub async fn truncate_to(&self, end: u64) -> Result<()> {
        self.storage
            .call(|reply| Cmd::Truncate {
                log: self.shared.clone(),
                end,
                reply,
            })
            .await?
    }

    /// Drop every record and continue empty from `start` (a replica's full sync).
    pub async fn reset_to(&self, start: u64) -> Result<()> {
        self.storage
            .call(|reply| Cmd::Reset {
                log: self.shared.clone(),
                start,
                reply,
            })
            .await?
    }

    /// Bytes of frames from the one holding `offset` to the durable end (replication lag
    /// in bytes; exact to the frame).
    pub fn bytes_from(&self, offset: u64) -> u64 {
        // A copy: `locate` may read an index file, which must not hold up the storage
        // thread waiting to change the list.
        let segs = self.shared.segments.read().clone();
        let mut total = 0;
        for s in segs.iter() {
            if s.durable_next() <= offset {
                continue;
            }
            let from = match s.locate(offset) {
                Ok(Some(f)) => f.pos,
                _ => 0,
            };
            total += s.durable_len().saturating_sub(from);
        }
        total
    }

    /// Remove every record after `offset` (keeps `offset` itself).
    pub async fn truncate_after(&self, offset: u64) -> Result<()> {
        self.truncate_to(offset + 1).await
    }

    /// Delete whole segments whose records all lie below `offset`. Returns the new start.
    pub async fn delete_before(&self, offset: u64) -> Result<u64> {
        self.storage
            .call(|reply| Cmd::DeleteBefore {
                log: self.shared.clone(),
                offset,
                reply,
            })
            .await?
    }

    /// Put back the damaged records from `first_offset` on (a run [`Log::damage`] lists)
    /// with `frames` fetched from a peer holding the same records: checked (CRC, offsets,
    /// the epochs this log's history gives them, and the run's exact length where valid
    /// frames follow it), written in place and synced. A damaged end takes as many frames
    /// as fit in its segment, and the log takes writes again after them.
    pub async fn repair(&self, first_offset: u64, frames: Bytes) -> Result<crate::Repaired> {
        self.storage
            .call(|reply| Cmd::Repair {
                log: self.shared.clone(),
                first_offset,
                frames,
                reply,
            })
            .await?
    }

    /// Start `epoch` at the current end; persisted before any frame of it is written.
    pub async fn begin_epoch(&self, epoch: u64) -> Result<()> {
        self.storage
            .call(|reply| Cmd::BeginEpoch {
                log: self.shared.clone(),
                epoch,
                reply,
            })
            .await?
    }
}

#[cfg(test)]
mod cut_tests {
    use super::{Cuts, CUTS_KEPT};

    #[test]
    fn lowest_cut_since_a_count() {
        let mut c = Cuts::default();
        assert_eq!(c.lowest_since(0), None);
        c.record(50);
        c.record(70);
        c.record(40);
        assert_eq!(c.count(), 3);
        assert_eq!(c.lowest_since(0), Some(40));
        assert_eq!(c.lowest_since(1), Some(40));
        assert_eq!(c.lowest_since(2), Some(40));
        assert_eq!(c.lowest_since(3), None);
        for i in 0..CUTS_KEPT as u64 {
            c.record(100 + i);
        }
        // Cuts 1..=3 are forgotten: a reader that saw none of them cannot be told where.
        assert_eq!(c.lowest_since(0), Some(0));
        assert_eq!(c.lowest_since(3), Some(100));
        assert_eq!(c.lowest_since(4), Some(101));
    }
}
