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

use super::{BufResult, IoBackend, IoFile, MetaIo};

#[derive(Debug, Clone, Copy, Default)]
pub struct UringBackend;

/// The std file is kept alive by every in-flight op (the `Rc` in its stable data), so its
/// descriptor cannot be closed and reused while the kernel still refers to it.
#[derive(Debug)]
pub struct UringFile {
    file: Rc<std::fs::File>,
}

/// Metadata work is rare and blocking (renames, directory syncs): done as std does it, on
/// the threads that may wait, not through the ring.
impl MetaIo for UringBackend {}

impl IoBackend for UringBackend {
    type File = UringFile;

    fn name(&self) -> &'static str {
        "uring"
    }

    fn wrap(&self, file: std::fs::File, _path: &Path) -> io::Result<UringFile> {
        Ok(UringFile {
            file: Rc::new(file),
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
    fn write_sqe(&self, buf: &[u8], done: usize, pos: u64) -> squeue::Entry {
        let rest = &buf[done..];
        let len = u32::try_from(rest.len()).unwrap_or(u32::MAX);
        opcode::Write::new(types::Fd(self.file.as_raw_fd()), rest.as_ptr(), len)
            .offset(pos + done as u64)
            .build()
    }

    fn sync_sqe(&self) -> squeue::Entry {
        opcode::Fsync::new(types::Fd(self.file.as_raw_fd()))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
    }

    async fn write_from(&self, mut buf: Vec<u8>, mut done: usize, pos: u64) -> BufResult<()> {
        while done < buf.len() {
            // The Vec's heap block does not move when the Vec itself is moved into the op.
            let sqe = self.write_sqe(&buf, done, pos);
            let data = WriteData {
                buf,
                _file: self.file.clone(),
            };
            let (res, b) = UnsubmittedOneshot::new(data, WriteOut, sqe).submit().await;
            buf = b;
            match res {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }
}

impl IoFile for UringFile {
    fn std_file(&self) -> &std::fs::File {
        &self.file
    }

    async fn write_all_at(&self, buf: Vec<u8>, pos: u64) -> BufResult<()> {
        self.write_from(buf, 0, pos).await
    }

    async fn sync_data(&self) -> io::Result<()> {
        let sqe = self.sync_sqe();
        UnsubmittedOneshot::new(self.file.clone(), SyncOut, sqe)
            .submit()
            .await
            .map(|_| ())
    }

    async fn write_all_at_sync(&self, buf: Vec<u8>, pos: u64) -> BufResult<()> {
        if buf.is_empty() {
            return (self.sync_data().await, buf);
        }
        let total = buf.len();
        let write = self.write_sqe(&buf, 0, pos).flags(squeue::Flags::IO_LINK);
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
                let (res, buf) = self.write_from(buf, n, pos).await;
                if let Err(e) = res {
                    return (Err(e), buf);
                }
                (self.sync_data().await, buf)
            }
            Ok(_) => (sres.map(|_| ()), buf),
        }
    }
}
