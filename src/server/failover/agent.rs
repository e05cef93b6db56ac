//! The agent's loop: one round per tick against the coordinator.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::Status;

use parking_lot::Mutex;
use spool_replication::failover::{decide, Designated, LeaseClock, Member, Step, Vacancy, View};
use tokio::sync::mpsc;

use super::admin::{self, AdminOp};

use super::follower_ctl::FollowerCtl;
use super::hint;
use super::member::{self, Identity};
use super::takeover;
use crate::cluster::coordinator::{Compare, CoordError, Coordinator, Entry, LeaseId, Op, Read};
use crate::cluster::keys::{
    self, DesignatedRecord, Keys, LeaderRecord, MemberRecord, DEFAULT_GROUP,
};
use crate::config::ClusterConfig;
use crate::server::replication::follower::FollowerConfig;
use crate::server::Node;

/// How often the agent looks while no node holds the leader key.
const VACANT_TICK: Duration = Duration::from_millis(25);

/// With a leader in place, a member record that only moved its durable ends is put again
/// at most this often: elections read only records put since the vacancy began
/// ([`Vacancy`]), and every put costs the coordinator a write to its log.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// What the agent last saw, for status.
#[derive(Debug, Clone, Default)]
pub struct ClusterStatus {
    pub name: String,
    pub node: String,
    pub leader: Option<LeaderRecord>,
    pub cluster_epoch: u64,
    pub members: Vec<MemberRecord>,
    /// Why this node waits (no leader), or the last coordinator error.
    pub note: String,
    pub lease_renewed: Option<Instant>,
    pub policy: spool_replication::failover::Policy,
}

/// What one look at the coordinator found.
struct Look {
    leader: Option<LeaderRecord>,
    /// The lease the leader key is on.
    leader_lease: LeaseId,
    members: Vec<MemberRecord>,
    /// The epoch key's value and mod revision (0, 0: absent).
    epoch: (u64, i64),
    designated: Option<DesignatedRecord>,
}

struct Agent<C> {
    node: Arc<Node>,
    coord: C,
    cfg: ClusterConfig,
    keys: Keys,
    id: Identity,
    follower: FollowerCtl,
    lease: Option<LeaseId>,
    clock: LeaseClock,
    /// The epoch this node holds the leader key for, and whether it began it yet.
    leading: Option<(u64, bool)>,
    vacancy: Vacancy,
    seq: u64,
    /// The record put last, and when.
    published: Option<(Instant, MemberRecord)>,
    /// When the lease's last renewal (or grant) was sent.
    renewal_sent: Option<Instant>,
    status: Arc<Mutex<ClusterStatus>>,
}

/// Join the coordinator's cluster: adopt its cluster id, or create it with ours (a new
/// id if this node has none) when this node is the cluster's first.
pub async fn join_cluster<C: Coordinator>(
    node: &Node,
    coord: &C,
    cfg: &ClusterConfig,
) -> anyhow::Result<()> {
    let key = Keys::new(&cfg.name).cluster_id();
    let ours = node.role().cluster_id();
    let proposed = if ours.is_empty() {
        crate::server::role::new_cluster_id()
    } else {
        ours
    };
    coord
        .txn(
            vec![Compare::Absent(key.clone())],
            vec![Op::Put {
                key: key.clone(),
                value: proposed.into_bytes(),
                lease: None,
            }],
        )
        .await?;
    let Some(entry) = coord.get(&key).await? else {
        anyhow::bail!("the coordinator lost {key} just after it was written");
    };
    let id = String::from_utf8_lossy(&entry.value).into_owned();
    let ours = node.role().cluster_id();
    if !ours.is_empty() && ours != id && node.storage().list_logs().is_empty() {
        // A node that never held a log (e.g. started once standalone by its package) has
        // nothing that could diverge: it takes the coordinator's cluster instead of
        // refusing to start.
        tracing::warn!(
            ours = %ours,
            cluster_id = %id,
            "this node holds no logs: it leaves its own cluster for the coordinator's"
        );
        node.role().adopt_cluster(&id).await?;
    }
    node.role().join_cluster(&id).await.map_err(|e| {
        e.context(format!(
            "cluster {:?} in the coordinator has id {id}",
            cfg.name
        ))
    })
}

/// Run the agent until the node shuts down. `follower` is the follower's configuration
/// (its upstream is filled in as leaders come and go).
pub fn spawn<C: Coordinator>(
    node: Arc<Node>,
    coord: C,
    cfg: ClusterConfig,
    id: Identity,
    follower: FollowerConfig,
) -> Arc<Mutex<ClusterStatus>> {
    let status = Arc::new(Mutex::new(ClusterStatus {
        name: cfg.name.clone(),
        node: id.node.clone(),
        policy: cfg.policy.clone(),
        ..ClusterStatus::default()
    }));
    node.set_cluster_status(status.clone());
    let (ops_tx, ops) = mpsc::channel(4);
    node.set_cluster_ops(ops_tx);
    node.role().require_lease();
    let agent = Agent {
        keys: Keys::new(&cfg.name),
        node,
        coord,
        cfg,
        id,
        follower: FollowerCtl::new(follower),
        lease: None,
        clock: LeaseClock::default(),
        leading: None,
        vacancy: Vacancy::default(),
        // Past any publication of an earlier run of this node (a restart during a
        // vacancy must not look stale to the others).
        seq: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64),
        published: None,
        renewal_sent: None,
        status: status.clone(),
    };
    tokio::spawn(agent.run(ops));
    status
}

impl<C: Coordinator> Agent<C> {
    async fn run(mut self, mut ops: mpsc::Receiver<AdminOp>) {
        loop {
            // Without a leader every round counts: look again soon.
            let tick = if self.status.lock().leader.is_none() {
                VACANT_TICK
            } else {
                self.cfg.policy.tick()
            };
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                // A peer's hint: the leader key changed (a handover, a new leader).
                _ = self.node.cluster_woken() => {}
                Some(op) = ops.recv() => {
                    self.admin(op).await;
                    continue;
                }
                _ = self.node.shutdown_started() => break,
            }
            if let Err(e) = self.round().await {
                let note = format!("{e:#}");
                if self.status.lock().note != note {
                    tracing::warn!(error = %note, "cluster round failed");
                }
                self.status.lock().note = note;
            }
        }
        self.resign().await;
    }

    /// One round: lease, publication, leadership, look, decision.
    async fn round(&mut self) -> anyhow::Result<()> {
        let sent = self.renew_lease().await?;
        // What this node decides with is what it just told the others.
        let me = self.publish().await?.to_member();
        let look = self.look().await?;
        if self.leading.is_some() {
            self.renew_leadership(&look, sent);
        }
        self.adopt_own_key(&look);
        let members: Vec<Member> = look.members.iter().map(MemberRecord::to_member).collect();
        let fresh = self.vacancy.fresh(look.leader.is_some(), &members);
        let view = View {
            me: &me,
            members: &members,
            leader: look
                .leader
                .as_ref()
                .map(|l| (l.node.as_str(), l.addr.as_str(), l.epoch)),
            cluster_epoch: look.epoch.0,
            i_lead: self.leading.is_some(),
            fresh,
            designated: look.designated.as_ref().map(|d| Designated {
                node: &d.node,
                force: d.force,
                handover: d.handover,
            }),
        };
        let step = decide(&view, &self.cfg.policy);
        self.show(&look);
        self.execute(step, &me, &members, look.epoch.1, sent).await
    }

    /// Renew (or take) this node's lease; returns when the renewal in force was sent. A
    /// follower seeing a leader renews only every quarter TTL: it acknowledges nothing on
    /// its lease, which only keeps its member key.
    async fn renew_lease(&mut self) -> anyhow::Result<Instant> {
        let now = Instant::now();
        if let (Some(lease), Some(last)) = (self.lease, self.renewal_sent) {
            let follower = self.leading.is_none() && self.status.lock().leader.is_some();
            if follower && now.duration_since(last) < self.cfg.policy.ttl / 4 {
                return Ok(last);
            }
            match self.coord.keep_alive(lease).await {
                Ok(_) => {
                    self.renewal_sent = Some(now);
                    return Ok(now);
                }
                Err(CoordError::LeaseExpired(_)) => {
                    tracing::warn!("this node's coordinator lease expired");
                    self.lease = None;
                    self.lose_leadership("the lease expired");
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.lease = Some(self.coord.grant(self.cfg.policy.ttl).await?);
        self.renewal_sent = Some(now);
        // The member key went with the old lease: put it on the new one now.
        self.published = None;
        Ok(now)
    }

    /// Put this node's member record on its lease (unless only its ends moved, a leader is
    /// in place and the last put is recent); returns the record as it is now.
    async fn publish(&mut self) -> anyhow::Result<MemberRecord> {
        let rec = member::record(&self.node, &self.id, &self.cfg, self.seq + 1);
        let leader_seen = self.status.lock().leader.is_some();
        if let Some((at, last)) = &self.published {
            if leader_seen && at.elapsed() < PROGRESS_EVERY && !last.differs_beyond_progress(&rec) {
                return Ok(MemberRecord {
                    seq: self.seq,
                    ..rec
                });
            }
        }
        self.seq += 1;
        let key = self.keys.member(&self.id.node);
        self.coord.put(&key, keys::encode(&rec), self.lease).await?;
        self.published = Some((Instant::now(), rec.clone()));
        Ok(rec)
    }

    /// The leader key is still ours (on our lease, as read after the renewal was sent):
    /// acks may go on until TTL minus margin from `sent`, when that renewal was sent.
    fn renew_leadership(&mut self, look: &Look, sent: Instant) {
        let ours = look.leader.as_ref().is_some_and(|l| l.node == self.id.node);
        if ours && Some(look.leader_lease) == self.lease {
            self.clock.renewed(&self.cfg.policy, sent);
            self.node.role().set_lease_until(self.clock.valid_until());
            self.status.lock().lease_renewed = Some(sent);
        } else {
            self.lose_leadership("the leader key is no longer this node's");
        }
    }

    fn lose_leadership(&mut self, why: &str) {
        self.status.lock().lease_renewed = None;
        if self.leading.take().is_some() {
            tracing::error!(why, "lost the leadership: no more acknowledgements");
        }
        self.clock.lost();
        self.node.role().set_lease_until(None);
    }

    /// Every key a round decides with, read at one revision in one request.
    async fn look(&self) -> anyhow::Result<Look> {
        let reads = vec![
            Read::Key(self.keys.leader(DEFAULT_GROUP)),
            Read::Key(self.keys.epoch(DEFAULT_GROUP)),
            Read::Key(self.keys.designated(DEFAULT_GROUP)),
            Read::Prefix(self.keys.members()),
        ];
        let [leader, epoch, designated, members]: [Vec<Entry>; 4] = self
            .coord
            .read(reads)
            .await?
            .try_into()
            .map_err(|_| anyhow::anyhow!("the coordinator answered a look with other reads"))?;
        let (leader, epoch, designated) = (
            leader.into_iter().next(),
            epoch.into_iter().next(),
            designated.into_iter().next(),
        );
        Ok(Look {
            leader_lease: leader.as_ref().map_or(0, |e| e.lease),
            leader: leader.and_then(|e| keys::decode(&e.value)),
            members: members
                .iter()
                .filter_map(|e| keys::decode(&e.value))
                .collect(),
            epoch: epoch.map_or((0, 0), |e| {
                let n = String::from_utf8_lossy(&e.value)
                    .trim()
                    .parse()
                    .unwrap_or(0);
                (n, e.mod_revision)
            }),
            designated: designated.and_then(|e| keys::decode(&e.value)),
        })
    }

    /// The leader key names this node on its current lease but the agent did not know it
    /// won (a campaign whose answer was lost): it leads.
    fn adopt_own_key(&mut self, look: &Look) {
        let Some(l) = &look.leader else { return };
        if self.leading.is_none() && l.node == self.id.node && Some(look.leader_lease) == self.lease
        {
            tracing::warn!(epoch = l.epoch, "the leader key is this node's: leading");
            self.leading = Some((l.epoch, false));
        }
    }

    fn show(&self, look: &Look) {
        let mut s = self.status.lock();
        s.leader = look.leader.clone();
        s.cluster_epoch = look.epoch.0;
        s.members = look.members.clone();
    }

    async fn execute(
        &mut self,
        step: Step,
        me: &Member,
        members: &[Member],
        epoch_rev: i64,
        sent: Instant,
    ) -> anyhow::Result<()> {
        match step {
            Step::Stay => self.finish_takeover(me, members).await,
            Step::Follow { addr, epoch } => self.follow(&addr, epoch).await,
            Step::Campaign { epoch } => {
                if self.campaign(epoch, epoch_rev, sent).await? {
                    self.finish_takeover(me, members).await?;
                }
                Ok(())
            }
            Step::Wait { why } => {
                let mut s = self.status.lock();
                if s.note != why {
                    tracing::info!(%why, "cluster: waiting");
                    s.note = why;
                }
                Ok(())
            }
        }
    }

    /// Try to take the leader key for `epoch` (create if absent, epoch key unchanged since
    /// we read it) with the epoch in the same transaction.
    async fn campaign(
        &mut self,
        epoch: u64,
        epoch_rev: i64,
        sent: Instant,
    ) -> anyhow::Result<bool> {
        let lease = self.lease.expect("renewed first");
        let (leader_key, epoch_key) = (
            self.keys.leader(DEFAULT_GROUP),
            self.keys.epoch(DEFAULT_GROUP),
        );
        let epoch_unchanged = if epoch_rev == 0 {
            Compare::Absent(epoch_key.clone())
        } else {
            Compare::ModRevision(epoch_key.clone(), epoch_rev)
        };
        let rec = LeaderRecord {
            node: self.id.node.clone(),
            addr: self.id.addr.clone(),
            epoch,
        };
        let won = self
            .coord
            .txn(
                vec![Compare::Absent(leader_key.clone()), epoch_unchanged],
                vec![
                    Op::Put {
                        key: leader_key,
                        value: keys::encode(&rec),
                        lease: Some(lease),
                    },
                    Op::Put {
                        key: epoch_key,
                        value: epoch.to_string().into_bytes(),
                        lease: None,
                    },
                ],
            )
            .await?;
        if won {
            tracing::warn!(epoch, "won the leader key");
            let mut st = self.status.lock();
            st.leader = Some(rec.clone());
            st.note.clear();
            self.leading = Some((epoch, false));
            self.clock.renewed(&self.cfg.policy, sent);
            self.node.role().set_lease_until(self.clock.valid_until());
        }
        Ok(won)
    }

    /// Leading but not primary yet: take the tails, then begin the epoch.
    async fn finish_takeover(&mut self, me: &Member, members: &[Member]) -> anyhow::Result<()> {
        let Some((epoch, false)) = self.leading else {
            return Ok(());
        };
        self.follower.stop(&self.node).await;
        let limit = self.cfg.policy.ttl;
        self.check_still_leading("taking tails")?;
        takeover::take_tails(&self.node, me, members, epoch, limit).await?;
        // A pause (or slow tails) may have outlived the lease: another node may lead now.
        self.check_still_leading("beginning the epoch")?;
        takeover::begin(&self.node, epoch).await?;
        self.leading = Some((epoch, true));
        tracing::warn!(epoch, "leading the cluster");
        // The others follow at once rather than at their next tick.
        let others = members
            .iter()
            .filter(|m| m.id != self.id.node)
            .map(|m| m.addr.clone())
            .collect();
        hint::look_now(&self.node, &self.id.node, others);
        Ok(())
    }

    /// The lease still holds (by this node's clock, with the margin): the key is ours.
    fn check_still_leading(&mut self, doing: &str) -> anyhow::Result<()> {
        if self.clock.may_ack(Instant::now()) {
            return Ok(());
        }
        self.lose_leadership("the lease may have lapsed");
        anyhow::bail!("not {doing}: the lease may have lapsed since the key was won")
    }

    /// Follow the leader at `addr` in `epoch`, stepping down first if this node led.
    async fn follow(&mut self, addr: &str, epoch: u64) -> anyhow::Result<()> {
        if self.node.role().is_primary() {
            tracing::warn!(leader = addr, epoch, "another node leads: stepping down");
            self.lose_leadership("another node leads");
            self.node.role().become_replica(addr);
            self.node.mark_demoted();
        }
        self.node.role().set_primary_addr(Some(addr.to_owned()));
        if epoch > self.node.role().epoch() {
            // Persisted first: from now on this node refuses the old primary's frames, and
            // its acks tell the old primary it was superseded.
            self.node.role().set_epoch(epoch).await?;
        }
        self.follower.follow(&self.node, addr).await;
        self.status.lock().note.clear();
        Ok(())
    }

    async fn admin(&mut self, op: AdminOp) {
        match op {
            AdminOp::Switchover { to, reply } => {
                let _ = reply.send(self.switchover(&to).await);
            }
            AdminOp::Failover { to, force, reply } => {
                let _ = reply.send(self.failover_to(&to, force).await);
            }
        }
    }

    /// A live member named `to` (its record), or NOT_FOUND naming the members.
    async fn member_named(&self, to: &str) -> Result<MemberRecord, Status> {
        let look = self.look().await.map_err(unavailable)?;
        let names: Vec<&str> = look.members.iter().map(|m| m.node.as_str()).collect();
        look.members
            .iter()
            .find(|m| m.node == to)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("no live member {to:?}; members: {names:?}")))
    }

    /// Hand the leadership to `to`: refuse writes, wait until it holds everything, then
    /// give the key up naming it. Returns how long writes were refused.
    async fn switchover(&mut self, to: &str) -> Result<Duration, Status> {
        if !matches!(self.leading, Some((_, true))) {
            return Err(Status::failed_precondition(
                "this node is not the primary: send switchover to the primary",
            ));
        }
        let target = self.member_named(to).await?;
        if target.node == self.id.node || target.delayed || target.never_promote {
            return Err(Status::failed_precondition(format!(
                "{to} cannot take over (itself, delayed or never-promote)"
            )));
        }
        let paused = Instant::now();
        self.node.role().set_handing_over(true);
        let handed = self.hand_over(to).await;
        self.node.role().set_handing_over(false);
        if handed.is_ok() {
            // The target campaigns at once rather than at its next tick.
            hint::look_now(&self.node, &self.id.node, vec![target.addr]);
        }
        handed.map(|()| paused.elapsed())
    }

    async fn hand_over(&mut self, to: &str) -> Result<(), Status> {
        // Rounds wait meanwhile: the lease must not lapse before the handover.
        let valid = self.clock.valid_until().unwrap_or_else(Instant::now);
        let deadline = (Instant::now() + admin::CATCH_UP_MAX).min(valid);
        admin::wait_caught_up(&self.node, to, deadline).await?;
        let lease = self.lease.expect("a leader has a lease");
        let next = DesignatedRecord {
            node: to.to_owned(),
            force: false,
            handover: true,
        };
        let leader = self.keys.leader(DEFAULT_GROUP);
        let ops = vec![
            Op::Delete(leader.clone()),
            Op::Put {
                key: self.keys.designated(DEFAULT_GROUP),
                value: keys::encode(&next),
                lease: None,
            },
        ];
        if !self
            .coord
            .txn(vec![Compare::LeaseIs(leader, lease)], ops)
            .await
            .map_err(unavailable)?
        {
            return Err(Status::aborted("the leader key is no longer this node's"));
        }
        self.lose_leadership("switched over");
        // The key is gone: status must not name this node the leader (clients would come
        // back to it), and the agent looks at the vacant tick until the target leads.
        self.status.lock().leader = None;
        tracing::warn!(to, "switchover: leadership handed over");
        Ok(())
    }

    /// Name `to` the next primary while there is none.
    async fn failover_to(&mut self, to: &str, force: bool) -> Result<(), Status> {
        let look = self.look().await.map_err(unavailable)?;
        if let Some(l) = &look.leader {
            return Err(Status::failed_precondition(format!(
                "{} leads: use switchover",
                l.node
            )));
        }
        self.member_named(to).await?;
        let next = DesignatedRecord {
            node: to.to_owned(),
            force,
            handover: false,
        };
        let key = self.keys.designated(DEFAULT_GROUP);
        self.coord
            .put(&key, keys::encode(&next), None)
            .await
            .map_err(unavailable)?;
        tracing::warn!(to, force, "failover: next primary named");
        Ok(())
    }

    /// At shutdown: give the leader key up at once (the next primary need not wait for
    /// the lease) and revoke the lease.
    async fn resign(&mut self) {
        self.lose_leadership("shutting down");
        self.follower.stop(&self.node).await;
        if let Some(lease) = self.lease.take() {
            let _ = self.coord.revoke(lease).await;
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("coordinator: {e:#}"))
}
