//! Node-wide and per-log configuration, with the bounds each value must respect.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Result, StorageError};
use crate::format::{FRAME_BYTES_MAX, FRAME_OVERHEAD_MAX, HEADER_BYTES, RECORD_PREFIX_BYTES};
use crate::io::{AppendIo, BackendChoice, ImportIo};

/// What to do when the tail of the last segment is torn or corrupt on open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// Cut the log back to the last whole, valid batch (what a crash mid-write leaves).
    #[default]
    TruncateTail,
    /// Refuse to open: an operator looks first.
    Strict,
}

impl std::str::FromStr for RecoveryMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "truncate-tail" | "truncate_tail" => Ok(RecoveryMode::TruncateTail),
            "strict" => Ok(RecoveryMode::Strict),
            o => Err(format!(
                "unknown recovery mode {o:?}; expected truncate-tail or strict"
            )),
        }
    }
}

/// What to do when recovery or a read finds damage: a bad frame inside data the node can
/// prove it synced (never a torn tail, which [`RecoveryMode`] handles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnCorruption {
    /// Open the log and serve everything around the damage: reads of the damaged records
    /// fail with DATA_LOSS naming them; a log whose end is damaged takes no writes until
    /// it is repaired. Nothing is cut.
    #[default]
    Isolate,
    /// Refuse to open the data directory, naming the file and byte.
    Refuse,
}

impl std::str::FromStr for OnCorruption {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "isolate" => Ok(OnCorruption::Isolate),
            "refuse" => Ok(OnCorruption::Refuse),
            o => Err(format!(
                "unknown on-corruption policy {o:?}; expected isolate or refuse"
            )),
        }
    }
}

/// When an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// After fdatasync: survives a crash or power loss.
    #[default]
    Fsync,
    /// WEAKER: after the write reached the OS page cache. Survives a process crash but not a
    /// kernel crash or power loss until the next periodic sync (`unsynced_flush_interval`).
    /// Readers still see the records only once they are synced.
    Unsynced,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    None,
    /// zstd at this level for batches whose payload is at least `compress_min_bytes`.
    Zstd { level: i32 },
}

/// Per-log settings, persisted in the log's metadata file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Segment file size; files are pre-zeroed to it so that fdatasync never has to commit
    /// a size change.
    pub segment_bytes: u64,
    /// One sparse index entry per this many bytes of frames.
    pub index_interval_bytes: u32,
    pub retention_bytes: Option<u64>,
    pub retention_ms: Option<u64>,
    pub compression: Compression,
    pub compress_min_bytes: u32,
    /// The log's first segment size (0: [`SEGMENT_BYTES_FIRST`]); segments double from it
    /// up to `segment_bytes`.
    pub initial_segment_bytes: u64,
}

pub const SEGMENT_BYTES_MIN: u64 = 64 << 10;
/// A log's first segment: each next one is twice its predecessor's size, up to
/// `segment_bytes`, so a log that holds little takes little disk (a busy one reaches full
/// size within a few hundred MiB).
pub const SEGMENT_BYTES_FIRST: u64 = 256 << 10;
/// Upper bound of `group_bytes_max`; with [`FRAME_BYTES_MAX`] it bounds how far past the
/// durable end an interrupted write can have left bytes ([`ZERO_AHEAD_BYTES`]).
pub const GROUP_BYTES_CAP: usize = 8 << 20;
/// Recovery makes sure this many bytes after the last valid frame are zero, so that the
/// residue of an interrupted write can never be mistaken for data later.
pub const ZERO_AHEAD_BYTES: u64 = (GROUP_BYTES_CAP + FRAME_BYTES_MAX) as u64;
/// Index entries hold 32-bit positions.
pub const SEGMENT_BYTES_MAX: u64 = 2 << 30;
/// Default of [`StorageConfig::producers_max`].
pub const PRODUCERS_MAX_DEFAULT: usize = 10_000;
/// Default of [`StorageConfig::producer_expiry`]: a week.
pub const PRODUCER_EXPIRY_MS_DEFAULT: u64 = 7 * 24 * 3600 * 1000;

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 128 << 20,
            index_interval_bytes: 32 << 10,
            retention_bytes: None,
            retention_ms: None,
            compression: Compression::None,
            compress_min_bytes: 4096,
            initial_segment_bytes: 0,
        }
    }
}

impl LogConfig {
    pub fn validate(&self) -> Result<()> {
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            return Err(StorageError::InvalidInput(format!(
                "segment_bytes {} must be between {SEGMENT_BYTES_MIN} and {SEGMENT_BYTES_MAX}",
                self.segment_bytes
            )));
        }
        if self.segment_bytes % 4096 != 0 {
            return Err(StorageError::InvalidInput(format!(
                "segment_bytes {} must be a multiple of 4096",
                self.segment_bytes
            )));
        }
        let initial = self.initial_segment_bytes;
        if initial != 0
            && (initial % 4096 != 0 || !(SEGMENT_BYTES_MIN..=self.segment_bytes).contains(&initial))
        {
            return Err(StorageError::InvalidInput(format!(
                "initial_segment_bytes {initial} must be a multiple of 4096 between \
                 {SEGMENT_BYTES_MIN} and segment_bytes ({}), or 0 for the default",
                self.segment_bytes
            )));
        }
        if self.index_interval_bytes < 1024 {
            return Err(StorageError::InvalidInput(
                "index_interval_bytes must be at least 1024".into(),
            ));
        }
        if let Compression::Zstd { level } = self.compression {
            if !(1..=19).contains(&level) {
                return Err(StorageError::InvalidInput(format!(
                    "zstd level {level} must be between 1 and 19"
                )));
            }
        }
        Ok(())
    }

    /// The size of a log's first segment (see [`SEGMENT_BYTES_FIRST`]).
    pub fn first_segment_bytes(&self) -> u64 {
        match self.initial_segment_bytes {
            0 => self.segment_bytes.min(SEGMENT_BYTES_FIRST),
            n => n.min(self.segment_bytes),
        }
    }

    /// The size of the segment after one of `current` bytes, holding at least `need`
    /// bytes: twice as large, up to `segment_bytes`.
    pub fn next_segment_bytes(&self, current: u64, need: u64) -> u64 {
        let grown = current.saturating_mul(2).min(self.segment_bytes);
        grown.max(need.next_multiple_of(4096)).clamp(
            SEGMENT_BYTES_MIN.min(self.segment_bytes),
            self.segment_bytes,
        )
    }

    /// Largest frame this log's segments can hold, with room for the end marker.
    pub fn frame_bytes_max(&self) -> usize {
        (self.segment_bytes as usize - HEADER_BYTES).min(FRAME_BYTES_MAX)
    }
}

/// Descriptors kept for other uses than logs' files (sockets, segment fetches, spares).
const FDS_RESERVED: u64 = 256;

/// A quarter of what the open-files limit leaves after [`FDS_RESERVED`], in logs of up to
/// three descriptors each (segment, index, and the segment opened with O_DIRECT for
/// direct group commits): room for connections and the other three quarters untouched.
pub fn open_logs_default() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct it is given.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        1024
    };
    (soft.saturating_sub(FDS_RESERVED) / 12).clamp(16, 100_000) as usize
}

/// Node-wide storage settings.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    pub backend: BackendChoice,
    /// How segments received whole are written.
    pub import_io: ImportIo,
    /// Which group commits are written with O_DIRECT.
    pub append_io: AppendIo,
    pub recovery: RecoveryMode,
    pub on_corruption: OnCorruption,
    /// Bound of the queue in front of the storage thread; appenders wait when it is full.
    pub queue_depth: usize,
    /// Most bytes of frames one group commit gathers before writing.
    pub group_bytes_max: usize,
    /// Largest single record accepted.
    pub record_bytes_max: usize,
    /// Sync period for [`Durability::Unsynced`] appends.
    pub unsynced_flush_interval: Duration,
    /// How often retention runs.
    pub retention_check_interval: Duration,
    /// Settings for logs created without explicit ones.
    pub default_log: LogConfig,
    /// Logs whose files (two descriptors each, three with direct group commits) stay open at once; idle ones beyond it are
    /// closed, least recently used first, and opened again when written.
    pub open_logs_max: usize,
    /// Rate of background scrub passes over sealed segments (0: none).
    pub scrub_bytes_per_sec: u64,
    /// Time from one background scrub pass to the next.
    pub scrub_interval: Duration,
    /// Idempotent appends: producers whose last batches each log keeps (the least
    /// recently written are forgotten first).
    pub producers_max: usize,
    /// Idempotent appends: a producer silent this long (by the log's frame times) is
    /// forgotten; its next append is taken whatever its sequence.
    pub producer_expiry: Duration,
}

impl StorageConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        StorageConfig {
            data_dir: data_dir.into(),
            backend: BackendChoice::default(),
            import_io: ImportIo::default(),
            append_io: AppendIo::default(),
            recovery: RecoveryMode::default(),
            on_corruption: OnCorruption::default(),
            queue_depth: 4096,
            group_bytes_max: 4 << 20,
            record_bytes_max: 8 << 20,
            unsynced_flush_interval: Duration::from_millis(100),
            retention_check_interval: Duration::from_secs(10),
            default_log: LogConfig::default(),
            open_logs_max: open_logs_default(),
            scrub_bytes_per_sec: 8 << 20,
            scrub_interval: Duration::from_secs(3600),
            producers_max: PRODUCERS_MAX_DEFAULT,
            producer_expiry: Duration::from_millis(PRODUCER_EXPIRY_MS_DEFAULT),
        }
    }

    pub(crate) fn policy(&self) -> crate::recovery::Policy {
        crate::recovery::Policy {
            mode: self.recovery,
            on_corruption: self.on_corruption,
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.default_log.validate()?;
        if self.queue_depth == 0 {
            return Err(StorageError::InvalidInput(
                "queue_depth must be positive".into(),
            ));
        }
        if self.group_bytes_max == 0 || self.group_bytes_max > GROUP_BYTES_CAP {
            return Err(StorageError::InvalidInput(format!(
                "group_bytes_max must be between 1 and {GROUP_BYTES_CAP}"
            )));
        }
        // An idempotent append's frame carries the producer extension too.
        if self.record_bytes_max + FRAME_OVERHEAD_MAX + RECORD_PREFIX_BYTES > FRAME_BYTES_MAX {
            return Err(StorageError::InvalidInput(format!(
                "record_bytes_max {} exceeds the frame limit of {} bytes",
                self.record_bytes_max,
                FRAME_BYTES_MAX - FRAME_OVERHEAD_MAX - RECORD_PREFIX_BYTES
            )));
        }
        if self.producers_max == 0 || self.producer_expiry.is_zero() {
            return Err(StorageError::InvalidInput(
                "producers_max and producer_expiry must be positive".into(),
            ));
        }
        Ok(())
    }
}
