//! Taking an imported segment (see `catchup`): the checks and the state its install job
//! needs, made on the storage thread, and what the job did, taken back into the writer.

use std::fs;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::active::ActiveFiles;
use super::job::Job;
use super::placement::Fill;
use super::LogWriter;
use crate::catchup::{ActiveEnd, InstallDone, InstallJob, Installed, StagedSegment};
use crate::error::{IoContext, Result, StorageError};
use crate::io::{IoBackend, IoFile};
use crate::writer::WriterCtx;

impl<F: IoFile> LogWriter<F> {
    /// The job that puts `seg` in place after the log's end (see [`crate::SegmentImport`]);
    /// `None` when it cannot follow: `reply` then has the reason, and the staging file is
    /// removed.
    pub async fn install_job(
        &mut self,
        mut seg: StagedSegment,
        reply: oneshot::Sender<Result<u64>>,
        ctx: &WriterCtx,
    ) -> Option<Job> {
        let prepared = self.prepare_install(&seg, ctx).await;
        let (epochs, active) = match prepared {
            Ok(p) => p,
            Err(e) => {
                let _ = fs::remove_file(&seg.path);
                let _ = reply.send(Err(e));
                return None;
            }
        };
        // Known before the job, so that its snapshot covers the segment; forgotten again
        // if the job fails before the segment is in place.
        let staged = std::mem::take(&mut seg.producers);
        self.producers.table.merge(staged);
        let snapshot = self.producers.snapshot(seg.next);
        Some(Job::Install(Box::new(InstallJob {
            dir: self.shared.dir.clone(),
            epochs,
            active,
            spare: self.spare.clone(),
            size: self.next_segment_bytes(0),
            snapshot,
            seg,
            reply,
        })))
    }

    /// The log's group committed, its end where `seg` begins, the new history if `seg`
    /// begins epochs, and how the active segment makes way.
    async fn prepare_install(
        &mut self,
        seg: &StagedSegment,
        ctx: &WriterCtx,
    ) -> Result<(Option<crate::meta::EpochHistory>, ActiveEnd)> {
        self.check_writable()?;
        self.commit(true, &ctx.stats).await?;
        let end = self.active.buffered_next();
        if self.active.durable_next() != seg.base || end != seg.base {
            return Err(StorageError::InvalidInput(format!(
                "log {} ends at {end}, the imported segment starts at {}",
                self.shared.name, seg.base
            )));
        }
        let epochs = match self.epochs_job(&seg.epochs)? {
            Some(Job::Epochs { next, .. }) => Some(next),
            _ => None,
        };
        let active = self.active.seg().clone();
        let zeroed = self.fill == Fill::Zeroed;
        if self.active.write_pos() == 0 && active.base_offset == seg.base {
            let path = active.path.clone();
            return Ok((epochs, ActiveEnd::Reused { path, zeroed }));
        }
        self.write_index_entries();
        let idx_path = self.idx_path(active.base_offset);
        if !self.index.complete() {
            let e = std::io::Error::other("index entries could not be written");
            return Err(StorageError::io(idx_path, e));
        }
        let idx = self
            .active
            .files()
            .expect("sealed while open")
            .idx
            .try_clone();
        // Sealed where the import begins, the active segment may hold a few frames in a
        // whole segment's file: an allocated-only one gives the rest back.
        let release = (!zeroed).then(|| (active.path.clone(), self.active.write_pos()));
        let idx = idx.at(&idx_path)?;
        Ok((
            epochs,
            ActiveEnd::Sealed {
                idx,
                idx_path,
                release,
            },
        ))
    }

    /// What an install job did: the segment and the next active one in use, the epochs
    /// in memory, the reply answered. A failure once the files started to change poisons
    /// the log: disk and memory may disagree until a restart recovers.
    pub(super) fn finish_install<B: IoBackend<File = F>>(
        &mut self,
        done: InstallDone,
        backend: &B,
        ctx: &WriterCtx,
    ) {
        let InstallDone {
            seg,
            reply,
            epochs,
            placed,
            reused,
        } = done;
        let saved = epochs.map_or(Ok(()), |(next, r)| self.epochs_saved(next, r));
        let installed = saved.map(|()| placed.expect("tried once the epochs are saved"));
        let result = match installed {
            Err(e) => Err(e),
            Ok(placed) => {
                let r = placed.and_then(|i| self.take_installed(i, &seg, reused, backend));
                if let Err(e) = &r {
                    self.poison(e);
                }
                r
            }
        };
        match result {
            Ok(()) => {
                ctx.stats.record_appended(seg.len);
                tracing::debug!(log = %self.shared.name, base = seg.base, next = seg.next, bytes = seg.len, "imported a segment");
                let _ = reply.send(Ok(seg.next));
            }
            Err(e) => {
                self.producers.table.forget_from(seg.base);
                let _ = fs::remove_file(&seg.path);
                let _ = reply.send(Err(e));
            }
        }
    }

    /// The imported segment, then the next active one, in the log.
    fn take_installed<B: IoBackend<File = F>>(
        &mut self,
        installed: Installed,
        seg: &StagedSegment,
        reused: bool,
        backend: &B,
    ) -> Result<()> {
        let Installed {
            imported,
            next,
            zeroed,
        } = installed;
        let path = next.view.path.clone();
        let io = backend.wrap(next.file, &path).at(&path)?;
        let view = Arc::new(next.view);
        {
            let mut segs = self.shared.segments.write();
            if reused {
                segs.pop();
            }
            segs.push(Arc::new(imported));
            segs.push(view.clone());
        }
        let files = ActiveFiles { io, idx: next.idx };
        self.active.place(view, files, 0, seg.next);
        self.index.reset(&[]);
        self.fill = Fill::of(zeroed);
        self.mark_stale = true;
        self.last_ts_us = self.last_ts_us.max(seg.last_ts_us);
        self.shared.written.store(seg.next, Ordering::Release);
        self.shared.durable.send_replace(seg.next);
        // No spare is asked for here, even for an allocated-only active segment: zeroing
        // one now would write a segment's worth on the disk while a catch-up's next fetch
        // writes. Its first append asks (`make_room`).
        Ok(())
    }
}
