//! Helpers shared by the storage integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use spool_storage::{LogConfig, StorageConfig};

/// Small segments so that tests roll often.
pub fn small_log() -> LogConfig {
    LogConfig {
        segment_bytes: 64 << 10,
        index_interval_bytes: 1024,
        ..LogConfig::default()
    }
}

pub fn config(dir: &Path) -> StorageConfig {
    let mut c = StorageConfig::new(dir);
    c.default_log = small_log();
    c.unsynced_flush_interval = Duration::from_millis(20);
    c
}

/// Deterministic record content for (writer, seq): a tag then a pattern, `len` bytes.
pub fn record(writer: u32, seq: u32, len: usize) -> Vec<u8> {
    let tag = format!("w{writer}s{seq}:");
    let mut v = tag.into_bytes();
    let mut x = writer.wrapping_mul(2654435761) ^ seq;
    while v.len() < len {
        x = x.wrapping_mul(1103515245).wrapping_add(12345);
        v.push((x >> 16) as u8);
    }
    v.truncate(len.max(1));
    v
}

/// Run a future to completion on a fresh multi-thread runtime, bounded in time.
pub fn run<F: std::future::Future>(secs: u64, f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        tokio::time::timeout(Duration::from_secs(secs), f)
            .await
            .expect("test timed out")
    })
}
