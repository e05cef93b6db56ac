//! Typed errors. Corruption is a different error from IO; disk full is its own kind so
//! that servers can map it to RESOURCE_EXHAUSTED; every error keeps its context.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// Why a frame failed to decode. Carries no context; [`StorageError::Corrupt`] adds it.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FormatError {
    #[error("need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    #[error("bad magic {0:#010x}")]
    BadMagic(u32),
    #[error("unknown format version {0}")]
    UnknownVersion(u16),
    #[error("unknown flags {0:#06x}")]
    UnknownFlags(u16),
    #[error("length field {0} out of bounds")]
    BadLength(u32),
    #[error("record count {0} out of bounds")]
    BadRecordCount(u32),
    #[error("last timestamp before first timestamp")]
    BadTimestamps,
    #[error("crc mismatch: stored {stored:#010x}, computed {actual:#010x}")]
    BadCrc { stored: u32, actual: u32 },
    #[error("record {0} overruns the payload")]
    BadRecord(u32),
    #[error("frame starts at offset {found}, expected {expected}")]
    OffsetMismatch { expected: u64, found: u64 },
    #[error("zstd: {0}")]
    Decompress(String),
}

/// Records a node holds only as damaged bytes (see `damage`): what a reader gets instead.
#[derive(Debug, Error)]
#[error(
    "records from offset {first_offset} {} of log {log:?} are damaged on this node \
     (segment {} at byte {position}: {reason}); {}",
    next_offset.map_or("to the end of their segment".to_owned(), |n| format!("to {n}")),
    path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
    next_offset.map_or(
        "read them from a replica, or repair this node from one (`spool admin repair`)".to_owned(),
        |n| format!("read on from offset {n} to skip them, read them from a replica, or repair this node from one (`spool admin repair`)")
    )
)]
pub struct DataLoss {
    pub log: String,
    pub first_offset: u64,
    /// The first offset past the damage, where a reader can go on (None: unknown).
    pub next_offset: Option<u64>,
    pub path: PathBuf,
    pub position: u64,
    #[source]
    pub reason: FormatError,
}

#[derive(Debug, Error)]
pub enum StorageError {
    #[error("io error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("disk full writing {path}; free space, then retry (acknowledged data is intact)")]
    DiskFull {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("corrupt data in {path} at byte {position}: {reason}")]
    Corrupt {
        path: PathBuf,
        position: u64,
        #[source]
        reason: FormatError,
    },
    #[error("{0}")]
    DataLoss(Box<DataLoss>),
    #[error(
        "log {log:?} is damaged at offset {offset} and takes no writes until it is repaired \
         from a peer holding its records (`spool admin repair {log}`)"
    )]
    Damaged { log: String, offset: u64 },
    #[error("corrupt metadata {path}: {reason}")]
    CorruptMeta { path: PathBuf, reason: String },
    #[error("{0}")]
    InvalidInput(String),
    #[error("log {0:?} not found")]
    LogNotFound(String),
    #[error("log {0:?} already exists")]
    LogExists(String),
    #[error("offset {offset} is out of range for log {log:?} (first kept {start}, end {end})")]
    OffsetOutOfRange {
        log: String,
        offset: u64,
        start: u64,
        end: u64,
    },
    #[error("record of {size} bytes exceeds the maximum of {max} bytes")]
    RecordTooLarge { size: usize, max: usize },
    #[error("frame rejected for log {log:?}: {reason}")]
    FrameRejected { log: String, reason: String },
    #[error(
        "log {log:?} refuses writes after an earlier IO failure ({cause}); restart to recover"
    )]
    Poisoned { log: String, cause: String },
    #[error(
        "sequence {sequence} of producer {producer_id} is out of order in log {log:?}: \
         expected {expected}, one past the last acknowledged; a producer sends its \
         requests in order, each sequence one more than the one before"
    )]
    SequenceOutOfOrder {
        log: String,
        producer_id: u64,
        sequence: u64,
        expected: u64,
    },
    #[error(
        "sequence {sequence} of producer {producer_id} is older than the last {kept} \
         acknowledged in log {log:?} (the last is {last}): it was appended before, and its \
         offsets are no longer known"
    )]
    SequenceTooOld {
        log: String,
        producer_id: u64,
        sequence: u64,
        last: u64,
        kept: usize,
    },
    #[error("storage is shut down")]
    Closed,
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

impl StorageError {
    /// Classify an IO failure: ENOSPC/EDQUOT become [`StorageError::DiskFull`].
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => StorageError::DiskFull { path, source },
            _ => StorageError::Io { path, source },
        }
    }

    pub fn is_disk_full(&self) -> bool {
        matches!(self, StorageError::DiskFull { .. })
    }

    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            StorageError::Corrupt { .. }
                | StorageError::CorruptMeta { .. }
                | StorageError::DataLoss(_)
        )
    }

    pub fn is_data_loss(&self) -> bool {
        matches!(self, StorageError::DataLoss(_))
    }
}

/// Attach a path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|e| StorageError::io(path, e))
    }
}
