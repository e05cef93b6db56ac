//! The upstream's side, executing spool-replication's decisions as the server does: the
//! handshake (`follow::accept_upstream`, `handshake::plan`), the per-log `Sender`, acks
//! into the primary's `AckTracker`, and the checks on what the tracker decides.

use std::time::Duration;

use rand::Rng;
use spool_replication::ack::{AckMode, Command};
use spool_replication::divergence::Decision;
use spool_replication::follow::{self, Identities};
use spool_replication::handshake::{self, Plan};
use spool_replication::sender::{Fetch, Sender, Step};
use spool_replication::session::ReplicaSession;

use crate::model::crc;
use crate::net::{Down, Session, Stream, Up, QUEUE_MAX};
use crate::world::{now_instant, World, LOG};

impl World {
    /// Replica `x` connects to its upstream, says hello and gets its plan.
    pub fn open_session(&mut self, x: usize) {
        let u = self.nodes[x].up.expect("a replica");
        let refused = |w: &mut World, why: String| {
            let (wait, next) =
                follow::backoff(Duration::from_millis(w.nodes[x].backoff), Duration::ZERO);
            w.nodes[x].reconnect_at = w.now + wait.as_millis() as u64;
            w.nodes[x].backoff = next.as_millis() as u64;
            let name = w.nodes[x].name;
            w.note(format!("{name} not following: {why}"));
        };
        if !self.nodes[u].alive {
            return refused(self, "upstream down".into());
        }
        let ids = Identities {
            our_cluster: "c",
            our_epoch: self.nodes[x].epoch,
            our_led_epoch: self.nodes[x].led_epoch,
            up_cluster: "c",
            up_epoch: self.nodes[u].epoch,
        };
        if let Err(e) = follow::accept_upstream(&ids) {
            return refused(self, e.to_string());
        }
        self.nodes[x].epoch = self.nodes[u].epoch;
        // What it had in flight lands before its hello reports its end.
        self.nodes[x].log.sync();
        let n = &self.nodes[x];
        let hello = n
            .log
            .hello(n.staged.as_ref().map(|s| (s.base, &s.recs[..])));
        let (ulog, visible) = (&self.nodes[u].log, self.nodes[u].visible());
        let up = ulog.upstream(visible).leading(self.nodes[u].epoch);
        let frame_at = |o: u64| ulog.get(o).map(|r| (o, crc(r)));
        let plan = match handshake::plan(&up, Some(&hello), &frame_at) {
            Ok(p) => p,
            Err(e) => return refused(self, e.to_string()),
        };
        let resume = handshake::staged_to_resume(&up, &plan, Some(&hello));
        let stream = match plan {
            Plan::Diverged { .. } => Stream::Blocked,
            Plan::Follow(Decision::Ahead {
                upstream_end,
                replica_end,
            }) => {
                self.stats.ahead += 1;
                Stream::Ahead {
                    upstream_end,
                    replica_end,
                    epoch: ulog.epoch_at(upstream_end),
                }
            }
            _ => {
                let fetch = Fetch {
                    sealed: n.fetch,
                    active: n.fetch,
                };
                Stream::Sending(Sender::new(plan.continue_from().unwrap(), resume, fetch))
            }
        };
        let counts = self.nodes[u].is_primary() && n.delay.is_none();
        let (name, incarnation) = (n.name, ulog.incarnation);
        let credit = plan.credit(&up, Some(&hello), &frame_at);
        let held = credit.counted;
        let un = self.nodes[u].name;
        self.note(format!(
            "{name} follows {un}: {plan:?} (hello {hello:?}, upstream {up:?})"
        ));
        if let Some(t) = self.nodes[u].tracker.as_mut() {
            let now = now_instant(self.now);
            let mut cmds = t.replica_connected(now, name, false, counts);
            cmds.extend(t.replica_holds(now, name, LOG, held));
            self.execute(u, cmds);
        }
        let at = self.net_delay();
        let mut s = Session {
            up: u,
            down: x,
            open: true,
            to_down: Default::default(),
            to_up: Default::default(),
            stream,
            cuts_seen: self.nodes[u].cuts.len(),
            vouched: visible,
            replica: ReplicaSession::new(self.nodes[u].epoch),
            last_ack: 0,
            credit,
            last_frame: hello.last_frame,
        };
        s.send_down(at, Down::Start(plan.clone(), incarnation));
        self.sessions.push(s);
        self.nodes[x].session = Some(self.sessions.len() - 1);
    }

    /// The session ends on both sides; the replica reconnects after its backoff.
    pub fn close(&mut self, sid: usize, why: &str) {
        let s = &mut self.sessions[sid];
        if !s.open {
            return;
        }
        s.open = false;
        let (u, x) = (s.up, s.down);
        if self.nodes[x].session == Some(sid) {
            self.nodes[x].session = None;
        }
        self.nodes[x].reconnect_at = self.now + self.nodes[x].backoff.min(200);
        let name = self.nodes[x].name;
        if let Some(t) = self.nodes[u].tracker.as_mut() {
            let cmds = t.replica_disconnected(now_instant(self.now), name);
            self.execute(u, cmds);
        }
        self.note(format!("{name} session closed: {why}"));
    }

    /// The upstream sends what comes next for the session, if anything.
    pub fn pump(&mut self, sid: usize) {
        let u = self.sessions[sid].up;
        let full = self.sessions[sid].to_down.len();
        if full > QUEUE_MAX {
            return;
        }
        match self.sessions[sid].stream {
            Stream::Blocked => {}
            Stream::Ahead { .. } => self.pump_ahead(sid),
            Stream::Sending(ref s) => {
                let (from, sent) = (s.from(), s.sent_to());
                let cut = self.nodes[u].cut_below(self.sessions[sid].cuts_seen, u64::MAX);
                if let Some(c) = cut.filter(|&c| s.cut_removes_sent(c)) {
                    return self.close(sid, &format!("log cut to {c} below {sent}: reconnect"));
                }
                self.sessions[sid].cuts_seen = self.nodes[u].cuts.len();
                if self.nodes[u].visible() > from {
                    self.send_step(sid, full == QUEUE_MAX);
                }
            }
        }
    }

    /// A replica ahead: once this node holds its end in the same history, stream from
    /// there; if the history changed under its records, it reconnects.
    fn pump_ahead(&mut self, sid: usize) {
        let s = &self.sessions[sid];
        let Stream::Ahead {
            upstream_end: ue,
            replica_end: re,
            epoch,
        } = s.stream
        else {
            return;
        };
        let n = &self.nodes[s.up];
        let vouched = n.log.upstream(n.visible()).leading(n.epoch);
        let same = n.cut_below(s.cuts_seen, re).is_none()
            && handshake::ahead_still_holds(&vouched.epochs, (ue, re), epoch);
        if same && n.visible() < re {
            return;
        }
        if !same {
            return self.close(sid, "history changed under the records it is ahead with");
        }
        let f = self.nodes[s.down].fetch;
        let fetch = Fetch {
            sealed: f,
            active: f,
        };
        // Credited once its last frame is this node's at its end (`check_ahead`).
        let ulog = &self.nodes[s.up].log;
        let ours = ulog.get(re - 1).map(|r| (re - 1, crc(r)));
        let s = &mut self.sessions[sid];
        s.credit.whole |= s.last_frame.is_some() && ours == s.last_frame;
        s.stream = Stream::Sending(Sender::new(re, None, fetch));
    }

    fn send_step(&mut self, sid: usize, held_back: bool) {
        let u = self.sessions[sid].up;
        let (log, visible) = (&self.nodes[u].log, self.nodes[u].visible());
        let Stream::Sending(sender) = &mut self.sessions[sid].stream else {
            unreachable!()
        };
        let step = sender.next(&log.view(visible), held_back);
        let (at, limit) = match step {
            Step::Offer { base, first, next } => {
                let m = Down::Chunk {
                    segment: (base, next),
                    first,
                    recs: None,
                };
                let at = self.net_delay();
                return self.sessions[sid].send_down(at, m);
            }
            Step::Chunk { next, at, .. } => (at, next.min(visible)),
            Step::Frames { at } => (at, visible),
        };
        if at < log.start {
            let start = log.start;
            sender.fell_behind(start);
            let m = Down::Start(
                Plan::Follow(Decision::FullSync { from: start }),
                log.incarnation,
            );
            self.stats.full_syncs += 1;
            let at = self.net_delay();
            return self.sessions[sid].send_down(at, m);
        }
        let to = limit.min(at + self.rng.gen_range(1..=3));
        if to <= at {
            return;
        }
        let recs = log.range(at, to);
        let m = match step {
            Step::Chunk { base, next, .. } => {
                sender.chunk_sent(to);
                Down::Chunk {
                    segment: (base, next),
                    first: at,
                    recs: Some(recs),
                }
            }
            _ => {
                sender.frames_sent(to);
                Down::Frames { first: at, recs }
            }
        };
        let at = self.net_delay();
        self.sessions[sid].send_down(at, m);
    }

    /// An ack reaches the upstream: never below the last one of the session; on the
    /// primary it goes to the tracker.
    pub fn deliver_up(&mut self, sid: usize) {
        let (_, Up::Ack(end)) = self.sessions[sid].to_up.pop_front().unwrap();
        let s = &mut self.sessions[sid];
        let (u, x) = (s.up, s.down);
        assert!(
            end >= s.last_ack,
            "{} acked {end} after {} in one session",
            self.nodes[x].name,
            s.last_ack
        );
        s.last_ack = end;
        let end = if s.credit.whole {
            end
        } else {
            end.min(s.credit.counted)
        };
        let name = self.nodes[x].name;
        self.note(format!("{name} acks {end}"));
        if let Some(t) = self.nodes[u].tracker.as_mut() {
            let cmds = t.replica_acked(now_instant(self.now), name, LOG, end);
            self.execute(u, cmds);
        }
    }

    /// Carry out the tracker's commands; an append acknowledged with replicas must be
    /// durable, as the primary holds it, on as many counting replicas.
    pub fn execute(&mut self, p: usize, cmds: Vec<Command>) {
        for c in cmds {
            let Command::Complete {
                req,
                confirmed,
                degraded: false,
            } = c
            else {
                continue;
            };
            let w = self.requests.remove(&req).expect("a known request");
            self.note(format!(
                "acked {}..{} {:?} confirmed by {confirmed}",
                w.first, w.end, w.mode
            ));
            if let AckMode::SemiSync(k) = w.mode {
                self.check_confirmed(p, w.first, w.end, k);
                assert!(confirmed >= k);
                self.stats.acked += 1;
            }
        }
    }
}
