//! Tails a node cuts when it follows a new primary (its divergent records: written here,
//! never acknowledged under sync or semi-sync, maybe under async) are kept in
//! `DATA_DIR/quarantine/<log>/<first>-<next>.frames`, the frames as they were stored,
//! for an operator to read (`spool admin quarantine list|read`) instead of thrown away.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use spool_proto::v1 as pb;
use spool_storage::format::{check_frame, decode_records};
use spool_storage::Log;

use super::Node;

const DIR: &str = "quarantine";
const SUFFIX: &str = ".frames";

fn log_dir(data_dir: &Path, log: &str) -> PathBuf {
    data_dir.join(DIR).join(log)
}

fn data_dir(node: &Node) -> PathBuf {
    node.storage().config().data_dir.clone()
}

/// Copy `log`'s frames from `from` to its end into a quarantine file, synced, before the
/// caller cuts them. Returns the records kept (0: nothing past `from`).
pub async fn keep(node: &Node, log: &Log, from: u64) -> Result<u64> {
    let end = log.positions().durable;
    if from >= end {
        return Ok(0);
    }
    let mut bytes = Vec::new();
    let mut first = None;
    let mut cursor = log.reader().frames(from)?;
    while let Some((h, frame)) = cursor.next_frame()? {
        first.get_or_insert(h.base_offset);
        bytes.extend_from_slice(frame);
    }
    let first = first.unwrap_or(from);
    let summary = summarize(&bytes)?;
    let path = log_dir(&data_dir(node), log.name()).join(format!("{first:020}-{end:020}{SUFFIX}"));
    let bytes = tokio::task::spawn_blocking(move || write_synced(&path, &bytes).map(|()| bytes))
        .await
        .context("writing a quarantine file")??;
    metrics::counter!("spool_failover_cut_records_total").increment(summary.records);
    tracing::warn!(log = %log.name(), from = first, to = end, records = summary.records, epochs = ?summary.epochs,
        "cutting a divergent tail (never acknowledged under sync or semi-sync; maybe under async): kept in quarantine");
    count_weak_acks(node, log.name(), &bytes)?;
    Ok(summary.records)
}

/// Count and log the records among the cut `frames` that this node acknowledged as
/// primary without replicas (async, written, degraded semi-sync): writes its clients
/// were told were done, lost to the cluster (a copy stays in quarantine).
fn count_weak_acks(node: &Node, log: &str, frames: &[u8]) -> Result<u64> {
    let mut acked = 0;
    for_each_frame(frames, |h, _| {
        let offsets = h.base_offset..h.next_offset();
        acked += node.weak_acks().take_cut(log, h.epoch, offsets);
        Ok(())
    })?;
    if acked > 0 {
        metrics::counter!("spool_failover_cut_async_acked_records_total").increment(acked);
        tracing::error!(log = %log, records = acked,
            "cut records this node had acknowledged as primary under async (or written): lost from the log (a copy is in quarantine)");
    }
    Ok(acked)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().expect("a quarantine file has a directory");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // The directories themselves must survive a crash, as the file does.
    for d in dir.ancestors().skip(1).take(2) {
        spool_storage::crashsafe::fsync_dir(d)?;
    }
    spool_storage::crashsafe::replace_file(path, bytes)
        .with_context(|| format!("writing {}", path.display()))
}

struct Summary {
    records: u64,
    epochs: Vec<u64>,
    first: u64,
    next: u64,
}

/// Walk whole frames, each checked.
fn summarize(bytes: &[u8]) -> Result<Summary> {
    let mut s = Summary {
        records: 0,
        epochs: Vec::new(),
        first: u64::MAX,
        next: 0,
    };
    for_each_frame(bytes, |h, _| {
        s.records += u64::from(h.record_count);
        if s.epochs.last() != Some(&h.epoch) {
            s.epochs.push(h.epoch);
        }
        s.first = s.first.min(h.base_offset);
        s.next = s.next.max(h.next_offset());
        Ok(())
    })?;
    Ok(s)
}

fn for_each_frame(
    mut bytes: &[u8],
    mut f: impl FnMut(&spool_storage::format::BatchHeader, &[u8]) -> Result<()>,
) -> Result<()> {
    while !bytes.is_empty() {
        let h = check_frame(bytes).context("a damaged frame in a quarantine file")?;
        let len = h.frame_len as usize;
        f(&h, &bytes[..len])?;
        bytes = &bytes[len..];
    }
    Ok(())
}

/// Every quarantined tail (of `log`, or of all logs).
pub async fn list(node: &Node, log: Option<String>) -> Result<Vec<pb::QuarantinedTail>> {
    let root = data_dir(node).join(DIR);
    tokio::task::spawn_blocking(move || list_blocking(&root, log.as_deref())).await?
}

fn list_blocking(root: &Path, only: Option<&str>) -> Result<Vec<pb::QuarantinedTail>> {
    let mut out = Vec::new();
    let Ok(logs) = std::fs::read_dir(root) else {
        return Ok(out);
    };
    for entry in logs.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if only.is_some_and(|o| o != name) {
            continue;
        }
        for file in std::fs::read_dir(entry.path())?.flatten() {
            if file.file_name().to_string_lossy().ends_with(SUFFIX) {
                out.push(describe(&name, &file.path())?);
            }
        }
    }
    out.sort_by(|a, b| (&a.log, a.first_offset).cmp(&(&b.log, b.first_offset)));
    Ok(out)
}

fn describe(log: &str, path: &Path) -> Result<pb::QuarantinedTail> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let s = summarize(&bytes)?;
    let cut_at_ms = std::fs::metadata(path)?
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Ok(pb::QuarantinedTail {
        log: log.to_owned(),
        first_offset: s.first,
        next_offset: s.next,
        epochs: s.epochs,
        records: s.records,
        bytes: bytes.len() as u64,
        cut_at_ms,
    })
}

/// The records of the tail of `log` starting at `first`, from `from` on.
pub async fn read(
    node: &Node,
    req: pb::QuarantineReadRequest,
) -> Result<pb::QuarantineReadResponse> {
    let dir = log_dir(&data_dir(node), &req.log);
    tokio::task::spawn_blocking(move || read_blocking(&dir, req)).await?
}

fn read_blocking(dir: &Path, req: pb::QuarantineReadRequest) -> Result<pb::QuarantineReadResponse> {
    let prefix = format!("{:020}-", req.first_offset);
    let file = std::fs::read_dir(dir)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .find(|f| f.file_name().to_string_lossy().starts_with(&prefix))
        .with_context(|| {
            format!(
                "no quarantined tail of log {:?} starts at {}",
                req.log, req.first_offset
            )
        })?;
    let bytes = std::fs::read(file.path())?;
    let max = if req.max_records == 0 {
        1000
    } else {
        req.max_records as usize
    };
    let mut records = Vec::new();
    let mut next = req.from_offset.max(req.first_offset);
    for_each_frame(&bytes, |h, frame| {
        if records.len() >= max || h.next_offset() <= next {
            return Ok(());
        }
        for r in decode_records(frame, h)? {
            if r.offset >= next && records.len() < max {
                next = r.offset + 1;
                records.push(pb::Record {
                    offset: r.offset,
                    timestamp_us: r.timestamp_us,
                    value: r.value,
                });
            }
        }
        Ok(())
    })?;
    Ok(pb::QuarantineReadResponse {
        records,
        next_offset: next,
    })
}
