//! Small durable metadata files: a log's config (`meta`) and its epoch history (`epochs`).
//!
//! Both are text, `key=value` per line, starting with `format=` and `version=` and ending
//! with `crc=` (CRC32 of every byte before that line). Versioned from day one: an unknown
//! version is refused with a clear error. Written only through [`crashsafe::replace_file_with`]
//! (the backend's metadata operations) or, for files outside a log, [`crashsafe::replace_file`].

use std::path::Path;

use crate::config::{Compression, LogConfig};
use crate::crashsafe;
use crate::error::{Result, StorageError};
use crate::io::MetaIo;

pub const META_FILE: &str = "meta";
pub const EPOCHS_FILE: &str = "epochs";
const META_FORMAT: &str = "spool-log-meta";
const EPOCHS_FORMAT: &str = "spool-epochs";
const VERSION: u32 = 1;

fn encode(format: &str, lines: &[String]) -> Vec<u8> {
    let mut s = format!("format={format}\nversion={VERSION}\n");
    for l in lines {
        s.push_str(l);
        s.push('\n');
    }
    let crc = crc32fast::hash(s.as_bytes());
    s.push_str(&format!("crc={crc:08x}\n"));
    s.into_bytes()
}

/// Check format, version and CRC; return the body lines.
fn decode(path: &Path, format: &str, bytes: &[u8]) -> Result<Vec<(String, String)>> {
    let bad = |reason: String| StorageError::CorruptMeta {
        path: path.to_owned(),
        reason,
    };
    let text = std::str::from_utf8(bytes).map_err(|_| bad("not utf-8".into()))?;
    let crc_at = text
        .rfind("crc=")
        .ok_or_else(|| bad("missing crc line (torn write?)".into()))?;
    let stored = u32::from_str_radix(text[crc_at + 4..].trim(), 16)
        .map_err(|_| bad("unreadable crc".into()))?;
    let actual = crc32fast::hash(&bytes[..crc_at]);
    if stored != actual {
        return Err(bad(format!(
            "crc mismatch: stored {stored:08x}, computed {actual:08x}"
        )));
    }
    let mut pairs = Vec::new();
    for line in text[..crc_at].lines().filter(|l| !l.is_empty()) {
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| bad(format!("malformed line {line:?}")))?;
        pairs.push((k.to_owned(), v.to_owned()));
    }
    match pairs.first() {
        Some((k, v)) if k == "format" && v == format => {}
        _ => return Err(bad(format!("not a {format} file"))),
    }
    match pairs.get(1) {
        Some((k, v)) if k == "version" => {
            let v: u32 = v.parse().map_err(|_| bad("unreadable version".into()))?;
            if v != VERSION {
                return Err(bad(format!(
                    "unsupported version {v} (this build reads version {VERSION}); \
                     upgrade spool or restore the file"
                )));
            }
        }
        _ => return Err(bad("missing version".into())),
    }
    Ok(pairs.split_off(2))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| StorageError::io(path, e))
}

/// Replace `path` atomically with a `format` file of `key=value` lines, versioned and
/// CRC'd like the log metadata (for other small durable files, e.g. a node's identity).
pub fn write_kv(path: &Path, format: &str, lines: &[String]) -> Result<()> {
    crashsafe::replace_file(path, &encode(format, lines))
}

/// The `key=value` lines of a file [`write_kv`] wrote as `format`; None if there is none.
pub fn read_kv(path: &Path, format: &str) -> Result<Option<Vec<(String, String)>>> {
    match std::fs::read(path) {
        Ok(bytes) => decode(path, format, &bytes).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StorageError::io(path, e)),
    }
}

/// A log's identity: the incarnation id given at its creation on the primary (a log
/// deleted and created again under the same name is another incarnation) and copied by
/// every replica. 0: not known (written by a version without it).
pub const INCARNATION_UNKNOWN: u64 = 0;

/// A fresh incarnation id: 64 random bits, never [`INCARNATION_UNKNOWN`].
pub fn new_incarnation() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    let mut id = u64::from_le_bytes(b);
    if random.is_err() {
        // No /dev/urandom: the clock and the process still tell creations apart.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        id = t.rotate_left(17) ^ u64::from(std::process::id()).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    id.max(1)
}

pub fn write_log_config(io: &dyn MetaIo, dir: &Path, c: &LogConfig) -> Result<()> {
    write_log_meta(io, dir, c, INCARNATION_UNKNOWN)
}

/// Write a log's config and incarnation (0: not known, no line).
pub fn write_log_meta(io: &dyn MetaIo, dir: &Path, c: &LogConfig, incarnation: u64) -> Result<()> {
    let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
    let compression = match c.compression {
        Compression::None => "none".to_owned(),
        Compression::Zstd { level } => format!("zstd:{level}"),
    };
    let lines = vec![
        format!("segment_bytes={}", c.segment_bytes),
        format!("index_interval_bytes={}", c.index_interval_bytes),
        format!("retention_bytes={}", opt(c.retention_bytes)),
        format!("retention_ms={}", opt(c.retention_ms)),
        format!("compression={compression}"),
        format!("compress_min_bytes={}", c.compress_min_bytes),
        format!("initial_segment_bytes={}", c.initial_segment_bytes),
    ];
    let mut lines = lines;
    if incarnation != INCARNATION_UNKNOWN {
        lines.push(format!("incarnation={incarnation:016x}"));
    }
    crashsafe::replace_file_with(io, &dir.join(META_FILE), &encode(META_FORMAT, &lines))
}

pub fn read_log_config(dir: &Path) -> Result<LogConfig> {
    read_log_meta(dir).map(|(c, _)| c)
}

/// A log's config and incarnation ([`INCARNATION_UNKNOWN`] if the file has none).
pub fn read_log_meta(dir: &Path) -> Result<(LogConfig, u64)> {
    let path = dir.join(META_FILE);
    let pairs = decode(&path, META_FORMAT, &read(&path)?)?;
    let bad = |reason: String| StorageError::CorruptMeta {
        path: path.clone(),
        reason,
    };
    let mut c = LogConfig::default();
    let mut incarnation = INCARNATION_UNKNOWN;
    for (k, v) in pairs {
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| bad(format!("{k}: not a number: {v:?}")))
        };
        let opt = |v: &str| {
            if v.is_empty() {
                Ok(None)
            } else {
                num(v).map(Some)
            }
        };
        match k.as_str() {
            "segment_bytes" => c.segment_bytes = num(&v)?,
            "index_interval_bytes" => c.index_interval_bytes = num(&v)? as u32,
            "retention_bytes" => c.retention_bytes = opt(&v)?,
            "retention_ms" => c.retention_ms = opt(&v)?,
            "compress_min_bytes" => c.compress_min_bytes = num(&v)? as u32,
            "initial_segment_bytes" => c.initial_segment_bytes = num(&v)?,
            "compression" => c.compression = parse_compression(&v).map_err(bad)?,
            "incarnation" => {
                incarnation = u64::from_str_radix(&v, 16)
                    .map_err(|_| bad(format!("incarnation: not a hex id: {v:?}")))?
            }
            // Unknown keys from a newer minor writer are ignored, not fatal.
            _ => {}
        }
    }
    c.validate().map_err(|e| bad(e.to_string()))?;
    Ok((c, incarnation))
}

pub fn parse_compression(v: &str) -> Result<Compression, String> {
    match v {
        "none" => Ok(Compression::None),
        "zstd" => Ok(Compression::Zstd { level: 1 }),
        _ => v
            .strip_prefix("zstd:")
            .and_then(|l| l.parse().ok())
            .map(|level| Compression::Zstd { level })
            .ok_or_else(|| format!("unknown compression {v:?}; expected none, zstd or zstd:LEVEL")),
    }
}

/// Leader epochs of a log: each entry is an epoch and the first offset written in it.
/// Epochs and start offsets both increase strictly along the list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochHistory {
    entries: Vec<(u64, u64)>,
}

impl EpochHistory {
    pub fn entries(&self) -> &[(u64, u64)] {
        &self.entries
    }

    pub fn current(&self) -> u64 {
        self.entries.last().map_or(0, |e| e.0)
    }

    /// Record that `epoch` starts at `start`. Returns false when nothing changed.
    pub fn begin(&mut self, epoch: u64, start: u64) -> Result<bool> {
        if let Some(&(last_epoch, last_start)) = self.entries.last() {
            if epoch == last_epoch {
                return Ok(false);
            }
            if epoch < last_epoch || start < last_start {
                return Err(StorageError::InvalidInput(format!(
                    "epoch {epoch} at offset {start} goes back from epoch {last_epoch} at {last_start}"
                )));
            }
            if start == last_start {
                // The previous epoch wrote nothing: replace it.
                self.entries.pop();
            }
        }
        self.entries.push((epoch, start));
        Ok(true)
    }

    /// Forget epochs that start at or after `end` (after a truncation).
    pub fn truncate(&mut self, end: u64) {
        self.entries.retain(|&(_, start)| start < end);
    }

    /// End offset of `epoch` in this history given the log end: the start of the next
    /// larger epoch. Used to find where a follower diverged (Kafka's leader-epoch rule).
    pub fn end_of(&self, epoch: u64, log_end: u64) -> Option<u64> {
        let i = self.entries.iter().rposition(|&(e, _)| e <= epoch)?;
        Some(self.entries.get(i + 1).map_or(log_end, |&(_, s)| s))
    }

    /// Epoch that wrote `offset`.
    pub fn epoch_at(&self, offset: u64) -> Option<u64> {
        self.entries
            .iter()
            .rev()
            .find(|&&(_, s)| s <= offset)
            .map(|&(e, _)| e)
    }

    pub fn save(&self, io: &dyn MetaIo, dir: &Path) -> Result<()> {
        self.try_save(io, dir).map_err(|f| f.error)
    }

    /// [`EpochHistory::save`], saying whether a failure may have replaced the file.
    pub fn try_save(
        &self,
        io: &dyn MetaIo,
        dir: &Path,
    ) -> std::result::Result<(), crashsafe::ReplaceFailed> {
        let lines: Vec<String> = self
            .entries
            .iter()
            .map(|(e, s)| format!("epoch={e},{s}"))
            .collect();
        crashsafe::try_replace_with(io, &dir.join(EPOCHS_FILE), &encode(EPOCHS_FORMAT, &lines))
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(EPOCHS_FILE);
        if !path.exists() {
            return Ok(EpochHistory::default());
        }
        let pairs = decode(&path, EPOCHS_FORMAT, &read(&path)?)?;
        let mut h = EpochHistory::default();
        for (k, v) in pairs {
            let parsed = (k == "epoch")
                .then(|| v.split_once(','))
                .flatten()
                .and_then(|(e, s)| Some((e.parse().ok()?, s.parse().ok()?)));
            let (e, s) = parsed.ok_or_else(|| StorageError::CorruptMeta {
                path: path.clone(),
                reason: format!("bad entry {k}={v}"),
            })?;
            h.begin(e, s).map_err(|e| StorageError::CorruptMeta {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trip_and_crc() {
        let d = tempfile::tempdir().unwrap();
        let c = LogConfig {
            retention_bytes: Some(5 << 20),
            compression: Compression::Zstd { level: 3 },
            ..LogConfig::default()
        };
        write_log_config(&crate::io::std_backend::StdBackend, d.path(), &c).unwrap();
        assert_eq!(read_log_config(d.path()).unwrap(), c);
        let p = d.path().join(META_FILE);
        let mut b = std::fs::read(&p).unwrap();
        b[30] ^= 1;
        std::fs::write(&p, &b).unwrap();
        assert!(read_log_config(d.path()).unwrap_err().is_corruption());
    }

    #[test]
    fn future_version_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let body = "format=spool-epochs\nversion=2\n";
        let crc = crc32fast::hash(body.as_bytes());
        std::fs::write(d.path().join(EPOCHS_FILE), format!("{body}crc={crc:08x}\n")).unwrap();
        let e = EpochHistory::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("unsupported version 2"), "{e}");
    }

    #[test]
    fn epochs_rules() {
        let mut h = EpochHistory::default();
        assert!(h.begin(1, 0).unwrap());
        assert!(!h.begin(1, 10).unwrap());
        assert!(h.begin(3, 10).unwrap());
        assert!(h.begin(2, 20).is_err());
        assert!(h.begin(4, 20).unwrap());
        assert_eq!(h.end_of(1, 30), Some(10));
        assert_eq!(h.end_of(2, 30), Some(10));
        assert_eq!(h.end_of(4, 30), Some(30));
        assert_eq!(h.epoch_at(15), Some(3));
        h.truncate(15);
        assert_eq!(h.entries(), &[(1, 0), (3, 10)]);
        let d = tempfile::tempdir().unwrap();
        h.save(&crate::io::std_backend::StdBackend, d.path())
            .unwrap();
        assert_eq!(EpochHistory::load(d.path()).unwrap(), h);
    }
}
