//! Failover decisions on a coordinator (etcd): how long a primary may acknowledge writes on
//! its lease, which members may become primary, which one should, and which log tails it
//! must take from its peers before its first write. The server's cluster agent executes
//! them; the coordinator itself only stores keys on leases and runs compare-and-swap.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The lease a node holds its member key (and, as primary, the leader key) on.
pub const DEFAULT_TTL: Duration = Duration::from_secs(2);

/// How the cluster fails over, from `[cluster]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub ttl: Duration,
    /// A primary stops acknowledging writes this long before its lease could expire: the
    /// coordinator's clock and this node's may run at slightly different rates.
    pub safety_margin: Duration,
    /// Automatic failover on; off, only `admin failover` elects.
    pub failover: bool,
    /// A replica more than this many records behind the furthest live member on any log is
    /// not eligible.
    pub max_lag: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            ttl: DEFAULT_TTL,
            safety_margin: Policy::margin_for(DEFAULT_TTL),
            failover: true,
            max_lag: 1_000_000,
        }
    }
}

impl Policy {
    /// The margin for `ttl`: a quarter of it, at least 200 ms, at most 2 s.
    pub fn margin_for(ttl: Duration) -> Duration {
        (ttl / 4).clamp(Duration::from_millis(200), Duration::from_secs(2))
    }

    /// How often the agent renews and looks at the cluster: three times per margin, so a
    /// renewal that fails is retried before the primary stops acknowledging.
    pub fn tick(&self) -> Duration {
        (self.safety_margin / 3).max(Duration::from_millis(20))
    }
}

/// Until when a primary may acknowledge writes. A renewal counts from when its request was
/// sent, not answered: the coordinator started the lease's new TTL no earlier than that.
#[derive(Debug, Clone, Default)]
pub struct LeaseClock {
    valid_until: Option<Instant>,
}

impl LeaseClock {
    /// The lease (and the leader key on it) was renewed by a request sent at `sent_at`.
    pub fn renewed(&mut self, policy: &Policy, sent_at: Instant) {
        let until = sent_at + policy.ttl.saturating_sub(policy.safety_margin);
        // A slow answer to an older request never shortens a newer one's validity.
        self.valid_until = Some(self.valid_until.map_or(until, |u| u.max(until)));
    }

    /// Leadership given up or lost: no acknowledgement from now on.
    pub fn lost(&mut self) {
        self.valid_until = None;
    }

    pub fn may_ack(&self, now: Instant) -> bool {
        self.valid_until.is_some_and(|u| now < u)
    }

    pub fn valid_until(&self) -> Option<Instant> {
        self.valid_until
    }
}

/// One log's end as a member publishes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogEnd {
    /// Durable end (next offset).
    pub end: u64,
    /// Epoch of the last record (0: none).
    pub last_epoch: u64,
}

/// A member as it publishes itself under its lease.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Member {
    pub id: String,
    pub addr: String,
    pub epoch: u64,
    pub primary: bool,
    pub delayed: bool,
    pub never_promote: bool,
    /// Configured as a synchronous replica: preferred, it holds every sync-acked record.
    pub sync: bool,
    pub priority: i32,
    pub logs: BTreeMap<String, LogEnd>,
    /// Bumped at every publication: a candidate waits for one from each member after the
    /// leader went, so the ends it compares include every record an ack counted.
    pub seq: u64,
}

/// Why a member may not become primary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ineligible {
    #[error("delayed replica")]
    Delayed,
    #[error("never-promote is set")]
    NeverPromote,
    #[error("log {log} is {behind} records behind the furthest member (max lag {max})")]
    Lagging { log: String, behind: u64, max: u64 },
    #[error("at epoch {epoch}, behind the cluster's {cluster}")]
    Stale { epoch: u64, cluster: u64 },
}

/// The furthest end any non-delayed member publishes, per log: what a new primary must
/// hold before its first write (sync and semi-sync acks come only from such members).
pub fn furthest(members: &[Member]) -> BTreeMap<String, (LogEnd, &str)> {
    let mut out: BTreeMap<String, (LogEnd, &str)> = BTreeMap::new();
    for m in members.iter().filter(|m| !m.delayed) {
        for (name, e) in &m.logs {
            let slot = out.entry(name.clone()).or_insert((*e, &m.addr));
            if (e.last_epoch, e.end) > (slot.0.last_epoch, slot.0.end) {
                *slot = (*e, &m.addr);
            }
        }
    }
    out
}

/// Whether `m` may become primary among `members` (itself included) in a cluster whose
/// latest epoch is `cluster_epoch`.
pub fn eligibility(
    m: &Member,
    members: &[Member],
    cluster_epoch: u64,
    policy: &Policy,
) -> Result<(), Ineligible> {
    if m.delayed {
        return Err(Ineligible::Delayed);
    }
    if m.never_promote {
        return Err(Ineligible::NeverPromote);
    }
    // A member that missed an epoch may hold records the cluster cut: it follows first.
    if m.epoch + 1 < cluster_epoch {
        return Err(Ineligible::Stale {
            epoch: m.epoch,
            cluster: cluster_epoch,
        });
    }
    for (log, (far, _)) in furthest(members) {
        let ours = m.logs.get(&log).map_or(0, |e| e.end);
        let behind = far.end.saturating_sub(ours);
        if behind > policy.max_lag {
            return Err(Ineligible::Lagging {
                log,
                behind,
                max: policy.max_lag,
            });
        }
    }
    Ok(())
}

/// Whether `ours` lacks records `far` holds: it ends before `far` in the same epoch, or its
/// last epoch is older (records past where that epoch ended in `far`'s history are not
/// `far`'s, however far they reach: a longer log of an older epoch is not ahead).
fn lacks(ours: LogEnd, far: LogEnd) -> bool {
    (ours.last_epoch, ours.end) < (far.last_epoch, far.end)
}

/// The order candidates are preferred in (smaller first): those whose logs are all of
/// their latest epoch first (a log of an older epoch may hold records that epoch's
/// successor cut, past which no tail can be appended), then synchronous replicas, those
/// furthest on the most logs, higher priority, most records, and the id to break ties.
fn rank<'a>(
    m: &'a Member,
    far: &BTreeMap<String, (LogEnd, &str)>,
) -> (usize, bool, usize, i32, u64, &'a str) {
    let ours = |name: &String| m.logs.get(name).copied().unwrap_or_default();
    let older = far
        .iter()
        .filter(|(name, (e, _))| ours(name).last_epoch < e.last_epoch)
        .count();
    let lacking = far
        .iter()
        .filter(|(name, (e, _))| lacks(ours(name), *e))
        .count();
    let held: u64 = m.logs.values().map(|e| e.end).sum();
    (older, !m.sync, lacking, -m.priority, u64::MAX - held, &m.id)
}

/// Which member should become primary now: the best-ranked eligible one, or none.
pub fn choose<'a>(
    members: &'a [Member],
    cluster_epoch: u64,
    policy: &Policy,
) -> Option<&'a Member> {
    let far = furthest(members);
    members
        .iter()
        .filter(|m| eligibility(m, members, cluster_epoch, policy).is_ok())
        .min_by(|a, b| rank(a, &far).cmp(&rank(b, &far)))
}

/// A tail a new primary takes from a peer before its first write: `log` from `from` up to
/// `to`, from the member at `addr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailFetch {
    pub log: String,
    pub from: u64,
    pub to: u64,
    pub addr: String,
}

/// The tails `me` lacks that other non-delayed members hold: the records an ack under sync
/// or semi-sync may have counted. A log whose last epoch is older than the furthest one's
/// is lacking even if it reaches further: from `from` on its records may not be the
/// peer's, so the executor must cut them where the two histories part before appending.
pub fn tails_to_fetch(me: &Member, members: &[Member]) -> Vec<TailFetch> {
    furthest(members)
        .into_iter()
        .filter_map(|(log, (far, addr))| {
            let ours = me.logs.get(&log).copied().unwrap_or_default();
            (lacks(ours, far) && addr != me.addr).then(|| TailFetch {
                log,
                from: ours.end.min(far.end),
                to: far.end,
                addr: addr.to_owned(),
            })
        })
        .collect()
}

/// The epoch a new primary begins: past every epoch the cluster or a member has seen.
pub fn next_epoch(cluster_epoch: u64, members: &[Member]) -> u64 {
    members
        .iter()
        .map(|m| m.epoch)
        .chain(std::iter::once(cluster_epoch))
        .max()
        .unwrap_or(0)
        + 1
}

/// Tracks a vacancy of the leader key: the members' publications seen when it began.
/// Ends published after it began are final: the old primary stopped acknowledging before
/// its lease (and the key) could expire, and members publish only durable ends.
#[derive(Debug, Clone, Default)]
pub struct Vacancy {
    since: Option<BTreeMap<String, u64>>,
}

impl Vacancy {
    /// Record this look; true when every live member has published since the vacancy began.
    pub fn fresh(&mut self, leader_present: bool, members: &[Member]) -> bool {
        if leader_present {
            self.since = None;
            return false;
        }
        let since = self
            .since
            .get_or_insert_with(|| members.iter().map(|m| (m.id.clone(), m.seq)).collect());
        members
            .iter()
            .all(|m| since.get(&m.id).is_none_or(|&s| m.seq > s))
    }
}

/// What a node does after looking at the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Step {
    /// Go on as we are (the leader is who we follow, or we lead with a valid lease).
    Stay,
    /// The leader key names another node: follow it (a primary steps down first).
    Follow { addr: String, epoch: u64 },
    /// No leader and this node is the one to become primary: try to take the leader key.
    Campaign { epoch: u64 },
    /// No leader; another member is the one (or nobody may be): wait.
    Wait { why: String },
}

/// What this node knows of the cluster at one look.
#[derive(Debug, Clone)]
pub struct View<'a> {
    pub me: &'a Member,
    /// Live members, this node included.
    pub members: &'a [Member],
    /// The leader key's holder: (id, addr, epoch).
    pub leader: Option<(&'a str, &'a str, u64)>,
    /// The epoch key: the latest epoch any leader began.
    pub cluster_epoch: u64,
    /// This node holds the leader key now (its own lease).
    pub i_lead: bool,
    /// Every member published since the leader key went ([`Vacancy::fresh`]).
    pub fresh: bool,
    /// An operator's choice of the next primary (switchover, or failover `--force`).
    pub designated: Option<Designated<'a>>,
}

/// The next primary an operator named: only it campaigns while the leader key is absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Designated<'a> {
    pub node: &'a str,
    /// Even if not eligible (failover `--force`: the operator's decision).
    pub force: bool,
    /// A switchover: the old primary handed over once this node held all it had, so the
    /// members' ends need not be published again first.
    pub handover: bool,
}

/// The decision at one look.
pub fn decide(view: &View<'_>, policy: &Policy) -> Step {
    match view.leader {
        Some((id, addr, epoch)) => {
            if id == view.me.id && view.i_lead {
                Step::Stay
            } else if id == view.me.id {
                // Our own key from before a restart: its lease is not ours now; it expires.
                Step::Wait {
                    why: "the leader key names this node from an earlier lease".into(),
                }
            } else {
                Step::Follow {
                    addr: addr.to_owned(),
                    epoch,
                }
            }
        }
        None if view.designated.is_some() => designated(view, policy),
        // A new cluster elects its first primary even with failover off.
        None if !policy.failover && view.cluster_epoch > 0 => Step::Wait {
            why: "no primary and automatic failover is off: `spool admin failover --to NODE`"
                .into(),
        },
        None if !view.fresh => Step::Wait {
            why: "no primary; waiting for every member to publish its ends".into(),
        },
        None => match choose(view.members, view.cluster_epoch, policy) {
            Some(m) if m.id == view.me.id => Step::Campaign {
                epoch: next_epoch(view.cluster_epoch, view.members),
            },
            Some(m) => Step::Wait {
                why: format!("no primary; {} is the candidate", m.id),
            },
            None => Step::Wait {
                why: "no primary and no eligible member".into(),
            },
        },
    }
}

/// No leader, and an operator named the next primary.
fn designated(view: &View<'_>, policy: &Policy) -> Step {
    let d = view.designated.expect("called with a designated node");
    if d.node != view.me.id {
        return Step::Wait {
            why: format!("no primary; the operator named {}", d.node),
        };
    }
    if !(view.fresh || d.force || d.handover) {
        return Step::Wait {
            why: "named the next primary; waiting for every member to publish its ends".into(),
        };
    }
    let cluster_epoch = view.cluster_epoch;
    match eligibility(view.me, view.members, cluster_epoch, policy) {
        Err(e) if !d.force => Step::Wait {
            why: format!("named the next primary but not eligible ({e}): use --force"),
        },
        _ => Step::Campaign {
            epoch: next_epoch(cluster_epoch, view.members),
        },
    }
}

#[cfg(test)]
mod tests;
