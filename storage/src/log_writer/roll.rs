//! Carrying out placement's decisions (see `placement`): a roll, an early seal, the
//! replacement of an empty allocated-only segment.
//!
//! Each is split in three: what the storage thread prepares (the group committed and
//! synced, the index entries written), a [`PlaceJob`] of file steps that touches no writer
//! state (so that it can run while other logs commit), and [`LogWriter::finish_place`],
//! which puts the new segment in use or handles the failure as placement says.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use super::active::ActiveFiles;
use super::placement::{decide, Decision, Fill, OnFailure, Situation, SpareState};
use super::LogWriter;
use crate::catchup;
use crate::error::{IoContext, Result, StorageError};
use crate::io::{IoBackend, IoFile, MetaIo};
use crate::new_segment::{self, Placed, Source};
use crate::producers::Snapshot;
use crate::segment::SegmentView;
use crate::spare::SpareSlot;
use crate::writer::WriterCtx;

/// The file steps of a placement, off the storage thread.
#[derive(Debug)]
pub(crate) struct PlaceJob {
    decision: Decision,
    dir: PathBuf,
    base: u64,
    need: u64,
    /// The new segment's size if one is made now.
    size: u64,
    spare: Arc<SpareSlot>,
    source: Source,
    /// Sealing the active segment: its index file, synced first.
    seal_idx: Option<(File, PathBuf)>,
    /// Written before the new segment appears, so that a crash between the two still
    /// finds a snapshot covering the active segment, whichever one it is then.
    snapshot: Option<Snapshot>,
    /// An allocated-only segment sealed early: its path and length, so that its unused
    /// blocks are given back (see `catchup`).
    release: Option<(PathBuf, u64)>,
}

/// What a [`PlaceJob`] did.
#[derive(Debug)]
pub(crate) struct PlaceDone {
    decision: Decision,
    result: Result<(Placed, bool)>,
    /// A half-made segment could not be removed: disk and memory may disagree.
    undo_failed: Option<StorageError>,
}

impl PlaceJob {
    pub fn run(self, io: &dyn MetaIo) -> PlaceDone {
        if let Some((idx, path)) = &self.seal_idx {
            if let Err(e) = io.sync_file(idx).at(path) {
                return self.done(Err(e), None);
            }
        }
        if let Some(s) = &self.snapshot {
            s.write(io);
        }
        let placed = new_segment::file_for(
            io,
            &self.dir,
            &self.spare,
            self.source.clone(),
            self.need,
            self.size,
        )
        .and_then(|(file, zeroed)| {
            let placed = new_segment::place(io, &self.dir, &file, self.base)?;
            Ok((placed, zeroed))
        });
        let undo_failed = match (&placed, self.decision.on_failure()) {
            (Err(_), OnFailure::UndoAndFail | OnFailure::KeepActive) => {
                new_segment::undo(io, &self.dir, self.base).err()
            }
            _ => None,
        };
        if let (Ok(_), Some((path, len))) = (&placed, &self.release) {
            catchup::release_tail(path, *len);
        }
        self.done(placed, undo_failed)
    }

    fn done(&self, result: Result<(Placed, bool)>, undo_failed: Option<StorageError>) -> PlaceDone {
        PlaceDone {
            decision: self.decision,
            result,
            undo_failed,
        }
    }
}

impl<F: IoFile> LogWriter<F> {
    /// Make sure the next frame of `len` bytes has a place. `Some(job)`: a new segment
    /// must be placed first; run it, hand what it did to [`LogWriter::finish_place`], and
    /// ask again. A frame needs three placements at most: a replacement or an early seal,
    /// then a roll (the spare may be too small for it); after a roll the frame fits.
    pub async fn make_room(&mut self, len: usize, ctx: &WriterCtx) -> Result<Option<PlaceJob>> {
        self.check_writable()?;
        let max = self.shared.config.frame_bytes_max();
        if len > max {
            return Err(StorageError::InvalidInput(format!(
                "frame of {len} bytes exceeds the segment's limit of {max}"
            )));
        }
        let decision = decide(self.situation(len as u64));
        match decision {
            Decision::Append { request_spare } => {
                if request_spare {
                    self.request_spare(ctx);
                }
                Ok(None)
            }
            Decision::ReplaceEmpty => Ok(self.replace_job()),
            Decision::SealEarly => {
                self.commit(true, &ctx.stats).await?;
                Ok(Some(self.seal_job(decision, 0)?))
            }
            Decision::Roll => {
                self.commit(true, &ctx.stats).await?;
                Ok(Some(self.seal_job(decision, len as u64)?))
            }
        }
    }

    fn situation(&self, need: u64) -> Situation {
        let spare = if self.spare.is_ready() {
            SpareState::Ready
        } else if self.spare.is_idle() {
            SpareState::Idle
        } else {
            SpareState::Coming
        };
        Situation {
            fill: self.fill,
            spare,
            end: self.buf_end(),
            need,
            capacity: self.active.seg().capacity(),
        }
    }

    /// Have the next segment zeroed in the background.
    pub(super) fn request_spare(&self, ctx: &WriterCtx) {
        let size = self.next_segment_bytes(0);
        ctx.preparer
            .request(&self.spare, &self.shared.dir, size, None);
    }

    /// The size of the segment after the active one, holding at least `need` bytes.
    pub(super) fn next_segment_bytes(&self, need: u64) -> u64 {
        self.shared
            .config
            .next_segment_bytes(self.active.seg().capacity(), need)
    }

    /// The ready spare in place of the empty active segment, under its name.
    fn replace_job(&mut self) -> Option<PlaceJob> {
        let spare = self.spare.try_take()?;
        Some(self.job(Decision::ReplaceEmpty, 0, Source::File(spare)))
    }

    /// Seal the active segment (everything in it synced) and continue in a new one at
    /// the durable end, holding at least `need` bytes.
    fn seal_job(&mut self, decision: Decision, need: u64) -> Result<PlaceJob> {
        assert!(self.group.is_empty() && self.active.all_synced());
        let seg = self.active.seg().clone();
        let idx_path = self.idx_path(seg.base_offset);
        self.index.write(
            self.active.files().map(|f| &f.idx),
            seg.base_offset,
            &self.shared.name,
        );
        if !self.index.complete() {
            return Err(StorageError::io(
                idx_path,
                std::io::Error::other("index entries could not be written"),
            ));
        }
        let idx = self
            .active
            .files()
            .expect("sealed while open")
            .idx
            .try_clone();
        let mut job = self.job(decision, need, Source::WaitForSpare);
        job.seal_idx = Some((idx.at(&idx_path)?, idx_path));
        job.snapshot = self.producers.snapshot(job.base);
        job.release =
            (decision == Decision::SealEarly).then(|| (seg.path.clone(), self.active.write_pos()));
        Ok(job)
    }

    fn job(&self, decision: Decision, need: u64, source: Source) -> PlaceJob {
        let base = match decision {
            Decision::ReplaceEmpty => self.active.seg().base_offset,
            _ => self.active.durable_next(),
        };
        PlaceJob {
            decision,
            dir: self.shared.dir.clone(),
            base,
            need,
            size: self.next_segment_bytes(need),
            spare: self.spare.clone(),
            source,
            seal_idx: None,
            snapshot: None,
            release: None,
        }
    }

    /// Put the segment a [`PlaceJob`] placed in use, or handle its failure as placement
    /// says. An error is the frame's that needed the placement.
    pub fn finish_place<B: IoBackend<File = F>>(
        &mut self,
        done: PlaceDone,
        backend: &B,
        ctx: &WriterCtx,
    ) -> Result<()> {
        let d = done.decision;
        let placed = done.result.and_then(|(p, zeroed)| {
            let path = p.view.path.clone();
            match backend.wrap(p.file, &path).at(&path) {
                Ok(io) => Ok((p.view, ActiveFiles { io, idx: p.idx }, zeroed)),
                // Past the rename: remove it again, here (a rare failure).
                Err(e) if d.on_failure() != OnFailure::Poison => {
                    let dir = &self.shared.dir;
                    match new_segment::undo(&*self.io, dir, p.view.base_offset) {
                        Ok(()) => Err(e),
                        Err(undo) => {
                            self.poison(&undo);
                            Err(e)
                        }
                    }
                }
                Err(e) => Err(e),
            }
        });
        if let Some(e) = &done.undo_failed {
            tracing::error!(log = %self.shared.name, error = %e, "removing a half-made segment failed");
            self.poison(e);
        }
        match placed {
            Ok((view, files, zeroed)) => {
                self.activate(d, Arc::new(view), files, zeroed, ctx);
                Ok(())
            }
            Err(e) => self.placement_failed(d, e, done.undo_failed.is_some()),
        }
    }

    fn activate(
        &mut self,
        d: Decision,
        view: Arc<SegmentView>,
        files: ActiveFiles<F>,
        zeroed: bool,
        ctx: &WriterCtx,
    ) {
        {
            let mut segs = self.shared.segments.write();
            if d == Decision::ReplaceEmpty {
                *segs.last_mut().expect("a log has an active segment") = view.clone();
            } else {
                segs.push(view.clone());
            }
        }
        let base = view.base_offset;
        self.active.place(view, files, 0, base);
        self.index.reset(&[]);
        self.mark_stale = true;
        self.fill = self.fill.after(d, zeroed);
        match d {
            Decision::ReplaceEmpty => {
                tracing::debug!(log = %self.shared.name, base, "a zeroed spare replaced the empty active segment")
            }
            _ => {
                self.request_spare(ctx);
                tracing::debug!(log = %self.shared.name, base, ?d, "rolled to a new segment");
            }
        }
    }

    fn placement_failed(&mut self, d: Decision, e: StorageError, poisoned: bool) -> Result<()> {
        self.fill = self.fill.after_failure(d);
        match d.on_failure() {
            OnFailure::KeepActive if !poisoned => {
                tracing::warn!(log = %self.shared.name, error = %e, "sealing an allocated-only segment early failed; appends go on in it");
                Ok(())
            }
            OnFailure::Poison => {
                self.poison(&e);
                Err(e)
            }
            OnFailure::KeepActive | OnFailure::UndoAndFail => Err(e),
        }
    }

    /// Where the next frame of the group goes in the active segment.
    pub(super) fn buf_end(&self) -> u64 {
        self.active.write_pos() + self.group.frame_bytes()
    }
}

/// Whether placement sees `fill` for a file of `capacity` bytes (see `catchup`).
pub(super) fn fill_of(file: &File, capacity: u64) -> Fill {
    Fill::of(!catchup::allocated_only(file, capacity))
}
