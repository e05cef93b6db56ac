//! The replica side: one stream to the upstream, frames appended unchanged (after their
//! CRC is checked), durable ends acknowledged, reconnect with backoff resuming from the
//! local end (a partial resync: nothing already here is sent again).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use parking_lot::Mutex;
use spool_proto::v1 as pb;
use spool_replication::follow::{self, AckGate, Identities, Refusal, BACKOFF_MIN, DEAD_AFTER};
use spool_storage::{Log, SegmentImport};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use super::follower_session::{Landing, Session};
use crate::server::node::Node;

const STREAM_WINDOW_BYTES: u32 = 16 << 20;

/// Largest HTTP/2 DATA frame the upstream may send: a frame message in few pieces, each
/// copied once into the decoder's buffer (the protocol's default is 16 KiB).
const FRAME_BYTES: u32 = 1 << 20;

#[derive(Debug, Clone, Default)]
pub struct LogFollow {
    pub upstream_end: u64,
    /// A heartbeat has said where the log ends upstream (`upstream_end` is meaningful).
    pub upstream_end_known: bool,
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
    /// A coordinator decides who leads: a refused upstream never makes this node primary.
    pub coordinated: bool,
}

/// Follow `cfg.upstream` until the node shuts down or is promoted.
pub async fn follow(node: Arc<Node>, cfg: FollowerConfig, view: Arc<Mutex<UpstreamView>>) {
    let mut backoff = BACKOFF_MIN;
    // Segments partly received survive a reconnect: the upstream resumes where they stop.
    let mut imports: Imports = HashMap::new();
    let landing = Landing::default();
    // After a failed segment fetch, one session takes segments inside the stream instead
    // (a fetch that cannot work, e.g. through a proxy that speaks only HTTP/2, then costs
    // one reconnect, not the replication).
    let mut fetch_failed = false;
    loop {
        if node.is_shutting_down() || node.role().is_primary() {
            return;
        }
        let started = Instant::now();
        let mut fetch = cfg.segment_fetch && !fetch_failed;
        let result = tokio::select! {
            biased;
            _ = node.shutdown_started() => return,
            _ = node.promoted() => return,
            r = session(&node, &cfg, &view, &mut imports, &mut fetch, &landing) => r,
        };
        if node.is_shutting_down() {
            // A session that ended as the node stops (its stream torn down) is no failure.
            return;
        }
        if leads_upstream(&node, &cfg, &result) {
            return;
        }
        fetch_failed = cfg.segment_fetch && !fetch_failed && !fetch;
        view.lock().connected_at = None;
        match result {
            Ok(()) => tracing::info!(upstream = %cfg.upstream, "upstream closed the stream"),
            Err(e) => {
                let error = format!("{e:#}");
                tracing::warn!(upstream = %cfg.upstream, %error, "replication stream failed");
                view.lock().last_error = error;
            }
        }
        let (wait, next) = follow::backoff(backoff, started.elapsed());
        tokio::time::sleep(wait).await;
        backoff = next;
    }
}

/// The session ended because this node began a newer (or the same) epoch than its
/// upstream (promoted, then restarted with its old `--replica-of`): it goes on as the
/// primary, saying so. Returns whether that happened.
fn leads_upstream(node: &Node, cfg: &FollowerConfig, result: &Result<()>) -> bool {
    let refusal = result
        .as_ref()
        .err()
        .and_then(|e| e.downcast_ref::<Refusal>());
    let Some(Refusal::WeLead { led, up_epoch }) = refusal else {
        return false;
    };
    if cfg.coordinated {
        return false;
    }
    tracing::warn!(
        upstream = %cfg.upstream,
        "this node began epoch {led} as the primary and the upstream is at epoch {up_epoch}: \
         it follows this node, not the reverse. Ignoring --replica-of and going on as the \
         primary; remove --replica-of (or replica_of in the config) from this node's command line"
    );
    node.role().become_primary();
    node.mark_promoted();
    true
}

/// How long a new session waits for the last one's segment installs before its hello.
const INSTALLS_SETTLE: Duration = Duration::from_secs(10);

pub type Imports = HashMap<String, SegmentImport>;

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

pub fn hello(
    node: &Node,
    cfg: &FollowerConfig,
    imports: &mut Imports,
    segment_fetch: bool,
) -> pb::ReplicaMessage {
    let storage = &node.storage();
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
            epochs: super::plan::epoch_starts(l.epochs().entries()),
            staged_end: staged(l.name()).map_or(0, |i| i.next_offset()),
            staged_epochs: staged(l.name())
                .map_or_else(Vec::new, |i| super::plan::epoch_starts(&i.staged_epochs())),
        })
        .collect();
    pb::ReplicaMessage {
        msg: Some(pb::replica_message::Msg::Hello(pb::ReplicaHello {
            replica_id: cfg.replica_id.clone(),
            sync: cfg.sync,
            delayed: cfg.delayed,
            node_epoch: node.role().epoch(),
            logs,
            listen_addr: node.role().listen_addr.read().clone(),
            segment_fetch,
            fetch_active_spans: segment_fetch,
            cluster_id: node.role().cluster_id(),
        })),
    }
}

/// The durable ends of the logs this session may ack (see `AckGate`), and the replicas
/// below this one with theirs.
pub fn acks(node: &Node, gate: &AckGate) -> pb::ReplicaMessage {
    let storage = &node.storage();
    let acks = storage
        .list_logs()
        .iter()
        .filter(|n| gate.may_ack(n))
        .filter_map(|n| storage.log(n).ok())
        .map(|l| pb::ReplicaAck {
            log: l.name().to_owned(),
            durable_end: l.positions().durable,
        })
        .collect();
    pb::ReplicaMessage {
        msg: Some(pb::replica_message::Msg::Acks(pb::ReplicaAcks {
            acks,
            downstream: node.replicas().descendants(),
            node_epoch: node.role().epoch(),
        })),
    }
}

/// One stream to the upstream: connect, say hello, check who answered, then follow.
async fn session(
    node: &Arc<Node>,
    cfg: &FollowerConfig,
    view: &Mutex<UpstreamView>,
    imports: &mut Imports,
    fetch: &mut bool,
    landing: &Landing,
) -> Result<()> {
    if !landing.settled(INSTALLS_SETTLE).await {
        tracing::warn!("segment installs of the last session still running: resuming without them");
    }
    let tls = node.peer_tls();
    let uri = crate::tls::uri(&cfg.upstream, tls.is_some());
    let channel = crate::tls::endpoint(&cfg.upstream, tls)?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        // Room for several frame messages in flight while a catch-up runs at disk speed.
        .initial_stream_window_size(Some(STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(STREAM_WINDOW_BYTES))
        // Frames of frame messages arrive in HTTP/2 DATA frames of up to this much.
        .max_frame_size(Some(FRAME_BYTES))
        .connect()
        .await
        .with_context(|| format!("connecting to upstream {uri}"))?;
    let mut client = pb::replication_client::ReplicationClient::new(channel)
        .max_decoding_message_size(crate::server::MESSAGE_BYTES_MAX);
    let (tx, rx) = mpsc::channel(64);
    tx.send(hello(node, cfg, imports, *fetch)).await?;
    let mut inbound = client
        .replicate(crate::server::auth::as_node(ReceiverStream::new(rx)))
        .await
        .context("opening the replication stream")?
        .into_inner();
    let first = tokio::time::timeout(DEAD_AFTER, inbound.next())
        .await
        .map_err(|_| anyhow!("no hello from the upstream"))?;
    let up = match first {
        Some(Ok(pb::UpstreamMessage {
            msg: Some(pb::upstream_message::Msg::Hello(h)),
            ..
        })) => h,
        Some(Err(s)) => bail!("upstream refused: {}", s.message()),
        _ => bail!("upstream did not start with a hello"),
    };
    accept(node, &up).await?;
    {
        let mut v = view.lock();
        v.connected_at = Some(Instant::now());
        v.last_heard = Some(Instant::now());
    }
    tracing::info!(upstream = %cfg.upstream, epoch = up.node_epoch, "following upstream");
    Session::new(node, cfg, view, imports, fetch, tx, up.node_epoch)
        .landing(landing)
        .run(inbound)
        .await
}

/// Follow the upstream that answered, if it is of this node's cluster (joining it, the
/// first time) and not behind it; adopt its epoch and the primary's address.
async fn accept(node: &Node, up: &pb::UpstreamHello) -> Result<()> {
    let ours = node.role().cluster_id();
    let ids = Identities {
        our_cluster: &ours,
        our_epoch: node.role().epoch(),
        our_led_epoch: node.role().led_epoch(),
        up_cluster: &up.cluster_id,
        up_epoch: up.node_epoch,
    };
    if follow::accept_upstream(&ids)? {
        node.role().join_cluster(&up.cluster_id).await?;
    }
    node.role().set_epoch(up.node_epoch).await?;
    if !up.primary_addr.is_empty() {
        node.role().set_primary_addr(Some(up.primary_addr.clone()));
    }
    Ok(())
}
