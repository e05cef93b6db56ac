//! `spool bench grpc`: the whole server over loopback, driven by the Rust client.
//!
//! Each mode gets a fresh server (a `spool serve` child process by default) on a fresh data
//! directory and one log:
//! - `pipelined`: one connection, one AppendStream, `--inflight` batches of
//!   `--records-per-append` records in flight; latency is per batch, send to ack.
//! - `unary`: `--clients` tasks, each one unary Append of one record at a time, spread over
//!   `--connections` HTTP/2 connections.
//! - `subscribe`: a subscriber from the end and a writer issuing one-record unary appends at
//!   `--rate` per second (open loop); the figure is, per record, the instant the subscriber
//!   got it minus the instant its append's ack reached the writer.
//!
//! CPU is the server process's (from /proc/PID/stat) plus ours (getrusage), over the measured
//! window only.

mod load;
mod server;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use serde::Serialize;
use spool::client::Client;

use super::{
    fresh_data_dir, human, round1, round3, runtime, rusage, write_json, LatencyUs, LOG_NAME,
};
use server::BenchServer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Pipelined,
    Unary,
    Subscribe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AckArg {
    /// Acknowledged after fdatasync on the server (ACK_MODE_ASYNC).
    Async,
    /// Acknowledged once in the server's page cache (ACK_MODE_WRITTEN; weaker).
    Written,
}

#[derive(Debug, Clone, Args)]
pub struct GrpcArgs {
    /// Modes to run, comma separated; each gets a fresh server.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "pipelined,unary,subscribe"
    )]
    pub mode: Vec<Mode>,
    /// Measured seconds per mode (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Warm-up seconds per mode, excluded from every figure.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    #[arg(long, default_value_t = 1024)]
    pub record_bytes: usize,
    /// pipelined: records per AppendStream request.
    #[arg(long, default_value_t = 64)]
    pub records_per_append: usize,
    /// pipelined: requests in flight on the stream.
    #[arg(long, default_value_t = 64)]
    pub inflight: usize,
    /// unary: concurrent tasks, one append of one record at a time each.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// unary: HTTP/2 connections the tasks are spread over (round robin).
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// subscribe: appends per second issued by the writer.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Server IO backend: auto, std or uring.
    #[arg(long, default_value = "auto")]
    pub io_backend: String,
    #[arg(long, value_enum, default_value_t = AckArg::Async)]
    pub ack: AckArg,
    /// Run the server on a runtime inside this process instead of a `spool serve` child
    /// (CPU is then reported only as the total).
    #[arg(long)]
    pub in_process: bool,
    /// Directory under which a fresh temporary data directory is created (and removed).
    /// Default: ./target if it exists (same disk as the repository), else $TMPDIR.
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// Write the JSON results to this file ("-" for stdout; the table then goes to stderr).
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Tokio worker threads of the load generator (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Debug, Serialize)]
struct SubscribeDetail {
    rate_per_s: f64,
    /// Appends issued after the warm-up and acknowledged.
    acked: u64,
    /// Of those, how many the subscriber saw before the writer saw the ack (counted as 0).
    seen_before_ack: u64,
    /// Acknowledged but never delivered to the subscriber (should be 0).
    missing: u64,
    /// Writer: append sent to ack received.
    append_latency_us: LatencyUs,
    /// Append sent to subscriber received.
    end_to_end_us: LatencyUs,
}

#[derive(Debug, Serialize)]
struct GrpcRun {
    mode: Mode,
    server: &'static str,
    io_backend: String,
    ack: AckArg,
    record_bytes: usize,
    records_per_request: usize,
    /// pipelined: requests in flight; unary: client tasks; subscribe: 1.
    concurrency: usize,
    connections: usize,
    measured_seconds: f64,
    records: u64,
    requests: u64,
    records_per_s: f64,
    requests_per_s: f64,
    payload_mb_per_s: f64,
    /// pipelined/unary: request send to ack; subscribe: subscriber receipt minus writer ack.
    latency_us: LatencyUs,
    server_cpu_s: Option<f64>,
    client_cpu_s: f64,
    /// Cores busy on average, server and load generator together.
    cpu_cores: f64,
    cpu_s_per_million_records: f64,
    server_cpu_s_per_million_records: Option<f64>,
    client_cpu_s_per_million_records: f64,
    server_rss_mib: Option<f64>,
    client_peak_rss_mib: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    subscribe: Option<SubscribeDetail>,
}

/// Counters the load tasks bump; sampled at the start and end of the measured window.
#[derive(Debug, Default)]
struct Counters {
    records: AtomicU64,
    requests: AtomicU64,
}

struct Sample {
    at: Instant,
    client_cpu: f64,
    server_cpu: Option<f64>,
    records: u64,
    requests: u64,
}

impl Sample {
    fn take(server: &BenchServer, c: &Counters) -> Sample {
        let ru = rusage();
        Sample {
            at: Instant::now(),
            client_cpu: ru.user_s + ru.sys_s,
            server_cpu: server.cpu_s().map(|(u, s)| u + s),
            records: c.records.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
        }
    }
}

/// What a mode hands back besides the counters.
struct ModeResult {
    hist: Histogram<u64>,
    records_per_request: usize,
    concurrency: usize,
    connections: usize,
    subscribe: Option<SubscribeDetail>,
}

/// The measured window: warm-up ends at `warm_end`, load stops at `end`.
#[derive(Debug, Clone, Copy)]
struct Window {
    warm_end: Instant,
    end: Instant,
}

pub(super) fn run_grpc(args: &GrpcArgs) -> Result<()> {
    if args.record_bytes < 8
        || args.records_per_append == 0
        || args.inflight == 0
        || args.clients == 0
        || args.connections == 0
    {
        bail!("--record-bytes must be at least 8; --records-per-append, --inflight, --clients and --connections positive");
    }
    let positive = |v: f64| v.is_finite() && v > 0.0;
    if !positive(args.seconds)
        || !positive(args.rate)
        || !args.warmup.is_finite()
        || args.warmup < 0.0
    {
        bail!("--seconds and --rate must be positive and --warmup not negative");
    }
    let rt = runtime(args.threads)?;
    human(&args.json, &table_header());
    let mut runs = Vec::new();
    for &mode in &args.mode {
        let run = rt.block_on(grpc_run(args, mode))?;
        human(&args.json, &table_line(&run));
        if let Some(d) = &run.subscribe {
            human(&args.json, &subscribe_line(d));
        }
        runs.push(run);
    }
    write_json(&args.json, &runs)
}

async fn grpc_run(args: &GrpcArgs, mode: Mode) -> Result<GrpcRun> {
    let tmp = fresh_data_dir(&args.dir)?;
    let data_dir = tmp.path().join("data");
    let mut server = BenchServer::start(args.in_process, &data_dir, tmp.path(), &args.io_backend)?;
    let result = drive(args, mode, &server).await;
    let stopped = server.stop();
    let run = result?;
    stopped?;
    drop(server);
    tmp.close().context("removing the data directory")?;
    Ok(run)
}

async fn drive(args: &GrpcArgs, mode: Mode, server: &BenchServer) -> Result<GrpcRun> {
    let addr = server.addr.to_string();
    let client = Client::connect(&addr).await?;
    client.create_log(LOG_NAME, None).await?;
    let io_backend = client.status().await?.io_backend;

    let start = Instant::now();
    let w = Window {
        warm_end: start + Duration::from_secs_f64(args.warmup),
        end: start + Duration::from_secs_f64(args.warmup + args.seconds),
    };
    let counters = Arc::new(Counters::default());
    let sampler = {
        let c = counters.clone();
        async move {
            tokio::time::sleep_until(w.warm_end.into()).await;
            let s0 = Sample::take(server, &c);
            tokio::time::sleep_until(w.end.into()).await;
            (s0, Sample::take(server, &c))
        }
    };
    let load = async {
        match mode {
            Mode::Pipelined => load::pipelined(args, &client, w, &counters).await,
            Mode::Unary => load::unary(args, &addr, w, &counters).await,
            Mode::Subscribe => load::subscribe(args, &addr, w, &counters).await,
        }
    };
    let ((s0, s1), res) = tokio::join!(sampler, load);
    let res = res?;

    let secs = (s1.at - s0.at).as_secs_f64();
    let records = s1.records - s0.records;
    let requests = s1.requests - s0.requests;
    let div = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let per_mr = |cpu: f64| round3(div(cpu * 1e6, records as f64));
    let client_cpu = s1.client_cpu - s0.client_cpu;
    let server_cpu = s1.server_cpu.zip(s0.server_cpu).map(|(a, b)| a - b);
    let total_cpu = client_cpu + server_cpu.unwrap_or(0.0);
    Ok(GrpcRun {
        mode,
        server: server.kind_name(),
        io_backend,
        ack: args.ack,
        record_bytes: args.record_bytes,
        records_per_request: res.records_per_request,
        concurrency: res.concurrency,
        connections: res.connections,
        measured_seconds: round3(secs),
        records,
        requests,
        records_per_s: round1(div(records as f64, secs)),
        requests_per_s: round1(div(requests as f64, secs)),
        payload_mb_per_s: round3(div((records * args.record_bytes as u64) as f64, secs * 1e6)),
        latency_us: LatencyUs::from_hist(&res.hist),
        server_cpu_s: server_cpu.map(round3),
        client_cpu_s: round3(client_cpu),
        cpu_cores: round3(div(total_cpu, secs)),
        cpu_s_per_million_records: per_mr(total_cpu),
        server_cpu_s_per_million_records: server_cpu.map(per_mr),
        client_cpu_s_per_million_records: per_mr(client_cpu),
        server_rss_mib: server.rss_mib().map(round1),
        client_peak_rss_mib: round1(rusage().max_rss_kib as f64 / 1024.0),
        subscribe: res.subscribe,
    })
}

fn table_header() -> String {
    format!(
        "{:<9} {:>6} {:>5} {:>5} {:>4} {:>5} | {:>10} {:>8} {:>9} | {:>8} {:>8} {:>8} {:>9} | {:>9} {:>9} {:>9} {:>5} | {:>7}",
        "mode", "io", "ack", "conns", "conc", "rpr",
        "rec/s", "MB/s", "req/s",
        "p50_us", "p99_us", "p999_us", "max_us",
        "cpu_s/Mr", "srv_s/Mr", "cli_s/Mr", "cores",
        "srv_MiB"
    )
}

fn table_line(r: &GrpcRun) -> String {
    let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
    format!(
        "{:<9} {:>6} {:>5} {:>5} {:>4} {:>5} | {:>10.0} {:>8.1} {:>9.0} | {:>8.0} {:>8.0} {:>8.0} {:>9.0} | {:>9.2} {:>9} {:>9.2} {:>5.2} | {:>7}",
        format!("{:?}", r.mode).to_lowercase(),
        r.io_backend,
        format!("{:?}", r.ack).to_lowercase(),
        r.connections,
        r.concurrency,
        r.records_per_request,
        r.records_per_s,
        r.payload_mb_per_s,
        r.requests_per_s,
        r.latency_us.p50,
        r.latency_us.p99,
        r.latency_us.p999,
        r.latency_us.max,
        r.cpu_s_per_million_records,
        opt(r.server_cpu_s_per_million_records),
        r.client_cpu_s_per_million_records,
        r.cpu_cores,
        r.server_rss_mib.map_or("-".to_owned(), |v| format!("{v:.1}")),
    )
}

fn subscribe_line(d: &SubscribeDetail) -> String {
    format!(
        "  subscribe @ {:.0}/s: latency above = subscriber receipt - writer ack; {} acked, {} seen before the ack, {} missing; append p50/p99 {:.0}/{:.0} us; send->subscriber p50/p99/max {:.0}/{:.0}/{:.0} us",
        d.rate_per_s,
        d.acked,
        d.seen_before_ack,
        d.missing,
        d.append_latency_us.p50,
        d.append_latency_us.p99,
        d.end_to_end_us.p50,
        d.end_to_end_us.p99,
        d.end_to_end_us.max,
    )
}
