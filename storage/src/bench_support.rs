//! Entry points for the criterion benches (benches/format.rs) into private hot paths.
//! Not an API: hidden from the docs and free to change with the code it drives.

use tokio::sync::oneshot;

use crate::config::Durability;
use crate::log::AppendAck;
use crate::log_writer::group::{Group, Waiter};

/// A group buffer as the writer keeps it between commits.
#[derive(Default)]
pub struct GroupFill {
    group: Group,
}

impl std::fmt::Debug for GroupFill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupFill").finish_non_exhaustive()
    }
}

impl GroupFill {
    /// One commit's worth of work on the buffer, as the writer does it: carry the partial
    /// page of `segment` up to `write_pos`, push each frame with a waiter, take the buffer
    /// (what a write would get), give it back, and complete the waiters as synced.
    /// Returns the bytes the write would have covered.
    pub fn commit(&mut self, segment: &[u8], write_pos: u64, frames: &[Vec<u8>]) -> usize {
        let from = (write_pos - write_pos % 4096) as usize;
        self.group
            .start(&segment[from..write_pos as usize], write_pos);
        let mut replies = Vec::with_capacity(frames.len());
        for (i, f) in frames.iter().enumerate() {
            self.group.push(f, true);
            let (reply, rx) = oneshot::channel();
            replies.push(rx);
            self.group.wait(Waiter::Local {
                reply,
                ack: AppendAck {
                    base_offset: i as u64,
                    record_count: 1,
                    epoch: 1,
                    durability: Durability::Unsynced,
                    duplicate: false,
                },
            });
        }
        let (buf, _lead, _head) = self.group.take();
        let len = buf.len();
        self.group.give_back(buf);
        self.group.written(len as u64, true);
        // The receivers lived through `written`: each send reached a waiting append.
        drop(replies);
        len
    }
}
