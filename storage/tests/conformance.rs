//! One conformance suite, run against every IO backend: std (pwrite+fdatasync) and
//! io_uring, each buffered and with every group commit direct, and the fault-injecting
//! backend with no fault armed. Catch-up (imported segments,
//! allocated-only segments) has its own suite, in `catchup.rs`.

mod common;

use std::collections::HashSet;

use bytes::Bytes;
use common::{
    config, open_fault, open_std, open_std_direct, open_uring, open_uring_direct, read_all, record,
    run, small_log,
};
use spool_storage::io::std_backend::StdBackend;
use spool_storage::{Compression, Durability, LogConfig, Storage, StorageConfig, StorageError};

type Open = fn(StorageConfig) -> Storage;

fn round_trip(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    run(60, async {
        let s = open(config(dir.path()));
        let log = s.create_log("events").await.unwrap();
        let sizes = [0usize, 1, 100, 1000, 5000, 0, 17];
        let mut expected = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            let recs: Vec<Vec<u8>> = (0..3).map(|j| record(i as u32, j, n)).collect();
            let recs: Vec<Vec<u8>> = recs
                .into_iter()
                .map(|mut r| {
                    r.truncate(n);
                    r
                })
                .collect();
            let ack = log.append(&recs, Durability::Fsync).await.unwrap();
            assert_eq!(ack.base_offset, expected.len() as u64);
            assert_eq!(ack.record_count, 3);
            assert_eq!(ack.durability, Durability::Fsync);
            expected.extend(recs);
        }
        let p = log.positions();
        assert_eq!((p.start, p.durable, p.written), (0, 21, 21));
        let got = read_all(&s, "events").await;
        assert_eq!(got.len(), expected.len());
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert_eq!(g.offset, i as u64);
            assert_eq!(&g.value[..], &e[..]);
        }
        // Reading from the middle of a batch starts at that record.
        let mid = log.reader().read(4, 2, 1 << 20).unwrap();
        assert_eq!(mid.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![4, 5]);
        // At the end: empty; past the end: out of range.
        assert!(log.reader().read(21, 10, 1 << 20).unwrap().is_empty());
        assert!(matches!(
            log.reader().read(22, 10, 1 << 20),
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        s.shutdown().await.unwrap();
        drop(s);
        let s = open(config(dir.path()));
        let again = read_all(&s, "events").await;
        assert_eq!(again, got);
        s.shutdown().await.unwrap();
    });
}

fn concurrent_appenders_roll_segments(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    run(120, async {
        let s = open(config(dir.path()));
        let log = s.create_log("many").await.unwrap();
        let mut tasks = Vec::new();
        for w in 0..32u32 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let mut acks = Vec::new();
                for seq in 0..40u32 {
                    let rec = record(w, seq, 300 + (seq as usize * 37) % 900);
                    let ack = log.append(&[&rec], Durability::Fsync).await.unwrap();
                    acks.push((ack.base_offset, rec));
                }
                acks
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        assert_eq!(all.len(), 32 * 40);
        let offsets: HashSet<u64> = all.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets.len(), all.len(), "offsets are unique");
        assert_eq!(
            *offsets.iter().max().unwrap(),
            all.len() as u64 - 1,
            "dense"
        );
        assert!(log.segment_count() > 5, "rolled: {}", log.segment_count());
        let stats = s.stats().snapshot();
        assert!(
            stats.groups < 32 * 40,
            "group commit batched appends: {} groups",
            stats.groups
        );
        let check = |recs: &[spool_storage::Record]| {
            for (o, rec) in &all {
                assert_eq!(&recs[*o as usize].value[..], &rec[..], "offset {o}");
            }
        };
        check(&read_all(&s, "many").await);
        s.shutdown().await.unwrap();
        drop(s);
        let s = open(config(dir.path()));
        let log = s.log("many").unwrap();
        assert_eq!(log.positions().durable, all.len() as u64);
        check(&read_all(&s, "many").await);
        // Appends continue densely after reopen.
        let ack = log.append(&[b"after"], Durability::Fsync).await.unwrap();
        assert_eq!(ack.base_offset, all.len() as u64);
        let report = spool_storage::check::check_data_dir(dir.path(), &mut |_| {}).unwrap();
        assert!(report.is_ok(), "{:?}", report.logs[0].problems);
        s.shutdown().await.unwrap();
    });
}

fn readers_follow_writer(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    run(60, async {
        let s = open(config(dir.path()));
        let log = s.create_log("tail").await.unwrap();
        let reader = log.reader();
        let total = 600u64;
        let follower = tokio::spawn(async move {
            let mut next = 0u64;
            while next < total {
                reader.wait_for(next).await.unwrap();
                for r in reader.read(next, 100, 1 << 20).unwrap() {
                    assert_eq!(r.offset, next);
                    assert_eq!(r.value, Bytes::from(record(0, next as u32, 500)));
                    next += 1;
                }
            }
            next
        });
        for i in 0..total {
            log.append(&[record(0, i as u32, 500)], Durability::Fsync)
                .await
                .unwrap();
        }
        assert_eq!(follower.await.unwrap(), total);
        s.shutdown().await.unwrap();
    });
}

fn compression(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    run(60, async {
        let s = open(config(dir.path()));
        let cfg = LogConfig {
            compression: Compression::Zstd { level: 1 },
            compress_min_bytes: 1024,
            ..small_log()
        };
        let log = s.create_log_with("zipped", cfg.clone()).await.unwrap();
        let rec = br#"{"level":"info","msg":"user logged in","user":"alice","ok":true}"#.repeat(60);
        for _ in 0..20 {
            log.append(&[&rec, &rec], Durability::Fsync).await.unwrap();
        }
        let (data, _) = log.size_bytes();
        assert!(data < 20 * rec.len() as u64 / 4, "compressed: {data} bytes");
        let chunk = log.reader().read_frames(0, 1 << 20).unwrap();
        assert_eq!(chunk.next_offset, 40);
        let got = read_all(&s, "zipped").await;
        assert_eq!(got.len(), 40);
        assert!(got.iter().all(|r| r.value[..] == rec[..]));
        assert_eq!(s.log("zipped").unwrap().config(), &cfg);
        s.shutdown().await.unwrap();
    });
}

fn invalid_input(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    run(30, async {
        let mut c = config(dir.path());
        c.record_bytes_max = 1000;
        let s = open(c);
        assert!(matches!(
            s.create_log("../etc").await,
            Err(StorageError::InvalidInput(_))
        ));
        assert!(matches!(
            s.create_log("").await,
            Err(StorageError::InvalidInput(_))
        ));
        let log = s.create_log("x").await.unwrap();
        assert!(matches!(
            s.create_log("x").await,
            Err(StorageError::LogExists(_))
        ));
        assert!(matches!(s.log("y"), Err(StorageError::LogNotFound(_))));
        assert!(matches!(
            log.append(&[vec![0u8; 1001]], Durability::Fsync).await,
            Err(StorageError::RecordTooLarge {
                size: 1001,
                max: 1000
            })
        ));
        let none: [&[u8]; 0] = [];
        assert!(matches!(
            log.append(&none, Durability::Fsync).await,
            Err(StorageError::InvalidInput(_))
        ));
        // A batch larger than a segment can hold is refused, not split.
        let big: Vec<Vec<u8>> = (0..100).map(|_| vec![1u8; 1000]).collect();
        assert!(matches!(
            log.append(&big, Durability::Fsync).await,
            Err(StorageError::InvalidInput(_))
        ));
        assert_eq!(log.positions().durable, 0);
        log.append(&[vec![0u8; 1000]], Durability::Fsync)
            .await
            .unwrap();
        s.shutdown().await.unwrap();
    });
}

fn truncate(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    run(60, async {
        let s = open(config(dir.path()));
        let log = s.create_log("t").await.unwrap();
        log.begin_epoch(1).await.unwrap();
        for i in 0..100u32 {
            let recs: Vec<Vec<u8>> = (0..4).map(|j| record(i, j, 400)).collect();
            log.append(&recs, Durability::Fsync).await.unwrap();
        }
        log.begin_epoch(2).await.unwrap();
        for i in 100..150u32 {
            let recs: Vec<Vec<u8>> = (0..4).map(|j| record(i, j, 400)).collect();
            log.append(&recs, Durability::Fsync).await.unwrap();
        }
        let segs_before = log.segment_count();
        assert!(segs_before > 3);
        assert_eq!(log.epochs().entries(), &[(1, 0), (2, 400)]);
        // Mid-batch, in an earlier segment: later segments go, the batch is cut.
        log.truncate_to(202).await.unwrap();
        assert_eq!(log.positions().durable, 202);
        assert!(log.segment_count() < segs_before);
        assert_eq!(log.epochs().entries(), &[(1, 0)]);
        let got = read_all(&s, "t").await;
        assert_eq!(got.len(), 202);
        assert_eq!(&got[201].value[..], &record(50, 1, 400)[..]);
        // At a batch boundary.
        log.truncate_after(99).await.unwrap();
        assert_eq!(log.positions().durable, 100);
        assert!(matches!(
            log.truncate_to(101).await,
            Err(StorageError::InvalidInput(_))
        ));
        // Appends continue from the cut, and a reopen sees exactly that.
        let ack = log.append(&[b"new"], Durability::Fsync).await.unwrap();
        assert_eq!(ack.base_offset, 100);
        s.shutdown().await.unwrap();
        drop(s);
        let s = open(config(dir.path()));
        let got = read_all(&s, "t").await;
        assert_eq!(got.len(), 101);
        assert_eq!(&got[100].value[..], b"new");
        assert_eq!(&got[99].value[..], &record(24, 3, 400)[..]);
        let report = spool_storage::check::check_data_dir(dir.path(), &mut |_| {}).unwrap();
        assert!(report.is_ok(), "{:?}", report.logs[0].problems);
        // Truncate to empty.
        let log = s.log("t").unwrap();
        log.truncate_to(0).await.unwrap();
        assert!(read_all(&s, "t").await.is_empty());
        assert_eq!(
            log.append(&[b"again"], Durability::Fsync)
                .await
                .unwrap()
                .base_offset,
            0
        );
        s.shutdown().await.unwrap();
    });
}

fn retention_and_delete_before(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    run(60, async {
        let s = open(config(dir.path()));
        let cfg = LogConfig {
            retention_bytes: Some(200 << 10),
            ..small_log()
        };
        let log = s.create_log_with("r", cfg).await.unwrap();
        for i in 0..1000u32 {
            log.append(&[record(0, i, 1000)], Durability::Fsync)
                .await
                .unwrap();
        }
        // The floor holds everything from offset 100 on: nothing past it may go.
        log.set_retention_floor(Some(100));
        s.run_retention().await.unwrap();
        let start = log.positions().start;
        assert!(start <= 100, "floor respected: start {start}");
        log.set_retention_floor(None);
        s.run_retention().await.unwrap();
        let p = log.positions();
        let (data, _) = log.size_bytes();
        assert!(p.start > 100, "retention ran: start {}", p.start);
        assert!(data >= 200 << 10, "keeps at least retention_bytes: {data}");
        assert!(matches!(
            log.reader().read(0, 1, 100),
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        let first = log.reader().read(p.start, 1, 1 << 20).unwrap();
        assert_eq!(first[0].value, Bytes::from(record(0, p.start as u32, 1000)));
        // Explicit delete_before, whole segments only.
        let new_start = log.delete_before(p.start + 150).await.unwrap();
        assert!(new_start > p.start && new_start <= p.start + 150);
        // Recycled segment files keep working for new appends.
        for i in 1000..1300u32 {
            log.append(&[record(0, i, 1000)], Durability::Fsync)
                .await
                .unwrap();
        }
        s.shutdown().await.unwrap();
        drop(s);
        let s = open(config(dir.path()));
        let log = s.log("r").unwrap();
        assert_eq!(log.positions().start, new_start);
        assert_eq!(log.positions().durable, 1300);
        let got = read_all(&s, "r").await;
        assert_eq!(got.len() as u64, 1300 - new_start);
        for r in &got {
            assert_eq!(r.value, Bytes::from(record(0, r.offset as u32, 1000)));
        }
        s.shutdown().await.unwrap();
    });
}

fn retention_by_age(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    run(60, async {
        let s = open(config(dir.path()));
        let retention = std::time::Duration::from_millis(1500);
        let cfg = LogConfig {
            retention_ms: Some(retention.as_millis() as u64),
            ..small_log()
        };
        let log = s.create_log_with("aged", cfg).await.unwrap();
        let started = std::time::Instant::now();
        for i in 0..200u32 {
            log.append(&[record(0, i, 1000)], Durability::Fsync)
                .await
                .unwrap();
        }
        let segs = log.segment_count();
        assert!(segs > 2);
        s.run_retention().await.unwrap();
        // Only meaningful if the appends were quicker than the retention (a loaded machine
        // may be slower): then nothing may be gone yet.
        if started.elapsed() < retention {
            assert_eq!(log.segment_count(), segs, "nothing is old yet");
        }
        // Let the retention period pass: this waits for time itself, not for a condition.
        tokio::time::sleep(retention + std::time::Duration::from_millis(100)).await;
        s.run_retention().await.unwrap();
        assert_eq!(log.segment_count(), 1, "all sealed segments aged out");
        assert_eq!(log.positions().durable, 200);
        s.shutdown().await.unwrap();
    });
}

fn unsynced_appends(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    run(30, async {
        let s = open(config(dir.path()));
        let log = s.create_log("fast").await.unwrap();
        let mut last = None;
        for i in 0..50u32 {
            last = Some(
                log.append(&[record(1, i, 200)], Durability::Unsynced)
                    .await
                    .unwrap(),
            );
        }
        let last = last.unwrap();
        assert_eq!(last.next_offset(), 50);
        // Readers see them once the periodic sync ran.
        log.reader().wait_for(49).await.unwrap();
        assert_eq!(read_all(&s, "fast").await.len(), 50);
        s.shutdown().await.unwrap();
    });
}

fn replicate_frames(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    run(60, async {
        let s = open(config(dir.path()));
        let src = s.create_log("src").await.unwrap();
        let dst = s.create_log("dst").await.unwrap();
        src.begin_epoch(3).await.unwrap();
        for i in 0..300u32 {
            src.append(&[record(2, i, 700), vec![]], Durability::Fsync)
                .await
                .unwrap();
        }
        let mut from = 0;
        let mut unsynced = 0;
        while from < 600 {
            let chunk = src.reader().read_frames(from, 64 << 10).unwrap();
            assert_eq!(chunk.first_offset, from);
            // Every other chunk without a sync of its own: it still resolves only once
            // durable (a later group or the periodic sync).
            let sync = unsynced % 2 == 0;
            unsynced += 1;
            let end = dst
                .submit_frames_with(chunk.bytes, sync)
                .await
                .unwrap()
                .await
                .unwrap();
            assert_eq!(end, chunk.next_offset);
            assert!(dst.positions().durable >= end);
            from = chunk.next_offset;
        }
        assert_eq!(dst.epochs().entries(), &[(3, 0)]);
        // A frame that does not continue the log is refused.
        let again = src.reader().read_frames(0, 1).unwrap();
        assert!(matches!(
            dst.append_frames(again.bytes.clone()).await,
            Err(StorageError::FrameRejected { .. })
        ));
        let mut corrupt = again.bytes.to_vec();
        corrupt[100] ^= 0xff;
        assert!(matches!(
            dst.append_frames(Bytes::from(corrupt)).await,
            Err(StorageError::FrameRejected { .. })
        ));
        s.shutdown().await.unwrap();
        let report = spool_storage::check::check_data_dir(dir.path(), &mut |_| {}).unwrap();
        assert!(report.is_ok());
        let digests: Vec<u32> = report.logs.iter().map(|l| l.digest).collect();
        assert_eq!(digests[0], digests[1], "replicated log is identical");
    });
}

fn delete_and_recreate(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    run(30, async {
        let s = open(config(dir.path()));
        let log = s.create_log("gone").await.unwrap();
        log.append(&[b"a"], Durability::Fsync).await.unwrap();
        let reader = log.reader();
        let waiter = tokio::spawn(async move { reader.wait_for(5).await });
        s.delete_log("gone").await.unwrap();
        assert!(matches!(
            waiter.await.unwrap(),
            Err(StorageError::LogNotFound(_))
        ));
        assert!(matches!(
            log.append(&[b"b"], Durability::Fsync).await,
            Err(StorageError::LogNotFound(_))
        ));
        assert!(s.list_logs().is_empty());
        let log = s.create_log("gone").await.unwrap();
        assert_eq!(
            log.append(&[b"c"], Durability::Fsync)
                .await
                .unwrap()
                .base_offset,
            0
        );
        s.shutdown().await.unwrap();
        drop(s);
        let s = open(config(dir.path()));
        assert_eq!(s.list_logs(), vec!["gone".to_string()]);
        assert_eq!(
            read_all(&s, "gone").await[0].value,
            Bytes::from_static(b"c")
        );
        s.shutdown().await.unwrap();
    });
}

fn reset_for_full_sync(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    run(60, async {
        let s = open(config(dir.path()));
        let log = s.create_log("r").await.unwrap();
        log.begin_epoch(2).await.unwrap();
        for i in 0..200u32 {
            log.append(&[record(5, i, 900)], Durability::Fsync)
                .await
                .unwrap();
        }
        let (data, _) = log.size_bytes();
        assert_eq!(log.bytes_from(0), data);
        assert!(log.bytes_from(150) < data / 3);
        assert_eq!(log.bytes_from(200), 0);
        let cuts = log.reader().cut_count();
        log.reset_to(5000).await.unwrap();
        // Every record went: a stream that sent any of them must end, whatever its position.
        assert_eq!(log.reader().lowest_cut_since(cuts), Some(0));
        let p = log.positions();
        assert_eq!((p.start, p.durable), (5000, 5000));
        assert_eq!(log.segment_count(), 1);
        assert!(log.epochs().entries().is_empty());
        assert!(matches!(
            log.reader().read(0, 1, 1),
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        let ack = log.append(&[b"after"], Durability::Fsync).await.unwrap();
        assert_eq!(ack.base_offset, 5000);
        s.shutdown().await.unwrap();
        drop(s);
        let s = open(config(dir.path()));
        let log = s.log("r").unwrap();
        assert_eq!(log.positions().start, 5000);
        assert_eq!(
            read_all(&s, "r").await[0].value,
            Bytes::from_static(b"after")
        );
        s.shutdown().await.unwrap();
    });
}

fn data_dir_is_locked(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(config(dir.path()));
    let second = Storage::open_with(config(dir.path()), StdBackend);
    assert!(matches!(second, Err(StorageError::InvalidInput(m)) if m.contains("in use")));
    s.shutdown_blocking();
}

macro_rules! suite {
    ($($backend:ident => $open:expr),*) => {$(
        mod $backend {
            use super::*;
            const OPEN: Open = $open;
            #[test] fn round_trip() { super::round_trip(OPEN) }
            #[test] fn concurrent_appenders_roll_segments() { super::concurrent_appenders_roll_segments(OPEN) }
            #[test] fn readers_follow_writer() { super::readers_follow_writer(OPEN) }
            #[test] fn compression() { super::compression(OPEN) }
            #[test] fn invalid_input() { super::invalid_input(OPEN) }
            #[test] fn truncate() { super::truncate(OPEN) }
            #[test] fn retention_and_delete_before() { super::retention_and_delete_before(OPEN) }
            #[test] fn retention_by_age() { super::retention_by_age(OPEN) }
            #[test] fn unsynced_appends() { super::unsynced_appends(OPEN) }
            #[test] fn replicate_frames() { super::replicate_frames(OPEN) }
            #[test] fn delete_and_recreate() { super::delete_and_recreate(OPEN) }
            #[test] fn data_dir_is_locked() { super::data_dir_is_locked(OPEN) }
            #[test] fn reset_for_full_sync() { super::reset_for_full_sync(OPEN) }
        }
    )*};
}

suite!(
    std_backend => open_std,
    uring_backend => open_uring,
    uring_direct_backend => open_uring_direct,
    std_direct_backend => open_std_direct,
    fault_backend => open_fault
);
