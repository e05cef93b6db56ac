//! Crash-safe file replacement and directory sync. One helper, used for every metadata file.

use std::path::Path;

use crate::error::{IoContext, Result, StorageError};
use crate::io::std_backend::StdBackend;
use crate::io::MetaIo;

/// A replacement that failed, and whether the new file may have taken the old one's name
/// (the rename was done, the directory sync that makes it durable failed): a caller whose
/// memory must match the file cannot tell which one a restart will find.
#[derive(Debug)]
pub struct ReplaceFailed {
    pub error: StorageError,
    pub renamed: bool,
}

/// Replace `path` with `contents` atomically, with std's file operations (for files the
/// storage thread does not own, such as the node's identity).
pub fn replace_file(path: &Path, contents: &[u8]) -> Result<()> {
    replace_file_with(&StdBackend, path, contents)
}

/// [`try_replace_with`], its failure as a plain error.
pub fn replace_file_with(io: &dyn MetaIo, path: &Path, contents: &[u8]) -> Result<()> {
    try_replace_with(io, path, contents).map_err(|f| f.error)
}

/// Replace `path` with `contents` atomically through `io`: write a temp file, fsync it,
/// rename it over the target, fsync the directory. A crash leaves either the old or the
/// new file; a failure before the rename leaves the old one.
pub fn try_replace_with(
    io: &dyn MetaIo,
    path: &Path,
    contents: &[u8],
) -> std::result::Result<(), ReplaceFailed> {
    let tmp = path.with_extension("tmp");
    let written = io.write_file(&tmp, contents).and_then(|f| io.sync_file(&f));
    if let Err(e) = written.and_then(|()| io.rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(ReplaceFailed {
            error: StorageError::io(path, e),
            renamed: false,
        });
    }
    let dir = path.parent().expect("file has a parent");
    sync_dir_with(io, dir).map_err(|error| ReplaceFailed {
        error,
        renamed: true,
    })
}

pub fn fsync_dir(dir: &Path) -> Result<()> {
    sync_dir_with(&StdBackend, dir)
}

/// fsync the directory `dir` through `io`.
pub fn sync_dir_with(io: &dyn MetaIo, dir: &Path) -> Result<()> {
    io.sync_dir(dir).at(dir)
}
