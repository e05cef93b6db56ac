//! Power loss, through the fault backend's model (`io::fault::power_loss`): what a write
//! left in the page cache may be lost, page by page, until a sync of its file returns.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{record, run};
use spool_storage::io::fault::power_loss::Writeback;
use spool_storage::io::fault::{FaultBackend, FaultInjector};
use spool_storage::io::std_backend::StdBackend;
use spool_storage::{Durability, Log, Storage, StorageConfig};

fn storage_config(dir: &Path, flush_interval: Duration) -> StorageConfig {
    let mut c = common::config(dir);
    c.unsynced_flush_interval = flush_interval;
    c.scrub_bytes_per_sec = 0;
    c
}

fn open_faulty(dir: &Path, flush_interval: Duration, injector: &FaultInjector) -> Storage {
    let backend = FaultBackend {
        injector: injector.clone(),
    };
    Storage::open_with(storage_config(dir, flush_interval), backend).unwrap()
}

/// Five records acked `Fsync`, then five acked `Unsynced` (no sync follows for an hour).
async fn append_fsync_then_unsynced(log: &Log) -> Vec<Vec<u8>> {
    let mut records = Vec::new();
    for seq in 0..10 {
        let durability = if seq < 5 {
            Durability::Fsync
        } else {
            Durability::Unsynced
        };
        let r = record(1, seq, 700 + seq as usize * 300);
        let ack = log.append(&[&r], durability).await.unwrap();
        assert_eq!(
            (ack.base_offset, ack.durability),
            (u64::from(seq), durability)
        );
        records.push(r);
    }
    records
}

/// After a crash the records written but never synced are still in the page cache, and a
/// reopen finds them. Once it has published them as durable, a power loss must not take
/// them, nor read as damage where the durable mark of a later write claims them.
/// (Before recovery synced them: `Nothing` lost records 5..9, `Random(13)` and `Random(26)`
/// read as damage.)
#[test]
fn what_a_reopen_after_a_crash_calls_durable_survives_a_power_loss() {
    let root = tempfile::tempdir().unwrap();
    let dir = |name: &str| root.path().join(name);
    run(30, async {
        let injector = FaultInjector::default();
        injector.track_unsynced();
        let s = open_faulty(&dir("d"), Duration::from_secs(3600), &injector);
        let log = s.create_log("a").await.unwrap();
        let mut records = append_fsync_then_unsynced(&log).await;
        let after = FaultInjector::default();
        after.track_unsynced();
        let handed = injector.crash_copy(&dir("d"), &dir("crashed"), &after);
        assert_eq!(handed.unwrap(), 5);
        s.shutdown().await.unwrap();

        let s = open_faulty(&dir("crashed"), Duration::from_secs(3600), &after);
        let log = s.log("a").unwrap();
        assert_eq!(log.positions().durable, 10, "a process crash loses nothing");
        // Its write carries a durable mark claiming what the reopen called durable.
        records.push(record(2, 0, 900));
        let ack = log.append(&[&records[10]], Durability::Unsynced).await;
        assert_eq!(ack.unwrap().base_offset, 10);
        let mut writebacks = vec![Writeback::Nothing, Writeback::Everything];
        writebacks.extend((0..32).map(Writeback::Random));
        for (i, &writeback) in writebacks.iter().enumerate() {
            let lost = dir(&format!("lost-{i}"));
            after
                .power_loss_copy(&dir("crashed"), &lost, writeback)
                .unwrap();
            let t =
                Storage::open_with(storage_config(&lost, Duration::from_millis(20)), StdBackend)
                    .unwrap();
            let l = t.log("a").unwrap();
            assert_eq!(l.damage(), [], "{writeback:?}");
            let got = l.reader().read(0, usize::MAX, usize::MAX).unwrap();
            assert!(got.len() >= 10, "{writeback:?}: durable records lost");
            assert!(got.iter().zip(&records).all(|(g, r)| g.value == r[..]));
            t.shutdown().await.unwrap();
        }
        s.shutdown().await.unwrap();
    });
}
