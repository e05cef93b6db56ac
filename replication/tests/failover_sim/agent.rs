//! The cluster agent's round, as `src/server/failover/agent.rs` runs it, one coordinator
//! call at a time: keep the lease alive (or grant one), publish the member record, if
//! leading check the leader key is still on our lease and renew the `LeaseClock` from the
//! round's start, look at the leader, epoch and member keys, decide, execute.

use spool_replication::failover::{decide, Member, Step, View};

use crate::coord::{Entry, LeaderRec, Req, Resp, Val, EPOCH, LEADER, MEMBERS};
use crate::world::{instant, World, CALL_TIMEOUT_MS, VACANT_TICK_MS};

/// One round in flight.
#[derive(Debug, Clone)]
pub struct Round {
    /// Local time the round began (before its lease renewal was sent).
    pub sent: u64,
    pub stage: Stage,
    /// The answer awaited, and when (local) the call is given up.
    pub req: u64,
    pub deadline: u64,
    pub leader: Option<Entry>,
    pub epoch: (u64, u64),
    pub me: Member,
    pub members: Vec<Member>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    KeepAlive,
    Grant,
    Publish,
    Renew,
    Leader,
    Epoch,
    Members,
    Campaign(u64),
    /// Taking a tail `..to` from node `peer` before beginning `epoch`.
    Tail {
        epoch: u64,
        to: u64,
        peer: usize,
    },
}

impl World {
    /// Start a round when its tick came; give up a call not answered in time.
    pub fn agent_timers(&mut self, x: usize) {
        let local = self.nodes[x].local(self.now);
        match &self.nodes[x].agent.round {
            None if local >= self.nodes[x].agent.next_round => self.start_round(x),
            Some(r) if local >= r.deadline => {
                let why = format!("{:?}: no answer", r.stage);
                self.end_round(x, &why);
            }
            _ => {}
        }
    }

    fn start_round(&mut self, x: usize) {
        let local = self.nodes[x].local(self.now);
        self.nodes[x].agent.round = Some(Round {
            sent: local,
            stage: Stage::Grant,
            req: 0,
            deadline: 0,
            leader: None,
            epoch: (0, 0),
            me: self.member(x),
            members: Vec::new(),
        });
        match self.nodes[x].agent.lease {
            Some(l) => self.call(x, Stage::KeepAlive, Req::KeepAlive(l), CALL_TIMEOUT_MS),
            None => self.grant(x),
        }
    }

    fn grant(&mut self, x: usize) {
        let ttl_ms = self.policy.ttl.as_millis() as u64;
        self.call(x, Stage::Grant, Req::Grant { ttl_ms }, CALL_TIMEOUT_MS);
    }

    /// Send `req` to the coordinator and await its answer in `stage`.
    pub fn call(&mut self, x: usize, stage: Stage, req: Req, timeout_ms: u64) {
        let id = self.send_coord(x, req);
        let deadline = self.nodes[x].local(self.now) + timeout_ms;
        let r = self.nodes[x].agent.round.as_mut().expect("in a round");
        r.stage = stage;
        r.req = id;
        r.deadline = deadline;
    }

    /// The round is over (done, or failed with `why`): the next one after a tick.
    pub fn end_round(&mut self, x: usize, why: &str) {
        if !why.is_empty() {
            self.note(format!("{} round failed: {why}", self.nodes[x].id));
        }
        let tick = if self.nodes[x].agent.saw_leader {
            self.policy.tick().as_millis() as u64
        } else {
            VACANT_TICK_MS
        };
        let local = self.nodes[x].local(self.now);
        let a = &mut self.nodes[x].agent;
        a.round = None;
        a.next_round = if std::mem::take(&mut a.woken) {
            local
        } else {
            local + tick
        };
    }

    /// A peer's hint, as the server's agent `Notify`: the next round runs now, or right
    /// after the one in flight (hints during a round collapse into one).
    pub fn on_look_now(&mut self, x: usize) {
        let local = self.nodes[x].local(self.now);
        let a = &mut self.nodes[x].agent;
        match a.round {
            None => a.next_round = a.next_round.min(local),
            Some(_) => a.woken = true,
        }
    }

    /// An answer from the coordinator.
    pub fn on_coord(&mut self, x: usize, id: u64, resp: Resp) {
        let Some(r) = &self.nodes[x].agent.round else {
            return;
        };
        if r.req != id {
            return;
        }
        match (r.stage, resp) {
            (Stage::KeepAlive, Resp::Alive(true)) => self.publish(x),
            (Stage::KeepAlive, Resp::Alive(false)) => {
                self.note(format!("{} lease expired", self.nodes[x].id));
                self.nodes[x].agent.lease = None;
                self.lose_leadership(x, "the lease expired");
                self.grant(x);
            }
            (Stage::Grant, Resp::Lease(l)) => {
                self.note(format!("{} granted lease {l}", self.nodes[x].id));
                self.nodes[x].agent.lease = Some(l);
                self.publish(x);
            }
            (Stage::Publish, Resp::Done) => self.after_publish(x),
            (Stage::Renew, Resp::Txn(ours)) => self.renewed(x, ours),
            (Stage::Leader, Resp::Entry(e)) => self.got_leader(x, e),
            (Stage::Epoch, Resp::Entry(e)) => self.got_epoch(x, e),
            (Stage::Members, Resp::Entries(es)) => self.look_done(x, es),
            (Stage::Campaign(epoch), Resp::Txn(won)) => self.campaigned(x, epoch, won),
            (stage, resp) => self.end_round(x, &format!("{stage:?}: {resp:?}")),
        }
    }

    fn publish(&mut self, x: usize) {
        self.nodes[x].agent.seq += 1;
        let rec = self.member(x);
        let n = &self.nodes[x];
        let (key, lease) = (
            format!("{MEMBERS}{}", n.id),
            n.agent.lease.expect("granted"),
        );
        let req = Req::Put {
            key,
            val: Val::Member(rec),
            lease,
        };
        self.call(x, Stage::Publish, req, CALL_TIMEOUT_MS);
    }

    fn after_publish(&mut self, x: usize) {
        let n = &self.nodes[x];
        if n.agent.leading.is_some() {
            let lease = n.agent.lease.expect("granted");
            let req = Req::LeaseIs {
                key: LEADER.into(),
                lease,
            };
            self.call(x, Stage::Renew, req, CALL_TIMEOUT_MS);
        } else {
            self.call(x, Stage::Leader, Req::Get(LEADER.into()), CALL_TIMEOUT_MS);
        }
    }

    /// The leader key is (or is not) still on our lease.
    fn renewed(&mut self, x: usize, ours: bool) {
        if ours {
            let sent = self.nodes[x].agent.round.as_ref().expect("in a round").sent;
            let policy = self.policy.clone();
            self.nodes[x].agent.clock.renewed(&policy, instant(sent));
        } else {
            self.lose_leadership(x, "the leader key is no longer this node's");
        }
        self.call(x, Stage::Leader, Req::Get(LEADER.into()), CALL_TIMEOUT_MS);
    }

    pub fn lose_leadership(&mut self, x: usize, why: &str) {
        let a = &mut self.nodes[x].agent;
        if a.leading.take().is_some() {
            let id = self.nodes[x].id.clone();
            self.note(format!("{id} lost the leadership: {why}"));
        }
        self.nodes[x].agent.clock.lost();
    }

    fn got_leader(&mut self, x: usize, e: Option<Entry>) {
        self.nodes[x].agent.round.as_mut().expect("round").leader = e;
        self.call(x, Stage::Epoch, Req::Get(EPOCH.into()), CALL_TIMEOUT_MS);
    }

    fn got_epoch(&mut self, x: usize, e: Option<Entry>) {
        let epoch = e.map_or((0, 0), |e| match e.val {
            Val::Epoch(n) => (n, e.mod_rev),
            _ => (0, e.mod_rev),
        });
        self.nodes[x].agent.round.as_mut().expect("round").epoch = epoch;
        self.call(
            x,
            Stage::Members,
            Req::GetPrefix(MEMBERS.into()),
            CALL_TIMEOUT_MS,
        );
    }

    /// The look is complete: adopt our own key, decide, execute.
    fn look_done(&mut self, x: usize, es: Vec<Entry>) {
        let members: Vec<Member> = es
            .into_iter()
            .filter_map(|e| match e.val {
                Val::Member(m) => Some(m),
                _ => None,
            })
            .collect();
        let leader = self.nodes[x]
            .agent
            .round
            .as_ref()
            .expect("round")
            .leader
            .clone();
        let leader = leader.and_then(|e| match e.val {
            Val::Leader(l) => Some((l, e.lease)),
            _ => None,
        });
        self.adopt_own_key(x, leader.as_ref());
        let me = self.member(x);
        let step = self.decide_now(x, &me, &members, leader.as_ref().map(|(l, _)| l));
        let r = self.nodes[x].agent.round.as_mut().expect("round");
        r.me = me;
        r.members = members;
        self.nodes[x].agent.saw_leader = leader.is_some();
        self.execute(x, step);
    }

    /// The leader key names this node on its current lease: a campaign's answer was lost.
    fn adopt_own_key(&mut self, x: usize, leader: Option<&(LeaderRec, u64)>) {
        let n = &self.nodes[x];
        let Some((l, lease)) = leader else { return };
        if n.agent.leading.is_none() && l.node == n.id && Some(*lease) == n.agent.lease {
            self.note(format!(
                "{} adopts its own leader key, epoch {}",
                n.id, l.epoch
            ));
            self.nodes[x].agent.leading = Some((l.epoch, false));
        }
    }

    fn decide_now(&mut self, x: usize, me: &Member, ms: &[Member], l: Option<&LeaderRec>) -> Step {
        let fresh = self.nodes[x].agent.vacancy.fresh(l.is_some(), ms);
        let r = self.nodes[x].agent.round.as_ref().expect("round");
        let view = View {
            me,
            members: ms,
            leader: l.map(|l| (l.node.as_str(), l.node.as_str(), l.epoch)),
            cluster_epoch: r.epoch.0,
            i_lead: self.nodes[x].agent.leading.is_some(),
            fresh,
            designated: None,
        };
        decide(&view, &self.policy)
    }
}
