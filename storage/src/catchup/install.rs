//! Putting a staged segment (see `import`) in place after a log's end: the file steps, as
//! a metadata job that touches no writer state (`log_writer::install` makes it and takes
//! what it did).
//!
//! Order on disk, each step leaving a log that recovery opens as consistent:
//! 1. the epochs the segment begins are saved;
//! 2. if the active segment is empty (a replica importing segment after segment), its
//!    file is moved aside under a `.tmp` name, to become the next active segment without
//!    zero-filling another (an allocated-only one gives way to a zeroed spare if one is
//!    ready; imports never ask for one, the first append does); otherwise the active
//!    segment is sealed as on a roll (its index synced);
//! 3. the synced staging file is renamed to `<base>.seg` (its index written beside it);
//! 4. the next active segment appears at the segment's end; the directory is synced;
//! 5. the producers snapshot, if the log has producers, covers the segment.
//!
//! A crash after 2 leaves the log ending at `base` (start-up removes `.tmp` files); after
//! 3 the imported segment is the last one and full, so the first append rolls.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::import::StagedSegment;
use crate::crashsafe::ReplaceFailed;
use crate::error::{IoContext, Result};
use crate::index;
use crate::io::MetaIo;
use crate::meta::EpochHistory;
use crate::new_segment::{self, Placed, Source};
use crate::producers::Snapshot;
use crate::segment::{self, SegmentView};
use crate::spare::SpareSlot;

/// How the log's active segment makes way for the imported one.
#[derive(Debug)]
pub(crate) enum ActiveEnd {
    /// Empty, where the segment begins: its file moves aside to follow it. `zeroed`: the
    /// file is zero-filled (else a ready spare is taken instead, if there is one).
    Reused { path: PathBuf, zeroed: bool },
    /// Sealed where the segment begins: its index file is synced, and an allocated-only
    /// one (`release`: its path and length) gives its unused blocks back.
    Sealed {
        idx: File,
        idx_path: PathBuf,
        release: Option<(PathBuf, u64)>,
    },
}

#[derive(Debug)]
pub(crate) struct InstallJob {
    pub seg: StagedSegment,
    pub dir: PathBuf,
    /// The history with the epochs the segment begins, if it begins any.
    pub epochs: Option<EpochHistory>,
    pub active: ActiveEnd,
    pub spare: Arc<SpareSlot>,
    /// Size of a new active segment, if one is made.
    pub size: u64,
    /// The snapshot of the producers with the segment's, covering its end.
    pub snapshot: Option<Snapshot>,
    pub reply: oneshot::Sender<Result<u64>>,
}

/// What an [`InstallJob`] did.
#[derive(Debug)]
pub(crate) struct InstallDone {
    pub seg: StagedSegment,
    pub reply: oneshot::Sender<Result<u64>>,
    /// The epochs' save, if there were epochs to save; nothing else was done if it failed.
    pub epochs: Option<(EpochHistory, std::result::Result<(), ReplaceFailed>)>,
    /// The segment in place, and the next active one (zero-filled or not); `None`: not
    /// tried, the epochs' save failed.
    pub placed: Option<Result<Installed>>,
    /// The active segment was the empty one moved aside (it leaves the list).
    pub reused: bool,
}

#[derive(Debug)]
pub(crate) struct Installed {
    pub imported: SegmentView,
    pub next: Placed,
    pub zeroed: bool,
}

impl InstallJob {
    pub fn run(self, io: &dyn MetaIo) -> InstallDone {
        let saved = self
            .epochs
            .as_ref()
            .map(|next| next.try_save(io, &self.dir));
        let placed = match &saved {
            Some(Err(_)) => None,
            _ => Some(self.put_in_place(io)),
        };
        let InstallJob {
            seg,
            reply,
            epochs,
            active,
            ..
        } = self;
        InstallDone {
            seg,
            reply,
            epochs: epochs.zip(saved),
            placed,
            reused: matches!(active, ActiveEnd::Reused { .. }),
        }
    }

    fn put_in_place(&self, io: &dyn MetaIo) -> Result<Installed> {
        let (dir, seg) = (&self.dir, &self.seg);
        let (source, zeroed) = match &self.active {
            ActiveEnd::Reused { path, zeroed } => {
                let aside = dir.join(format!("next-active-{:020}.tmp", seg.next));
                io.rename(path, &aside).at(&aside)?;
                match (*zeroed, self.spare.try_take()) {
                    (true, _) | (false, None) => (Source::File(aside), *zeroed),
                    (false, Some(spare)) => {
                        let _ = io.remove_file(&aside);
                        (Source::File(spare), true)
                    }
                }
            }
            ActiveEnd::Sealed { idx, idx_path, .. } => {
                io.sync_file(idx).at(idx_path)?;
                (Source::ReadySpare, false)
            }
        };
        let imported = self.rename_staged(io)?;
        let (file, zeroed) = match source {
            Source::File(p) => (p, zeroed),
            source => new_segment::file_for(io, dir, &self.spare, source, 0, self.size)?,
        };
        let next = new_segment::place(io, dir, &file, seg.next)?;
        if let ActiveEnd::Sealed {
            release: Some((path, len)),
            ..
        } = &self.active
        {
            super::release_tail(path, *len);
        }
        if let Some(s) = &self.snapshot {
            s.write(io);
        }
        Ok(Installed {
            imported,
            next,
            zeroed,
        })
    }

    /// The staged file as segment `base`, with its index, mapped and published.
    fn rename_staged(&self, io: &dyn MetaIo) -> Result<SegmentView> {
        let seg = &self.seg;
        let seg_path = self.dir.join(segment::segment_file_name(seg.base));
        io.rename(&seg.path, &seg_path).at(&seg_path)?;
        let idx_path = self.dir.join(segment::index_file_name(seg.base));
        let idx = io
            .write_file(&idx_path, &index::encode(seg.base, &seg.entries))
            .at(&idx_path)?;
        io.sync_file(&idx).at(&idx_path)?;
        let file = File::open(&seg_path).at(&seg_path)?;
        let imported = SegmentView::map(&seg_path, &file, seg.base)?;
        imported.set_index(seg.entries.clone());
        imported.publish(seg.len, seg.next, seg.last_ts_us, &[]);
        Ok(imported)
    }
}
