//! Changes to a log's files that may wait on the disk (renames, directory syncs, small
//! files, a spare being zeroed), as jobs run off the storage thread so that other logs'
//! groups commit meanwhile (see `meta_worker`).
//!
//! A job touches no writer state: the storage thread makes it from the writer, the
//! metadata worker runs it, and the storage thread hands what it did back to the writer
//! ([`LogWriter::finish`]). The log's later commands wait in between, so each log still
//! sees its commands in order.

use std::path::PathBuf;

use super::removal::{DeleteJob, RemoveJob};
use super::roll::{PlaceDone, PlaceJob};
use super::truncate::{CutFiles, CutFilesDone, CutMeta, CutMetaDone, ResetDone, ResetJob};
use super::LogWriter;
use crate::catchup::{InstallDone, InstallJob};
use crate::crashsafe::ReplaceFailed;
use crate::error::Result;
use crate::io::{IoBackend, IoFile, MetaIo};
use crate::meta::EpochHistory;
use crate::producers::Snapshot;
use crate::writer::WriterCtx;

#[derive(Debug)]
pub(crate) enum Job {
    /// A new segment (a roll, an early seal, a replacement).
    Place(PlaceJob),
    /// The log's epoch history, with new epochs, saved before memory says so.
    Epochs {
        next: EpochHistory,
        dir: PathBuf,
    },
    /// The first producers snapshot of a log (see `producers`).
    Snapshot(Snapshot),
    /// Segments retention or `delete_before` took out of the log.
    Remove(RemoveJob),
    /// The whole log.
    Delete(DeleteJob),
    /// An imported segment, put in place after the log's end (see `catchup`).
    Install(Box<InstallJob>),
    /// A cut's file steps before its data changes, and its metadata after (`truncate`).
    CutFiles(CutFiles),
    CutMeta(CutMeta),
    /// Every segment replaced by an empty one at a new start (`truncate`).
    Reset(Box<ResetJob>),
}

#[derive(Debug)]
pub(crate) enum Done {
    Place(Box<PlaceDone>),
    Epochs {
        next: EpochHistory,
        result: std::result::Result<(), ReplaceFailed>,
    },
    Snapshot,
    Remove(Result<Vec<PathBuf>>),
    Delete {
        moved: bool,
        result: Result<()>,
    },
    Install(Box<InstallDone>),
    CutFiles(CutFilesDone),
    CutMeta(CutMetaDone),
    Reset(Box<ResetDone>),
}

/// What finishing a job means for the command that waited on it.
#[derive(Debug)]
pub(crate) enum Finished {
    /// The command goes on (run it again) or fails with this error.
    Log(Result<()>),
    /// The log is gone; the delete's answer.
    Deleted(Result<()>),
    /// The command was answered with what the job did.
    Answered,
}

impl Job {
    /// Run the file steps (blocking).
    pub fn run(self, io: &dyn MetaIo) -> Done {
        match self {
            Job::Place(job) => Done::Place(Box::new(job.run(io))),
            Job::Epochs { next, dir } => {
                let result = next.try_save(io, &dir);
                Done::Epochs { next, result }
            }
            Job::Snapshot(s) => {
                s.write(io);
                Done::Snapshot
            }
            Job::Remove(job) => Done::Remove(job.run(io)),
            Job::Delete(job) => {
                let (moved, result) = job.run(io);
                Done::Delete { moved, result }
            }
            Job::Install(job) => Done::Install(Box::new(job.run(io))),
            Job::CutFiles(job) => Done::CutFiles(job.run(io)),
            Job::CutMeta(job) => Done::CutMeta(job.run(io)),
            Job::Reset(job) => Done::Reset(Box::new(job.run(io))),
        }
    }
}

impl<F: IoFile> LogWriter<F> {
    /// Take what a job did into the writer (on the storage thread).
    pub fn finish<B: IoBackend<File = F>>(
        &mut self,
        done: Done,
        backend: &B,
        ctx: &WriterCtx,
    ) -> Finished {
        match done {
            Done::Place(done) => Finished::Log(self.finish_place(*done, backend, ctx)),
            Done::Epochs { next, result } => Finished::Log(self.epochs_saved(next, result)),
            Done::Snapshot => Finished::Log(Ok(())),
            Done::Remove(Ok(recyclable)) => {
                self.removed(recyclable, ctx);
                Finished::Log(Ok(()))
            }
            Done::Remove(Err(e)) => Finished::Log(Err(e)),
            Done::Delete {
                moved: true,
                result,
            } => {
                self.deleted();
                Finished::Deleted(result)
            }
            Done::Delete {
                moved: false,
                result,
            } => Finished::Log(result),
            Done::Install(done) => {
                self.finish_install(*done, backend, ctx);
                Finished::Answered
            }
            Done::CutFiles(done) => Finished::Log(self.cut_files_done(done)),
            Done::CutMeta(done) => Finished::Log(self.cut_meta_done(done)),
            Done::Reset(done) => {
                self.reset_done(*done, backend, ctx);
                Finished::Answered
            }
        }
    }

    /// The job that begins each (epoch, first offset) of `epochs` in the log's history;
    /// `None` if it holds them already.
    pub fn epochs_job(&self, epochs: &[(u64, u64)]) -> Result<Option<Job>> {
        let mut next = self.shared.epochs.read().clone();
        let mut changed = false;
        for &(epoch, start) in epochs {
            changed |= next.begin(epoch, start)?;
        }
        Ok(changed.then(|| Job::Epochs {
            next,
            dir: self.shared.dir.clone(),
        }))
    }

    /// The new history is in memory once it is on disk. A failed save leaves it as it
    /// was, unless the new file may have taken its name: memory and disk may then
    /// disagree, and the log is poisoned.
    pub(super) fn epochs_saved(
        &mut self,
        next: EpochHistory,
        result: std::result::Result<(), ReplaceFailed>,
    ) -> Result<()> {
        match result {
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

    /// Before the log's first idempotent batch: the snapshot that makes the next open
    /// look for producers in the active segment (see `producers`).
    pub fn snapshot_job(&mut self, frame_has_producer: bool) -> Option<Job> {
        if !frame_has_producer || self.producers.tracked() {
            return None;
        }
        let base = self.active.seg().base_offset;
        Some(Job::Snapshot(self.producers.first_snapshot(base)))
    }
}
