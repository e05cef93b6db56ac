//! Sequential O_DIRECT writing of a file that is written once, front to back (a segment
//! received whole): bytes gather in an aligned buffer, full buffers are written (through
//! io_uring, `uring_write`, or by helper threads here) while the next one fills, the last
//! one is padded with zeros to the block size.
//!
//! Why: a replica copying gigabytes in a catch-up would otherwise push all of them through
//! the page cache: one more copy per byte into freshly allocated cache pages, and eviction
//! of what its readers had cached (figures: docs/decisions/0013-segment-placement-and-writer-split.md). The zero padding reads as
//! the clean end of a segment, as in a pre-zeroed one.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;

use parking_lot::Mutex;
use std::thread::JoinHandle;

use crate::io::aligned::{Aligned, ALIGN};
use crate::io::ImportIo;

/// Bytes per write.
const BLOCK_BYTES: usize = 4 << 20;
/// Threads writing blocks at once: one pwrite at a time keeps a virtio disk at queue depth
/// one, well below what it does with several writes in flight.
const WRITERS: usize = 4;
/// Blocks handed to the writers and not yet written, at most (besides the one filling).
const IN_FLIGHT_MAX: usize = 2 * WRITERS;
const _: () = assert!(BLOCK_BYTES % ALIGN == 0 && IN_FLIGHT_MAX >= WRITERS);

/// A full (or final, padded) buffer and where it goes.
struct Block {
    buf: Aligned,
    at: u64,
    len: usize,
}

/// The O_DIRECT writer of one staged segment: through io_uring, or helper threads.
#[derive(Debug)]
pub(crate) enum DirectWriter {
    /// Boxed: the ring's state is large beside the threads' handle.
    Uring(Box<super::uring_write::UringWriter>),
    Threads(ThreadWriter),
}

impl DirectWriter {
    /// `file` must be open with O_DIRECT and empty. io_uring falls back to the threads
    /// where no ring can be created.
    pub fn new(file: File, how: ImportIo) -> io::Result<DirectWriter> {
        if how == ImportIo::Uring {
            match super::uring_write::UringWriter::new(file.try_clone()?) {
                Ok(w) => return Ok(DirectWriter::Uring(Box::new(w))),
                Err(e) => tracing::debug!(error = %e, "no io_uring for imports: threads"),
            }
        }
        ThreadWriter::new(file).map(DirectWriter::Threads)
    }

    pub fn is_closed(&self) -> bool {
        match self {
            DirectWriter::Uring(w) => w.is_closed(),
            DirectWriter::Threads(w) => w.is_closed(),
        }
    }

    /// Append `data` (written once a block is full, or by [`DirectWriter::finish`]). After
    /// an error every later call fails: a block that was not written leaves a hole.
    pub fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let (block, filled) = self.block()?;
            let full = block.len();
            let n = data.len().min(full - filled);
            block[filled..filled + n].copy_from_slice(&data[..n]);
            self.advance(n)?;
            if filled + n == full {
                self.hand_over(full)?;
            }
            data = &data[n..];
        }
        Ok(())
    }

    /// The block being filled (all [`BLOCK_BYTES`] of it) and how many of its bytes are
    /// filled: bytes may be put after them in place (a receive straight into the block),
    /// then [`DirectWriter::advance`] takes them.
    pub fn block(&mut self) -> io::Result<(&mut [u8], usize)> {
        match self {
            DirectWriter::Uring(w) => w.block(),
            DirectWriter::Threads(w) => w.block(),
        }
    }

    /// `n` more bytes of the block are filled.
    pub fn advance(&mut self, n: usize) -> io::Result<()> {
        match self {
            DirectWriter::Uring(w) => w.advance(n),
            DirectWriter::Threads(w) => w.advance(n),
        }
    }

    /// Hand the block's first `len` bytes (a multiple of [`ALIGN`], or the whole block)
    /// to be written; the filled bytes after them begin the next block. After an error
    /// every later call fails: a block that was not written leaves a hole.
    pub fn hand_over(&mut self, len: usize) -> io::Result<()> {
        match self {
            DirectWriter::Uring(w) => w.hand_over(len),
            DirectWriter::Threads(w) => w.hand_over(len),
        }
    }

    /// Forget the filling block's bytes from `filled` on (they were never written).
    pub fn rewind(&mut self, filled: usize) {
        match self {
            DirectWriter::Uring(w) => w.rewind(filled),
            DirectWriter::Threads(w) => w.rewind(filled),
        }
    }

    pub fn finish(&mut self) -> io::Result<()> {
        match self {
            DirectWriter::Uring(w) => w.finish(),
            DirectWriter::Threads(w) => w.finish(),
        }
    }
}

/// Full blocks written by a pool of helper threads, one pwrite each.
#[derive(Debug)]
pub(crate) struct ThreadWriter {
    inner: Option<Inner>,
}

struct Inner {
    fill: Aligned,
    filled: usize,
    /// File position of `fill[0]` (a multiple of [`ALIGN`]).
    at: u64,
    to_writer: SyncSender<Block>,
    done: Receiver<io::Result<Aligned>>,
    in_flight: usize,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("filled", &self.filled)
            .field("at", &self.at)
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

impl ThreadWriter {
    /// `file` must be open with O_DIRECT and empty.
    pub fn new(file: File) -> io::Result<ThreadWriter> {
        let (to_writer, blocks) = mpsc::sync_channel::<Block>(IN_FLIGHT_MAX);
        let (back, done) = mpsc::sync_channel(IN_FLIGHT_MAX);
        let (file, blocks) = (Arc::new(file), Arc::new(Mutex::new(blocks)));
        let threads = (0..WRITERS)
            .map(|_| {
                let (file, blocks, back) = (file.clone(), blocks.clone(), back.clone());
                std::thread::Builder::new()
                    .name("spool-import".into())
                    .spawn(move || loop {
                        // The lock is held only while taking a block, not while writing it.
                        let next = blocks.lock().recv();
                        let Ok(mut b) = next else { return };
                        let r = file.write_all_at(&b.buf.bytes()[..b.len], b.at);
                        if back.send(r.map(|()| b.buf)).is_err() {
                            return;
                        }
                    })
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(ThreadWriter {
            inner: Some(Inner {
                fill: Aligned::new(BLOCK_BYTES),
                filled: 0,
                at: 0,
                to_writer,
                done,
                in_flight: 0,
                threads,
            }),
        })
    }

    /// A write failed (or the writer finished): it takes no more.
    pub fn is_closed(&self) -> bool {
        self.inner.is_none()
    }

    fn inner(&mut self) -> io::Result<&mut Inner> {
        self.inner
            .as_mut()
            .ok_or_else(|| io::Error::other("direct writer already finished"))
    }

    fn block(&mut self) -> io::Result<(&mut [u8], usize)> {
        let w = self.inner()?;
        Ok((w.fill.bytes(), w.filled))
    }

    fn advance(&mut self, n: usize) -> io::Result<()> {
        let w = self.inner()?;
        assert!(w.filled + n <= BLOCK_BYTES);
        w.filled += n;
        Ok(())
    }

    /// After an error every later call fails: a block that was not written leaves a hole.
    fn hand_over(&mut self, len: usize) -> io::Result<()> {
        let w = self.inner()?;
        assert!(len <= w.filled && (len % ALIGN == 0 || len == BLOCK_BYTES));
        let r = w.send(len);
        if r.is_err() {
            self.inner = None;
        }
        r
    }

    fn rewind(&mut self, filled: usize) {
        if let Some(w) = &mut self.inner {
            w.filled = w.filled.min(filled);
        }
    }

    /// Write what is buffered, zero-padded to [`ALIGN`], and wait for every write. The
    /// caller syncs the file.
    pub fn finish(&mut self) -> io::Result<()> {
        let mut w = self
            .inner
            .take()
            .ok_or_else(|| io::Error::other("finished twice"))?;
        let len = w.filled.next_multiple_of(ALIGN);
        if len > 0 {
            let filled = w.filled;
            w.fill.bytes()[filled..len].fill(0);
            w.send(len)?;
        }
        let mut result = Ok(());
        while w.in_flight > 0 {
            w.in_flight -= 1;
            if let Err(e) = w
                .done
                .recv()
                .map_err(|_| io::Error::other("writer thread gone"))?
            {
                result = Err(e);
            }
        }
        drop(w.to_writer);
        for t in w.threads {
            let _ = t.join();
        }
        result
    }
}

impl Inner {
    /// Hand `fill[..len]` to the writer thread and continue in another buffer, which
    /// begins with the filled bytes past `len`.
    fn send(&mut self, len: usize) -> io::Result<()> {
        // Buffers are made until IN_FLIGHT_MAX are out, then reused as writes complete.
        let next = match self.in_flight {
            n if n < IN_FLIGHT_MAX => Aligned::new(BLOCK_BYTES),
            _ => {
                self.in_flight -= 1;
                self.done
                    .recv()
                    .map_err(|_| io::Error::other("writer thread gone"))??
            }
        };
        let mut buf = std::mem::replace(&mut self.fill, next);
        // Bytes past `len` (a block handed over short) begin the next block.
        let rest = self.filled.saturating_sub(len);
        self.fill.bytes()[..rest].copy_from_slice(&buf.bytes()[len..len + rest]);
        self.to_writer
            .send(Block {
                buf,
                at: self.at,
                len,
            })
            .map_err(|_| io::Error::other("writer thread gone"))?;
        self.in_flight += 1;
        self.at += len as u64;
        self.filled = rest;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    /// Bytes crossing more blocks than are in flight, written in steps of every size, read
    /// back whole, the last block zero-padded; `how` names the writer that must be used.
    fn writes_in_order_and_pads_the_last_block(how: ImportIo) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) => {
                // tmpfs before Linux 6.6 refuses O_DIRECT; imports then go buffered.
                eprintln!("skipped: O_DIRECT refused in {}: {e}", dir.path().display());
                return;
            }
        };
        let mut w = DirectWriter::new(file, how).unwrap();
        if how == ImportIo::Uring && !matches!(w, DirectWriter::Uring(_)) {
            eprintln!("skipped: no io_uring here");
            return;
        }
        let want: Vec<u8> = (0..(BLOCK_BYTES * (IN_FLIGHT_MAX + 3) + 12_345))
            .map(|i| (i * 31 + i / 4099) as u8)
            .collect();
        let mut rest = &want[..];
        let mut step = 1usize;
        while !rest.is_empty() {
            let n = step.min(rest.len());
            w.write(&rest[..n]).unwrap();
            rest = &rest[n..];
            step = step * 7 % 3_000_017 + 1;
        }
        w.finish().unwrap();
        assert!(w.write(b"late").is_err(), "a finished writer takes no more");
        let got = std::fs::read(&path).unwrap();
        assert_eq!(got.len(), want.len().next_multiple_of(ALIGN));
        assert!(got[..want.len()] == want[..], "bytes differ");
        assert!(got[want.len()..].iter().all(|&b| b == 0));
    }

    #[test]
    fn threads_write_in_order_and_pad_the_last_block() {
        writes_in_order_and_pads_the_last_block(ImportIo::Threads);
    }

    #[test]
    fn io_uring_writes_in_order_and_pads_the_last_block() {
        writes_in_order_and_pads_the_last_block(ImportIo::Uring);
    }
}
