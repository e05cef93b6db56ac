//! Sending and delivering messages: a coordinator message is lost while its node is cut
//! off; a message between nodes may be lost while faults go on; a paused node's messages
//! wait for it.

use rand::Rng;

use crate::net::{Addr, Body, Msg};
use crate::world::World;

const COORD_DELAY_MS: u64 = 20;
const PEER_DELAY_MS: u64 = 30;
const LOSS: f64 = 0.01;
const SLOW: f64 = 0.005;
const SLOW_MS: std::ops::RangeInclusive<u64> = 200..=1200;

impl World {
    pub fn send(&mut self, from: Addr, to: Addr, body: Body) {
        let coord = from == Addr::Coord || to == Addr::Coord;
        // A node loses coordinator messages only while cut off (a fault of its own: two
        // rounds' worth lost would expire a healthy member's lease, a second fault).
        if !coord && self.faults && self.rng.gen_bool(LOSS) {
            return;
        }
        let max = if coord { COORD_DELAY_MS } else { PEER_DELAY_MS };
        let mut at = self.now + self.rng.gen_range(1..=max);
        if from == Addr::Coord && self.faults && self.rng.gen_bool(SLOW) {
            // A slow answer (the coordinator stalls): the call may time out after the
            // coordinator did what it asked, as a campaign won without the winner knowing.
            at += self.rng.gen_range(SLOW_MS);
        }
        self.net.send(Msg { at, from, to, body });
    }

    /// Send `req` from node `x` to the coordinator; the id its answer will carry.
    pub fn send_coord(&mut self, x: usize, req: crate::coord::Req) -> u64 {
        let id = self.next_id();
        self.send(Addr::Node(x), Addr::Coord, Body::ToCoord(id, req));
        id
    }

    /// Everything due that its receiver can take.
    pub fn deliver(&mut self) {
        let now = self.now;
        loop {
            let nodes = &self.nodes;
            let ready = |a: Addr| match a {
                Addr::Coord => true,
                Addr::Node(x) => !nodes[x].alive || now >= nodes[x].paused_until,
            };
            let Some(m) = self.net.take_due(now, ready) else {
                return;
            };
            self.receive(m);
        }
    }

    fn cut(&self, a: Addr) -> bool {
        matches!(a, Addr::Node(x) if self.now < self.nodes[x].cut_until)
    }

    fn receive(&mut self, m: Msg) {
        if self.cut(m.from) && m.to == Addr::Coord || self.cut(m.to) && m.from == Addr::Coord {
            return;
        }
        let (Addr::Node(x), body) = (m.to, m.body.clone()) else {
            if let (Addr::Node(x), Body::ToCoord(id, req)) = (m.from, m.body) {
                let resp = self.coord.handle(self.now, req);
                self.send(Addr::Coord, Addr::Node(x), Body::FromCoord(id, resp));
            }
            return;
        };
        if !self.nodes[x].alive {
            return;
        }
        let Addr::Node(from) = m.from else {
            if let Body::FromCoord(id, resp) = body {
                self.on_coord(x, id, resp);
            }
            return;
        };
        match body {
            Body::Fetch(f) => self.on_fetch(x, from, f),
            Body::Frames(fr) => self.on_frames(x, fr),
            Body::TailReq { id, from: f, to } => self.on_tail_req(x, from, id, f, to),
            Body::Tail {
                id,
                history,
                from: f,
                recs,
            } => self.on_tail(x, id, &history, f, &recs),
            Body::LookNow => self.on_look_now(x),
            Body::ToCoord(..) | Body::FromCoord(..) => {}
        }
    }
}
