//! Removing segments (retention, `delete_before`) and whole logs, as jobs of file steps
//! that touch no writer state (see `job`): memory changes first on the storage thread,
//! then the files follow.

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::LogWriter;
use crate::crashsafe::sync_dir_with;
use crate::error::{IoContext, Result};
use crate::io::{IoFile, MetaIo};
use crate::segment::SegmentView;
use crate::writer::WriterCtx;

/// Segments already gone from the log's list, whose files go next.
#[derive(Debug)]
pub(crate) struct RemoveJob {
    dir: PathBuf,
    /// Each segment's file, and whether it may be recycled as a spare (no reader maps it:
    /// zeroing it under a reader would show that reader garbage).
    segments: Vec<(PathBuf, bool)>,
}

impl RemoveJob {
    /// Files are renamed out of the way and the directory synced before anything is
    /// zeroed or deleted, so a crash leaves either the whole segment or none of it.
    /// Returns the files to recycle.
    pub fn run(self, io: &dyn MetaIo) -> Result<Vec<PathBuf>> {
        let mut recyclable = Vec::new();
        for (path, recycle) in self.segments {
            let _ = io.remove_file(&path.with_extension("idx"));
            let gone = path.with_extension("deleted.tmp");
            io.rename(&path, &gone).at(&path)?;
            if recycle {
                recyclable.push(gone);
            } else {
                let _ = io.remove_file(&gone);
            }
        }
        sync_dir_with(io, &self.dir)?;
        Ok(recyclable)
    }
}

/// A whole log's directory, to move aside and remove.
#[derive(Debug)]
pub(crate) struct DeleteJob {
    dir: PathBuf,
    trash: PathBuf,
}

impl DeleteJob {
    /// Move the directory aside (to a `.trash-` name, which start-up removes), so that a
    /// crash never leaves half a log, then make that durable and remove the files.
    /// `moved`: the log is gone, whatever the result says of the rest.
    pub fn run(self, io: &dyn MetaIo) -> (bool, Result<()>) {
        if let Err(e) = io.rename(&self.dir, &self.trash).at(&self.dir) {
            return (false, Err(e));
        }
        let parent = self.trash.parent().expect("trash has a parent");
        let synced = sync_dir_with(io, parent);
        if let Err(e) = fs::remove_dir_all(&self.trash) {
            tracing::warn!(path = %self.trash.display(), error = %e, "could not remove a deleted log's files");
        }
        (true, synced)
    }
}

impl<F: IoFile> LogWriter<F> {
    /// Take the `n` oldest segments (never the active one) out of the log; `None` if there
    /// are none. The new start is published at once.
    pub fn remove_front(&mut self, n: usize) -> Option<RemoveJob> {
        let removed: Vec<Arc<SegmentView>> = {
            let mut segs = self.shared.segments.write();
            let n = n.min(segs.len() - 1);
            let removed = segs.drain(..n).collect();
            self.shared
                .start
                .store(segs[0].base_offset, Ordering::Release);
            removed
        };
        if removed.is_empty() {
            return None;
        }
        let segments = removed
            .into_iter()
            .map(|seg| {
                seg.drop_deferred_index();
                (seg.path.clone(), Arc::try_unwrap(seg).is_ok())
            })
            .collect();
        Some(RemoveJob {
            dir: self.shared.dir.clone(),
            segments,
        })
    }

    /// The files a [`RemoveJob`] renamed aside are zeroed as spares.
    pub(super) fn removed(&mut self, recyclable: Vec<PathBuf>, ctx: &WriterCtx) {
        let size = self.shared.config.segment_bytes;
        for gone in recyclable {
            ctx.preparer
                .request(&self.spare, &self.shared.dir, size, Some(gone));
        }
    }

    /// The job that deletes this log (after its last group is committed).
    pub fn delete_job(&self) -> DeleteJob {
        let dir = self.shared.dir.clone();
        let parent = dir.parent().expect("log dir has a parent");
        let trash = parent.join(format!(".trash-{}-{}", self.shared.name, self.shared.id));
        DeleteJob { dir, trash }
    }

    /// The log's directory was moved aside: it is gone for readers too.
    pub(super) fn deleted(&mut self) {
        self.shared.deleted.store(true, Ordering::Release);
        self.shared.durable.send_modify(|_| {});
    }
}
