//! Crash-safe file replacement and directory sync. One helper, used for every metadata file.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::error::{IoContext, Result};

/// Replace `path` with `contents` atomically: write a temp file, fsync it, rename it over
/// the target, fsync the directory. A crash leaves either the old or the new file.
pub fn replace_file(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .at(&tmp)?;
        f.write_all(contents).at(&tmp)?;
        f.sync_all().at(&tmp)?;
    }
    fs::rename(&tmp, path).at(path)?;
    fsync_dir(path.parent().expect("file has a parent"))
}

pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}
