//! Client commands: logs, append, read, tail.

use std::io::{BufRead, Write};

use anyhow::{bail, Result};
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
        /// Print the list as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one log's offsets, size and config.
    Describe {
        /// The log.
        name: String,
        /// Print it as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a log and all its records (on the primary; replicas follow). Asks first.
    Delete {
        /// The log.
        name: String,
        /// Delete without asking (scripts; without a terminal, the command refuses).
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The log's name: 1 to 200 characters of A-Z a-z 0-9 . _ - (not starting with . or -).
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
    /// The log to append to.
    pub log: String,
    /// Records; without any, one record per line of stdin.
    pub records: Vec<String>,
    /// async (fdatasync'd on the primary), written (page cache only: weaker),
    /// semi-sync[:K] (and on K replicas), sync (and on every sync replica)
    /// [default: the server's default_ack].
    #[arg(long, value_parser = parse_ack)]
    pub ack: Option<Ack>,
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
    /// The log to read.
    pub log: String,
    /// The first offset to read.
    #[arg(long, default_value_t = 0)]
    pub from: u64,
    /// How many records [default: all up to the end].
    #[arg(long)]
    pub count: Option<u64>,
    /// Read your writes: the `token` an append printed. A replica waits until it holds
    /// that offset (a bounded wait; then an error says it is behind).
    #[arg(long, value_name = "TOKEN")]
    pub read_token: Option<u64>,
    /// text (offset, tab, value), json (one object a line) or raw (values only).
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct TailArgs {
    /// The log to follow.
    pub log: String,
    /// Start here instead of at the end.
    #[arg(long)]
    pub from: Option<u64>,
    /// text (offset, tab, value), json (one object a line) or raw (values only).
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
            let asked = client.addr();
            let info = client.create_log(&a.name, Some(c)).await?;
            println!("created log {}{}", info.name, forwarded(&asked, client));
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
        LogsCommand::Delete { name, yes } => {
            let asked = client.addr();
            if !yes {
                let l = client.describe_log(&name).await?;
                super::confirm::confirm(
                    &format!(
                        "delete log {name} and its {} record(s) (offsets {}..{}, {} bytes) \
                         on every node",
                        l.end_offset - l.start_offset,
                        l.start_offset,
                        l.end_offset,
                        l.size_bytes
                    ),
                    false,
                )?;
            }
            client.delete_log(&name).await?;
            println!("deleted log {name}{}", forwarded(&asked, client));
        }
    }
    Ok(())
}

/// " (forwarded to the primary at ADDR)" when the node asked (`asked`) was a replica and
/// the write went on to the primary it named; else nothing.
fn forwarded(asked: &str, client: &Client) -> String {
    let now = client.addr();
    if now == asked {
        return String::new();
    }
    let shown = now.strip_prefix("http://").unwrap_or(&now);
    let asked = asked.strip_prefix("http://").unwrap_or(asked);
    format!(" (forwarded to the primary at {shown}: {asked} is a replica)")
}

/// The ack mode sent: the one given, or UNSPECIFIED (the server's `default_ack`).
fn ack_of(a: &AppendArgs) -> (AckMode, u32) {
    a.ack.map_or((AckMode::Unspecified, 0), |k| {
        (k.mode, k.semi_sync_replicas)
    })
}

pub async fn append(client: &Client, a: AppendArgs) -> Result<()> {
    if a.records.is_empty() && a.producer_id.is_some() {
        bail!("--producer-id needs the records as arguments (one idempotent request)");
    }
    if a.records.is_empty() {
        return append_stdin(client, a).await;
    }
    let (ack, k) = ack_of(&a);
    let asked = client.addr();
    let r = client
        .append_with(pb::AppendRequest {
            log: a.log.clone(),
            records: a.records.into_iter().map(Bytes::from).collect(),
            ack: ack as i32,
            semi_sync_replicas: k,
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
    } else if r.durability == pb::Durability::Written as i32 {
        ", written: in the page cache, not yet fdatasync'd".to_owned()
    } else {
        String::new()
    };
    let verb = if r.duplicate {
        "already appended (a retry: nothing written)"
    } else {
        "appended"
    };
    println!(
        "{verb} {} record(s) at offsets {}..{} (epoch {}, token {}{replicated}){}",
        r.count,
        r.first_offset,
        r.first_offset + u64::from(r.count),
        r.epoch,
        r.read_token,
        forwarded(&asked, client)
    );
    Ok(())
}

/// `n` with thousands separators: 426087 -> "426,087".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The acknowledged part of a bulk append: what to tell when it stops early.
#[derive(Debug, Default)]
struct Acked {
    first: Option<u64>,
    end: u64,
    records: u64,
}

impl Acked {
    fn note(&mut self, r: &pb::AppendResponse) {
        self.first = Some(self.first.map_or(r.first_offset, |f| f.min(r.first_offset)));
        self.end = self.end.max(r.first_offset + u64::from(r.count));
        self.records += u64::from(r.count);
    }

    /// "768 record(s) of LOG acknowledged at offsets 0..768" (or none).
    fn describe(&self, log: &str) -> String {
        match self.first {
            Some(f) => format!(
                "{} record(s) of {log} acknowledged at offsets {f}..{}",
                self.records, self.end
            ),
            None => format!("no record of {log} acknowledged"),
        }
    }
}

/// Batches in flight on the stream at most (each waits for its ack).
const BULK_IN_FLIGHT_MAX: usize = 64;
/// How long an interrupted bulk append waits for the acks of what it already sent.
const BULK_DRAIN_MAX: std::time::Duration = std::time::Duration::from_secs(5);

type AckRx = tokio::sync::oneshot::Receiver<spool::client::Result<pb::AppendResponse>>;

/// The ack of the oldest batch in flight (pending forever when none is).
async fn oldest_ack(
    waiting: &mut std::collections::VecDeque<(AckRx, u64)>,
) -> spool::client::Result<pb::AppendResponse> {
    match waiting.front_mut() {
        Some((rx, _)) => rx
            .await
            .unwrap_or(Err(spool::client::ClientError::StreamClosed)),
        None => std::future::pending().await,
    }
}

/// Bulk from stdin: batches read by a thread, pipelined on one stream, a progress bar on
/// stderr. Stopped by Ctrl-C or a failure, it says which offsets were acknowledged.
async fn append_stdin(client: &Client, a: AppendArgs) -> Result<()> {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {pos} records appended ({rate})")?
            .with_key(
                "rate",
                |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{}/s", thousands(s.per_sec() as u64));
                },
            ),
    );
    let (ack, k) = ack_of(&a);
    let log = a.log.clone();
    let mut appender = client.appender_with(&a.log, ack, k).await?;
    let (tx, mut batches) = tokio::sync::mpsc::channel::<std::io::Result<Vec<Bytes>>>(4);
    let batch_max = a.batch.max(1);
    std::thread::spawn(move || {
        let mut batch = Vec::with_capacity(batch_max);
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(l) => batch.push(Bytes::from(l)),
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
            if batch.len() >= batch_max && tx.blocking_send(Ok(std::mem::take(&mut batch))).is_err()
            {
                return;
            }
        }
        if !batch.is_empty() {
            let _ = tx.blocking_send(Ok(batch));
        }
    });
    let mut waiting = std::collections::VecDeque::new();
    let mut acked = Acked::default();
    let mut eof = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let stopped: Option<anyhow::Error> = loop {
        if eof && waiting.is_empty() {
            break None;
        }
        tokio::select! {
            // Ctrl-C first: nothing more is sent once it came.
            biased;
            _ = &mut ctrl_c => {
                // What was sent may still be acknowledged: wait for it, bounded.
                let drain = async {
                    while let Some((rx, _)) = waiting.pop_front() {
                        match rx.await {
                            Ok(Ok(r)) => acked.note(&r),
                            _ => break,
                        }
                    }
                };
                let _ = tokio::time::timeout(BULK_DRAIN_MAX, drain).await;
                break Some(anyhow::anyhow!("interrupted"));
            }
            r = oldest_ack(&mut waiting) => {
                let (_, n) = waiting.pop_front().expect("an ack came for a batch in flight");
                match r {
                    Ok(r) => {
                        acked.note(&r);
                        bar.inc(n);
                    }
                    Err(e) => break Some(e.into()),
                }
            }
            b = batches.recv(), if !eof && waiting.len() < BULK_IN_FLIGHT_MAX => match b {
                Some(Ok(batch)) => {
                    let n = batch.len() as u64;
                    match appender.send(batch).await {
                        Ok(rx) => waiting.push_back((rx, n)),
                        Err(e) => break Some(e.into()),
                    }
                }
                Some(Err(e)) => break Some(anyhow::Error::new(e).context("reading stdin")),
                None => eof = true,
            },
        }
    };
    bar.finish_and_clear();
    if let Some(e) = stopped {
        let unanswered: u64 = waiting.iter().map(|(_, n)| n).sum();
        let unknown = if unanswered > 0 {
            format!(
                "; {unanswered} more sent without an answer (they may or may not be in the log)"
            )
        } else {
            String::new()
        };
        return Err(e.context(format!("stopped: {}{unknown}", acked.describe(&log))));
    }
    match acked.first {
        Some(f) => println!(
            "appended {} record(s) at offsets {f}..{}",
            acked.records, acked.end
        ),
        None => bail!("no records on stdin"),
    }
    Ok(())
}

pub async fn read(client: &Client, a: ReadArgs) -> Result<()> {
    let min_offset = a.read_token.unwrap_or(0);
    let end = match a.count {
        Some(c) => a.from + c,
        // A replica behind the token ends after it once it has caught up.
        None => client
            .describe_log(&a.log)
            .await?
            .end_offset
            .max(min_offset),
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut from = a.from;
    // The epoch of the record before `from` as read: each page after the first checks that
    // no failover cut the records printed already (the node refuses if it did).
    let mut last_epoch = 0;
    // At least one read, so that an offset outside the log gets the server's OUT_OF_RANGE.
    let mut first = true;
    while from < end || first {
        first = false;
        let want = end.saturating_sub(from).clamp(1, 1000) as u32;
        let r = client
            .read_with(pb::ReadRequest {
                log: a.log.clone(),
                from_offset: from,
                max_records: want,
                min_offset,
                last_epoch,
                ..Default::default()
            })
            .await?;
        if r.records.is_empty() {
            break;
        }
        for rec in &r.records {
            print_record(&mut out, a.format, rec)?;
        }
        from = r.next_offset;
        last_epoch = r.last_epoch;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_as_whole_numbers_with_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(426_087), "426,087");
        assert_eq!(thousands(12_345_678), "12,345,678");
    }
}
