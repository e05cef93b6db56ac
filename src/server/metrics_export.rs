//! Prometheus text endpoint: the `metrics` recorder with an HTTP listener, plus per-log
//! gauges refreshed every second.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use super::node::Node;
use super::status_service::status;

const LATENCY_BUCKETS_S: &[f64] = &[
    50e-6, 100e-6, 200e-6, 400e-6, 800e-6, 1.6e-3, 3.2e-3, 6.4e-3, 12.8e-3, 25.6e-3, 51.2e-3,
    102.4e-3, 0.5, 1.0,
];
const GROUP_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];
/// Powers of four from one page to 16 MiB: histograms (not summaries) aggregate across
/// nodes.
const GROUP_BYTES_BUCKETS: &[f64] = &[
    4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
];

pub fn install(addr: SocketAddr, node: Arc<Node>) -> Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS_S)?
        .set_buckets_for_metric(
            Matcher::Full("spool_group_commit_appends".into()),
            GROUP_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full("spool_group_commit_bytes".into()),
            GROUP_BYTES_BUCKETS,
        )?
        .install()
        .with_context(|| format!("starting the metrics endpoint on {addr}"))?;
    tracing::info!(%addr, "metrics on http://{addr}/metrics");
    super::metrics_catalog::register();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let storage = &node.storage();
            for name in storage.list_logs() {
                let Ok(log) = storage.log(&name) else {
                    continue;
                };
                let p = log.positions();
                let (size, disk) = log.size_bytes();
                let labels = [("log", name.clone())];
                metrics::gauge!("spool_log_end_offset", &labels).set(p.durable as f64);
                metrics::gauge!("spool_log_start_offset", &labels).set(p.start as f64);
                metrics::gauge!("spool_log_size_bytes", &labels).set(size as f64);
                metrics::gauge!("spool_log_disk_bytes", &labels).set(disk as f64);
            }
            replication_gauges(&node);
            node_gauges(&node);
        }
    });
    Ok(())
}

/// Per replica (on an upstream) and per upstream log (on a replica): what `spool status`
/// shows, as gauges. A replica that went away keeps its last values with connected = 0.
fn replication_gauges(node: &Node) {
    let s = status(node);
    for r in &s.replicas {
        let id = [("replica", r.id.clone())];
        metrics::gauge!("spool_replica_connected", &id).set(f64::from(u8::from(r.connected)));
        metrics::gauge!("spool_replica_last_ack_seconds", &id).set(r.last_ack_ms_ago as f64 / 1e3);
        for l in &r.logs {
            let labels = [("replica", r.id.clone()), ("log", l.name.clone())];
            metrics::gauge!("spool_replica_acked_offset", &labels).set(l.acked_offset as f64);
            metrics::gauge!("spool_replica_lag_records", &labels).set(l.lag_records as f64);
            metrics::gauge!("spool_replica_lag_bytes", &labels).set(l.lag_bytes as f64);
            metrics::gauge!("spool_replica_lag_seconds", &labels).set(l.lag_seconds);
            metrics::gauge!("spool_replica_full_sync", &labels)
                .set(f64::from(u8::from(l.full_sync)));
        }
    }
    if let Some(u) = &s.upstream {
        metrics::gauge!("spool_upstream_connected").set(f64::from(u8::from(u.connected)));
        for l in &u.logs {
            let labels = [("log", l.name.clone())];
            metrics::gauge!("spool_upstream_lag_records", &labels).set(l.lag_records as f64);
            metrics::gauge!("spool_upstream_full_sync", &labels)
                .set(f64::from(u8::from(l.full_sync)));
            metrics::gauge!("spool_upstream_segment_staged_records", &labels)
                .set(l.staged_end.saturating_sub(l.local_end) as f64);
            // Cumulative since the node started: counters, set from the status's totals.
            metrics::counter!("spool_upstream_segments_received_total", &labels)
                .absolute(l.segments_received);
            metrics::counter!("spool_upstream_segment_bytes_received_total", &labels)
                .absolute(l.segment_bytes_received);
            metrics::counter!("spool_upstream_segment_bytes_fetched_total", &labels)
                .absolute(l.segment_bytes_fetched);
        }
    }
}

/// The node's role, epoch and fencing, as the status shows them.
fn node_gauges(node: &Node) {
    let role = node.role();
    metrics::gauge!("spool_is_primary").set(f64::from(u8::from(role.is_primary())));
    metrics::gauge!("spool_epoch").set(role.epoch() as f64);
    metrics::gauge!("spool_fenced").set(f64::from(u8::from(role.is_fenced())));
}
