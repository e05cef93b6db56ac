//! Catch-up: a replica far behind its upstream receives sealed segments (or a durable span
//! of the upstream's active segment) whole, instead of frame by frame through group commit.
//!
//! The rest of storage sees it through a narrow interface:
//! - [`SegmentImport`] (public): a segment received whole, its frames checked and staged
//!   in one file (`import`, written with O_DIRECT by `direct_write`: through io_uring,
//!   `uring_write`, or helper threads, as [`crate::ImportIo`] says);
//! - [`InstallJob`]: putting a staged segment in place after a log's end, as a metadata
//!   job; the log writer makes it and takes what it did (`log_writer::install`);
//! - [`allocated_only`]: whether a segment file was only allocated, not zero-filled (a log
//!   created for a catch-up starts with one, so that no segment of zeros is written while
//!   the catch-up writes). Recovery and truncation ask it of the segment they make
//!   active, so that it goes on giving way to a zeroed spare (see `log_writer::placement`);
//! - [`release_tail`]: the unused blocks of an allocated-only segment sealed before it was
//!   full, given back.
//!
//! Measurements behind these choices: docs/decisions/0013-segment-placement-and-writer-split.md.

mod direct_write;
mod extents;
mod import;
mod install;
mod receive;
mod uring_write;

use std::fs::File;

pub(crate) use import::StagedSegment;
pub use import::{FollowOn, SegmentImport};
pub(crate) use install::{ActiveEnd, InstallDone, InstallJob, Installed};

/// Whether the segment file `f` of `capacity` bytes was only allocated (its last block
/// never written) rather than zero-filled to its end. Where the filesystem cannot say,
/// taken as zero-filled: appends are correct either way, only slower into unwritten
/// extents.
pub(crate) fn allocated_only(f: &File, capacity: u64) -> bool {
    extents::never_written(f, capacity - 1) == Some(true)
}

/// Give the blocks past `len` of an allocated-only segment sealed before it was full back
/// to the filesystem (best effort): it may hold a few frames in a whole segment's file.
/// Readers map the file; a hole reads as zeros, as the tail did.
pub(crate) fn release_tail(path: &std::path::Path, len: u64) {
    extents::release_tail(path, len)
}
