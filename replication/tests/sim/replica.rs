//! The replica's side, executing the commands of the session's `ReplicaSession` as the
//! server's follower does: a log start carried out, frames appended where the log ends,
//! segment chunks staged or fetched and installed (installs land at once here), durable
//! ends acked through the machine's gate.

use spool_replication::divergence::Decision;
use spool_replication::follow::Chunk;
use spool_replication::handshake::Plan;
use spool_replication::session::{Command, Here, Start};

use crate::model::Rec;
use crate::net::{Down, Up};
use crate::node::Staged;
use crate::world::{World, LOG};

impl World {
    pub fn deliver_down(&mut self, sid: usize) {
        let (_, m) = self.sessions[sid].to_down.pop_front().unwrap();
        match m {
            Down::Start(plan, incarnation) => self.on_start(sid, plan, incarnation),
            Down::Frames { first, recs } => {
                for cmd in self.sessions[sid].replica.frames(LOG, false) {
                    if let Some(Command::Append { .. }) = self.common(sid, cmd) {
                        self.append(sid, first, &recs);
                    }
                }
            }
            Down::Chunk {
                segment,
                first,
                recs,
            } => self.on_chunk(sid, segment, first, recs),
        }
    }

    /// Carry out a command shared by every message; hands back the others.
    fn common(&mut self, sid: usize, cmd: Command) -> Option<Command> {
        let x = self.sessions[sid].down;
        match cmd {
            // Appends are durable once synced; installs land at once.
            Command::Drain => self.nodes[x].log.sync(),
            Command::DropImport(_) => self.nodes[x].staged = None,
            Command::DropFollowOn(_) => {}
            Command::SendAcks => self.send_ack(sid),
            other => return Some(other),
        }
        None
    }

    fn append(&mut self, sid: usize, first: u64, recs: &[Rec]) {
        let x = self.sessions[sid].down;
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
        for &r in recs {
            let at = self.nodes[x].log.end();
            self.receive(sid, at, r);
            self.nodes[x].log.push(r);
        }
    }

    fn on_start(&mut self, sid: usize, plan: Plan, incarnation: u64) {
        let x = self.sessions[sid].down;
        let start = Start {
            continue_at: match plan {
                Plan::Follow(Decision::Continue { from }) => Some(from),
                _ => None,
            },
            recreate: matches!(plan, Plan::Recreate { .. }),
            diverged: matches!(plan, Plan::Diverged { .. }),
        };
        let here = Here {
            exists: true,
            import: self.nodes[x].staged.as_ref().map(Staged::import),
            ..Default::default()
        };
        for cmd in self.sessions[sid].replica.start(LOG, start, here, self.now) {
            if let Some(Command::ApplyStart(_)) = self.common(sid, cmd) {
                self.apply_start(sid, &plan, incarnation);
            }
        }
        self.check_agreement(sid);
    }

    fn apply_start(&mut self, sid: usize, plan: &Plan, incarnation: u64) {
        let n = &mut self.nodes[self.sessions[sid].down];
        let cut_to = match *plan {
            Plan::Follow(Decision::Continue { from }) => Some(from.min(n.log.durable)),
            Plan::Follow(Decision::TruncateThenContinue { to }) => Some(to),
            _ => None,
        };
        if cut_to.is_some_and(|to| to < n.log.start) {
            // Its retention removed more since its hello: the storage refuses the cut, and
            // the next hello says where its log starts now.
            return self.close(sid, "cannot cut below the log's start");
        }
        match *plan {
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
    }

    fn on_chunk(&mut self, sid: usize, segment: (u64, u64), first: u64, recs: Option<Vec<Rec>>) {
        let x = self.sessions[sid].down;
        let chunk = Chunk {
            segment,
            first,
            fetch: recs.is_none(),
        };
        let import = self.nodes[x].staged.as_ref().map(Staged::import);
        let mut recs = Some(recs);
        for cmd in self.sessions[sid].replica.chunk(LOG, &chunk, import) {
            match self.common(sid, cmd) {
                Some(Command::BeginFollowOn(_)) => self.begin(x, first),
                Some(Command::BeginImport(_)) => {
                    let end = self.nodes[x].log.durable;
                    match self.sessions[sid].replica.begin_at(&chunk, end) {
                        Ok(at) => self.begin(x, at),
                        Err(e) => return self.close(sid, &e),
                    }
                }
                Some(Command::Receive { .. }) => {
                    let open = self.receive_chunk(sid, segment, first, recs.take().unwrap());
                    if !open {
                        return;
                    }
                }
                _ => {}
            }
        }
        let staged_to = self.nodes[x].staged.as_ref().unwrap().import().staged_to;
        for cmd in self.sessions[sid].replica.staged(LOG, staged_to, segment.1) {
            if let Some(Command::Install(_)) = self.common(sid, cmd) {
                self.install(sid);
            }
        }
    }

    fn begin(&mut self, x: usize, at: u64) {
        self.nodes[x].staged = Some(Staged {
            base: at,
            recs: Vec::new(),
        });
    }

    /// Stage the chunk's frames, or fetch the rest of the segment; false when the session
    /// ended.
    fn receive_chunk(
        &mut self,
        sid: usize,
        segment: (u64, u64),
        first: u64,
        recs: Option<Vec<Rec>>,
    ) -> bool {
        let x = self.sessions[sid].down;
        let staged_to = self.nodes[x].staged.as_ref().unwrap().import().staged_to;
        let recs = match recs {
            Some(r) if first == staged_to => r,
            Some(_) => {
                self.close(sid, "chunk does not continue what is staged");
                return false;
            }
            None => match self.fetch(sid, staged_to, segment.1) {
                Some(r) => r,
                None => {
                    self.close(sid, "segment fetch refused");
                    return false;
                }
            },
        };
        for r in recs {
            let at = self.nodes[x].staged.as_ref().unwrap().import().staged_to;
            self.receive(sid, at, r);
            self.nodes[x].staged.as_mut().unwrap().recs.push(r);
        }
        true
    }

    /// The segment received whole goes in place (at once here) and is acked.
    fn install(&mut self, sid: usize) {
        let x = self.sessions[sid].down;
        let s = self.nodes[x].staged.take().unwrap();
        if let Some(e) = s
            .recs
            .iter()
            .find_map(|r| self.nodes[x].log.accepts(r.epoch).err())
        {
            return self.close(sid, &e);
        }
        self.nodes[x].log.install(s.base, &s.recs);
        self.sessions[sid].replica.landed(LOG);
        self.stats.segments += 1;
        self.send_ack(sid);
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
        if !s.open || !s.replica.gate().may_ack(LOG) {
            return;
        }
        let end = self.nodes[s.down].log.durable;
        let at = self.net_delay();
        self.sessions[sid].send_up(at, Up::Ack(end));
    }
}
