//! `spool bench`: load generators for the storage engine.
//!
//! - `spool bench storage`: N tasks append concurrently through group commit; reports
//!   throughput, latency percentiles, CPU per record and the group-commit shape (records per
//!   group, bytes per fdatasync) so that the run can be set beside fio at the same flush size
//!   (`benches/storage_vs_fio.sh`).
//! - `spool bench scan`: writes a log of N GiB, reopens it (cold page cache when the kernel
//!   lets us drop it) and reads it back sequentially.
//!
//! Data lives in a fresh temporary directory on the repository's disk (under `./target` by
//! default) and is deleted afterwards.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use serde::Serialize;
use spool_storage::stats::StatsSnapshot;
use spool_storage::{BackendChoice, Durability, Log, Storage, StorageConfig};

const LOG_NAME: &str = "bench";
const MIB: f64 = (1u64 << 20) as f64;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Concurrent appenders with group commit: throughput, latency, CPU, fsync shape.
    Storage(StorageArgs),
    /// Write N GiB, reopen (cold cache if possible), read everything back sequentially.
    Scan(ScanArgs),
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

/// Options shared by both load generators.
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
    /// Write the JSON results to this file ("-" for stdout; the table then goes to stderr).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Tokio worker threads for the appenders (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Debug, Clone, Args)]
pub struct StorageArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Concurrent appending tasks.
    #[arg(long, default_value_t = 64)]
    pub writers: usize,
    /// Record sizes in bytes, comma separated; one run per size.
    #[arg(long, value_delimiter = ',', default_value = "1024")]
    pub record_bytes: Vec<usize>,
    /// Records per append call (one batch frame).
    #[arg(long, default_value_t = 1)]
    pub records_per_append: usize,
    /// Measured seconds per run (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Warm-up seconds per run, excluded from every figure.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    #[arg(long, value_enum, default_value_t = DurabilityArg::Fsync)]
    pub durability: DurabilityArg,
}

#[derive(Debug, Clone, Args)]
pub struct ScanArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// GiB of record payload to write and scan (fractions allowed).
    #[arg(long, default_value_t = 1.0)]
    pub gib: f64,
    #[arg(long, default_value_t = 1024)]
    pub record_bytes: usize,
    /// Records per append while filling the log.
    #[arg(long, default_value_t = 256)]
    pub records_per_append: usize,
    /// Concurrent appending tasks while filling the log.
    #[arg(long, default_value_t = 8)]
    pub writers: usize,
    /// Records per LogReader::read call in the read pass.
    #[arg(long, default_value_t = 4096)]
    pub read_batch: usize,
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Storage(args) => run_storage(&args),
        BenchCommand::Scan(args) => run_scan(&args),
    }
}

// ---------------------------------------------------------------------------------------
// Shared helpers

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

fn storage_config(data_dir: &Path, backend: BackendChoice, segment_bytes: u64) -> StorageConfig {
    let mut config = StorageConfig::new(data_dir);
    config.backend = backend;
    config.default_log.segment_bytes = segment_bytes;
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

// ---------------------------------------------------------------------------------------
// bench storage

#[derive(Debug, Serialize)]
struct LatencyUs {
    mean: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

#[derive(Debug, Serialize)]
struct StorageRun {
    backend: String,
    backend_requested: String,
    durability: DurabilityArg,
    record_bytes: usize,
    records_per_append: usize,
    writers: usize,
    segment_bytes: u64,
    measured_seconds: f64,
    records: u64,
    appends: u64,
    records_per_s: f64,
    appends_per_s: f64,
    /// Record payload only, 10^6 bytes per second.
    payload_mb_per_s: f64,
    /// Frame bytes handed to the disk (headers and length prefixes included).
    disk_mb_per_s: f64,
    latency_us: LatencyUs,
    cpu_user_s: f64,
    cpu_sys_s: f64,
    /// Cores busy on average (process-wide, storage thread and io workers included).
    cpu_cores: f64,
    cpu_s_per_million_records: f64,
    groups: u64,
    mean_group_appends: f64,
    syncs: u64,
    mean_bytes_per_sync: f64,
    fsync_mean_us: f64,
    /// Over the whole run, warm-up included (the counter is a running maximum).
    fsync_max_us: u64,
    /// Process peak so far (ru_maxrss): cumulative over the runs of one invocation.
    peak_rss_mib: f64,
    rss_mib: f64,
}

struct Sample {
    at: Instant,
    ru: Rusage,
    stats: StatsSnapshot,
    records: u64,
    appends: u64,
}

impl Sample {
    fn take(storage: &Storage, records: &AtomicU64, appends: &AtomicU64) -> Sample {
        Sample {
            at: Instant::now(),
            ru: rusage(),
            stats: storage.stats().snapshot(),
            records: records.load(Ordering::Relaxed),
            appends: appends.load(Ordering::Relaxed),
        }
    }
}

fn run_storage(args: &StorageArgs) -> Result<()> {
    if args.writers == 0 || args.records_per_append == 0 || args.record_bytes.is_empty() {
        bail!("--writers, --records-per-append and --record-bytes must be positive");
    }
    if !args.seconds.is_finite()
        || args.seconds <= 0.0
        || !args.warmup.is_finite()
        || args.warmup < 0.0
    {
        bail!("--seconds must be positive and --warmup not negative");
    }
    let rt = runtime(args.common.threads)?;
    human(&args.common.json, &table_header());
    let mut runs = Vec::new();
    for &backend in &args.common.backends {
        for &record_bytes in &args.record_bytes {
            let run = rt.block_on(storage_run(args, backend, record_bytes))?;
            human(&args.common.json, &table_line(&run));
            runs.push(run);
        }
    }
    write_json(&args.common.json, &runs)
}

async fn storage_run(
    args: &StorageArgs,
    backend: BackendChoice,
    record_bytes: usize,
) -> Result<StorageRun> {
    let tmp = fresh_data_dir(&args.common.dir)?;
    let config = storage_config(tmp.path(), backend, args.common.segment_bytes);
    let storage = tokio::task::spawn_blocking(move || Storage::open(config))
        .await?
        .context("opening storage")?;
    let log = storage.create_log(LOG_NAME).await?;

    let records = Arc::new(AtomicU64::new(0));
    let appends = Arc::new(AtomicU64::new(0));
    let payload: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..args.records_per_append)
            .map(|i| record_payload(record_bytes, 0x9E37_79B9 + i as u64))
            .collect(),
    );
    let start = Instant::now();
    let warm_end = start + Duration::from_secs_f64(args.warmup);
    let end = warm_end + Duration::from_secs_f64(args.seconds);
    let durability: Durability = args.durability.into();

    let mut tasks = Vec::with_capacity(args.writers);
    for _ in 0..args.writers {
        let log = log.clone();
        let payload = payload.clone();
        let records = records.clone();
        let appends = appends.clone();
        tasks.push(tokio::spawn(async move {
            writer_task(log, payload, durability, warm_end, end, records, appends).await
        }));
    }

    tokio::time::sleep_until(warm_end.into()).await;
    let s0 = Sample::take(&storage, &records, &appends);
    tokio::time::sleep_until(end.into()).await;
    let s1 = Sample::take(&storage, &records, &appends);

    let mut hist = new_histogram();
    let mut first_err = None;
    for t in tasks {
        match t.await? {
            Ok(h) => hist.add(&h)?,
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    let backend_name = storage.backend_name().to_owned();
    storage.shutdown().await?;
    drop(log);
    drop(storage);
    tmp.close().context("removing the data directory")?;
    if let Some(e) = first_err {
        return Err(e.context("append failed"));
    }

    let secs = (s1.at - s0.at).as_secs_f64();
    let recs = s1.records - s0.records;
    let apps = s1.appends - s0.appends;
    let (st0, st1) = (&s0.stats, &s1.stats);
    let groups = st1.groups - st0.groups;
    let group_cmds = st1.group_commands - st0.group_commands;
    let bytes_written = st1.bytes_written - st0.bytes_written;
    let syncs = st1.syncs - st0.syncs;
    let sync_us = st1.sync_us_total - st0.sync_us_total;
    let user = s1.ru.user_s - s0.ru.user_s;
    let sys = s1.ru.sys_s - s0.ru.sys_s;
    let div = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let us = |q: f64| round1(hist.value_at_quantile(q) as f64 / 1e3);
    Ok(StorageRun {
        backend: backend_name,
        backend_requested: backend.to_string(),
        durability: args.durability,
        record_bytes,
        records_per_append: args.records_per_append,
        writers: args.writers,
        segment_bytes: args.common.segment_bytes,
        measured_seconds: round3(secs),
        records: recs,
        appends: apps,
        records_per_s: round1(div(recs as f64, secs)),
        appends_per_s: round1(div(apps as f64, secs)),
        payload_mb_per_s: round3(div((recs * record_bytes as u64) as f64, secs * 1e6)),
        disk_mb_per_s: round3(div(bytes_written as f64, secs * 1e6)),
        latency_us: LatencyUs {
            mean: round1(hist.mean() / 1e3),
            p50: us(0.5),
            p99: us(0.99),
            p999: us(0.999),
            max: round1(hist.max() as f64 / 1e3),
        },
        cpu_user_s: round3(user),
        cpu_sys_s: round3(sys),
        cpu_cores: round3(div(user + sys, secs)),
        cpu_s_per_million_records: round3(div((user + sys) * 1e6, recs as f64)),
        groups,
        mean_group_appends: round1(div(group_cmds as f64, groups as f64)),
        syncs,
        mean_bytes_per_sync: round1(div(bytes_written as f64, syncs as f64)),
        fsync_mean_us: round1(div(sync_us as f64, syncs as f64)),
        fsync_max_us: st1.sync_us_max,
        peak_rss_mib: round1(s1.ru.max_rss_kib as f64 / 1024.0),
        rss_mib: round1(current_rss_mib()),
    })
}

/// Latencies in nanoseconds, 1 ns to 100 s, 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

async fn writer_task(
    log: Log,
    payload: Arc<Vec<Vec<u8>>>,
    durability: Durability,
    warm_end: Instant,
    end: Instant,
    records: Arc<AtomicU64>,
    appends: Arc<AtomicU64>,
) -> Result<Histogram<u64>> {
    let mut hist = new_histogram();
    let n = payload.len() as u64;
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            return Ok(hist);
        }
        log.append(payload.as_slice(), durability).await?;
        let t1 = Instant::now();
        records.fetch_add(n, Ordering::Relaxed);
        appends.fetch_add(1, Ordering::Relaxed);
        if t0 >= warm_end {
            hist.saturating_record((t1 - t0).as_nanos() as u64);
        }
    }
}

fn table_header() -> String {
    format!(
        "{:<6} {:>7} {:>5} {:>4} {:>8} | {:>10} {:>8} {:>10} | {:>8} {:>8} {:>8} {:>9} | {:>9} {:>5} | {:>7} {:>8} {:>9} {:>8} {:>8} | {:>7}",
        "io", "rec_B", "wrtrs", "rpa", "durab",
        "rec/s", "MB/s", "appends/s",
        "p50_us", "p99_us", "p999_us", "max_us",
        "cpu_s/Mr", "cores",
        "groups", "grp_size", "B/sync", "sync_us", "syncmax",
        "rss_MiB"
    )
}

fn table_line(r: &StorageRun) -> String {
    format!(
        "{:<6} {:>7} {:>5} {:>4} {:>8} | {:>10.0} {:>8.1} {:>10.0} | {:>8.0} {:>8.0} {:>8.0} {:>9.0} | {:>9.2} {:>5.2} | {:>7} {:>8.1} {:>9.0} {:>8.0} {:>8} | {:>7.1}",
        r.backend,
        r.record_bytes,
        r.writers,
        r.records_per_append,
        format!("{:?}", r.durability).to_lowercase(),
        r.records_per_s,
        r.payload_mb_per_s,
        r.appends_per_s,
        r.latency_us.p50,
        r.latency_us.p99,
        r.latency_us.p999,
        r.latency_us.max,
        r.cpu_s_per_million_records,
        r.cpu_cores,
        r.groups,
        r.mean_group_appends,
        r.mean_bytes_per_sync,
        r.fsync_mean_us,
        r.fsync_max_us,
        r.peak_rss_mib,
    )
}

// ---------------------------------------------------------------------------------------
// bench scan

#[derive(Debug, Serialize)]
struct PassResult {
    /// "cold" when the page cache was dropped before the pass, else "warm".
    cache: &'static str,
    open_ms: f64,
    seconds: f64,
    records: u64,
    /// Bytes the pass went through: whole frames for `frames`, record values for `read`.
    bytes: u64,
    gb_per_s: f64,
    records_per_s: f64,
    rss_after_open_mib: f64,
    rss_after_pass_mib: f64,
}

#[derive(Debug, Serialize)]
struct ScanRun {
    backend: String,
    backend_requested: String,
    gib: f64,
    record_bytes: usize,
    records_per_append: usize,
    writers: usize,
    segment_bytes: u64,
    segments: usize,
    records: u64,
    payload_bytes: u64,
    log_bytes: u64,
    write_seconds: f64,
    write_payload_gb_per_s: f64,
    /// LogReader::frames cursor: next_frame (header + CRC check), no decoding.
    frames: PassResult,
    /// LogReader::read: frames decoded into records.
    read: PassResult,
    peak_rss_mib: f64,
}

fn drop_page_cache() -> bool {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "1").is_ok()
}

/// Drop the cache, open the storage and time the open.
fn reopen(config: &StorageConfig) -> Result<(Storage, &'static str, f64)> {
    let cache = if drop_page_cache() { "cold" } else { "warm" };
    let t = Instant::now();
    let storage = Storage::open(config.clone()).context("reopening storage")?;
    Ok((storage, cache, t.elapsed().as_secs_f64() * 1e3))
}

fn run_scan(args: &ScanArgs) -> Result<()> {
    if !args.gib.is_finite()
        || args.gib <= 0.0
        || args.record_bytes == 0
        || args.records_per_append == 0
    {
        bail!("--gib, --record-bytes and --records-per-append must be positive");
    }
    let rt = runtime(args.common.threads)?;
    let mut runs = Vec::new();
    for &backend in &args.common.backends {
        let run = scan_run(&rt, args, backend)?;
        human(&args.common.json, &scan_lines(&run));
        runs.push(run);
    }
    write_json(&args.common.json, &runs)
}

fn scan_run(
    rt: &tokio::runtime::Runtime,
    args: &ScanArgs,
    backend: BackendChoice,
) -> Result<ScanRun> {
    let tmp = fresh_data_dir(&args.common.dir)?;
    let config = storage_config(tmp.path(), backend, args.common.segment_bytes);
    let total_records = ((args.gib * (1u64 << 30) as f64) / args.record_bytes as f64).ceil() as u64;

    // Fill.
    let storage = Storage::open(config.clone()).context("opening storage")?;
    let backend_name = storage.backend_name().to_owned();
    let t = Instant::now();
    rt.block_on(async {
        let log = storage.create_log(LOG_NAME).await?;
        let claimed = Arc::new(AtomicU64::new(0));
        let payload: Arc<Vec<Vec<u8>>> = Arc::new(
            (0..args.records_per_append)
                .map(|i| record_payload(args.record_bytes, 0x5151 + i as u64))
                .collect(),
        );
        let per = args.records_per_append as u64;
        let mut tasks = Vec::new();
        for _ in 0..args.writers.max(1) {
            let (log, claimed, payload) = (log.clone(), claimed.clone(), payload.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let first = claimed.fetch_add(per, Ordering::Relaxed);
                    if first >= total_records {
                        return anyhow::Ok(());
                    }
                    let n = per.min(total_records - first) as usize;
                    log.append(&payload[..n], Durability::Fsync).await?;
                }
            }));
        }
        for task in tasks {
            task.await??;
        }
        anyhow::Ok(())
    })?;
    let write_seconds = t.elapsed().as_secs_f64();
    storage.shutdown_blocking();
    drop(storage);

    // Pass 1: frame cursor.
    let (storage, cache, open_ms) = reopen(&config)?;
    let rss_open = current_rss_mib();
    let log = storage.log(LOG_NAME)?;
    let (log_bytes, _) = log.size_bytes();
    let segments = log.segment_count();
    let reader = log.reader();
    let t = Instant::now();
    let (mut records, mut bytes) = (0u64, 0u64);
    let mut cursor = reader.frames(reader.start_offset())?;
    while let Some((h, frame)) = cursor.next_frame()? {
        records += u64::from(h.record_count);
        bytes += frame.len() as u64;
    }
    let secs = t.elapsed().as_secs_f64();
    drop(cursor);
    let frames = pass_result(cache, open_ms, secs, records, bytes, rss_open);
    if records != total_records {
        bail!("frame scan saw {records} records, wrote {total_records}");
    }
    drop((reader, log));
    storage.shutdown_blocking();
    drop(storage);

    // Pass 2: LogReader::read, decoding records.
    let (storage, cache, open_ms) = reopen(&config)?;
    let rss_open = current_rss_mib();
    let reader = storage.log(LOG_NAME)?.reader();
    let t = Instant::now();
    let (mut records, mut bytes) = (0u64, 0u64);
    let mut next = reader.start_offset();
    loop {
        let batch = reader.read(next, args.read_batch, 16 << 20)?;
        let Some(last) = batch.last() else { break };
        next = last.offset + 1;
        records += batch.len() as u64;
        bytes += batch.iter().map(|r| r.value.len() as u64).sum::<u64>();
    }
    let secs = t.elapsed().as_secs_f64();
    let read = pass_result(cache, open_ms, secs, records, bytes, rss_open);
    if records != total_records {
        bail!("read pass saw {records} records, wrote {total_records}");
    }
    drop(reader);
    storage.shutdown_blocking();
    drop(storage);
    tmp.close().context("removing the data directory")?;

    let payload_bytes = total_records * args.record_bytes as u64;
    Ok(ScanRun {
        backend: backend_name,
        backend_requested: backend.to_string(),
        gib: args.gib,
        record_bytes: args.record_bytes,
        records_per_append: args.records_per_append,
        writers: args.writers,
        segment_bytes: args.common.segment_bytes,
        segments,
        records: total_records,
        payload_bytes,
        log_bytes,
        write_seconds: round3(write_seconds),
        write_payload_gb_per_s: round3(payload_bytes as f64 / write_seconds / 1e9),
        frames,
        read,
        peak_rss_mib: round1(rusage().max_rss_kib as f64 / 1024.0),
    })
}

fn pass_result(
    cache: &'static str,
    open_ms: f64,
    secs: f64,
    records: u64,
    bytes: u64,
    rss_after_open_mib: f64,
) -> PassResult {
    PassResult {
        cache,
        open_ms: round3(open_ms),
        seconds: round3(secs),
        records,
        bytes,
        gb_per_s: round3(bytes as f64 / secs / 1e9),
        records_per_s: round1(records as f64 / secs),
        rss_after_open_mib: round1(rss_after_open_mib),
        rss_after_pass_mib: round1(current_rss_mib()),
    }
}

fn scan_lines(r: &ScanRun) -> String {
    let mut s = format!(
        "scan {} backend={} records={} x {} B, {} segments, log {:.3} GiB; write {:.2} s = {:.3} GB/s payload (fsync, {} rec/append, {} writers)",
        r.gib,
        r.backend,
        r.records,
        r.record_bytes,
        r.segments,
        r.log_bytes as f64 / (1u64 << 30) as f64,
        r.write_seconds,
        r.write_payload_gb_per_s,
        r.records_per_append,
        r.writers,
    );
    for (name, p) in [
        ("frames (next_frame, CRC)", &r.frames),
        ("read (decode records)", &r.read),
    ] {
        let _ = write!(
            s,
            "\n  {name:<25} cache={:<4} open {:>8.1} ms | {:>6.3} s {:>7.3} GB/s {:>11.0} rec/s | rss open {:>6.1} MiB, after {:>7.1} MiB",
            p.cache, p.open_ms, p.seconds, p.gb_per_s, p.records_per_s, p.rss_after_open_mib, p.rss_after_pass_mib
        );
    }
    let _ = write!(s, "\n  peak rss {:.1} MiB", r.peak_rss_mib);
    s
}
