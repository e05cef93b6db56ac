//! Idempotent appends, against the std and io_uring backends: a retry is answered with the
//! original offsets and writes nothing, across restarts (clean, or with the snapshot a
//! crash leaves), rolls, truncations, and on logs that received the frames by replication
//! (appended frames or imported segments).

mod common;

use common::{config, copy_frames, open_std, open_uring, record, run};
use spool_storage::{
    AppendAck, Durability, Log, ProducerSeq, Storage, StorageConfig, StorageError,
};

type Open = fn(StorageConfig) -> Storage;

const P: u64 = 0x5eed_0000_0000_0001;

fn seq(sequence: u64) -> ProducerSeq {
    ProducerSeq::new(P, sequence)
}

/// Three records of `len` bytes for sequence `s`.
fn batch(s: u64, len: usize) -> Vec<Vec<u8>> {
    (0..3).map(|j| record(s as u32, j, len)).collect()
}

async fn send(log: &Log, s: u64, len: usize) -> Result<AppendAck, StorageError> {
    log.append_idempotent(&batch(s, len), Durability::Fsync, seq(s))
        .await
}

/// `retry` answers `original` as a retry must: same batch, marked duplicate.
fn assert_duplicate_of(retry: AppendAck, original: AppendAck) {
    assert!(retry.duplicate, "{retry:?} is not a duplicate");
    assert_eq!(
        (retry.base_offset, retry.record_count, retry.epoch),
        (original.base_offset, original.record_count, original.epoch)
    );
}

fn snapshot_path(dir: &std::path::Path, log: &str) -> std::path::PathBuf {
    dir.join("logs").join(log).join("producers")
}

fn retries_get_the_original_offsets(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    run(60, async {
        let s = open(config(dir.path()));
        let log = s.create_log("idem").await.unwrap();
        log.append(&[b"plain"], Durability::Fsync).await.unwrap();
        let a0 = send(&log, 0, 10).await.unwrap();
        let a1 = send(&log, 1, 10).await.unwrap();
        assert_eq!((a0.base_offset, a1.base_offset), (1, 4));
        assert!(!a0.duplicate && !a1.duplicate);
        let end = log.positions();
        assert_duplicate_of(send(&log, 1, 10).await.unwrap(), a1);
        assert_duplicate_of(send(&log, 0, 10).await.unwrap(), a0);
        assert_eq!(log.positions(), end, "a retry writes nothing");

        // A gap, and a sequence older than the batches kept, are refused naming both.
        let gap = send(&log, 3, 10).await.unwrap_err();
        assert!(matches!(
            gap,
            StorageError::SequenceOutOfOrder {
                sequence: 3,
                expected: 2,
                ..
            }
        ));
        for s in 2..8 {
            send(&log, s, 10).await.unwrap();
        }
        let old = send(&log, 2, 10).await.unwrap_err();
        assert!(matches!(
            old,
            StorageError::SequenceTooOld {
                sequence: 2,
                last: 7,
                ..
            }
        ));
        let other = ProducerSeq::new(P + 1, 40);
        let first = log.append_idempotent(&[b"x"], Durability::Fsync, other);
        assert!(!first.await.unwrap().duplicate);
        let none = log.append_idempotent(&[b"x"], Durability::Fsync, ProducerSeq::new(0, 0));
        assert!(matches!(none.await, Err(StorageError::InvalidInput(_))));

        // A retry right behind its original is acked no earlier than the original is
        // durable, and the same goes for a synced retry of an unsynced original.
        let rounds = [
            (Durability::Fsync, Durability::Fsync),
            (Durability::Unsynced, Durability::Fsync),
            (Durability::Unsynced, Durability::Unsynced),
        ];
        for (n, (first, then)) in (8u64..).zip(rounds) {
            let b = batch(n, 10);
            let original = log.submit_idempotent(&b, first, seq(n)).await.unwrap();
            let retry = log.submit_idempotent(&b, then, seq(n)).await.unwrap();
            let retry = retry.await.unwrap();
            let p = log.positions();
            assert!(p.written >= retry.next_offset());
            if then == Durability::Fsync {
                assert!(p.durable >= retry.next_offset(), "{retry:?} before {p:?}");
                assert_eq!(retry.durability, Durability::Fsync);
            }
            assert_duplicate_of(retry, original.await.unwrap());
        }
        s.shutdown().await.unwrap();
    });
}

/// A clean restart (the shutdown's snapshot), a crash (an older snapshot: here the one the
/// log's first idempotent append wrote, so every frame after it is read again) and a
/// damaged snapshot (the active segment's frames alone) all still answer retries.
fn producers_survive_restarts(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = snapshot_path(dir.path(), "idem");
    run(60, async {
        let s = open(config(dir.path()));
        let log = s.create_log("idem").await.unwrap();
        log.append(&[b"plain"], Durability::Fsync).await.unwrap();
        assert!(
            !snapshot.exists(),
            "a log without producers has no snapshot"
        );
        let mut acks = vec![send(&log, 0, 10).await.unwrap()];
        let first = std::fs::read(&snapshot).expect("the first producer writes one");
        for n in 1..3 {
            acks.push(send(&log, n, 10).await.unwrap());
        }
        s.shutdown().await.unwrap();
        drop(s);

        let s = open(config(dir.path()));
        let log = s.log("idem").unwrap();
        assert_duplicate_of(send(&log, 2, 10).await.unwrap(), acks[2]);
        assert_duplicate_of(send(&log, 0, 10).await.unwrap(), acks[0]);
        acks.push(send(&log, 3, 10).await.unwrap());
        s.shutdown().await.unwrap();
        drop(s);

        std::fs::write(&snapshot, &first).unwrap();
        let s = open(config(dir.path()));
        let log = s.log("idem").unwrap();
        for n in [3, 1] {
            assert_duplicate_of(send(&log, n, 10).await.unwrap(), acks[n as usize]);
        }
        s.shutdown().await.unwrap();
        drop(s);

        let mut damaged = std::fs::read(&snapshot).unwrap();
        damaged[30] ^= 1;
        std::fs::write(&snapshot, &damaged).unwrap();
        let s = open(config(dir.path()));
        let log = s.log("idem").unwrap();
        assert_duplicate_of(send(&log, 3, 10).await.unwrap(), acks[3]);
        let end = log.positions().durable;
        assert_eq!(send(&log, 4, 10).await.unwrap().base_offset, end);
        s.shutdown().await.unwrap();
    });
}

/// Batches in segments sealed since: the snapshot written before each roll knows them,
/// also when the process stops without its shutdown snapshot.
fn producers_survive_rolls(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = snapshot_path(dir.path(), "idem");
    run(60, async {
        let s = open(config(dir.path()));
        let log = s.create_log("idem").await.unwrap();
        let mut acks = Vec::new();
        for n in 0..12 {
            acks.push(send(&log, n, 6000).await.unwrap());
        }
        assert!(log.segment_count() >= 4, "{} segments", log.segment_count());
        let before_shutdown = std::fs::read(&snapshot).unwrap();
        s.shutdown().await.unwrap();
        drop(s);
        std::fs::write(&snapshot, &before_shutdown).unwrap();

        let s = open(config(dir.path()));
        let log = s.log("idem").unwrap();
        for n in 7..12 {
            assert_duplicate_of(send(&log, n, 6000).await.unwrap(), acks[n as usize]);
        }
        let old = send(&log, 6, 6000).await.unwrap_err();
        assert!(matches!(old, StorageError::SequenceTooOld { last: 11, .. }));
        s.shutdown().await.unwrap();
    });
}

/// A cut forgets the batches it reaches (also one it cuts in two), so their retries are
/// appended again; the table after the cut survives a restart.
fn truncation_forgets_cut_batches(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    run(60, async {
        let s = open(config(dir.path()));
        let log = s.create_log("idem").await.unwrap();
        let mut acks = Vec::new();
        for n in 0..3 {
            acks.push(send(&log, n, 10).await.unwrap());
        }
        s.shutdown().await.unwrap();
        drop(s);

        // Below what the shutdown's snapshot covers, inside batch 1.
        let s = open(config(dir.path()));
        let log = s.log("idem").unwrap();
        let cut = acks[1].base_offset + 1;
        log.truncate_to(cut).await.unwrap();
        assert_duplicate_of(send(&log, 0, 10).await.unwrap(), acks[0]);
        let gap = send(&log, 2, 10).await.unwrap_err();
        assert!(matches!(
            gap,
            StorageError::SequenceOutOfOrder { expected: 1, .. }
        ));
        let again = send(&log, 1, 10).await.unwrap();
        assert!(!again.duplicate);
        assert_eq!(again.base_offset, cut);
        s.shutdown().await.unwrap();
        drop(s);

        let s = open(config(dir.path()));
        let log = s.log("idem").unwrap();
        assert_duplicate_of(send(&log, 1, 10).await.unwrap(), again);
        let r = log.reader().read(cut, 3, 1 << 20).unwrap();
        assert_eq!(&r[0].value[..], &batch(1, 10)[0][..]);
        s.shutdown().await.unwrap();
    });
}

/// Import `src`'s sealed segments from `from` (the base of one, where `dst` ends) as a
/// replica's catch-up does; returns the offset where src's active segment starts.
async fn import_sealed(src: &Log, dst: &Log, mut from: u64) -> u64 {
    let r = src.reader();
    while let Some((base, next)) = r.sealed_segment(from) {
        let mut imp = dst.begin_import(base).unwrap();
        while imp.next_offset() < next {
            let c = r.read_frames_until(imp.next_offset(), 8 << 10, next);
            imp.write(&c.unwrap().bytes).unwrap();
        }
        assert_eq!(imp.install().await.unwrap(), next);
        from = next;
    }
    from
}

/// A replica holds its primary's producers, whether the frames were appended or came in
/// imported segments, and keeps them across a restart: once promoted it answers retries
/// with the primary's offsets.
fn replicas_learn_producers_from_frames(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    run(60, async {
        let s = open(config(dir.path()));
        let src = s.create_log("src").await.unwrap();
        src.begin_epoch(2).await.unwrap();
        let mut acks = Vec::new();
        for n in 0..12 {
            src.append(&[b"plain"], Durability::Fsync).await.unwrap();
            acks.push(send(&src, n, 6000).await.unwrap());
        }
        let end = src.positions().durable;
        let appended = s.create_log("appended").await.unwrap();
        copy_frames(&src, &appended, 0, end).await;
        // The first segment as frames, then segments whole, then frames again.
        let imported = s.create_log("imported").await.unwrap();
        let (_, first) = src.reader().sealed_segment(0).unwrap();
        copy_frames(&src, &imported, 0, first).await;
        let active = import_sealed(&src, &imported, first).await;
        assert!(
            active > acks[8].base_offset,
            "imported segments hold producers"
        );
        copy_frames(&src, &imported, active, end).await;
        // As a crash would leave it: the snapshot written by the last import.
        let snapshot = snapshot_path(dir.path(), "imported");
        let after_import = std::fs::read(&snapshot).unwrap();
        s.shutdown().await.unwrap();
        drop(s);
        std::fs::write(&snapshot, after_import).unwrap();

        let s = open(config(dir.path()));
        for name in ["appended", "imported"] {
            let log = s.log(name).unwrap();
            for n in 7..12 {
                assert_duplicate_of(send(&log, n, 6000).await.unwrap(), acks[n as usize]);
            }
            assert_eq!(
                log.positions().durable,
                end,
                "{name}: retries wrote nothing"
            );
            assert_eq!(send(&log, 12, 10).await.unwrap().base_offset, end);
        }
        s.shutdown().await.unwrap();
    });
}

/// The node's bounds apply: beyond `producers_max` the least recently written producer
/// is forgotten (its retry is appended again), also after a restart, and a snapshot holds
/// more producers than the default bound when the config allows them.
fn the_configured_bounds_apply(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = |max| StorageConfig {
        producers_max: max,
        ..config(dir.path())
    };
    run(60, async {
        let s = open(cfg(2));
        let log = s.create_log("idem").await.unwrap();
        let one = |id| ProducerSeq::new(id, 0);
        for id in 1..=3 {
            log.append_idempotent(&[b"a"], Durability::Fsync, one(id))
                .await
                .unwrap();
        }
        let again = log.append_idempotent(&[b"a"], Durability::Fsync, one(3));
        assert!(again.await.unwrap().duplicate);
        let evicted = log.append_idempotent(&[b"a"], Durability::Fsync, one(1));
        assert!(
            !evicted.await.unwrap().duplicate,
            "producer 1 was the least recent"
        );
        s.shutdown().await.unwrap();
        drop(s);

        let many = spool_storage::config::PRODUCERS_MAX_DEFAULT as u64 + 10;
        let s = open(cfg(many as usize));
        let log = s.log("idem").unwrap();
        // Queued together, so that they share group commits.
        let mut acks = Vec::new();
        for id in 10..10 + many {
            let queued = log.submit_idempotent(&[b"b"], Durability::Fsync, one(id));
            acks.push(queued.await.unwrap());
        }
        for ack in acks {
            ack.await.unwrap();
        }
        s.shutdown().await.unwrap();
        drop(s);
        let s = open(cfg(many as usize));
        let log = s.log("idem").unwrap();
        let first = log.append_idempotent(&[b"b"], Durability::Fsync, one(10));
        assert!(
            first.await.unwrap().duplicate,
            "all {many} producers were kept"
        );
        s.shutdown().await.unwrap();
    });
}

macro_rules! suite {
    ($($backend:ident => $open:expr),*) => {$(
        mod $backend {
            use super::*;
            const OPEN: Open = $open;
            #[test] fn retries_get_the_original_offsets() { super::retries_get_the_original_offsets(OPEN) }
            #[test] fn producers_survive_restarts() { super::producers_survive_restarts(OPEN) }
            #[test] fn producers_survive_rolls() { super::producers_survive_rolls(OPEN) }
            #[test] fn truncation_forgets_cut_batches() { super::truncation_forgets_cut_batches(OPEN) }
            #[test] fn replicas_learn_producers_from_frames() { super::replicas_learn_producers_from_frames(OPEN) }
            #[test] fn the_configured_bounds_apply() { super::the_configured_bounds_apply(OPEN) }
        }
    )*};
}

suite!(std_backend => open_std, uring_backend => open_uring);
