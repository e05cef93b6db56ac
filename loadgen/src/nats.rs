//! `spool-loadgen nats-js`: one connection to a NATS server; creates a JetStream stream
//! (file storage, `--stream-replicas`) and publishes with a reply inbox, `--clients`
//! publishes awaiting their JetStream ack at a time. JetStream 2.9 acks without an fsync.
//! The NATS protocol is spoken directly over tokio TCP (no client crate).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use spool::measure::{new_histogram, record_payload, runtime};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::peer::{check, measured, report, PeerArgs};

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

pub fn run_nats_js(args: &PeerArgs) -> Result<()> {
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
