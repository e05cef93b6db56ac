//! The upstream side of replication: one session per connected replica, streaming frames
//! read from the mmap'd segments exactly as stored, and taking the replica's acks.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use futures::Stream;
use spool_proto::v1 as pb;
use spool_replication::divergence::{self, Decision};

use super::plan::{plan_for, Plan};
use spool_storage::{Log, SegmentSpan, StorageError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::server::logs_service::config_to_pb;
use crate::server::node::Node;
use crate::server::status_map::to_status;
use crate::server::visible::Visible;

/// Bytes of frames per message: large enough to catch up at disk speed, small enough to
/// stay well under the message size limit.
const FRAMES_PER_MESSAGE_BYTES: usize = 1 << 20;
/// Messages buffered towards one replica: a slow replica holds its sender back.
const OUTBOUND_BUFFER: usize = 16;
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// No word from the other side for this long: the connection is dead.
pub const DEAD_AFTER: Duration = Duration::from_secs(5);

type Out = mpsc::Sender<Result<pb::UpstreamMessage, Status>>;

#[derive(Debug, Clone)]
pub struct ReplicationService {
    pub node: Arc<Node>,
}

fn msg(m: pb::upstream_message::Msg) -> Result<pb::UpstreamMessage, Status> {
    Ok(pb::UpstreamMessage { msg: Some(m) })
}

fn start_message(reader: &Visible, log: &Log, plan: &Plan, fetch: Fetch) -> pb::LogStart {
    use pb::log_start::Action;
    let (action, offset, reason) = match plan {
        Plan::Follow(Decision::Continue { from }) => (Action::Continue, *from, String::new()),
        Plan::Follow(Decision::TruncateThenContinue { to }) => {
            (Action::Truncate, *to, String::new())
        }
        Plan::Follow(Decision::FullSync { from }) => (Action::FullSync, *from, String::new()),
        Plan::Recreate { from } => (Action::Recreate, *from, String::new()),
        Plan::Follow(Decision::Ahead {
            upstream_end,
            replica_end,
        }) => (
            Action::Ahead,
            *replica_end,
            format!(
                "the replica holds records {upstream_end}..{replica_end} of this log's current \
                 epoch past this node's end: it keeps them and gets frames from its end once \
                 this node has them"
            ),
        ),
        Plan::Diverged { reason } => (Action::Diverged, 0, reason.clone()),
    };
    let sealed = matches!(
        action,
        Action::Continue | Action::Truncate | Action::FullSync | Action::Recreate
    ) && (log.reader().sealed_segment(offset).is_some()
        || (fetch.active && active_span_to_fetch(reader, log, offset, 0).is_some()));
    pb::LogStart {
        name: log.name().to_owned(),
        config: Some(config_to_pb(log.config())),
        action: action as i32,
        offset,
        sealed_segments_follow: sealed,
        incarnation: log.incarnation(),
        reason,
    }
}

/// Where frames for the replica start, if any are sent.
fn continue_from(plan: &Plan) -> Option<u64> {
    match plan {
        Plan::Follow(Decision::Continue { from } | Decision::FullSync { from })
        | Plan::Recreate { from } => Some(*from),
        Plan::Follow(Decision::TruncateThenContinue { to }) => Some(*to),
        Plan::Follow(Decision::Ahead { replica_end, .. }) => Some(*replica_end),
        Plan::Diverged { .. } => None,
    }
}

/// A replica whose end lies inside a sealed segment fetches the rest of it (as a segment of
/// its own, starting there) when at least this much of it is left; less goes as frames.
const FETCH_INSIDE_MIN_BYTES: u64 = 4 << 20;

/// Where to send on from inside the segment the replica holds partly received (0: from
/// its end). Only if the replica's log continues as is, and what it staged is ours too.
fn staged_to_resume(
    visible: &Visible,
    log: &Log,
    plan: &Plan,
    state: Option<&pb::ReplicaLogState>,
    replica: &str,
) -> u64 {
    let (Plan::Follow(Decision::Continue { from }), Some(s)) = (plan, state) else {
        return 0;
    };
    let from = *from;
    if s.end_offset != from || s.staged_end <= from {
        return 0;
    }
    let staged: Vec<(u64, u64)> = s
        .staged_epochs
        .iter()
        .map(|e| (e.epoch, e.start_offset))
        .collect();
    let ours = divergence::staged_part_matches(
        log.epochs().entries(),
        visible.end(),
        &staged,
        from,
        s.staged_end,
    );
    if ours {
        return s.staged_end;
    }
    if !staged.is_empty() {
        tracing::warn!(replica = %replica, log = %log.name(), from, staged_end = s.staged_end, "the replica's staged frames are not this log's (cut since?): sending them again");
    }
    0
}

fn worth_fetching(reader: &Visible, base: u64, from: u64) -> bool {
    reader
        .sealed_span(base, from)
        .is_ok_and(|s| s.end - s.start >= FETCH_INSIDE_MIN_BYTES)
}

/// A replica this far behind inside the active segment (at least this fraction of a
/// segment, and [`FETCH_INSIDE_MIN_BYTES`]) fetches the durable span as a segment of its
/// own: a restarted replica's catch-up, or one that fell behind, writes it once with
/// O_DIRECT instead of frame messages through its group commit. A fraction, so that the
/// segments it imports this way are no smaller than that (each seals the replica's own
/// active segment where it begins, which may be small).
const FETCH_ACTIVE_MIN_SEGMENT_FRACTION: u64 = 4;

/// The durable span of the active segment to offer from `from`, if it is worth fetching;
/// where the replica holds part of one already (up to `resume_at`), the rest of it.
fn active_span_to_fetch(
    reader: &Visible,
    log: &Log,
    from: u64,
    resume_at: u64,
) -> Option<SegmentSpan> {
    if resume_at > from {
        let rest = reader
            .active_span(resume_at)
            .filter(|s| s.next_offset > s.first_offset);
        if rest.is_some() {
            return rest;
        }
    }
    let min =
        FETCH_INSIDE_MIN_BYTES.max(log.config().segment_bytes / FETCH_ACTIVE_MIN_SEGMENT_FRACTION);
    reader.active_span(from).filter(|s| s.end - s.start >= min)
}

/// What a replica fetches itself over segment-fetch connections (its hello says).
#[derive(Debug, Clone, Copy, Default)]
struct Fetch {
    /// Sealed segments, whole or from inside.
    sealed: bool,
    /// Durable spans of the active segment.
    active: bool,
}

/// Stream one log's frames from `from` on, following the visible end (the durable end,
/// or a delayed replica's horizon). Where `from` is the base of a sealed segment, that
/// segment goes whole as SegmentChunks (resuming at `staged_end` if the replica holds part
/// of it), or, to a replica that can (`fetch`), as one SegmentChunk telling it to fetch the
/// segment from the file itself (also from inside a sealed segment, when enough of it is
/// left); the rest as LogFrames.
async fn send_log(
    node: Arc<Node>,
    replica: String,
    log: Log,
    (mut from, mut cuts): (u64, u64),
    staged_end: u64,
    out: Out,
    fetch: Fetch,
) {
    let reader = node.visible(&log);
    // The sealed segment being shipped: (base, next base, next offset to send).
    let mut segment: Option<(u64, u64, u64)> = None;
    let mut resume_at = staged_end;
    let mut first = true;
    let offer = |base: u64, pos: u64, next: u64| {
        // The replica copies [pos, next) itself (segment_fetch.rs); this stream goes on
        // from there, and the replica reads on once the segment is in.
        node.replicas
            .segment_sent(&replica, log.name(), Some((pos, next)));
        msg(pb::upstream_message::Msg::Segment(pb::SegmentChunk {
            log: log.name().to_owned(),
            segment_base: base,
            segment_next: next,
            first_offset: pos,
            next_offset: next,
            frames: Default::default(),
            fetch: true,
        }))
    };
    loop {
        // This log was cut back below what the replica has been sent (this node is a
        // replica whose upstream cut a divergent tail, or reset it for a full sync): end
        // the stream, so the replica reconnects and its tail is decided again. Checked
        // around the wait; frames read in a race with a cut are caught at the next check,
        // and the new decision then cuts them on the replica too.
        // A cut at or past `from` took nothing sent: later checks start after it.
        let mut cut = |from: u64| {
            let now = reader.cut_count();
            let below = reader.lowest_cut_since(cuts).filter(|&c| c < from);
            if below.is_none() {
                cuts = now;
            }
            below
        };
        let ready = loop {
            if cut(from).is_some() {
                break Ok(());
            }
            tokio::select! {
                r = reader.wait_for(from) => break r,
                // A cut need not wake the wait (the end may stay below `from`).
                _ = tokio::time::sleep(HEARTBEAT_EVERY) => {}
                _ = out.closed() => return,
                _ = node.shutdown_started() => return,
            }
        };
        if let Some(c) = cut(from) {
            let _ = out
                .send(Err(Status::aborted(format!(
                    "log {} was cut back to offset {c} here, below the {from} sent to this \
                     replica: reconnect",
                    log.name()
                ))))
                .await;
            return;
        }
        if ready.is_err() {
            return; // log deleted: the session sends LogDeleted
        }
        let resume = std::mem::take(&mut resume_at);
        if segment.is_none() {
            segment = reader
                .sealed_segment(from)
                .filter(|&(base, _)| {
                    base == from || (fetch.sealed && worth_fetching(&reader, base, from))
                })
                .map(|(base, next)| {
                    let pos = if resume > from && resume < next {
                        resume
                    } else {
                        from
                    };
                    (base, next, pos)
                });
        }
        if let (true, Some((base, next, pos))) = (fetch.sealed, segment) {
            segment = None;
            from = next;
            if out.send(offer(base, pos, next)).await.is_err() {
                return;
            }
            continue;
        }
        // Looked for at the start (a catch-up) and whenever the replica holds the stream
        // back (the outbound queue is full), not for every message of a stream that keeps up.
        let active = match segment {
            None if fetch.active && (first || out.capacity() == 0) => {
                active_span_to_fetch(&reader, &log, from, resume)
            }
            _ => None,
        };
        first = false;
        if let Some(span) = active {
            from = span.next_offset;
            if out
                .send(offer(span.base, span.first_offset, span.next_offset))
                .await
                .is_err()
            {
                return;
            }
            continue;
        }
        let read_at = segment.map_or(from, |(_, _, pos)| pos);
        let m = match reader.read_frames(read_at, FRAMES_PER_MESSAGE_BYTES) {
            Ok(chunk) if chunk.bytes.is_empty() => continue,
            Ok(chunk) => match segment {
                Some((base, next, _)) => {
                    // Chunks never cross a segment's end.
                    let done = chunk.next_offset >= next;
                    segment = (!done).then_some((base, next, chunk.next_offset));
                    if done {
                        from = next;
                    }
                    let progress = (!done).then_some((chunk.next_offset, next));
                    node.replicas.segment_sent(&replica, log.name(), progress);
                    pb::upstream_message::Msg::Segment(pb::SegmentChunk {
                        log: log.name().to_owned(),
                        segment_base: base,
                        segment_next: next,
                        first_offset: chunk.first_offset,
                        next_offset: chunk.next_offset,
                        frames: chunk.bytes,
                        fetch: false,
                    })
                }
                None => {
                    from = chunk.next_offset;
                    pb::upstream_message::Msg::Frames(pb::LogFrames {
                        log: log.name().to_owned(),
                        first_offset: chunk.first_offset,
                        next_offset: chunk.next_offset,
                        frames: chunk.bytes,
                        sync: node.replicas_should_sync(),
                    })
                }
            },
            Err(StorageError::OffsetOutOfRange { start, .. }) if read_at < start => {
                // Retention removed what this replica needed: it must sync from the start.
                tracing::warn!(
                    log = log.name(),
                    from = read_at,
                    start,
                    "replica fell behind retention: full sync"
                );
                segment = None;
                from = start;
                node.replicas.segment_sent(&replica, log.name(), None);
                node.replicas
                    .full_sync_started(&replica, log.name(), reader.end());
                pb::upstream_message::Msg::Start(start_message(
                    &reader,
                    &log,
                    &Plan::Follow(Decision::FullSync { from: start }),
                    fetch,
                ))
            }
            Err(e) => {
                let _ = out.send(Err(to_status(e))).await;
                return;
            }
        };
        if out.send(msg(m)).await.is_err() {
            return;
        }
    }
}

/// A replica ahead of this node in `log` (records `upstream_end..replica_end` of the epoch
/// this node was in): wait until this node holds them too, then stream from the
/// replica's end, if they are still of that epoch here; if this node's history changed
/// under them meanwhile, end the stream so the replica's tail is decided again.
async fn send_when_there(
    node: Arc<Node>,
    replica: String,
    log: Log,
    (upstream_end, replica_end, cuts): (u64, u64, u64),
    out: Out,
    fetch: Fetch,
) {
    let epoch = log.epochs().epoch_at(upstream_end).unwrap_or(0);
    let reader = node.visible(&log);
    tokio::select! {
        r = reader.wait_for(replica_end - 1) => if r.is_err() { return },
        _ = out.closed() => return,
        _ = node.shutdown_started() => return,
    }
    let history = log.epochs();
    let same = reader
        .lowest_cut_since(cuts)
        .is_none_or(|c| c >= replica_end)
        && history.epoch_at(upstream_end) == Some(epoch)
        && history
            .entries()
            .iter()
            .all(|&(_, s)| s <= upstream_end || s >= replica_end);
    if !same {
        let _ = out
            .send(Err(Status::aborted(format!(
                "log {}: this node's history changed under records {upstream_end}..{replica_end} \
                 the replica holds: reconnect to decide its tail again",
                log.name()
            ))))
            .await;
        return;
    }
    node.replicas
        .set_blocked(&replica, log.name(), String::new());
    send_log(node, replica, log, (replica_end, cuts), 0, out, fetch).await;
}

struct Session {
    node: Arc<Node>,
    id: String,
    /// Where the replica serves (its hello's listen address).
    addr: String,
    /// What the replica holds of each log as its plans settled it, until the ack tracker
    /// knows the replica (see `run_session`; `tracked` once it does).
    held: Vec<(String, u64)>,
    tracked: bool,
    out: Out,
    tasks: HashMap<String, JoinHandle<()>>,
    /// What the replica said it had, per log, at hello.
    hello_logs: HashMap<String, pb::ReplicaLogState>,
    /// Replicas below this one that count for acks (`cascaded_counts_for_acks`).
    cascaded: HashSet<String>,
    /// What the replica fetches itself (its hello said so).
    fetch: Fetch,
}

impl Session {
    /// Start senders for logs the replica does not get yet; tell it about deleted ones.
    /// Each log's plan settles what the replica holds of it, which is what it counts for
    /// (never its end before a cut it is told to make).
    async fn sync_catalog(&mut self) -> Result<(), Status> {
        let storage = self.node.storage.clone();
        let names = storage.list_logs();
        for name in &names {
            if self.tasks.contains_key(name) {
                continue;
            }
            let Ok(log) = storage.log(name) else { continue };
            // Before deciding: a cut after this is one the decision may not have seen.
            let cuts = log.reader().cut_count();
            let state = self.hello_logs.remove(name);
            let plan = plan_for(&self.node, &log, state.as_ref())?;
            self.hold(name, plan.held());
            let visible = self.node.visible(&log);
            let staged_end = staged_to_resume(&visible, &log, &plan, state.as_ref(), &self.id);
            let start = start_message(&visible, &log, &plan, self.fetch);
            self.send(pb::upstream_message::Msg::Start(start)).await?;
            self.node
                .replicas
                .set_blocked(&self.id, name, blocked_reason(&plan));
            if matches!(
                plan,
                Plan::Follow(Decision::FullSync { .. }) | Plan::Recreate { .. }
            ) {
                self.node
                    .replicas
                    .full_sync_started(&self.id, name, visible.end());
            }
            if let (
                Plan::Follow(Decision::Ahead {
                    upstream_end,
                    replica_end,
                }),
                true,
            ) = (&plan, self.node.role.is_primary())
            {
                // This primary lost records the replica holds: it takes them back before
                // it takes another write to the log.
                crate::server::repair::spawn_take_back(
                    self.node.clone(),
                    log.clone(),
                    self.addr.clone(),
                    (*upstream_end, *replica_end),
                );
            }
            let task = match (continue_from(&plan), &plan) {
                (
                    Some(_),
                    Plan::Follow(Decision::Ahead {
                        upstream_end,
                        replica_end,
                    }),
                ) => tokio::spawn(send_when_there(
                    self.node.clone(),
                    self.id.clone(),
                    log,
                    (*upstream_end, *replica_end, cuts),
                    self.out.clone(),
                    self.fetch,
                )),
                (Some(from), _) => tokio::spawn(send_log(
                    self.node.clone(),
                    self.id.clone(),
                    log,
                    (from, cuts),
                    staged_end,
                    self.out.clone(),
                    self.fetch,
                )),
                (None, _) => tokio::spawn(async {}),
            };
            self.tasks.insert(name.clone(), task);
        }
        let gone: Vec<String> = self
            .tasks
            .keys()
            .filter(|n| !names.contains(n))
            .cloned()
            .chain(
                self.hello_logs
                    .keys()
                    .filter(|n| !names.contains(n))
                    .cloned(),
            )
            .collect();
        for name in gone {
            if let Some(t) = self.tasks.remove(&name) {
                t.abort();
            }
            self.hello_logs.remove(&name);
            self.send(pb::upstream_message::Msg::Deleted(pb::LogDeleted {
                name,
                deleted_at_us: now_us(),
            }))
            .await?;
        }
        Ok(())
    }

    /// The replica holds `log` up to `end` once it applied its plan.
    fn hold(&mut self, log: &str, end: u64) {
        self.node.replicas.set_acked(&self.id, log, end);
        if self.node.role.is_primary() {
            self.node.acks.holds(&self.id, log, end);
        }
        if !self.tracked {
            self.held.push((log.to_owned(), end));
        }
    }

    /// Queue a message, giving up if the replica reads nothing for [`DEAD_AFTER`].
    async fn send(&self, m: pb::upstream_message::Msg) -> Result<(), Status> {
        match tokio::time::timeout(DEAD_AFTER, self.out.send(msg(m))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Status::cancelled("replica went away")),
            Err(_) => Err(Status::deadline_exceeded(
                "replica read nothing: connection presumed dead",
            )),
        }
    }

    fn heartbeat(&self) -> pb::upstream_message::Msg {
        let storage = &self.node.storage;
        let ends = storage
            .list_logs()
            .iter()
            .filter_map(|n| storage.log(n).ok())
            .map(|l| {
                let v = self.node.visible(&l);
                pb::LogEnd {
                    name: l.name().to_owned(),
                    start_offset: v.start(),
                    end_offset: v.end(),
                }
            })
            .collect();
        pb::upstream_message::Msg::Heartbeat(pb::Heartbeat {
            now_us: now_us(),
            node_epoch: self.node.role.epoch(),
            ends,
            primary_addr: self.node.role.primary_addr().unwrap_or_default(),
        })
    }
}

pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

async fn run_session(
    node: Arc<Node>,
    hello: pb::ReplicaHello,
    mut inbound: Streaming<pb::ReplicaMessage>,
    out: Out,
) -> Result<(), Status> {
    let counts = !hello.delayed || node.config.delayed_counts_for_acks;
    // Its positions come from the plans below, not from the ends its hello reports.
    let generation = node.replicas.connect(
        &hello.replica_id,
        &hello.listen_addr,
        hello.sync,
        hello.delayed,
        counts && node.role.is_primary(),
        HashMap::new(),
    );
    tracing::info!(replica = %hello.replica_id, addr = %hello.listen_addr, sync = hello.sync, "replica attached");
    let mut session = Session {
        node: node.clone(),
        id: hello.replica_id.clone(),
        addr: hello.listen_addr.clone(),
        held: Vec::new(),
        tracked: false,
        out: out.clone(),
        tasks: HashMap::new(),
        hello_logs: hello
            .logs
            .into_iter()
            .map(|l| (l.name.clone(), l))
            .collect(),
        cascaded: HashSet::new(),
        fetch: Fetch {
            sealed: hello.segment_fetch,
            active: hello.segment_fetch && hello.fetch_active_spans,
        },
    };
    let result = async {
        let upstream_id = node.role.listen_addr.read().clone();
        session
            .send(pb::upstream_message::Msg::Hello(pb::UpstreamHello {
                node_epoch: node.role.epoch(),
                primary_addr: node.role.primary_addr().unwrap_or_default(),
                upstream_id,
                cluster_id: node.role.cluster_id(),
            }))
            .await?;
        session.sync_catalog().await?;
        if node.role.is_primary() {
            // Known to the tracker only now, with what its plans settled: a replica that
            // reconnects never counts for its acks of records it no longer holds.
            node.acks.connected(&session.id, hello.sync, counts);
            for (log, end) in std::mem::take(&mut session.held) {
                node.acks.holds(&session.id, &log, end);
            }
        }
        session.tracked = true;
        let mut catalog = node.catalog.subscribe();
        let mut beat = tokio::time::interval(HEARTBEAT_EVERY);
        let mut last_heard = Instant::now();
        let session_epoch = node.role.epoch();
        loop {
            tokio::select! {
                biased;
                m = inbound.next() => {
                    last_heard = Instant::now();
                    match m {
                        None => return Ok(()),
                        Some(Err(s)) => return Err(s),
                        Some(Ok(m)) => session.on_message(m),
                    }
                }
                // The replica acks at least every heartbeat; silence means it is gone (or
                // frozen: its TCP connection alone would keep the session forever).
                _ = tokio::time::sleep_until(last_heard + DEAD_AFTER) => {
                    return Err(Status::deadline_exceeded("replica silent: connection presumed dead"));
                }
                changed = catalog.changed() => {
                    if changed.is_err() { return Ok(()) }
                    session.sync_catalog().await?;
                }
                _ = beat.tick() => {
                    if node.role.is_primary() && node.role.epoch() != session_epoch {
                        // Promoted (maybe after cutting its logs at a point): the replica
                        // reconnects and its tail is decided again against the new history.
                        return Ok(());
                    }
                    // Never wait on a full queue: the session must keep watching for silence.
                    if let Err(mpsc::error::TrySendError::Closed(_)) =
                        session.out.try_send(msg(session.heartbeat()))
                    {
                        return Err(Status::cancelled("replica went away"));
                    }
                }
                _ = node.shutdown_started() => return Ok(()),
            }
        }
    }
    .await;
    for (_, t) in session.tasks.drain() {
        t.abort();
    }
    node.replicas.disconnect(&session.id, generation);
    if node.role.is_primary() {
        node.acks.disconnected(&session.id);
        for id in &session.cascaded {
            node.acks.disconnected(id);
        }
    }
    tracing::info!(replica = %session.id, "replica detached");
    result
}

impl Session {
    fn on_message(&mut self, m: pb::ReplicaMessage) {
        match m.msg {
            Some(pb::replica_message::Msg::Acks(acks)) => {
                self.node.replicas.heard(&self.id);
                for a in acks.acks {
                    self.node.replicas.ack(&self.id, &a.log, a.durable_end);
                    if self.node.role.is_primary() {
                        self.node.acks.acked(&self.id, &a.log, a.durable_end);
                    }
                }
                if self.node.role.is_primary() && self.node.config.cascaded_counts_for_acks {
                    self.count_cascaded(&acks.downstream);
                }
                self.node.replicas.set_downstream(&self.id, acks.downstream);
            }
            Some(pb::replica_message::Msg::Hello(_)) | None => {}
        }
    }
}

impl Session {
    /// The replicas below this one count for acks like direct ones (configured so):
    /// attached while it reports them, with the durable ends it forwards.
    fn count_cascaded(&mut self, downstream: &[pb::DownstreamReplica]) {
        let node = &self.node;
        let reported: HashSet<String> = downstream
            .iter()
            .filter(|d| !d.delayed || node.config.delayed_counts_for_acks)
            .map(|d| d.replica_id.clone())
            .collect();
        for gone in self.cascaded.difference(&reported) {
            node.acks.disconnected(gone);
        }
        for d in downstream
            .iter()
            .filter(|d| reported.contains(&d.replica_id))
        {
            if !self.cascaded.contains(&d.replica_id) {
                tracing::info!(replica = %d.replica_id, via = %self.id, "cascaded replica counts for acks");
                node.acks.connected(&d.replica_id, d.sync, true);
            }
            for a in &d.acks {
                node.acks.acked(&d.replica_id, &a.log, a.durable_end);
            }
        }
        self.cascaded = reported;
    }
}

/// A peer of another cluster (or this node in none yet) is refused.
pub fn check_cluster(node: &Node, theirs: &str) -> Result<(), Status> {
    let ours = node.role.cluster_id();
    if ours.is_empty() {
        return Err(Status::failed_precondition(
            "this node has not joined a cluster yet (a replica that never reached its own \
             upstream): connect to a node that has",
        ));
    }
    if !theirs.is_empty() && theirs != ours {
        return Err(Status::failed_precondition(format!(
            "cluster id mismatch: this node belongs to cluster {ours}, the peer to cluster \
             {theirs}; a node replicates only within its own cluster"
        )));
    }
    Ok(())
}

/// What status says of a log the plan sends nothing for yet (empty: nothing).
fn blocked_reason(plan: &Plan) -> String {
    match plan {
        Plan::Follow(Decision::Ahead {
            upstream_end,
            replica_end,
        }) => format!(
            "ahead: holds {upstream_end}..{replica_end} past this node's end; waiting to get there"
        ),
        Plan::Diverged { reason } => format!("diverged: {reason}"),
        _ => String::new(),
    }
}

type BoxStream = Pin<Box<dyn Stream<Item = Result<pb::UpstreamMessage, Status>> + Send>>;

#[tonic::async_trait]
impl pb::replication_server::Replication for ReplicationService {
    type ReplicateStream = BoxStream;

    async fn fetch_frames(
        &self,
        req: Request<pb::FetchFramesRequest>,
    ) -> Result<Response<pb::FetchFramesResponse>, Status> {
        self.node.check_accepting()?;
        let node = self.node.clone();
        let req = req.into_inner();
        // Reads through the mappings may fault pages in from the disk.
        let r = tokio::task::spawn_blocking(move || super::fetch_frames::fetch_frames(&node, req))
            .await
            .map_err(|e| Status::internal(format!("fetch task: {e}")))??;
        Ok(Response::new(r))
    }

    async fn replicate(
        &self,
        req: Request<Streaming<pb::ReplicaMessage>>,
    ) -> Result<Response<Self::ReplicateStream>, Status> {
        self.node.check_accepting()?;
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(DEAD_AFTER, inbound.next())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello from the replica"))?;
        let hello = match first {
            Some(Ok(pb::ReplicaMessage {
                msg: Some(pb::replica_message::Msg::Hello(h)),
            })) => h,
            Some(Err(s)) => return Err(s),
            _ => {
                return Err(Status::invalid_argument(
                    "a replication stream starts with a hello",
                ))
            }
        };
        check_cluster(&self.node, &hello.cluster_id)?;
        let ours = self.node.role.epoch();
        if hello.node_epoch > ours {
            // Someone was promoted past us: we must not lead anyone, nor take writes.
            self.node.role.fence(hello.node_epoch);
            return Err(Status::failed_precondition(format!(
                "this node's epoch {ours} is behind the replica's epoch {}; it is stale and \
                 cannot be an upstream",
                hello.node_epoch
            )));
        }
        let (tx, rx) = mpsc::channel(OUTBOUND_BUFFER);
        let node = self.node.clone();
        tokio::spawn(async move {
            if let Err(s) = run_session(node, hello, inbound, tx.clone()).await {
                tracing::warn!(status = %s, "replication session ended");
                let _ = tx.send(Err(s)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
