//! The file steps of putting a new segment in place, with no writer state: blocking, so
//! that they can run on the metadata worker while the storage thread commits other logs.
//!
//! Order: a zeroed file (the log's spare, or one allocated now) is renamed to
//! `<base>.seg`, an empty `<base>.idx` is created beside it, the directory is synced, and
//! only then is the segment opened and mapped. A failure after the rename leaves a
//! `<base>.seg` that would end the active segment at `base` at the next open, so a roll
//! removes it again ([`undo`]).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::crashsafe::sync_dir_with;
use crate::error::{IoContext, Result, StorageError};
use crate::io::MetaIo;
use crate::segment::{self, open_rw, SegmentView};
use crate::spare::{self, SpareSlot};

/// A segment renamed into place, opened and mapped; the storage thread wraps its file in
/// the backend.
#[derive(Debug)]
pub(crate) struct Placed {
    pub view: SegmentView,
    pub file: File,
    pub idx: File,
}

/// How to get the file of a new segment.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// The ready spare, waiting for one being zeroed (a roll's was asked for half a
    /// segment ago); else one allocated now.
    WaitForSpare,
    /// The ready spare if there is one now; else one allocated now.
    ReadySpare,
    /// This zeroed file (a spare already taken, or an empty active segment moved aside).
    File(PathBuf),
}

/// A zeroed file in `dir` for a segment of at least `need` bytes (`size` if one is made
/// now), and whether it was zero-filled rather than only allocated.
pub(crate) fn file_for(
    io: &dyn MetaIo,
    dir: &Path,
    spare: &Arc<SpareSlot>,
    source: Source,
    need: u64,
    size: u64,
) -> Result<(PathBuf, bool)> {
    let ready = match source {
        Source::WaitForSpare => spare.take(),
        Source::ReadySpare => spare.try_take(),
        Source::File(p) => return Ok((p, true)),
    };
    // A spare too small for the frame that needs the segment (one prepared while the log
    // was small) goes.
    let fits = |p: &PathBuf| std::fs::metadata(p).is_ok_and(|m| m.len() >= need);
    match ready {
        Some(p) if fits(&p) => Ok((p, true)),
        Some(p) => {
            let _ = io.remove_file(&p);
            Ok((spare::prepare_now(io, dir, size)?, false))
        }
        None => Ok((spare::prepare_now(io, dir, size)?, false)),
    }
}

/// Rename the zeroed file `from` to segment `base` with an empty index, durably (the
/// directory synced), then open and map it.
pub(crate) fn place(io: &dyn MetaIo, dir: &Path, from: &Path, base: u64) -> Result<Placed> {
    let path = dir.join(segment::segment_file_name(base));
    if let Err(e) = io.rename(from, &path) {
        let _ = io.remove_file(from);
        return Err(StorageError::io(&path, e));
    }
    let idx_path = dir.join(segment::index_file_name(base));
    let idx = io.write_file(&idx_path, &[]).at(&idx_path)?;
    sync_dir_with(io, dir)?;
    let file = open_rw(&path)?;
    let view = SegmentView::map(&path, &file, base)?;
    Ok(Placed { view, file, idx })
}

/// Remove what a failed placement of segment `base` may have left.
pub(crate) fn undo(io: &dyn MetaIo, dir: &Path, base: u64) -> Result<()> {
    let gone = |p: &Path| match io.remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StorageError::io(p, e)),
        _ => Ok(()),
    };
    gone(&dir.join(segment::segment_file_name(base)))?;
    gone(&dir.join(segment::index_file_name(base)))?;
    sync_dir_with(io, dir)
}
