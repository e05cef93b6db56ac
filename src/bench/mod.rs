//! `spool bench`: load generators for the storage engine and the gRPC server.
//!
//! - `spool bench storage` ([`storage`]): N tasks append concurrently through group commit;
//!   reports throughput, latency percentiles, CPU per record and the group-commit shape
//!   (records per group, bytes per fdatasync) so that the run can be set beside fio at the
//!   same flush size (`benches/storage_vs_fio.sh`).
//! - `spool bench scan` ([`scan`]): writes a log of N GiB, reopens it (cold page cache when
//!   the kernel lets us drop it) and reads it back sequentially.
//! - `spool bench grpc` ([`grpc`]): a `spool serve` child process driven over loopback by the
//!   Rust client: pipelined AppendStream, concurrent unary appends, subscribe delay
//!   (`benches/grpc_vs_redis.sh` sets it beside the storage engine and Redis); with
//!   `--replicas N --ack async|semi-sync:K|sync` the primary gets N replica children.
//! - `spool bench catchup` ([`catchup`]): full and partial replica catch-up, MB/s.
//! - `spool bench redis-wait` / `nats-js` ([`peers`]): the peers' acknowledged writes
//!   (`benches/replication_vs_peers.sh` sets all of these side by side).
//!
//! Data lives in a fresh temporary directory on the repository's disk (under `./target` by
//! default) and is deleted afterwards.

mod catchup;
mod grpc;
mod peers;
mod scan;
mod storage;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use serde::Serialize;
use spool_storage::{BackendChoice, Durability, StorageConfig};

pub use catchup::CatchupArgs;
pub use grpc::GrpcArgs;
pub use peers::PeerArgs;
pub use scan::ScanArgs;
pub use storage::StorageArgs;

const LOG_NAME: &str = "bench";
const MIB: f64 = (1u64 << 20) as f64;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Concurrent appenders with group commit: throughput, latency, CPU, fsync shape.
    Storage(StorageArgs),
    /// Write N GiB, reopen (cold cache if possible), read everything back sequentially.
    Scan(ScanArgs),
    /// A `spool serve` process over loopback: pipelined stream, unary appends, subscribe.
    Grpc(GrpcArgs),
    /// Replica catch-up: fill a primary, time a fresh replica's full sync, then a partial one.
    Catchup(CatchupArgs),
    /// Redis primary + replica: SET then WAIT N 0 per write, over RESP (a peer reference).
    RedisWait(PeerArgs),
    /// NATS JetStream: publishes awaiting their ack, file storage (a peer reference).
    NatsJs(PeerArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityArg {
    /// Acknowledge after fdatasync.
    Fsync,
    /// Acknowledge once in the page cache (weaker; periodic sync).
    Unsynced,
}

impl From<DurabilityArg> for Durability {
    fn from(d: DurabilityArg) -> Self {
        match d {
            DurabilityArg::Fsync => Durability::Fsync,
            DurabilityArg::Unsynced => Durability::Unsynced,
        }
    }
}

/// Options shared by the storage and scan load generators.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Directory under which a fresh temporary data directory is created (and removed).
    /// Default: ./target if it exists (same disk as the repository), else $TMPDIR.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// IO backends to run, comma separated (std, uring, auto); one run per backend.
    #[arg(
        long = "backends",
        alias = "backend",
        value_delimiter = ',',
        default_value = "auto"
    )]
    pub backends: Vec<BackendChoice>,
    /// Segment file size in bytes.
    #[arg(long, default_value_t = 128 << 20)]
    pub segment_bytes: u64,
    /// The first segment's size (0: the default 256 KiB, doubling up to segment_bytes;
    /// segment_bytes: every segment full size, as before segments grew).
    #[arg(long, default_value_t = 0)]
    pub initial_segment_bytes: u64,
    /// Write the JSON results to this file ("-" for stdout; the table then goes to stderr).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Tokio worker threads for the appenders (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Storage(args) => storage::run_storage(&args),
        BenchCommand::Scan(args) => scan::run_scan(&args),
        BenchCommand::Grpc(args) => grpc::run_grpc(&args),
        BenchCommand::Catchup(args) => catchup::run_catchup(&args),
        BenchCommand::RedisWait(args) => peers::run_redis_wait(&args),
        BenchCommand::NatsJs(args) => peers::run_nats_js(&args),
    }
}

// ---------------------------------------------------------------------------------------
// Shared helpers (used by every load generator)

fn runtime(threads: Option<usize>) -> Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.enable_all();
    if let Some(n) = threads {
        b.worker_threads(n.max(1));
    }
    b.build().context("building the tokio runtime")
}

fn base_dir(dir: &Option<PathBuf>) -> PathBuf {
    if let Some(d) = dir {
        return d.clone();
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(t);
    }
    let target = PathBuf::from("target");
    if target.is_dir() {
        target
    } else {
        std::env::temp_dir()
    }
}

fn fresh_data_dir(dir: &Option<PathBuf>) -> Result<tempfile::TempDir> {
    let base = base_dir(dir);
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    tempfile::Builder::new()
        .prefix("spool-bench-")
        .tempdir_in(&base)
        .with_context(|| format!("creating a temporary directory in {}", base.display()))
}

fn storage_config(data_dir: &Path, backend: BackendChoice, common: &CommonArgs) -> StorageConfig {
    let mut config = StorageConfig::new(data_dir);
    config.backend = backend;
    config.default_log.segment_bytes = common.segment_bytes;
    config.default_log.initial_segment_bytes = common.initial_segment_bytes;
    config
}

/// Log-like record content (JSON-ish text), deterministic, exactly `size` bytes.
fn record_payload(size: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut s = String::with_capacity(size + 256);
    while s.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let _ = write!(
            s,
            r#"{{"ts":"2024-05-{:02}T12:{:02}:{:02}.{:03}Z","level":"{}","svc":"api-{}","msg":"request done","path":"/v1/items/{}","status":{},"ms":{}}}"#,
            1 + x % 28,
            (x >> 8) % 60,
            (x >> 16) % 60,
            (x >> 24) % 1000,
            ["INFO", "WARN", "DEBUG", "ERROR"][(x >> 34) as usize % 4],
            (x >> 36) % 16,
            (x >> 40) % 100_000,
            [200, 201, 404, 500][(x >> 58) as usize % 4],
            (x >> 44) % 900
        );
    }
    let mut v = s.into_bytes();
    v.truncate(size);
    v
}

#[derive(Debug, Clone, Copy, Default)]
struct Rusage {
    user_s: f64,
    sys_s: f64,
    max_rss_kib: u64,
}

fn rusage() -> Rusage {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a `struct rusage` into the pointer it is given.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    if rc != 0 {
        return Rusage::default();
    }
    // SAFETY: zero-initialised and filled in by a successful getrusage.
    let ru = unsafe { ru.assume_init() };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Rusage {
        user_s: secs(ru.ru_utime),
        sys_s: secs(ru.ru_stime),
        max_rss_kib: ru.ru_maxrss.max(0) as u64,
    }
}

/// Current resident set size (MiB) from /proc/self/statm; 0 where unavailable.
fn current_rss_mib() -> f64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/statm") else {
        return 0.0;
    };
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    (pages * page) as f64 / MIB
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}
fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn write_json<T: Serialize>(path: &Option<PathBuf>, value: &T) -> Result<()> {
    let Some(path) = path else { return Ok(()) };
    let text = serde_json::to_string_pretty(value)?;
    if path.as_os_str() == "-" {
        println!("{text}");
    } else {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Human output goes to stderr when the JSON goes to stdout.
fn human(json: &Option<PathBuf>, line: &str) {
    if json.as_ref().is_some_and(|p| p.as_os_str() == "-") {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

#[derive(Debug, Serialize)]
struct LatencyUs {
    mean: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

/// Latencies in nanoseconds, 1 ns to 100 s, 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

impl LatencyUs {
    /// Percentiles of a histogram of nanoseconds, in microseconds.
    fn from_hist(h: &Histogram<u64>) -> LatencyUs {
        let us = |q: f64| round1(h.value_at_quantile(q) as f64 / 1e3);
        LatencyUs {
            mean: round1(h.mean() / 1e3),
            p50: us(0.5),
            p99: us(0.99),
            p999: us(0.999),
            max: round1(h.max() as f64 / 1e3),
        }
    }
}
