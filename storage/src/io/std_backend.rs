//! Plain pwrite + fdatasync. Blocking calls are fine: the storage thread is dedicated.
//! [`StdDirect`] adds direct group writes (`pwritev2` with `RWF_DSYNC` on an O_DIRECT
//! descriptor), as `append_io` says.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::aligned::DirectFd;
use super::{AppendIo, BufResult, IoBackend, IoFile, MetaIo};

#[derive(Debug, Clone, Copy, Default)]
pub struct StdBackend;

/// The std backend with `append_io` other than buffered.
#[derive(Debug, Clone, Copy)]
pub struct StdDirect(pub AppendIo);

/// With `direct`, a group write that [`DirectFd::pick`] sends direct goes through the
/// O_DIRECT descriptor, any other write through the buffered one (the kernel keeps the
/// two coherent, see `uring::UringFile`).
#[derive(Debug)]
pub struct StdFile {
    file: std::fs::File,
    direct: Option<DirectFd<std::fs::File>>,
}

/// Every metadata operation as std does it (the trait's defaults).
impl MetaIo for StdBackend {}

impl IoBackend for StdBackend {
    type File = StdFile;

    fn name(&self) -> &'static str {
        "std"
    }

    fn wrap(&self, file: std::fs::File, _path: &Path) -> io::Result<StdFile> {
        Ok(StdFile { file, direct: None })
    }
}

impl MetaIo for StdDirect {}

impl IoBackend for StdDirect {
    type File = StdFile;

    fn name(&self) -> &'static str {
        match self.0 {
            AppendIo::Buffered => "std",
            AppendIo::Direct => "std-direct",
            AppendIo::Replicated => "std-direct-replicated",
        }
    }

    fn wrap(&self, file: std::fs::File, path: &Path) -> io::Result<StdFile> {
        let direct = DirectFd::open(path, self.0, |f| f)?;
        Ok(StdFile { file, direct })
    }
}

impl StdFile {
    /// The file itself, for a backend built over this one (the fault backend reads what a
    /// write overwrites).
    pub(crate) fn file(&self) -> &std::fs::File {
        &self.file
    }

    /// `bytes` at `pos`, direct where [`DirectFd::pick`] says so, then synced if `sync`.
    fn write_bytes(&self, bytes: &[u8], pos: u64, sync: bool, replicated: bool) -> io::Result<()> {
        if let Some(d) = &self.direct {
            if let Some(fd) = d.pick(bytes, pos, replicated) {
                let flags = d.flags(sync);
                let res = pwrite_all_flags(fd, bytes, pos, flags);
                if !d.refused(&res) {
                    return match res {
                        Ok(()) if sync && flags == 0 => self.file.sync_data(),
                        res => res,
                    };
                }
            }
        }
        self.file.write_all_at(bytes, pos)?;
        if sync {
            self.file.sync_data()?;
        }
        Ok(())
    }
}

/// `pwritev2` of all of `bytes` at `pos` with `flags`.
fn pwrite_all_flags(
    file: &std::fs::File,
    mut bytes: &[u8],
    mut pos: u64,
    flags: i32,
) -> io::Result<()> {
    while !bytes.is_empty() {
        let iov = libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        };
        // SAFETY: one iovec over `bytes`, alive for the call.
        let n = unsafe { libc::pwritev2(file.as_raw_fd(), &iov, 1, pos as libc::off_t, flags) };
        match n {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n if n > 0 => {
                bytes = &bytes[n as usize..];
                pos += n as u64;
            }
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

impl IoFile for StdFile {
    async fn write_at(
        &self,
        buf: Vec<u8>,
        skip: usize,
        pos: u64,
        sync: bool,
        replicated: bool,
    ) -> BufResult<()> {
        let bytes = &buf[skip..];
        let res = self.write_bytes(bytes, pos, sync, replicated);
        if let Some(d) = &self.direct {
            d.wrote(sync && res.is_ok());
        }
        (res, buf)
    }

    async fn sync_data(&self) -> io::Result<()> {
        let res = self.file.sync_data();
        if let (Some(d), Ok(())) = (&self.direct, &res) {
            d.wrote(true);
        }
        res
    }

    fn std_file(&self) -> &std::fs::File {
        &self.file
    }
}
