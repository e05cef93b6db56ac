//! The Redis Sentinel side of `benches/failover_rounds.sh`: a writer doing `SET k v` then
//! `WAIT N 0` on the master Sentinel names, recording every write WAIT confirmed
//! (`sentinel-writer`), and the check after each round (`sentinel-check`): the failover
//! time (fault to the first confirmed write on another master) and the confirmed writes
//! the current master does not hold. WAIT counts replicas that received a write; it does
//! not stop a failover from choosing a replica without it (Redis documents this), so
//! losses are counted, not prevented.
//!
//! Keys are unique per write (`k:N`), values as in the Spool writer; one JSON line per
//! confirmed write, flushed as it comes; times in Unix ms.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader as StdBufReader, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use spool::measure::{runtime, write_json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::failover::{now_ms, value_of};
use crate::redis::resp_command;

/// A command not answered within this long is abandoned (WAIT N 0 blocks until N
/// replicas have the write, which a master without replicas never gets).
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// GETs per pipelined batch in the check.
const GET_BATCH: usize = 500;
const LOST_EXAMPLES_MAX: usize = 10;

#[derive(Debug, Clone, Args)]
pub struct SentinelWriterArgs {
    /// The sentinels, HOST:PORT each.
    #[arg(long, value_delimiter = ',', required = true)]
    pub sentinels: Vec<String>,
    #[arg(long, default_value = "bench")]
    pub master_name: String,
    /// Where each confirmed write goes, one JSON line each.
    #[arg(long)]
    pub out: PathBuf,
    /// The N of `WAIT N 0`.
    #[arg(long, default_value_t = 1)]
    pub wait_replicas: u32,
    #[arg(long, default_value_t = 64)]
    pub record_bytes: usize,
}

#[derive(Debug, Clone, Args)]
pub struct SentinelCheckArgs {
    #[arg(long, value_delimiter = ',', required = true)]
    pub sentinels: Vec<String>,
    #[arg(long, default_value = "bench")]
    pub master_name: String,
    /// The writer's file.
    #[arg(long)]
    pub acks: PathBuf,
    /// The fault's instant (Unix ms).
    #[arg(long)]
    pub fault_ms: Option<u64>,
    /// The master at the fault (HOST:PORT).
    #[arg(long)]
    pub old_master: Option<String>,
    /// Writes from this instant on are the round's.
    #[arg(long, default_value_t = 0)]
    pub since_ms: u64,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One write WAIT confirmed.
#[derive(Debug, Serialize, Deserialize)]
struct Ack {
    t_ms: u64,
    master: String,
    key: String,
    value: String,
}

#[derive(Debug)]
enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    /// Arrays of bulk strings only (all this needs).
    Array(Option<Vec<Option<Vec<u8>>>>),
}

type Reader = BufReader<OwnedReadHalf>;

async fn line(r: &mut Reader) -> Result<String> {
    let mut s = String::new();
    if r.read_line(&mut s).await? == 0 {
        bail!("redis closed the connection");
    }
    Ok(s.trim_end().to_owned())
}

async fn bulk(r: &mut Reader, len: i64) -> Result<Option<Vec<u8>>> {
    if len < 0 {
        return Ok(None);
    }
    let len = usize::try_from(len)?;
    if len > 64 << 20 {
        bail!("bulk string of {len} bytes");
    }
    let mut v = vec![0u8; len + 2];
    r.read_exact(&mut v).await?;
    v.truncate(len);
    Ok(Some(v))
}

async fn reply(r: &mut Reader) -> Result<Reply> {
    let l = line(r).await?;
    let (kind, rest) = l.split_at(l.len().min(1));
    let num = || rest.parse::<i64>().map_err(|_| anyhow!("bad reply {l:?}"));
    Ok(match kind {
        "+" => Reply::Simple(rest.to_owned()),
        "-" => Reply::Error(rest.to_owned()),
        ":" => Reply::Int(num()?),
        "$" => Reply::Bulk(bulk(r, num()?).await?),
        "*" => {
            let n = num()?;
            if n < 0 {
                Reply::Array(None)
            } else {
                let mut items = Vec::new();
                for _ in 0..n {
                    let h = line(r).await?;
                    let len = h
                        .strip_prefix('$')
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| anyhow!("array of non-bulk {h:?}"))?;
                    items.push(bulk(r, len).await?);
                }
                Reply::Array(Some(items))
            }
        }
        _ => bail!("bad reply {l:?}"),
    })
}

async fn connect(addr: &str) -> Result<(Reader, OwnedWriteHalf)> {
    let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .context("connect timed out")??;
    s.set_nodelay(true)?;
    let (r, w) = s.into_split();
    Ok((BufReader::new(r), w))
}

/// The master's HOST:PORT as the first sentinel that answers reports it.
async fn master_addr(sentinels: &[String], name: &str) -> Option<String> {
    for s in sentinels {
        let ask = async {
            let (mut r, mut w) = connect(s).await?;
            w.write_all(&resp_command(&[
                b"SENTINEL",
                b"get-master-addr-by-name",
                name.as_bytes(),
            ]))
            .await?;
            match reply(&mut r).await? {
                Reply::Array(Some(v)) if v.len() == 2 => {
                    let part = |b: &Option<Vec<u8>>| {
                        String::from_utf8_lossy(b.as_deref().unwrap_or_default()).into_owned()
                    };
                    anyhow::Ok(Some(format!("{}:{}", part(&v[0]), part(&v[1]))))
                }
                _ => Ok(None),
            }
        };
        if let Ok(Ok(Some(a))) = tokio::time::timeout(CALL_TIMEOUT, ask).await {
            return Some(a);
        }
    }
    None
}

/// SET then WAIT; Ok(true) when WAIT confirmed `need` replicas.
async fn set_wait(
    r: &mut Reader,
    w: &mut OwnedWriteHalf,
    key: &str,
    value: &str,
    need: u32,
) -> Result<bool> {
    let n = need.to_string();
    let mut req = resp_command(&[b"SET", key.as_bytes(), value.as_bytes()]);
    req.extend(resp_command(&[b"WAIT", n.as_bytes(), b"0"]));
    w.write_all(&req).await?;
    match reply(r).await? {
        Reply::Simple(s) if s == "OK" => {}
        // READONLY: a master turned replica under us; the caller asks Sentinel again.
        Reply::Error(e) => bail!("SET: {e}"),
        other => bail!("SET replied {other:?}"),
    }
    match reply(r).await? {
        Reply::Int(k) => Ok(k >= i64::from(need)),
        other => bail!("WAIT replied {other:?}"),
    }
}

/// One connection, one write at a time; runs until SIGTERM or SIGINT.
pub fn run_writer(args: &SentinelWriterArgs) -> Result<()> {
    let file = std::fs::File::create(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let rt = runtime(Some(1))?;
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            s.store(true, Ordering::Relaxed);
        });
        let mut out = BufWriter::new(file);
        let mut conn: Option<(String, Reader, OwnedWriteHalf)> = None;
        let (mut n, mut count, mut failed) = (0u64, 0u64, 0u64);
        while !stop.load(Ordering::Relaxed) {
            let (master, r, w) = match &mut conn {
                Some(c) => c,
                None => {
                    let found = match master_addr(&args.sentinels, &args.master_name).await {
                        Some(m) => connect(&m).await.ok().map(|(r, w)| (m, r, w)),
                        None => None,
                    };
                    match found {
                        Some(c) => conn.insert(c),
                        None => {
                            tokio::time::sleep(RETRY_PAUSE).await;
                            continue;
                        }
                    }
                }
            };
            let key = format!("k:{n}");
            let value = value_of("r", n, args.record_bytes);
            n += 1;
            let call = set_wait(r, w, &key, &value, args.wait_replicas);
            match tokio::time::timeout(CALL_TIMEOUT, call).await {
                Ok(Ok(true)) => {
                    let ack = Ack {
                        t_ms: now_ms(),
                        master: master.clone(),
                        key,
                        value,
                    };
                    serde_json::to_writer(&mut out, &ack)?;
                    out.write_all(b"\n")?;
                    out.flush()?;
                    count += 1;
                }
                Ok(Ok(false)) => failed += 1,
                Ok(Err(_)) | Err(_) => {
                    failed += 1;
                    conn = None;
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
        out.flush()?;
        eprintln!("sentinel-writer: {count} confirmed writes, {failed} not confirmed");
        anyhow::Ok(())
    })
}

#[derive(Debug, Serialize)]
struct CheckReport {
    master: String,
    acked_total: usize,
    acked_round: usize,
    lost: usize,
    /// (key, value confirmed, value found).
    lost_examples: Vec<(String, String, Option<String>)>,
    failover_ms: Option<u64>,
    new_master: Option<String>,
}

fn read_acks(path: &PathBuf) -> Result<Vec<Ack>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut acks = Vec::new();
    for line in StdBufReader::new(f).lines() {
        let line = line?;
        match serde_json::from_str(&line) {
            Ok(a) => acks.push(a),
            // A torn last line is not a confirmed write yet.
            Err(_) => break,
        }
    }
    Ok(acks)
}

pub fn run_check(args: &SentinelCheckArgs) -> Result<()> {
    let acks = read_acks(&args.acks)?;
    let rt = runtime(Some(1))?;
    let report = rt.block_on(async {
        let master = master_addr(&args.sentinels, &args.master_name)
            .await
            .context("no sentinel names a master")?;
        let (mut r, mut w) = connect(&master).await?;
        let mut found: BTreeMap<&str, Option<Vec<u8>>> = BTreeMap::new();
        for chunk in acks.chunks(GET_BATCH) {
            let mut req = Vec::new();
            for a in chunk {
                req.extend(resp_command(&[b"GET", a.key.as_bytes()]));
            }
            w.write_all(&req).await?;
            for a in chunk {
                match reply(&mut r).await? {
                    Reply::Bulk(v) => found.insert(&a.key, v),
                    other => bail!("GET {} replied {other:?}", a.key),
                };
            }
        }
        let mut lost = 0;
        let mut lost_examples = Vec::new();
        for a in &acks {
            let got = found.get(a.key.as_str()).and_then(|v| v.as_deref());
            if got != Some(a.value.as_bytes()) {
                lost += 1;
                if lost_examples.len() < LOST_EXAMPLES_MAX {
                    let g = got.map(|v| String::from_utf8_lossy(v).into_owned());
                    lost_examples.push((a.key.clone(), a.value.clone(), g));
                }
            }
        }
        let first_after = match (args.fault_ms, &args.old_master) {
            (Some(t), Some(old)) => acks
                .iter()
                .filter(|a| a.t_ms >= t && &a.master != old)
                .min_by_key(|a| a.t_ms)
                .map(|a| (a.t_ms - t, a.master.clone())),
            _ => None,
        };
        anyhow::Ok(CheckReport {
            master,
            acked_total: acks.len(),
            acked_round: acks.iter().filter(|a| a.t_ms >= args.since_ms).count(),
            lost,
            lost_examples,
            failover_ms: first_after.as_ref().map(|f| f.0),
            new_master: first_after.map(|f| f.1),
        })
    })?;
    write_json(&args.json, &report)
}
