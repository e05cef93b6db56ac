//! `spool bench catchup`: how fast a replica catches up with its primary.
//!
//! 1. A `spool serve` primary; one log filled with `--gib` GiB through a pipelined
//!    AppendStream (large batches, ack async: durable on the primary before we go on).
//! 2. Full sync: a fresh replica (`--replica-of` the primary, empty data directory) is
//!    started; timed from its spawn until its durable end (describe_log) equals the
//!    primary's. MB/s counts the log's bytes (describe_log size_bytes) over that time.
//! 3. Partial: the replica is stopped (SIGTERM), `--partial-fraction` more is appended on the
//!    primary, the replica is restarted on the same data directory and timed again.
//!
//! Each phase starts once the primary has written nothing for a moment (see `disk_quiet`).
//! The replica's end is polled every 10 ms on its own status/describe_log; the process
//! start-up (~tens of ms) is inside the time, as a user would see it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Args;
use serde::Serialize;
use spool::client::{AckMode, Client};
use spool::config::IoBackend;
use tokio::sync::Semaphore;

use super::grpc::server::BenchServer;
use super::{fresh_data_dir, human, record_payload, round1, round3, runtime, write_json, LOG_NAME};

#[derive(Debug, Clone, Args)]
pub struct CatchupArgs {
    /// Size of the log to fill on the primary before the full sync (fractions allowed).
    #[arg(long, default_value_t = 2.0)]
    pub gib: f64,
    /// Appended while the replica is down, as a fraction of the first fill.
    #[arg(long, default_value_t = 0.1)]
    pub partial_fraction: f64,
    /// Record size of the fill.
    #[arg(long, default_value_t = 4096)]
    pub record_bytes: usize,
    /// Records per AppendStream request of the fill.
    #[arg(long, default_value_t = 256)]
    pub records_per_append: usize,
    /// Requests in flight during the fill.
    #[arg(long, default_value_t = 8)]
    pub inflight: usize,
    /// Give up waiting for a catch-up after this many seconds.
    #[arg(long, default_value_t = 300.0)]
    pub timeout: f64,
    /// Server IO backend.
    #[arg(long, value_enum, default_value_t = IoBackend::Auto)]
    pub io_backend: IoBackend,
    /// Directory under which a fresh temporary data directory is created (and removed).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Write the JSON results to this file ("-" for stdout; the table then goes to stderr).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Primary and replica serve TLS (certificates made for the run): the replica's
    /// stream and its segment fetches are encrypted (no sendfile).
    #[arg(long)]
    pub tls: bool,
}

#[derive(Debug, Serialize)]
struct Phase {
    phase: &'static str,
    /// Records the replica had to receive.
    records: u64,
    /// Log bytes (batches as stored) the replica had to receive.
    bytes: u64,
    seconds: f64,
    mb_per_s: f64,
    /// The replica reported a full sync in its upstream status: its offsets were gone
    /// upstream (retention), not merely behind. A fresh replica of a log that still starts
    /// at 0 catches up without one (by segment fetch all the same).
    saw_full_sync: bool,
    replica_cpu_s: Option<f64>,
    primary_cpu_s: Option<f64>,
}

#[derive(Debug, Serialize)]
struct CatchupRun {
    io_backend: String,
    record_bytes: usize,
    fill_seconds: f64,
    fill_mb_per_s: f64,
    log_bytes: u64,
    log_end: u64,
    phases: Vec<Phase>,
}

pub(super) fn run_catchup(args: &CatchupArgs) -> Result<()> {
    let valid = args.gib.is_finite()
        && args.gib > 0.0
        && args.partial_fraction.is_finite()
        && args.partial_fraction >= 0.0;
    if !valid || args.record_bytes < 8 || args.records_per_append == 0 || args.inflight == 0 {
        bail!("--gib must be positive, --partial-fraction not negative, --record-bytes >= 8");
    }
    let tmp = fresh_data_dir(&args.dir)?;
    if args.tls {
        // Before any thread: the environment is the process's.
        super::secure_setup(tmp.path(), true, false)?;
    }
    let rt = runtime(None)?;
    let mut primary =
        BenchServer::start(false, &tmp.path().join("p"), tmp.path(), args.io_backend)?;
    let mut replica = None;
    let res = rt.block_on(drive(args, tmp.path(), &primary, &mut replica));
    if let Some(mut r) = replica {
        let _ = r.stop();
    }
    let stopped = primary.stop();
    let run = res?;
    stopped?;
    drop(primary);
    tmp.close().context("removing the data directory")?;
    for p in &run.phases {
        human(
            &args.json,
            &format!(
                "catchup {:<7} {:>10} records {:>10.1} MB in {:>7.3} s = {:>7.1} MB/s (offsets-gone full sync: {}; cpu replica {} s, primary {} s)",
                p.phase,
                p.records,
                p.bytes as f64 / 1e6,
                p.seconds,
                p.mb_per_s,
                p.saw_full_sync,
                p.replica_cpu_s.map_or("-".into(), |v| format!("{v:.2}")),
                p.primary_cpu_s.map_or("-".into(), |v| format!("{v:.2}")),
            ),
        );
    }
    write_json(&args.json, &run)
}

/// Append `bytes` worth of records through one pipelined stream.
async fn fill(args: &CatchupArgs, client: &Client, bytes: u64) -> Result<()> {
    let per_req = (args.records_per_append * args.record_bytes) as u64;
    let requests = bytes.div_ceil(per_req);
    let batch: Vec<Bytes> = (0..args.records_per_append)
        .map(|i| Bytes::from(record_payload(args.record_bytes, 0xCA7 + i as u64)))
        .collect();
    let mut appender = client.appender(LOG_NAME, AckMode::Async).await?;
    let window = std::sync::Arc::new(Semaphore::new(args.inflight));
    let mut waits = tokio::task::JoinSet::new();
    for _ in 0..requests {
        let permit = window.clone().acquire_owned().await?;
        let rx = appender.send(batch.clone()).await?;
        waits.spawn(async move {
            let r = rx.await.context("append stream closed")?;
            drop(permit);
            anyhow::Ok(r?)
        });
        while let Some(r) = waits.try_join_next() {
            r??;
        }
    }
    while let Some(r) = waits.join_next().await {
        r??;
    }
    Ok(())
}

/// Poll the replica until its end of the log equals `target`.
async fn wait_caught_up(
    replica: &BenchServer,
    target: u64,
    t0: Instant,
    timeout: Duration,
) -> Result<(Duration, bool)> {
    let mut client = None;
    let mut saw_full_sync = false;
    loop {
        if client.is_none() {
            client = super::connect(&replica.addr.to_string(), None).await.ok();
        }
        if let Some(c) = &client {
            if let Ok(s) = c.status().await {
                if let Some(u) = &s.upstream {
                    saw_full_sync |= u.logs.iter().any(|l| l.full_sync);
                }
            }
            if let Ok(info) = c.describe_log(LOG_NAME).await {
                if info.end_offset >= target {
                    if info.end_offset != target {
                        bail!(
                            "replica end {} past the primary's {target}",
                            info.end_offset
                        );
                    }
                    return Ok((t0.elapsed(), saw_full_sync));
                }
            }
        }
        if t0.elapsed() > timeout {
            bail!(
                "replica did not reach end {target} within {timeout:?}; its log:\n{}",
                replica.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Wait (at most [`QUIET_WAIT_MAX`]) until `s` has written nothing to storage for
/// [`QUIET_FOR`]; how long that took. A primary goes on writing after a fill (the next
/// segment's zero-fill): on one machine that would share the disk the replica's sync is
/// timed on, where in a deployment each node has its own, and fio runs on a quiet one.
async fn disk_quiet(s: &BenchServer) -> Duration {
    let t0 = Instant::now();
    let (mut last, mut since) = (s.write_bytes(), Instant::now());
    while since.elapsed() < QUIET_FOR && t0.elapsed() < QUIET_WAIT_MAX {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = s.write_bytes();
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
    t0.elapsed()
}

const QUIET_FOR: Duration = Duration::from_millis(300);
const QUIET_WAIT_MAX: Duration = Duration::from_secs(20);

fn cpu(s: &BenchServer) -> Option<f64> {
    s.cpu_s().map(|(u, s)| u + s)
}

/// What one catch-up phase needs: start the replica (its data dir kept between phases)
/// and time it until it holds everything the primary has.
struct CatchupPhase<'a> {
    args: &'a CatchupArgs,
    work: &'a std::path::Path,
    rdir: &'a std::path::Path,
    primary: &'a BenchServer,
    timeout: Duration,
}

impl CatchupPhase<'_> {
    /// `from` and `to` are the primary's (bytes, end offset) before and at this phase.
    async fn measure(
        &self,
        name: &'static str,
        replica: &mut Option<BenchServer>,
        from: (u64, u64),
        to: (u64, u64),
    ) -> Result<Phase> {
        let quiet = disk_quiet(self.primary).await;
        eprintln!(
            "{name}: the primary's disk writes stopped {:.2} s after the fill",
            quiet.as_secs_f64()
        );
        let p_cpu0 = cpu(self.primary);
        let t0 = Instant::now();
        let r = replica.insert(BenchServer::start_replica(
            self.rdir,
            self.work,
            self.args.io_backend,
            self.primary.addr,
            "r1",
            false,
            None,
        )?);
        let (d, full) = wait_caught_up(r, to.1, t0, self.timeout).await?;
        let bytes = to.0 - from.0;
        Ok(Phase {
            phase: name,
            records: to.1 - from.1,
            bytes,
            seconds: round3(d.as_secs_f64()),
            mb_per_s: round1(bytes as f64 / 1e6 / d.as_secs_f64()),
            saw_full_sync: full,
            replica_cpu_s: cpu(r).map(round3),
            primary_cpu_s: cpu(self.primary).zip(p_cpu0).map(|(a, b)| round3(a - b)),
        })
    }
}

async fn drive(
    args: &CatchupArgs,
    work: &std::path::Path,
    primary: &BenchServer,
    replica: &mut Option<BenchServer>,
) -> Result<CatchupRun> {
    let client = super::connect(&primary.addr.to_string(), None).await?;
    client.create_log(LOG_NAME, None).await?;
    let io_backend = client.status().await?.io_backend;
    let timeout = Duration::from_secs_f64(args.timeout);

    let want = (args.gib * (1u64 << 30) as f64) as u64;
    let t = Instant::now();
    fill(args, &client, want).await?;
    let fill_s = t.elapsed().as_secs_f64();
    let info = client.describe_log(LOG_NAME).await?;
    let (bytes0, end0) = (info.size_bytes, info.end_offset);
    eprintln!(
        "filled {:.1} MB ({} records) in {fill_s:.1} s; starting a fresh replica",
        bytes0 as f64 / 1e6,
        end0
    );

    let rdir = work.join("r1");
    let mut phases = Vec::new();
    let phase = CatchupPhase {
        args,
        work,
        rdir: &rdir,
        primary,
        timeout,
    };
    phases.push(
        phase
            .measure("full", replica, (0, 0), (bytes0, end0))
            .await?,
    );
    if let Some(r) = replica.as_mut() {
        r.stop()?;
    }
    *replica = None;

    let more = (want as f64 * args.partial_fraction) as u64;
    let (mut bytes1, mut end1) = (bytes0, end0);
    if more > 0 {
        fill(args, &client, more).await?;
        let info = client.describe_log(LOG_NAME).await?;
        (bytes1, end1) = (info.size_bytes, info.end_offset);
        phases.push(
            phase
                .measure("partial", replica, (bytes0, end0), (bytes1, end1))
                .await?,
        );
    }
    Ok(CatchupRun {
        io_backend,
        record_bytes: args.record_bytes,
        fill_seconds: round3(fill_s),
        fill_mb_per_s: round1(bytes0 as f64 / 1e6 / fill_s),
        log_bytes: bytes1,
        log_end: end1,
        phases,
    })
}
