//! Plain pwrite + fdatasync. Blocking calls are fine: the storage thread is dedicated.

use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{BufResult, IoBackend, IoFile, MetaIo};

#[derive(Debug, Clone, Copy, Default)]
pub struct StdBackend;

#[derive(Debug)]
pub struct StdFile {
    file: std::fs::File,
}

/// Every metadata operation as std does it (the trait's defaults).
impl MetaIo for StdBackend {}

impl IoBackend for StdBackend {
    type File = StdFile;

    fn name(&self) -> &'static str {
        "std"
    }

    fn wrap(&self, file: std::fs::File, _path: &Path) -> io::Result<StdFile> {
        Ok(StdFile { file })
    }
}

impl StdFile {
    /// The file itself, for a backend built over this one (the fault backend reads what a
    /// write overwrites).
    pub(crate) fn file(&self) -> &std::fs::File {
        &self.file
    }
}

impl IoFile for StdFile {
    async fn write_at(&self, buf: Vec<u8>, skip: usize, pos: u64, sync: bool) -> BufResult<()> {
        let mut res = self.file.write_all_at(&buf[skip..], pos);
        if res.is_ok() && sync {
            res = self.file.sync_data();
        }
        (res, buf)
    }

    async fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn std_file(&self) -> &std::fs::File {
        &self.file
    }
}
