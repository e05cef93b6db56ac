//! Client commands: logs, append, read, tail.

use std::io::{BufRead, Write};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};
use futures::StreamExt;
use spool::client::{AckMode, Client, LogInfo};
use spool_proto::v1 as pb;

#[derive(Debug, Subcommand)]
pub enum LogsCommand {
    /// Create a log.
    Create(CreateArgs),
    /// List logs with their offsets and sizes.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one log's offsets, size and config.
    Describe {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a log and all its records.
    Delete { name: String },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    pub name: String,
    /// Segment file size in bytes.
    #[arg(long)]
    pub segment_bytes: Option<u64>,
    /// Keep at least this many bytes; older whole segments are deleted.
    #[arg(long)]
    pub retention_bytes: Option<u64>,
    /// Delete whole segments older than this many milliseconds.
    #[arg(long)]
    pub retention_ms: Option<u64>,
    /// none, zstd or zstd:LEVEL.
    #[arg(long)]
    pub compression: Option<String>,
}

/// `--ack`: async | written | semi-sync[:K] | sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub mode: AckMode,
    pub semi_sync_replicas: u32,
}

pub fn parse_ack(s: &str) -> Result<Ack, String> {
    let (mode, k) = match s {
        "async" => (AckMode::Async, 0),
        "written" => (AckMode::Written, 0),
        "sync" => (AckMode::Sync, 0),
        "semi-sync" => (AckMode::SemiSync, 0),
        _ => match s.strip_prefix("semi-sync:").map(str::parse::<u32>) {
            Some(Ok(k)) => (AckMode::SemiSync, k),
            _ => {
                return Err(format!(
                    "unknown ack mode {s:?}: use async, written, semi-sync, semi-sync:K or sync"
                ))
            }
        },
    };
    Ok(Ack {
        mode,
        semi_sync_replicas: k,
    })
}

#[derive(Debug, Args)]
pub struct AppendArgs {
    pub log: String,
    /// Records; without any, one record per line of stdin.
    pub records: Vec<String>,
    /// async (fdatasync'd on the primary), written (page cache only: weaker),
    /// semi-sync[:K] (and on K replicas), sync (and on every sync replica).
    #[arg(long, value_parser = parse_ack, default_value = "async")]
    pub ack: Ack,
    /// Records per request when reading stdin.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Idempotent append (records given as arguments): a non-zero producer id, with
    /// `--sequence`. Running the same command again is answered with the original
    /// offsets instead of appending twice.
    #[arg(long, requires = "sequence")]
    pub producer_id: Option<u64>,
    /// The producer's request number: one more than its previous append's.
    #[arg(long, requires = "producer_id")]
    pub sequence: Option<u64>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Text,
    Json,
    Raw,
}

#[derive(Debug, Args)]
pub struct ReadArgs {
    pub log: String,
    #[arg(long, default_value_t = 0)]
    pub from: u64,
    /// How many records [default: all up to the end].
    #[arg(long)]
    pub count: Option<u64>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct TailArgs {
    pub log: String,
    /// Start here instead of at the end.
    #[arg(long)]
    pub from: Option<u64>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

fn print_record(out: &mut impl Write, format: Format, r: &pb::Record) -> Result<()> {
    match format {
        Format::Text => writeln!(out, "{}\t{}", r.offset, String::from_utf8_lossy(&r.value))?,
        Format::Json => {
            let v = serde_json::json!({
                "offset": r.offset,
                "timestamp_us": r.timestamp_us,
                "value": String::from_utf8_lossy(&r.value),
            });
            writeln!(out, "{v}")?
        }
        Format::Raw => {
            out.write_all(&r.value)?;
            out.write_all(b"\n")?
        }
    }
    Ok(())
}

fn info_json(l: &LogInfo) -> serde_json::Value {
    let c = l.config.unwrap_or_default();
    serde_json::json!({
        "name": l.name, "start_offset": l.start_offset, "end_offset": l.end_offset,
        "epoch": l.epoch, "size_bytes": l.size_bytes, "disk_bytes": l.disk_bytes,
        "segments": l.segments,
        "config": {
            "segment_bytes": c.segment_bytes, "retention_bytes": c.retention_bytes,
            "retention_ms": c.retention_ms,
            "compression": if c.compression == pb::Compression::Zstd as i32 {
                format!("zstd:{}", c.zstd_level) } else { "none".into() },
        },
    })
}

pub async fn logs(client: &Client, cmd: LogsCommand) -> Result<()> {
    match cmd {
        LogsCommand::Create(a) => {
            let mut c = pb::LogConfig {
                segment_bytes: a.segment_bytes.unwrap_or(0),
                retention_bytes: a.retention_bytes.unwrap_or(0),
                retention_ms: a.retention_ms.unwrap_or(0),
                ..Default::default()
            };
            if let Some(comp) = a.compression.as_deref() {
                match spool_storage::meta::parse_compression(comp).map_err(anyhow::Error::msg)? {
                    spool_storage::Compression::None => {
                        c.compression = pb::Compression::None as i32
                    }
                    spool_storage::Compression::Zstd { level } => {
                        c.compression = pb::Compression::Zstd as i32;
                        c.zstd_level = level;
                    }
                }
            }
            let info = client.create_log(&a.name, Some(c)).await?;
            println!("created log {}", info.name);
        }
        LogsCommand::List { json } => {
            let logs = client.list_logs().await?;
            if json {
                let v: Vec<_> = logs.iter().map(info_json).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "{:<24} {:>12} {:>12} {:>14} {:>8}",
                    "LOG", "START", "END", "BYTES", "SEGMENTS"
                );
                for l in logs {
                    println!(
                        "{:<24} {:>12} {:>12} {:>14} {:>8}",
                        l.name, l.start_offset, l.end_offset, l.size_bytes, l.segments
                    );
                }
            }
        }
        LogsCommand::Describe { name, json } => {
            let l = client.describe_log(&name).await?;
            let v = info_json(&l);
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for (k, val) in v.as_object().expect("object") {
                    println!("{k:>14}: {val}");
                }
            }
        }
        LogsCommand::Delete { name } => {
            client.delete_log(&name).await?;
            println!("deleted log {name}");
        }
    }
    Ok(())
}

pub async fn append(client: &Client, a: AppendArgs) -> Result<()> {
    if a.records.is_empty() && a.producer_id.is_some() {
        bail!("--producer-id needs the records as arguments (one idempotent request)");
    }
    if !a.records.is_empty() {
        let r = client
            .append_with(pb::AppendRequest {
                log: a.log.clone(),
                records: a.records.into_iter().map(Bytes::from).collect(),
                ack: a.ack.mode as i32,
                semi_sync_replicas: a.ack.semi_sync_replicas,
                producer_id: a.producer_id.unwrap_or(0),
                sequence: a.sequence.unwrap_or(0),
                ..Default::default()
            })
            .await?;
        let replicated = if r.durability == pb::Durability::Replicated as i32 || r.degraded {
            format!(
                ", {} replica(s) confirmed{}",
                r.replicas_confirmed,
                if r.degraded {
                    ", DEGRADED to async"
                } else {
                    ""
                }
            )
        } else {
            String::new()
        };
        let verb = if r.duplicate {
            "already appended (a retry: nothing written)"
        } else {
            "appended"
        };
        println!(
            "{verb} {} record(s) at offsets {}..{} (epoch {}, token {}{replicated})",
            r.count,
            r.first_offset,
            r.first_offset + u64::from(r.count),
            r.epoch,
            r.read_token
        );
        return Ok(());
    }
    // Bulk from stdin: pipelined batches, a progress bar on stderr.
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(indicatif::ProgressStyle::with_template(
        "{spinner} {pos} records appended ({per_sec})",
    )?);
    let mut appender = client
        .appender_with(&a.log, a.ack.mode, a.ack.semi_sync_replicas)
        .await?;
    let mut waiting = std::collections::VecDeque::new();
    let mut batch = Vec::with_capacity(a.batch);
    let (mut first, mut last) = (None, 0u64);
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        let line = lines.next().transpose().context("reading stdin")?;
        let done = line.is_none();
        if let Some(l) = line {
            batch.push(Bytes::from(l));
        }
        if batch.len() >= a.batch.max(1) || (done && !batch.is_empty()) {
            let n = batch.len() as u64;
            waiting.push_back((appender.send(std::mem::take(&mut batch)).await?, n));
        }
        while waiting.len() > 64 || (done && !waiting.is_empty()) {
            let (rx, n) = waiting.pop_front().expect("non-empty");
            let r = rx
                .await
                .map_err(|_| anyhow::anyhow!("append stream closed"))??;
            first.get_or_insert(r.first_offset);
            last = r.first_offset + u64::from(r.count);
            bar.inc(n);
        }
        if done {
            break;
        }
    }
    bar.finish_and_clear();
    match first {
        Some(f) => println!("appended {} record(s) at offsets {f}..{last}", last - f),
        None => bail!("no records on stdin"),
    }
    Ok(())
}

pub async fn read(client: &Client, a: ReadArgs) -> Result<()> {
    let end = match a.count {
        Some(c) => a.from + c,
        None => client.describe_log(&a.log).await?.end_offset,
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut from = a.from;
    // At least one read, so that an offset outside the log gets the server's OUT_OF_RANGE.
    let mut first = true;
    while from < end || first {
        first = false;
        let want = end.saturating_sub(from).clamp(1, 1000) as u32;
        let r = client.read(&a.log, from, want).await?;
        if r.records.is_empty() {
            break;
        }
        for rec in &r.records {
            print_record(&mut out, a.format, rec)?;
        }
        from = r.next_offset;
    }
    out.flush()?;
    Ok(())
}

pub async fn tail(client: &Client, a: TailArgs) -> Result<()> {
    let mut stream = Box::pin(client.subscribe(&a.log, a.from).await?);
    let mut out = std::io::stdout();
    while let Some(rec) = stream.next().await {
        print_record(&mut out, a.format, &rec?)?;
        out.flush()?;
    }
    Ok(())
}
