//! Cutting a log: `truncate_to` (divergent tail, promote at a point) and `reset_to`
//! (a replica's full sync).

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::active::ActiveFiles;
use super::job::Job;
use super::placement::Fill;
use super::roll::fill_of;
use super::{open_idx, LogWriter};
use crate::crashsafe::sync_dir_with;
use crate::error::{IoContext, Result, StorageError};
use crate::format::{self, BatchHeader, FrameBuilder};
use crate::index::{self, IndexEntry};
use crate::io::{IoBackend, IoFile, MetaIo};
use crate::meta::EpochHistory;
use crate::new_segment::{self, Placed};
use crate::producers::Snapshot;
use crate::segment::{open_rw, SegmentView};
use crate::spare::SpareSlot;
use crate::writer::WriterCtx;
use tokio::sync::oneshot;

/// What a cut removes and rewrites, decided before anything changes.
struct Cut {
    end: u64,
    /// The segment the log will end in, and its index in the list.
    target: Arc<SegmentView>,
    i: usize,
    /// Where the cut frames begin in it, and the first records of a frame straddling
    /// `end`, rewritten there.
    cut_pos: u64,
    rewrite: Option<Vec<u8>>,
    /// Where data (and a mark vouching for it) may lie up to, to zero.
    old_end: u64,
}

impl<F: IoFile> LogWriter<F> {
    /// Cut the log to end at `end`. See [`crate::Log::truncate_to`]. In three passes, the
    /// file steps off the storage thread as jobs (other logs commit meanwhile): the
    /// producers snapshot and the segments past the cut removed (`CutFiles`), then the data
    /// cut here, then the epoch history and producers snapshot saved (`CutMeta`). `Some`:
    /// run the job, then call again.
    pub async fn truncate_to<B: IoBackend<File = F>>(
        &mut self,
        end: u64,
        backend: &B,
        ctx: &WriterCtx,
    ) -> Result<Option<Job>> {
        self.check_poison()?;
        self.commit(true, &ctx.stats).await?;
        let Some(cut) = self.plan_cut(end)? else {
            self.cut_ready = None;
            return Ok(None);
        };
        if self.cut_ready != Some(end) {
            // Nothing is cut yet.
            return Ok(Some(Job::CutFiles(self.cut_files(&cut))));
        }
        self.cut_ready = None;
        // From the first file removed on, disk and memory may disagree after an error:
        // the log then refuses writes until a restart recovers it from the disk.
        let epochs = match self.apply_cut(cut, backend).await {
            Ok(epochs) => epochs,
            Err(e) => {
                self.poison(&e);
                return Err(e);
            }
        };
        self.producers.forget_from(end);
        let snapshot = self.producers.snapshot(end);
        tracing::info!(log = %self.shared.name, end, "log truncated");
        Ok(Some(Job::CutMeta(CutMeta {
            epochs,
            dir: self.shared.dir.clone(),
            snapshot,
        })))
    }

    /// The file steps before a cut: the producers snapshot (it may cover offsets that will
    /// hold other records) and the segments past the cut's last one.
    fn cut_files(&self, cut: &Cut) -> CutFiles {
        let segs = self.shared.segments.read().clone();
        let segments = segs[cut.i + 1..]
            .iter()
            .rev()
            .map(|s| {
                s.drop_deferred_index();
                (s.path.clone(), self.idx_path(s.base_offset))
            })
            .collect();
        CutFiles {
            end: cut.end,
            dir: self.shared.dir.clone(),
            producers: self.producers.path(),
            segments,
        }
    }

    /// A cut's file steps are done (`Ok`) or failed: after a segment was removed, disk and
    /// memory disagree and the log refuses writes until a restart.
    pub(super) fn cut_files_done(&mut self, done: CutFilesDone) -> Result<()> {
        match done.result {
            Ok(()) => {
                self.producers.unsaved();
                self.cut_ready = Some(done.end);
                Ok(())
            }
            Err(e) => {
                if done.removed_any {
                    self.poison(&e);
                }
                Err(e)
            }
        }
    }

    /// A cut's metadata is saved, or the log (already cut in memory) is poisoned.
    pub(super) fn cut_meta_done(&mut self, done: CutMetaDone) -> Result<()> {
        match done.result {
            Ok(()) => {
                if let Some(next) = done.epochs {
                    *self.shared.epochs.write() = next;
                }
                Ok(())
            }
            Err(e) => {
                self.poison(&e);
                Err(e)
            }
        }
    }

    /// What cutting to `end` takes; `None`: nothing (the log ends there).
    fn plan_cut(&self, end: u64) -> Result<Option<Cut>> {
        let p = self.shared.positions();
        if end > p.durable {
            return Err(StorageError::InvalidInput(format!(
                "cannot truncate log {:?} to {end}: it ends at {}",
                self.shared.name, p.durable
            )));
        }
        if end == p.durable {
            return Ok(None);
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
            let extent = self.damaged.map_or(0, |(_, extent)| extent);
            self.active.write_pos().max(extent)
        } else {
            target.durable_len()
        };
        Ok(Some(Cut {
            end,
            target,
            i,
            cut_pos,
            rewrite,
            old_end,
        }))
    }

    /// The data cut (the files past it are gone: `CutFiles`). Returns the epoch history to
    /// save if the cut changed it.
    async fn apply_cut<B: IoBackend<File = F>>(
        &mut self,
        cut: Cut,
        backend: &B,
    ) -> Result<Option<EpochHistory>> {
        let Cut { end, target, i, .. } = cut;
        let segs = self.shared.segments.read().clone();
        // A sealed segment becomes the active one again. As in recovery: one sealed early
        // to give way to a spare is only allocated past its end, and gives way again.
        let reopened = match i + 1 < segs.len() {
            true => Some(self.reopen(&target, backend)?),
            false => None,
        };
        let files = reopened.as_ref().map(|(f, _)| f);
        let files = files.or(self.active.files()).expect("opened for the cut");
        let (new_len, entries) = rewrite_tail(
            &cut.rewrite,
            &target,
            cut.cut_pos,
            cut.old_end,
            files,
            &*self.io,
        )
        .await?;
        target.cut(new_len, end);
        target.remove_holes_from(cut.cut_pos);
        target.set_index(entries.clone());
        self.shared.segments.write().truncate(i + 1);
        let mut epochs = self.shared.epochs.read().clone();
        epochs.truncate(end);
        let epochs = (epochs != *self.shared.epochs.read()).then_some(epochs);
        // `last_ts_us` is not rewound, on purpose: timestamps stay non-decreasing
        // through the log across a cut, and a segment's last time only errs late,
        // which keeps it from time-based retention longer, never shorter.
        match reopened {
            Some((files, fill)) => {
                self.active.place(target, files, new_len, end);
                self.fill = fill;
            }
            None => self.active.cut(new_len, end),
        }
        self.index.reset(&entries);
        self.mark_stale = true;
        self.damaged = None;
        self.shared.written.store(end, Ordering::Release);
        self.shared.cuts.lock().record(end);
        self.shared.durable.send_replace(end);
        Ok(epochs)
    }

    /// Open the sealed segment `target` for writing, and how its file was made.
    fn reopen<B: IoBackend<File = F>>(
        &self,
        target: &SegmentView,
        backend: &B,
    ) -> Result<(ActiveFiles<F>, Fill)> {
        let file = open_rw(&target.path)?;
        let fill = fill_of(&file, target.capacity());
        let io = backend.wrap(file, &target.path).at(&target.path)?;
        let idx = open_idx(&self.idx_path(target.base_offset))?;
        Ok((ActiveFiles { io, idx }, fill))
    }

    /// Drop every record and continue empty from `start` (a replica's full sync: the
    /// offsets it lacks are gone upstream). The file steps run as a job off the storage
    /// thread ([`ResetJob`]), which answers `reply` once the writer took its new segment.
    /// Old segments are deleted before the new one appears, so a crash in between leaves
    /// an empty log, which a replica syncs again.
    pub async fn reset_job(
        &mut self,
        start: u64,
        reply: oneshot::Sender<Result<()>>,
        ctx: &WriterCtx,
    ) -> Option<Job> {
        let ready = match self.check_poison() {
            Ok(()) => self.commit(true, &ctx.stats).await,
            Err(e) => Err(e),
        };
        if let Err(e) = ready {
            let _ = reply.send(Err(e));
            return None;
        }
        let segments = self.shared.segments.read().clone();
        let segments = segments
            .iter()
            .map(|s| {
                s.drop_deferred_index();
                (s.path.clone(), self.idx_path(s.base_offset))
            })
            .collect();
        Some(Job::Reset(Box::new(ResetJob {
            files: CutFiles {
                end: start,
                dir: self.shared.dir.clone(),
                producers: self.producers.path(),
                segments,
            },
            spare: self.spare.clone(),
            size: self.next_segment_bytes(0),
            reply,
        })))
    }

    /// Take the new segment a [`ResetJob`] placed, and answer it.
    pub(super) fn reset_done<B: IoBackend<File = F>>(
        &mut self,
        done: ResetDone,
        backend: &B,
        ctx: &WriterCtx,
    ) {
        let start = done.start;
        let applied = done
            .result
            .and_then(|(placed, zeroed)| self.apply_reset(start, placed, zeroed, backend));
        if let Err(e) = &applied {
            if done.removed_any {
                self.poison(e);
            }
        } else {
            self.request_spare(ctx);
            tracing::info!(log = %self.shared.name, start, "log reset for a full sync");
        }
        let _ = done.reply.send(applied);
    }

    fn apply_reset<B: IoBackend<File = F>>(
        &mut self,
        start: u64,
        placed: Placed,
        zeroed: bool,
        backend: &B,
    ) -> Result<()> {
        self.producers.unsaved();
        self.producers.clear();
        *self.shared.epochs.write() = EpochHistory::default();
        let path = placed.view.path.clone();
        let io = backend.wrap(placed.file, &path).at(&path)?;
        let view = Arc::new(placed.view);
        *self.shared.segments.write() = vec![view.clone()];
        self.active.place(
            view,
            ActiveFiles {
                io,
                idx: placed.idx,
            },
            0,
            start,
        );
        self.index.reset(&[]);
        self.fill = Fill::of(zeroed);
        self.mark_stale = true;
        // Every record went, not only those past `start`: a stream that sent any must
        // end, so the cut is at the old start.
        let old_start = self.shared.start.swap(start, Ordering::AcqRel);
        self.shared.written.store(start, Ordering::Release);
        self.shared.cuts.lock().record(old_start.min(start));
        self.shared.durable.send_replace(start);
        Ok(())
    }
}

/// A reset's file steps (see [`LogWriter::reset_job`]): the producers snapshot and every
/// segment removed, the directory synced, an empty epoch history saved, then the new
/// segment's file taken (a spare, waited for) and placed at the new start.
#[derive(Debug)]
pub(crate) struct ResetJob {
    files: CutFiles,
    spare: Arc<SpareSlot>,
    size: u64,
    reply: oneshot::Sender<Result<()>>,
}

#[derive(Debug)]
pub(crate) struct ResetDone {
    start: u64,
    removed_any: bool,
    result: Result<(Placed, bool)>,
    reply: oneshot::Sender<Result<()>>,
}

impl ResetJob {
    pub fn run(self, io: &dyn MetaIo) -> ResetDone {
        let dir = self.files.dir.clone();
        let start = self.files.end;
        let removed = self.files.run(io);
        let result = removed.result.and_then(|()| {
            EpochHistory::default().save(io, &dir)?;
            let source = new_segment::Source::WaitForSpare;
            let (file, zeroed) =
                new_segment::file_for(io, &dir, &self.spare, source, 0, self.size)?;
            Ok((new_segment::place(io, &dir, &file, start)?, zeroed))
        });
        ResetDone {
            start,
            removed_any: removed.removed_any,
            result,
            reply: self.reply,
        }
    }
}

/// A cut's file steps before its data changes (see [`LogWriter::truncate_to`]).
#[derive(Debug)]
pub(crate) struct CutFiles {
    end: u64,
    dir: PathBuf,
    producers: PathBuf,
    /// Each segment past the cut, last first: its file and its index.
    segments: Vec<(PathBuf, PathBuf)>,
}

#[derive(Debug)]
pub(crate) struct CutFilesDone {
    end: u64,
    /// A segment was removed: a failure leaves disk and memory apart.
    removed_any: bool,
    result: Result<()>,
}

impl CutFiles {
    pub fn run(self, io: &dyn MetaIo) -> CutFilesDone {
        let mut removed_any = false;
        let result = self.remove(io, &mut removed_any);
        CutFilesDone {
            end: self.end,
            removed_any,
            result,
        }
    }

    fn remove(&self, io: &dyn MetaIo, removed_any: &mut bool) -> Result<()> {
        match io.remove_file(&self.producers) {
            Ok(()) => sync_dir_with(io, &self.dir)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io(self.producers.clone(), e)),
        }
        for (seg, idx) in &self.segments {
            io.remove_file(seg).at(seg)?;
            *removed_any = true;
            let _ = io.remove_file(idx);
        }
        if *removed_any {
            sync_dir_with(io, &self.dir)?;
        }
        Ok(())
    }
}

/// A cut's metadata after its data changed: the epoch history (if the cut changed it) and
/// the producers snapshot.
#[derive(Debug)]
pub(crate) struct CutMeta {
    epochs: Option<EpochHistory>,
    dir: PathBuf,
    snapshot: Option<Snapshot>,
}

#[derive(Debug)]
pub(crate) struct CutMetaDone {
    epochs: Option<EpochHistory>,
    result: Result<()>,
}

impl CutMeta {
    pub fn run(self, io: &dyn MetaIo) -> CutMetaDone {
        let result = match &self.epochs {
            Some(e) => e.save(io, &self.dir),
            None => Ok(()),
        };
        if let (Ok(()), Some(s)) = (&result, &self.snapshot) {
            s.write(io);
        }
        CutMetaDone {
            epochs: self.epochs,
            result,
        }
    }
}

/// Write the first records of a straddling frame (`rewrite`) at `cut_pos` of `target`,
/// zeros over the rest up to `old_end` and the mark after it (a mark left past the new
/// end would vouch for bytes that are gone), synced; rewrite the index to the entries
/// kept. Returns the new length and those entries.
async fn rewrite_tail<F: IoFile>(
    rewrite: &Option<Vec<u8>>,
    target: &SegmentView,
    cut_pos: u64,
    old_end: u64,
    files: &ActiveFiles<F>,
    io: &dyn MetaIo,
) -> Result<(u64, Vec<IndexEntry>)> {
    let rewritten = rewrite.as_ref().map_or(0, |f| f.len() as u64);
    let new_len = cut_pos + rewritten;
    let mut data = rewrite.clone().unwrap_or_default();
    let zero_end = (old_end + format::MARK_BYTES as u64).min(target.capacity());
    data.resize(zero_end.max(new_len).saturating_sub(cut_pos) as usize, 0);
    if !data.is_empty() {
        let (r, _) = files.io.write_all_at_sync(data, cut_pos).await;
        r.at(&target.path)?;
    }
    let entries: Vec<IndexEntry> = target
        .index_snapshot()
        .into_iter()
        .filter(|e| u64::from(e.pos) < cut_pos || (rewritten > 0 && u64::from(e.pos) == cut_pos))
        .collect();
    let idx_path = target.path.with_extension("idx");
    let idx = &files.idx;
    idx.write_all_at(&index::encode(target.base_offset, &entries), 0)
        .and_then(|_| idx.set_len((entries.len() * index::ENTRY_BYTES) as u64))
        .and_then(|_| io.sync_file(idx))
        .at(&idx_path)?;
    Ok((new_len, entries))
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
