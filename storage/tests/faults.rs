//! Fault injection through the fault backend: EIO, ENOSPC and torn writes at chosen points.
//! Whatever fails, every acknowledged record survives a reopen and offsets stay dense.

mod common;

use bytes::Bytes;
use std::time::{Duration, Instant};

use common::{active_segment, config, plant_residue, record, residue_left, run, small_log};
use spool_storage::io::fault::{FaultBackend, FaultInjector, FaultKind, FaultOp};
use spool_storage::io::std_backend::StdBackend;
use spool_storage::{Durability, Log, Storage, StorageError};

/// Storage over the fault backend in `dir`, and the handle that arms its faults.
fn open_faulty(dir: &std::path::Path) -> (Storage, FaultInjector) {
    let backend = FaultBackend::default();
    let inj = backend.injector.clone();
    (Storage::open_with(config(dir), backend).unwrap(), inj)
}

async fn append_n(log: &Log, from: u32, n: u32) -> Vec<u64> {
    let mut acked = Vec::new();
    for i in from..from + n {
        let ack = log
            .append(&[record(9, i, 700)], Durability::Fsync)
            .await
            .unwrap();
        acked.push(ack.base_offset);
    }
    acked
}

/// Reopen with the plain backend and check records `0..n` are exactly `record(9, i, 700)`
/// (`expected[i]` is the seq written at offset i) and nothing else is there.
async fn verify_reopened(dir: &std::path::Path, expected: &[u32]) {
    verify_reopened_maybe(dir, expected, &[]).await
}

/// Like [`verify_reopened`], but after the acknowledged records some of `maybe` may follow:
/// an append that failed has an unknown outcome (as with a crash before the ack), so its
/// record may or may not be there, but never damaged, duplicated or out of place.
async fn verify_reopened_maybe(dir: &std::path::Path, expected: &[u32], maybe: &[u32]) {
    let s = Storage::open_with(config(dir), StdBackend).unwrap();
    let log = s.log("f").unwrap();
    let got = log.reader().read(0, usize::MAX, usize::MAX).unwrap();
    assert_eq!(log.positions().durable, got.len() as u64);
    assert!(got.len() >= expected.len() && got.len() <= expected.len() + maybe.len());
    for (r, &seq) in got.iter().zip(expected) {
        assert_eq!(
            r.value,
            Bytes::from(record(9, seq, 700)),
            "offset {}",
            r.offset
        );
    }
    let mut extra = maybe.to_vec();
    for r in &got[expected.len()..] {
        let i = extra
            .iter()
            .position(|&seq| r.value == record(9, seq, 700))
            .unwrap_or_else(|| panic!("offset {} holds a record nobody appended", r.offset));
        extra.remove(i);
    }
    let report = spool_storage::check::check_data_dir(dir, &mut |_| {}).unwrap();
    assert!(report.is_ok(), "{:?}", report.logs[0].problems);
    s.shutdown().await.unwrap();
}

#[test]
fn eio_on_write_poisons_and_keeps_acked_data() {
    let dir = tempfile::tempdir().unwrap();
    run(30, async {
        let (s, inj) = open_faulty(dir.path());
        let log = s.create_log("f").await.unwrap();
        append_n(&log, 0, 20).await;
        inj.fail_nth(FaultOp::Write, 1, FaultKind::Eio);
        let err = log
            .append(&[record(9, 20, 700)], Durability::Fsync)
            .await
            .unwrap_err();
        assert!(matches!(err, StorageError::Io { .. }), "{err}");
        // Poisoned: no further writes until restart, reads still work.
        let err = log
            .append(&[record(9, 21, 700)], Durability::Fsync)
            .await
            .unwrap_err();
        assert!(matches!(err, StorageError::Poisoned { .. }), "{err}");
        assert_eq!(log.reader().read(0, 100, usize::MAX).unwrap().len(), 20);
        s.shutdown().await.unwrap();
        let expected: Vec<u32> = (0..20).collect();
        verify_reopened(dir.path(), &expected).await;
    });
}

#[test]
fn eio_on_fsync_poisons() {
    let dir = tempfile::tempdir().unwrap();
    run(30, async {
        let (s, inj) = open_faulty(dir.path());
        let log = s.create_log("f").await.unwrap();
        append_n(&log, 0, 5).await;
        inj.fail_nth(FaultOp::Sync, 1, FaultKind::Eio);
        assert!(log
            .append(&[record(9, 5, 700)], Durability::Fsync)
            .await
            .is_err());
        assert!(matches!(
            log.append(&[record(9, 6, 700)], Durability::Fsync).await,
            Err(StorageError::Poisoned { .. })
        ));
        assert_eq!(log.positions().durable, 5);
        s.shutdown().await.unwrap();
        verify_reopened(dir.path(), &(0..5).collect::<Vec<_>>()).await;
    });
}

#[test]
fn enospc_fails_the_append_then_writes_resume() {
    let dir = tempfile::tempdir().unwrap();
    run(30, async {
        let (s, inj) = open_faulty(dir.path());
        let log = s.create_log("f").await.unwrap();
        append_n(&log, 0, 10).await;
        inj.fail_all(FaultOp::Write, FaultKind::Enospc);
        for i in 10..13 {
            let err = log
                .append(&[record(9, i, 700)], Durability::Fsync)
                .await
                .unwrap_err();
            assert!(err.is_disk_full(), "{err}");
        }
        assert_eq!(log.positions().durable, 10);
        assert_eq!(log.reader().read(0, 100, usize::MAX).unwrap().len(), 10);
        inj.clear();
        // Space is back: the next append lands right after the acknowledged ones.
        let ack = log
            .append(&[record(9, 100, 700)], Durability::Fsync)
            .await
            .unwrap();
        assert_eq!(ack.base_offset, 10);
        s.shutdown().await.unwrap();
        let mut expected: Vec<u32> = (0..10).collect();
        expected.push(100);
        verify_reopened(dir.path(), &expected).await;
    });
}

/// Segment files (`*.seg`) of log "f", sorted.
fn segments(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("logs").join("f"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".seg") && !n.starts_with("spare-"))
        .collect();
    names.sort();
    names
}

/// A roll whose new segment fails after its rename (here when it is opened for writing)
/// fails the append that needed it, removes the half-made segment and leaves the log
/// writable: the next append rolls again.
#[test]
fn a_roll_failing_after_its_rename_fails_the_append_and_the_next_rolls() {
    let dir = tempfile::tempdir().unwrap();
    run(30, async {
        let (s, inj) = open_faulty(dir.path());
        let log = s.create_log("f").await.unwrap();
        // The log's files are opened by its first write; the roll's open is the next.
        append_n(&log, 0, 1).await;
        inj.fail_nth(FaultOp::Open, 1, FaultKind::Eio);
        let mut seq = 1;
        let err = loop {
            assert!(seq < 1000, "no roll was needed");
            match log.append(&[record(9, seq, 700)], Durability::Fsync).await {
                Ok(ack) => assert_eq!(ack.base_offset, u64::from(seq)),
                Err(e) => break e,
            }
            seq += 1;
        };
        assert!(matches!(err, StorageError::Io { .. }), "{err}");
        assert_eq!(log.positions().durable, u64::from(seq));
        assert_eq!(segments(dir.path()), [format!("{:020}.seg", 0)]);
        let ack = log
            .append(&[record(9, 5000, 700)], Durability::Fsync)
            .await
            .unwrap();
        assert_eq!(ack.base_offset, u64::from(seq));
        assert_eq!(log.segment_count(), 2);
        s.shutdown().await.unwrap();
        let mut expected: Vec<u32> = (0..seq).collect();
        expected.push(5000);
        verify_reopened(dir.path(), &expected).await;
    });
}

/// The same failure when an allocated-only active segment is sealed early for its zeroed
/// spare: the seal is dropped and the active segment goes on taking frames. Left behind,
/// the half-made `<base>.seg` would end the active segment at `base` at the next open,
/// which then finds frames past that end (checked: the open fails, `OffsetMismatch`).
#[test]
fn an_early_seal_failing_after_its_rename_leaves_no_segment_behind() {
    let dir = tempfile::tempdir().unwrap();
    run(30, async {
        let (s, inj) = open_faulty(dir.path());
        let log = s.create_log_for_import("f", small_log(), 7).await.unwrap();
        // The first append opens the log's files and asks for the spare; the first after
        // it is ready seals early.
        append_n(&log, 0, 1).await;
        inj.fail_nth(FaultOp::Open, 1, FaultKind::Eio);
        let opens = inj.opens();
        let mut seq = 1;
        let deadline = Instant::now() + Duration::from_secs(20);
        while inj.opens() == opens {
            assert!(
                Instant::now() < deadline,
                "the segment never gave way to a spare"
            );
            append_n(&log, seq, 1).await;
            seq += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(segments(dir.path()), [format!("{:020}.seg", 0)]);
        append_n(&log, seq, 10).await;
        seq += 10;
        assert_eq!(log.segment_count(), 1, "a failed early seal is not retried");
        assert_eq!(log.positions().durable, u64::from(seq));
        s.shutdown().await.unwrap();
        verify_reopened(dir.path(), &(0..seq).collect::<Vec<_>>()).await;
    });
}

/// A failed write may leave bytes past the end that its zeroing could not remove (the
/// disk was full): the clean shutdown after it does not vouch for the active segment's
/// tail, so the next open reads it and clears what it finds.
#[test]
fn after_a_failed_write_a_clean_restart_reads_past_the_end() {
    let dir = tempfile::tempdir().unwrap();
    run(30, async {
        let (s, inj) = open_faulty(dir.path());
        let log = s.create_log("f").await.unwrap();
        append_n(&log, 0, 10).await;
        inj.fail_nth(FaultOp::Write, 1, FaultKind::Enospc);
        let err = log
            .append(&[record(9, 10, 700)], Durability::Fsync)
            .await
            .unwrap_err();
        assert!(err.is_disk_full(), "{err}");
        append_n(&log, 10, 5).await;
        s.shutdown().await.unwrap();
    });
    let active = active_segment(&dir.path().join("logs").join("f"));
    let at = plant_residue(&active, true);
    run(
        30,
        verify_reopened(dir.path(), &(0..15).collect::<Vec<_>>()),
    );
    assert!(
        !residue_left(&active, at),
        "the tail after a failed write was trusted"
    );
}

#[test]
fn torn_write_recovers_to_last_acked_batch() {
    for keep in [0usize, 1, 63, 64, 65, 700, 1500, 2100] {
        let dir = tempfile::tempdir().unwrap();
        run(30, async {
            let (s, inj) = open_faulty(dir.path());
            let log = s.create_log("f").await.unwrap();
            append_n(&log, 0, 30).await;
            // A group of three appends whose single write is torn after `keep` bytes.
            inj.fail_nth(FaultOp::Write, 1, FaultKind::Torn { keep });
            // The clean-up write after the failure fails too, as it would in a crash: the
            // torn prefix stays on disk for recovery to deal with.
            inj.fail_nth(FaultOp::Write, 2, FaultKind::Eio);
            let l2 = log.clone();
            let batch = tokio::spawn(async move {
                let a = [record(9, 30, 700)];
                let b = [record(9, 31, 700)];
                let c = [record(9, 32, 700)];
                futures_join(
                    l2.append(&a, Durability::Fsync),
                    l2.append(&b, Durability::Fsync),
                    l2.append(&c, Durability::Fsync),
                )
                .await
            });
            let (a, b, c) = batch.await.unwrap();
            assert!(a.is_err() || b.is_err() || c.is_err());
            s.shutdown().await.unwrap();
            // The fault backend "crashed" mid-write: the torn prefix is on disk. Only the
            // 30 acknowledged records (plus any that were acknowledged) may come back.
            // Appends that got an error may or may not have reached the disk.
            let expected: Vec<u32> = (0..30).collect();
            let mut maybe = Vec::new();
            for (r, seq) in [(&a, 30), (&b, 31), (&c, 32)] {
                assert!(r.is_err() || keep > 2000, "acked despite the torn write");
                maybe.push(seq);
            }
            verify_reopened_maybe(dir.path(), &expected, &maybe).await;
        });
    }
}

async fn futures_join<A, B, C>(a: A, b: B, c: C) -> (A::Output, B::Output, C::Output)
where
    A: std::future::Future,
    B: std::future::Future,
    C: std::future::Future,
{
    tokio::join!(a, b, c)
}

/// An idempotent append whose write fails is forgotten with it: its retry is appended
/// (a duplicate answer would point at records that are not there), once space returns.
#[test]
fn a_failed_idempotent_append_is_appended_on_retry() {
    use spool_storage::ProducerSeq;
    let dir = tempfile::tempdir().unwrap();
    run(30, async {
        let (s, inj) = open_faulty(dir.path());
        let log = s.create_log("f").await.unwrap();
        let p = |sequence| ProducerSeq::new(77, sequence);
        let (r0, r1) = ([record(9, 0, 700)], [record(9, 1, 700)]);
        let first = log.append_idempotent(&r0, Durability::Fsync, p(0)).await;
        let first = first.unwrap();
        inj.fail_nth(FaultOp::Write, 1, FaultKind::Enospc);
        let failed = log.append_idempotent(&r1, Durability::Fsync, p(1)).await;
        assert!(matches!(failed, Err(StorageError::DiskFull { .. })));
        let retry = log.append_idempotent(&r1, Durability::Fsync, p(1)).await;
        let retry = retry.unwrap();
        assert!(!retry.duplicate);
        assert_eq!(retry.base_offset, first.next_offset());
        let again = log.append_idempotent(&r1, Durability::Fsync, p(1)).await;
        assert!(again.unwrap().duplicate);
        s.shutdown().await.unwrap();
        verify_reopened(dir.path(), &[0, 1]).await;
    });
}
