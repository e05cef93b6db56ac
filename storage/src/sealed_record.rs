//! What a clean shutdown knows about a log's sealed segments, so that the next open does
//! not have to read them.
//!
//! Recovery learns where a sealed segment ends by reading its index and the frames after
//! the last index entry: cold reads for every segment, so a restart would take longer the
//! more data a log held (figures: docs/decisions/0013-segment-placement-and-writer-split.md). At a clean shutdown the storage thread writes, for each log with
//! sealed segments, [`FILE`]: every sealed segment's base, next base, length, last
//! timestamp, and the file's inode number and modification time, under a CRC. The next
//! open uses it only when it names exactly the sealed segments the directory holds, the
//! same files unmodified since, and removes it (durably) before anything can change them,
//! so that a crash later never finds a stale one; the indexes of those segments are then
//! read when a read first needs them. Without the file (a crash) recovery reads the tails
//! as before.
//!
//! The record also names the active segment (the same fields, `len` its durable end),
//! unless a write into it failed since the open (a failed group may have left bytes past
//! the end that its zeroing could not remove). Opened unmodified, its tail past the end is
//! then known to be zeros, and recovery skips reading `ZERO_AHEAD_BYTES` of it to make
//! sure: 24 MiB per log, cold disk reads where the zeros were written past the page cache
//! (a spare).
//!
//! The name ends in `.tmp` so that a version that does not know the file
//! deletes it when it opens the log (every version removes `.tmp` files there), instead
//! of leaving it behind for a later version to trust after the segments changed.

use std::fs;
use std::path::Path;

use crate::crashsafe::sync_dir_with;
use crate::error::{IoContext, Result};
use crate::io::MetaIo;

pub(crate) const FILE: &str = "sealed-at-shutdown.tmp";
const WRITING: &str = "sealed-at-shutdown.writing.tmp";
/// Version 1 held the sealed segments only; version 2 adds the active one.
const MAGIC_V1: &[u8; 8] = b"SPOOLSR1";
const MAGIC: &[u8; 8] = b"SPOOLSR2";
const ENTRY_BYTES: usize = 48;

/// What a clean shutdown recorded of one log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Record {
    /// The sealed segments, oldest first.
    pub sealed: Vec<Sealed>,
    /// The active segment, where nothing can lie past its end but zeros.
    pub active: Option<Sealed>,
}

/// One sealed segment as the storage thread left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sealed {
    pub base: u64,
    pub next: u64,
    /// Bytes of frames (the rest of the file is zeros).
    pub len: u64,
    pub last_ts_us: u64,
    /// The segment file's inode number and modification time (ns since the epoch) when
    /// recorded: a file replaced or written since does not pass for the recorded one.
    pub ino: u64,
    pub mtime_ns: u64,
}

/// (inode number, modification time in ns since the epoch) of `f`.
pub(crate) fn identity(f: &std::fs::File) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = f.metadata()?;
    let mtime_ns = (m.mtime() as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(m.mtime_nsec() as u64);
    Ok((m.ino(), mtime_ns))
}

fn encode(record: &Record) -> Vec<u8> {
    let segments = record.sealed.iter().chain(&record.active);
    let mut out = Vec::with_capacity(MAGIC.len() + 16 + segments.clone().count() * ENTRY_BYTES + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(record.sealed.len() as u64).to_le_bytes());
    out.extend_from_slice(&u64::from(record.active.is_some()).to_le_bytes());
    for s in segments {
        for v in [s.base, s.next, s.len, s.last_ts_us, s.ino, s.mtime_ns] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn decode(bytes: &[u8]) -> Option<Record> {
    let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().ok()?) {
        return None;
    }
    let word = |e: &[u8], i: usize| u64::from_le_bytes(e[i * 8..i * 8 + 8].try_into().unwrap());
    let (count, active, entries) = if let Some(rest) = body.strip_prefix(MAGIC_V1) {
        let (count, entries) = rest.split_at_checked(8)?;
        (word(count, 0), 0, entries)
    } else {
        let (head, entries) = body.strip_prefix(MAGIC)?.split_at_checked(16)?;
        (word(head, 0), word(head, 1), entries)
    };
    if active > 1
        || entries.len() as u64 != count.checked_add(active)?.checked_mul(ENTRY_BYTES as u64)?
    {
        return None;
    }
    let mut segments: Vec<Sealed> = entries
        .chunks_exact(ENTRY_BYTES)
        .map(|e| Sealed {
            base: word(e, 0),
            next: word(e, 1),
            len: word(e, 2),
            last_ts_us: word(e, 3),
            ino: word(e, 4),
            mtime_ns: word(e, 5),
        })
        .collect();
    let active = (active == 1).then(|| segments.pop()).flatten();
    Some(Record {
        sealed: segments,
        active,
    })
}

/// Record `record` in `dir`, durably.
pub(crate) fn write(io: &dyn MetaIo, dir: &Path, record: &Record) -> Result<()> {
    let (tmp, path) = (dir.join(WRITING), dir.join(FILE));
    let f = io.write_file(&tmp, &encode(record)).at(&tmp)?;
    io.sync_file(&f).at(&tmp)?;
    io.rename(&tmp, &path).at(&path)?;
    sync_dir_with(io, dir)
}

/// The record left in `dir` by a clean shutdown, if any and intact; it is removed (durably)
/// either way, since the log may change from now on.
pub(crate) fn take(io: &dyn MetaIo, dir: &Path) -> Result<Option<Record>> {
    let path = dir.join(FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(crate::error::StorageError::io(&path, e)),
    };
    let record = decode(&bytes);
    if record.is_none() {
        tracing::warn!(file = %path.display(), "ignoring a damaged record of sealed segments");
    }
    io.remove_file(&path).at(&path)?;
    sync_dir_with(io, dir)?;
    Ok(record)
}

/// `record` describes exactly the sealed segments `bases` (all but the last, active one),
/// each ending where the next begins, and an active segment it names is the last one.
pub(crate) fn matches(record: &Record, bases: &[u64]) -> bool {
    let sealed = bases.len().saturating_sub(1);
    record.sealed.len() == sealed
        && record
            .sealed
            .iter()
            .zip(bases.windows(2))
            .all(|(s, w)| s.base == w[0] && s.next == w[1] && s.next > s.base)
        && record
            .active
            .is_none_or(|a| bases.last() == Some(&a.base) && a.next >= a.base)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::std_backend::StdBackend;

    fn sample() -> Record {
        Record {
            sealed: sample_sealed(),
            active: Some(Sealed {
                base: 250,
                next: 260,
                len: 900,
                last_ts_us: 10,
                ino: 8,
                mtime_ns: 17,
            }),
        }
    }

    fn sample_sealed() -> Vec<Sealed> {
        vec![
            Sealed {
                base: 0,
                next: 100,
                len: 4096,
                last_ts_us: 7,
                ino: 5,
                mtime_ns: 11,
            },
            Sealed {
                base: 100,
                next: 250,
                len: 8000,
                last_ts_us: 9,
                ino: 6,
                mtime_ns: 13,
            },
        ]
    }

    #[test]
    fn round_trip_and_damage() {
        let no_active = Record {
            active: None,
            ..sample()
        };
        for r in [sample(), no_active, Record::default()] {
            let bytes = encode(&r);
            assert_eq!(decode(&bytes), Some(r));
            for i in 0..bytes.len() {
                let mut bad = bytes.clone();
                bad[i] ^= 0x10;
                assert_eq!(decode(&bad), None, "flipped byte {i}");
            }
            for cut in 0..bytes.len() {
                assert_eq!(decode(&bytes[..cut]), None, "cut at {cut}");
            }
        }
    }

    /// A record written by version 1 (sealed segments only) still spares their reads.
    #[test]
    fn reads_a_version_1_record() {
        let mut v1 = MAGIC_V1.to_vec();
        v1.extend_from_slice(&2u64.to_le_bytes());
        for s in sample_sealed() {
            for v in [s.base, s.next, s.len, s.last_ts_us, s.ino, s.mtime_ns] {
                v1.extend_from_slice(&v.to_le_bytes());
            }
        }
        let crc = crc32fast::hash(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        let want = Record {
            sealed: sample_sealed(),
            active: None,
        };
        assert_eq!(decode(&v1), Some(want));
    }

    #[test]
    fn matches_only_the_same_segments() {
        let r = sample();
        assert!(matches(&r, &[0, 100, 250]));
        assert!(!matches(&r, &[0, 100, 250, 400]), "a segment sealed since");
        assert!(!matches(&r, &[100, 250]), "one removed");
        assert!(!matches(&r, &[0, 100, 260]), "rolled elsewhere");
        assert!(!matches(&r, &[0]));
        assert!(matches(&Record::default(), &[0]));
        let active_elsewhere = Record {
            sealed: vec![],
            active: Some(Sealed {
                base: 7,
                ..r.active.unwrap()
            }),
        };
        assert!(!matches(&active_elsewhere, &[0]), "the active one replaced");
    }

    #[test]
    fn take_removes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(take(&StdBackend, dir.path()).unwrap(), None);
        write(&StdBackend, dir.path(), &sample()).unwrap();
        assert_eq!(take(&StdBackend, dir.path()).unwrap(), Some(sample()));
        assert!(!dir.path().join(FILE).exists());
        fs::write(dir.path().join(FILE), b"garbage").unwrap();
        assert_eq!(take(&StdBackend, dir.path()).unwrap(), None);
        assert!(!dir.path().join(FILE).exists());
    }

    /// A sealed index file cut short (as a torn write once left it) is completed from its
    /// last entry when first loaded, as recovery's scan did, not kept short.
    #[test]
    fn a_deferred_index_is_completed_from_its_last_entry() {
        use crate::io::std_backend::StdBackend;
        use crate::{Durability, LogConfig, Storage, StorageConfig};
        let dir = tempfile::tempdir().unwrap();
        let config = || {
            let mut c = StorageConfig::new(dir.path());
            c.default_log = LogConfig {
                segment_bytes: 64 << 10,
                index_interval_bytes: 1024,
                ..LogConfig::default()
            };
            c
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let s = Storage::open_with(config(), StdBackend).unwrap();
            let log = s.create_log("t").await.unwrap();
            for _ in 0..300 {
                log.append(&[&[7u8; 600][..]], Durability::Fsync)
                    .await
                    .unwrap();
            }
            let full = log.shared.segments.read()[0].index_snapshot();
            assert!(full.len() > 10, "{} entries", full.len());
            s.shutdown().await.unwrap();
            drop((log, s));

            let idx = dir
                .path()
                .join("logs/t")
                .join(crate::segment::index_file_name(0));
            let bytes = fs::read(&idx).unwrap();
            fs::write(&idx, &bytes[..3 * crate::index::ENTRY_BYTES]).unwrap();
            let s = Storage::open_with(config(), StdBackend).unwrap();
            let log = s.log("t").unwrap();
            let seg = log.shared.segments.read()[0].clone();
            assert!(seg.index_is_deferred(), "opened from the record");
            assert_eq!(seg.index_snapshot(), full);
            assert!(!seg.index_is_deferred());
            s.shutdown().await.unwrap();
        });
    }
}
