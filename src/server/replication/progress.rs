//! What the upstream knows of each replica: connection, acknowledged offsets, last word.
//! Read by status, the retention floor and min-replicas-to-write.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use spool_proto::v1 as pb;
use tokio::sync::Notify;

#[derive(Debug, Clone)]
pub struct ReplicaInfo {
    pub id: String,
    pub addr: String,
    pub sync: bool,
    pub delayed: bool,
    pub counts_for_acks: bool,
    pub connected: bool,
    pub connected_at: Instant,
    pub last_ack: Instant,
    /// Durable end per log on the replica.
    pub acked: HashMap<String, u64>,
    /// Replicas below this one, as it last reported them (cascading).
    pub downstream: Vec<pb::DownstreamReplica>,
    /// Logs this replica was told to full sync, with the end it must reach.
    pub full_sync: HashMap<String, u64>,
    /// Per log, the sealed segment being sent whole: (sent up to, segment end).
    pub segments: HashMap<String, (u64, u64)>,
    /// Per log, why nothing is sent to it now (ahead of this node, diverged).
    pub blocked: HashMap<String, String>,
    /// Session generation: a reconnect replaces the old session's entry.
    generation: u64,
}

#[derive(Debug, Default)]
pub struct Replicas {
    map: Mutex<HashMap<String, ReplicaInfo>>,
    generation: Mutex<u64>,
    /// Woken on every ack: a replica in the middle of a tree forwards its replicas' acks
    /// upstream at once, not at its next heartbeat.
    pub acked: Notify,
}

impl Replicas {
    /// Register a session; returns its generation for [`Replicas::disconnect`].
    pub fn connect(
        &self,
        id: &str,
        addr: &str,
        sync: bool,
        delayed: bool,
        counts_for_acks: bool,
        initial: HashMap<String, u64>,
    ) -> u64 {
        let generation = {
            let mut g = self.generation.lock();
            *g += 1;
            *g
        };
        let now = Instant::now();
        self.map.lock().insert(
            id.to_owned(),
            ReplicaInfo {
                id: id.to_owned(),
                addr: addr.to_owned(),
                sync,
                delayed,
                counts_for_acks,
                connected: true,
                connected_at: now,
                last_ack: now,
                acked: initial,
                downstream: Vec::new(),
                full_sync: HashMap::new(),
                segments: HashMap::new(),
                blocked: HashMap::new(),
                generation,
            },
        );
        generation
    }

    pub fn disconnect(&self, id: &str, generation: u64) {
        if let Some(r) = self.map.lock().get_mut(id) {
            if r.generation == generation {
                r.connected = false;
            }
        }
    }

    pub fn ack(&self, id: &str, log: &str, end: u64) {
        if let Some(r) = self.map.lock().get_mut(id) {
            r.last_ack = Instant::now();
            let e = r.acked.entry(log.to_owned()).or_insert(0);
            *e = (*e).max(end);
            if r.blocked.get(log).is_some_and(|b| b.starts_with("ahead")) {
                r.blocked.remove(log);
            }
            if r.full_sync.get(log).is_some_and(|&until| end >= until) {
                r.full_sync.remove(log);
            }
        }
        self.acked.notify_one();
    }

    /// Replica `id` holds `log` up to exactly `end` (its handshake settled it): unlike an
    /// ack, this may lower its position.
    pub fn set_acked(&self, id: &str, log: &str, end: u64) {
        if let Some(r) = self.map.lock().get_mut(id) {
            r.acked.insert(log.to_owned(), end);
        }
    }

    /// Why nothing is sent to replica `id` for `log` (empty: it follows).
    pub fn set_blocked(&self, id: &str, log: &str, reason: String) {
        if let Some(r) = self.map.lock().get_mut(id) {
            if reason.is_empty() {
                r.blocked.remove(log);
            } else {
                r.blocked.insert(log.to_owned(), reason);
            }
        }
    }

    /// Replica `id` was told to copy `log` again; it is done once it acks `until`.
    pub fn full_sync_started(&self, id: &str, log: &str, until: u64) {
        if let Some(r) = self.map.lock().get_mut(id) {
            r.full_sync.insert(log.to_owned(), until);
        }
    }

    /// Progress of the sealed segment being sent to `id` (None: the segment is done).
    pub fn segment_sent(&self, id: &str, log: &str, progress: Option<(u64, u64)>) {
        if let Some(r) = self.map.lock().get_mut(id) {
            match progress {
                Some(p) => r.segments.insert(log.to_owned(), p),
                None => r.segments.remove(log),
            };
        }
    }

    /// What replica `id` said of the replicas below it.
    pub fn set_downstream(&self, id: &str, downstream: Vec<pb::DownstreamReplica>) {
        if let Some(r) = self.map.lock().get_mut(id) {
            r.downstream = downstream;
        }
    }

    /// Every connected replica below this node, with its durable ends: to forward upstream.
    pub fn descendants(&self) -> Vec<pb::DownstreamReplica> {
        let map = self.map.lock();
        let mut out = Vec::new();
        for r in map.values().filter(|r| r.connected) {
            out.push(pb::DownstreamReplica {
                replica_id: r.id.clone(),
                sync: r.sync,
                delayed: r.delayed,
                acks: r
                    .acked
                    .iter()
                    .map(|(log, &durable_end)| pb::ReplicaAck {
                        log: log.clone(),
                        durable_end,
                    })
                    .collect(),
            });
            out.extend(r.downstream.iter().cloned());
        }
        out
    }

    pub fn heard(&self, id: &str) {
        if let Some(r) = self.map.lock().get_mut(id) {
            r.last_ack = Instant::now();
        }
    }

    pub fn snapshot(&self) -> Vec<ReplicaInfo> {
        let mut v: Vec<ReplicaInfo> = self.map.lock().values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Connected replicas heard from within `max_lag` (min-replicas-to-write).
    pub fn attached_within(&self, max_lag: Duration) -> usize {
        self.map
            .lock()
            .values()
            .filter(|r| r.connected && r.last_ack.elapsed() <= max_lag)
            .count()
    }

    /// Lowest offset of `log` a connected replica still needs, if any replica is connected.
    pub fn needed(&self, log: &str) -> Vec<(String, u64)> {
        self.map
            .lock()
            .values()
            .filter(|r| r.connected)
            .map(|r| (r.id.clone(), r.acked.get(log).copied().unwrap_or(0)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_sync_and_segment_progress_until_the_replica_gets_there() {
        let r = Replicas::default();
        r.connect("a", "addr", false, false, true, HashMap::new());
        r.full_sync_started("a", "log", 500);
        r.segment_sent("a", "log", Some((120, 300)));
        let a = &r.snapshot()[0];
        assert_eq!(a.full_sync.get("log"), Some(&500));
        assert_eq!(a.segments.get("log"), Some(&(120, 300)));
        r.ack("a", "log", 300);
        r.segment_sent("a", "log", None);
        let a = &r.snapshot()[0];
        assert!(a.full_sync.contains_key("log"), "not there yet");
        assert!(a.segments.is_empty());
        r.ack("a", "log", 500);
        assert!(r.snapshot()[0].full_sync.is_empty());
        // A new session starts clean.
        r.full_sync_started("a", "log", 900);
        r.connect("a", "addr", false, false, true, HashMap::new());
        assert!(r.snapshot()[0].full_sync.is_empty());
    }

    #[test]
    fn descendants_are_every_connected_replica_below() {
        let r = Replicas::default();
        let g = r.connect("a", "addr", false, false, true, HashMap::new());
        r.ack("a", "log", 7);
        r.set_downstream(
            "a",
            vec![pb::DownstreamReplica {
                replica_id: "b".into(),
                ..Default::default()
            }],
        );
        let ids: Vec<String> = r.descendants().into_iter().map(|d| d.replica_id).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(r.descendants()[0].acks[0].durable_end, 7);
        r.disconnect("a", g);
        assert!(r.descendants().is_empty());
    }
}
