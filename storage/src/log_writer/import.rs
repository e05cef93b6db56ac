//! Putting a staged segment (see `crate::import`) in place after the log's end.
//!
//! Order on disk, each step leaving a log that recovery opens as consistent:
//! 1. the epochs the segment begins are saved;
//! 2. if the active segment is empty (a replica importing segment after segment), its
//!    zeroed file is moved aside under a `.tmp` name, to become the next active segment
//!    without zero-filling another (an empty segment that was only allocated, as a log
//!    created for import has, gives way to a zeroed spare if one is ready; imports never
//!    ask for one, the first append does); otherwise the active segment is sealed as on
//!    a roll;
//! 3. the synced staging file is renamed to `<base>.seg` (its index written beside it);
//! 4. the next active segment appears at the segment's end; the directory is synced.
//!
//! A crash after 2 leaves the log ending at `base` (start-up removes `.tmp` files); after
//! 3 the imported segment is the last one and full, so the first append rolls.

use std::fs::{self, File};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::active::ActiveFiles;
use super::new_segment::{self, Source};
use super::placement::Fill;
use super::LogWriter;
use crate::catchup;
use crate::error::{IoContext, Result, StorageError};
use crate::import::StagedSegment;
use crate::index;
use crate::io::{IoBackend, IoFile};
use crate::segment::{self, SegmentView};
use crate::writer::WriterCtx;

impl<F: IoFile> LogWriter<F> {
    /// See [`crate::SegmentImport::install`]. Returns the new durable end.
    pub async fn install_segment<B: IoBackend<File = F>>(
        &mut self,
        mut seg: StagedSegment,
        backend: &B,
        ctx: &WriterCtx,
    ) -> Result<u64> {
        let checked = async {
            self.check_writable()?;
            self.commit(true, &ctx.stats).await?;
            let end = self.active.buffered_next();
            if self.active.durable_next() != seg.base || end != seg.base {
                return Err(StorageError::InvalidInput(format!(
                    "log {} ends at {end}, the imported segment starts at {}",
                    self.shared.name, seg.base
                )));
            }
            self.begin_epochs_now(&seg.epochs)
        }
        .await;
        if let Err(e) = checked {
            let _ = fs::remove_file(&seg.path);
            return Err(e);
        }
        match self.put_in_place(&seg, backend) {
            Ok(()) => {
                ctx.stats.record_appended(seg.len);
                self.producers
                    .table
                    .merge(std::mem::take(&mut seg.producers));
                self.producers.save(&*self.io, seg.next);
                Ok(seg.next)
            }
            Err(e) => {
                // Disk and memory may now disagree: refuse writes until a restart recovers.
                *self.shared.poisoned.lock() = Some(e.to_string());
                tracing::error!(log = %self.shared.name, error = %e, "installing an imported segment failed; log refuses writes until restart");
                let _ = fs::remove_file(&seg.path);
                Err(e)
            }
        }
    }

    fn put_in_place<B: IoBackend<File = F>>(
        &mut self,
        seg: &StagedSegment,
        backend: &B,
    ) -> Result<()> {
        let dir = self.shared.dir.clone();
        let reuse_active =
            self.active.write_pos() == 0 && self.active.seg().base_offset == seg.base;
        let zeroed_before = self.fill == Fill::Zeroed;
        // Sealed where the import begins, the active segment may hold a few frames in a
        // whole segment's file. Only an allocated-only tail is released: punching out
        // written zeros took ~110 ms per 120 MB here, on the thread every log writes from.
        let sealed = (!reuse_active && !zeroed_before)
            .then(|| (self.active.seg().path.clone(), self.active.write_pos()));
        let source = if reuse_active {
            let aside = dir.join(format!("next-active-{:020}.tmp", seg.next));
            self.io.rename(&self.active.seg().path, &aside).at(&aside)?;
            if zeroed_before {
                (Source::File(aside), true)
            } else if let Some(spare) = self.spare.try_take() {
                let _ = self.io.remove_file(&aside);
                (Source::File(spare), true)
            } else {
                (Source::File(aside), false)
            }
        } else {
            self.seal_index_now()?;
            (Source::ReadySpare, false)
        };

        let seg_path = dir.join(segment::segment_file_name(seg.base));
        self.io.rename(&seg.path, &seg_path).at(&seg_path)?;
        let idx_path = self.idx_path(seg.base);
        let idx = self
            .io
            .write_file(&idx_path, &index::encode(seg.base, &seg.entries))
            .at(&idx_path)?;
        self.io.sync_file(&idx).at(&idx_path)?;
        let imported =
            SegmentView::map(&seg_path, &File::open(&seg_path).at(&seg_path)?, seg.base)?;
        imported.set_index(seg.entries.clone());
        imported.publish(seg.len, seg.next, seg.last_ts_us, &[]);

        let size = self.next_segment_bytes(0);
        let (file, zeroed) = match source {
            (Source::File(p), zeroed) => (p, zeroed),
            (source, _) => new_segment::file_for(&*self.io, &dir, &self.spare, source, 0, size)?,
        };
        let placed = new_segment::place(&*self.io, &dir, &file, seg.next)?;
        let path = placed.view.path.clone();
        let io = backend.wrap(placed.file, &path).at(&path)?;
        let view = Arc::new(placed.view);
        {
            let mut segs = self.shared.segments.write();
            if reuse_active {
                segs.pop();
            }
            segs.push(Arc::new(imported));
            segs.push(view.clone());
        }
        self.active.place(
            view,
            ActiveFiles {
                io,
                idx: placed.idx,
            },
            0,
            seg.next,
        );
        self.index.reset(&[]);
        self.fill = Fill::of(zeroed);
        self.mark_stale = true;
        self.last_ts_us = self.last_ts_us.max(seg.last_ts_us);
        self.shared.written.store(seg.next, Ordering::Release);
        self.shared.durable.send_replace(seg.next);
        if let Some((path, len)) = sealed {
            catchup::release_tail(&path, len);
        }
        // No spare is asked for here, even for an allocated-only active segment: zeroing
        // one now would write a segment's worth on the disk while a catch-up's next fetch
        // writes. Its first append asks (`make_room`).
        tracing::debug!(log = %self.shared.name, base = seg.base, next = seg.next, bytes = seg.len, "imported a segment");
        Ok(())
    }

    /// Make the active segment's index complete and durable (it is being sealed).
    fn seal_index_now(&mut self) -> Result<()> {
        self.write_index_entries();
        let idx_path = self.idx_path(self.active.seg().base_offset);
        if !self.index.complete() {
            return Err(StorageError::io(
                idx_path,
                std::io::Error::other("index entries could not be written"),
            ));
        }
        let files = self.active.files().expect("sealed while open");
        self.io.sync_file(&files.idx).at(&idx_path)
    }
}
