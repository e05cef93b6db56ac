//! Client commands: logs, append, read, tail, status.

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
    if !a.records.is_empty() {
        let r = client
            .append_with(pb::AppendRequest {
                log: a.log.clone(),
                records: a.records.into_iter().map(Bytes::from).collect(),
                ack: a.ack.mode as i32,
                semi_sync_replicas: a.ack.semi_sync_replicas,
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
        println!(
            "appended {} record(s) at offsets {}..{} (epoch {}, token {}{replicated})",
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

pub async fn status(client: &Client, json: bool) -> Result<()> {
    let s = client.status().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status_json(&s))?);
        return Ok(());
    }
    let mut flags = String::new();
    if s.fenced {
        flags.push_str(" FENCED");
    }
    if s.degraded {
        flags.push_str(" DEGRADED");
    }
    if s.delay_ms > 0 {
        flags.push_str(&format!(" DELAYED {:.3}s", s.delay_ms as f64 / 1000.0));
    }
    if s.paused {
        flags.push_str(" PAUSED");
    }
    println!(
        "{} at {} (epoch {}, spool {}, up {:.1}s, io {}, data {}){flags}",
        s.role,
        client.addr(),
        s.epoch,
        s.version,
        s.uptime_ms as f64 / 1000.0,
        s.io_backend,
        s.data_dir
    );
    if s.role == "replica" {
        println!("  primary: {}", s.primary_addr);
    }
    if let Some(u) = &s.upstream {
        println!(
            "  upstream {} {} (heard {} ms ago)",
            u.addr,
            if u.connected {
                "connected"
            } else {
                "DISCONNECTED"
            },
            u.last_heard_ms_ago
        );
        for l in &u.logs {
            println!(
                "    {:<22} local {:>10}  upstream {:>10}  lag {:>8} records{}",
                l.name,
                l.local_end,
                l.upstream_end,
                l.lag_records,
                if l.full_sync { "  (full sync)" } else { "" }
            );
        }
    }
    println!("  logs:");
    for l in &s.logs {
        println!(
            "    {:<22} start {:>10}  end {:>10}  written {:>10}  epoch {:>3}  {:>12} bytes",
            l.name, l.start_offset, l.end_offset, l.written_offset, l.epoch, l.size_bytes
        );
        if s.delay_ms > 0 {
            println!(
                "      horizon {:>10} (written up to {} us)  stored {:>10}{}",
                l.horizon_offset,
                l.horizon_time_us,
                l.stored_offset,
                if l.pending_delete_at_us > 0 {
                    format!("  DELETED upstream: goes at {} us", l.pending_delete_at_us)
                } else {
                    String::new()
                }
            );
        }
    }
    if !s.replicas.is_empty() {
        println!("  replicas:");
    }
    for r in &s.replicas {
        println!(
            "    {} at {} {}{}{} (connected {:.1}s, last ack {} ms ago)",
            r.id,
            r.addr,
            if r.connected {
                "connected"
            } else {
                "DISCONNECTED"
            },
            if r.sync { ", sync" } else { "" },
            if r.counts_for_acks {
                ""
            } else {
                ", not counted for acks"
            },
            r.connected_for_ms as f64 / 1000.0,
            r.last_ack_ms_ago
        );
        for l in &r.logs {
            println!(
                "      {:<20} acked {:>10}  lag {:>8} records {:>12} bytes {:>8.3} s",
                l.name, l.acked_offset, l.lag_records, l.lag_bytes, l.lag_seconds
            );
        }
    }
    Ok(())
}

fn status_json(s: &pb::StatusResponse) -> serde_json::Value {
    let logs: Vec<_> = s
        .logs
        .iter()
        .map(|l| {
            serde_json::json!({"name": l.name, "start_offset": l.start_offset,
                "end_offset": l.end_offset, "written_offset": l.written_offset,
                "epoch": l.epoch, "size_bytes": l.size_bytes,
                "horizon_offset": l.horizon_offset, "horizon_time_us": l.horizon_time_us,
                "stored_offset": l.stored_offset, "pending_delete_at_us": l.pending_delete_at_us})
        })
        .collect();
    let replicas: Vec<_> = s
        .replicas
        .iter()
        .map(|r| {
            let logs: Vec<_> = r
                .logs
                .iter()
                .map(|l| {
                    serde_json::json!({"name": l.name, "acked_offset": l.acked_offset,
                        "lag_records": l.lag_records, "lag_bytes": l.lag_bytes,
                        "lag_seconds": l.lag_seconds})
                })
                .collect();
            serde_json::json!({"id": r.id, "addr": r.addr, "sync": r.sync, "delayed": r.delayed,
                "connected": r.connected, "connected_for_ms": r.connected_for_ms,
                "last_ack_ms_ago": r.last_ack_ms_ago, "counts_for_acks": r.counts_for_acks,
                "logs": logs})
        })
        .collect();
    let upstream = s.upstream.as_ref().map(|u| {
        let logs: Vec<_> = u
            .logs
            .iter()
            .map(|l| {
                serde_json::json!({"name": l.name, "upstream_end": l.upstream_end,
                    "local_end": l.local_end, "lag_records": l.lag_records,
                    "full_sync": l.full_sync})
            })
            .collect();
        serde_json::json!({"addr": u.addr, "connected": u.connected,
            "connected_for_ms": u.connected_for_ms, "last_heard_ms_ago": u.last_heard_ms_ago,
            "logs": logs})
    });
    serde_json::json!({
        "role": s.role, "epoch": s.epoch, "version": s.version, "uptime_ms": s.uptime_ms,
        "io_backend": s.io_backend, "data_dir": s.data_dir, "primary_addr": s.primary_addr,
        "fenced": s.fenced, "degraded": s.degraded, "delay_ms": s.delay_ms, "paused": s.paused,
        "logs": logs, "replicas": replicas, "upstream": upstream,
    })
}

/// `spool admin ...`
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Make the node at --addr a primary in a new epoch (a replica stops following).
    /// On a delayed replica, --at-offset/--at-time first cut every log at that point.
    Promote(PromoteArgs),
    /// Delayed replica: freeze the visible horizon (data keeps arriving and is stored).
    Pause,
    /// Delayed replica: let the horizon follow now - delay again.
    Resume,
}

#[derive(Debug, Args)]
#[group(multiple = false)]
pub struct PromoteArgs {
    /// Delayed replica: every log ends at min(N, its end) (records from N on are cut off).
    #[arg(long, value_name = "N")]
    pub at_offset: Option<u64>,
    /// Delayed replica: every log ends before its first record written after T. T is
    /// RFC 3339 (2024-05-01T12:00:00Z, 2024-05-01T14:00:00.5+02:00) or unix time with a
    /// unit: 1714564800s, 1714564800000ms, 1714564800000000us (a bare number is
    /// microseconds, as `spool read --format json` prints timestamp_us).
    #[arg(long, value_name = "T", value_parser = parse_time_us)]
    pub at_time: Option<u64>,
}

/// Why `--at-time` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a time: use RFC 3339 (2024-05-01T12:00:00Z) or unix time like 1714564800s, 1714564800000ms, 1714564800000000us")]
pub struct TimeError(String);

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn parse_rfc3339_us(t: &str) -> Option<u64> {
    let b = t.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = t.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &t[19..];
    let mut frac_us = 0i64;
    if let Some(f) = rest.strip_prefix('.') {
        let digits = f.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let mut padded: String = f[..digits.min(6)].to_owned();
        while padded.len() < 6 {
            padded.push('0');
        }
        frac_us = padded.parse().ok()?;
        rest = &f[digits..];
    }
    let offset_s = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let hm = rest.get(1..)?;
            if hm.len() != 5 || hm.as_bytes()[2] != b':' {
                return None;
            }
            let oh: i64 = hm[..2].parse().ok()?;
            let om: i64 = hm[3..].parse().ok()?;
            sign * (oh * 3600 + om * 60)
        }
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset_s;
    u64::try_from(secs * 1_000_000 + frac_us).ok()
}

/// `--at-time`: RFC 3339, or unix time in s / ms / us (bare: microseconds).
pub fn parse_time_us(t: &str) -> Result<u64, TimeError> {
    let t = t.trim();
    let err = || TimeError(t.to_owned());
    if t.contains('-') || t.contains(':') {
        return parse_rfc3339_us(t).ok_or_else(err);
    }
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(err());
    }
    let n: u64 = t[..digits].parse().map_err(|_| err())?;
    let scale = match &t[digits..] {
        "" | "us" => 1,
        "ms" => 1000,
        "s" => 1_000_000,
        _ => return Err(err()),
    };
    n.checked_mul(scale).ok_or_else(err)
}

pub async fn admin(client: &Client, cmd: AdminCommand) -> Result<()> {
    match cmd {
        AdminCommand::Promote(a) => {
            let at = match (a.at_offset, a.at_time) {
                (Some(n), _) => Some(pb::promote_request::At::AtOffset(n)),
                (None, Some(t)) => Some(pb::promote_request::At::AtTimeUs(t)),
                (None, None) => None,
            };
            let cut = at.is_some();
            let r = client.promote_at(at).await?;
            println!("{} is now primary in epoch {}", client.addr(), r.epoch);
            if cut {
                for e in &r.ends {
                    println!(
                        "  {:<22} start {:>10}  end {:>10}",
                        e.name, e.start_offset, e.end_offset
                    );
                }
            }
            for d in &r.deleted {
                println!("  {d:<22} deleted (its deletion upstream came before the point)");
            }
        }
        AdminCommand::Pause => {
            let cutoff = client.pause().await?;
            println!(
                "{} paused: records written up to {cutoff} us (unix) stay visible, nothing newer appears",
                client.addr()
            );
        }
        AdminCommand::Resume => {
            client.resume().await?;
            println!("{} resumed", client.addr());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse() {
        assert_eq!(parse_time_us("1714564800s").unwrap(), 1_714_564_800_000_000);
        assert_eq!(
            parse_time_us("1714564800000ms").unwrap(),
            1_714_564_800_000_000
        );
        assert_eq!(
            parse_time_us("1714564800000000").unwrap(),
            1_714_564_800_000_000
        );
        assert_eq!(
            parse_time_us("2024-05-01T12:00:00Z").unwrap(),
            1_714_564_800_000_000
        );
        assert_eq!(
            parse_time_us("2024-05-01T14:00:00.5+02:00").unwrap(),
            1_714_564_800_500_000
        );
        assert_eq!(parse_time_us("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(
            parse_time_us("2000-02-29T00:00:00Z").unwrap(),
            951_782_400_000_000
        );
        for bad in [
            "",
            "soon",
            "12x",
            "2024-13-01T00:00:00Z",
            "2024-05-01T12:00:00",
            "2024-05-01",
        ] {
            assert!(parse_time_us(bad).is_err(), "{bad:?}");
        }
    }
}
