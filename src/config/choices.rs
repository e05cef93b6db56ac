//! The settings that take one of a few words. Each is one enum that both the TOML file
//! (serde) and the command line (clap) parse, with the same spellings, so a value means
//! the same wherever it is written; each converts into the type its crate runs with.

use clap::ValueEnum;
use serde::Deserialize;
use spool_storage::{BackendChoice, OnCorruption, RecoveryMode};

/// `[storage] io_backend`, `--io-backend`, `SPOOL_IO_BACKEND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
#[value(rename_all = "kebab-case")]
pub enum IoBackend {
    /// io_uring, else std (with a log line) where no ring can be created.
    Auto,
    /// tokio-uring, each write linked to its fdatasync.
    #[serde(alias = "io_uring", alias = "io-uring")]
    #[value(alias = "io_uring", alias = "io-uring")]
    Uring,
    /// pwrite + fdatasync.
    #[default]
    #[serde(alias = "pwrite")]
    #[value(alias = "pwrite")]
    Std,
}

impl IoBackend {
    /// The spelling a flag or the file takes.
    pub fn name(self) -> &'static str {
        match self {
            IoBackend::Auto => "auto",
            IoBackend::Uring => "uring",
            IoBackend::Std => "std",
        }
    }
}

impl std::fmt::Display for IoBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl From<IoBackend> for BackendChoice {
    fn from(b: IoBackend) -> Self {
        match b {
            IoBackend::Auto => BackendChoice::Auto,
            IoBackend::Uring => BackendChoice::Uring,
            IoBackend::Std => BackendChoice::Std,
        }
    }
}

/// `[storage] import_io`: how segments received whole (catch-up) are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
#[value(rename_all = "kebab-case")]
pub enum ImportIo {
    /// io_uring, blocks registered, several writes queued (threads where no ring).
    #[serde(alias = "io_uring", alias = "io-uring")]
    #[value(alias = "io_uring", alias = "io-uring")]
    Uring,
    /// pwrite from helper threads.
    #[default]
    Threads,
}

impl From<ImportIo> for spool_storage::ImportIo {
    fn from(i: ImportIo) -> Self {
        match i {
            ImportIo::Uring => spool_storage::ImportIo::Uring,
            ImportIo::Threads => spool_storage::ImportIo::Threads,
        }
    }
}

/// `[storage] append_io`: how group commits are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
#[value(rename_all = "kebab-case")]
pub enum AppendIo {
    /// Through the page cache, then fdatasync.
    Buffered,
    /// Whole pages with O_DIRECT and RWF_DSYNC.
    Direct,
    /// Direct for frames received from an upstream, buffered for local appends.
    #[default]
    Replicated,
}

impl From<AppendIo> for spool_storage::AppendIo {
    fn from(a: AppendIo) -> Self {
        match a {
            AppendIo::Buffered => spool_storage::AppendIo::Buffered,
            AppendIo::Direct => spool_storage::AppendIo::Direct,
            AppendIo::Replicated => spool_storage::AppendIo::Replicated,
        }
    }
}

/// `[storage] recovery`: what a torn tail at open does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
#[value(rename_all = "kebab-case")]
pub enum Recovery {
    /// Cut back to the last whole batch.
    #[default]
    #[serde(alias = "truncate_tail")]
    #[value(alias = "truncate_tail")]
    TruncateTail,
    /// Refuse to open.
    Strict,
}

impl From<Recovery> for RecoveryMode {
    fn from(r: Recovery) -> Self {
        match r {
            Recovery::TruncateTail => RecoveryMode::TruncateTail,
            Recovery::Strict => RecoveryMode::Strict,
        }
    }
}

/// `[storage] on_corruption`: damage found in synced data (never cut either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
#[value(rename_all = "kebab-case")]
pub enum CorruptionPolicy {
    /// Serve around it; reads of the damaged records fail with DATA_LOSS.
    #[default]
    Isolate,
    /// Refuse to start.
    Refuse,
}

impl From<CorruptionPolicy> for OnCorruption {
    fn from(c: CorruptionPolicy) -> Self {
        match c {
            CorruptionPolicy::Isolate => OnCorruption::Isolate,
            CorruptionPolicy::Refuse => OnCorruption::Refuse,
        }
    }
}

/// `[replication] ack_timeout_policy`: a semi-sync/sync append whose replicas did not
/// confirm in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
#[value(rename_all = "kebab-case")]
pub enum AckTimeoutPolicy {
    /// The request fails (DEADLINE_EXCEEDED); its records stay and replicate.
    #[default]
    Fail,
    /// Acknowledged as async, marked degraded.
    #[serde(alias = "degrade-to-async")]
    #[value(alias = "degrade-to-async")]
    Degrade,
}

impl From<AckTimeoutPolicy> for spool_replication::ack::TimeoutPolicy {
    fn from(p: AckTimeoutPolicy) -> Self {
        use spool_replication::ack::TimeoutPolicy;
        match p {
            AckTimeoutPolicy::Fail => TimeoutPolicy::Fail,
            AckTimeoutPolicy::Degrade => TimeoutPolicy::DegradeToAsync,
        }
    }
}

/// `default_ack`: the ack mode a request gets when it names none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
#[value(rename_all = "kebab-case")]
pub enum DefaultAck {
    /// In the primary's page cache (weaker).
    Written,
    /// fdatasync'd on the primary.
    #[default]
    Async,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every spelling, in the file and on the command line.
    fn both<T>(spellings: &[(&str, T)])
    where
        T: ValueEnum + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug,
    {
        #[derive(Deserialize)]
        struct File<T> {
            v: T,
        }
        for (text, want) in spellings {
            let file: File<T> = toml::from_str(&format!("v = {text:?}")).unwrap();
            assert_eq!(&file.v, want, "TOML {text:?}");
            let flag = T::from_str(text, false).unwrap();
            assert_eq!(&flag, want, "flag {text:?}");
        }
        let e = toml::from_str::<File<T>>("v = \"nope\"").err().unwrap();
        assert!(e.to_string().contains("unknown variant"), "{e}");
        assert!(T::from_str("nope", false).is_err());
    }

    #[test]
    fn io_backend_spellings() {
        both(&[
            ("auto", IoBackend::Auto),
            ("uring", IoBackend::Uring),
            ("io_uring", IoBackend::Uring),
            ("io-uring", IoBackend::Uring),
            ("std", IoBackend::Std),
            ("pwrite", IoBackend::Std),
        ]);
        for b in [IoBackend::Auto, IoBackend::Uring, IoBackend::Std] {
            assert_eq!(IoBackend::from_str(b.name(), false).unwrap(), b);
            assert_eq!(BackendChoice::from(b).to_string(), b.name());
        }
    }

    #[test]
    fn recovery_spellings() {
        both(&[
            ("truncate-tail", Recovery::TruncateTail),
            ("truncate_tail", Recovery::TruncateTail),
            ("strict", Recovery::Strict),
        ]);
    }

    #[test]
    fn corruption_policy_spellings() {
        both(&[
            ("isolate", CorruptionPolicy::Isolate),
            ("refuse", CorruptionPolicy::Refuse),
        ]);
    }

    #[test]
    fn ack_timeout_policy_spellings() {
        both(&[
            ("fail", AckTimeoutPolicy::Fail),
            ("degrade", AckTimeoutPolicy::Degrade),
            ("degrade-to-async", AckTimeoutPolicy::Degrade),
        ]);
    }

    #[test]
    fn default_ack_spellings() {
        both(&[
            ("written", DefaultAck::Written),
            ("async", DefaultAck::Async),
        ]);
    }
}
