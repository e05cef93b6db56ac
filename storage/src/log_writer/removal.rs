//! Removing segments (retention, delete_before) and whole logs.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::LogWriter;
use crate::crashsafe::sync_dir_with;
use crate::error::{IoContext, Result};
use crate::io::IoFile;
use crate::segment::SegmentView;
use crate::writer::WriterCtx;

impl<F: IoFile> LogWriter<F> {
    /// Remove the `n` oldest segments (never the active one). Files are renamed out of the
    /// way and the directory synced before anything is zeroed or deleted, so a crash leaves
    /// either the whole segment or none of it. Returns the new start offset.
    pub fn remove_front(&mut self, n: usize, ctx: &WriterCtx) -> Result<u64> {
        let dir = self.shared.dir.clone();
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
            return Ok(self.shared.start.load(Ordering::Acquire));
        }
        let mut recyclable = Vec::new();
        for seg in removed {
            seg.drop_deferred_index();
            let _ = self.io.remove_file(&self.idx_path(seg.base_offset));
            let path = seg.path.clone();
            let gone = path.with_extension("deleted.tmp");
            self.io.rename(&path, &gone).at(&path)?;
            // Reuse the file only if no reader still maps it: zeroing it under a reader
            // would show that reader garbage.
            match Arc::try_unwrap(seg) {
                Ok(view) => {
                    drop(view);
                    recyclable.push(gone);
                }
                Err(_) => {
                    let _ = self.io.remove_file(&gone);
                }
            }
        }
        sync_dir_with(&*self.io, &dir)?;
        for gone in recyclable {
            let size = self.shared.config.segment_bytes;
            ctx.preparer.request(&self.spare, &dir, size, Some(gone));
        }
        Ok(self.shared.start.load(Ordering::Acquire))
    }

    /// Move the log's directory aside (to a `.trash-` name, which start-up removes), so
    /// that a crash never leaves half a log. Until this succeeds the log is unchanged;
    /// after it, the log is gone from memory whatever follows (see `finish_delete`).
    pub fn move_to_trash(&mut self) -> Result<PathBuf> {
        let dir = &self.shared.dir;
        let parent = dir.parent().expect("log dir has a parent");
        let trash = parent.join(format!(".trash-{}-{}", self.shared.name, self.shared.id));
        self.io.rename(dir, &trash).at(dir)?;
        self.shared.deleted.store(true, Ordering::Release);
        self.shared.durable.send_modify(|_| {});
        Ok(trash)
    }

    /// Make the move durable and remove the files. An error here leaves a log that a
    /// restart finds either under its name (the move was lost) or not at all.
    pub fn finish_delete(&mut self, trash: &Path) -> Result<()> {
        let parent = trash.parent().expect("trash has a parent");
        sync_dir_with(&*self.io, parent)?;
        if let Err(e) = fs::remove_dir_all(trash) {
            tracing::warn!(path = %trash.display(), error = %e, "could not remove a deleted log's files");
        }
        Ok(())
    }
}
