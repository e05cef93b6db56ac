//! spool-storage: Spool's segmented, append-only commit log.
//!
//! - [`format`]: the batch frame, identical on disk and on the replication wire;
//! - [`Storage`]: a data directory of named [`Log`]s and the storage thread that owns all
//!   writes (group commit through the [`io`] backends: io_uring or pwrite+fdatasync);
//! - [`LogReader`]: reads through mmap, never past the durable end;
//! - recovery on open validates only the tail ([`RecoveryMode`]).
//!
//! This crate knows nothing of gRPC or replication; replication builds on
//! [`Log::append_frames`], [`LogReader::read_frames`], epochs and the retention floor.

mod catchup;
pub mod config;
pub mod crashsafe;
pub mod damage;
pub mod error;
pub mod format;
pub mod index;
pub mod io;
mod log;
mod log_writer;
pub mod meta;
mod meta_worker;
mod new_segment;
mod producers;
mod reader;
mod recovery;
mod retention;
pub mod scrub;
mod sealed_record;
pub mod segment;
mod spare;
pub mod stats;
mod storage;
mod writer;

#[doc(hidden)]
pub mod bench_support;
pub mod check;

pub use catchup::{FollowOn, SegmentImport};
pub use config::{Compression, Durability, LogConfig, OnCorruption, RecoveryMode, StorageConfig};
pub use error::{DataLoss, FormatError, Result, StorageError};
pub use format::{ProducerSeq, Record};
pub use io::{AppendIo, BackendChoice, ImportIo};
pub use log::{AppendAck, DamageReport, Log, Positions};
pub use log_writer::Repaired;
pub use meta::EpochHistory;
pub use reader::{FrameChunk, FrameCursor, LogReader, SegmentSpan};
pub use storage::{validate_log_name, Storage};
