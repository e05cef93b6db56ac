//! One log's group: the frames buffered for its next write, who waits on them, and what
//! they need (a sync now, or at the periodic flush).
//!
//! The buffer is written at the segment position `write_pos - head`: first the `head`
//! bytes already in the segment's partial first page, then the group's frames, then zero
//! padding to the page's end. Writes cover whole pages because spares are zeroed past the
//! page cache, and a partial write into an uncached page would make the kernel read it
//! first. Before the head, `lead` unwritten bytes put the written part on an O_DIRECT
//! boundary of the buffer's memory, so a direct backend needs no copy.

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::config::{Durability, GROUP_BYTES_CAP};
use crate::error::{Result, StorageError};
use crate::io::aligned::ALIGN;
use crate::log::AppendAck;

/// Page size for whole-page group writes.
pub(super) const PAGE: u64 = 4096;

/// Room a group's buffer is given at its start beyond the lead and head. A buffer that
/// grows while a group fills moves and loses its O_DIRECT alignment for that group; it
/// keeps its capacity, so the following groups of that size are aligned again. Small, as
/// every log keeps its buffer.
const GROUP_RESERVE: usize = 16 << 10;

pub(crate) enum Waiter {
    Local {
        reply: oneshot::Sender<Result<AppendAck>>,
        ack: AppendAck,
    },
    Frames {
        reply: oneshot::Sender<Result<u64>>,
        end: u64,
    },
}

#[derive(Default)]
pub(crate) struct Group {
    buf: Vec<u8>,
    lead: usize,
    head: usize,
    /// A local append is in the buffer (else only frames received from an upstream).
    local: bool,
    waiters: Vec<Waiter>,
    /// Replicated frames written but not yet synced: their waiters hear at the next sync.
    unsynced_frames: Vec<(oneshot::Sender<Result<u64>>, u64)>,
    sync_requested: bool,
    /// Bytes written since the last sync.
    unsynced_bytes: u64,
    /// When the oldest unsynced write was made (the periodic flush is due from it).
    pub unsynced_since: Option<Instant>,
}

impl Group {
    /// Bytes of frames in the buffer (the carried page head not counted).
    pub fn frame_bytes(&self) -> u64 {
        (self.buf.len() - self.lead - self.head) as u64
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// No frames buffered, nobody waiting, nothing written unsynced.
    pub fn is_idle(&self) -> bool {
        self.buf.is_empty()
            && self.waiters.is_empty()
            && self.unsynced_frames.is_empty()
            && self.unsynced_since.is_none()
    }

    /// Before a group's first frame: carry `head`, the written bytes of the partial page
    /// that `write_pos` ends in, so that the group's write starts on a page boundary.
    pub fn start(&mut self, head: &[u8], write_pos: u64) {
        if !self.buf.is_empty() {
            return;
        }
        debug_assert_eq!(head.len() as u64, write_pos % PAGE);
        self.buf.reserve(GROUP_RESERVE);
        self.lead = self.buf.as_ptr().align_offset(ALIGN);
        self.buf.resize(self.lead, 0);
        self.buf.extend_from_slice(head);
        self.head = head.len();
    }

    /// `local`: an append made here, not a frame received from an upstream.
    pub fn push(&mut self, frame: &[u8], local: bool) {
        self.local |= local;
        self.buf.extend_from_slice(frame);
    }

    pub fn request_sync(&mut self) {
        self.sync_requested = true;
    }

    pub fn wait(&mut self, w: Waiter) {
        self.waiters.push(w);
    }

    /// Whether this commit syncs: asked, forced, or the unsynced bytes would pass the cap.
    pub fn needs_sync(&self, force: bool) -> bool {
        force
            || self.sync_requested
            || self.unsynced_bytes + self.frame_bytes() > GROUP_BYTES_CAP as u64
    }

    /// Nothing to write and nothing to sync.
    pub fn nothing_to_do(&self, sync: bool) -> bool {
        self.frame_bytes() == 0 && !(sync && self.unsynced_bytes > 0)
    }

    /// Whether the buffer holds only frames received from an upstream.
    pub fn replicated_only(&self) -> bool {
        !self.local
    }

    /// The buffer, its unwritten lead and its carried head (the bytes to write are
    /// `buf[lead..]`, from the head's page start); the group starts afresh.
    pub fn take(&mut self) -> (Vec<u8>, usize, usize) {
        self.local = false;
        let lead = std::mem::replace(&mut self.lead, 0);
        let head = std::mem::replace(&mut self.head, 0);
        (std::mem::take(&mut self.buf), lead, head)
    }

    /// The written buffer back, emptied, to be reused (unless it grew far too large).
    pub fn give_back(&mut self, mut buf: Vec<u8>) {
        buf.clear();
        if buf.capacity() > 2 * GROUP_BYTES_CAP {
            buf = Vec::new();
        }
        self.buf = buf;
    }

    /// The group's `len` bytes were written; `synced`: and synced, with everything before.
    /// Completes the waiters the write satisfied.
    pub fn written(&mut self, len: u64, synced: bool) {
        if synced {
            self.sync_requested = false;
            self.unsynced_bytes = 0;
            self.unsynced_since = None;
            for (reply, end) in self.unsynced_frames.drain(..) {
                let _ = reply.send(Ok(end));
            }
        } else {
            self.unsynced_bytes += len;
            self.unsynced_since.get_or_insert_with(Instant::now);
        }
        for w in self.waiters.drain(..) {
            match w {
                Waiter::Local { reply, mut ack } => {
                    if synced {
                        ack.durability = Durability::Fsync;
                    }
                    let _ = reply.send(Ok(ack));
                }
                Waiter::Frames { reply, end } if synced => {
                    let _ = reply.send(Ok(end));
                }
                Waiter::Frames { reply, end } => self.unsynced_frames.push((reply, end)),
            }
        }
    }

    /// The group's write failed: every waiter, and every writer of unsynced frames, gets
    /// `err`.
    pub fn failed(&mut self, err: &StorageError) {
        for (reply, _) in self.unsynced_frames.drain(..) {
            let _ = reply.send(Err(copy_err(err)));
        }
        for w in self.waiters.drain(..) {
            match w {
                Waiter::Local { reply, .. } => {
                    let _ = reply.send(Err(copy_err(err)));
                }
                Waiter::Frames { reply, .. } => {
                    let _ = reply.send(Err(copy_err(err)));
                }
            }
        }
        self.sync_requested = false;
    }
}

/// A fresh error of the same kind for each waiter (io errors cannot be cloned).
fn copy_err(e: &StorageError) -> StorageError {
    match e {
        StorageError::DiskFull { path, source } => StorageError::DiskFull {
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        StorageError::Io { path, source } => StorageError::Io {
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        StorageError::Poisoned { log, cause } => StorageError::Poisoned {
            log: log.clone(),
            cause: cause.clone(),
        },
        other => StorageError::InvalidInput(other.to_string()),
    }
}
