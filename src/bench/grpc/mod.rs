//! `spool bench grpc`: the whole server over loopback, driven by the Rust client.
//!
//! Each mode gets a fresh server (a `spool serve` child process by default) on a fresh data
//! directory and one log:
//! - `pipelined`: one connection, one AppendStream, `--inflight` batches of
//!   `--records-per-append` records in flight; latency is per batch, send to ack.
//! - `unary`: `--clients` tasks, each one unary Append of one record at a time, spread over
//!   the `--connections` HTTP/2 connections of one client's pool (default: one per core).
//! - `subscribe`: a subscriber from the end and a writer issuing one-record unary appends at
//!   `--rate` per second (open loop); the figure is, per record, the instant the subscriber
//!   got it minus the instant its append's ack reached the writer.
//!
//! CPU is the server process's (from /proc/PID/stat) plus ours (getrusage), over the measured
//! window only.

mod load;
pub(super) mod server;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use serde::Serialize;
use spool::client::Client;
use spool::config::{AppendIo, IoBackend};

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

/// `--ack`: async (fdatasync on the primary), written (page cache; weaker), semi-sync:K
/// (durable on the primary and K replicas) or sync (durable on every sync replica).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckArg {
    Async,
    Written,
    SemiSync(u32),
    Sync,
}

impl AckArg {
    /// The request's ack mode and semi-sync k (0 unless semi-sync).
    pub fn mode(self) -> (spool::client::AckMode, u32) {
        use spool::client::AckMode;
        match self {
            AckArg::Async => (AckMode::Async, 0),
            AckArg::Written => (AckMode::Written, 0),
            AckArg::SemiSync(k) => (AckMode::SemiSync, k),
            AckArg::Sync => (AckMode::Sync, 0),
        }
    }
}

impl AckArg {
    /// Replicas an ack of this mode must report as confirmed (sync: the one sync replica).
    pub fn min_confirmed(self) -> u32 {
        match self {
            AckArg::SemiSync(k) => k,
            AckArg::Sync => 1,
            AckArg::Async | AckArg::Written => 0,
        }
    }
}

impl std::fmt::Display for AckArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AckArg::Async => f.write_str("async"),
            AckArg::Written => f.write_str("written"),
            AckArg::SemiSync(k) => write!(f, "semi-sync:{k}"),
            AckArg::Sync => f.write_str("sync"),
        }
    }
}

impl std::str::FromStr for AckArg {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "async" => Ok(AckArg::Async),
            "written" => Ok(AckArg::Written),
            "sync" => Ok(AckArg::Sync),
            "semi-sync" => Ok(AckArg::SemiSync(1)),
            _ => match s.strip_prefix("semi-sync:").map(str::parse::<u32>) {
                Some(Ok(k)) if k > 0 => Ok(AckArg::SemiSync(k)),
                _ => Err(format!(
                    "expected async, written, semi-sync:K (K >= 1) or sync, got {s:?}"
                )),
            },
        }
    }
}

impl Serialize for AckArg {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
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
    /// Size of each record in bytes.
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
    /// unary: HTTP/2 connections in the client's pool, taken in turn by the calls.
    #[arg(long, default_value_t = spool::client::default_connections())]
    pub connections: usize,
    /// subscribe: appends per second issued by the writer.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Server IO backend.
    #[arg(long, value_enum, default_value_t = IoBackend::Auto)]
    pub io_backend: IoBackend,
    /// `--append-io` of the replica children only (the primary takes SPOOL_APPEND_IO).
    #[arg(long, value_enum)]
    pub replica_append_io: Option<AppendIo>,
    /// Ack mode of every append: async, written, semi-sync:K or sync.
    #[arg(long, default_value = "async")]
    pub ack: AckArg,
    /// Replica children started beside the primary (`--replica-of` it; the first one with
    /// `--sync-replica`); the load waits until they are attached and, at the end, checks
    /// that every replica's end equals the primary's.
    #[arg(long, default_value_t = 0)]
    pub replicas: usize,
    /// Run the server on a runtime inside this process instead of a `spool serve` child
    /// (CPU is then reported only as the total).
    #[arg(long)]
    pub in_process: bool,
    /// The server (and replicas) serve TLS, certificates made for the run; the clients
    /// connect over TLS.
    #[arg(long, conflicts_with = "in_process")]
    pub tls: bool,
    /// The nodes check tokens (one made for the run); the clients send it.
    #[arg(long, conflicts_with = "in_process")]
    pub auth: bool,
    /// Directory under which a fresh temporary data directory is created (and removed).
    /// Default: ./target if it exists (same disk as the repository), else $TMPDIR.
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// Put the replicas' data directories under this directory instead (another disk or
    /// filesystem: replicas on their own machines do not share the primary's disk).
    #[arg(long)]
    pub replica_dir: Option<std::path::PathBuf>,
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
    /// Replica children attached to the primary during the run.
    replicas: usize,
    record_bytes: usize,
    records_per_request: usize,
    /// pipelined: requests in flight; unary: client tasks; subscribe: 1.
    concurrency: usize,
    connections: usize,
    measured_seconds: f64,
    records: u64,
    requests: u64,
    /// Acks flagged degraded (the server fell back to async for them); counted in records.
    degraded_acks: u64,
    /// Acks not degraded yet reporting fewer confirmed replicas than the mode needs
    /// (should be 0).
    unconfirmed_acks: u64,
    records_per_s: f64,
    requests_per_s: f64,
    payload_mb_per_s: f64,
    /// pipelined/unary: request send to ack; subscribe: subscriber receipt minus writer ack.
    latency_us: LatencyUs,
    /// The primary's CPU.
    server_cpu_s: Option<f64>,
    /// All replica processes together.
    replica_cpu_s: Option<f64>,
    client_cpu_s: f64,
    /// Cores busy on average: primary, replicas and load generator together.
    cpu_cores: f64,
    cpu_s_per_million_records: f64,
    server_cpu_s_per_million_records: Option<f64>,
    replica_cpu_s_per_million_records: Option<f64>,
    client_cpu_s_per_million_records: f64,
    server_rss_mib: Option<f64>,
    client_peak_rss_mib: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    subscribe: Option<SubscribeDetail>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    replica_check: Vec<ReplicaCheck>,
}

/// After the load: did each replica reach the primary's end, and how long after the load
/// stopped.
#[derive(Debug, Serialize)]
struct ReplicaCheck {
    id: String,
    primary_end: u64,
    replica_end: u64,
    caught_up: bool,
    /// From the last ack the load generator received to the replica's end equal to the
    /// primary's (polled every 10 ms).
    catch_up_ms: f64,
}

/// Counters the load tasks bump; sampled at the start and end of the measured window.
#[derive(Debug, Default)]
struct Counters {
    records: AtomicU64,
    requests: AtomicU64,
    degraded: AtomicU64,
    unconfirmed: AtomicU64,
}

impl Counters {
    /// Count acks the server degraded, and acks reporting fewer replicas than the mode needs.
    fn note_ack(&self, ack: &spool::client::AppendResponse, min_confirmed: u32) {
        if ack.degraded {
            self.degraded.fetch_add(1, Ordering::Relaxed);
        } else if ack.replicas_confirmed < min_confirmed {
            self.unconfirmed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Sample {
    at: Instant,
    client_cpu: f64,
    server_cpu: Option<f64>,
    replica_cpu: Option<f64>,
    records: u64,
    requests: u64,
    degraded: u64,
    unconfirmed: u64,
}

impl Sample {
    fn take(server: &BenchServer, replicas: &[BenchServer], c: &Counters) -> Sample {
        let ru = rusage();
        let cpu = |s: &BenchServer| s.cpu_s().map(|(u, s)| u + s);
        let replica_cpu = if replicas.is_empty() {
            None
        } else {
            replicas.iter().map(cpu).sum::<Option<f64>>()
        };
        Sample {
            at: Instant::now(),
            client_cpu: ru.user_s + ru.sys_s,
            server_cpu: cpu(server),
            replica_cpu,
            records: c.records.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            degraded: c.degraded.load(Ordering::Relaxed),
            unconfirmed: c.unconfirmed.load(Ordering::Relaxed),
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
    if args.replicas > 0 && args.in_process {
        bail!("--replicas needs server child processes: drop --in-process");
    }
    match args.ack {
        AckArg::SemiSync(k) if k as usize > args.replicas => {
            bail!("--ack {} needs at least {k} --replicas", args.ack)
        }
        AckArg::Sync if args.replicas == 0 => bail!("--ack sync needs --replicas 1 or more"),
        _ => {}
    }
    // Kept to the end of the run: the nodes read the certificates from it.
    let certs = match args.tls || args.auth {
        true => Some(fresh_data_dir(&args.dir)?),
        false => None,
    };
    if let Some(c) = &certs {
        super::secure_setup(c.path(), args.tls, args.auth)?;
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
        for c in &run.replica_check {
            human(
                &args.json,
                &format!(
                    "  replica {}: end {} / primary {} -> {} ({:.0} ms after the load){}",
                    c.id,
                    c.replica_end,
                    c.primary_end,
                    if c.caught_up { "caught up" } else { "BEHIND" },
                    c.catch_up_ms,
                    if run.degraded_acks + run.unconfirmed_acks > 0 {
                        format!(
                            "; {} degraded acks, {} under-confirmed acks",
                            run.degraded_acks, run.unconfirmed_acks
                        )
                    } else {
                        String::new()
                    }
                ),
            );
        }
        runs.push(run);
    }
    write_json(&args.json, &runs)?;
    if let Some(r) = runs
        .iter()
        .find(|r| r.replica_check.iter().any(|c| !c.caught_up))
    {
        bail!(
            "{:?} run: a replica did not catch up with the primary",
            r.mode
        );
    }
    Ok(())
}

async fn grpc_run(args: &GrpcArgs, mode: Mode) -> Result<GrpcRun> {
    let tmp = fresh_data_dir(&args.dir)?;
    let data_dir = tmp.path().join("data");
    let mut server = BenchServer::start(args.in_process, &data_dir, tmp.path(), args.io_backend)?;
    let replica_tmp = match &args.replica_dir {
        Some(_) if args.replicas > 0 => Some(fresh_data_dir(&args.replica_dir)?),
        _ => None,
    };
    let replica_base = replica_tmp.as_ref().map_or(tmp.path(), |t| t.path());
    let mut replicas = Vec::with_capacity(args.replicas);
    let mut started = Ok(());
    for i in 0..args.replicas {
        let id = format!("r{}", i + 1);
        let sync = i == 0 && args.ack == AckArg::Sync;
        match BenchServer::start_replica(
            &replica_base.join(&id),
            tmp.path(),
            args.io_backend,
            server.addr,
            &id,
            sync,
            args.replica_append_io,
        ) {
            Ok(r) => replicas.push(r),
            Err(e) => {
                started = Err(e);
                break;
            }
        }
    }
    let result = match started {
        Ok(()) => drive(args, mode, &server, &replicas).await,
        Err(e) => Err(e),
    };
    let mut stopped = Ok(());
    for r in replicas.iter_mut().rev() {
        let s = r.stop();
        if stopped.is_ok() {
            stopped = s;
        }
    }
    let s = server.stop();
    let run = result?;
    stopped?;
    s?;
    drop(replicas);
    drop(server);
    if let Some(t) = replica_tmp {
        t.close().context("removing the replicas' data directory")?;
    }
    tmp.close().context("removing the data directory")?;
    Ok(run)
}

/// Wait until the primary lists `n` connected replicas and each replica has the log.
async fn wait_attached(primary: &Client, replicas: &[Client], n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = primary.status().await?;
        let connected = s.replicas.iter().filter(|r| r.connected).count();
        let mut have_log = 0;
        for r in replicas {
            if r.describe_log(LOG_NAME).await.is_ok() {
                have_log += 1;
            }
        }
        if connected >= n && have_log == replicas.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "replicas not attached within 30 s: {connected}/{n} connected, {have_log} have the log"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// After the load: poll each replica until its end equals the primary's (60 s at most).
async fn check_replicas(
    primary: &Client,
    replicas: &[(String, Client)],
    load_done: Instant,
) -> Result<Vec<ReplicaCheck>> {
    let primary_end = primary.describe_log(LOG_NAME).await?.end_offset;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    for (id, c) in replicas {
        loop {
            let end = c.describe_log(LOG_NAME).await?.end_offset;
            let caught_up = end >= primary_end;
            if caught_up || Instant::now() > deadline {
                out.push(ReplicaCheck {
                    id: id.clone(),
                    primary_end,
                    replica_end: end,
                    caught_up: end == primary_end,
                    catch_up_ms: round1(load_done.elapsed().as_secs_f64() * 1e3),
                });
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(out)
}

async fn drive(
    args: &GrpcArgs,
    mode: Mode,
    server: &BenchServer,
    replica_servers: &[BenchServer],
) -> Result<GrpcRun> {
    let addr = server.addr.to_string();
    let client = crate::bench::connect(&addr, None).await?;
    client.create_log(LOG_NAME, None).await?;
    let io_backend = client.status().await?.io_backend;
    let mut replicas = Vec::new();
    for (i, r) in replica_servers.iter().enumerate() {
        replicas.push((
            format!("r{}", i + 1),
            crate::bench::connect(&r.addr.to_string(), None).await?,
        ));
    }
    if !replicas.is_empty() {
        let only: Vec<Client> = replicas.iter().map(|(_, c)| c.clone()).collect();
        wait_attached(&client, &only, replicas.len()).await?;
    }

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
            let s0 = Sample::take(server, replica_servers, &c);
            tokio::time::sleep_until(w.end.into()).await;
            (s0, Sample::take(server, replica_servers, &c))
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
    let load_done = Instant::now();
    let replica_check = check_replicas(&client, &replicas, load_done).await?;

    let secs = (s1.at - s0.at).as_secs_f64();
    let records = s1.records - s0.records;
    let requests = s1.requests - s0.requests;
    let div = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let per_mr = |cpu: f64| round3(div(cpu * 1e6, records as f64));
    let client_cpu = s1.client_cpu - s0.client_cpu;
    let server_cpu = s1.server_cpu.zip(s0.server_cpu).map(|(a, b)| a - b);
    let replica_cpu = s1.replica_cpu.zip(s0.replica_cpu).map(|(a, b)| a - b);
    let total_cpu = client_cpu + server_cpu.unwrap_or(0.0) + replica_cpu.unwrap_or(0.0);
    Ok(GrpcRun {
        mode,
        server: server.kind_name(),
        io_backend,
        ack: args.ack,
        replicas: replicas.len(),
        record_bytes: args.record_bytes,
        records_per_request: res.records_per_request,
        concurrency: res.concurrency,
        connections: res.connections,
        measured_seconds: round3(secs),
        records,
        requests,
        degraded_acks: s1.degraded - s0.degraded,
        unconfirmed_acks: s1.unconfirmed - s0.unconfirmed,
        records_per_s: round1(div(records as f64, secs)),
        requests_per_s: round1(div(requests as f64, secs)),
        payload_mb_per_s: round3(div((records * args.record_bytes as u64) as f64, secs * 1e6)),
        latency_us: LatencyUs::from_hist(&res.hist),
        server_cpu_s: server_cpu.map(round3),
        replica_cpu_s: replica_cpu.map(round3),
        client_cpu_s: round3(client_cpu),
        cpu_cores: round3(div(total_cpu, secs)),
        cpu_s_per_million_records: per_mr(total_cpu),
        server_cpu_s_per_million_records: server_cpu.map(per_mr),
        replica_cpu_s_per_million_records: replica_cpu.map(per_mr),
        client_cpu_s_per_million_records: per_mr(client_cpu),
        server_rss_mib: server.rss_mib().map(round1),
        client_peak_rss_mib: round1(rusage().max_rss_kib as f64 / 1024.0),
        subscribe: res.subscribe,
        replica_check,
    })
}

fn table_header() -> String {
    format!(
        "{:<9} {:>12} {:>11} {:>4} {:>5} {:>4} {:>5} | {:>10} {:>8} {:>9} | {:>8} {:>8} {:>8} {:>9} | {:>9} {:>9} {:>9} {:>5} | {:>7}",
        "mode", "io", "ack", "repl", "conns", "conc", "rpr",
        "rec/s", "MB/s", "req/s",
        "p50_us", "p99_us", "p999_us", "max_us",
        "cpu_s/Mr", "srv_s/Mr", "cli_s/Mr", "cores",
        "srv_MiB"
    )
}

fn table_line(r: &GrpcRun) -> String {
    let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
    format!(
        "{:<9} {:>12} {:>11} {:>4} {:>5} {:>4} {:>5} | {:>10.0} {:>8.1} {:>9.0} | {:>8.0} {:>8.0} {:>8.0} {:>9.0} | {:>9.2} {:>9} {:>9.2} {:>5.2} | {:>7}",
        format!("{:?}", r.mode).to_lowercase(),
        r.io_backend,
        r.ack.to_string(),
        r.replicas,
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
        match (r.server_cpu_s_per_million_records, r.replica_cpu_s_per_million_records) {
            (Some(s), Some(rep)) => format!("{s:.2}+{rep:.2}"),
            (s, _) => opt(s),
        },
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
