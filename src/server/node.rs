//! What every service shares: storage, role and epoch, replicas, ack tracking, the
//! catalog version (bumped when logs come and go), the shutdown flag.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use spool_storage::Storage;
use tokio::sync::watch;
use tonic::Status;

use super::auth::{Auth, Role};
use super::catalog::Catalog;
use super::failover::{AdminOp, ClusterStatus};
use super::replication::acks::AckRuntime;
use super::replication::delay::Delay;
use super::replication::follower::UpstreamView;
use super::replication::progress::Replicas;
use super::role::RoleState;
use super::visible::{Visibility, Visible};
use super::weak_acks::WeakAcks;
use crate::config::{DefaultAck, ReplicationConfig};

/// One node's shared state, reached through narrow handles: the catalog of logs, the role
/// and epoch store, the replicas and the ack sink, what readers may see.
#[derive(Debug)]
pub struct Node {
    catalog: Catalog,
    started: Instant,
    role: RoleState,
    config: ReplicationConfig,
    default_ack: DefaultAck,
    replicas: Replicas,
    acks: Arc<AckRuntime>,
    upstream: Arc<Mutex<UpstreamView>>,
    visibility: Visibility,
    /// True while the follower task runs: a promotion at a point waits for it to stop
    /// before cutting the logs, so that no frame lands after the cut.
    follower_running: watch::Sender<bool>,
    promoted: watch::Sender<bool>,
    shutting_down: AtomicBool,
    shutdown_tx: watch::Sender<bool>,
    subscribers: AtomicI64,
    /// Until when (ms since start) frames sent downstream ask for a sync because frames
    /// from upstream did: a replica in the middle of a tree passes the request on.
    sync_requested_until_ms: AtomicU64,
    /// Logs this primary is taking back records for from a replica (see `repair`): no
    /// writes until it has them. The value: why the last attempt failed, if it did.
    taking_back: Mutex<HashMap<String, TakeBack>>,
    /// The cluster agent's view (with a coordinator only).
    cluster: std::sync::OnceLock<Arc<Mutex<ClusterStatus>>>,
    /// The tokens this node checks (`[auth]`), for what the gRPC layer does not see.
    auth: std::sync::OnceLock<Arc<Auth>>,
    /// Requests for the cluster agent (switchover, failover).
    cluster_ops: std::sync::OnceLock<tokio::sync::mpsc::Sender<AdminOp>>,
    /// A peer's hint that the leader key changed: the cluster agent's next round runs now.
    cluster_wake: tokio::sync::Notify,
    /// With `[tls]`: how this node dials its peers (upstream, segment fetch, repair).
    peer_tls: std::sync::OnceLock<crate::tls::TlsOptions>,
    /// Records acknowledged here without replicas, counted if a failover cuts them.
    weak_acks: WeakAcks,
}

#[derive(Debug, Clone, Default)]
struct TakeBack {
    running: bool,
    failed: Option<String>,
}

impl Node {
    /// `delay`: the state of a delayed replica (`--delay`).
    pub fn new(
        storage: Storage,
        role: RoleState,
        config: ReplicationConfig,
        default_ack: DefaultAck,
        delay: Option<Arc<Delay>>,
    ) -> Self {
        let acks = AckRuntime::new(config.ack_config());
        Node {
            catalog: Catalog::new(storage),
            started: Instant::now(),
            role,
            config,
            default_ack,
            replicas: Replicas::default(),
            acks,
            upstream: Arc::default(),
            visibility: delay.map(Visibility::delayed).unwrap_or_default(),
            follower_running: watch::Sender::new(false),
            promoted: watch::Sender::new(false),
            shutting_down: AtomicBool::new(false),
            shutdown_tx: watch::Sender::new(false),
            subscribers: AtomicI64::new(0),
            sync_requested_until_ms: AtomicU64::new(0),
            taking_back: Mutex::new(HashMap::new()),
            cluster: std::sync::OnceLock::new(),
            cluster_ops: std::sync::OnceLock::new(),
            cluster_wake: tokio::sync::Notify::new(),
            peer_tls: std::sync::OnceLock::new(),
            auth: std::sync::OnceLock::new(),
            weak_acks: WeakAcks::default(),
        }
    }

    /// The records this node acknowledged as primary without replicas (async, written).
    pub fn weak_acks(&self) -> &WeakAcks {
        &self.weak_acks
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The storage (see [`Catalog::storage`]).
    pub fn storage(&self) -> &Storage {
        self.catalog.storage()
    }

    /// The role and epoch store.
    pub fn role(&self) -> &RoleState {
        &self.role
    }

    /// How this node dials its peers: TLS with its own certificate, when it serves TLS.
    pub fn peer_tls(&self) -> Option<&crate::tls::TlsOptions> {
        self.peer_tls.get()
    }

    pub fn set_peer_tls(&self, tls: crate::tls::TlsOptions) {
        let _ = self.peer_tls.set(tls);
    }

    pub fn config(&self) -> &ReplicationConfig {
        &self.config
    }

    pub fn default_ack(&self) -> DefaultAck {
        self.default_ack
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// The replicas attached here and how far each got.
    pub fn replicas(&self) -> &Replicas {
        &self.replicas
    }

    /// The ack sink: appends waiting for replicas, and the replicas' acks.
    pub fn acks(&self) -> &Arc<AckRuntime> {
        &self.acks
    }

    /// What the follower knows of its upstream (for status).
    pub fn upstream_view(&self) -> &Arc<Mutex<UpstreamView>> {
        &self.upstream
    }

    pub fn visibility(&self) -> &Visibility {
        &self.visibility
    }

    pub fn follower_running(&self) -> &watch::Sender<bool> {
        &self.follower_running
    }

    /// What readers may see of `log` (bounded by the horizon on a delayed replica).
    pub fn visible(&self, log: &spool_storage::Log) -> Visible {
        self.visibility.of(log)
    }

    /// A delayed replica that was not promoted.
    pub fn active_delay(&self) -> Option<&Arc<Delay>> {
        self.visibility.active_delay()
    }

    /// Logs were created or deleted: replication sessions look again.
    /// The upstream sent frames asking for a sync (someone up there waits on acks).
    pub fn upstream_requested_sync(&self) {
        let until = self.started.elapsed().as_millis() as u64 + 1000;
        self.sync_requested_until_ms
            .fetch_max(until, Ordering::AcqRel);
    }

    /// Whether frames sent to replicas now should ask them to sync at once.
    pub fn replicas_should_sync(&self) -> bool {
        self.acks.replicas_awaited()
            || self.started.elapsed().as_millis() as u64
                <= self.sync_requested_until_ms.load(Ordering::Acquire)
    }

    pub fn catalog_changed(&self) {
        self.catalog.changed();
    }

    pub fn mark_promoted(&self) {
        self.promoted.send_replace(true);
    }

    pub fn set_cluster_status(&self, s: Arc<Mutex<ClusterStatus>>) {
        let _ = self.cluster.set(s);
    }

    pub fn cluster_status(&self) -> Option<&Arc<Mutex<ClusterStatus>>> {
        self.cluster.get()
    }

    pub fn set_auth(&self, auth: Arc<Auth>) {
        let _ = self.auth.set(auth);
    }

    /// A segment fetch's token, or else its client certificate, must name a principal
    /// with the replica role (auth on).
    pub fn check_replica(&self, token: &str, cert: &[String]) -> Result<(), Status> {
        let Some(auth) = self.auth.get() else {
            return Ok(());
        };
        let header = (!token.is_empty()).then(|| format!("Bearer {token}"));
        let p = auth.authenticate(header.as_deref(), cert)?;
        if !p.has(Role::Replica) {
            return Err(super::auth::denied(&p, Role::Replica, "segment fetch"));
        }
        Ok(())
    }

    pub fn set_cluster_ops(&self, tx: tokio::sync::mpsc::Sender<AdminOp>) {
        let _ = self.cluster_ops.set(tx);
    }

    /// Hand `op` to the cluster agent; FAILED_PRECONDITION without a coordinator.
    pub async fn cluster_op(&self, op: AdminOp) -> Result<(), Status> {
        let tx = self.cluster_ops.get().ok_or_else(|| {
            Status::failed_precondition("this node runs without a coordinator (--cluster)")
        })?;
        tx.send(op)
            .await
            .map_err(|_| Status::unavailable("the cluster agent stopped"))
    }

    /// Run the cluster agent's next round now. Hints while a round runs collapse into
    /// one: a round reads the coordinator afresh, so one more is all any hint needs.
    pub fn wake_cluster_agent(&self) {
        self.cluster_wake.notify_one();
    }

    /// Resolves when [`Node::wake_cluster_agent`] was called (or had been, unconsumed).
    pub async fn cluster_woken(&self) {
        self.cluster_wake.notified().await;
    }

    /// A primary stepped down to follow another: a follower may run again.
    pub fn mark_demoted(&self) {
        self.promoted.send_replace(false);
    }

    pub async fn promoted(&self) {
        let mut rx = self.promoted.subscribe();
        let _ = rx.wait_for(|&p| p).await;
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.shutdown_tx.send_replace(true);
    }

    /// Resolves once shutdown began (long-lived streams end on it).
    pub async fn shutdown_started(&self) {
        let mut rx = self.shutdown_tx.subscribe();
        let _ = rx.wait_for(|&s| s).await;
    }

    /// UNAVAILABLE once shutdown began: clients retry on another node or after restart.
    pub fn check_accepting(&self) -> Result<(), Status> {
        if self.is_shutting_down() {
            Err(Status::unavailable(
                "server is shutting down; retry after it restarts",
            ))
        } else {
            Ok(())
        }
    }

    /// Writes need a primary that is not fenced and, if configured, enough replicas.
    pub fn check_writable(&self) -> Result<(), Status> {
        self.check_accepting()?;
        self.role.check_writable()?;
        let need = self.config.min_replicas_to_write;
        if need > 0 {
            let have = self
                .replicas
                .attached_within(self.config.min_replicas_max_lag);
            if have < need {
                return Err(Status::failed_precondition(format!(
                    "min-replicas-to-write: {have} replica(s) attached within {:?}, {need} required; \
                     writes resume when enough replicas are attached",
                    self.config.min_replicas_max_lag
                )));
            }
        }
        Ok(())
    }

    /// Start taking records of `log` back; false if that is under way already.
    pub fn begin_take_back(&self, log: &str) -> bool {
        let mut m = self.taking_back.lock();
        let t = m.entry(log.to_owned()).or_default();
        if t.running {
            return false;
        }
        t.running = true;
        true
    }

    /// Taking back records of `log` ended: writes resume if it got them.
    pub fn end_take_back(&self, log: &str, ok: bool) {
        let mut m = self.taking_back.lock();
        if ok {
            m.remove(log);
        } else if let Some(t) = m.get_mut(log) {
            t.running = false;
            t.failed = Some("the replica that holds them went away".into());
        }
    }

    /// A promotion starts a new epoch: records only a replica held are given up by choice.
    pub fn forget_take_backs(&self) {
        self.taking_back.lock().clear();
    }

    /// UNAVAILABLE while this primary takes back records of `log` it lost.
    pub fn check_log_writable(&self, log: &str) -> Result<(), Status> {
        match self.taking_back.lock().get(log) {
            None => Ok(()),
            Some(t) => Err(Status::unavailable(format!(
                "log {log:?} lost records that a replica holds; this primary takes them back \
                 before the next write{}; retry shortly (or promote a node to a new epoch to \
                 give them up)",
                t.failed
                    .as_ref()
                    .map_or(String::new(), |f| format!(" (last attempt: {f})"))
            ))),
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Count an open subscriber until the guard drops.
    pub fn subscriber(self: &Arc<Self>) -> SubscriberGuard {
        let n = self.subscribers.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!("spool_subscribers").set(n as f64);
        SubscriberGuard(self.clone())
    }
}

#[derive(Debug)]
pub struct SubscriberGuard(Arc<Node>);

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        let n = self.0.subscribers.fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!("spool_subscribers").set(n as f64);
    }
}
