//! The owned-buffer IO trait the storage thread writes through, and its backends.
//!
//! Buffers go in and come back with the result (tokio-uring's `BufResult` shape) so that an
//! io_uring backend can hold them while the kernel works. Reads are served from mmap. The
//! metadata side ([`MetaIo`]: renames, removals, directory syncs, small files, spares) is
//! part of every backend too, so that the fault backend can fail any change to a log's
//! directory.

use std::future::Future;
use std::io;
use std::path::Path;

pub(crate) mod aligned;
pub mod fault;
pub mod meta;
pub mod std_backend;
#[cfg(target_os = "linux")]
pub mod uring;

pub use meta::MetaIo;

/// Result of an owned-buffer operation: the outcome and the buffer, handed back either way.
pub type BufResult<T> = (io::Result<T>, Vec<u8>);

/// A file opened for writing by a backend. Futures are polled on the storage thread only.
pub trait IoFile: 'static {
    /// Write all of `buf[skip..]` at `pos`, then fdatasync when `sync`. Backends that can
    /// chain the two in one submission (io_uring linked SQEs, `RWF_DSYNC`) do. `skip` lets a
    /// caller put the bytes on an O_DIRECT boundary of its own buffer; `replicated`: the
    /// bytes are frames received from an upstream (see [`AppendIo::Replicated`]).
    fn write_at(
        &self,
        buf: Vec<u8>,
        skip: usize,
        pos: u64,
        sync: bool,
        replicated: bool,
    ) -> impl Future<Output = BufResult<()>>;

    /// fdatasync.
    fn sync_data(&self) -> impl Future<Output = io::Result<()>>;

    /// The file itself, for a plain write outside the backend's accounting (the durable
    /// mark's idle rewrite, see `LogWriter::refresh_mark`).
    fn std_file(&self) -> &std::fs::File;

    /// Write all of `buf` at `pos`.
    fn write_all_at(&self, buf: Vec<u8>, pos: u64) -> impl Future<Output = BufResult<()>> {
        self.write_at(buf, 0, pos, false, false)
    }

    /// Write all of `buf` at `pos`, then fdatasync.
    fn write_all_at_sync(&self, buf: Vec<u8>, pos: u64) -> impl Future<Output = BufResult<()>> {
        self.write_at(buf, 0, pos, true, false)
    }
}

/// Opens [`IoFile`]s, and does the metadata work ([`MetaIo`]). Cheap to clone; its files
/// live on the storage thread.
pub trait IoBackend: MetaIo + Clone {
    type File: IoFile;

    fn name(&self) -> &'static str;

    /// Wrap an already opened, writable std file.
    fn wrap(&self, file: std::fs::File, path: &Path) -> io::Result<Self::File>;
}

/// How a segment received whole (catch-up, full sync) is written with O_DIRECT: both keep
/// several 4 MiB writes in flight and sync once at the end.
/// The default is the one that won the same-run A/B (benches/RESULTS.md, "io_uring on
/// the direct paths").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImportIo {
    /// One io_uring per import, its blocks registered, writes queued by the importing
    /// thread; the threads where no ring can be created.
    Uring,
    /// pwrite from a pool of helper threads.
    #[default]
    Threads,
}

/// How a log's group commits are written. The default won the same-run A/B
/// (benches/RESULTS.md, "Direct group commits"; docs/decisions/0018).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AppendIo {
    /// Through the page cache, then fdatasync.
    Buffered,
    /// Whole pages with O_DIRECT, synced by `RWF_DSYNC` on the write (pre-zeroed segments
    /// need no metadata at the sync); tail readers fault the written pages in from disk.
    Direct,
    /// Direct for groups of frames received from an upstream (a replica's writes, read
    /// by few), buffered for local appends (a primary's, read at once by its replicas and
    /// subscribers).
    #[default]
    Replicated,
}

impl AppendIo {
    /// Whether a group write goes direct; `replicated`: it holds only received frames.
    pub fn direct_for(self, replicated: bool) -> bool {
        match self {
            AppendIo::Buffered => false,
            AppendIo::Direct => true,
            AppendIo::Replicated => replicated,
        }
    }
}

/// Which backend a node uses. `Auto` prefers io_uring and falls back to std with a log
/// line when a ring cannot be created (seccomp, `kernel.io_uring_disabled`, old kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    Auto,
    Uring,
    #[default]
    Std,
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "uring" | "io_uring" | "io-uring" => Ok(BackendChoice::Uring),
            "std" | "pwrite" => Ok(BackendChoice::Std),
            other => Err(format!(
                "unknown io backend {other:?}; expected auto, uring or std"
            )),
        }
    }
}

impl std::fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Uring => "uring",
            BackendChoice::Std => "std",
        })
    }
}
