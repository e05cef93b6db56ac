//! The active segment's sparse index as its writer keeps it: entries noted as frames are
//! buffered, published to the view once durable, then appended to the `.idx` file.
//!
//! The file is not synced per group: it is a hint that recovery verifies, synced when
//! the segment is sealed. An entry reaches it only once its frame is durable, so an entry
//! on disk never points past synced data.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::index::{self, IndexEntry};

pub(super) struct IndexWriter {
    /// One entry per this many bytes of frames.
    interval: u64,
    /// Position of the newest entry (durable or pending).
    last_pos: Option<u64>,
    /// Entries for frames not yet durable.
    pending: Vec<IndexEntry>,
    /// Entries for durable frames not yet in the file (a write failed, or it was closed).
    unwritten: Vec<IndexEntry>,
    /// Entries the file holds.
    on_disk: u64,
}

impl IndexWriter {
    /// The index of a segment whose file holds `on_disk` entries, the newest at `last_pos`.
    pub fn new(interval: u32, on_disk: u64, last_pos: Option<u64>) -> Self {
        IndexWriter {
            interval: u64::from(interval),
            last_pos,
            pending: Vec::new(),
            unwritten: Vec::new(),
            on_disk,
        }
    }

    /// A frame of record `offset` will be at byte `pos`: an entry if an interval passed.
    pub fn note(&mut self, pos: u64, offset: u64) {
        if self.last_pos.is_none_or(|l| pos - l >= self.interval) {
            self.pending.push(IndexEntry {
                offset,
                pos: pos as u32,
            });
            self.last_pos = Some(pos);
        }
    }

    /// The pending entries' frames are durable: they go to the view (returned) and then
    /// to the file.
    pub fn durable(&mut self) -> Vec<IndexEntry> {
        let entries = std::mem::take(&mut self.pending);
        self.unwritten.extend_from_slice(&entries);
        entries
    }

    /// The frames from byte `keep` on were dropped (their write failed): so are their
    /// pending entries; `published` is what the view holds.
    pub fn drop_from(&mut self, keep: u64, published: &[IndexEntry]) {
        self.pending.retain(|e| u64::from(e.pos) < keep);
        self.last_pos = self
            .pending
            .last()
            .or(published.last())
            .map(|e| u64::from(e.pos));
    }

    /// Append the durable entries not yet in `file` (the index of segment `base`); a
    /// closed file (`None`) takes them when it is next open. A failed write is retried
    /// with the next entries.
    pub fn write(&mut self, file: Option<&File>, base: u64, log: &str) {
        let Some(file) = file else { return };
        if self.unwritten.is_empty() {
            return;
        }
        let bytes = index::encode(base, &self.unwritten);
        match file.write_all_at(&bytes, self.on_disk * index::ENTRY_BYTES as u64) {
            Ok(()) => {
                self.on_disk += self.unwritten.len() as u64;
                self.unwritten.clear();
            }
            Err(e) => tracing::warn!(%log, error = %e, "index write failed; will retry"),
        }
    }

    /// Every durable entry is in the file (as a seal requires).
    pub fn complete(&self) -> bool {
        self.unwritten.is_empty()
    }

    /// A new segment, or one whose file was rewritten to hold exactly `entries`.
    pub fn reset(&mut self, entries: &[IndexEntry]) {
        self.pending.clear();
        self.unwritten.clear();
        self.on_disk = entries.len() as u64;
        self.last_pos = entries.last().map(|e| u64::from(e.pos));
    }
}
