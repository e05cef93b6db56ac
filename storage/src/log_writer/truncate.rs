//! Cutting a log: `truncate_to` (divergent tail, promote at a point) and `reset_to`
//! (a replica's full sync).

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{open_idx, LogWriter};
use crate::crashsafe::sync_dir_with;
use crate::error::{IoContext, Result, StorageError};
use crate::extents;
use crate::format::{self, BatchHeader, FrameBuilder};
use crate::index::{self, IndexEntry};
use crate::io::{IoBackend, IoFile};
use crate::segment::{open_rw, SegmentView};
use crate::writer::WriterCtx;

impl<F: IoFile> LogWriter<F> {
    /// Cut the log to end at `end`. See [`crate::Log::truncate_to`].
    pub async fn truncate_to<B: IoBackend<File = F>>(
        &mut self,
        end: u64,
        backend: &B,
        ctx: &WriterCtx,
    ) -> Result<()> {
        self.check_poison()?;
        self.commit(true, &ctx.stats).await?;
        let p = self.shared.positions();
        if end > p.durable {
            return Err(StorageError::InvalidInput(format!(
                "cannot truncate log {:?} to {end}: it ends at {}",
                self.shared.name, p.durable
            )));
        }
        if end == p.durable {
            return Ok(());
        }
        if end < p.start {
            return Err(StorageError::OffsetOutOfRange {
                log: self.shared.name.clone(),
                offset: end,
                start: p.start,
                end: p.durable,
            });
        }
        let segs = self.shared.segments.read().clone();
        let i = segs.partition_point(|s| s.base_offset <= end) - 1;
        let target = segs[i].clone();
        let (cut_pos, rewrite) = match target.locate(end)? {
            None => (target.durable_len(), None),
            Some(f) if f.header.base_offset == end => (f.pos, None),
            Some(f) => {
                let (h, bytes) = target.frame_at(f.pos)?;
                (f.pos, Some(prefix_frame(bytes, &h, end, &target.path)?))
            }
        };
        let old_end = if i + 1 == segs.len() {
            // A damaged end may hold data (and a mark vouching for it) past the write
            // position: the cut clears it too.
            self.write_pos
                .max(self.damaged.map_or(0, |(_, extent)| extent))
        } else {
            target.durable_len()
        };
        // Nothing is cut yet: a failure here leaves the log as it was.
        self.producers.unsave(&*self.io)?;
        // From the first file removed on, disk and memory may disagree after an error:
        // the log then refuses writes until a restart recovers it from the disk.
        let applied: Result<()> = async {
            for s in segs[i + 1..].iter().rev() {
                s.drop_deferred_index();
                self.io.remove_file(&s.path).at(&s.path)?;
                let _ = self.io.remove_file(&self.idx_path(s.base_offset));
            }
            if i + 1 < segs.len() {
                let file = open_rw(&target.path)?;
                // As in recovery: a segment sealed early to give way to a spare is only
                // allocated past its end, and appends into it would be slow until it
                // filled; it gives way again instead.
                let zeroed = extents::zero_filled(&file, target.capacity());
                let io = backend.wrap(file, &target.path).at(&target.path)?;
                let idx = open_idx(&self.idx_path(target.base_offset))?;
                self.files = Some(super::ActiveFiles { io, idx });
                self.seg = target.clone();
                self.active_zeroed = zeroed;
                self.give_way_failed = false;
            }
            let rewritten = rewrite.as_ref().map_or(0, |f| f.len() as u64);
            let new_len = cut_pos + rewritten;
            let mut data = rewrite.unwrap_or_default();
            // Zeros over the cut frames and the durable mark after them: a mark left past
            // the new end would vouch for bytes that are gone.
            let zero_end = (old_end + format::MARK_BYTES as u64).min(target.capacity());
            data.resize(zero_end.max(new_len).saturating_sub(cut_pos) as usize, 0);
            if !data.is_empty() {
                let (r, _) = self.io().write_all_at_sync(data, cut_pos).await;
                if let Err(e) = r {
                    let err = StorageError::io(&target.path, e);
                    *self.shared.poisoned.lock() = Some(err.to_string());
                    return Err(err);
                }
            }
            let entries: Vec<IndexEntry> = target
                .index_snapshot()
                .into_iter()
                .filter(|e| {
                    u64::from(e.pos) < cut_pos || (rewritten > 0 && u64::from(e.pos) == cut_pos)
                })
                .collect();
            let idx_path = self.idx_path(target.base_offset);
            let idx = &self.files.as_ref().expect("opened for the cut").idx;
            idx.write_all_at(&index::encode(target.base_offset, &entries), 0)
                .and_then(|_| idx.set_len((entries.len() * index::ENTRY_BYTES) as u64))
                .and_then(|_| self.io.sync_file(idx))
                .at(&idx_path)?;
            target.cut(new_len, end);
            target.remove_holes_from(cut_pos);
            target.set_index(entries.clone());
            self.shared.segments.write().truncate(i + 1);
            {
                let mut epochs = self.shared.epochs.write();
                let before = epochs.clone();
                epochs.truncate(end);
                if *epochs != before {
                    epochs.save(&*self.io, &self.shared.dir)?;
                }
            }
            // `last_ts_us` is not rewound, on purpose: timestamps stay non-decreasing
            // through the log across a cut, and a segment's last time only errs late,
            // which keeps it from time-based retention longer, never shorter.
            self.write_pos = new_len;
            self.durable_pos = new_len;
            self.written_next = end;
            self.buf_next = end;
            self.durable_next = end;
            self.idx_entries_on_disk = entries.len() as u64;
            self.unwritten_entries.clear();
            self.pending_entries.clear();
            self.last_index_pos = entries.last().map(|e| u64::from(e.pos));
            self.mark_stale = true;
            self.damaged = None;
            self.shared.written.store(end, Ordering::Release);
            self.shared.cuts.lock().record(end);
            self.shared.durable.send_replace(end);
            sync_dir_with(&*self.io, &self.shared.dir)?;
            Ok(())
        }
        .await;
        if let Err(e) = &applied {
            self.poison(e);
        }
        applied?;
        self.producers.cut_at(&*self.io, end);
        tracing::info!(log = %self.shared.name, end, "log truncated");
        Ok(())
    }

    /// Drop every record and continue empty from `start` (a replica's full sync: the
    /// offsets it lacks are gone upstream). Old segments are deleted before the new one
    /// appears, so a crash in between leaves an empty log, which a replica syncs again.
    pub async fn reset_to<B: IoBackend<File = F>>(
        &mut self,
        start: u64,
        backend: &B,
        ctx: &WriterCtx,
    ) -> Result<()> {
        self.check_poison()?;
        self.commit(true, &ctx.stats).await?;
        self.producers.unsave(&*self.io)?;
        self.producers.table.clear();
        let dir = self.shared.dir.clone();
        let old: Vec<Arc<SegmentView>> = self.shared.segments.read().clone();
        let applied: Result<()> = async {
            for s in &old {
                s.drop_deferred_index();
                self.io.remove_file(&s.path).at(&s.path)?;
                let _ = self.io.remove_file(&self.idx_path(s.base_offset));
            }
            sync_dir_with(&*self.io, &dir)?;
            {
                let mut epochs = self.shared.epochs.write();
                *epochs = crate::meta::EpochHistory::default();
                epochs.save(&*self.io, &dir)?;
            }
            let (view, file, idx_file) = self.new_segment(start, backend, true, 0)?;
            *self.shared.segments.write() = vec![view.clone()];
            self.activate(view, file, idx_file);
            self.written_next = start;
            self.buf_next = start;
            self.durable_next = start;
            self.unwritten_entries.clear();
            self.pending_entries.clear();
            self.shared.start.store(start, Ordering::Release);
            self.shared.written.store(start, Ordering::Release);
            self.shared.cuts.lock().record(start);
            self.shared.durable.send_replace(start);
            self.request_spare(ctx);
            Ok(())
        }
        .await;
        if let Err(e) = &applied {
            self.poison(e);
        }
        applied?;
        tracing::info!(log = %self.shared.name, start, "log reset for a full sync");
        Ok(())
    }
}

/// The frame `bytes` cut down to its records below `end`, same epoch and time. Without
/// the producer extension: the prefix is not the batch its producer sent (the producers
/// table forgets that batch, so a retry of it is appended again).
fn prefix_frame(bytes: &[u8], h: &BatchHeader, end: u64, path: &Path) -> Result<Vec<u8>> {
    let records = format::decode_records(bytes, h).map_err(|reason| StorageError::Corrupt {
        path: path.to_owned(),
        position: 0,
        reason,
    })?;
    let keep = (end - h.base_offset) as usize;
    let mut b = FrameBuilder::with_capacity(bytes.len());
    for r in &records[..keep] {
        b.push(&r.value);
    }
    let mut frame = b.finish(h.is_compressed().then_some(1), 0);
    format::stamp_frame(&mut frame, h.base_offset, h.epoch, h.first_ts_us);
    Ok(frame)
}
