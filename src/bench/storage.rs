//! `spool bench storage`: concurrent appenders through group commit, straight on the
//! storage engine (no gRPC).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use spool_storage::stats::StatsSnapshot;
use spool_storage::{Durability, Log, Storage};

use super::{
    current_rss_mib, fresh_data_dir, human, new_histogram, record_payload, round1, round3, runtime,
    rusage, storage_config, write_json, CommonArgs, DurabilityArg, LatencyUs, Rusage, LOG_NAME,
};

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
    /// What each append waits for: fdatasync (fsync) or the page cache (unsynced).
    #[arg(long, value_enum, default_value_t = DurabilityArg::Fsync)]
    pub durability: DurabilityArg,
    /// Scrub sealed segments during the run at this rate, pass after pass (0: no scrub):
    /// what the background scrub costs appends.
    #[arg(long, default_value_t = 0)]
    pub scrub_bytes_per_sec: u64,
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
    scrub_bytes_per_sec: u64,
    scrubbed_bytes: u64,
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

pub(super) fn run_storage(args: &StorageArgs) -> Result<()> {
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
    backend: super::BenchBackend,
    record_bytes: usize,
) -> Result<StorageRun> {
    let tmp = fresh_data_dir(&args.common.dir)?;
    let mut config = storage_config(tmp.path(), backend, &args.common);
    config.scrub_bytes_per_sec = args.scrub_bytes_per_sec;
    config.scrub_interval = std::time::Duration::from_millis(100);
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
    let scrubbed_bytes = storage
        .scrub_stats()
        .bytes
        .load(std::sync::atomic::Ordering::Relaxed);
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
        scrub_bytes_per_sec: args.scrub_bytes_per_sec,
        scrubbed_bytes,
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
        "{:<12} {:>7} {:>5} {:>4} {:>8} | {:>10} {:>8} {:>10} | {:>8} {:>8} {:>8} {:>9} | {:>9} {:>5} | {:>7} {:>8} {:>9} {:>8} {:>8} | {:>7}",
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
        "{:<12} {:>7} {:>5} {:>4} {:>8} | {:>10.0} {:>8.1} {:>10.0} | {:>8.0} {:>8.0} {:>8.0} {:>9.0} | {:>9.2} {:>5.2} | {:>7} {:>8.1} {:>9.0} {:>8.0} {:>8} | {:>7.1}",
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
