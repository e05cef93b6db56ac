//! `spool-loadgen redis-wait`: `--clients` connections, each one write at a time: `SET key
//! value` then `WAIT N 0` (sent together, replies read in order); a write counts once WAIT
//! reports at least `--wait-replicas` replicas. Redis 7.0's WAIT counts replicas that
//! *received* the write, not ones that fsynced it. RESP is spoken directly over tokio TCP
//! (no client crate), so the generator costs about what spool's own does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use spool::measure::{new_histogram, record_payload, runtime};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::peer::{check, measured, report, PeerArgs};

pub(crate) fn resp_command(parts: &[&[u8]]) -> Vec<u8> {
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

pub fn run_redis_wait(args: &PeerArgs) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    #[test]
    fn commands_are_resp_arrays_of_bulk_strings() {
        assert_eq!(
            resp_command(&[b"WAIT", b"1", b"0"]),
            b"*3\r\n$4\r\nWAIT\r\n$1\r\n1\r\n$1\r\n0\r\n"
        );
    }

    /// Against a stand-in that answers every SET with +OK and every WAIT with :1, writes
    /// are counted and reported as JSON.
    #[test]
    fn counts_acknowledged_writes_against_a_fake_redis() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                std::thread::spawn(move || {
                    let wait = resp_command(&[b"WAIT", b"1", b"0"]);
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 64 << 10];
                    while let Ok(n @ 1..) = conn.read(&mut buf) {
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(at) = seen.windows(wait.len()).position(|w| w == wait) {
                            seen.drain(..at + wait.len());
                            if conn.write_all(b"+OK\r\n:1\r\n").is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("redis.json");
        let args = PeerArgs {
            addr,
            seconds: 0.3,
            warmup: 0.1,
            record_bytes: 100,
            clients: 2,
            wait_replicas: 1,
            stream_replicas: 1,
            server_pid: Vec::new(),
            json: Some(json.clone()),
            threads: Some(1),
        };
        run_redis_wait(&args).unwrap();
        let runs: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let run = &runs[0];
        assert_eq!(run["system"], "redis");
        assert!(run["records"].as_u64().unwrap() > 0, "{run}");
        assert_eq!(run["under_replicated"], 0, "{run}");
    }
}
