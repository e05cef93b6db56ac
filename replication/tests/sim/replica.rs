//! The replica's side, executing spool-replication's decisions as the server's follower
//! does: a log start carried out (`follow::start_keeps_import`), frames appended where
//! the log ends, segment chunks staged or fetched and installed (`follow::chunk_plan`),
//! durable ends acked through the session's `AckGate`.

use spool_replication::divergence::Decision;
use spool_replication::follow::{self, Chunk, ChunkPlan};
use spool_replication::handshake::Plan;

use crate::model::Rec;
use crate::net::{Down, Up};
use crate::node::Staged;
use crate::world::{World, LOG};

impl World {
    pub fn deliver_down(&mut self, sid: usize) {
        let (_, m) = self.sessions[sid].to_down.pop_front().unwrap();
        let x = self.sessions[sid].down;
        match m {
            Down::Start(plan, incarnation) => self.apply_start(sid, plan, incarnation),
            Down::Frames { first, recs } => {
                self.nodes[x].staged = None;
                let end = self.nodes[x].log.end();
                if first != end {
                    let why = format!("frames from {first}, but the log ends at {end}");
                    return self.close(sid, &why);
                }
                if let Some(e) = recs
                    .iter()
                    .find_map(|r| self.nodes[x].log.accepts(r.epoch).err())
                {
                    return self.close(sid, &e);
                }
                for r in recs {
                    let at = self.nodes[x].log.end();
                    self.receive(sid, at, r);
                    self.nodes[x].log.push(r);
                }
            }
            Down::Chunk {
                segment,
                first,
                recs,
            } => self.on_chunk(sid, segment, first, recs),
        }
    }

    fn apply_start(&mut self, sid: usize, plan: Plan, incarnation: u64) {
        let x = self.sessions[sid].down;
        let n = &mut self.nodes[x];
        let continue_at = match plan {
            Plan::Follow(Decision::Continue { from }) => Some(from),
            _ => None,
        };
        if !follow::start_keeps_import(continue_at, n.staged.as_ref().map(Staged::import)) {
            n.staged = None;
        }
        let cut_to = match plan {
            Plan::Follow(Decision::Continue { from }) => Some(from.min(n.log.durable)),
            Plan::Follow(Decision::TruncateThenContinue { to }) => Some(to),
            _ => None,
        };
        if cut_to.is_some_and(|to| to < n.log.start) {
            // Its retention removed more since its hello: the storage refuses the cut, and
            // the next hello says where its log starts now.
            return self.close(sid, "cannot cut below the log's start");
        }
        match plan {
            Plan::Follow(Decision::Continue { from }) if n.log.durable != from => {
                n.cut(from.min(n.log.durable), false);
            }
            Plan::Follow(Decision::TruncateThenContinue { to }) => n.cut(to, false),
            Plan::Follow(Decision::FullSync { from }) | Plan::Recreate { from } => {
                n.cut(from, true);
            }
            _ => {}
        }
        if !matches!(plan, Plan::Diverged { .. }) {
            n.log.incarnation = incarnation;
        }
        let diverged = matches!(plan, Plan::Diverged { .. });
        self.sessions[sid].gate.started(LOG, diverged);
        self.check_agreement(sid);
    }

    fn on_chunk(&mut self, sid: usize, segment: (u64, u64), first: u64, recs: Option<Vec<Rec>>) {
        let x = self.sessions[sid].down;
        let chunk = Chunk {
            segment,
            first,
            fetch: recs.is_none(),
        };
        let import = self.nodes[x].staged.as_ref().map(Staged::import);
        if follow::chunk_plan(import, &chunk, u64::MAX) != Ok(ChunkPlan::Continue) {
            self.nodes[x].staged = None;
            // What is in flight lands first, and is acked.
            self.nodes[x].log.sync();
            self.send_ack(sid);
            let end = self.nodes[x].log.durable;
            match follow::chunk_plan(None, &chunk, end) {
                Ok(ChunkPlan::Begin { at }) => {
                    self.nodes[x].staged = Some(Staged {
                        base: at,
                        recs: Vec::new(),
                    })
                }
                Ok(ChunkPlan::Continue) => unreachable!("no import to continue"),
                Err(e) => return self.close(sid, &e),
            }
        }
        let staged_to = self.nodes[x].staged.as_ref().unwrap().import().staged_to;
        let recs = match recs {
            Some(r) if first == staged_to => r,
            Some(_) => return self.close(sid, "chunk does not continue what is staged"),
            None => match self.fetch(sid, staged_to, segment.1) {
                Some(r) => r,
                None => return self.close(sid, "segment fetch refused"),
            },
        };
        for r in recs {
            let at = self.nodes[x].staged.as_ref().unwrap().import().staged_to;
            self.receive(sid, at, r);
            self.nodes[x].staged.as_mut().unwrap().recs.push(r);
        }
        let s = self.nodes[x].staged.as_ref().unwrap();
        if s.import().staged_to >= segment.1 {
            let s = self.nodes[x].staged.take().unwrap();
            if let Some(e) = s
                .recs
                .iter()
                .find_map(|r| self.nodes[x].log.accepts(r.epoch).err())
            {
                return self.close(sid, &e);
            }
            self.nodes[x].log.install(s.base, &s.recs);
            self.stats.segments += 1;
            self.send_ack(sid);
        }
    }

    /// The replica copies `[from, to)` from its upstream's log over a connection of its
    /// own: only what the upstream holds visible now.
    fn fetch(&mut self, sid: usize, from: u64, to: u64) -> Option<Vec<Rec>> {
        let u = &self.nodes[self.sessions[sid].up];
        let ok = u.alive && from >= u.log.start && to <= u.visible() && from < to;
        self.stats.fetches += u64::from(ok);
        ok.then(|| u.log.range(from, to))
    }

    /// The replica's durable end goes up, for the logs its session may ack.
    pub fn send_ack(&mut self, sid: usize) {
        let s = &self.sessions[sid];
        if !s.open || !s.gate.may_ack(LOG) {
            return;
        }
        let end = self.nodes[s.down].log.durable;
        let at = self.net_delay();
        self.sessions[sid].send_up(at, Up::Ack(end));
    }
}
