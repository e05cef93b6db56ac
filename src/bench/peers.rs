//! Load generators for the peers `benches/replication_vs_peers.sh` sets beside spool's
//! replication, speaking their wire protocols directly over tokio TCP (no client crate,
//! so the generator costs about what spool's own does):
//!
//! - `spool bench redis-wait`: `--clients` connections, each one write at a time: `SET key
//!   value` then `WAIT 1 0` (sent together, replies read in order); a write counts once WAIT
//!   reports at least `--wait-replicas` replicas. Redis 7.0's WAIT counts replicas that
//!   *received* the write, not ones that fsynced it.
//! - `spool bench nats-js`: one connection to a NATS server; creates a JetStream stream (file
//!   storage, `--stream-replicas`) and publishes with a reply inbox, `--inflight` publishes
//!   awaiting their JetStream ack at a time. JetStream 2.9 acks without an fsync.
//!
//! Both report records/s, p50/p99/p99.9 of send-to-ack and the load generator's CPU (the
//! server's CPU is measured from its pid when `--server-pid` is given).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use super::{
    human, new_histogram, record_payload, round1, round3, runtime, rusage, write_json, LatencyUs,
};

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
struct PeerRun {
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
struct Window {
    warm_end: Instant,
    end: Instant,
}

fn proc_cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((utime + stime) / hz)
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
        pids.iter().map(|&p| proc_cpu_s(p)).sum()
    };
    Sample {
        at: Instant::now(),
        client_cpu: ru.user_s + ru.sys_s,
        server_cpu,
        records: records.load(Ordering::Relaxed),
    }
}

/// Run `load` over the window, sampling counters and CPU at its edges.
async fn measured<F>(
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

fn check(args: &PeerArgs) -> Result<Window> {
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

fn report(args: &PeerArgs, run: &PeerRun) -> Result<()> {
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

// ---------------------------------------------------------------------------------------
// Redis: SET + WAIT over RESP

fn resp_command(parts: &[&[u8]]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", parts.len()).into_bytes();
    for p in parts {
        v.extend_from_slice(format!("${}\r\n", p.len()).as_bytes());
        v.extend_from_slice(p);
        v.extend_from_slice(b"\r\n");
    }
    v
}

/// One simple RESP reply line (`+OK`, `:1`, `-ERR ...`).
async fn resp_line(
    r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    buf: &mut String,
) -> Result<()> {
    buf.clear();
    if r.read_line(buf).await? == 0 {
        bail!("redis closed the connection");
    }
    if buf.starts_with('-') {
        bail!("redis error: {}", buf.trim_end());
    }
    Ok(())
}

pub(super) fn run_redis_wait(args: &PeerArgs) -> Result<()> {
    let rt = runtime(args.threads)?;
    let run = rt.block_on(async {
        let w = check(args)?;
        let records = Arc::new(AtomicU64::new(0));
        let under = Arc::new(AtomicU64::new(0));
        let value = record_payload(args.record_bytes, 0x7ED15);
        let wait_n = args.wait_replicas.to_string();
        let mut tasks = Vec::new();
        for i in 0..args.clients {
            let stream = TcpStream::connect(&args.addr)
                .await
                .with_context(|| format!("connecting to redis at {}", args.addr))?;
            stream.set_nodelay(true)?;
            let (rd, mut wr) = stream.into_split();
            let mut rd = BufReader::new(rd);
            let (records, under, value, wait_n) = (
                records.clone(),
                under.clone(),
                value.clone(),
                wait_n.clone(),
            );
            let need = i64::from(args.wait_replicas);
            tasks.push(tokio::spawn(async move {
                let mut hist = new_histogram();
                let mut line = String::new();
                let mut n = 0u64;
                loop {
                    let t0 = Instant::now();
                    if t0 >= w.end {
                        return anyhow::Ok(hist);
                    }
                    let key = format!("bench:{i}:{}", n % 1024);
                    n += 1;
                    let mut req = resp_command(&[b"SET", key.as_bytes(), &value]);
                    req.extend(resp_command(&[b"WAIT", wait_n.as_bytes(), b"0"]));
                    wr.write_all(&req).await?;
                    resp_line(&mut rd, &mut line).await?;
                    if !line.starts_with("+OK") {
                        bail!("SET replied {:?}", line.trim_end());
                    }
                    resp_line(&mut rd, &mut line).await?;
                    let acked: i64 = line
                        .trim_end()
                        .strip_prefix(':')
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| anyhow!("WAIT replied {:?}", line.trim_end()))?;
                    let t1 = Instant::now();
                    if acked < need {
                        under.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    records.fetch_add(1, Ordering::Relaxed);
                    if t0 >= w.warm_end && t1 <= w.end {
                        hist.saturating_record((t1 - t0).as_nanos() as u64);
                    }
                }
            }));
        }
        let load = async {
            let mut hist = new_histogram();
            for t in tasks {
                hist.add(&t.await??)?;
            }
            Ok(hist)
        };
        let shape = format!("SET+WAIT {} 0", args.wait_replicas);
        measured(args, "redis", shape, records, under, w, load).await
    })?;
    report(args, &run)
}

// ---------------------------------------------------------------------------------------
// NATS JetStream: PUB with a reply inbox, ack = MSG on the inbox

/// Reads NATS protocol messages; answers PINGs through `wr`; returns (subject, payload)
/// of each MSG.
struct NatsReader {
    rd: BufReader<tokio::net::tcp::OwnedReadHalf>,
    wr: Arc<Mutex<tokio::net::tcp::OwnedWriteHalf>>,
    line: String,
}

impl NatsReader {
    async fn next_msg(&mut self) -> Result<(String, Vec<u8>)> {
        loop {
            self.line.clear();
            if self.rd.read_line(&mut self.line).await? == 0 {
                bail!("nats closed the connection");
            }
            let l = self.line.trim_end();
            if l == "PING" {
                self.wr.lock().await.write_all(b"PONG\r\n").await?;
                continue;
            }
            if l.starts_with("+OK") || l == "PONG" || l.starts_with("INFO") {
                continue;
            }
            if l.starts_with("-ERR") {
                bail!("nats error: {l}");
            }
            let f: Vec<&str> = l.split(' ').collect();
            if f.first() != Some(&"MSG") || f.len() < 4 {
                bail!("unexpected nats line {l:?}");
            }
            let len: usize = f[f.len() - 1].parse()?;
            let subject = f[1].to_owned();
            let mut payload = vec![0u8; len + 2];
            self.rd.read_exact(&mut payload).await?;
            payload.truncate(len);
            return Ok((subject, payload));
        }
    }
}

pub(super) fn run_nats_js(args: &PeerArgs) -> Result<()> {
    let rt = runtime(args.threads)?;
    let run = rt.block_on(async {
        let stream = TcpStream::connect(&args.addr)
            .await
            .with_context(|| format!("connecting to nats at {}", args.addr))?;
        stream.set_nodelay(true)?;
        let (rd, wr) = stream.into_split();
        let wr = Arc::new(Mutex::new(wr));
        let mut reader = NatsReader {
            rd: BufReader::new(rd),
            wr: wr.clone(),
            line: String::new(),
        };
        wr.lock()
            .await
            .write_all(
                b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":false,\"protocol\":1,\"name\":\"spool-bench\"}\r\nSUB _INBOX.bench.> 1\r\n",
            )
            .await?;
        // A fresh cluster elects its JetStream meta leader first: retry for up to 30 s.
        let cfg = format!(
            r#"{{"name":"BENCH","subjects":["bench.>"],"storage":"file","num_replicas":{},"retention":"limits","discard":"old"}}"#,
            args.stream_replicas
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        for attempt in 0u32.. {
            let inbox = format!("_INBOX.bench.create{attempt}");
            let cmd = format!(
                "PUB $JS.API.STREAM.CREATE.BENCH {inbox} {}\r\n{cfg}\r\n",
                cfg.len()
            );
            wr.lock().await.write_all(cmd.as_bytes()).await?;
            let reply = tokio::time::timeout(Duration::from_secs(2), async {
                loop {
                    let (subject, payload) = reader.next_msg().await?;
                    if subject == inbox {
                        return anyhow::Ok(String::from_utf8_lossy(&payload).into_owned());
                    }
                }
            })
            .await;
            let err = match reply {
                Ok(Ok(r)) if !r.contains("\"error\"") => break,
                Ok(Ok(r)) => r,
                Ok(Err(e)) => return Err(e),
                Err(_) => "no reply".to_owned(),
            };
            if Instant::now() > deadline {
                bail!("creating the JetStream stream: {err}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }

        let w = check(args)?;
        let records = Arc::new(AtomicU64::new(0));
        let under = Arc::new(AtomicU64::new(0));
        let value = record_payload(args.record_bytes, 0x4A75);
        let window = Arc::new(tokio::sync::Semaphore::new(args.clients));
        let sent: Arc<parking_lot::Mutex<HashMap<u64, (Instant, tokio::sync::OwnedSemaphorePermit)>>> =
            Arc::default();
        let publisher = {
            let (wr, window, sent) = (wr.clone(), window.clone(), sent.clone());
            async move {
                let mut seq = 0u64;
                let mut buf = Vec::with_capacity(value.len() + 64);
                while Instant::now() < w.end {
                    let permit = window.clone().acquire_owned().await?;
                    seq += 1;
                    buf.clear();
                    buf.extend_from_slice(
                        format!("PUB bench.x _INBOX.bench.{seq} {}\r\n", value.len()).as_bytes(),
                    );
                    buf.extend_from_slice(&value);
                    buf.extend_from_slice(b"\r\n");
                    sent.lock().insert(seq, (Instant::now(), permit));
                    wr.lock().await.write_all(&buf).await?;
                }
                anyhow::Ok(seq)
            }
        };
        let acker = {
            let (sent, records) = (sent.clone(), records.clone());
            async move {
                let mut hist = new_histogram();
                loop {
                    let done = Instant::now() >= w.end && sent.lock().is_empty();
                    if done {
                        return anyhow::Ok(hist);
                    }
                    let next = tokio::time::timeout(Duration::from_secs(5), reader.next_msg());
                    let Ok(msg) = next.await else {
                        bail!("no JetStream ack for 5 s");
                    };
                    let (subject, payload) = msg?;
                    let t1 = Instant::now();
                    let Some(seq) = subject
                        .strip_prefix("_INBOX.bench.")
                        .and_then(|s| s.parse::<u64>().ok())
                    else {
                        continue;
                    };
                    let Some((t0, permit)) = sent.lock().remove(&seq) else {
                        continue;
                    };
                    drop(permit);
                    if payload.windows(7).any(|w| w == b"\"error\"") {
                        bail!("publish rejected: {}", String::from_utf8_lossy(&payload));
                    }
                    records.fetch_add(1, Ordering::Relaxed);
                    if t0 >= w.warm_end && t1 <= w.end {
                        hist.saturating_record((t1 - t0).as_nanos() as u64);
                    }
                }
            }
        };
        let load = async {
            let (p, hist) = tokio::join!(publisher, acker);
            p?;
            hist
        };
        let shape = format!("JS R{} file, PUB+ack", args.stream_replicas);
        measured(args, "nats", shape, records, under, w, load).await
    })?;
    report(args, &run)
}
