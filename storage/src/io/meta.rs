//! Metadata operations of the IO trait: renames, removals, directory and small-file syncs,
//! small-file writes and the preparation of segment files (zero-filled or allocated).
//!
//! Every change a log makes to its directory goes through [`MetaIo`], so that the fault
//! backend can fail each step (and count it) like a data write. They are blocking calls:
//! they run on the threads that may wait (the metadata worker, the spare preparer, the
//! threads that open logs), never inside a storage-thread future. The std implementations
//! below are the defaults; io_uring has no faster path for them.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use super::aligned::{Aligned, ALIGN};

/// Bytes of zeros per write when zero-filling.
const ZERO_CHUNK: usize = 1 << 20;
const _: () = assert!(ZERO_CHUNK % ALIGN == 0);

/// The metadata side of an IO backend. Object safe and shareable, so that threads other
/// than the storage thread hold it as `Arc<dyn MetaIo>`.
pub trait MetaIo: Send + Sync + std::fmt::Debug + 'static {
    /// fdatasync a segment recovery opens, before the storage thread has it. Through the
    /// backend like every other sync of segment data, so that the fault backend's
    /// power-loss model sees it.
    fn sync_at_open(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }

    /// rename(2); durable once the directory is synced.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    /// unlink(2); durable once the directory is synced.
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    /// fsync of a directory: its entries (renames, creations, removals) are durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    /// fsync of a whole small file (metadata, an index, a spare or staged segment).
    fn sync_file(&self, file: &File) -> io::Result<()> {
        file.sync_all()
    }

    /// Create (or truncate) `path` holding `contents`, not synced; the file is returned
    /// open for reading and writing.
    fn write_file(&self, path: &Path, contents: &[u8]) -> io::Result<File> {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        f.write_all(contents)?;
        Ok(f)
    }

    /// Write zeros over the first `size` bytes of `path` (created if missing) and set its
    /// length to `size`; not synced. See [`zero_fill`].
    fn zero_fill(&self, path: &Path, size: u64) -> io::Result<()> {
        zero_fill(path, size)
    }

    /// Create `path` (truncated) with `size` bytes allocated but not written (fallocate);
    /// not synced. `Unsupported` where the filesystem cannot.
    fn allocate(&self, path: &Path, size: u64) -> io::Result<()> {
        allocate(path, size)
    }
}

/// `fallocate(2)` on `f` over `[offset, offset + len)` (sizes up to a segment's, within
/// off_t range).
pub(crate) fn fallocate(f: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: a plain syscall on a descriptor `f` owns for the call's duration.
    let r = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            mode,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn allocate(path: &Path, size: u64) -> io::Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    match fallocate(&f, 0, 0, size) {
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
            ) =>
        {
            Err(io::Error::new(io::ErrorKind::Unsupported, e))
        }
        r => r,
    }
}

/// Zeros over the first `size` bytes of `path`, with O_DIRECT where the filesystem allows:
/// they go from one buffer to the disk without passing through the page cache, so the
/// zeroing costs no cache churn. Pages the writer later fills are not cached then; it
/// writes whole pages, so the kernel never reads one back to fill it partly.
fn zero_fill(path: &Path, size: u64) -> io::Result<()> {
    let open = |flags| {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(flags)
            .open(path)
    };
    // No O_DIRECT here (some tmpfs): through the page cache.
    let (mut f, mut direct) = match open(libc::O_DIRECT) {
        Ok(f) => (f, true),
        Err(_) => (open(0)?, false),
    };
    let mut backing = Aligned::new(ZERO_CHUNK);
    let zeros = &*backing.bytes();
    // Whole aligned blocks past `size` are fine: the length is set after.
    let end = size.next_multiple_of(ALIGN as u64);
    let mut pos = 0u64;
    while pos < end {
        let n = (end - pos).min(ZERO_CHUNK as u64) as usize;
        match f.write_all_at(&zeros[..n], pos) {
            Ok(()) => pos += n as u64,
            Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => {
                // The filesystem refused the alignment after all: go on buffered.
                (f, direct) = (open(0)?, false);
            }
            Err(e) => return Err(e),
        }
    }
    f.set_len(size)
}
