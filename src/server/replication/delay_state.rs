//! What a delayed replica keeps across restarts, in `DATA_DIR/delay-state` (atomic
//! replace): whether it is paused and at which cutoff, each log's last horizon (so a
//! restart starts from it instead of rescanning), and the deletions still waiting for
//! their time.
//!
//! ```text
//! spool-delay v1
//! paused_cutoff_us=1700000000000000
//! horizon NAME OFFSET
//! delete NAME AT_US
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const STATE_FILE: &str = "delay-state";
const MAGIC: &str = "spool-delay v1";

#[derive(Debug, thiserror::Error)]
pub enum DelayStateError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} line {line}: {reason}; fix or remove the file (removing it unpauses and forgets pending deletions)")]
    Parse {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: spool_storage::StorageError,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DelayState {
    /// Set while paused: the frozen cutoff (primary's clock, unix microseconds).
    pub paused_cutoff_us: Option<u64>,
    /// Last published horizon per log (records below it are visible).
    pub horizons: BTreeMap<String, u64>,
    /// Logs deleted upstream, deleted here at this time (unix microseconds).
    pub deletions: BTreeMap<String, u64>,
}

impl DelayState {
    pub fn load(data_dir: &Path) -> Result<DelayState, DelayStateError> {
        let path = data_dir.join(STATE_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DelayState::default()),
            Err(source) => return Err(DelayStateError::Read { path, source }),
        };
        Self::parse(&text).map_err(|(line, reason)| DelayStateError::Parse { path, line, reason })
    }

    fn parse(text: &str) -> Result<DelayState, (usize, String)> {
        let mut lines = text.lines().enumerate();
        match lines.next() {
            Some((_, l)) if l == MAGIC => {}
            _ => return Err((1, format!("expected {MAGIC:?}"))),
        }
        let mut s = DelayState::default();
        for (i, line) in lines {
            let n = i + 1;
            let num = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| (n, format!("bad number {v:?}")))
            };
            let parts: Vec<&str> = line.split_whitespace().collect();
            match parts.as_slice() {
                [] => {}
                [kv] if kv.starts_with("paused_cutoff_us=") => {
                    s.paused_cutoff_us = Some(num(&kv["paused_cutoff_us=".len()..])?);
                }
                ["horizon", name, off] => {
                    s.horizons.insert((*name).to_owned(), num(off)?);
                }
                ["delete", name, at] => {
                    s.deletions.insert((*name).to_owned(), num(at)?);
                }
                _ => return Err((n, format!("unknown line {line:?}"))),
            }
        }
        Ok(s)
    }

    fn format(&self) -> String {
        let mut out = format!("{MAGIC}\n");
        if let Some(c) = self.paused_cutoff_us {
            out.push_str(&format!("paused_cutoff_us={c}\n"));
        }
        for (name, off) in &self.horizons {
            out.push_str(&format!("horizon {name} {off}\n"));
        }
        for (name, at) in &self.deletions {
            out.push_str(&format!("delete {name} {at}\n"));
        }
        out
    }

    /// Crash-safe: a crash leaves the old or the new state, never a mix.
    pub fn save(&self, data_dir: &Path) -> Result<(), DelayStateError> {
        let path = data_dir.join(STATE_FILE);
        spool_storage::crashsafe::replace_file(&path, self.format().as_bytes())
            .map_err(|source| DelayStateError::Write { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let mut s = DelayState {
            paused_cutoff_us: Some(17),
            ..DelayState::default()
        };
        s.horizons.insert("a.b".into(), 42);
        s.deletions.insert("gone".into(), 99);
        assert_eq!(DelayState::parse(&s.format()).unwrap(), s);
        assert_eq!(
            DelayState::parse(&DelayState::default().format()).unwrap(),
            DelayState::default()
        );
        assert!(DelayState::parse("nope\n").is_err());
        assert!(DelayState::parse("spool-delay v1\nhorizon a x\n").is_err());
        let d = tempfile::tempdir().unwrap();
        s.save(d.path()).unwrap();
        assert_eq!(DelayState::load(d.path()).unwrap(), s);
    }
}
