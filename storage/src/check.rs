//! Offline verification of a data directory (`spool check`): every frame of every segment
//! (CRC, offsets dense across segments, records decodable), every index entry, the epoch
//! history. Read-only: it repairs nothing.

use std::collections::HashMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{IoContext, Result};
use crate::format;
use crate::index;
use crate::meta::{self, EpochHistory};
use crate::segment::{self, ScanStop};

#[derive(Debug, Clone, Default)]
pub struct LogCheck {
    pub name: String,
    pub segments: usize,
    pub start: u64,
    pub end: u64,
    pub batches: u64,
    pub data_bytes: u64,
    /// A CRC32 over every record value in offset order: equal logs have equal digests.
    pub digest: u32,
    /// The log's incarnation id (0: not known).
    pub incarnation: u64,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    pub logs: Vec<LogCheck>,
}

impl CheckReport {
    pub fn is_ok(&self) -> bool {
        self.logs.iter().all(|l| l.problems.is_empty())
    }
}

/// Total bytes of segment files under `data_dir` (for progress bars).
pub fn segment_bytes_total(data_dir: &Path) -> u64 {
    let mut total = 0;
    let Ok(logs) = fs::read_dir(data_dir.join("logs")) else {
        return 0;
    };
    for l in logs.flatten() {
        if let Ok(files) = fs::read_dir(l.path()) {
            for f in files.flatten() {
                let n = f.file_name().to_string_lossy().into_owned();
                if segment::parse_segment_name(&n).is_some() {
                    total += f.metadata().map(|m| m.len()).unwrap_or(0);
                }
            }
        }
    }
    total
}

/// Check every log under `data_dir`; `progress` is called with segment bytes examined.
pub fn check_data_dir(data_dir: &Path, progress: &mut dyn FnMut(u64)) -> Result<CheckReport> {
    let logs_dir = data_dir.join("logs");
    let mut names: Vec<(String, PathBuf)> = Vec::new();
    for e in fs::read_dir(&logs_dir).at(&logs_dir)? {
        let e = e.at(&logs_dir)?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && e.path().is_dir() {
            names.push((name, e.path()));
        }
    }
    names.sort();
    let mut report = CheckReport::default();
    for (name, dir) in names {
        report.logs.push(check_log(&name, &dir, progress));
    }
    Ok(report)
}

pub fn check_log(name: &str, dir: &Path, progress: &mut dyn FnMut(u64)) -> LogCheck {
    let mut c = LogCheck {
        name: name.to_owned(),
        ..LogCheck::default()
    };
    let config = match meta::read_log_meta(dir) {
        Ok((cfg, incarnation)) => {
            c.incarnation = incarnation;
            cfg
        }
        Err(e) => {
            c.problems.push(e.to_string());
            return c;
        }
    };
    let epochs = match EpochHistory::load(dir) {
        Ok(e) => e,
        Err(e) => {
            c.problems.push(e.to_string());
            EpochHistory::default()
        }
    };
    let mut bases: Vec<u64> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| segment::parse_segment_name(&e.file_name().to_string_lossy()))
                .collect()
        })
        .unwrap_or_default();
    bases.sort_unstable();
    c.segments = bases.len();
    c.start = bases.first().copied().unwrap_or(0);
    let mut expected = c.start;
    let mut hasher = crc32fast::Hasher::new();
    let mut seen_epoch: HashMap<u64, u64> = HashMap::new();
    for (i, &base) in bases.iter().enumerate() {
        let path = dir.join(segment::segment_file_name(base));
        if base != expected {
            c.problems.push(format!(
                "{}: starts at offset {base} but the previous segment ends at {expected}",
                path.display()
            ));
        }
        let map = match File::open(&path).and_then(|f| unsafe { Mmap::map(&f) }) {
            // SAFETY: read-only mapping of a file this check does not change; a concurrent
            // writer never shrinks segment files.
            Ok(m) => m,
            Err(e) => {
                c.problems.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        let stop_at = bases.get(i + 1).copied();
        let s = segment::scan(&map, 0, base, stop_at, 1, None);
        match (&s.stop, stop_at) {
            (ScanStop::Target, _) => {}
            (ScanStop::Zero | ScanStop::Full, None) => {}
            (ScanStop::Invalid { pos, reason }, _) => c.problems.push(format!(
                "{}: invalid frame at byte {pos}: {reason}",
                path.display()
            )),
            (_, Some(next)) => c.problems.push(format!(
                "{}: data ends at offset {} (byte {}), the next segment starts at {next}",
                path.display(),
                s.next_offset,
                s.end_pos
            )),
        }
        // Every frame again, now decoding records for the digest and epoch checks.
        let mut positions = HashMap::new();
        for e in &s.entries {
            positions.insert(u64::from(e.pos), e.offset);
            let (h, frame) = match format::check_frame(&map[e.pos as usize..]) {
                Ok(h) => (
                    h,
                    &map[e.pos as usize..e.pos as usize + h.frame_len as usize],
                ),
                Err(_) => continue,
            };
            match format::decode_records(frame, &h) {
                Ok(records) => {
                    for r in records {
                        hasher.update(&(r.value.len() as u32).to_le_bytes());
                        hasher.update(&r.value);
                    }
                }
                Err(err) => c.problems.push(format!(
                    "{}: batch at byte {} does not decode: {err}",
                    path.display(),
                    e.pos
                )),
            }
            match epochs.epoch_at(h.base_offset) {
                Some(ep) if ep != h.epoch && !epochs.entries().is_empty() => {
                    seen_epoch.entry(h.epoch).or_insert(h.base_offset);
                }
                _ => {}
            }
            c.batches += 1;
        }
        let idx_path = dir.join(segment::index_file_name(base));
        for e in index::load(&idx_path, base, map.len() as u64) {
            if positions.get(&u64::from(e.pos)) != Some(&e.offset) {
                c.problems.push(format!(
                    "{}: index entry (offset {}, byte {}) does not point at that batch",
                    idx_path.display(),
                    e.offset,
                    e.pos
                ));
            }
        }
        c.data_bytes += s.end_pos;
        expected = s.next_offset;
        progress(map.len() as u64);
        let _ = config.segment_bytes;
    }
    for (epoch, offset) in seen_epoch {
        c.problems.push(format!(
            "batch at offset {offset} has epoch {epoch}, the epoch history says {:?}",
            epochs.epoch_at(offset)
        ));
    }
    c.end = expected;
    c.digest = hasher.finalize();
    c
}
