//! `spool bench scan`: fill a log, reopen it (cold page cache when allowed) and read it
//! back sequentially, first frame by frame, then decoding records.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use spool_storage::{Durability, Storage, StorageConfig};

use super::{
    current_rss_mib, fresh_data_dir, human, record_payload, round1, round3, runtime, rusage,
    storage_config, write_json, CommonArgs, LOG_NAME,
};

#[derive(Debug, Clone, Args)]
pub struct ScanArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// GiB of record payload to write and scan (fractions allowed).
    #[arg(long, default_value_t = 1.0)]
    pub gib: f64,
    /// Size of each record in bytes.
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

pub(super) fn run_scan(args: &ScanArgs) -> Result<()> {
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
    backend: super::BenchBackend,
) -> Result<ScanRun> {
    let tmp = fresh_data_dir(&args.common.dir)?;
    let config = storage_config(tmp.path(), backend, &args.common);
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
