//! The active segment as its writer sees it: the view readers share, its files while the
//! log is in use, and the positions of the log's end in it.
//!
//! Positions, in record offsets: `buffered >= written >= durable >= the segment's base`;
//! in bytes of the segment: `write_pos >= durable_pos`, and the two pairs move together
//! (bytes written and not synced hold records written and not synced). `durable_*` is
//! what fdatasync covered and what the view publishes to readers. Every change goes
//! through a method here that ends with [`Active::check`].

use std::fs::File;
use std::sync::Arc;

use super::group::PAGE;
use crate::io::IoFile;
use crate::segment::SegmentView;

/// The active segment opened for writing and its index.
pub(super) struct ActiveFiles<F> {
    pub io: F,
    pub idx: File,
}

pub(super) struct Active<F> {
    seg: Arc<SegmentView>,
    /// Open while the log is in use (see `LogWriter::open_files`): an idle log holds no
    /// descriptor, so a node keeps thousands of logs.
    files: Option<ActiveFiles<F>>,
    /// One past the last record in the group buffer.
    buffered_next: u64,
    /// One past the last record handed to the OS.
    written_next: u64,
    /// One past the last record fdatasync covered.
    durable_next: u64,
    /// Bytes of the segment handed to the OS.
    write_pos: u64,
    /// Bytes of the segment fdatasync covered.
    durable_pos: u64,
    /// The bytes from `write_pos`'s page start to `write_pos`, as the last group write
    /// left them; empty when unknown (then read from the segment). Kept so that the next
    /// group need not read a page a direct write dropped from the cache.
    page_head: Vec<u8>,
}

impl<F: IoFile> Active<F> {
    /// The active segment as recovery left it: everything in it durable up to `len`.
    pub fn recovered(seg: Arc<SegmentView>, len: u64) -> Self {
        let next = seg.durable_next();
        let a = Active {
            seg,
            files: None,
            buffered_next: next,
            written_next: next,
            durable_next: next,
            write_pos: len,
            durable_pos: len,
            page_head: Vec::new(),
        };
        a.check();
        a
    }

    /// The relations of the positions, and with what the view publishes.
    pub fn check(&self) {
        let base = self.seg.base_offset;
        assert!(
            self.buffered_next >= self.written_next
                && self.written_next >= self.durable_next
                && self.durable_next >= base,
            "offsets: buffered {} written {} durable {} base {base}",
            self.buffered_next,
            self.written_next,
            self.durable_next
        );
        assert!(
            self.write_pos >= self.durable_pos && self.write_pos <= self.seg.capacity(),
            "bytes: written {} durable {} capacity {}",
            self.write_pos,
            self.durable_pos,
            self.seg.capacity()
        );
        assert_eq!(
            self.write_pos == self.durable_pos,
            self.written_next == self.durable_next,
            "unsynced bytes without unsynced records, or the reverse"
        );
        assert_eq!(self.durable_pos == 0, self.durable_next == base);
        assert_eq!(
            (self.seg.durable_len(), self.seg.durable_next()),
            (self.durable_pos, self.durable_next),
            "the view publishes another durable end"
        );
    }

    pub fn seg(&self) -> &Arc<SegmentView> {
        &self.seg
    }

    pub fn buffered_next(&self) -> u64 {
        self.buffered_next
    }

    pub fn written_next(&self) -> u64 {
        self.written_next
    }

    pub fn durable_next(&self) -> u64 {
        self.durable_next
    }

    pub fn write_pos(&self) -> u64 {
        self.write_pos
    }

    pub fn durable_pos(&self) -> u64 {
        self.durable_pos
    }

    /// Everything written is durable.
    pub fn all_synced(&self) -> bool {
        self.write_pos == self.durable_pos
    }

    pub fn files(&self) -> Option<&ActiveFiles<F>> {
        self.files.as_ref()
    }

    /// The segment's file: open whenever there is anything to write (the storage thread
    /// opens a log's files before handing it any command that writes).
    pub fn io(&self) -> &F {
        &self.files.as_ref().expect("files open while writing").io
    }

    pub fn set_files(&mut self, files: Option<ActiveFiles<F>>) {
        self.files = files;
    }

    /// Records up to `next` are in the group buffer.
    pub fn buffered(&mut self, next: u64) {
        self.buffered_next = next;
        self.check();
    }

    /// The group buffer was dropped (its write failed).
    pub fn unbuffered(&mut self) {
        self.buffered_next = self.written_next;
        self.check();
    }

    /// The segment's bytes from `write_pos`'s page start up to `write_pos`.
    pub fn page_head(&self) -> &[u8] {
        let from = self.write_pos - self.write_pos % PAGE;
        if self.write_pos > from && self.page_head.len() as u64 == self.write_pos - from {
            return &self.page_head;
        }
        &self.seg.raw()[from as usize..self.write_pos as usize]
    }

    /// `len` bytes holding every buffered record reached the OS, in a write of `written`
    /// at `at` (which covers the new `write_pos`'s page).
    pub fn wrote(&mut self, len: u64, written: &[u8], at: u64) {
        self.write_pos += len;
        self.written_next = self.buffered_next;
        if len == 0 {
            // A sync alone: the page head is what it was.
            self.check();
            return;
        }
        let from = self.write_pos - self.write_pos % PAGE;
        self.page_head.clear();
        if from >= at {
            let (a, b) = ((from - at) as usize, (self.write_pos - at) as usize);
            self.page_head.extend_from_slice(&written[a..b]);
        }
        self.check();
    }

    /// Everything written is durable: the view publishes it (index entries first, then
    /// the length readers trust).
    pub fn synced(&mut self, last_ts_us: u64, entries: &[crate::index::IndexEntry]) {
        self.durable_pos = self.write_pos;
        self.durable_next = self.written_next;
        self.seg
            .publish(self.durable_pos, self.durable_next, last_ts_us, entries);
        self.check();
    }

    /// Frames from `write_pos` to `end_pos`, records up to `next`, were written durably in
    /// place (a repaired end); the caller publishes them with [`Active::synced`].
    pub fn wrote_in_place(&mut self, end_pos: u64, next: u64) {
        assert!(self.all_synced() && self.buffered_next == self.written_next);
        self.write_pos = end_pos;
        self.written_next = next;
        self.buffered_next = next;
        self.page_head.clear();
    }

    /// The log now ends at byte `len`, record `next`, of `seg` (opened as `files`), which
    /// the view already publishes: a new segment, or one a cut made active again.
    pub fn place(&mut self, seg: Arc<SegmentView>, files: ActiveFiles<F>, len: u64, next: u64) {
        self.seg = seg;
        self.files = Some(files);
        self.cut(len, next);
    }

    /// The log now ends at byte `len`, record `next`, of the active segment (a cut).
    pub fn cut(&mut self, len: u64, next: u64) {
        self.page_head.clear();
        self.write_pos = len;
        self.durable_pos = len;
        self.buffered_next = next;
        self.written_next = next;
        self.durable_next = next;
        self.check();
    }
}
