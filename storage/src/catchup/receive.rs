//! Receiving a segment straight into the staging file's O_DIRECT blocks: the socket's
//! bytes land in the block the direct writer fills and are checked there, so no copy sits
//! between the socket and the disk.
//!
//! Every byte handed to the writer is checked: a full block goes only up to the page its
//! last whole frame ends in, and the rest (that page's head and the next frame's first
//! bytes) begins the next block. So a receive cut anywhere resumes at the last whole frame
//! by dropping the unchecked bytes of the block being filled. A frame larger than a block
//! cannot be checked in one; the caller takes it and the rest of the receive through
//! [`SegmentImport::write`].

use super::import::{SegmentImport, Sink};
use crate::error::{IoContext, Result};
use crate::format;
use crate::io::aligned::ALIGN;

impl SegmentImport {
    /// Where the next received bytes go: the free part of the block being filled. `None`
    /// where the import is buffered, or the block is full of one unfinished frame (see
    /// [`SegmentImport::take_unchecked`]); then whole frames go to `write`.
    pub fn receive_buffer(&mut self) -> Option<&mut [u8]> {
        match &mut self.sink {
            Sink::Direct(w) => match w.block() {
                Ok((block, filled)) if filled < block.len() => Some(&mut block[filled..]),
                _ => None,
            },
            Sink::Buffered { .. } => None,
        }
    }

    /// `n` bytes were put at the start of [`SegmentImport::receive_buffer`]: the frames
    /// they complete are checked (and counted staged), and a full block goes to be
    /// written up to its last whole frame's page. Blocking (CRC of up to a block, and the
    /// write may wait for a slot).
    pub fn received(&mut self, n: usize) -> Result<()> {
        let mut sink = std::mem::replace(&mut self.sink, Sink::Buffered { writeback_from: 0 });
        let r = self.check_received(&mut sink, n);
        self.sink = sink;
        r
    }

    fn check_received(&mut self, sink: &mut Sink, n: usize) -> Result<()> {
        let path = self.staged.path.clone();
        let Sink::Direct(w) = sink else {
            return Err(self.reject("a buffered import takes whole frames".into()));
        };
        let (block, filled) = w.block().at(&path)?;
        let (end, full) = (filled + n, block.len());
        assert!(end <= full, "received past the block");
        let mut from = self.unchecked_from;
        self.check_size(end - from)?;
        let whole = format::whole_frames_len(&block[from..end])
            .map_err(|e| self.reject(format!("received bytes: {e}")))?;
        self.stage_checked(&block[from..from + whole])?;
        from += whole;
        w.advance(n).at(&path)?;
        let keep = from - from % ALIGN;
        if end == full && keep > 0 {
            w.hand_over(keep).at(&path)?;
            from -= keep;
        }
        self.unchecked_from = from;
        Ok(())
    }

    /// Whether received bytes are not yet checked whole frames.
    pub(super) fn has_unchecked(&mut self) -> bool {
        let from = self.unchecked_from;
        match &mut self.sink {
            Sink::Direct(w) => w.block().is_ok_and(|(_, filled)| filled > from),
            Sink::Buffered { .. } => false,
        }
    }

    /// The received bytes past the last whole frame, taken out of the block (for a frame
    /// larger than a block, which goes to [`SegmentImport::write`] whole).
    pub fn take_unchecked(&mut self) -> Vec<u8> {
        let from = self.unchecked_from;
        let Sink::Direct(w) = &mut self.sink else {
            return Vec::new();
        };
        let taken = match w.block() {
            Ok((block, filled)) => block[from..filled].to_vec(),
            Err(_) => Vec::new(),
        };
        w.rewind(from);
        taken
    }

    /// Before a receive resumes at [`SegmentImport::next_offset`] (the last one failed, or
    /// was dropped midway): the unchecked bytes past the last whole frame go.
    pub fn discard_unchecked(&mut self) {
        let from = self.unchecked_from;
        if let Sink::Direct(w) = &mut self.sink {
            w.rewind(from);
        }
    }
}
