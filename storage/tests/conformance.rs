//! One conformance suite, run against every IO backend: std (pwrite+fdatasync), io_uring,
//! and the fault-injecting backend with no fault armed.

mod common;

use std::collections::HashSet;

use bytes::Bytes;
use common::{config, copy_frames, open_std, open_uring, record, run, small_log};
use spool_storage::io::fault::FaultBackend;
use spool_storage::io::std_backend::StdBackend;
use spool_storage::{Compression, Durability, LogConfig, Storage, StorageConfig, StorageError};

type Open = fn(StorageConfig) -> Storage;

fn open_fault(c: StorageConfig) -> Storage {
    Storage::open_with(c, FaultBackend::default()).unwrap()
}

async fn read_all(s: &Storage, name: &str) -> Vec<spool_storage::Record> {
    let log = s.log(name).unwrap();
    let r = log.reader();
    let mut out = Vec::new();
    let mut from = r.start_offset();
    loop {
        let batch = r.read(from, 1000, 1 << 20).unwrap();
        if batch.is_empty() {
            break;
        }
        from = batch.last().unwrap().offset + 1;
        out.extend(batch);
    }
    out
}

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

fn offsets_and_values(records: Vec<spool_storage::Record>) -> Vec<(u64, Bytes)> {
    records.into_iter().map(|r| (r.offset, r.value)).collect()
}

fn leftovers(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(leftovers(&e.path()));
        } else if e.file_name().to_string_lossy().ends_with(".tmp") {
            out.push(e.path().display().to_string());
        }
    }
    out
}

/// Sealed segments shipped whole (a replica's catch-up): the copy reads the same, keeps
/// the epochs, survives a restart and `check`; bad frames are refused, nothing is left
/// behind.
fn import_segments(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    run(60, async {
        let s = open(config(dir.path()));
        let src = s.create_log("src").await.unwrap();
        let dst = s.create_log("dst").await.unwrap();
        src.begin_epoch(2).await.unwrap();
        for i in 0..400u32 {
            if i == 150 {
                src.begin_epoch(5).await.unwrap();
            }
            src.append(&[record(7, i, 600)], Durability::Fsync)
                .await
                .unwrap();
        }
        let r = src.reader();
        // The first segment as appended frames: the next import seals dst's active segment.
        let (base, first_next) = r.sealed_segment(0).unwrap();
        assert_eq!(base, 0);
        copy_frames(&src, &dst, 0, first_next).await;
        let mut from = first_next;
        let mut imported = 0;
        while let Some((base, next)) = r.sealed_segment(from) {
            assert_eq!(base, from);
            let mut imp = dst.begin_import(base).unwrap();
            if imported % 2 == 1 {
                // As a segment fetch sends it: the file's bytes from a frame boundary to
                // the segment's end, cut at arbitrary points and split into whole frames.
                // The first frame in the stream, the rest from the file (a resumed fetch).
                let first = r.read_frames_until(base, 1, next).unwrap();
                imp.write(&first.bytes).unwrap();
                let span = r.sealed_span(base, first.next_offset).unwrap();
                assert_eq!(
                    (span.first_offset, span.next_offset),
                    (first.next_offset, next)
                );
                let bytes = std::fs::read(&span.path).unwrap();
                let mut data = &bytes[span.start as usize..span.end as usize];
                let mut pending: Vec<u8> = Vec::new();
                while !data.is_empty() {
                    let cut = data.len().min(5000);
                    pending.extend_from_slice(&data[..cut]);
                    data = &data[cut..];
                    let whole = spool_storage::format::whole_frames_len(&pending).unwrap();
                    imp.write(&pending[..whole]).unwrap();
                    pending.drain(..whole);
                }
                assert!(pending.is_empty());
            }
            while imp.next_offset() < next {
                let c = r
                    .read_frames_until(imp.next_offset(), 8 << 10, next)
                    .unwrap();
                assert!(c.next_offset <= next);
                imp.write(&c.bytes).unwrap();
            }
            assert_eq!(imp.install().await.unwrap(), next);
            assert_eq!(dst.positions().durable, next);
            from = next;
            imported += 1;
        }
        assert!(imported >= 3, "only {imported} segments imported");
        copy_frames(&src, &dst, from, src.positions().durable).await;
        assert_eq!(dst.epochs().entries(), &[(2, 0), (5, 150)]);
        assert_eq!(
            offsets_and_values(read_all(&s, "dst").await),
            offsets_and_values(read_all(&s, "src").await)
        );

        // `from` is now the base of src's active segment: no span of it is sent.
        assert!(matches!(
            r.sealed_span(from, from),
            Err(StorageError::InvalidInput(_))
        ));

        // Refused: a segment that does not start at the log's end, frames that do not
        // continue it, a damaged frame.
        let end = dst.positions().durable;
        assert!(matches!(
            dst.begin_import(end - 1),
            Err(StorageError::InvalidInput(_))
        ));
        let mut imp = dst.begin_import(end).unwrap();
        let early = r.read_frames(0, 1).unwrap();
        assert!(matches!(
            imp.write(&early.bytes),
            Err(StorageError::FrameRejected { .. })
        ));
        let fresh = s.create_log("fresh").await.unwrap();
        let mut bad = fresh.begin_import(0).unwrap();
        let mut corrupt = early.bytes.to_vec();
        corrupt[60] ^= 0x40;
        assert!(matches!(
            bad.write(&corrupt),
            Err(StorageError::FrameRejected { .. })
        ));
        assert!(
            !leftovers(dir.path()).is_empty(),
            "staging files exist while importing"
        );
        drop((imp, bad));
        assert_eq!(leftovers(dir.path()), Vec::<String>::new());
        s.delete_log("fresh").await.unwrap();

        let ack = dst.append(&[b"after"], Durability::Fsync).await.unwrap();
        assert_eq!(ack.base_offset, end);
        s.shutdown().await.unwrap();
        drop(s);

        let s = open(config(dir.path()));
        let got = read_all(&s, "dst").await;
        assert_eq!(got.len() as u64, end + 1);
        assert_eq!(
            offsets_and_values(got[..end as usize].to_vec()),
            offsets_and_values(read_all(&s, "src").await)
        );
        s.shutdown().await.unwrap();
        let report = spool_storage::check::check_data_dir(dir.path(), &mut |_| {}).unwrap();
        assert!(report.is_ok());
    });
}

/// Files in `dir` whose names start with `prefix`.
fn files_named(dir: &std::path::Path, prefix: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    out.sort();
    out
}

fn inode(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().ino()
}

/// Wait (bounded) until `dir` holds a ready spare (`spare-*.seg`).
async fn spare_ready(dir: &std::path::Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !files_named(dir, "spare-")
        .iter()
        .any(|n| n.ends_with(".seg"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no spare was prepared"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// A log created for import (first segment allocated, not zero-filled, as a replica's
/// before a full sync): imports ask for no zeroed spare (they would write a segment of
/// zeros while the catch-up writes), each moves the same allocated file on; the first
/// append asks for one, and the active segment, frames in it, is sealed early once it is
/// ready. The log then behaves as any other.
fn import_into_a_log_created_for_import(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    run(60, async {
        let s = open(config(dir.path()));
        let src = s.create_log("src").await.unwrap();
        for i in 0..400u32 {
            src.append(&[record(3, i, 600)], Durability::Fsync)
                .await
                .unwrap();
        }
        let dst = s
            .create_log_for_import("dst", small_log(), 7)
            .await
            .unwrap();
        let ddir = dir.path().join("logs").join("dst");
        let seg_path = |base: u64| ddir.join(format!("{base:020}.seg"));
        let allocated = inode(&seg_path(0));
        let r = src.reader();
        let (mut from, mut imported) = (0, 0);
        while let Some((base, next)) = r.sealed_segment(from) {
            let mut imp = dst.begin_import(base).unwrap();
            while imp.next_offset() < next {
                let c = r
                    .read_frames_until(imp.next_offset(), 8 << 10, next)
                    .unwrap();
                imp.write(&c.bytes).unwrap();
            }
            assert_eq!(imp.install().await.unwrap(), next);
            assert_eq!(inode(&seg_path(next)), allocated, "moved on, not replaced");
            (from, imported) = (next, imported + 1);
        }
        assert!(imported >= 3, "only {imported} segments imported");
        assert_eq!(
            files_named(&ddir, "spare-"),
            Vec::<String>::new(),
            "an import asked for a spare"
        );

        // The first append asks; once the spare is ready, the next append seals the
        // allocated segment (its frames kept) and goes on in the zeroed one.
        let first = from;
        copy_frames(&src, &dst, from, from + 1).await;
        from += 1;
        spare_ready(&ddir).await;
        let segments = dst.segment_count();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while dst.segment_count() == segments {
            assert!(
                std::time::Instant::now() < deadline,
                "the active segment never gave way to the spare"
            );
            if from == src.positions().durable {
                src.append(&[record(3, from as u32, 600)], Durability::Fsync)
                    .await
                    .unwrap();
            }
            copy_frames(&src, &dst, from, from + 1).await;
            from += 1;
        }
        let end = src.positions().durable;
        let (sealed, rolled_at) = dst.reader().sealed_segment(first).unwrap();
        assert_eq!(sealed, first);
        assert_eq!(
            rolled_at,
            from - 1,
            "sealed where the append that rolled began"
        );
        assert_eq!(inode(&seg_path(first)), allocated);
        assert_ne!(inode(&seg_path(rolled_at)), allocated, "the zeroed spare");
        // Sealed with a few frames, it keeps only their blocks, not a whole segment's.
        {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::metadata(seg_path(first)).unwrap();
            assert_eq!(m.len(), small_log().segment_bytes);
            assert!(
                m.blocks() * 512 < small_log().segment_bytes,
                "{} blocks",
                m.blocks()
            );
        }
        copy_frames(&src, &dst, from, end).await;
        // The roll asked for the next spare: let it finish before looking for leftovers.
        spare_ready(&ddir).await;
        assert_eq!(leftovers(dir.path()), Vec::<String>::new());
        assert_eq!(
            offsets_and_values(read_all(&s, "dst").await),
            offsets_and_values(read_all(&s, "src").await)
        );
        let end = dst.positions().durable;
        s.shutdown().await.unwrap();
        drop(s);

        let s = open(config(dir.path()));
        let dst = s.log("dst").unwrap();
        assert_eq!(dst.positions().durable, end);
        assert_eq!(
            dst.append(&[b"after"], Durability::Fsync)
                .await
                .unwrap()
                .base_offset,
            end
        );
        s.shutdown().await.unwrap();
        let report = spool_storage::check::check_data_dir(dir.path(), &mut |_| {}).unwrap();
        assert!(report.is_ok());
    });
}

/// An allocated-only active segment that is still empty when its spare is ready is
/// replaced where it stands: no empty sealed segment, the same base.
fn an_empty_allocated_segment_is_replaced_by_its_spare(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    run(60, async {
        let s = open(config(dir.path()));
        // The slot turns ready just after the spare's file appears: an append in between
        // lands in the allocated segment, and that attempt starts over with a new log.
        for attempt in 0..20 {
            let name = format!("r{attempt}");
            let log = s
                .create_log_for_import(&name, small_log(), 7)
                .await
                .unwrap();
            let ldir = dir.path().join("logs").join(&name);
            let seg = ldir.join(format!("{:020}.seg", 700));
            // A reset places an allocated segment (no spare is ready) and asks for one.
            log.reset_to(700).await.unwrap();
            let allocated = inode(&seg);
            // A reader waiting at the end before the swap reads on after it.
            let mut cursor = log.reader().frames(700).unwrap();
            assert!(cursor.next_frame().unwrap().is_none());
            spare_ready(&ldir).await;
            let ack = log.append(&[b"x"], Durability::Fsync).await.unwrap();
            assert_eq!(ack.base_offset, 700);
            let (h, _) = cursor
                .next_frame()
                .unwrap()
                .expect("the cursor sees the frame");
            assert_eq!(h.base_offset, 700);
            if inode(&seg) == allocated {
                continue;
            }
            assert_eq!(log.segment_count(), 1, "replaced, not sealed empty");
            assert_eq!(log.positions().durable, 701);
            let want = vec![(700, Bytes::from_static(b"x"))];
            assert_eq!(offsets_and_values(read_all(&s, &name).await), want);
            s.shutdown().await.unwrap();
            drop(s);
            let s = open(config(dir.path()));
            assert_eq!(offsets_and_values(read_all(&s, &name).await), want);
            assert_eq!(s.log(&name).unwrap().segment_count(), 1);
            s.shutdown().await.unwrap();
            let report = spool_storage::check::check_data_dir(dir.path(), &mut |_| {}).unwrap();
            assert!(report.is_ok());
            return;
        }
        panic!("the spare never turned ready before the next append");
    });
}

/// An allocated-only active segment is known as such after a restart (its unwritten
/// tail is asked of the filesystem): it still gives way to a zeroed spare, instead of
/// taking appends at the slower rate until it rolls.
fn an_allocated_segment_gives_way_after_a_restart(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    run(60, async {
        let s = open(config(dir.path()));
        let (log, ldir, allocated) = allocated_log(&s, dir.path()).await;
        log.append(&[b"before"], Durability::Fsync).await.unwrap();
        s.shutdown().await.unwrap();
        drop(s);

        let s = open(config(dir.path()));
        let log = s.log("f").unwrap();
        let end = append_until_it_gives_way(&log, b"after", 1).await;
        let (base, next) = log.reader().sealed_segment(0).unwrap();
        assert_eq!(
            (base, next),
            (0, end - 1),
            "sealed where the last append began"
        );
        // ~80 bytes per frame: a roll of the full 64 KiB segment would be past 800.
        assert!(end < 200, "rolled when full at {end}, not sealed early");
        assert_eq!(inode(&ldir.join(format!("{:020}.seg", 0))), allocated);
        let mut want = vec![(0, Bytes::from_static(b"before"))];
        want.extend((1..end).map(|o| (o, Bytes::from_static(b"after"))));
        assert_eq!(offsets_and_values(read_all(&s, "f").await), want);
        spare_ready(&ldir).await;
        s.shutdown().await.unwrap();
        let report = spool_storage::check::check_data_dir(dir.path(), &mut |_| {}).unwrap();
        assert!(report.is_ok());
    });
}

/// Log "f" created as for an import (its first segment only allocated, not zero-filled),
/// its directory, and that segment's inode.
async fn allocated_log(
    s: &spool_storage::Storage,
    data: &std::path::Path,
) -> (spool_storage::Log, std::path::PathBuf, u64) {
    let log = s.create_log_for_import("f", small_log(), 7).await.unwrap();
    let ldir = data.join("logs").join("f");
    let allocated = inode(&ldir.join(format!("{:020}.seg", 0)));
    (log, ldir, allocated)
}

/// Appends `value` one record at a time from offset `first` until the log's one segment
/// has given way to a spare; the end offset then.
async fn append_until_it_gives_way(log: &spool_storage::Log, value: &[u8], first: u64) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut end = first;
    while log.segment_count() == 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the allocated segment never gave way to a spare"
        );
        let ack = log.append(&[value], Durability::Fsync).await.unwrap();
        assert_eq!(ack.base_offset, end);
        end += 1;
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    end
}

/// A truncation back into a segment that was sealed early to give way to a spare makes
/// it active again. Past its end it is only allocated, so it gives way again at once
/// rather than taking appends at the slow rate until it is full.
fn a_truncation_into_an_allocated_segment_gives_way_again(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    run(60, async {
        let s = open(config(dir.path()));
        let (log, ldir, allocated) = allocated_log(&s, dir.path()).await;
        log.append(&[b"a", b"b", b"c"], Durability::Fsync)
            .await
            .unwrap();
        let end = append_until_it_gives_way(&log, b"next", 3).await;
        assert_eq!(log.reader().sealed_segment(0), Some((0, end - 1)));

        // Into the first frame of segment 0: the spare's segment goes, the frame is cut.
        log.truncate_to(2).await.unwrap();
        assert_eq!(log.segment_count(), 1);
        let end = append_until_it_gives_way(&log, b"next", 2).await;
        assert_eq!(log.reader().sealed_segment(0), Some((0, end - 1)));
        // ~80 bytes per frame: a roll of the full 64 KiB segment would be past 800.
        assert!(end < 200, "rolled when full at {end}, not sealed early");
        assert_eq!(inode(&ldir.join(format!("{:020}.seg", 0))), allocated);
        let mut want = vec![(0, Bytes::from_static(b"a")), (1, Bytes::from_static(b"b"))];
        want.extend((2..end).map(|o| (o, Bytes::from_static(b"next"))));
        assert_eq!(offsets_and_values(read_all(&s, "f").await), want);
        spare_ready(&ldir).await;
        s.shutdown().await.unwrap();
        let report = spool_storage::check::check_data_dir(dir.path(), &mut |_| {}).unwrap();
        assert!(report.is_ok(), "{:?}", report.logs[0].problems);
    });
}

/// A span of the active segment, as a replica behind inside it fetches one: it ends at
/// the last frame boundary at or below the limit and the durable end, its file bytes are
/// the frames while the writer appends behind it, and imported it is a sealed segment of
/// the copy's own, after which the copy goes on as any log.
fn import_a_span_of_the_active_segment(open: Open) {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    run(60, async {
        let s = open(config(dir.path()));
        let big = LogConfig {
            segment_bytes: 4 << 20,
            ..small_log()
        };
        let src = s.create_log_with("src", big.clone()).await.unwrap();
        let dst = s.create_log_with("dst", big).await.unwrap();
        // Small records: all 400 frames fit in the log's first segment (segments grow
        // from `SEGMENT_BYTES_FIRST`).
        let frame = |i: u32| {
            [
                record(4, 3 * i, 150),
                record(4, 3 * i + 1, 150),
                record(4, 3 * i + 2, 150),
            ]
        };
        for i in 0..100u32 {
            src.append(&frame(i), Durability::Fsync).await.unwrap();
        }
        let r = src.reader();
        assert_eq!(r.active_base(), 0);
        let from = 30;
        copy_frames(&src, &dst, 0, from).await;
        let file_bytes = |span: &spool_storage::SegmentSpan| {
            let f = std::fs::File::open(&span.path).unwrap();
            let mut b = vec![0u8; (span.end - span.start) as usize];
            f.read_exact_at(&mut b, span.start).unwrap();
            b
        };
        let as_frames = |span: &spool_storage::SegmentSpan| {
            r.read_frames_until(span.first_offset, usize::MAX, span.next_offset)
                .unwrap()
                .bytes
        };
        // Limits: below `from` (empty), inside a frame (the boundary below), past the end.
        let empty = r.span(0, from, from - 1).unwrap();
        assert_eq!(
            (empty.start, empty.end, empty.next_offset),
            (empty.start, empty.start, from)
        );
        let inside = r.span(0, from, from + 4).unwrap();
        assert_eq!(inside.next_offset, from + 3);
        assert_eq!(file_bytes(&inside), as_frames(&inside));
        let whole = r.span(0, from, u64::MAX).unwrap();
        assert_eq!(whole.next_offset, 300);
        assert_eq!(file_bytes(&whole), as_frames(&whole));
        // Refused: not a segment's base, not a frame boundary, not sealed.
        for (base, at) in [(1, from), (0, from + 1)] {
            assert!(matches!(
                r.span(base, at, u64::MAX),
                Err(StorageError::InvalidInput(_))
            ));
        }
        assert!(matches!(
            r.sealed_span(0, from),
            Err(StorageError::InvalidInput(_))
        ));

        // Spans taken while the writer appends are whole frames up to a durable end.
        let writer = {
            let src = src.clone();
            tokio::spawn(async move {
                for i in 100..400u32 {
                    src.append(&frame(i), Durability::Fsync).await.unwrap();
                }
            })
        };
        let mut last = whole.next_offset;
        while !writer.is_finished() {
            let span = r.span(0, from, u64::MAX).unwrap();
            // (The segment publishes its durable frames just before the log's end moves.)
            assert!(span.next_offset >= last && span.next_offset <= 1200);
            let bytes = file_bytes(&span);
            assert_eq!(
                spool_storage::format::whole_frames_len(&bytes).unwrap(),
                bytes.len()
            );
            assert_eq!(bytes, as_frames(&span));
            last = span.next_offset;
            tokio::task::yield_now().await;
        }
        writer.await.unwrap();
        assert_eq!(r.active_base(), 0, "the span test needs one segment");

        let span = r.span(0, from, u64::MAX).unwrap();
        assert_eq!(span.next_offset, 1200);
        let mut imp = dst.begin_import(from).unwrap();
        let bytes = file_bytes(&span);
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let whole =
                spool_storage::format::whole_frames_len(&rest[..rest.len().min(64 << 10)]).unwrap();
            imp.write(&rest[..whole]).unwrap();
            rest = &rest[whole..];
        }
        assert_eq!(imp.install().await.unwrap(), 1200);
        let ddir = dir.path().join("logs").join("dst");
        for base in [0, from, 1200] {
            assert!(
                ddir.join(format!("{base:020}.seg")).exists(),
                "no segment {base}"
            );
        }
        assert_eq!(dst.reader().sealed_segment(from), Some((from, 1200)));
        for i in 400..410u32 {
            src.append(&frame(i), Durability::Fsync).await.unwrap();
            dst.append(&frame(i), Durability::Fsync).await.unwrap();
        }
        assert_eq!(
            offsets_and_values(read_all(&s, "dst").await),
            offsets_and_values(read_all(&s, "src").await)
        );
        assert_eq!(leftovers(dir.path()), Vec::<String>::new());
        s.shutdown().await.unwrap();
        drop(s);
        let report = spool_storage::check::check_data_dir(dir.path(), &mut |_| {}).unwrap();
        assert!(report.is_ok());
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
            #[test] fn import_segments() { super::import_segments(OPEN) }
            #[test] fn import_into_a_log_created_for_import() { super::import_into_a_log_created_for_import(OPEN) }
            #[test] fn an_empty_allocated_segment_is_replaced_by_its_spare() { super::an_empty_allocated_segment_is_replaced_by_its_spare(OPEN) }
            #[test] fn an_allocated_segment_gives_way_after_a_restart() { super::an_allocated_segment_gives_way_after_a_restart(OPEN) }
            #[test] fn a_truncation_into_an_allocated_segment_gives_way_again() { super::a_truncation_into_an_allocated_segment_gives_way_again(OPEN) }
            #[test] fn import_a_span_of_the_active_segment() { super::import_a_span_of_the_active_segment(OPEN) }
        }
    )*};
}

suite!(std_backend => open_std, uring_backend => open_uring, fault_backend => open_fault);
