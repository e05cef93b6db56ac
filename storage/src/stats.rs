//! Counters the storage thread keeps, read by the load generator and status, and the same
//! events sent to the `metrics` facade (a no-op unless the binary installs an exporter).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (µs) of the fdatasync latency buckets; the last bucket is unbounded.
pub const SYNC_BUCKETS_US: [u64; 12] = [
    50, 100, 200, 400, 800, 1_600, 3_200, 6_400, 12_800, 25_600, 51_200, 102_400,
];

#[derive(Debug, Default)]
pub struct Stats {
    pub groups: AtomicU64,
    pub group_commands: AtomicU64,
    pub group_bytes: AtomicU64,
    pub bytes_written: AtomicU64,
    pub syncs: AtomicU64,
    pub sync_us_total: AtomicU64,
    pub sync_us_max: AtomicU64,
    /// Cumulative counts per bucket of [`SYNC_BUCKETS_US`] plus one overflow bucket.
    pub sync_buckets: [AtomicU64; SYNC_BUCKETS_US.len() + 1],
}

impl Stats {
    pub(crate) fn record_group(&self, commands: u64, bytes: u64) {
        self.groups.fetch_add(1, Ordering::Relaxed);
        self.group_commands.fetch_add(commands, Ordering::Relaxed);
        self.group_bytes.fetch_add(bytes, Ordering::Relaxed);
        metrics::histogram!("spool_group_commit_appends").record(commands as f64);
        metrics::histogram!("spool_group_commit_bytes").record(bytes as f64);
    }

    pub(crate) fn record_appended(&self, bytes: u64) {
        self.bytes_written.fetch_add(bytes, Ordering::Relaxed);
        metrics::counter!("spool_storage_bytes_written_total").increment(bytes);
    }

    pub(crate) fn record_sync(&self, d: Duration) {
        let us = d.as_micros() as u64;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.sync_us_total.fetch_add(us, Ordering::Relaxed);
        self.sync_us_max.fetch_max(us, Ordering::Relaxed);
        let i = SYNC_BUCKETS_US.partition_point(|&b| b < us);
        self.sync_buckets[i].fetch_add(1, Ordering::Relaxed);
        metrics::histogram!("spool_fsync_seconds").record(d.as_secs_f64());
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            groups: self.groups.load(Ordering::Relaxed),
            group_commands: self.group_commands.load(Ordering::Relaxed),
            group_bytes: self.group_bytes.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            syncs: self.syncs.load(Ordering::Relaxed),
            sync_us_total: self.sync_us_total.load(Ordering::Relaxed),
            sync_us_max: self.sync_us_max.load(Ordering::Relaxed),
            sync_buckets: std::array::from_fn(|i| self.sync_buckets[i].load(Ordering::Relaxed)),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct StatsSnapshot {
    pub groups: u64,
    pub group_commands: u64,
    pub group_bytes: u64,
    pub bytes_written: u64,
    pub syncs: u64,
    pub sync_us_total: u64,
    pub sync_us_max: u64,
    pub sync_buckets: [u64; SYNC_BUCKETS_US.len() + 1],
}
