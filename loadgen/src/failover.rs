//! The Spool side of `benches/failover_rounds.sh`: a writer that records every ack while
//! faults run (`failover-writer`), and the check after each round (`failover-check`).
//!
//! The writer keeps one append in flight per task, half of the tasks with semi-sync:1 and
//! half with sync, on whichever node says it is primary and holds the leader key. After a
//! failed call, or none acked within `--call-timeout-ms`, the task looks for the primary
//! again; an abandoned call that is acked later (a paused primary resumed) is still
//! recorded, marked late, so that a zombie's ack counts toward split-brain. Each ack is one JSON line ([`Ack`]), flushed as it comes, so the script
//! can read the file while the writer runs. Times are the wall clock in Unix ms, the clock
//! the script stamps its faults with.
//!
//! The check reads the acks written so far and the current primary's log, and reports
//! acked records not on the primary at their offset with their bytes (lost), epochs in
//! which two nodes acknowledged writes (split-brain), acks in an epoch older than one
//! already acked (a deposed primary's), and the failover time: from the fault to the
//! first ack after it from another node, or from the old primary in a later epoch.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Args;
use serde::{Deserialize, Serialize};
use spool::client::{endpoint_uri, Client};
use spool::measure::{runtime, write_json};
use spool_proto::v1 as pb;
use tokio::sync::mpsc;

/// A read of the check not answered within this long fails the check.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// A node that does not answer status within this long is passed over (e.g. stopped).
const STATUS_TIMEOUT: Duration = Duration::from_millis(300);
const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// How long an abandoned append may still come back acked (and be recorded).
const LATE_ACK_MAX: Duration = Duration::from_secs(10);
/// Records per read when the check walks the primary's log.
const READ_BATCH: u32 = 1000;
const LOST_EXAMPLES_MAX: usize = 10;
/// The ack gaps around a fault are looked for from this long before it...
const GAP_BEFORE: u64 = 1000;
/// ...to this long after the first ack elsewhere.
const GAP_AFTER: u64 = 1000;

#[derive(Debug, Clone, Args)]
pub struct WriterArgs {
    /// The nodes, HOST:PORT each, in the order the script numbers them.
    #[arg(long, value_delimiter = ',', required = true)]
    pub nodes: Vec<String>,
    /// The addresses the nodes advertise, in the same order, where they differ: a refusal
    /// names the primary by it and the client follows, so an ack may come from there.
    #[arg(long, value_delimiter = ',')]
    pub advertised: Vec<String>,
    #[arg(long, default_value = "f")]
    pub log: String,
    /// Where each ack goes, one JSON line each.
    #[arg(long)]
    pub out: PathBuf,
    /// Tasks per ack mode (semi-sync:1 and sync), one append in flight each.
    #[arg(long, default_value_t = 1)]
    pub writers: usize,
    #[arg(long, default_value_t = 64)]
    pub record_bytes: usize,
    /// After this long without an ack the writer looks for the primary again (a stopped
    /// primary holds calls open; the failover time is seen to this resolution). The call
    /// itself goes on for up to 10 s: a late ack is still recorded.
    #[arg(long, default_value_t = 500)]
    pub call_timeout_ms: u64,
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// The nodes, as given to the writer.
    #[arg(long, value_delimiter = ',', required = true)]
    pub nodes: Vec<String>,
    #[arg(long, default_value = "f")]
    pub log: String,
    /// The writer's ack file.
    #[arg(long)]
    pub acks: PathBuf,
    /// The fault's instant (Unix ms): the failover time is measured from it to the first
    /// ack after it.
    #[arg(long)]
    pub fault_ms: Option<u64>,
    /// The node that was primary at the fault: its acks in the epoch it held then do not
    /// end the failover (one may land just after the fault; a paused or cut-off primary
    /// must not ack at all), its acks in a later epoch (restarted, elected again) do.
    #[arg(long)]
    pub old_node: Option<usize>,
    /// Acks from this instant (Unix ms) on are the round's.
    #[arg(long, default_value_t = 0)]
    pub since_ms: u64,
    /// Write the report here ("-" or absent: stdout).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One acknowledged append as the writer saw it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Ack {
    /// Unix ms when the ack arrived.
    pub t_ms: u64,
    /// Index in `--nodes` of the node that acked (None: an address not among them).
    pub node: Option<usize>,
    pub epoch: u64,
    pub offset: u64,
    pub mode: String,
    pub value: String,
    /// The ack came after the writer had stopped waiting (`--call-timeout-ms`).
    #[serde(default)]
    pub late: bool,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `tag-n` padded with dots to `bytes` (longer if the tag needs it): unique per write.
pub fn value_of(tag: &str, n: u64, bytes: usize) -> String {
    let mut v = format!("{tag}-{n}-");
    while v.len() < bytes {
        v.push('.');
    }
    v
}

/// The node that says it is primary and holds the leader key, with a client to it. The
/// nodes are asked at once, so that a stopped one delays the answer by one timeout only.
async fn find_primary(nodes: &[String]) -> Option<(usize, Client)> {
    let mut asks = tokio::task::JoinSet::new();
    for (i, addr) in nodes.iter().enumerate() {
        let addr = addr.clone();
        asks.spawn(async move {
            let probe = async {
                let c = Client::connect(&addr).await.ok()?;
                let s = c.status().await.ok()?;
                let leads = s.cluster.as_ref().is_some_and(|c| c.leader == c.node);
                (s.role == "primary" && leads).then_some((i, c))
            };
            tokio::time::timeout(STATUS_TIMEOUT, probe)
                .await
                .ok()
                .flatten()
        });
    }
    while let Some(answer) = asks.join_next().await {
        if let Ok(Some(found)) = answer {
            return Some(found);
        }
    }
    None
}

/// The index of the node at `uri`, by the addresses given or the advertised ones.
fn node_of(nodes: &Nodes, uri: &str) -> Option<usize> {
    let at = |list: &[String]| list.iter().position(|n| endpoint_uri(n) == uri);
    at(&nodes.given).or_else(|| at(&nodes.advertised))
}

struct Nodes {
    given: Vec<String>,
    advertised: Vec<String>,
}

struct Task {
    nodes: Arc<Nodes>,
    log: String,
    mode: pb::AckMode,
    tag: String,
    record_bytes: usize,
    call_timeout: Duration,
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicU64>,
    tx: mpsc::UnboundedSender<Ack>,
}

impl Task {
    async fn run(self) {
        let mut conn: Option<Client> = None;
        let mut n = 0u64;
        while !self.stop.load(Ordering::Relaxed) {
            let c = match &conn {
                Some(c) => c.clone(),
                None => match find_primary(&self.nodes.given).await {
                    Some((_, c)) => conn.insert(c).clone(),
                    None => {
                        tokio::time::sleep(RETRY_PAUSE).await;
                        continue;
                    }
                },
            };
            let value = value_of(&self.tag, n, self.record_bytes);
            n += 1;
            let req = pb::AppendRequest {
                log: self.log.clone(),
                records: vec![Bytes::from(value.clone())],
                ack: self.mode as i32,
                semi_sync_replicas: 1,
                ..Default::default()
            };
            // The call goes on in its own task after the writer stops waiting: an ack that
            // arrives late (a paused primary resumed) is still recorded, marked late.
            let abandoned = Arc::new(AtomicBool::new(false));
            let call = tokio::spawn({
                let (nodes, tx, abandoned) =
                    (self.nodes.clone(), self.tx.clone(), abandoned.clone());
                let mode = self.mode.as_str_name().to_owned();
                async move {
                    let r = tokio::time::timeout(LATE_ACK_MAX, c.append_with(req)).await;
                    let Ok(Ok(r)) = r else { return false };
                    let ack = Ack {
                        t_ms: now_ms(),
                        node: node_of(&nodes, &c.addr()),
                        epoch: r.epoch,
                        offset: r.first_offset,
                        mode,
                        value,
                        late: abandoned.load(Ordering::Acquire),
                    };
                    tx.send(ack).is_ok()
                }
            });
            match tokio::time::timeout(self.call_timeout, call).await {
                Ok(Ok(true)) => {}
                Ok(_) => {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                    conn = None;
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(_) => {
                    abandoned.store(true, Ordering::Release);
                    self.failed.fetch_add(1, Ordering::Relaxed);
                    conn = None;
                }
            }
        }
    }
}

/// Runs until SIGTERM or SIGINT; then each task finishes its call and the file is flushed.
pub fn run_writer(args: &WriterArgs) -> Result<()> {
    if args.writers == 0 {
        bail!("--writers must be positive");
    }
    if !args.advertised.is_empty() && args.advertised.len() != args.nodes.len() {
        bail!("--advertised needs one address per node");
    }
    let file = std::fs::File::create(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let rt = runtime(None)?;
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let nodes = Arc::new(Nodes {
            given: args.nodes.clone(),
            advertised: args.advertised.clone(),
        });
        create_log(&nodes.given, &args.log).await;
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicU64::new(0));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let modes = [(pb::AckMode::SemiSync, "semi"), (pb::AckMode::Sync, "sync")];
        for (mode, name) in modes {
            for i in 0..args.writers {
                let task = Task {
                    nodes: nodes.clone(),
                    log: args.log.clone(),
                    mode,
                    tag: format!("{name}{i}"),
                    record_bytes: args.record_bytes,
                    call_timeout: Duration::from_millis(args.call_timeout_ms),
                    stop: stop.clone(),
                    failed: failed.clone(),
                    tx: tx.clone(),
                };
                tokio::spawn(task.run());
            }
        }
        drop(tx);
        let s = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            s.store(true, Ordering::Relaxed);
        });
        let mut out = BufWriter::new(file);
        let mut count = 0u64;
        // Ends when every task has stopped (the last sender dropped).
        while let Some(ack) = rx.recv().await {
            let mut next = Some(ack);
            while let Some(ack) = next {
                serde_json::to_writer(&mut out, &ack)?;
                out.write_all(b"\n")?;
                count += 1;
                next = rx.try_recv().ok();
            }
            out.flush()?;
        }
        out.flush()?;
        eprintln!(
            "failover-writer: {count} acks, {} appends failed or timed out",
            failed.load(Ordering::Relaxed)
        );
        anyhow::Ok(())
    })
}

/// Create the log on the primary (waiting for one); an existing log is fine.
async fn create_log(nodes: &[String], log: &str) {
    loop {
        if let Some((i, c)) = find_primary(nodes).await {
            match c.create_log(log, None).await {
                Ok(_) => return,
                Err(e) if c.describe_log(log).await.is_ok() => {
                    eprintln!("failover-writer: log {log} exists on node {i} ({e})");
                    return;
                }
                Err(e) => eprintln!("failover-writer: creating {log} on node {i}: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[derive(Debug, Serialize)]
pub struct CheckReport {
    primary: usize,
    primary_epoch: u64,
    end_offset: u64,
    acked_total: usize,
    acked_round: usize,
    /// Acks that came after the writer had stopped waiting for them.
    late_acks: usize,
    lost: usize,
    /// (offset, value acked, value found).
    lost_examples: Vec<(u64, String, Option<String>)>,
    /// Epochs in which more than one node acked, with those nodes.
    split_brain: Vec<(u64, Vec<Option<usize>>)>,
    /// Acks in an epoch lower than one already acked before them: a deposed primary's.
    stale_epoch_acks: usize,
    failover_ms: Option<u64>,
    /// The node that acked first after the fault, and in which epoch.
    new_node: Option<usize>,
    new_epoch: Option<u64>,
    /// From the old primary's last ack in its epoch to that first ack elsewhere: the pause
    /// a writer saw across the handover (a switchover's, from the client's side).
    handover_ms: Option<u64>,
    /// From the fault to the first such ack per ack mode (semi-sync:1, sync).
    first_semi_ms: Option<u64>,
    first_sync_ms: Option<u64>,
    /// The longest gap between consecutive acks (any mode) from [`GAP_BEFORE`] before the
    /// fault to [`GAP_AFTER`] after the first ack elsewhere (no failover: to the last ack),
    /// and where it began relative to the fault (negative: before it).
    max_gap_ms: Option<u64>,
    max_gap_at_ms: Option<i64>,
}

pub fn read_acks(path: &PathBuf) -> Result<Vec<Ack>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut acks = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line?;
        // The writer may be mid-line: a torn last line is not an ack yet.
        match serde_json::from_str(&line) {
            Ok(a) => acks.push(a),
            Err(_) if line.is_empty() || !line.ends_with('}') => break,
            Err(e) => bail!("{}:{}: {e}", path.display(), i + 1),
        }
    }
    Ok(acks)
}

pub fn run_check(args: &CheckArgs) -> Result<()> {
    let acks = read_acks(&args.acks)?;
    let rt = runtime(Some(1))?;
    let report = rt.block_on(check(args, &acks))?;
    write_json(&args.json, &report)
}

async fn check(args: &CheckArgs, acks: &[Ack]) -> Result<CheckReport> {
    let (primary, c) = find_primary(&args.nodes)
        .await
        .context("no node is primary with the leader key")?;
    let primary_epoch = c.status().await?.epoch;
    let end_offset = c.describe_log(&args.log).await?.end_offset;
    let mut want: BTreeMap<u64, Vec<&Ack>> = BTreeMap::new();
    for a in acks {
        want.entry(a.offset).or_default().push(a);
    }
    let have = read_range(&c, &args.log, &want).await?;
    let mut lost = 0;
    let mut lost_examples = Vec::new();
    for (off, list) in &want {
        let found = have.get(off);
        for a in list {
            if found.map(|v| v.as_ref()) != Some(a.value.as_bytes()) {
                lost += 1;
                if lost_examples.len() < LOST_EXAMPLES_MAX {
                    let f = found.map(|v| String::from_utf8_lossy(v).into_owned());
                    lost_examples.push((*off, a.value.clone(), f));
                }
            }
        }
    }
    let mut by_epoch: BTreeMap<u64, BTreeSet<Option<usize>>> = BTreeMap::new();
    for a in acks {
        by_epoch.entry(a.epoch).or_default().insert(a.node);
    }
    let split_brain = by_epoch
        .into_iter()
        .filter(|(_, n)| n.len() > 1)
        .map(|(e, n)| (e, n.into_iter().collect()))
        .collect();
    let fo = args.fault_ms.map(|t| Failover::of(acks, t, args.old_node));
    let fo = fo.unwrap_or_default();
    let mut by_time: Vec<&Ack> = acks.iter().collect();
    by_time.sort_by_key(|a| a.t_ms);
    let mut epoch_max = 0;
    let mut stale_epoch_acks = 0;
    for a in by_time {
        stale_epoch_acks += usize::from(a.epoch < epoch_max);
        epoch_max = epoch_max.max(a.epoch);
    }
    Ok(CheckReport {
        primary,
        primary_epoch,
        end_offset,
        acked_total: acks.len(),
        acked_round: acks.iter().filter(|a| a.t_ms >= args.since_ms).count(),
        late_acks: acks.iter().filter(|a| a.late).count(),
        lost,
        lost_examples,
        split_brain,
        stale_epoch_acks,
        failover_ms: fo.first.map(|f| f.0),
        new_node: fo.first.and_then(|f| f.1),
        new_epoch: fo.first.map(|f| f.2),
        handover_ms: fo.handover_ms,
        first_semi_ms: fo.first_semi_ms,
        first_sync_ms: fo.first_sync_ms,
        max_gap_ms: fo.max_gap.map(|g| g.0),
        max_gap_at_ms: fo.max_gap.map(|g| g.1),
    })
}

/// What the acks show of one fault.
#[derive(Debug, Default)]
struct Failover {
    /// The first ack after the fault from another node than the old primary, or from it in
    /// a later epoch: (ms after the fault, node, epoch).
    first: Option<(u64, Option<usize>, u64)>,
    handover_ms: Option<u64>,
    first_semi_ms: Option<u64>,
    first_sync_ms: Option<u64>,
    /// (gap ms, its start relative to the fault).
    max_gap: Option<(u64, i64)>,
}

impl Failover {
    fn of(acks: &[Ack], t: u64, old: Option<usize>) -> Failover {
        let old_epoch = acks
            .iter()
            .filter(|a| a.t_ms < t && old.is_some() && a.node == old)
            .map(|a| a.epoch)
            .max()
            .unwrap_or(0);
        // Ours: the old primary's acks in its epoch are not.
        let new = |a: &&Ack| a.t_ms >= t && (a.node != old || a.epoch > old_epoch);
        let first_of = |mode: Option<&str>| {
            acks.iter()
                .filter(new)
                .filter(|a| mode.is_none_or(|m| a.mode == m))
                .min_by_key(|a| a.t_ms)
        };
        let first = first_of(None);
        let handover_ms = first.and_then(|f| {
            let last_old = acks
                .iter()
                .filter(|a| a.node == old && a.epoch <= old_epoch && a.t_ms <= f.t_ms)
                .map(|a| a.t_ms)
                .max()?;
            Some(f.t_ms - last_old)
        });
        let since = |a: Option<&Ack>| a.map(|a| a.t_ms - t);
        let end = first.map_or(u64::MAX, |f| f.t_ms + GAP_AFTER);
        Failover {
            first: first.map(|a| (a.t_ms - t, a.node, a.epoch)),
            handover_ms,
            first_semi_ms: since(first_of(Some(pb::AckMode::SemiSync.as_str_name()))),
            first_sync_ms: since(first_of(Some(pb::AckMode::Sync.as_str_name()))),
            max_gap: max_gap(acks, t.saturating_sub(GAP_BEFORE), end)
                .map(|(g, from)| (g, from as i64 - t as i64)),
        }
    }
}

/// The longest gap between consecutive ack times within [from, to]: (gap, its start).
fn max_gap(acks: &[Ack], from: u64, to: u64) -> Option<(u64, u64)> {
    let mut times: Vec<u64> = acks
        .iter()
        .map(|a| a.t_ms)
        .filter(|&t| t >= from && t <= to)
        .collect();
    times.sort_unstable();
    times
        .windows(2)
        .map(|w| (w[1] - w[0], w[0]))
        .max_by_key(|g| g.0)
}

/// The primary's records from the lowest acked offset to the highest.
async fn read_range(
    c: &Client,
    log: &str,
    want: &BTreeMap<u64, Vec<&Ack>>,
) -> Result<BTreeMap<u64, Bytes>> {
    let mut have = BTreeMap::new();
    let (Some((&first, _)), Some((&last, _))) = (want.first_key_value(), want.last_key_value())
    else {
        return Ok(have);
    };
    let mut from = first;
    while from <= last {
        let r = tokio::time::timeout(CALL_TIMEOUT, c.read(log, from, READ_BATCH))
            .await
            .context("read timed out")??;
        if r.records.is_empty() {
            break;
        }
        for rec in r.records {
            have.insert(rec.offset, rec.value);
        }
        if r.next_offset <= from {
            break;
        }
        from = r.next_offset;
    }
    Ok(have)
}
