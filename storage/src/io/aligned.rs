//! Memory aligned for O_DIRECT: the zeros a spare is filled with and the blocks of a
//! segment received whole are written from it.

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
pub(crate) fn direct_aligned(bytes: &[u8], pos: u64) -> bool {
    pos % ALIGN as u64 == 0
        && bytes.len() % ALIGN == 0
        && !bytes.is_empty()
        && (bytes.as_ptr() as usize) % ALIGN == 0
}

/// A second descriptor of `path` for direct group writes, or `None` where the file system
/// refuses O_DIRECT (the writes then stay buffered).
pub(crate) fn open_direct(path: &std::path::Path) -> std::io::Result<Option<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let opened = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path);
    match opened {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::warn!(path = %path.display(), "O_DIRECT refused; appends stay buffered");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}
