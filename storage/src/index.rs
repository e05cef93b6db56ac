//! Sparse offset index of a segment (`{base:020}.idx`).
//!
//! One entry per `index_interval_bytes` of frames, each 8 bytes little endian:
//!
//! | off | size | field                                  |
//! |-----|------|----------------------------------------|
//! | 0   | 4    | offset - segment base (first record)   |
//! | 4   | 4    | byte position of the frame             |
//!
//! Entries are appended only once the frames they point to are durable, so an entry on
//! disk never points past synced data. The first entry is always (0, 0); an entry after it
//! with position 0 (pre-zeroed or torn file) ends the index. Entries are never trusted
//! blindly: recovery checks the frame an entry points to before scanning from it.

use std::path::Path;

pub const ENTRY_BYTES: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// Absolute offset of the first record of the frame.
    pub offset: u64,
    /// Byte position of the frame in the segment.
    pub pos: u32,
}

pub fn encode(base: u64, entries: &[IndexEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * ENTRY_BYTES);
    for e in entries {
        debug_assert!(e.offset >= base && e.offset - base <= u64::from(u32::MAX));
        out.extend_from_slice(&((e.offset - base) as u32).to_le_bytes());
        out.extend_from_slice(&e.pos.to_le_bytes());
    }
    out
}

/// Decode the longest plausible prefix: strictly increasing offsets and positions, within
/// `capacity`. Anything after the first implausible entry is dropped.
pub fn decode(base: u64, bytes: &[u8], capacity: u64) -> Vec<IndexEntry> {
    let mut out: Vec<IndexEntry> = Vec::with_capacity(bytes.len() / ENTRY_BYTES);
    for chunk in bytes.chunks_exact(ENTRY_BYTES) {
        let rel = u32::from_le_bytes(chunk[0..4].try_into().expect("4"));
        let pos = u32::from_le_bytes(chunk[4..8].try_into().expect("4"));
        let e = IndexEntry {
            offset: base + u64::from(rel),
            pos,
        };
        let plausible = match out.last() {
            None => rel == 0 && pos == 0,
            Some(prev) => e.offset > prev.offset && e.pos > prev.pos,
        };
        if !plausible || u64::from(pos) >= capacity {
            break;
        }
        out.push(e);
    }
    out
}

pub fn load(path: &Path, base: u64, capacity: u64) -> Vec<IndexEntry> {
    match std::fs::read(path) {
        Ok(bytes) => decode(base, &bytes, capacity),
        Err(_) => Vec::new(),
    }
}

/// The last entry at or before `offset`.
pub fn floor(entries: &[IndexEntry], offset: u64) -> Option<IndexEntry> {
    let i = entries.partition_point(|e| e.offset <= offset);
    i.checked_sub(1).map(|i| entries[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_floor() {
        let es = vec![
            IndexEntry {
                offset: 100,
                pos: 0,
            },
            IndexEntry {
                offset: 150,
                pos: 4096,
            },
            IndexEntry {
                offset: 190,
                pos: 9000,
            },
        ];
        let b = encode(100, &es);
        assert_eq!(decode(100, &b, 1 << 20), es);
        assert_eq!(floor(&es, 99), None);
        assert_eq!(floor(&es, 100).unwrap().pos, 0);
        assert_eq!(floor(&es, 189).unwrap().pos, 4096);
        assert_eq!(floor(&es, 10_000).unwrap().pos, 9000);
    }

    #[test]
    fn stops_at_zero_or_garbage() {
        let es = vec![
            IndexEntry { offset: 0, pos: 0 },
            IndexEntry {
                offset: 9,
                pos: 500,
            },
        ];
        let mut b = encode(0, &es);
        b.extend_from_slice(&[0u8; 16]);
        assert_eq!(decode(0, &b, 1 << 20), es);
        b.truncate(12); // torn entry
        assert_eq!(decode(0, &b, 1 << 20), es[..1]);
        assert_eq!(decode(0, &encode(0, &es), 400), es[..1]);
    }
}
