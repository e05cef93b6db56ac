//! Putting damaged records back (see `damage`): frames fetched from a peer that holds the
//! same records in the same epochs are written over the damaged run, in place, and synced.
//! Written only where they match exactly what the run must hold (offsets, epochs, and the
//! run's length where valid frames resume after it), so a repair can never change a
//! record that was intact, and one cut short by a crash leaves damage, found again.

use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::LogWriter;
use crate::damage::Hole;
use crate::error::{IoContext, Result, StorageError};
use crate::format::{self, BatchHeader, MARK_BYTES};
use crate::io::IoFile;
use crate::segment::{open_rw, SegmentView};
use crate::writer::WriterCtx;

/// What a repair put back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repaired {
    pub first_offset: u64,
    /// One past the last record written back.
    pub next_offset: u64,
    pub bytes: u64,
}

impl<F: IoFile> LogWriter<F> {
    /// Write `frames` (records from `first_offset` on) over the damaged run that starts at
    /// that offset. See [`crate::Log::repair`].
    pub async fn repair(
        &mut self,
        first_offset: u64,
        frames: Bytes,
        ctx: &WriterCtx,
    ) -> Result<Repaired> {
        self.check_poison()?;
        self.commit(true, &ctx.stats).await?;
        let (seg, hole) = self.find_hole(first_offset)?;
        let active = Arc::ptr_eq(&seg, self.active.seg());
        let next_base = self.next_base(&seg);
        let room = seg.capacity() - hole.pos;
        let headers = self.check_repair_frames(first_offset, &frames, room)?;
        let len: u64 = headers.iter().map(|h| u64::from(h.frame_len)).sum();
        let next = headers.last().map_or(first_offset, |h| h.next_offset());
        let must_end = hole.resume.or(next_base.map(|b| (hole.pos + len, b)));
        if let Some((end_pos, end_offset)) = must_end {
            if next != end_offset || hole.pos + len != end_pos {
                return Err(self.rejected(format!(
                    "the damaged run holds records {first_offset}..{end_offset} in {} bytes; \
                     the peer's frames hold {first_offset}..{next} in {len} bytes: not the \
                     same records",
                    end_pos - hole.pos
                )));
            }
        }
        let mut data = frames[..len as usize].to_vec();
        let clear_to = if hole.resume.is_some() {
            hole.pos + len
        } else {
            // The rest of the run (and a mark past it) goes: it vouched for the lost bytes.
            (hole.extent_end + MARK_BYTES as u64).min(seg.capacity())
        };
        data.resize((clear_to.max(hole.pos + len) - hole.pos) as usize, 0);
        self.write_repair(&seg, active, hole.pos, data).await?;
        verify_written(&seg, hole.pos, &headers)?;
        seg.remove_hole_at(hole.pos);
        if active && hole.resume.is_none() {
            self.observe_producers(&frames[..len as usize], &headers);
            self.continue_after_repair(hole.pos + len, next, &headers);
        } else if hole.resume.is_none() {
            seg.cut(hole.pos + len, next);
        }
        tracing::warn!(log = %self.shared.name, segment = %seg.path.display(), first_offset, next, bytes = len, "damaged records repaired from a peer");
        Ok(Repaired {
            first_offset,
            next_offset: next,
            bytes: len,
        })
    }

    /// The segment and damaged run that starts at `first_offset`.
    fn find_hole(&self, first_offset: u64) -> Result<(Arc<SegmentView>, Hole)> {
        let segs = self.shared.segments.read().clone();
        segs.into_iter()
            .find_map(|s| {
                let hole = s
                    .holes()
                    .into_iter()
                    .find(|h| h.first_offset == first_offset)?;
                Some((s, hole))
            })
            .ok_or_else(|| {
                StorageError::InvalidInput(format!(
                    "log {:?} has no damaged run starting at offset {first_offset}",
                    self.shared.name
                ))
            })
    }

    fn next_base(&self, seg: &SegmentView) -> Option<u64> {
        let segs = self.shared.segments.read();
        let i = segs.partition_point(|s| s.base_offset <= seg.base_offset);
        segs.get(i).map(|s| s.base_offset)
    }

    fn rejected(&self, reason: String) -> StorageError {
        StorageError::FrameRejected {
            log: self.shared.name.clone(),
            reason,
        }
    }

    /// The headers of the whole frames of `frames` that fit in `room` bytes: each checks
    /// out, continues the offsets from `first_offset`, and was written in the epoch this
    /// log's history says wrote its offset.
    fn check_repair_frames(
        &self,
        first_offset: u64,
        frames: &[u8],
        room: u64,
    ) -> Result<Vec<BatchHeader>> {
        let epochs = self.shared.epochs.read().clone();
        let (mut pos, mut expected, mut out) = (0usize, first_offset, Vec::new());
        while pos < frames.len() {
            let h = format::check_frame(&frames[pos..])
                .map_err(|e| self.rejected(format!("frame at byte {pos}: {e}")))?;
            if (pos + h.frame_len as usize) as u64 > room {
                break;
            }
            if h.base_offset != expected {
                return Err(self.rejected(format!(
                    "frame at byte {pos} starts at offset {}, expected {expected}",
                    h.base_offset
                )));
            }
            let ours = epochs.epoch_at(h.base_offset).unwrap_or(0);
            if h.epoch != ours {
                return Err(self.rejected(format!(
                    "offset {expected} was written in epoch {ours} here, the peer's in epoch {}",
                    h.epoch
                )));
            }
            pos += h.frame_len as usize;
            expected = h.next_offset();
            out.push(h);
        }
        if out.is_empty() {
            return Err(self.rejected("no whole frame to repair with".into()));
        }
        Ok(out)
    }

    /// Write and sync the repair: through the backend into the active segment, with a
    /// plain pwrite synced through the metadata IO (which a fault backend can fail) into
    /// a sealed one.
    async fn write_repair(
        &mut self,
        seg: &SegmentView,
        active: bool,
        pos: u64,
        data: Vec<u8>,
    ) -> Result<()> {
        if active {
            let (r, _) = self.active.io().write_all_at_sync(data, pos).await;
            return r.at(&seg.path);
        }
        let f = open_rw(&seg.path)?;
        f.write_all_at(&data, pos).at(&seg.path)?;
        self.io.sync_file(&f).at(&seg.path)
    }

    /// Idempotent producers of frames put back at a damaged end: retries of them are
    /// answered with their offsets, as for any frame this log holds.
    fn observe_producers(&mut self, frames: &[u8], headers: &[BatchHeader]) {
        let mut at = 0usize;
        let base = self.active.seg().base_offset;
        for h in headers {
            let frame = &frames[at..at + h.frame_len as usize];
            self.producers.observe(&*self.io, frame, h, base);
            at += h.frame_len as usize;
        }
    }

    /// A damaged end was repaired: the log goes on after the frames put back.
    fn continue_after_repair(&mut self, end_pos: u64, next: u64, headers: &[BatchHeader]) {
        let mut at = self.active.write_pos();
        for h in headers {
            self.index.note(at, h.base_offset);
            at += u64::from(h.frame_len);
        }
        self.last_ts_us = headers
            .iter()
            .map(|h| h.last_ts_us)
            .fold(self.last_ts_us, u64::max);
        self.active.wrote_in_place(end_pos, next);
        self.damaged = None;
        self.mark_stale = true;
        self.shared.written.store(next, Ordering::Release);
        self.publish_durable();
    }
}

/// Read back what a repair wrote, through the segment's mapping.
fn verify_written(seg: &SegmentView, pos: u64, headers: &[BatchHeader]) -> Result<()> {
    let mut at = pos;
    for h in headers {
        let got = format::check_frame(&seg.raw()[at as usize..]).map_err(|reason| {
            StorageError::Corrupt {
                path: seg.path.clone(),
                position: at,
                reason,
            }
        })?;
        if got != *h {
            return Err(StorageError::Corrupt {
                path: seg.path.clone(),
                position: at,
                reason: crate::error::FormatError::OffsetMismatch {
                    expected: h.base_offset,
                    found: got.base_offset,
                },
            });
        }
        at += u64::from(h.frame_len);
    }
    Ok(())
}
