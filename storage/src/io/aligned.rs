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
