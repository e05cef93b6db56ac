//! The durable mark after the active segment's frames (see [`format::DurableMark`]): every
//! group write carries one claiming what was synced before it, and an idle log's is
//! rewritten to claim everything synced. Its claims are true whether or not the mark
//! itself reaches the disk, which is what lets recovery tell damage from a torn tail.

use std::os::unix::fs::FileExt;

use super::group::PAGE;
use super::LogWriter;
use crate::format;
use crate::io::IoFile;

impl<F: IoFile> LogWriter<F> {
    /// The mark for byte `own_pos` of the active segment: it claims what is durable now,
    /// which a write carrying it cannot make untrue whether or not it completes.
    fn mark_at(&self, own_pos: u64) -> format::DurableMark {
        format::DurableMark {
            segment_base: self.active.seg().base_offset,
            own_pos,
            synced_len: self.active.durable_pos(),
            synced_next: self.active.durable_next(),
        }
    }

    /// Append the durable mark for `own_pos` (where the group's frames end) to a group's
    /// buffer, if the segment has room; returns the bytes added.
    pub(super) fn push_mark(&self, buf: &mut Vec<u8>, own_pos: u64) -> u64 {
        if own_pos + format::MARK_BYTES as u64 > self.active.seg().capacity() {
            return 0;
        }
        buf.extend_from_slice(&self.mark_at(own_pos).encode());
        format::MARK_BYTES as u64
    }

    /// Rewrite the mark after the durable end so that it claims everything synced (the one
    /// written with the last group claims only what was synced before it). A plain page
    /// write, not synced: the mark is a hint whose claims are true either way, and after a
    /// process crash the page cache holds it. Skipped while unsynced frames follow.
    pub fn refresh_mark(&mut self) {
        let pos = self.active.durable_pos();
        let idle = self.active.all_synced() && self.group.is_empty();
        if !self.mark_stale || !idle || pos == 0 || self.damaged.is_some() {
            return;
        }
        self.mark_stale = false;
        let capacity = self.active.seg().capacity();
        if pos + format::MARK_BYTES as u64 > capacity {
            return;
        }
        let at = pos - pos % PAGE;
        // Idle: the durable end is the write position, whose page head the writer keeps.
        let mut page = self.active.page_head().to_vec();
        let data_end = pos + self.push_mark(&mut page, pos);
        page.resize(
            (data_end.next_multiple_of(PAGE).min(capacity) - at) as usize,
            0,
        );
        let written = self
            .active
            .files()
            .map(|f| f.io.std_file().write_all_at(&page, at));
        if !matches!(written, Some(Ok(()))) {
            tracing::debug!(log = %self.shared.name, "refreshing the durable mark failed");
        }
    }
}
