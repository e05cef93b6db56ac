//! What goes wrong: broken connections, crashes that lose what was not durable,
//! retention removing what a lagging replica needs, failovers (a delayed replica promoted
//! at a point cuts its log), and a cascaded replica moved to another upstream.

use rand::Rng;

use crate::node::{new_tracker, ACK_TIMEOUT_MS};
use crate::world::{World, FAILOVERS_MAX};

const RESTART_DOWN_MS: std::ops::RangeInclusive<u64> = 20..=1500;
const RETAIN_AFTER_MS: u64 = 3 * ACK_TIMEOUT_MS;

impl World {
    pub fn fault(&mut self) {
        match self.rng.gen_range(0..100) {
            0..=39 => self.disconnect(),
            40..=59 => self.restart(),
            60..=84 => self.retention(),
            85..=89 => self.failover(),
            _ => self.repoint(),
        }
    }

    fn disconnect(&mut self) {
        let open: Vec<usize> = (0..self.sessions.len())
            .filter(|&i| self.sessions[i].open)
            .collect();
        if !open.is_empty() {
            let sid = open[self.rng.gen_range(0..open.len())];
            self.close(sid, "connection lost");
        }
    }

    /// Close every session `x` takes part in.
    pub fn close_all(&mut self, x: usize, why: &str) {
        for sid in 0..self.sessions.len() {
            let s = &self.sessions[sid];
            if s.open && (s.up == x || s.down == x) {
                self.close(sid, why);
            }
        }
    }

    fn restart(&mut self) {
        let x = self.rng.gen_range(0..self.nodes.len());
        if !self.nodes[x].alive {
            return;
        }
        self.crash(x);
    }

    fn crash(&mut self, x: usize) {
        self.close_all(x, "node crashed");
        let n = &self.nodes[x];
        let keep = self.rng.gen_range(n.log.durable..=n.log.end());
        let keep_staged = self.rng.gen_bool(0.5);
        let down = self.rng.gen_range(RESTART_DOWN_MS);
        let n = &mut self.nodes[x];
        n.crash(keep, keep_staged);
        n.down_until = self.now + down;
        self.stats.restarts += 1;
        let name = self.nodes[x].name;
        self.note(format!("{name} crashed, kept up to {keep}"));
    }

    /// Retention removes the oldest segments, on a delayed replica never past its horizon.
    fn retention(&mut self) {
        let x = self.rng.gen_range(0..self.nodes.len());
        let n = &self.nodes[x];
        // Retention by age, which is far longer than an ack waits: it never removes
        // what an append waiting for its acks wrote.
        let old = |b: u64| {
            n.log
                .get(b - 1)
                .is_some_and(|r| r.ts + RETAIN_AFTER_MS <= self.now)
        };
        let points: Vec<u64> = n
            .log
            .retention_points(n.visible())
            .into_iter()
            .filter(|&b| old(b))
            .collect();
        if points.is_empty() {
            return;
        }
        let base = points[self.rng.gen_range(0..points.len())];
        self.nodes[x].log.retain_from(base);
        let name = self.nodes[x].name;
        self.note(format!("{name} retention to {base}"));
    }

    /// The primary dies and one of its replicas is promoted: a delayed one maybe at a
    /// point below its horizon (cutting its log), the others at everything they hold.
    fn failover(&mut self) {
        let Some(p) = self.primary() else { return };
        let candidates: Vec<usize> = (0..self.nodes.len())
            .filter(|&x| self.nodes[x].up == Some(p) && self.nodes[x].alive)
            .collect();
        if candidates.is_empty() || self.failovers >= FAILOVERS_MAX {
            return;
        }
        let n = candidates[self.rng.gen_range(0..candidates.len())];
        self.crash(p);
        self.close_all(n, "promoted");
        if self.nodes[n].delay.is_some() && self.rng.gen_bool(0.5) {
            let log = &self.nodes[n].log;
            let point = self.rng.gen_range(log.start..=self.nodes[n].visible());
            if point < log.end() {
                self.nodes[n].cut(point, false);
                self.stats.cuts += 1;
            }
        }
        let epoch = self.nodes.iter().map(|x| x.epoch).max().unwrap() + 1;
        let node = &mut self.nodes[n];
        node.delay = None;
        node.up = None;
        node.epoch = epoch;
        node.led_epoch = epoch;
        node.log.begin_epoch(epoch);
        node.tracker = Some(new_tracker());
        for x in 0..self.nodes.len() {
            if self.nodes[x].up == Some(p) && x != n {
                self.nodes[x].up = Some(n);
            }
        }
        let old = &mut self.nodes[p];
        old.up = Some(n);
        old.tracker = None;
        self.failovers += 1;
        self.stats.failovers += 1;
        let (pn, nn) = (self.nodes[p].name, self.nodes[n].name);
        self.note(format!(
            "failover: {nn} promoted to epoch {epoch}, {pn} follows it"
        ));
    }

    /// A replica that follows another replica moves to the primary or another replica
    /// that follows the primary (one that may lag it: it is then ahead of its upstream).
    fn repoint(&mut self) {
        let Some(p) = self.primary() else { return };
        let cascaded: Vec<usize> = (0..self.nodes.len())
            .filter(|&x| self.nodes[x].up.is_some_and(|u| u != p))
            .collect();
        if cascaded.is_empty() {
            return;
        }
        let c = cascaded[self.rng.gen_range(0..cascaded.len())];
        let targets: Vec<usize> = (0..self.nodes.len())
            .filter(|&x| x != c && (x == p || self.nodes[x].up == Some(p)))
            .collect();
        let to = targets[self.rng.gen_range(0..targets.len())];
        if let Some(sid) = self.nodes[c].session {
            self.close(sid, "moved to another upstream");
        }
        self.nodes[c].up = Some(to);
        let (cn, tn) = (self.nodes[c].name, self.nodes[to].name);
        self.note(format!("{cn} now follows {tn}"));
    }
}
