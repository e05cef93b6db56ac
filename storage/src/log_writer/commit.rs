//! A log's group commit: one write of the group (whole pages, the durable mark after the
//! frames), fdatasync'd with it when anyone needs it, then the durable end published and
//! every waiter completed; or, when the write fails, every waiter failed.

use std::sync::atomic::Ordering;

use super::group::PAGE;
use super::LogWriter;
use crate::error::{Result, StorageError};
use crate::format;
use crate::io::IoFile;
use crate::stats::Stats;

impl<F: IoFile> LogWriter<F> {
    /// Write the group buffer (and fdatasync when anyone needs it), then publish and
    /// complete the waiters. On failure every waiter gets the error and the buffered frames
    /// are dropped; the error is returned too.
    pub async fn commit(&mut self, force_sync: bool, stats: &Stats) -> Result<()> {
        let len = self.group.frame_bytes();
        let need_sync = self.group.needs_sync(force_sync);
        if self.group.nothing_to_do(need_sync) {
            return Ok(());
        }
        let pos = self.active.write_pos();
        let replicated = self.group.replicated_only();
        let (mut buf, lead, head) = self.group.take();
        let at = pos - head as u64;
        if len > 0 {
            let data_end = pos + len + self.push_mark(&mut buf, pos + len);
            // Zeros to the end of the last page (already zeros on disk), within the file.
            let end = data_end
                .next_multiple_of(PAGE)
                .min(self.active.seg().capacity());
            buf.resize(lead + (end - at) as usize, 0);
        }
        let started = std::time::Instant::now();
        let io = self.active.io();
        let (res, buf) = if len == 0 {
            (io.sync_data().await, buf)
        } else {
            io.write_at(buf, lead, at, need_sync, replicated).await
        };
        if need_sync {
            stats.record_sync(started.elapsed());
        }
        if let Err(e) = res {
            self.group.give_back(buf);
            return Err(self.fail_write(e, pos, len).await);
        }
        self.active.wrote(len, &buf[lead..], at);
        self.group.give_back(buf);
        self.shared
            .written
            .store(self.active.written_next(), Ordering::Release);
        if need_sync {
            self.mark_stale = true;
            self.publish_durable();
        }
        stats.record_appended(len);
        self.group.written(len, need_sync);
        Ok(())
    }

    /// Everything written is durable: the view, then the log's durable end, then the
    /// `.idx` file (not synced: recovery verifies it).
    pub(super) fn publish_durable(&mut self) {
        let entries = self.index.durable();
        self.active.synced(self.last_ts_us, &entries);
        self.write_index_entries();
        self.shared.durable.send_replace(self.active.durable_next());
    }

    pub(super) fn write_index_entries(&mut self) {
        let base = self.active.seg().base_offset;
        let idx = self.active.files().map(|f| &f.idx);
        self.index.write(idx, base, &self.shared.name);
    }

    /// The group's write or sync failed: the group is dropped, its waiters (and those of
    /// unsynced frames before it) get the error, which is returned.
    async fn fail_write(&mut self, e: std::io::Error, pos: u64, len: u64) -> StorageError {
        let err = StorageError::io(&self.active.seg().path, e);
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
            let n = (len + format::MARK_BYTES as u64).min(self.active.seg().capacity() - pos);
            let _ = self
                .active
                .io()
                .write_all_at(vec![0u8; n as usize], pos)
                .await;
        }
        self.active.unbuffered();
        self.producers
            .table
            .forget_from(self.active.buffered_next());
        let published = self.active.seg().index_snapshot();
        self.index.drop_from(self.active.write_pos(), &published);
        self.group.failed(&err);
        err
    }
}
