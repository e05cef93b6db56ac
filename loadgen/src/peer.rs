//! What the peers' load generators share: their options, the measured window, and the
//! run they report (records/s, send-to-ack percentiles, CPU of the generator and, given
//! `--server-pid`, of the servers), as a line and as JSON.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use spool::measure::{human, process_cpu_s, round1, round3, rusage, write_json, LatencyUs};

#[derive(Debug, Clone, Args)]
pub struct PeerArgs {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:6379")]
    pub addr: String,
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    #[arg(long, default_value_t = 1024)]
    pub record_bytes: usize,
    /// redis-wait: connections, one write (SET + WAIT) at a time each. nats-js: publishes in
    /// flight on the one connection.
    #[arg(long, alias = "inflight", default_value_t = 64)]
    pub clients: usize,
    /// redis-wait: the N of `WAIT N 0`.
    #[arg(long, default_value_t = 1)]
    pub wait_replicas: u32,
    /// nats-js: the stream's replicas (1, or 3 with a three-server cluster).
    #[arg(long, default_value_t = 1)]
    pub stream_replicas: u32,
    /// Server processes whose CPU (user+system, /proc) is measured over the window.
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Write the JSON results to this file ("-" for stdout).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Tokio worker threads of the load generator (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct PeerRun {
    system: &'static str,
    shape: String,
    record_bytes: usize,
    concurrency: usize,
    measured_seconds: f64,
    records: u64,
    records_per_s: f64,
    latency_us: LatencyUs,
    client_cpu_s: f64,
    server_cpu_s: Option<f64>,
    cpu_cores: f64,
    client_cpu_s_per_million_records: f64,
    server_cpu_s_per_million_records: Option<f64>,
    /// redis-wait: WAIT replies below --wait-replicas (those writes are not counted).
    under_replicated: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub warm_end: Instant,
    pub end: Instant,
}

struct Sample {
    at: Instant,
    client_cpu: f64,
    server_cpu: Option<f64>,
    records: u64,
}

fn sample(pids: &[u32], records: &AtomicU64) -> Sample {
    let ru = rusage();
    let server_cpu = if pids.is_empty() {
        None
    } else {
        pids.iter()
            .map(|&p| process_cpu_s(p).map(|(user, sys)| user + sys))
            .sum()
    };
    Sample {
        at: Instant::now(),
        client_cpu: ru.user_s + ru.sys_s,
        server_cpu,
        records: records.load(Ordering::Relaxed),
    }
}

/// Run `load` over the window, sampling counters and CPU at its edges.
pub async fn measured<F>(
    args: &PeerArgs,
    system: &'static str,
    shape: String,
    records: Arc<AtomicU64>,
    under: Arc<AtomicU64>,
    w: Window,
    load: F,
) -> Result<PeerRun>
where
    F: std::future::Future<Output = Result<Histogram<u64>>>,
{
    let pids = args.server_pid.clone();
    let r2 = records.clone();
    let sampler = async move {
        tokio::time::sleep_until(w.warm_end.into()).await;
        let s0 = sample(&pids, &r2);
        tokio::time::sleep_until(w.end.into()).await;
        (s0, sample(&pids, &r2))
    };
    let ((s0, s1), hist) = tokio::join!(sampler, load);
    let hist = hist?;
    let secs = (s1.at - s0.at).as_secs_f64();
    let n = s1.records - s0.records;
    let div = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let client_cpu = s1.client_cpu - s0.client_cpu;
    let server_cpu = s1.server_cpu.zip(s0.server_cpu).map(|(a, b)| a - b);
    Ok(PeerRun {
        system,
        shape,
        record_bytes: args.record_bytes,
        concurrency: args.clients,
        measured_seconds: round3(secs),
        records: n,
        records_per_s: round1(div(n as f64, secs)),
        latency_us: LatencyUs::from_hist(&hist),
        client_cpu_s: round3(client_cpu),
        server_cpu_s: server_cpu.map(round3),
        cpu_cores: round3(div(client_cpu + server_cpu.unwrap_or(0.0), secs)),
        client_cpu_s_per_million_records: round3(div(client_cpu * 1e6, n as f64)),
        server_cpu_s_per_million_records: server_cpu.map(|c| round3(div(c * 1e6, n as f64))),
        under_replicated: under.load(Ordering::Relaxed),
    })
}

pub fn check(args: &PeerArgs) -> Result<Window> {
    let valid = args.seconds.is_finite()
        && args.seconds > 0.0
        && args.warmup.is_finite()
        && args.warmup >= 0.0;
    if !valid || args.clients == 0 {
        bail!("--seconds must be positive, --warmup not negative, --clients positive");
    }
    let start = Instant::now();
    Ok(Window {
        warm_end: start + Duration::from_secs_f64(args.warmup),
        end: start + Duration::from_secs_f64(args.warmup + args.seconds),
    })
}

pub fn report(args: &PeerArgs, run: &PeerRun) -> Result<()> {
    human(
        &args.json,
        &format!(
            "{:<12} {:<22} conc {:>3} | {:>9.0} rec/s | p50/p99/p99.9 {:>7.0} {:>7.0} {:>7.0} us | cli {:.2} s/Mr, srv {} s/Mr, {:.2} cores{}",
            run.system,
            run.shape,
            run.concurrency,
            run.records_per_s,
            run.latency_us.p50,
            run.latency_us.p99,
            run.latency_us.p999,
            run.client_cpu_s_per_million_records,
            run.server_cpu_s_per_million_records
                .map_or("-".into(), |v| format!("{v:.2}")),
            run.cpu_cores,
            if run.under_replicated > 0 {
                format!(" | {} under-replicated (not counted)", run.under_replicated)
            } else {
                String::new()
            }
        ),
    );
    write_json(&args.json, &[run])
}
