//! The upstream side of replication: one session per connected replica, streaming frames
//! read from the mmap'd segments exactly as stored, and taking the replica's acks.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;

use tokio::time::Instant;

use futures::Stream;
use spool_proto::v1 as pb;
use spool_replication::divergence::Decision;
use spool_replication::handshake::{Credit, Plan};
use spool_replication::sender::Fetch;
use spool_storage::Log;

use super::plan::{plan_for, replica_log, start_message};
use super::sending::{msg, LogStream, Out};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::server::auth::{check_replica_id, Principal};
use crate::server::node::Node;

/// Messages buffered towards one replica: a slow replica holds its sender back.
const OUTBOUND_BUFFER: usize = 16;
pub use spool_replication::follow::{DEAD_AFTER, HEARTBEAT_EVERY};

#[derive(Debug, Clone)]
pub struct ReplicationService {
    pub node: Arc<Node>,
}

/// How far each log was sent to one replica, shared by its senders and its session: its
/// acks count up to there, never beyond.
pub type SentTo = Arc<parking_lot::Mutex<HashMap<String, Sent>>>;

/// How far one log was sent to a replica (or checked as held at its plan).
#[derive(Debug, Clone, Copy, Default)]
pub struct Sent {
    pub to: u64,
    /// Whether what it was sent continues what it was credited with: false while part of
    /// what it claimed at hello below where sending starts is unchecked, and `to` stays.
    pub credited: bool,
}

impl Sent {
    /// Frames up to `to` were sent (or the replica was checked to hold them).
    pub fn reached(&mut self, to: u64) {
        if self.credited {
            self.to = self.to.max(to);
        }
    }
}

struct Session {
    node: Arc<Node>,
    id: String,
    /// Where the replica serves (its hello's listen address).
    addr: String,
    /// The address the stream came from (None: not known).
    peer: Option<std::net::IpAddr>,
    /// Whether the peer was authenticated (auth is on).
    authenticated: bool,
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
    /// Per log, how far this replica was sent (or held at its plan): its acks count up to
    /// there, never beyond, whatever it claims.
    sent: SentTo,
}

impl Session {
    /// Start senders for logs the replica does not get yet; tell it about deleted ones.
    /// Each log's plan settles what the replica holds of it, which is what it counts for
    /// (never its end before a cut it is told to make).
    async fn sync_catalog(&mut self) -> Result<(), Status> {
        let storage = self.node.storage().clone();
        let names = storage.list_logs();
        for name in &names {
            if self.tasks.contains_key(name) {
                continue;
            }
            let Ok(log) = storage.log(name) else { continue };
            let task = self.start_log(log).await?;
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

    /// Make `log`'s plan for this replica, tell it, and start what follows: a stream of
    /// its frames (from where the plan puts it, or once this node has what the replica is
    /// ahead with), and, on a primary that lost records the replica holds, taking them
    /// back. What the replica holds after the plan is what it counts for.
    async fn start_log(&mut self, log: Log) -> Result<JoinHandle<()>, Status> {
        let name = log.name().to_owned();
        // Before deciding: a cut after this is one the decision may not have seen.
        let cuts = log.reader().cut_count();
        let reported = self.hello_logs.remove(&name);
        let planned = plan_for(&self.node, &log, reported.as_ref())?;
        let (plan, resume) = (planned.plan, planned.resume);
        self.hold(&name, planned.credit);
        let visible = self.node.visible(&log);
        let start = start_message(&visible, &log, &plan, planned.own_records_from, self.fetch);
        self.send(pb::upstream_message::Msg::Start(start)).await?;
        let replicas = &self.node.replicas();
        replicas.set_blocked(&self.id, &name, plan.blocked_reason());
        if matches!(
            plan,
            Plan::Follow(Decision::FullSync { .. }) | Plan::Recreate { .. }
        ) {
            replicas.full_sync_started(&self.id, &name, visible.end());
        }
        let stream = LogStream {
            node: self.node.clone(),
            replica: self.id.clone(),
            log: log.clone(),
            out: self.out.clone(),
            fetch: self.fetch,
            cuts,
            sent: self.sent.clone(),
        };
        Ok(match (&plan, plan.continue_from()) {
            (
                Plan::Follow(Decision::Ahead {
                    upstream_end,
                    replica_end,
                }),
                _,
            ) => {
                let behind = (*upstream_end, *replica_end);
                let last = reported.as_ref().map(|r| replica_log(r).last_frame);
                if self.node.role().is_primary() {
                    // This primary lost records the replica holds: it takes them back
                    // before it takes another write to the log.
                    let from = self.take_back_from();
                    crate::server::repair::spawn_take_back(self.node.clone(), log, from, behind);
                }
                tokio::spawn(stream.run_when_there(behind, last.flatten()))
            }
            (_, Some(from)) => tokio::spawn(stream.run(from, resume)),
            (_, None) => tokio::spawn(async {}),
        })
    }

    /// The replica holds `log` up to `credit.counted`, as far as its plan checked it.
    fn hold(&mut self, log: &str, credit: Credit) {
        let end = credit.counted;
        let sent = Sent {
            to: end,
            credited: credit.whole,
        };
        self.sent.lock().insert(log.to_owned(), sent);
        self.node.replicas().set_acked(&self.id, log, end);
        if self.node.role().is_primary() {
            self.node.acks().holds(&self.id, log, end);
        }
        if !self.tracked {
            self.held.push((log.to_owned(), end));
        }
    }

    /// Where records are taken back from this replica: with a coordinator, the address
    /// its member record publishes; else the one its hello gives, which must be on the
    /// host the stream came from. The peer picks neither where this node sends its
    /// token nor whom it takes records from.
    fn take_back_from(&self) -> crate::server::repair::PeerAddr {
        let member = self.node.cluster_status().map(|s| {
            let s = s.lock();
            let m = s.members.iter().find(|m| m.node == self.id);
            m.map(|m| m.addr.clone()).unwrap_or_default()
        });
        match member {
            Some(addr) => crate::server::repair::PeerAddr { addr, host: None },
            None => crate::server::repair::PeerAddr {
                addr: self.addr.clone(),
                host: self.peer,
            },
        }
    }

    /// Queue a message, giving up if the replica reads nothing for [`DEAD_AFTER`].
    async fn send(&self, m: pb::upstream_message::Msg) -> Result<(), Status> {
        let m = msg(self.node.role().epoch(), m);
        match tokio::time::timeout(DEAD_AFTER, self.out.send(m)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Status::cancelled("replica went away")),
            Err(_) => Err(Status::deadline_exceeded(
                "replica read nothing: connection presumed dead",
            )),
        }
    }

    fn heartbeat(&self) -> pb::upstream_message::Msg {
        let storage = &self.node.storage();
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
            node_epoch: self.node.role().epoch(),
            ends,
            primary_addr: self.node.role().primary_addr().unwrap_or_default(),
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
    (hello, peer, authenticated): (pb::ReplicaHello, Option<std::net::IpAddr>, bool),
    inbound: Streaming<pb::ReplicaMessage>,
    out: Out,
) -> Result<(), Status> {
    let counts = !hello.delayed || node.config().delayed_counts_for_acks;
    // Its positions come from the plans below, not from the ends its hello reports.
    let generation = node.replicas().connect(
        &hello.replica_id,
        &hello.listen_addr,
        hello.sync,
        hello.delayed,
        counts && node.role().is_primary(),
        HashMap::new(),
    );
    tracing::info!(replica = %hello.replica_id, addr = %hello.listen_addr, sync = hello.sync, "replica attached");
    let sync = hello.sync;
    let mut session = Session::new(node.clone(), hello, (peer, authenticated), out);
    let result = session.serve(sync, counts, inbound).await;
    session.detach(generation);
    result
}

impl Session {
    fn new(
        node: Arc<Node>,
        hello: pb::ReplicaHello,
        (peer, authenticated): (Option<std::net::IpAddr>, bool),
        out: Out,
    ) -> Session {
        Session {
            node,
            id: hello.replica_id.clone(),
            addr: hello.listen_addr.clone(),
            peer,
            authenticated,
            held: Vec::new(),
            tracked: false,
            out,
            tasks: HashMap::new(),
            hello_logs: hello
                .logs
                .into_iter()
                .map(|l| (l.name.clone(), l))
                .collect(),
            cascaded: HashSet::new(),
            sent: SentTo::default(),
            fetch: Fetch {
                sealed: hello.segment_fetch,
                active: hello.segment_fetch && hello.fetch_active_spans,
            },
        }
    }

    /// Answer the hello, plan every log, then serve the stream until it ends.
    async fn serve(
        &mut self,
        sync: bool,
        counts: bool,
        inbound: Streaming<pb::ReplicaMessage>,
    ) -> Result<(), Status> {
        let node = self.node.clone();
        let upstream_id = node.role().listen_addr.read().clone();
        self.send(pb::upstream_message::Msg::Hello(pb::UpstreamHello {
            node_epoch: node.role().epoch(),
            primary_addr: node.role().primary_addr().unwrap_or_default(),
            upstream_id,
            cluster_id: node.role().cluster_id(),
        }))
        .await?;
        self.sync_catalog().await?;
        if node.role().is_primary() {
            // Known to the tracker only now, with what its plans settled: a replica that
            // reconnects never counts for its acks of records it no longer holds.
            node.acks().connected(&self.id, sync, counts);
            for (log, end) in std::mem::take(&mut self.held) {
                node.acks().holds(&self.id, &log, end);
            }
        }
        self.tracked = true;
        self.follow(inbound).await
    }

    /// Take the replica's messages, follow the catalog, heartbeat, and judge silence.
    async fn follow(&mut self, mut inbound: Streaming<pb::ReplicaMessage>) -> Result<(), Status> {
        let node = self.node.clone();
        let mut catalog = node.catalog().subscribe();
        let mut beat = tokio::time::interval(HEARTBEAT_EVERY);
        let mut last_heard = Instant::now();
        let session_epoch = node.role().epoch();
        loop {
            tokio::select! {
                biased;
                m = inbound.next() => {
                    last_heard = Instant::now();
                    match m {
                        None => return Ok(()),
                        // Its connection broke (the replica stopped or crashed): a
                        // replica going away, said where it detaches, not an error here.
                        Some(Err(s)) => {
                            tracing::info!(replica = %self.id, status = %s, "replica's stream broke");
                            return Ok(());
                        }
                        Some(Ok(m)) => self.on_message(m)?,
                    }
                }
                // The replica acks at least every heartbeat; silence means it is gone (or
                // frozen: its TCP connection alone would keep the session forever).
                _ = tokio::time::sleep_until(last_heard + DEAD_AFTER) => {
                    return Err(Status::deadline_exceeded("replica silent: connection presumed dead"));
                }
                changed = catalog.changed() => {
                    if changed.is_err() { return Ok(()) }
                    self.sync_catalog().await?;
                }
                _ = beat.tick() => {
                    if node.role().is_primary() && node.role().epoch() != session_epoch {
                        // Promoted (maybe after cutting its logs at a point): the replica
                        // reconnects and its tail is decided again against the new history.
                        return Ok(());
                    }
                    // Never wait on a full queue: the session must keep watching for silence.
                    if let Err(mpsc::error::TrySendError::Closed(_)) =
                        self.out.try_send(msg(node.role().epoch(), self.heartbeat()))
                    {
                        return Err(Status::cancelled("replica went away"));
                    }
                }
                _ = node.shutdown_started() => return Ok(()),
            }
        }
    }

    /// The stream ended: its senders stop, and the replica no longer counts for acks.
    fn detach(&mut self, generation: u64) {
        for (_, t) in self.tasks.drain() {
            t.abort();
        }
        let node = &self.node;
        node.replicas().disconnect(&self.id, generation);
        if node.role().is_primary() {
            node.acks().disconnected(&self.id);
            for id in &self.cascaded {
                node.acks().disconnected(id);
            }
        }
        tracing::info!(replica = %self.id, "replica detached");
    }
}

impl Session {
    fn on_message(&mut self, m: pb::ReplicaMessage) -> Result<(), Status> {
        match m.msg {
            Some(pb::replica_message::Msg::Acks(acks)) => {
                let ours = self.node.role().epoch();
                if acks.node_epoch > ours {
                    check_claimed_epoch(&self.node, acks.node_epoch)?;
                    self.check_ack_epoch(acks.node_epoch)?;
                    // The replica follows a newer primary's epoch: its acks say nothing of
                    // this node's records, and this node no longer leads.
                    self.node.role().fence(acks.node_epoch);
                    return Err(Status::failed_precondition(format!(
                        "the replica is at epoch {}, this node at {ours}: a newer primary \
                         leads; this node counts no ack of it",
                        acks.node_epoch
                    )));
                }
                self.node.replicas().heard(&self.id);
                for mut a in acks.acks {
                    let sent = self.sent.lock().get(&a.log).map_or(0, |s| s.to);
                    if a.durable_end > sent {
                        tracing::warn!(replica = %self.id, log = %a.log, acked = a.durable_end, sent, "a replica acked past what it was sent: counted up to what was sent");
                        a.durable_end = sent;
                    }
                    self.node.replicas().ack(&self.id, &a.log, a.durable_end);
                    if self.node.role().is_primary() {
                        self.node.acks().acked(&self.id, &a.log, a.durable_end);
                    }
                }
                if self.node.role().is_primary() && self.node.config().cascaded_counts_for_acks {
                    self.count_cascaded(&acks.downstream);
                }
                self.node
                    .replicas()
                    .set_downstream(&self.id, acks.downstream);
            }
            Some(pb::replica_message::Msg::Hello(_)) | None => {}
        }
        Ok(())
    }
}

impl Session {
    /// Without a coordinator, a replica's epoch moves during a session only through this
    /// node (it follows nothing else): with auth on, a newer epoch in its acks is refused
    /// and ends the session rather than fencing this node.
    fn check_ack_epoch(&self, claimed: u64) -> Result<(), Status> {
        if self.node.cluster_status().is_some() || !self.authenticated {
            return Ok(());
        }
        tracing::warn!(replica = %self.id, claimed, "a replica's acks claim a newer epoch than its session's: refused, not fenced");
        Err(Status::permission_denied(format!(
            "acks claim epoch {claimed}, which this session never gave: not believed without \
             a coordinator"
        )))
    }

    /// The replicas below this one count for acks like direct ones (configured so):
    /// attached while it reports them, with the durable ends it forwards.
    fn count_cascaded(&mut self, downstream: &[pb::DownstreamReplica]) {
        let node = &self.node;
        let reported: HashSet<String> = downstream
            .iter()
            .filter(|d| !d.delayed || node.config().delayed_counts_for_acks)
            .map(|d| d.replica_id.clone())
            .collect();
        for gone in self.cascaded.difference(&reported) {
            node.acks().disconnected(gone);
        }
        for d in downstream
            .iter()
            .filter(|d| reported.contains(&d.replica_id))
        {
            if !self.cascaded.contains(&d.replica_id) {
                tracing::info!(replica = %d.replica_id, via = %self.id, "cascaded replica counts for acks");
                node.acks().connected(&d.replica_id, d.sync, true);
            }
            for a in &d.acks {
                // Below this replica, a replica holds at most what this node sent it.
                let sent = self.sent.lock().get(&a.log).map_or(0, |s| s.to);
                node.acks()
                    .acked(&d.replica_id, &a.log, a.durable_end.min(sent));
            }
        }
        self.cascaded = reported;
    }
}

/// A peer of another cluster (or this node in none yet) is refused.
pub fn check_cluster(node: &Node, theirs: &str) -> Result<(), Status> {
    let ours = node.role().cluster_id();
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

    async fn look_now(
        &self,
        req: Request<pb::LookNowRequest>,
    ) -> Result<Response<pb::LookNowResponse>, Status> {
        self.node.check_accepting()?;
        let req = req.into_inner();
        check_cluster(&self.node, &req.cluster_id)?;
        if self.node.cluster_status().is_none() {
            return Err(Status::failed_precondition(
                "this node runs without a coordinator (--cluster)",
            ));
        }
        tracing::debug!(from = %req.from_node, "a peer says the leader key changed: looking now");
        self.node.wake_cluster_agent();
        Ok(Response::new(pb::LookNowResponse {}))
    }

    async fn replicate(
        &self,
        req: Request<Streaming<pb::ReplicaMessage>>,
    ) -> Result<Response<Self::ReplicateStream>, Status> {
        self.node.check_accepting()?;
        let peer = req
            .extensions()
            .get::<crate::server::idle::ConnInfo>()
            .map(|c| c.peer.ip().to_canonical());
        let principal = req.extensions().get::<Principal>().cloned();
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
        check_replica_id(principal.as_ref(), &hello.replica_id)?;
        check_member(&self.node, &hello.replica_id)?;
        let ours = self.node.role().epoch();
        if hello.node_epoch > ours {
            check_claimed_epoch(&self.node, hello.node_epoch)?;
            if self.node.cluster_status().is_none() {
                check_hello_backs_epoch(principal.is_some(), &hello)?;
            }
            // Someone was promoted past us: we must not lead anyone, nor take writes.
            self.node.role().fence(hello.node_epoch);
            return Err(Status::failed_precondition(format!(
                "this node's epoch {ours} is behind the replica's epoch {}; it is stale and \
                 cannot be an upstream",
                hello.node_epoch
            )));
        }
        let (tx, rx) = mpsc::channel(OUTBOUND_BUFFER);
        let node = self.node.clone();
        let from = (hello, peer, principal.is_some());
        tokio::spawn(async move {
            if let Err(s) = run_session(node, from, inbound, tx.clone()).await {
                tracing::warn!(status = %s, "replication session ended");
                let _ = tx.send(Err(s)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// With a coordinator, a peer's claim of a newer epoch is believed only if the coordinator
/// began it: a claim past the cluster's epoch key is refused instead of fencing this node.
fn check_claimed_epoch(node: &Node, claimed: u64) -> Result<(), Status> {
    let Some(status) = node.cluster_status() else {
        return Ok(());
    };
    let known = status.lock().cluster_epoch;
    if claimed > known {
        tracing::warn!(
            claimed,
            known,
            "a peer claims an epoch the coordinator never began: refused"
        );
        return Err(Status::permission_denied(format!(
            "epoch {claimed} was never begun in the coordinator (its latest is {known})"
        )));
    }
    Ok(())
}

/// Without a coordinator and with auth on, a hello's newer epoch fences this node only if
/// its history backs it: one of its logs has that epoch begun (the promoted node's logs
/// do, as do its replicas' once it wrote). The peer is an authenticated replica principal
/// replicating in its own name; a bare number from it fences nothing. Without auth every
/// peer is trusted alike (the node takes admin calls from anyone too).
fn check_hello_backs_epoch(authenticated: bool, hello: &pb::ReplicaHello) -> Result<(), Status> {
    let claimed = hello.node_epoch;
    let backed = hello
        .logs
        .iter()
        .any(|l| l.last_epoch == claimed || l.epochs.iter().any(|e| e.epoch == claimed));
    if !authenticated || backed {
        return Ok(());
    }
    tracing::warn!(
        replica = %hello.replica_id,
        claimed,
        "a peer claims a newer epoch no log of its hello began: refused, not fenced"
    );
    Err(Status::permission_denied(format!(
        "epoch {claimed} is claimed without a log that began it: this node is not fenced by \
         a number alone (an operator fences it by stopping it, or a coordinator's epoch)"
    )))
}

/// With a coordinator, only the cluster's members replicate: a peer whose name is not
/// among the members the agent last saw is refused (it retries once it is registered).
fn check_member(node: &Node, replica_id: &str) -> Result<(), Status> {
    let Some(status) = node.cluster_status() else {
        return Ok(());
    };
    let status = status.lock();
    if status.members.iter().any(|m| m.node == replica_id) {
        return Ok(());
    }
    Err(Status::permission_denied(format!(
        "{replica_id:?} is not a member of cluster {:?}: start it with --cluster (the same \
         coordinator and cluster name) to replicate",
        status.name
    )))
}
