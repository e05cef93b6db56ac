//! Every metric family the node exports, with its kind and HELP text: described to the
//! exporter and created at zero when it starts, so that dashboards and alerts see each
//! family on an idle node, not from its first event. A test keeps the table and the code's
//! metric names in step.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// (name, kind, unit, HELP). Names follow Prometheus's rules: `_total` for counters,
/// `_seconds` and `_bytes` for units.
pub const FAMILIES: &[(&str, Kind, Option<Unit>, &str)] = &[
    // Appends and reads.
    (
        "spool_appended_records_total",
        Kind::Counter,
        None,
        "Records appended (acknowledged), all logs.",
    ),
    (
        "spool_appended_bytes_total",
        Kind::Counter,
        Some(Unit::Bytes),
        "Record bytes appended (acknowledged), all logs.",
    ),
    (
        "spool_append_duplicates_total",
        Kind::Counter,
        None,
        "Idempotent appends answered from the log as retries of a batch it holds.",
    ),
    (
        "spool_append_seconds",
        Kind::Histogram,
        Some(Unit::Seconds),
        "Append latency on this node, from queueing to the acknowledgement.",
    ),
    (
        "spool_read_records_total",
        Kind::Counter,
        None,
        "Records returned by Read calls.",
    ),
    (
        "spool_subscribed_records_total",
        Kind::Counter,
        None,
        "Records sent to subscribers.",
    ),
    (
        "spool_subscribers",
        Kind::Gauge,
        None,
        "Open Subscribe streams.",
    ),
    // gRPC calls.
    (
        "spool_grpc_requests_total",
        Kind::Counter,
        None,
        "gRPC calls received, by method.",
    ),
    (
        "spool_grpc_errors_total",
        Kind::Counter,
        None,
        "gRPC calls answered with an error status at their start, by method and code.",
    ),
    // Storage.
    (
        "spool_storage_bytes_written_total",
        Kind::Counter,
        Some(Unit::Bytes),
        "Bytes the storage thread wrote to segment files.",
    ),
    (
        "spool_fsync_seconds",
        Kind::Histogram,
        Some(Unit::Seconds),
        "fdatasync latency of group commits.",
    ),
    (
        "spool_group_commit_appends",
        Kind::Histogram,
        None,
        "Appends per group commit.",
    ),
    (
        "spool_group_commit_bytes",
        Kind::Histogram,
        Some(Unit::Bytes),
        "Bytes per group commit.",
    ),
    (
        "spool_log_end_offset",
        Kind::Gauge,
        None,
        "A log's durable end offset (next offset to be written).",
    ),
    (
        "spool_log_start_offset",
        Kind::Gauge,
        None,
        "A log's first offset still kept.",
    ),
    (
        "spool_log_size_bytes",
        Kind::Gauge,
        Some(Unit::Bytes),
        "A log's bytes of records in its segments.",
    ),
    (
        "spool_log_disk_bytes",
        Kind::Gauge,
        Some(Unit::Bytes),
        "A log's bytes on disk (segments preallocate).",
    ),
    (
        "spool_scrub_passes_total",
        Kind::Counter,
        None,
        "Background scrub passes completed.",
    ),
    (
        "spool_scrub_bytes_total",
        Kind::Counter,
        Some(Unit::Bytes),
        "Bytes the background scrub verified.",
    ),
    (
        "spool_scrub_damage_found_total",
        Kind::Counter,
        None,
        "Damaged runs of records the scrub found.",
    ),
    // The node.
    (
        "spool_build_info",
        Kind::Gauge,
        None,
        "Always 1; the version in its label.",
    ),
    (
        "spool_is_primary",
        Kind::Gauge,
        None,
        "1 on a primary, 0 on a replica.",
    ),
    (
        "spool_epoch",
        Kind::Gauge,
        None,
        "The node's epoch (raised by each promotion).",
    ),
    (
        "spool_fenced",
        Kind::Gauge,
        None,
        "1 when a node at a higher epoch exists: this one refuses writes.",
    ),
    (
        "spool_connections",
        Kind::Gauge,
        None,
        "Open client and peer connections.",
    ),
    (
        "spool_connections_refused_total",
        Kind::Counter,
        None,
        "Connections refused at the connection caps.",
    ),
    (
        "spool_connections_evicted_total",
        Kind::Counter,
        None,
        "Idle connections closed to make room for new ones.",
    ),
    (
        "spool_connections_timed_out_total",
        Kind::Counter,
        None,
        "Connections closed by a deadline, by phase.",
    ),
    (
        "spool_tls_handshakes_failed_total",
        Kind::Counter,
        None,
        "TLS handshakes that failed.",
    ),
    // Replication, on an upstream.
    (
        "spool_ack_degraded_total",
        Kind::Counter,
        None,
        "Times sync or semi-sync acknowledgements degraded to async.",
    ),
    (
        "spool_ack_recovered_total",
        Kind::Counter,
        None,
        "Times degraded acknowledgements recovered.",
    ),
    (
        "spool_replica_connected",
        Kind::Gauge,
        None,
        "1 while a replica's session is open, by replica.",
    ),
    (
        "spool_replica_last_ack_seconds",
        Kind::Gauge,
        Some(Unit::Seconds),
        "Time since a replica's last acknowledgement.",
    ),
    (
        "spool_replica_acked_offset",
        Kind::Gauge,
        None,
        "A replica's acknowledged durable end, by replica and log.",
    ),
    (
        "spool_replica_lag_records",
        Kind::Gauge,
        None,
        "Records a replica lacks, by replica and log.",
    ),
    (
        "spool_replica_lag_bytes",
        Kind::Gauge,
        Some(Unit::Bytes),
        "Bytes a replica lacks, by replica and log.",
    ),
    (
        "spool_replica_lag_seconds",
        Kind::Gauge,
        Some(Unit::Seconds),
        "Age of the oldest record a replica lacks, by replica and log.",
    ),
    (
        "spool_replica_full_sync",
        Kind::Gauge,
        None,
        "1 while a replica receives a log whole, by replica and log.",
    ),
    // Replication, on a replica.
    (
        "spool_upstream_connected",
        Kind::Gauge,
        None,
        "1 while this replica's session with its upstream is open.",
    ),
    (
        "spool_upstream_lag_records",
        Kind::Gauge,
        None,
        "Records this replica lacks of its upstream's log.",
    ),
    (
        "spool_upstream_full_sync",
        Kind::Gauge,
        None,
        "1 while this replica receives a log whole.",
    ),
    (
        "spool_upstream_segment_staged_records",
        Kind::Gauge,
        None,
        "Records received in a staged segment, not yet installed.",
    ),
    (
        "spool_upstream_segments_received_total",
        Kind::Counter,
        None,
        "Segments received whole from the upstream.",
    ),
    (
        "spool_upstream_segment_bytes_received_total",
        Kind::Counter,
        Some(Unit::Bytes),
        "Segment bytes received from the upstream, stream or fetch.",
    ),
    (
        "spool_upstream_segment_bytes_fetched_total",
        Kind::Counter,
        Some(Unit::Bytes),
        "Segment bytes received by segment fetch.",
    ),
    // Failover.
    (
        "spool_failover_cut_records_total",
        Kind::Counter,
        None,
        "Records cut from this node's logs when it followed a new primary (kept in quarantine).",
    ),
    (
        "spool_failover_cut_async_acked_records_total",
        Kind::Counter,
        None,
        "Of the cut records, those this node had acknowledged as primary without replicas (async, written, degraded semi-sync), as far as it knows since it started.",
    ),
];

/// Describe every family (HELP and unit) and create the unlabelled ones at zero.
pub fn register() {
    for &(name, kind, unit, help) in FAMILIES {
        match (kind, unit) {
            (Kind::Counter, Some(u)) => describe_counter!(name, u, help),
            (Kind::Counter, None) => describe_counter!(name, help),
            (Kind::Gauge, Some(u)) => describe_gauge!(name, u, help),
            (Kind::Gauge, None) => describe_gauge!(name, help),
            (Kind::Histogram, Some(u)) => describe_histogram!(name, u, help),
            (Kind::Histogram, None) => describe_histogram!(name, help),
        }
        if labelled(name) {
            continue;
        }
        match kind {
            Kind::Counter => metrics::counter!(name).increment(0),
            Kind::Gauge => metrics::gauge!(name).increment(0.0),
            Kind::Histogram => drop(metrics::histogram!(name)),
        }
    }
    metrics::gauge!("spool_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Families that only exist with labels (per log, replica, method): an unlabelled series
/// would be a false zero beside them.
fn labelled(name: &str) -> bool {
    name.starts_with("spool_log_")
        || name.starts_with("spool_replica_")
        || name.starts_with("spool_grpc_")
        || name == "spool_build_info"
        || name == "spool_connections_timed_out_total"
        || (name.starts_with("spool_upstream_") && name != "spool_upstream_connected")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `"spool_..."` name given to a metrics macro in the sources.
    fn names_in_code() -> Vec<String> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut out = Vec::new();
        let mut dirs = vec![root.join("src"), root.join("storage/src")];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    for macro_ in ["counter!(\"", "gauge!(\"", "histogram!(\""] {
                        for part in text.split(macro_).skip(1) {
                            let name = part.split('"').next().unwrap();
                            out.push(name.to_owned());
                        }
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    #[test]
    fn every_metric_in_the_code_is_described_with_its_kind() {
        let names = names_in_code();
        assert!(names.len() > 20, "the scan found the metrics: {names:?}");
        for n in &names {
            let f = FAMILIES.iter().find(|f| f.0 == n);
            assert!(f.is_some(), "{n} is used in the code but not in FAMILIES");
        }
        for (name, kind, _, help) in FAMILIES {
            assert!(!help.is_empty());
            match kind {
                Kind::Counter => assert!(name.ends_with("_total"), "{name}: a counter ends _total"),
                _ => assert!(
                    !name.ends_with("_total"),
                    "{name}: only counters end _total"
                ),
            }
        }
    }
}
