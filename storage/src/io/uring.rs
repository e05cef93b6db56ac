//! tokio-uring backend. tokio-uring is current-thread and its resources are !Sync, so this
//! backend only ever runs inside the storage thread's `tokio_uring::Runtime`.
//!
//! tokio-uring 0.5 has no linked-op API, so the write→fdatasync chain is built from raw
//! io-uring 0.6 opcodes submitted through its public `UnsubmittedOneshot` hook. The write
//! carries `IO_LINK`, so the kernel starts the fsync only after the write completed in full
//! (a failed or short write cancels it with ECANCELED). Both SQEs are pushed back to back
//! and the storage thread has at most one chain in flight, so the submission queue (256
//! entries) can never fill between them and split the chain.

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::rc::Rc;

use io_uring::{cqueue, opcode, squeue, types};
use tokio_uring::{OneshotOutputTransform, UnsubmittedOneshot};

use super::aligned::DirectFd;
use super::AppendIo;
use super::{BufResult, IoBackend, IoFile, MetaIo};

/// `append_io`: which group writes go to the segment through a second descriptor opened
/// with O_DIRECT, synced by `RWF_DSYNC` on the write itself (see [`UringFile`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct UringBackend {
    append_io: AppendIo,
}

impl UringBackend {
    pub fn new(append_io: AppendIo) -> UringBackend {
        UringBackend { append_io }
    }
}

/// The std file is kept alive by every in-flight op (the `Rc` in its stable data), so its
/// descriptor cannot be closed and reused while the kernel still refers to it.
///
/// With `direct`, a group write that [`DirectFd::pick`] sends direct goes through the
/// O_DIRECT descriptor; any other write (a mark, a zeroing, a group whose buffer moved)
/// through the buffered one. The kernel keeps the two coherent: a direct write first
/// writes back dirty cached pages of its range and drops them from the cache after, so
/// mmap readers fault the new bytes in.
#[derive(Debug)]
pub struct UringFile {
    file: Rc<std::fs::File>,
    direct: Option<DirectFd<Rc<std::fs::File>>>,
}

/// Metadata work is rare and blocking (renames, directory syncs): done as std does it, on
/// the threads that may wait, not through the ring.
impl MetaIo for UringBackend {}

impl IoBackend for UringBackend {
    type File = UringFile;

    fn name(&self) -> &'static str {
        match self.append_io {
            AppendIo::Buffered => "uring",
            AppendIo::Direct => "uring-direct",
            AppendIo::Replicated => "uring-direct-replicated",
        }
    }

    fn wrap(&self, file: std::fs::File, path: &Path) -> io::Result<UringFile> {
        Ok(UringFile {
            file: Rc::new(file),
            direct: DirectFd::open(path, self.append_io, Rc::new)?,
        })
    }
}

/// Create the storage thread's ring, or say why not (the caller falls back to std).
pub fn runtime(entries: u32) -> io::Result<tokio_uring::Runtime> {
    tokio_uring::Runtime::new(tokio_uring::builder().entries(entries))
}

struct WriteData {
    buf: Vec<u8>,
    _file: Rc<std::fs::File>,
}

struct WriteOut;

impl OneshotOutputTransform for WriteOut {
    type Output = (io::Result<usize>, Vec<u8>);
    type StoredData = WriteData;

    fn transform_oneshot_output(self, data: WriteData, cqe: cqueue::Entry) -> Self::Output {
        (cqe_result(&cqe), data.buf)
    }
}

struct SyncOut;

impl OneshotOutputTransform for SyncOut {
    type Output = io::Result<usize>;
    type StoredData = Rc<std::fs::File>;

    fn transform_oneshot_output(self, _data: Self::StoredData, cqe: cqueue::Entry) -> Self::Output {
        cqe_result(&cqe)
    }
}

fn cqe_result(cqe: &cqueue::Entry) -> io::Result<usize> {
    let r = cqe.result();
    if r >= 0 {
        Ok(r as usize)
    } else {
        Err(io::Error::from_raw_os_error(-r))
    }
}

impl UringFile {
    fn write_sqe(fd: &std::fs::File, rest: &[u8], pos: u64, rw_flags: i32) -> squeue::Entry {
        let len = u32::try_from(rest.len()).unwrap_or(u32::MAX);
        opcode::Write::new(types::Fd(fd.as_raw_fd()), rest.as_ptr(), len)
            .offset(pos)
            .rw_flags(rw_flags as _)
            .build()
    }

    fn sync_sqe(&self) -> squeue::Entry {
        opcode::Fsync::new(types::Fd(self.file.as_raw_fd()))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
    }

    /// Write `buf[from..]` at `pos` through `fd`, each write with `rw_flags`.
    async fn write_through(
        fd: &Rc<std::fs::File>,
        mut buf: Vec<u8>,
        mut from: usize,
        mut pos: u64,
        rw_flags: i32,
    ) -> BufResult<()> {
        while from < buf.len() {
            // The Vec's heap block does not move when the Vec itself is moved into the op.
            let sqe = Self::write_sqe(fd, &buf[from..], pos, rw_flags);
            let data = WriteData {
                buf,
                _file: fd.clone(),
            };
            let (res, b) = UnsubmittedOneshot::new(data, WriteOut, sqe).submit().await;
            buf = b;
            match res {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                Ok(n) => {
                    from += n;
                    pos += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    /// `buf[skip..]` at `pos`, direct where [`DirectFd::pick`] says so, then synced if
    /// `sync` (by `RWF_DSYNC` on the write where that suffices, see [`DirectFd`]).
    async fn write_group(
        &self,
        buf: Vec<u8>,
        skip: usize,
        pos: u64,
        sync: bool,
        replicated: bool,
    ) -> BufResult<()> {
        let Some(d) = &self.direct else {
            return self.write_buffered(buf, skip, pos, sync).await;
        };
        let Some(fd) = d.pick(&buf[skip..], pos, replicated) else {
            return self.write_buffered(buf, skip, pos, sync).await;
        };
        let flags = d.flags(sync);
        let (res, buf) = Self::write_through(fd, buf, skip, pos, flags).await;
        if d.refused(&res) {
            return self.write_buffered(buf, skip, pos, sync).await;
        }
        match res {
            Ok(()) if sync && flags == 0 => (self.fsync_file().await, buf),
            res => (res, buf),
        }
    }

    /// fdatasync of the whole file.
    async fn fsync_file(&self) -> io::Result<()> {
        let sqe = self.sync_sqe();
        UnsubmittedOneshot::new(self.file.clone(), SyncOut, sqe)
            .submit()
            .await
            .map(|_| ())
    }

    /// The buffered write, chained to its fdatasync when `sync`.
    async fn write_buffered(
        &self,
        buf: Vec<u8>,
        skip: usize,
        pos: u64,
        sync: bool,
    ) -> BufResult<()> {
        if !sync {
            return Self::write_through(&self.file, buf, skip, pos, 0).await;
        }
        if buf.len() == skip {
            return (self.fsync_file().await, buf);
        }
        let total = buf.len() - skip;
        let write = Self::write_sqe(&self.file, &buf[skip..], pos, 0).flags(squeue::Flags::IO_LINK);
        let data = WriteData {
            buf,
            _file: self.file.clone(),
        };
        let write = UnsubmittedOneshot::new(data, WriteOut, write).submit();
        let sync = UnsubmittedOneshot::new(self.file.clone(), SyncOut, self.sync_sqe()).submit();
        let (wres, buf) = write.await;
        let sres = sync.await;
        match wres {
            Err(e) => (Err(e), buf),
            Ok(n) if n < total => {
                // Short write: the chain was cut, finish by hand and sync again.
                let (res, buf) =
                    Self::write_through(&self.file, buf, skip + n, pos + n as u64, 0).await;
                if let Err(e) = res {
                    return (Err(e), buf);
                }
                (self.fsync_file().await, buf)
            }
            Ok(_) => (sres.map(|_| ()), buf),
        }
    }
}

impl IoFile for UringFile {
    fn std_file(&self) -> &std::fs::File {
        &self.file
    }

    async fn write_at(
        &self,
        buf: Vec<u8>,
        skip: usize,
        pos: u64,
        sync: bool,
        replicated: bool,
    ) -> BufResult<()> {
        let (res, buf) = self.write_group(buf, skip, pos, sync, replicated).await;
        if let Some(d) = &self.direct {
            d.wrote(sync && res.is_ok());
        }
        (res, buf)
    }

    async fn sync_data(&self) -> io::Result<()> {
        let res = self.fsync_file().await;
        if let (Some(d), Ok(())) = (&self.direct, &res) {
            d.wrote(true);
        }
        res
    }
}
