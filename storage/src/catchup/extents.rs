//! What the filesystem holds under a segment file: giving unused blocks back (a punched
//! hole), and asking whether a block was ever written (FIEMAP). A segment is zero-filled
//! (every block written) or only allocated (unwritten extents, which read as zeros but
//! make each fdatasync into them also commit their conversion); these are the tools for
//! the second kind.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::io::meta::fallocate;

/// Punch out the blocks of `path` past `len` (see `catchup::release_tail`). Only for
/// allocated-only segments: unwritten extents go at once, written ones cost a write per
/// block, so a zeroed tail is kept.
pub(crate) fn release_tail(path: &Path, len: u64) {
    let from = len.next_multiple_of(4096);
    let released = OpenOptions::new().write(true).open(path).and_then(|f| {
        let cap = f.metadata()?.len();
        if from >= cap {
            return Ok(());
        }
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        fallocate(&f, mode, from, cap - from)
    });
    if let Err(e) = released {
        tracing::debug!(path = %path.display(), error = %e, "could not release a sealed segment's unused blocks");
    }
}

/// Whether the byte at `pos` of `f` was never written: it lies in a hole or in an extent
/// fallocate allocated but nothing wrote. `None` where the filesystem cannot say (no
/// FIEMAP, as on tmpfs). Asked of extents, not of the page cache: `lseek(SEEK_DATA)`
/// counts an unwritten block as data once a read has cached its zeros.
pub(crate) fn never_written(f: &File, pos: u64) -> Option<bool> {
    // struct fiemap_extent and struct fiemap with room for one extent (linux/fiemap.h).
    #[repr(C)]
    #[derive(Default)]
    struct Extent {
        logical: u64,
        physical: u64,
        length: u64,
        reserved64: [u64; 2],
        flags: u32,
        reserved: [u32; 3],
    }
    #[repr(C)]
    #[derive(Default)]
    struct Map {
        start: u64,
        length: u64,
        flags: u32,
        mapped_extents: u32,
        extent_count: u32,
        reserved: u32,
        extents: [Extent; 1],
    }
    const EXTENT_UNWRITTEN: u32 = 0x800;
    // _IOWR('f', 11, struct fiemap): the size in the number is the header's, 32 bytes.
    const FS_IOC_FIEMAP: libc::Ioctl = libc::_IOWR::<[u64; 4]>(b'f' as u32, 11);
    let mut map = Map {
        start: pos,
        length: 1,
        extent_count: 1,
        ..Map::default()
    };
    // SAFETY: `map` is a struct fiemap followed by the one extent its `extent_count`
    // allows the kernel to fill; it outlives the call.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_FIEMAP, &mut map as *mut Map) };
    if r != 0 {
        return None;
    }
    Some(map.mapped_extents == 0 || map.extents[0].flags & EXTENT_UNWRITTEN != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    /// Only meaningful where the filesystem answers FIEMAP (ext4, xfs, btrfs); elsewhere
    /// `never_written` must say it does not know, never guess.
    #[test]
    fn never_written_tells_unwritten_and_hole_blocks_from_written_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let size = 1 << 20;
        if fallocate(&f, 0, 0, size).is_err() || never_written(&f, 0).is_none() {
            return;
        }
        assert_eq!(never_written(&f, size - 1), Some(true), "allocated only");
        f.write_all_at(&[0u8; 8192], 0).unwrap();
        f.sync_data().unwrap();
        assert_eq!(never_written(&f, 0), Some(false), "written (zeros count)");
        assert_eq!(never_written(&f, 8191), Some(false));
        // A read caches the unwritten block's zeros; the extent stays unwritten.
        let mut buf = [1u8; 4096];
        f.read_exact_at(&mut buf, size - 4096).unwrap();
        assert_eq!(buf, [0u8; 4096]);
        assert_eq!(never_written(&f, size - 1), Some(true));
        release_tail(&path, 8192);
        assert_eq!(never_written(&f, size - 1), Some(true), "a hole");
        assert_eq!(never_written(&f, 100), Some(false));
    }
}
