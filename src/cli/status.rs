//! `spool status`: the node's role, epoch, logs, replicas with their lag, its upstream.

use anyhow::Result;
use spool::client::Client;
use spool_proto::v1 as pb;

use super::times;

pub async fn status(client: &Client, json: bool) -> Result<()> {
    let s = client.status().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status_json(&s))?);
        return Ok(());
    }
    let mut flags = String::new();
    if s.fenced {
        flags.push_str(" FENCED");
    }
    if s.degraded {
        flags.push_str(" DEGRADED");
    }
    if s.delay_ms > 0 {
        flags.push_str(&format!(" DELAYED {:.3}s", s.delay_ms as f64 / 1000.0));
    }
    if s.paused {
        flags.push_str(" PAUSED");
    }
    println!(
        "{} at {} (epoch {}, spool {}, up {:.1}s, io {}, data {}){flags}",
        s.role,
        client.addr(),
        s.epoch,
        s.version,
        s.uptime_ms as f64 / 1000.0,
        s.io_backend,
        s.data_dir
    );
    if s.role == "replica" {
        println!("  primary: {}", s.primary_addr);
    }
    println!(
        "  cluster: {}",
        if s.cluster_id.is_empty() {
            "(none yet: joins its upstream's)"
        } else {
            &s.cluster_id
        }
    );
    if let Some(c) = &s.cluster {
        print_cluster(c);
    }
    if let Some(sc) = &s.scrub {
        println!(
            "  scrub: {} pass(es), {} segments, {} bytes, {} damaged found{}",
            sc.passes,
            sc.segments,
            sc.bytes,
            sc.damage_found,
            if sc.running { ", running" } else { "" }
        );
    }
    if let Some(u) = &s.upstream {
        println!(
            "  upstream {} {} (heard {} ms ago)",
            u.addr,
            connected(u.connected),
            u.last_heard_ms_ago
        );
        if !u.connected && !u.last_error.is_empty() {
            println!("    last error: {}", u.last_error);
        }
        for l in &u.logs {
            let line = if l.upstream_end_known {
                format!(
                    "{:<22} local {:>10}  upstream {:>10}  lag {:>8} records",
                    l.name, l.local_end, l.upstream_end, l.lag_records,
                )
            } else {
                format!(
                    "{:<22} local {:>10}  upstream unknown (waiting for the first heartbeat)",
                    l.name, l.local_end,
                )
            };
            let receiving = Transfer("receiving", l.local_end, l.staged_end, l.segment_next);
            print_replicated_log("    ", &line, l.full_sync, receiving, &l.blocked);
        }
    }
    println!("  logs:");
    for l in &s.logs {
        println!(
            "    {:<22} start {:>10}  end {:>10}  written {:>10}  epoch {:>3}  {:>12} bytes",
            l.name, l.start_offset, l.end_offset, l.written_offset, l.epoch, l.size_bytes
        );
        if !l.incarnation.is_empty() {
            println!("      incarnation {}", l.incarnation);
        }
        for d in &l.damaged {
            println!("      DAMAGED: {}", super::admin::damaged(d));
        }
        if s.delay_ms > 0 {
            let written = if l.horizon_time_us == 0 {
                "nothing visible yet".to_owned()
            } else {
                format!("written up to {}", times::with_age(l.horizon_time_us))
            };
            println!(
                "      horizon {:>10} ({written})  stored {:>10}{}",
                l.horizon_offset,
                l.stored_offset,
                if l.pending_delete_at_us > 0 {
                    format!(
                        "  DELETED upstream: goes at {}",
                        times::with_age(l.pending_delete_at_us)
                    )
                } else {
                    String::new()
                }
            );
        }
    }
    if !s.replicas.is_empty() {
        println!("  replicas:");
    }
    for r in &s.replicas {
        println!(
            "    {} at {} {}{}{}{} (connected {:.1}s, last ack {} ms ago)",
            r.id,
            r.addr,
            connected(r.connected),
            if r.sync { ", sync" } else { "" },
            if r.delayed { ", delayed" } else { "" },
            if r.counts_for_acks {
                ""
            } else {
                ", not counted for acks"
            },
            r.connected_for_ms as f64 / 1000.0,
            r.last_ack_ms_ago
        );
        for l in &r.logs {
            let line = format!(
                "{:<20} acked {:>10}  lag {:>8} records {:>12} bytes {:>8.3} s",
                l.name, l.acked_offset, l.lag_records, l.lag_bytes, l.lag_seconds,
            );
            let sending = Transfer(
                "sending",
                l.acked_offset,
                l.segment_sent_offset,
                l.segment_next,
            );
            print_replicated_log("      ", &line, l.full_sync, sending, &l.blocked);
        }
    }
    Ok(())
}

fn connected(yes: bool) -> &'static str {
    if yes {
        "connected"
    } else {
        "DISCONNECTED"
    }
}

/// A log's replication line as either end shows it (the upstream's replica list, the
/// replica's upstream): the line, a full sync, a sealed segment in transfer, then on a
/// line of its own why the log is blocked.
fn print_replicated_log(indent: &str, line: &str, full_sync: bool, t: Transfer, blocked: &str) {
    let full_sync = if full_sync { "  (full sync)" } else { "" };
    println!("{indent}{line}{full_sync}{t}");
    if !blocked.is_empty() {
        println!("{indent}  {blocked}");
    }
}

/// A sealed segment in transfer: (what is done to it, from offset, done up to, next
/// segment's base). Shown as "  (receiving a segment: N of M records)"; nothing when
/// the next base is 0 (none in transfer).
struct Transfer(&'static str, u64, u64, u64);

impl std::fmt::Display for Transfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Transfer(what, from, done, next) = *self;
        if next == 0 {
            return Ok(());
        }
        let (done, all) = (done.saturating_sub(from), next.saturating_sub(from));
        write!(f, "  ({what} a segment: {done} of {all} records)")
    }
}

fn status_json(s: &pb::StatusResponse) -> serde_json::Value {
    let logs = json_each(&s.logs, |l| {
        serde_json::json!({"name": l.name, "start_offset": l.start_offset,
            "end_offset": l.end_offset, "written_offset": l.written_offset,
            "epoch": l.epoch, "size_bytes": l.size_bytes,
            "horizon_offset": l.horizon_offset, "horizon_time_us": l.horizon_time_us,
            "stored_offset": l.stored_offset, "pending_delete_at_us": l.pending_delete_at_us,
            "incarnation": l.incarnation, "damaged": json_each(&l.damaged, damaged_json)})
    });
    let replicas = json_each(&s.replicas, |r| {
        let logs = json_each(&r.logs, |l| {
            serde_json::json!({"name": l.name, "acked_offset": l.acked_offset,
                "lag_records": l.lag_records, "lag_bytes": l.lag_bytes,
                "lag_seconds": l.lag_seconds, "full_sync": l.full_sync,
                "segment_sent_offset": l.segment_sent_offset,
                "segment_next": l.segment_next, "blocked": l.blocked})
        });
        serde_json::json!({"id": r.id, "addr": r.addr, "sync": r.sync, "delayed": r.delayed,
            "connected": r.connected, "connected_for_ms": r.connected_for_ms,
            "last_ack_ms_ago": r.last_ack_ms_ago, "counts_for_acks": r.counts_for_acks,
            "logs": logs})
    });
    let upstream = s.upstream.as_ref().map(|u| {
        let logs = json_each(&u.logs, |l| {
            serde_json::json!({"name": l.name, "upstream_end": l.upstream_end,
                "local_end": l.local_end, "lag_records": l.lag_records,
                "upstream_end_known": l.upstream_end_known,
                "full_sync": l.full_sync, "staged_end": l.staged_end,
                "segment_next": l.segment_next, "blocked": l.blocked})
        });
        serde_json::json!({"addr": u.addr, "connected": u.connected,
            "connected_for_ms": u.connected_for_ms, "last_heard_ms_ago": u.last_heard_ms_ago,
            "logs": logs})
    });
    serde_json::json!({
        "role": s.role, "epoch": s.epoch, "version": s.version, "uptime_ms": s.uptime_ms,
        "io_backend": s.io_backend, "data_dir": s.data_dir, "primary_addr": s.primary_addr,
        "fenced": s.fenced, "degraded": s.degraded, "delay_ms": s.delay_ms, "paused": s.paused,
        "cluster_id": s.cluster_id, "scrub": s.scrub.as_ref().map(|sc| serde_json::json!({
            "passes": sc.passes, "segments": sc.segments, "bytes": sc.bytes,
            "damage_found": sc.damage_found, "index_rebuilt": sc.index_rebuilt,
            "last_pass_end_ms": sc.last_pass_end_ms, "running": sc.running,
            "bytes_per_sec": sc.bytes_per_sec})),
        "logs": logs, "replicas": replicas, "upstream": upstream,
        "coordinator": s.cluster.as_ref().map(cluster_json),
    })
}

/// The coordinator's view: leader, epoch, lease age, each member and its eligibility.
fn print_cluster(c: &pb::ClusterStatus) {
    let leader = if c.leader.is_empty() {
        "none".to_owned()
    } else {
        format!("{} at {}", c.leader, c.leader_addr)
    };
    let lease = lease_text(c);
    println!(
        "  coordinator: cluster {:?}, this node {:?}, leader {leader}, epoch {}{lease}",
        c.name, c.node, c.epoch
    );
    for m in &c.members {
        let eligible = if m.eligible {
            "eligible".to_owned()
        } else {
            format!("not eligible: {}", m.why)
        };
        println!(
            "    {:<20} {:<22} {:<8} epoch {:<4} {eligible}",
            m.node, m.addr, m.role, m.epoch
        );
    }
    if !c.note.is_empty() {
        println!("    note: {}", c.note);
    }
}

/// The leader key's lease as this node knows it: its age where this node holds it (the
/// leader renews it; etcd tells no one else when), else where to look.
fn lease_text(c: &pb::ClusterStatus) -> String {
    if c.leader.is_empty() {
        String::new()
    } else if c.leader == c.node {
        format!(", lease renewed {} ms ago", c.lease_age_ms)
    } else {
        format!(
            ", lease held by {} (its age: `spool status` on the leader)",
            c.leader
        )
    }
}

fn cluster_json(c: &pb::ClusterStatus) -> serde_json::Value {
    let members = json_each(&c.members, |m| {
        serde_json::json!({"node": m.node, "addr": m.addr, "role": m.role, "epoch": m.epoch,
            "eligible": m.eligible, "why": m.why})
    });
    serde_json::json!({"name": c.name, "node": c.node, "leader": c.leader,
        "leader_addr": c.leader_addr, "epoch": c.epoch, "lease_age_ms": c.lease_age_ms,
        "members": members, "note": c.note})
}

/// `f` of each item: a JSON array's elements.
fn json_each<T>(items: &[T], f: impl Fn(&T) -> serde_json::Value) -> Vec<serde_json::Value> {
    items.iter().map(f).collect()
}

fn damaged_json(d: &pb::DamagedRange) -> serde_json::Value {
    serde_json::json!({"first_offset": d.first_offset, "next_offset": d.next_offset,
        "segment_base": d.segment_base, "reason": d.reason})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_age_is_shown_where_it_is_known_and_labelled_elsewhere() {
        let on = |node: &str, leader: &str, age| pb::ClusterStatus {
            node: node.into(),
            leader: leader.into(),
            lease_age_ms: age,
            ..Default::default()
        };
        assert_eq!(lease_text(&on("n1", "n1", 0)), ", lease renewed 0 ms ago");
        assert_eq!(
            lease_text(&on("n1", "n1", 120)),
            ", lease renewed 120 ms ago"
        );
        let other = lease_text(&on("n2", "n1", 0));
        assert!(
            other.contains("held by n1") && !other.contains("0 ms"),
            "{other}"
        );
        assert_eq!(lease_text(&on("n2", "", 0)), "");
    }
}
