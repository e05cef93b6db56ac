//! The replica side: one stream to the upstream, frames appended unchanged (after their
//! CRC is checked), durable ends acknowledged, reconnect with backoff resuming from the
//! local end (a partial resync: nothing already here is sent again).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures::stream::FuturesOrdered;
use futures::FutureExt;
use parking_lot::Mutex;
use spool_proto::v1 as pb;
use spool_storage::{Log, SegmentImport};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::Endpoint;

use super::segment_fetch;
use super::upstream::{DEAD_AFTER, HEARTBEAT_EVERY};
use crate::server::logs_service::config_from_pb;
use crate::server::node::Node;

/// Frame messages appended but not yet durable, per stream: they share group commits.
const INFLIGHT_MAX: usize = 64;
const STREAM_WINDOW_BYTES: u32 = 16 << 20;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Default)]
pub struct LogFollow {
    pub upstream_end: u64,
    pub full_sync: bool,
    /// A sealed segment being received: (staged end, segment end).
    pub staged: Option<(u64, u64)>,
    pub segments_received: u64,
    pub segment_bytes_received: u64,
    /// Of those, received by segment fetch.
    pub segment_bytes_fetched: u64,
    /// Why the log does not follow the upstream now (its LogStart said so); empty: fine.
    pub blocked: String,
}

/// What the replica knows of its upstream, for status.
#[derive(Debug, Default)]
pub struct UpstreamView {
    pub connected_at: Option<Instant>,
    pub last_heard: Option<Instant>,
    pub logs: HashMap<String, LogFollow>,
    /// Why the last session ended in an error (a refusal names the cause).
    pub last_error: String,
}

#[derive(Debug, Clone)]
pub struct FollowerConfig {
    pub upstream: String,
    pub replica_id: String,
    pub sync: bool,
    pub delayed: bool,
    /// Fetch sealed segments over a segment-fetch connection when the upstream offers it.
    pub segment_fetch: bool,
}

/// Follow `cfg.upstream` until the node shuts down or is promoted.
pub async fn follow(node: Arc<Node>, cfg: FollowerConfig, view: Arc<Mutex<UpstreamView>>) {
    let mut backoff = BACKOFF_MIN;
    // Segments partly received survive a reconnect: the upstream resumes where they stop.
    let mut imports: Imports = HashMap::new();
    // After a failed segment fetch, one session takes segments inside the stream instead
    // (a fetch that cannot work, e.g. through a proxy that speaks only HTTP/2, then costs
    // one reconnect, not the replication).
    let mut fetch_failed = false;
    loop {
        if node.is_shutting_down() || node.role.is_primary() {
            return;
        }
        let started = Instant::now();
        let mut fetch = cfg.segment_fetch && !fetch_failed;
        let result = tokio::select! {
            r = session(&node, &cfg, &view, &mut imports, &mut fetch) => r,
            _ = node.shutdown_started() => return,
            _ = node.promoted() => return,
        };
        if let Some(leads) = result
            .as_ref()
            .err()
            .and_then(|e| e.downcast_ref::<LeadsUpstream>())
        {
            tracing::warn!(upstream = %cfg.upstream, "{leads}");
            node.role.become_primary();
            node.mark_promoted();
            return;
        }
        fetch_failed = cfg.segment_fetch && !fetch_failed && !fetch;
        {
            let mut v = view.lock();
            v.connected_at = None;
        }
        match result {
            Ok(()) => tracing::info!(upstream = %cfg.upstream, "upstream closed the stream"),
            Err(e) => {
                let error = format!("{e:#}");
                tracing::warn!(upstream = %cfg.upstream, %error, "replication stream failed");
                view.lock().last_error = error;
            }
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = BACKOFF_MIN;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

type Imports = HashMap<String, SegmentImport>;

/// The upstream is not past the epoch this node itself began as primary: it follows this
/// node (the node was promoted and restarted with its old `--replica-of`), not the reverse.
#[derive(Debug, thiserror::Error)]
#[error(
    "this node began epoch {led} as the primary and the upstream {upstream} is at epoch \
     {upstream_epoch}: it follows this node, not the reverse. Ignoring --replica-of and going \
     on as the primary; remove --replica-of (or replica_of in the config) from this node's \
     command line"
)]
pub struct LeadsUpstream {
    led: u64,
    upstream: String,
    upstream_epoch: u64,
}

/// What the hello says of the replica's last frame: (its first offset, its CRC), (0, 0)
/// for an empty log.
fn last_frame(log: &Log) -> (u64, u32) {
    let p = log.positions();
    if p.durable <= p.start {
        return (0, 0);
    }
    match log.reader().read_frames(p.durable - 1, 1) {
        Ok(c) => (
            c.first_offset,
            spool_storage::format::stored_crc(&c.bytes).unwrap_or(0),
        ),
        Err(_) => (0, 0),
    }
}

fn hello(
    node: &Node,
    cfg: &FollowerConfig,
    imports: &mut Imports,
    segment_fetch: bool,
) -> pb::ReplicaMessage {
    let storage = &node.storage;
    // An import continues only where its log still ends.
    imports.retain(|name, imp| {
        storage
            .log(name)
            .is_ok_and(|l| l.positions().written == imp.base())
            && !imp.is_broken()
    });
    let staged = |name: &str| imports.get(name).filter(|i| i.staged_bytes() > 0);
    let logs = storage
        .list_logs()
        .iter()
        .filter_map(|n| storage.log(n).ok())
        .map(|l| pb::ReplicaLogState {
            incarnation: l.incarnation(),
            last_frame_offset: last_frame(&l).0,
            last_frame_crc: last_frame(&l).1,
            name: l.name().to_owned(),
            last_epoch: l.current_epoch(),
            end_offset: l.positions().durable,
            start_offset: l.positions().start,
            epochs: l
                .epochs()
                .entries()
                .iter()
                .map(|&(epoch, start_offset)| pb::EpochStart {
                    epoch,
                    start_offset,
                })
                .collect(),
            staged_end: staged(l.name()).map_or(0, |i| i.next_offset()),
            staged_epochs: staged(l.name()).map_or_else(Vec::new, |i| {
                i.staged_epochs()
                    .into_iter()
                    .map(|(epoch, start_offset)| pb::EpochStart {
                        epoch,
                        start_offset,
                    })
                    .collect()
            }),
        })
        .collect();
    pb::ReplicaMessage {
        msg: Some(pb::replica_message::Msg::Hello(pb::ReplicaHello {
            replica_id: cfg.replica_id.clone(),
            sync: cfg.sync,
            delayed: cfg.delayed,
            node_epoch: node.role.epoch(),
            logs,
            listen_addr: node.role.listen_addr.read().clone(),
            segment_fetch,
            fetch_active_spans: segment_fetch,
            cluster_id: node.role.cluster_id(),
        })),
    }
}

fn acks(node: &Node) -> pb::ReplicaMessage {
    let storage = &node.storage;
    let acks = storage
        .list_logs()
        .iter()
        .filter_map(|n| storage.log(n).ok())
        .map(|l| pb::ReplicaAck {
            log: l.name().to_owned(),
            durable_end: l.positions().durable,
        })
        .collect();
    pb::ReplicaMessage {
        msg: Some(pb::replica_message::Msg::Acks(pb::ReplicaAcks {
            acks,
            downstream: node.replicas.descendants(),
        })),
    }
}

type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(String, u64)>> + Send>>;

async fn session(
    node: &Arc<Node>,
    cfg: &FollowerConfig,
    view: &Mutex<UpstreamView>,
    imports: &mut Imports,
    fetch: &mut bool,
) -> Result<()> {
    let uri = crate::client::endpoint_uri(&cfg.upstream);
    let channel = Endpoint::from_shared(uri.clone())?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        // Room for several frame messages in flight while a catch-up runs at disk speed.
        .initial_stream_window_size(Some(STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(STREAM_WINDOW_BYTES))
        .connect()
        .await
        .with_context(|| format!("connecting to upstream {uri}"))?;
    let mut client = pb::replication_client::ReplicationClient::new(channel)
        .max_decoding_message_size(crate::server::MESSAGE_BYTES_MAX);
    let (tx, rx) = mpsc::channel(64);
    tx.send(hello(node, cfg, imports, *fetch)).await?;
    let mut inbound = client
        .replicate(ReceiverStream::new(rx))
        .await
        .context("opening the replication stream")?
        .into_inner();

    let first = tokio::time::timeout(DEAD_AFTER, inbound.next())
        .await
        .map_err(|_| anyhow!("no hello from the upstream"))?;
    let up = match first {
        Some(Ok(pb::UpstreamMessage {
            msg: Some(pb::upstream_message::Msg::Hello(h)),
        })) => h,
        Some(Err(s)) => bail!("upstream refused: {}", s.message()),
        _ => bail!("upstream did not start with a hello"),
    };
    node.role.join_cluster(&up.cluster_id).await?;
    let led = node.role.led_epoch();
    if led > 0 && up.node_epoch <= led {
        return Err(LeadsUpstream {
            led,
            upstream: cfg.upstream.clone(),
            upstream_epoch: up.node_epoch,
        }
        .into());
    }
    let ours = node.role.epoch();
    if up.node_epoch < ours {
        bail!(
            "upstream is at epoch {} but this node is at {ours}: refusing to follow a stale node",
            up.node_epoch
        );
    }
    node.role.set_epoch(up.node_epoch).await?;
    if !up.primary_addr.is_empty() {
        node.role.set_primary_addr(Some(up.primary_addr.clone()));
    }
    {
        let mut v = view.lock();
        v.connected_at = Some(Instant::now());
        v.last_heard = Some(Instant::now());
    }
    tracing::info!(upstream = %cfg.upstream, epoch = up.node_epoch, "following upstream");

    let mut inflight: FuturesOrdered<Pending> = FuturesOrdered::new();
    let mut beat = tokio::time::interval(HEARTBEAT_EVERY);
    let mut last_heard = tokio::time::Instant::now();
    let mut logs: HashMap<String, Log> = HashMap::new();
    // Delayed replica: logs recreated upstream while this node still keeps the old one
    // (its deletion is pending). Their frames are skipped; once the deletion is applied the
    // session reconnects and receives the new log from its start.
    let mut ignored: HashSet<String> = HashSet::new();
    let mut applied = match node.active_delay() {
        Some(d) => d.deletions_applied.subscribe(),
        None => tokio::sync::watch::channel(0).1,
    };
    loop {
        tokio::select! {
            // Completions first (acks go out as soon as frames are durable), heartbeats
            // never starve behind a busy stream, silence is judged after pending messages.
            biased;
            Some(done) = inflight.next() => {
                // One ack for everything that became durable together (a group commit
                // completes many messages at once).
                let mut ends: HashMap<String, u64> = HashMap::new();
                let (name, end) = done?;
                ends.insert(name, end);
                while let Some(Some(done)) = inflight.next().now_or_never() {
                    let (name, end) = done?;
                    let e = ends.entry(name).or_insert(end);
                    *e = (*e).max(end);
                }
                let msg = pb::ReplicaMessage {
                    msg: Some(pb::replica_message::Msg::Acks(pb::ReplicaAcks {
                        acks: ends
                            .into_iter()
                            .map(|(log, durable_end)| pb::ReplicaAck { log, durable_end })
                            .collect(),
                        downstream: node.replicas.descendants(),
                    })),
                };
                if tx.send(msg).await.is_err() {
                    bail!("upstream closed the stream");
                }
            }
            _ = beat.tick() => {
                if tx.send(acks(node)).await.is_err() {
                    bail!("upstream closed the stream");
                }
            }
            // A replica below acked: pass it on (sync modes on the primary may count it).
            _ = node.replicas.acked.notified() => {
                if tx.send(acks(node)).await.is_err() {
                    bail!("upstream closed the stream");
                }
            }
            m = inbound.next(), if inflight.len() < INFLIGHT_MAX => {
                last_heard = tokio::time::Instant::now();
                let m = match m {
                    None => return Ok(()),
                    Some(Err(s)) => bail!("upstream error: {}", s.message()),
                    Some(Ok(m)) => m,
                };
                view.lock().last_heard = Some(Instant::now());
                match m.msg {
                    Some(pb::upstream_message::Msg::Frames(f)) if ignored.contains(&f.log) => {}
                    Some(pb::upstream_message::Msg::Frames(f)) => {
                        let log = match logs.get(&f.log) {
                            Some(l) => l.clone(),
                            None => {
                                let l = node.storage.log(&f.log)?;
                                logs.insert(f.log.clone(), l.clone());
                                l
                            }
                        };
                        // The upstream continues the log itself: an import cut before
                        // will not be resumed (its staging file goes now).
                        imports.remove(&f.log);
                        let name = f.log.clone();
                        if f.sync {
                            node.upstream_requested_sync();
                        }
                        let durable = log.submit_frames_with(f.frames, f.sync).await
                            .with_context(|| format!("appending frames {}..{} of {name}", f.first_offset, f.next_offset))?;
                        inflight.push_back(Box::pin(async move {
                            let end = durable.await?;
                            Ok((name, end))
                        }));
                    }
                    Some(pb::upstream_message::Msg::Segment(c)) if ignored.contains(&c.log) => {}
                    Some(pb::upstream_message::Msg::Segment(c)) => {
                        let log = node.storage.log(&c.log)?;
                        // An import of a fetch from inside the upstream's segment starts past
                        // the segment's base: it is a segment of its own here.
                        let continues = imports.get(&c.log).is_some_and(|i| {
                            (c.segment_base..c.segment_next).contains(&i.base()) && i.next_offset() == c.first_offset
                        });
                        if !continues {
                            imports.remove(&c.log);
                            // The segment follows the log's end: what is in flight lands first.
                            while let Some(r) = inflight.next().await { r?; }
                            if tx.send(acks(node)).await.is_err() {
                                bail!("upstream closed the stream");
                            }
                            if (c.first_offset != c.segment_base && !c.fetch) || log.positions().durable != c.first_offset {
                                bail!(
                                    "upstream sent segment {} of {} from offset {}, but this log ends at {}",
                                    c.segment_base, c.log, c.first_offset, log.positions().durable
                                );
                            }
                            imports.insert(c.log.clone(), log.begin_import(c.first_offset)?);
                        }
                        let imp = imports.get_mut(&c.log).expect("inserted above");
                        if c.fetch {
                            let staged = |imp: &SegmentImport, bytes: u64| {
                                let mut v = view.lock();
                                let f = v.logs.entry(imp.log_name().to_owned()).or_default();
                                f.staged = Some((imp.next_offset(), c.segment_next));
                                f.segment_bytes_received += bytes;
                                f.segment_bytes_fetched += bytes;
                            };
                            let segment = (c.segment_base, c.segment_next);
                            let staged_before = imp.staged_bytes();
                            let fetched = {
                                let fetching = segment_fetch::fetch(&cfg.upstream, &cfg.replica_id, segment, imp, staged);
                                tokio::pin!(fetching);
                                // The stream waits meanwhile; the upstream keeps hearing from us.
                                loop {
                                    tokio::select! {
                                        r = &mut fetching => break r,
                                        _ = beat.tick() => {
                                            if tx.send(acks(node)).await.is_err() {
                                                bail!("upstream closed the stream");
                                            }
                                        }
                                    }
                                }
                            };
                            last_heard = tokio::time::Instant::now();
                            if let Err(e) = fetched {
                                // Fetching cannot work from here (a proxy that speaks only
                                // HTTP/2, say) if it never got a byte: the next session
                                // takes segments in the stream. A fetch cut midway resumes
                                // as a fetch.
                                if imp.staged_bytes() == staged_before {
                                    *fetch = false;
                                }
                                return Err(e.context(format!("fetching segment {} of {}", c.segment_base, c.log)));
                            }
                        } else {
                            // Page-cache writes of at most a message: brief enough for a worker.
                            tokio::task::block_in_place(|| imp.write(&c.frames))
                                .with_context(|| format!("staging frames {}..{} of {}", c.first_offset, c.next_offset, c.log))?;
                            view.lock().logs.entry(c.log.clone()).or_default().segment_bytes_received += c.frames.len() as u64;
                        }
                        let done = imp.next_offset() >= c.segment_next;
                        {
                            let mut v = view.lock();
                            let f = v.logs.entry(c.log.clone()).or_default();
                            f.staged = (!done).then_some((imp.next_offset(), c.segment_next));
                            f.segments_received += u64::from(done);
                        }
                        if done {
                            let imp = imports.remove(&c.log).expect("present");
                            let (base, bytes) = (imp.base(), imp.staged_bytes());
                            let end = imp.install().await
                                .with_context(|| format!("installing segment {base} of {}", c.log))?;
                            let upstream_end = view.lock().logs.get(&c.log).map_or(0, |f| f.upstream_end);
                            tracing::info!(log = %c.log, base, end, bytes, upstream_end, "received a sealed segment");
                            let msg = pb::ReplicaMessage {
                                msg: Some(pb::replica_message::Msg::Acks(pb::ReplicaAcks {
                                    acks: vec![pb::ReplicaAck { log: c.log, durable_end: end }],
                                    downstream: node.replicas.descendants(),
                                })),
                            };
                            if tx.send(msg).await.is_err() {
                                bail!("upstream closed the stream");
                            }
                        }
                    }
                    Some(pb::upstream_message::Msg::Start(s)) => {
                        // Ordering: what is in flight lands before the log changes shape.
                        while let Some(r) = inflight.next().await { r?; }
                        logs.remove(&s.name);
                        // A segment cut by a disconnect resumes when the upstream continues
                        // the log where the import began (it then sends the segment from the
                        // hello's staged_end); anything else reshapes the log first.
                        let resumes = s.action == pb::log_start::Action::Continue as i32
                            && imports.get(&s.name).is_some_and(|i| i.base() == s.offset);
                        if !resumes {
                            imports.remove(&s.name);
                        }
                        let recreated = s.action == pb::log_start::Action::Recreate as i32;
                        if let (true, Some(d)) = (recreated, node.active_delay()) {
                            // Another incarnation upstream: this copy is deleted only after
                            // the delay, as any deletion from upstream.
                            if node.storage.log(&s.name).is_ok() && d.pending_delete(&s.name).is_none() {
                                d.schedule_delete(&s.name, super::upstream::now_us()).await?;
                            }
                        }
                        if node.active_delay().is_some_and(|d| d.pending_delete(&s.name).is_some()) {
                            tracing::warn!(log = %s.name, "log recreated upstream while its delayed deletion is pending: it follows once the old one is deleted");
                            ignored.insert(s.name.clone());
                            continue;
                        }
                        apply_start(node, &s, view).await?;
                    }
                    Some(pb::upstream_message::Msg::Deleted(d)) if node.active_delay().is_some() => {
                        // Destructive operations wait for the delay: keep the log (readable
                        // up to its horizon) and delete it at deletion time + delay.
                        while let Some(r) = inflight.next().await { r?; }
                        logs.remove(&d.name);
                        imports.remove(&d.name);
                        ignored.remove(&d.name);
                        if node.storage.log(&d.name).is_ok() {
                            let at = if d.deleted_at_us == 0 { super::upstream::now_us() } else { d.deleted_at_us };
                            node.active_delay().expect("checked").schedule_delete(&d.name, at).await?;
                        }
                    }
                    Some(pb::upstream_message::Msg::Deleted(d)) => {
                        while let Some(r) = inflight.next().await { r?; }
                        logs.remove(&d.name);
                        imports.remove(&d.name);
                        view.lock().logs.remove(&d.name);
                        match node.storage.delete_log(&d.name).await {
                            Ok(()) | Err(spool_storage::StorageError::LogNotFound(_)) => {}
                            Err(e) => return Err(e.into()),
                        }
                        node.catalog_changed();
                        tracing::info!(log = %d.name, "log deleted upstream");
                    }
                    Some(pb::upstream_message::Msg::Heartbeat(h)) => {
                        node.role.set_epoch(h.node_epoch.max(node.role.epoch())).await?;
                        if !h.primary_addr.is_empty() {
                            node.role.set_primary_addr(Some(h.primary_addr.clone()));
                        }
                        let mut v = view.lock();
                        for e in h.ends {
                            let entry = v.logs.entry(e.name).or_default();
                            entry.upstream_end = e.end_offset;
                        }
                    }
                    Some(pb::upstream_message::Msg::Hello(_)) | None => {}
                }
            }
            // The upstream heartbeats every second: silence means it is gone. Not while our
            // own disk holds us back (then its messages wait for us, not the reverse).
            _ = tokio::time::sleep_until(last_heard + DEAD_AFTER), if inflight.len() < INFLIGHT_MAX => {
                bail!("upstream silent for {DEAD_AFTER:?}: connection presumed dead");
            }
            changed = applied.changed(), if !ignored.is_empty() => {
                if changed.is_ok() && ignored.iter().any(|n| node.active_delay().is_some_and(|d| d.pending_delete(n).is_none())) {
                    tracing::info!("a delayed deletion was applied: reconnecting to receive the recreated log");
                    return Ok(());
                }
            }

        }
    }
}

/// Create `s.name` as the upstream has it: its config (retention by age delayed too on a
/// delayed replica) and incarnation.
async fn create_as_upstream(node: &Arc<Node>, s: &pb::LogStart) -> Result<Log> {
    let storage = &node.storage;
    let mut config = config_from_pb(s.config, &storage.config().default_log)
        .map_err(|st| anyhow!("log config from upstream: {}", st.message()))?;
    if let Some(d) = node.active_delay() {
        // Retention by age reaches a delayed replica only after the delay too.
        config.retention_ms = config
            .retention_ms
            .map(|ms| ms.saturating_add(d.delay.as_millis() as u64));
    }
    let incarnation = match s.incarnation {
        0 => spool_storage::meta::new_incarnation(),
        i => i,
    };
    let l = if s.sealed_segments_follow {
        storage
            .create_log_for_import(&s.name, config, incarnation)
            .await?
    } else {
        storage
            .create_log_copy(&s.name, config, incarnation)
            .await?
    };
    if let Some(d) = node.active_delay() {
        // Its horizon (and retention floor) exist before its first frame arrives.
        d.horizon(&l);
    }
    node.catalog_changed();
    tracing::info!(log = %s.name, "log created by the upstream");
    Ok(l)
}

/// The log the start is about: ours (given the upstream's incarnation if it had none, as
/// written by a version without them), a new copy of another incarnation, or a new one.
async fn log_for_start(node: &Arc<Node>, s: &pb::LogStart) -> Result<Log> {
    use pb::log_start::Action;
    let recreate = s.action == Action::Recreate as i32;
    match node.storage.log(&s.name) {
        Ok(l) if recreate => {
            tracing::warn!(log = %s.name, ours = format!("{:016x}", l.incarnation()), theirs = format!("{:016x}", s.incarnation), "the log was deleted and created again upstream: dropping this copy and copying the new one");
            match node.storage.delete_log(&s.name).await {
                Ok(()) | Err(spool_storage::StorageError::LogNotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
            node.catalog_changed();
            create_as_upstream(node, s).await
        }
        Ok(l) => {
            l.set_incarnation(s.incarnation).await?;
            Ok(l)
        }
        Err(_) => create_as_upstream(node, s).await,
    }
}

async fn apply_start(node: &Arc<Node>, s: &pb::LogStart, view: &Mutex<UpstreamView>) -> Result<()> {
    use pb::log_start::Action;
    let action = Action::try_from(s.action).unwrap_or(Action::Continue);
    if let Action::Ahead | Action::Diverged = action {
        // Nothing here changes: the upstream lags or lost records this log holds (it sends
        // frames from this log's end once it has them), or the two wrote different ones.
        if action == Action::Diverged {
            tracing::error!(log = %s.name, reason = %s.reason, "this log diverged from the upstream's in the same epoch; it does not follow until resolved");
        } else {
            tracing::warn!(log = %s.name, reason = %s.reason, "this log is ahead of the upstream; keeping every record");
        }
        let mut v = view.lock();
        let f = v.logs.entry(s.name.clone()).or_default();
        f.blocked = format!("{}: {}", action.as_str_name().to_lowercase(), s.reason);
        return Ok(());
    }
    let log = log_for_start(node, s).await?;
    let end = log.positions().durable;
    // A delayed replica lowers the horizon before cutting (cuts stay immediate: the
    // upstream's word on divergence is not delayed).
    let _cut = match (node.active_delay(), action) {
        (Some(d), Action::FullSync | Action::Recreate) => Some(d.cut(&log, s.offset, true).await?),
        (Some(d), _) if s.offset < end => Some(d.cut(&log, s.offset, false).await?),
        _ => None,
    };
    let full_sync = match action {
        Action::Continue => {
            if end != s.offset {
                // Our end moved since the hello (cannot happen while we follow one
                // upstream); resolve it by the upstream's word.
                log.truncate_to(s.offset.min(end)).await?;
            }
            false
        }
        Action::Truncate => {
            tracing::warn!(log = %s.name, from = end, to = s.offset, "divergent tail: truncating");
            log.truncate_to(s.offset).await?;
            false
        }
        Action::FullSync | Action::Recreate => {
            if action == Action::FullSync {
                tracing::warn!(log = %s.name, start = s.offset, "offsets gone upstream: full sync");
            }
            if log.positions().durable != s.offset || log.positions().start != s.offset {
                log.reset_to(s.offset).await?;
            }
            true
        }
        Action::Ahead | Action::Diverged => unreachable!("handled above"),
    };
    let mut v = view.lock();
    let f = v.logs.entry(s.name.clone()).or_default();
    f.full_sync = full_sync;
    f.staged = None;
    f.blocked.clear();
    Ok(())
}
