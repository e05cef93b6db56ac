//! Memory aligned for O_DIRECT: the zeros a spare is filled with and the blocks of a
//! segment received whole are written from it; and the O_DIRECT descriptor of direct
//! group commits.

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::AppendIo;

/// O_DIRECT alignment of offsets, lengths and memory (the largest logical block size in
/// common use; 512-byte devices accept it too).
pub const ALIGN: usize = 4096;

/// A zeroed heap buffer whose usable part starts on an [`ALIGN`] boundary (the Vec's heap
/// block does not move when the buffer is sent to another thread, so the offset stays
/// right).
pub(crate) struct Aligned {
    v: Vec<u8>,
    off: usize,
    len: usize,
}

impl Aligned {
    pub(crate) fn new(len: usize) -> Aligned {
        let v = vec![0u8; len + ALIGN];
        let off = v.as_ptr().align_offset(ALIGN);
        Aligned { v, off, len }
    }

    pub(crate) fn bytes(&mut self) -> &mut [u8] {
        &mut self.v[self.off..self.off + self.len]
    }
}

/// Whether `bytes` at `pos` meet O_DIRECT's alignment of offset, length and memory.
fn direct_aligned(bytes: &[u8], pos: u64) -> bool {
    pos % ALIGN as u64 == 0
        && bytes.len() % ALIGN == 0
        && !bytes.is_empty()
        && (bytes.as_ptr() as usize) % ALIGN == 0
}

/// A segment's second descriptor, opened with O_DIRECT, for the group writes `append_io`
/// sends direct; given up for good at its first EINVAL (a file system or device that
/// wants more alignment than [`ALIGN`]), after which every write is buffered.
///
/// It also knows whether the file holds writes no sync covered yet. `RWF_DSYNC` makes
/// durable only the write it is on (a device with FUA writes that one through its cache,
/// nothing else; `vfs_fsync_range` writes back only that range of the page cache), so a
/// synced write uses it only when nothing unsynced came before, and otherwise is
/// followed by a whole-file fdatasync, which flushes every earlier write.
#[derive(Debug)]
pub(crate) struct DirectFd<T> {
    fd: T,
    append_io: AppendIo,
    refused: Cell<bool>,
    unsynced: Cell<bool>,
}

impl<T> DirectFd<T> {
    /// The direct descriptor of `path` (`open` wraps the file), or `None` where
    /// `append_io` sends nothing direct or the file system refuses O_DIRECT.
    pub(crate) fn open(
        path: &Path,
        append_io: AppendIo,
        wrap: impl FnOnce(File) -> T,
    ) -> io::Result<Option<DirectFd<T>>> {
        if append_io == AppendIo::Buffered {
            return Ok(None);
        }
        let opened = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path);
        match opened {
            Ok(f) => Ok(Some(DirectFd {
                fd: wrap(f),
                append_io,
                refused: Cell::new(false),
                unsynced: Cell::new(false),
            })),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(path = %path.display(), "O_DIRECT refused; appends stay buffered");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The descriptor to write `bytes` at `pos` through, if the write goes direct.
    pub(crate) fn pick(&self, bytes: &[u8], pos: u64, replicated: bool) -> Option<&T> {
        let go = !self.refused.get()
            && self.append_io.direct_for(replicated)
            && direct_aligned(bytes, pos);
        go.then_some(&self.fd)
    }

    /// The write flags of a direct write: `RWF_DSYNC` when it is synced and that alone
    /// makes the file durable; else none, and a synced write needs an fdatasync after.
    pub(crate) fn flags(&self, sync: bool) -> i32 {
        if sync && !self.unsynced.get() {
            libc::RWF_DSYNC
        } else {
            0
        }
    }

    /// A write to the file (direct or buffered, by any path of the backend) ended:
    /// `synced`: it and everything before it are durable.
    pub(crate) fn wrote(&self, synced: bool) {
        self.unsynced.set(!synced);
    }

    /// Whether `res` of a direct write means O_DIRECT is refused here: if so, it is given
    /// up and the caller writes the bytes again, buffered.
    pub(crate) fn refused<R>(&self, res: &io::Result<R>) -> bool {
        let refused = matches!(res, Err(e) if e.raw_os_error() == Some(libc::EINVAL));
        if refused {
            tracing::warn!(
                "a direct write was refused (EINVAL); this segment's appends stay buffered"
            );
            self.refused.set(true);
        }
        refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_writes_go_by_mode_and_alignment_and_stop_at_einval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        std::fs::write(&path, vec![0u8; 8192]).unwrap();
        assert!(DirectFd::open(&path, AppendIo::Buffered, |f| f)
            .unwrap()
            .is_none());
        let Some(d) = DirectFd::open(&path, AppendIo::Replicated, |f| f).unwrap() else {
            return; // no O_DIRECT on this file system: nothing goes direct
        };
        let mut block = Aligned::new(2 * ALIGN);
        let bytes = block.bytes();
        assert!(d.pick(bytes, 0, true).is_some());
        assert!(
            d.pick(bytes, 0, false).is_none(),
            "a local append stays buffered"
        );
        assert!(d.pick(bytes, 512, true).is_none(), "offset");
        assert!(d.pick(&bytes[..100], 0, true).is_none(), "length");
        assert!(d.pick(&bytes[1..=ALIGN], 0, true).is_none(), "memory");
        assert!(!d.refused(&Ok(())));
        assert!(!d.refused::<()>(&Err(io::Error::from_raw_os_error(libc::EIO))));
        assert!(d.pick(bytes, 0, true).is_some(), "other errors keep it");
        assert!(d.refused::<()>(&Err(io::Error::from_raw_os_error(libc::EINVAL))));
        assert!(d.pick(bytes, 0, true).is_none(), "given up after EINVAL");
    }

    #[test]
    fn dsync_alone_only_when_nothing_unsynced_came_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        std::fs::write(&path, vec![0u8; 8192]).unwrap();
        let Some(d) = DirectFd::open(&path, AppendIo::Direct, |f| f).unwrap() else {
            return;
        };
        assert_eq!(d.flags(true), libc::RWF_DSYNC);
        assert_eq!(d.flags(false), 0);
        d.wrote(false);
        assert_eq!(
            d.flags(true),
            0,
            "an unsynced write before: fdatasync after"
        );
        d.wrote(true);
        assert_eq!(d.flags(true), libc::RWF_DSYNC, "all synced again");
    }
}
