//! What the agent does with its decision: follow (stepping down first), campaign (the
//! leader key on our lease and the epoch key in one transaction), and the takeover of a
//! node that won the key: take the tails peers hold, then begin the epoch.

use spool_replication::failover::{tails_to_fetch, Member, Step};

use crate::agent::Stage;
use crate::coord::{LeaderRec, Req};
use crate::log::Rec;
use crate::net::{Addr, Body};
use crate::world::{instant, World, CALL_TIMEOUT_MS};

/// The takeover begins the epoch only while the node's `LeaseClock` holds, as the server's
/// `finish_takeover` does. With `false` (the server before that check) seeds 3 and
/// 1_000_016 find a node that began a stale epoch (a campaign answered after a pause,
/// another primary acked meanwhile). See docs/decisions/0014.
pub const BEGIN_CHECKS_LEASE: bool = true;

/// The takeover begins an epoch this node learnt already (from a replica of its own that
/// followed it first) if it never led it, as the server's `role.begin_leading` allows.
/// With `false` (the server before) seed 1_000_145 finds a node holding the leader key
/// that never begins (the cluster has no primary).
pub const BEGIN_AT_LEARNT_EPOCH: bool = true;

impl World {
    pub fn execute(&mut self, x: usize, step: Step) {
        match step {
            Step::Stay => self.finish_takeover(x),
            Step::Follow { addr, epoch } => self.follow(x, &addr, epoch),
            Step::Campaign { epoch } => self.campaign(x, epoch),
            Step::Wait { .. } => self.end_round(x, ""),
        }
    }

    fn campaign(&mut self, x: usize, epoch: u64) {
        let n = &self.nodes[x];
        let r = n.agent.round.as_ref().expect("round");
        let req = Req::Campaign {
            rec: LeaderRec {
                node: n.id.clone(),
                epoch,
            },
            lease: n.agent.lease.expect("granted"),
            epoch_rev: r.epoch.1,
        };
        let ends: Vec<String> = r
            .members
            .iter()
            .map(|m| {
                let e = m.logs.values().next().copied().unwrap_or_default();
                let sync = if m.sync { "(sync)" } else { "" };
                format!("{}{sync}@{}:{}/{}", m.id, m.epoch, e.end, e.last_epoch)
            })
            .collect();
        self.note(format!(
            "{} campaigns for epoch {epoch}; members {ends:?}",
            n.id
        ));
        self.call(x, Stage::Campaign(epoch), req, CALL_TIMEOUT_MS);
    }

    pub fn campaigned(&mut self, x: usize, epoch: u64, won: bool) {
        if !won {
            return self.end_round(x, "");
        }
        self.note(format!(
            "{} won the leader key, epoch {epoch}",
            self.nodes[x].id
        ));
        let sent = self.nodes[x].agent.round.as_ref().expect("round").sent;
        let policy = self.policy.clone();
        let a = &mut self.nodes[x].agent;
        a.saw_leader = true;
        a.leading = Some((epoch, false));
        a.clock.renewed(&policy, instant(sent));
        self.finish_takeover(x);
    }

    /// Leading but not primary yet: stop following, take the tails, begin the epoch.
    fn finish_takeover(&mut self, x: usize) {
        let Some((epoch, false)) = self.nodes[x].agent.leading else {
            return self.end_round(x, "");
        };
        let n = &mut self.nodes[x];
        n.follow = None;
        n.fetching = None;
        n.log.sync();
        self.next_tail(x, epoch);
    }

    /// The next tail to take (the round's `me` and members, as the server passes them),
    /// from where the log is now; none left: begin.
    fn next_tail(&mut self, x: usize, epoch: u64) {
        let r = self.nodes[x].agent.round.as_ref().expect("round");
        let mut me: Member = r.me.clone();
        let durable = self.nodes[x].log.durable;
        for e in me.logs.values_mut() {
            e.end = e.end.max(durable);
        }
        let fetch = tails_to_fetch(&me, &r.members);
        // The executor appends from its durable end while it is below the tail's end.
        let Some(t) = fetch.into_iter().find(|t| durable < t.to) else {
            return self.begin(x, epoch);
        };
        let Some(peer) = self.nodes.iter().position(|n| n.id == t.addr) else {
            return self.end_round(x, "tail from an unknown peer");
        };
        self.note(format!(
            "{} takes {}..{} from {}",
            self.nodes[x].id, durable, t.to, t.addr
        ));
        let id = self.next_id();
        let body = Body::TailReq {
            id,
            from: durable,
            to: t.to,
        };
        self.send(Addr::Node(x), Addr::Node(peer), body);
        let deadline = self.nodes[x].local(self.now) + self.policy.ttl.as_millis() as u64;
        let r = self.nodes[x].agent.round.as_mut().expect("round");
        (r.stage, r.req, r.deadline) = (
            Stage::Tail {
                epoch,
                to: t.to,
                peer,
            },
            id,
            deadline,
        );
    }

    /// A peer's answer to a tail request: appended if of our history up to `epoch`.
    pub fn on_tail(&mut self, x: usize, id: u64, hist: &[(u64, u64)], from: u64, recs: &[Rec]) {
        let Some(r) = &self.nodes[x].agent.round else {
            return;
        };
        let Stage::Tail { epoch, .. } = r.stage else {
            return;
        };
        if r.req != id {
            return;
        }
        let log = &self.nodes[x].log;
        let ours = log.durable_history();
        let below = (0..from).all(|o| {
            spool_replication::divergence::epoch_at(&ours, o)
                == spool_replication::divergence::epoch_at(hist, o)
        });
        let newer = recs.iter().any(|r| r.epoch > epoch);
        if from != log.durable || !below || newer || recs.is_empty() {
            return self.end_round(x, "the peer's tail is not of this log's history");
        }
        let n = &mut self.nodes[x];
        n.log.append(from, recs);
        n.log.sync();
        self.stats.tails += 1;
        self.next_tail(x, epoch);
    }

    /// Begin `epoch` as primary: persisted first, then writes are taken.
    fn begin(&mut self, x: usize, epoch: u64) {
        let local = self.nodes[x].local(self.now);
        if BEGIN_CHECKS_LEASE && !self.nodes[x].agent.clock.may_ack(instant(local)) {
            // The round outlived the lease it won or renewed: another node may lead.
            return self.end_round(x, "the lease clock lapsed during the takeover");
        }
        let n = &mut self.nodes[x];
        let past = if BEGIN_AT_LEARNT_EPOCH {
            epoch >= n.epoch && epoch > n.led
        } else {
            epoch > n.epoch
        };
        if !past {
            let why = format!("epoch {epoch} is not past this node's epoch {}", n.epoch);
            return self.end_round(x, &why);
        }
        n.epoch = epoch;
        n.led = epoch;
        n.primary = true;
        n.fenced = false;
        n.acks.clear();
        n.agent.leading = Some((epoch, true));
        self.note(format!("{} leads epoch {epoch}", self.nodes[x].id));
        self.stats.elections += 1;
        self.check_begin(x);
        self.hint_members(x);
        self.end_round(x, "");
    }

    /// As the server's `finish_takeover`: the round's other members are told to look now.
    fn hint_members(&mut self, x: usize) {
        let r = self.nodes[x].agent.round.as_ref().expect("round");
        let ids: Vec<String> = r.members.iter().map(|m| m.id.clone()).collect();
        for id in ids {
            match self.nodes.iter().position(|n| n.id == id) {
                Some(y) if y != x => self.send(Addr::Node(x), Addr::Node(y), Body::LookNow),
                _ => {}
            }
        }
    }

    /// Follow the leader `addr` in `epoch`, stepping down first if this node is primary.
    fn follow(&mut self, x: usize, addr: &str, epoch: u64) {
        if self.nodes[x].primary {
            self.note(format!("{} steps down: {addr} leads", self.nodes[x].id));
            self.lose_leadership(x, "another node leads");
            self.nodes[x].become_replica();
        }
        let n = &mut self.nodes[x];
        n.epoch = n.epoch.max(epoch);
        let up = self.nodes.iter().position(|n| n.id == addr);
        let n = &mut self.nodes[x];
        if n.follow != up {
            n.follow = up;
            n.fetching = None;
        }
        self.end_round(x, "");
    }
}
