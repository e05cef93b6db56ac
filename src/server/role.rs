//! The node's role (primary or replica of an upstream), its identity and epoch, and fencing.
//!
//! Persisted in `DATA_DIR/node` (versioned, CRC'd, replaced atomically), before use:
//! - `cluster_id`: set at the first primary's start, copied by a replica at its first
//!   handshake; every handshake checks it, so a node never follows another cluster;
//! - `epoch`: a promotion writes the new epoch, then starts it in every log, then takes
//!   writes; a replica adopts its upstream's;
//! - `led_epoch`: the last epoch this node began as primary. A node restarted with a stale
//!   `--replica-of` pointing at a node that is not past that epoch (its own follower) goes
//!   on as the primary instead of following it.
//!
//! `node-epoch`, the file of earlier versions (epoch only), is read when `node` is missing.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use parking_lot::RwLock;
use tonic::metadata::MetadataValue;
use tonic::Status;

const NODE_FILE: &str = "node";
const NODE_FORMAT: &str = "spool-node";
const OLD_EPOCH_FILE: &str = "node-epoch";

/// Metadata key carrying the primary's address on a refused write.
pub const PRIMARY_METADATA: &str = "spool-primary";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica { upstream: String },
}

/// What `DATA_DIR/node` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeIdentity {
    pub cluster_id: String,
    pub epoch: u64,
    pub led_epoch: u64,
}

impl NodeIdentity {
    pub fn load(dir: &Path) -> Result<NodeIdentity> {
        let path = dir.join(NODE_FILE);
        let Some(pairs) = spool_storage::meta::read_kv(&path, NODE_FORMAT)? else {
            return Ok(NodeIdentity {
                epoch: read_old_epoch(&dir.join(OLD_EPOCH_FILE))?,
                ..NodeIdentity::default()
            });
        };
        let mut id = NodeIdentity::default();
        for (k, v) in pairs {
            let num = || {
                v.parse::<u64>()
                    .with_context(|| format!("{}: {k}={v}", path.display()))
            };
            match k.as_str() {
                "cluster_id" => id.cluster_id = v.clone(),
                "epoch" => id.epoch = num()?,
                "led_epoch" => id.led_epoch = num()?,
                _ => {}
            }
        }
        Ok(id)
    }

    fn save(&self, dir: &Path) -> Result<()> {
        let lines = vec![
            format!("cluster_id={}", self.cluster_id),
            format!("epoch={}", self.epoch),
            format!("led_epoch={}", self.led_epoch),
        ];
        spool_storage::meta::write_kv(&dir.join(NODE_FILE), NODE_FORMAT, &lines)
            .with_context(|| format!("saving {}", dir.join(NODE_FILE).display()))
    }
}

fn read_old_epoch(path: &Path) -> Result<u64> {
    match std::fs::read_to_string(path) {
        Ok(s) => s
            .lines()
            .find_map(|l| l.strip_prefix("epoch="))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("unreadable node epoch file {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// A fresh cluster id: 128 random bits as 32 hex digits.
pub fn new_cluster_id() -> String {
    let (a, b) = (
        spool_storage::meta::new_incarnation(),
        spool_storage::meta::new_incarnation(),
    );
    format!("{a:016x}{b:016x}")
}

#[derive(Debug)]
pub struct RoleState {
    role: RwLock<Role>,
    epoch: AtomicU64,
    dir: PathBuf,
    /// The persisted identity as readers see it; changed only through `update`, which
    /// saves it first, off the async workers and without holding this lock meanwhile.
    identity: RwLock<NodeIdentity>,
    /// Serialises changes (held across the save), so a save never overwrites a newer one.
    changing: tokio::sync::Mutex<()>,
    /// Where writes go, as told by the upstream (the root of the tree).
    primary_addr: RwLock<Option<String>>,
    fenced: AtomicBool,
    lease: LeaseGate,
    /// A switchover is handing the leadership over: no new writes.
    handing_over: AtomicBool,
    /// This node's own gRPC address, once bound.
    pub listen_addr: RwLock<String>,
}

impl RoleState {
    pub fn open(data_dir: &Path, role: Role) -> Result<RoleState> {
        let identity = NodeIdentity::load(data_dir)?;
        let state = RoleState {
            role: RwLock::new(role.clone()),
            epoch: AtomicU64::new(identity.epoch),
            dir: data_dir.to_owned(),
            identity: RwLock::new(identity),
            changing: tokio::sync::Mutex::new(()),
            primary_addr: RwLock::new(None),
            fenced: AtomicBool::new(false),
            lease: LeaseGate::default(),
            handing_over: AtomicBool::new(false),
            listen_addr: RwLock::new(String::new()),
        };
        if role == Role::Primary {
            // A primary writes in an epoch of at least 1 (0 means "none"), in a cluster of
            // its own unless it has one. A new cluster's first primary begins epoch 1; a
            // node that has an epoch already did not begin it by starting as a primary.
            // At start-up, before any task runs: saved in place.
            let mut id = state.identity.read().clone();
            if id.cluster_id.is_empty() {
                id.cluster_id = new_cluster_id();
            }
            if id.epoch == 0 {
                id.epoch = 1;
                id.led_epoch = 1;
            }
            if id != *state.identity.read() {
                id.save(data_dir)?;
                state.epoch.store(id.epoch, Ordering::Release);
                *state.identity.write() = id;
            }
        }
        Ok(state)
    }

    /// Change the identity, persisting it (on a blocking thread: an fsync, a rename and a
    /// directory fsync) before anyone sees the change.
    async fn update(&self, f: impl FnOnce(&mut NodeIdentity)) -> Result<()> {
        let _changing = self.changing.lock().await;
        let mut next = self.identity.read().clone();
        f(&mut next);
        if next == *self.identity.read() {
            return Ok(());
        }
        let (dir, saved) = (self.dir.clone(), next.clone());
        tokio::task::spawn_blocking(move || saved.save(&dir))
            .await
            .context("saving the node identity")??;
        self.epoch.store(next.epoch, Ordering::Release);
        *self.identity.write() = next;
        Ok(())
    }

    pub fn role(&self) -> Role {
        self.role.read().clone()
    }

    pub fn is_primary(&self) -> bool {
        *self.role.read() == Role::Primary
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The last epoch this node began as the primary (0: never).
    pub fn led_epoch(&self) -> u64 {
        self.identity.read().led_epoch
    }

    /// The cluster this node belongs to (empty: a replica that never reached an upstream).
    pub fn cluster_id(&self) -> String {
        self.identity.read().cluster_id.clone()
    }

    /// Join the upstream's cluster (a replica's first handshake), or check it is ours.
    pub async fn join_cluster(&self, id: &str) -> Result<()> {
        let ours = self.cluster_id();
        if id.is_empty() {
            bail!("the upstream belongs to no cluster yet (a replica that never reached its own upstream)");
        }
        if ours.is_empty() {
            tracing::info!(cluster_id = id, "joined the upstream's cluster");
            return self.update(|n| n.cluster_id = id.to_owned()).await;
        }
        if ours != id {
            bail!(
                "the upstream belongs to cluster {id}, this node to cluster {ours}: a node follows \
                 only nodes of its own cluster; point --replica-of at one of them, or start this \
                 node on a new data directory to join the other cluster"
            );
        }
        Ok(())
    }

    /// Take the coordinator's cluster id in place of this node's own, and forget the epochs
    /// of that other cluster (it led none of this one's): only for a node that holds no
    /// logs (the caller checks), so nothing it stores belongs to another cluster.
    pub async fn adopt_cluster(&self, id: &str) -> Result<()> {
        self.update(|n| {
            n.cluster_id = id.to_owned();
            n.epoch = 0;
            n.led_epoch = 0;
        })
        .await
    }

    /// Persist, then adopt, a higher epoch.
    pub async fn set_epoch(&self, epoch: u64) -> Result<()> {
        let current = self.epoch();
        if epoch < current {
            bail!("epoch {epoch} is lower than this node's epoch {current}");
        }
        if epoch == current {
            return Ok(());
        }
        self.update(|id| id.epoch = id.epoch.max(epoch)).await
    }

    /// Persist `epoch` as a new epoch this node leads (a promotion), before its first write.
    pub async fn begin_leading(&self, epoch: u64) -> Result<()> {
        let current = self.epoch();
        // An epoch this node only learnt (from a peer that followed it first) and never
        // led may still be begun: the coordinator gave it to this node alone.
        if epoch < current || (epoch == current && self.led_epoch() >= epoch) {
            bail!("epoch {epoch} is not past this node's epoch {current}");
        }
        self.update(|id| {
            id.epoch = epoch;
            id.led_epoch = epoch;
        })
        .await
    }

    pub fn set_primary_addr(&self, addr: Option<String>) {
        *self.primary_addr.write() = addr;
    }

    pub fn primary_addr(&self) -> Option<String> {
        match &*self.role.read() {
            Role::Primary => Some(self.listen_addr.read().clone()),
            Role::Replica { .. } => self.primary_addr.read().clone(),
        }
    }

    /// Become a replica of `upstream` (a primary that saw another leader steps down).
    pub fn become_replica(&self, upstream: &str) {
        *self.role.write() = Role::Replica {
            upstream: upstream.to_owned(),
        };
        self.set_primary_addr(Some(upstream.to_owned()));
        self.fenced.store(false, Ordering::Release);
    }

    /// Become primary (promotion): the caller has stopped following.
    pub fn become_primary(&self) {
        *self.role.write() = Role::Primary;
        self.fenced.store(false, Ordering::Release);
    }

    pub fn fence(&self, by_epoch: u64) {
        if !self.fenced.swap(true, Ordering::AcqRel) {
            tracing::error!(
                by_epoch,
                "a node at a higher epoch exists: this node is fenced and refuses writes; \
                 restart it with --replica-of the new primary"
            );
        }
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }

    /// From now on a primary acknowledges writes only while its coordinator lease holds.
    pub fn require_lease(&self) {
        self.lease.required.store(true, Ordering::Release);
    }

    /// The lease allows acknowledgements until `until` (None: not at all).
    pub fn set_lease_until(&self, until: Option<Instant>) {
        self.lease.set(until);
    }

    pub fn set_handing_over(&self, on: bool) {
        self.handing_over.store(on, Ordering::Release);
    }

    /// UNAVAILABLE when a lease is required and does not hold now.
    pub fn check_lease(&self) -> Result<(), Status> {
        if self.lease.holds(Instant::now()) {
            return Ok(());
        }
        Err(Status::unavailable(
            "this primary's lease in the coordinator is not renewed: it acknowledges no \
             writes until it is, or another node leads; retry (the client finds the primary)",
        ))
    }

    /// Whether records written in `written_epoch` may be acknowledged now. Never when the
    /// node left that epoch while they waited (it stepped down, maybe led again since):
    /// they may have been cut. Nor past the lease: a primary elected meanwhile may not
    /// hold them. A `duplicate` (a retry answered with the original batch, which the log
    /// holds now) is past the first check.
    pub fn check_ack(&self, written_epoch: u64, duplicate: bool) -> Result<(), AckRefused> {
        let now = self.epoch();
        if !duplicate && now != written_epoch {
            return Err(AckRefused::EpochLeft {
                written: written_epoch,
                now,
            });
        }
        if !self.lease.holds(Instant::now()) {
            return Err(AckRefused::LeaseLapsed);
        }
        Ok(())
    }

    /// FAILED_PRECONDITION unless this node may take writes; names the primary.
    pub fn check_writable(&self) -> Result<(), Status> {
        if self.is_fenced() {
            return Err(Status::failed_precondition(
                "this node is fenced: a node with a higher epoch was promoted; \
                 write to the new primary",
            ));
        }
        if self.handing_over.load(Ordering::Acquire) {
            return Err(Status::unavailable(
                "a switchover is handing this primary's role to another node: retry (the \
                 client finds the new primary)",
            ));
        }
        match &*self.role.read() {
            Role::Primary => self.check_lease(),
            Role::Replica { upstream } => {
                let primary = self.primary_addr.read().clone();
                let target = primary.clone().unwrap_or_else(|| upstream.clone());
                if target.is_empty() {
                    return Err(Status::unavailable(
                        "this node is a replica and no primary is known yet (the cluster is \
                         electing one): retry",
                    ));
                }
                let mut s = Status::failed_precondition(format!(
                    "this node is a replica; send writes to the primary at {target}"
                ));
                if let Ok(v) = MetadataValue::try_from(target.as_str()) {
                    s.metadata_mut().insert(PRIMARY_METADATA, v);
                }
                Err(s)
            }
        }
    }
}

/// Whether a primary's coordinator lease lets it acknowledge now. Not required (no
/// coordinator): always. Read on every append, so atomics against a fixed base instant.
#[derive(Debug)]
struct LeaseGate {
    required: AtomicBool,
    base: Instant,
    /// Nanoseconds past `base` until which acks are allowed (0: none).
    until_ns: AtomicU64,
}

impl Default for LeaseGate {
    fn default() -> Self {
        LeaseGate {
            required: AtomicBool::new(false),
            base: Instant::now(),
            until_ns: AtomicU64::new(0),
        }
    }
}

impl LeaseGate {
    fn set(&self, until: Option<Instant>) {
        let ns = until.map_or(0, |u| {
            u.saturating_duration_since(self.base).as_nanos() as u64
        });
        self.until_ns.store(ns, Ordering::Release);
    }

    fn holds(&self, now: Instant) -> bool {
        if !self.required.load(Ordering::Acquire) {
            return true;
        }
        let now_ns = now.saturating_duration_since(self.base).as_nanos() as u64;
        now_ns < self.until_ns.load(Ordering::Acquire)
    }
}

/// Why written records are not acknowledged (see [`RoleState::check_ack`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckRefused {
    EpochLeft { written: u64, now: u64 },
    LeaseLapsed,
}

impl AckRefused {
    /// The refusal of the append of records `first..next`: UNAVAILABLE, retry.
    pub fn status(self, first: u64, next: u64) -> Status {
        Status::unavailable(match self {
            AckRefused::EpochLeft { written, now } => format!(
                "records {first}..{next} were written in epoch {written}, but the primary \
                 changed while they waited (now epoch {now}): they may not be in the log; \
                 retry (an idempotent producer's retry is safe)"
            ),
            AckRefused::LeaseLapsed => format!(
                "records {first}..{next} were written here, but this primary's coordinator \
                 lease lapsed before they were acknowledged: a new primary may not hold \
                 them; retry (an idempotent producer's retry is safe)"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A primary whose append waited across a step-down and a later leadership of its
    /// own (the rounds bench lost acked records so): the wait ends in a refusal, never
    /// an ack, though the node leads again and its lease holds.
    #[tokio::test]
    async fn an_append_of_an_epoch_the_node_left_is_never_acked() {
        let d = tempfile::tempdir().unwrap();
        let role = RoleState::open(d.path(), Role::Primary).unwrap();
        let written = role.epoch();
        assert_eq!(role.check_ack(written, false), Ok(()));
        // Deposed: follows the next primary, learns its epoch, then leads again.
        role.become_replica("127.0.0.1:1");
        role.set_epoch(written + 1).await.unwrap();
        role.begin_leading(written + 2).await.unwrap();
        role.become_primary();
        assert_eq!(
            role.check_ack(written, false),
            Err(AckRefused::EpochLeft {
                written,
                now: written + 2
            })
        );
        assert_eq!(role.check_ack(written + 2, false), Ok(()));
        // A retry answered with the original batch: the log holds it now.
        assert_eq!(role.check_ack(written, true), Ok(()));
    }

    #[tokio::test]
    async fn nothing_is_acked_past_the_lease() {
        let d = tempfile::tempdir().unwrap();
        let role = RoleState::open(d.path(), Role::Primary).unwrap();
        role.require_lease();
        let e = role.epoch();
        assert_eq!(role.check_ack(e, false), Err(AckRefused::LeaseLapsed));
        role.set_lease_until(Some(Instant::now() + std::time::Duration::from_secs(60)));
        assert_eq!(role.check_ack(e, false), Ok(()));
    }
}
