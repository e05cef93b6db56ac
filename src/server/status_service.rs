//! spool.v1.Status: role, epoch, per-log positions, replicas and their lag, the upstream.

use std::sync::Arc;

use spool_proto::v1 as pb;
use spool_storage::Log;
use tonic::{Request, Response, Status};

use super::node::Node;
use super::repair::damaged_range;
use super::replication::upstream::now_us;
use super::role::Role;

#[derive(Debug, Clone)]
pub struct StatusService {
    pub node: Arc<Node>,
}

/// Lag of a replica at `acked` on `log`: records, bytes, and seconds since the primary
/// wrote the first record it lacks (0 when caught up).
fn lag(log: &Log, acked: u64) -> pb::ReplicaLogLag {
    let end = log.positions().durable;
    let lag_records = end.saturating_sub(acked);
    let lag_seconds = if lag_records == 0 {
        0.0
    } else {
        log.reader()
            .read(acked, 1, 0)
            .ok()
            .and_then(|r| r.first().map(|r| r.timestamp_us))
            .map_or(0.0, |ts| now_us().saturating_sub(ts) as f64 / 1e6)
    };
    pb::ReplicaLogLag {
        name: log.name().to_owned(),
        acked_offset: acked,
        lag_records,
        lag_bytes: if lag_records == 0 {
            0
        } else {
            log.bytes_from(acked)
        },
        lag_seconds,
        ..Default::default()
    }
}

#[tonic::async_trait]
impl pb::status_server::Status for StatusService {
    async fn get(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let mut s = status(&self.node);
        if !crate::server::auth::is_admin(&req) {
            // Where the data lives is for operators only.
            s.data_dir.clear();
        }
        Ok(Response::new(s))
    }
}

/// The node's whole status (also the source of the per-replica metrics).
pub fn status(node: &Node) -> pb::StatusResponse {
    let storage = &node.storage();
    let logs: Vec<Log> = storage
        .list_logs()
        .iter()
        .filter_map(|n| storage.log(n).ok())
        .collect();
    let positions = logs
        .iter()
        .map(|l| {
            let p = l.positions();
            let mut lp = pb::LogPositions {
                name: l.name().to_owned(),
                start_offset: p.start,
                end_offset: p.durable,
                written_offset: p.written,
                epoch: l.current_epoch(),
                size_bytes: l.size_bytes().0,
                incarnation: incarnation_hex(l),
                damaged: l.damage().iter().map(damaged_range).collect(),
                ..Default::default()
            };
            if let Some(d) = node.active_delay() {
                // Ends say what readers see; what is stored is reported beside them.
                let end = node.visible(l).end();
                lp.end_offset = end;
                lp.written_offset = end;
                lp.horizon_offset = end;
                lp.horizon_time_us = d.horizon(l).cutoff_us;
                lp.stored_offset = p.durable;
                lp.pending_delete_at_us = d
                    .pending_delete(l.name())
                    .map_or(0, |at| at.saturating_add(d.delay.as_micros() as u64));
            }
            lp
        })
        .collect();
    let replicas = node
        .replicas()
        .snapshot()
        .into_iter()
        .map(|r| pb::ReplicaStatus {
            logs: logs
                .iter()
                .map(|l| {
                    let mut lag = lag(l, r.acked.get(l.name()).copied().unwrap_or(0));
                    lag.full_sync = r.full_sync.contains_key(l.name());
                    if let Some(&(sent, next)) = r.segments.get(l.name()) {
                        lag.segment_sent_offset = sent;
                        lag.segment_next = next;
                    }
                    lag.blocked = r.blocked.get(l.name()).cloned().unwrap_or_default();
                    lag
                })
                .collect(),
            id: r.id,
            addr: r.addr,
            sync: r.sync,
            delayed: r.delayed,
            connected: r.connected,
            connected_for_ms: if r.connected {
                r.connected_at.elapsed().as_millis() as u64
            } else {
                0
            },
            last_ack_ms_ago: r.last_ack.elapsed().as_millis() as u64,
            counts_for_acks: r.counts_for_acks,
        })
        .collect();
    let (role, upstream) = match node.role().role() {
        Role::Primary => ("primary", None),
        Role::Replica { upstream } => {
            let v = node.upstream_view().lock();
            let connected = v.connected_at.is_some();
            let heard = v.last_heard.map_or(0, |t| t.elapsed().as_millis() as u64);
            let ulogs = logs
                .iter()
                .map(|l| {
                    let f = v.logs.get(l.name()).cloned().unwrap_or_default();
                    let local = l.positions().durable;
                    pb::UpstreamLogStatus {
                        name: l.name().to_owned(),
                        upstream_end: f.upstream_end,
                        local_end: local,
                        lag_records: f.upstream_end.saturating_sub(local),
                        full_sync: f.full_sync && local < f.upstream_end,
                        staged_end: f.staged.map_or(0, |(end, _)| end),
                        segment_next: f.staged.map_or(0, |(_, next)| next),
                        segments_received: f.segments_received,
                        segment_bytes_received: f.segment_bytes_received,
                        segment_bytes_fetched: f.segment_bytes_fetched,
                        upstream_end_known: f.upstream_end_known,
                        blocked: if connected {
                            f.blocked
                        } else {
                            format!("not connected to the upstream (last heard {heard} ms ago): lag unknown")
                        },
                    }
                })
                .collect();
            let up = pb::UpstreamStatus {
                addr: upstream,
                connected: v.connected_at.is_some(),
                connected_for_ms: v.connected_at.map_or(0, |t| t.elapsed().as_millis() as u64),
                last_heard_ms_ago: v.last_heard.map_or(0, |t| t.elapsed().as_millis() as u64),
                logs: ulogs,
                last_error: v.last_error.clone(),
            };
            ("replica", Some(up))
        }
    };
    pb::StatusResponse {
        role: role.into(),
        epoch: node.role().epoch(),
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_ms: node.started().elapsed().as_millis() as u64,
        io_backend: storage.backend_name().into(),
        data_dir: storage.config().data_dir.display().to_string(),
        logs: positions,
        replicas,
        upstream,
        primary_addr: node.role().primary_addr().unwrap_or_default(),
        fenced: node.role().is_fenced(),
        degraded: node.acks().is_degraded(),
        delay_ms: node
            .active_delay()
            .map_or(0, |d| d.delay.as_millis() as u64),
        paused: node
            .active_delay()
            .is_some_and(|d| d.paused_cutoff_us().is_some()),
        cluster_id: node.role().cluster_id(),
        scrub: Some(scrub_status(node)),
        cluster: node.cluster_status().map(|c| cluster_status(&c.lock())),
    }
}

pub fn incarnation_hex(log: &Log) -> String {
    match log.incarnation() {
        0 => String::new(),
        i => format!("{i:016x}"),
    }
}

fn scrub_status(node: &Node) -> pb::ScrubStatus {
    use std::sync::atomic::Ordering::Relaxed;
    let s = node.storage().scrub_stats();
    pb::ScrubStatus {
        passes: s.passes.load(Relaxed),
        segments: s.segments.load(Relaxed),
        bytes: s.bytes.load(Relaxed),
        damage_found: s.damage_found.load(Relaxed),
        index_rebuilt: s.index_rebuilt.load(Relaxed),
        last_pass_end_ms: s.last_pass_end_ms.load(Relaxed),
        running: s.running.load(Relaxed),
        bytes_per_sec: node.storage().config().scrub_bytes_per_sec,
    }
}

/// The cluster agent's view, with each member's eligibility as the election would judge it.
fn cluster_status(c: &crate::server::failover::ClusterStatus) -> pb::ClusterStatus {
    use spool_replication::failover::eligibility;
    let members: Vec<_> = c.members.iter().map(|m| m.to_member()).collect();
    let policy = &c.policy;
    pb::ClusterStatus {
        name: c.name.clone(),
        node: c.node.clone(),
        leader: c
            .leader
            .as_ref()
            .map(|l| l.node.clone())
            .unwrap_or_default(),
        leader_addr: c
            .leader
            .as_ref()
            .map(|l| l.addr.clone())
            .unwrap_or_default(),
        epoch: c.cluster_epoch,
        lease_age_ms: c
            .lease_renewed
            .map_or(0, |t| t.elapsed().as_millis() as u64),
        members: c
            .members
            .iter()
            .zip(&members)
            .map(|(r, m)| {
                let e = eligibility(m, &members, c.cluster_epoch, policy);
                pb::ClusterMember {
                    node: r.node.clone(),
                    addr: r.addr.clone(),
                    role: r.role.clone(),
                    epoch: r.epoch,
                    eligible: e.is_ok(),
                    why: e.err().map(|e| e.to_string()).unwrap_or_default(),
                }
            })
            .collect(),
        note: c.note.clone(),
    }
}
