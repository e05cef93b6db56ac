//! Sequential O_DIRECT writing through io_uring: the same contract as the threaded writer
//! in `direct_write` (bytes gather in aligned blocks, full blocks are written while the
//! next ones fill, the last is zero-padded), with the blocks registered with the kernel
//! once and [`IN_FLIGHT_MAX`] writes queued on one ring by the calling thread: no helper
//! threads, no per-write page pinning.
//!
//! Invariant: a block handed to the kernel is neither touched nor freed until its
//! completion is reaped; `Drop` waits for every write still in flight.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use io_uring::{opcode, types, IoUring};

use crate::io::aligned::{Aligned, ALIGN};

/// Bytes per write.
const BLOCK_BYTES: usize = 4 << 20;
/// Writes queued at once (and blocks allocated): enough to keep a virtio disk busy.
const IN_FLIGHT_MAX: usize = 8;
const _: () = assert!(BLOCK_BYTES % ALIGN == 0 && BLOCK_BYTES <= u32::MAX as usize);

pub(crate) struct UringWriter {
    ring: IoUring,
    file: File,
    blocks: Vec<Aligned>,
    /// Whether `blocks` are registered (WRITE_FIXED); else plain WRITEs of the same blocks
    /// (registration pins memory, which RLIMIT_MEMLOCK may refuse).
    fixed: bool,
    /// Blocks neither filling nor in flight.
    free: Vec<usize>,
    /// The block filling, and how far.
    fill: usize,
    filled: usize,
    /// File position of the filling block's first byte (a multiple of [`ALIGN`]).
    at: u64,
    /// Per block in flight: its file position and length (to check the completion).
    in_flight: Vec<Option<(u64, usize)>>,
    queued: usize,
    failed: bool,
}

impl std::fmt::Debug for UringWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringWriter")
            .field("at", &self.at)
            .field("filled", &self.filled)
            .field("queued", &self.queued)
            .field("fixed", &self.fixed)
            .finish_non_exhaustive()
    }
}

impl UringWriter {
    /// `file` must be open with O_DIRECT and empty. Fails where io_uring is unavailable.
    pub fn new(file: File) -> io::Result<UringWriter> {
        let ring = IoUring::new(IN_FLIGHT_MAX as u32)?;
        let mut blocks: Vec<Aligned> = (0..IN_FLIGHT_MAX)
            .map(|_| Aligned::new(BLOCK_BYTES))
            .collect();
        let iovecs: Vec<libc::iovec> = blocks
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.bytes().as_mut_ptr().cast(),
                iov_len: BLOCK_BYTES,
            })
            .collect();
        // SAFETY: the blocks outlive the ring's use of them: they are owned by the writer,
        // never reallocated, and the ring (dropped with the writer) unregisters them.
        let fixed = unsafe { ring.submitter().register_buffers(&iovecs) }.is_ok();
        Ok(UringWriter {
            ring,
            file,
            blocks,
            fixed,
            free: (1..IN_FLIGHT_MAX).rev().collect(),
            fill: 0,
            filled: 0,
            at: 0,
            in_flight: vec![None; IN_FLIGHT_MAX],
            queued: 0,
            failed: false,
        })
    }

    pub fn is_closed(&self) -> bool {
        self.failed
    }

    pub fn block(&mut self) -> io::Result<(&mut [u8], usize)> {
        self.usable()?;
        Ok((self.blocks[self.fill].bytes(), self.filled))
    }

    pub fn advance(&mut self, n: usize) -> io::Result<()> {
        self.usable()?;
        assert!(self.filled + n <= BLOCK_BYTES);
        self.filled += n;
        Ok(())
    }

    /// After an error every later call fails: a block that was not written leaves a hole.
    pub fn hand_over(&mut self, len: usize) -> io::Result<()> {
        self.usable()?;
        assert!(len <= self.filled && (len % ALIGN == 0 || len == BLOCK_BYTES));
        self.queue_fill(len).inspect_err(|_| self.failed = true)
    }

    pub fn rewind(&mut self, filled: usize) {
        self.filled = self.filled.min(filled);
    }

    /// Write what is buffered, zero-padded to [`ALIGN`], and wait for every write. The
    /// caller syncs the file.
    pub fn finish(&mut self) -> io::Result<()> {
        self.usable()?;
        let len = self.filled.next_multiple_of(ALIGN);
        let r = if len > 0 {
            let filled = self.filled;
            self.blocks[self.fill].bytes()[filled..len].fill(0);
            self.queue_fill(len)
        } else {
            Ok(())
        };
        let r = r.and(self.reap(self.queued));
        // Finished either way: it takes no more.
        self.failed = true;
        r
    }

    fn usable(&self) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other("direct writer already finished or failed"));
        }
        Ok(())
    }

    /// Queue the filling block's first `len` bytes and continue in a free block (waiting
    /// for a write to complete when none is free), which begins with the filled bytes
    /// past `len`.
    fn queue_fill(&mut self, len: usize) -> io::Result<()> {
        let i = self.fill;
        let ptr = self.blocks[i].bytes().as_ptr();
        let fd = types::Fd(self.file.as_raw_fd());
        let entry = if self.fixed {
            opcode::WriteFixed::new(fd, ptr, len as u32, i as u16)
                .offset(self.at)
                .build()
        } else {
            opcode::Write::new(fd, ptr, len as u32)
                .offset(self.at)
                .build()
        };
        // SAFETY: the block stays alive and untouched until its completion is reaped
        // (it is in no free list until then, and Drop waits for it).
        unsafe { self.ring.submission().push(&entry.user_data(i as u64)) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        self.ring.submit()?;
        self.in_flight[i] = Some((self.at, len));
        self.queued += 1;
        self.at += len as u64;
        if self.free.is_empty() {
            self.reap(1)?;
        }
        self.fill = self.free.pop().expect("a block was freed");
        // Bytes past `len` (a block handed over short) begin the next block; the kernel
        // only reads the block in flight, so it may be read here too.
        let rest = self.filled.saturating_sub(len);
        if rest > 0 {
            let moved = self.blocks[i].bytes()[len..len + rest].to_vec();
            self.blocks[self.fill].bytes()[..rest].copy_from_slice(&moved);
        }
        self.filled = rest;
        Ok(())
    }

    /// Wait until at least `want` queued writes completed; every completion seen frees its
    /// block. The first failure (or short write) is returned after all are reaped.
    fn reap(&mut self, want: usize) -> io::Result<()> {
        let mut result = Ok(());
        let mut done = 0;
        while done < want {
            if let Err(e) = self.ring.submit_and_wait(1) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for cqe in self.ring.completion() {
                let i = cqe.user_data() as usize;
                let (at, len) = self.in_flight[i].take().expect("a queued block");
                self.queued -= 1;
                self.free.push(i);
                done += 1;
                let r = cqe.result();
                if result.is_ok() && r < 0 {
                    result = Err(io::Error::from_raw_os_error(-r));
                } else if result.is_ok() && r as usize != len {
                    result = Err(io::Error::other(format!(
                        "short O_DIRECT write at {at}: {r} of {len} bytes"
                    )));
                }
            }
        }
        result
    }
}

impl Drop for UringWriter {
    fn drop(&mut self) {
        // The kernel may still read the blocks: they are freed only after.
        while self.queued > 0 {
            if self.reap(self.queued).is_err() && self.queued > 0 {
                // Failed waits (not failed writes) leave writes we cannot see end: leak
                // the blocks rather than free memory the kernel may still read.
                std::mem::forget(std::mem::take(&mut self.blocks));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    fn open_direct(path: &std::path::Path) -> Option<File> {
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("skipped: O_DIRECT refused in {}: {e}", path.display());
                None
            }
        }
    }

    #[test]
    fn a_failed_write_is_reported_and_closes_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        let Some(direct) = open_direct(&path) else {
            return;
        };
        drop(direct);
        // Read-only: every write fails with EBADF at its completion.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .unwrap();
        let Ok(w) = UringWriter::new(file) else {
            return;
        };
        let mut w = super::super::direct_write::DirectWriter::Uring(Box::new(w));
        let block = vec![7u8; BLOCK_BYTES];
        let mut r = Ok(());
        for _ in 0..IN_FLIGHT_MAX + 2 {
            r = w.write(&block);
            if r.is_err() {
                break;
            }
        }
        let r = r.and_then(|()| w.finish());
        assert!(r.is_err(), "writes to a read-only file must fail");
        assert!(w.is_closed());
        assert!(w.write(b"x").is_err());
    }
}
