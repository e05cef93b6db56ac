//! Group commits synced in the background. A group of local appends that needs a sync is
//! written, then its fdatasync runs off the storage thread (`io::syncer`) while the
//! thread takes and writes the next groups; when the sync ends, what it covered is
//! published and its waiters completed, and the next sync starts at once if anyone waits
//! on one. So the disk is never idle while waiters are woken and the next group is
//! built. At most one sync per log is in flight; every path but a plain group commit
//! settles it first (`LogWriter::commit` with `force_sync`, jobs, control commands).

use std::io;
use std::time::Instant;

use tokio::sync::oneshot;

use super::group::SyncBatch;
use super::LogWriter;
use crate::error::{Result, StorageError};
use crate::format;
use crate::io::{IoFile, SyncDone};
use crate::stats::Stats;

/// A background sync of the active segment up to byte `pos`, record `next`.
pub(super) struct InFlight {
    result: oneshot::Receiver<io::Result<()>>,
    /// The backend's token for [`IoFile::synced_through`].
    token: u64,
    pos: u64,
    next: u64,
    /// The time of the newest record it covers.
    ts_us: u64,
    batch: SyncBatch,
    started: Instant,
}

impl<F: IoFile> LogWriter<F> {
    /// Whether this commit's sync goes to the background: a sync runs already (the group
    /// is written and waits for the next), or one is needed for local appends (or for
    /// the waiters of groups written while the last one ran) on a backend that can.
    /// Received frames keep the inline sync (`RWF_DSYNC` on a direct write), and so do
    /// forced syncs, whose callers need the log settled.
    pub(super) fn sync_in_background(&self, need_sync: bool, force_sync: bool) -> bool {
        let local = !self.group.replicated_only() || self.group.awaits_sync();
        self.in_flight.is_some()
            || (need_sync && !force_sync && local && self.active.io().syncs_in_background())
    }

    /// Start a background sync of everything written; it completes the group's waiters
    /// that wait on one.
    pub(super) fn start_sync(&mut self) {
        assert!(self.in_flight.is_none(), "one sync in flight per log");
        let batch = self.group.take_sync_batch();
        if self.active.all_synced() {
            batch.synced();
            return;
        }
        let (done, result) = SyncDone::new(self.sync_wake.clone(), self.shared.id);
        let token = self.active.io().start_sync(done);
        self.in_flight = Some(InFlight {
            result,
            token,
            pos: self.active.write_pos(),
            next: self.active.written_next(),
            ts_us: self.written_ts_us,
            batch,
            started: Instant::now(),
        });
    }

    /// Finish the background sync if it ended; whether it did.
    pub fn poll_sync(&mut self, stats: &Stats) -> bool {
        let Some(f) = &mut self.in_flight else {
            return false;
        };
        let res = match f.result.try_recv() {
            Ok(res) => res,
            Err(oneshot::error::TryRecvError::Empty) => return false,
            Err(oneshot::error::TryRecvError::Closed) => Err(thread_gone()),
        };
        let f = self.in_flight.take().expect("checked above");
        // A failure reached the waiters and poisoned the log.
        let _ = self.finish_sync(f, res, stats);
        true
    }

    /// Wait for the background sync, if one runs, and finish it.
    pub async fn settle_sync(&mut self, stats: &Stats) -> Result<()> {
        let Some(mut f) = self.in_flight.take() else {
            return Ok(());
        };
        let res = (&mut f.result).await.unwrap_or_else(|_| Err(thread_gone()));
        self.finish_sync(f, res, stats)
    }

    fn finish_sync(&mut self, f: InFlight, res: io::Result<()>, stats: &Stats) -> Result<()> {
        stats.record_sync(f.started.elapsed());
        if let Err(e) = res {
            let err = StorageError::io(&self.active.seg().path, e);
            f.batch.failed(&err);
            self.drop_undurable(&err);
            return Err(err);
        }
        self.active.io().synced_through(f.token);
        let entries = self.index.durable_before(f.pos);
        self.active.synced_to(f.pos, f.next, f.ts_us, &entries);
        self.write_index_entries();
        self.shared.durable.send_replace(f.next);
        self.mark_stale = true;
        f.batch.synced();
        Ok(())
    }

    /// A background sync failed: after a failed fdatasync the page cache can no longer be
    /// trusted (fsyncgate), so the log refuses writes until a restart re-reads the disk,
    /// and everything past the durable end is dropped (its waiters get `err`, its bytes
    /// are zeroed as far as that goes) so that no later sync can publish it.
    fn drop_undurable(&mut self, err: &StorageError) {
        self.poison(err);
        self.tail_unsure = true;
        self.group.take_sync_batch().failed(err);
        self.group.failed(err);
        let (buf, _, _) = self.group.take();
        self.group.give_back(buf);
        let (pos, next) = (self.active.durable_pos(), self.active.durable_next());
        let capacity = self.active.seg().capacity();
        let end = (self.active.write_pos() + format::MARK_BYTES as u64).min(capacity);
        if end > pos {
            use std::os::unix::fs::FileExt;
            let zeros = vec![0u8; (end - pos) as usize];
            let _ = self.active.io().std_file().write_all_at(&zeros, pos);
        }
        self.active.cut(pos, next);
        self.shared
            .written
            .store(next, std::sync::atomic::Ordering::Release);
        self.producers.table.forget_from(next);
        let published = self.active.seg().index_snapshot();
        self.index.drop_from(pos, &published);
    }
}

fn thread_gone() -> io::Error {
    io::Error::other("the sync thread stopped before the sync ended")
}
