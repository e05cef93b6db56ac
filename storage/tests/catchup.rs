//! Catch-up, run against every IO backend like the conformance suite: sealed segments and
//! spans of an active segment received whole (`SegmentImport`), logs created for import
//! (their first segment only allocated), and allocated-only segments giving way to zeroed
//! spares; then, through the fault backend, an install failing at each metadata step, or
//! waiting on the disk.

mod common;

use bytes::Bytes;
use common::{
    config, copy_frames, open_fault, open_std, open_uring, read_all, record, run, small_log,
};
use spool_storage::io::fault::{FaultBackend, FaultInjector, FaultKind, FaultOp};
use spool_storage::{Durability, Log, LogConfig, Storage, StorageConfig, StorageError};

type Open = fn(StorageConfig) -> Storage;

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
        let src = two_epochs(&s, 400, 150).await;
        let dst = s.create_log("dst").await.unwrap();
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

/// Stage `src`'s frames from `imp`'s next offset until `until` (whole frames).
fn stage(src: &Log, imp: &mut spool_storage::SegmentImport, until: u64) {
    while imp.next_offset() < until {
        let c = src
            .reader()
            .read_frames_until(imp.next_offset(), 8 << 10, until)
            .unwrap();
        imp.write(&c.bytes).unwrap();
    }
}

/// Sealed segments received back to back, each begun (`follow_on`) and staged while the
/// one before it installs, as a replica overlaps the two: the copy reads the same and
/// keeps its epochs; one whose predecessor never landed is refused, and leaves nothing.
fn imports_overlap_the_install_before_them(open: Open) {
    let dir = tempfile::tempdir().unwrap();
    run(60, async {
        let s = open(config(dir.path()));
        let src = two_epochs(&s, 400, 150).await;
        let dst = s.create_log("dst").await.unwrap();
        let r = src.reader();
        let mut imp = dst.begin_import(0).unwrap();
        let (mut from, mut imported, mut installing) = (0, 0, None);
        while let Some((base, next)) = r.sealed_segment(from) {
            stage(&src, &mut imp, next);
            if let Some(before) = installing.take() {
                let landed: tokio::task::JoinHandle<spool_storage::Result<u64>> = before;
                assert_eq!(landed.await.unwrap().unwrap(), base);
            }
            let following = imp.follow_on().begin().unwrap();
            installing = Some(tokio::spawn(
                std::mem::replace(&mut imp, following).install(),
            ));
            (from, imported) = (next, imported + 1);
        }
        assert!(imported >= 3, "only {imported} segments imported");
        assert_eq!(installing.unwrap().await.unwrap().unwrap(), from);
        drop(imp);
        copy_frames(&src, &dst, from, src.positions().durable).await;
        assert_eq!(dst.epochs().entries(), &[(2, 0), (5, 150)]);
        assert_eq!(
            offsets_and_values(read_all(&s, "dst").await),
            offsets_and_values(read_all(&s, "src").await)
        );

        let other = s.create_log("other").await.unwrap();
        let (_, first_next) = r.sealed_segment(0).unwrap();
        let (_, second_next) = r.sealed_segment(first_next).unwrap();
        let mut first = other.begin_import(0).unwrap();
        stage(&src, &mut first, first_next);
        let mut orphan = first.follow_on().begin().unwrap();
        drop(first);
        stage(&src, &mut orphan, second_next);
        assert!(matches!(
            orphan.install().await,
            Err(StorageError::InvalidInput(_))
        ));
        assert_eq!(other.positions().durable, 0);
        assert_eq!(leftovers(dir.path()), Vec::<String>::new());
        s.shutdown().await.unwrap();
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

/// Log "src" in `s`: `n` records of 600 bytes in epoch 2, then in epoch 5 from offset `at`.
async fn two_epochs(s: &Storage, n: u32, at: u32) -> Log {
    let src = s.create_log("src").await.unwrap();
    src.begin_epoch(2).await.unwrap();
    for i in 0..n {
        if i == at {
            src.begin_epoch(5).await.unwrap();
        }
        src.append(&[record(7, i, 600)], Durability::Fsync)
            .await
            .unwrap();
    }
    src
}

/// Log "src" in `s`: 120 records in epochs 2 then 5 (from offset 50), its first segment
/// sealed; returns it and the end of that segment (past offset 50).
async fn source(s: &Storage) -> (Log, u64) {
    let src = two_epochs(s, 120, 50).await;
    let (_, first_next) = src.reader().sealed_segment(0).unwrap();
    assert!(first_next > 50, "the first segment holds both epochs");
    (src, first_next)
}

/// Stage `src`'s frames `from..until` in `dst` and install them; the result.
async fn import(src: &Log, dst: &Log, from: u64, until: u64) -> spool_storage::Result<u64> {
    let mut imp = dst.begin_import(from).unwrap();
    while imp.next_offset() < until {
        let c = src
            .reader()
            .read_frames_until(imp.next_offset(), 8 << 10, until)
            .unwrap();
        imp.write(&c.bytes).unwrap();
    }
    imp.install().await
}

/// An install whose `n`-th metadata operation of kind `op` fails, into "dst" holding
/// `src`'s first `held` records (0: its active segment is empty and moves on, else it is
/// sealed where the import begins). The log ends poisoned or as it was; a reopen finds
/// every record it acked, in the epochs its history gives them.
fn install_fault_case(op: FaultOp, n: u64, held: u64) -> bool {
    let dir = tempfile::tempdir().unwrap();
    run(60, async {
        let backend = FaultBackend::default();
        let inj: FaultInjector = backend.injector.clone();
        let s = Storage::open_with(config(dir.path()), backend).unwrap();
        let (src, until) = source(&s).await;
        let dst = s.create_log("dst").await.unwrap();
        copy_frames(&src, &dst, 0, held).await;
        inj.fail_nth(op, n, FaultKind::Eio);
        let installed = import(&src, &dst, held, until).await;
        let fired = inj.fired() > 0;
        inj.clear();
        let end = match installed {
            Ok(end) => {
                assert_eq!(end, until);
                end
            }
            // Poisoned, or as it was: then it takes the frames the import held.
            Err(_) => {
                let next = src.reader().read_frames_until(held, 1, until).unwrap();
                match dst.append_frames(next.bytes).await {
                    Ok(end) => {
                        assert_eq!(end, next.next_offset, "{op:?} #{n}");
                        end
                    }
                    Err(StorageError::Poisoned { .. }) => held,
                    Err(e) => panic!("{op:?} #{n}: after a failed install: {e}"),
                }
            }
        };
        s.shutdown().await.unwrap();
        drop(s);
        let s = Storage::open_with(
            config(dir.path()),
            spool_storage::io::std_backend::StdBackend,
        )
        .unwrap();
        let (dst, src) = (s.log("dst").unwrap(), s.log("src").unwrap());
        let got = dst.positions().durable;
        assert!(
            got >= end && got <= until,
            "{op:?} #{n}: reopened at {got}, acked {end}"
        );
        let want = src.reader().read(0, got as usize, usize::MAX).unwrap();
        let have = dst.reader().read(0, got as usize, usize::MAX).unwrap();
        assert_eq!(
            offsets_and_values(have),
            offsets_and_values(want),
            "{op:?} #{n}"
        );
        let epochs = dst.epochs();
        let mut cursor = dst.reader().frames(0).unwrap();
        while let Some((h, _)) = cursor.next_frame().unwrap() {
            assert_eq!(epochs.epoch_at(h.base_offset), Some(h.epoch), "{op:?} #{n}");
        }
        s.shutdown().await.unwrap();
        let report = spool_storage::check::check_data_dir(dir.path(), &mut |_| {}).unwrap();
        assert!(report.is_ok(), "{op:?} #{n}: {:?}", report.logs);
        fired
    })
}

#[test]
fn an_install_failing_at_any_metadata_step_leaves_the_log_poisoned_or_unchanged() {
    let ops = [
        FaultOp::Rename,
        FaultOp::Remove,
        FaultOp::SyncDir,
        FaultOp::SyncFile,
        FaultOp::WriteFile,
        FaultOp::Prepare,
    ];
    for held in [0, 10] {
        let mut fired = 0;
        for op in ops {
            for n in 1..=3 {
                fired += usize::from(install_fault_case(op, n, held));
            }
        }
        assert!(
            fired >= 8,
            "only {fired} faults fired with {held} records held"
        );
    }
}

/// An install whose rename waits on the disk holds only its own log: another log's
/// appends are acked meanwhile; the install answers once it is done.
#[test]
fn an_install_waiting_on_the_disk_holds_only_its_own_log() {
    let dir = tempfile::tempdir().unwrap();
    run(60, async {
        let backend = FaultBackend::default();
        let inj = backend.injector.clone();
        let s = Storage::open_with(config(dir.path()), backend).unwrap();
        let (src, until) = source(&s).await;
        let dst = s.create_log("dst").await.unwrap();
        let other = s.create_log("other").await.unwrap();
        // The staged file's rename to `<base>.seg`.
        inj.pause(FaultOp::Rename, "/logs/dst/000");
        let install = {
            let (src, dst) = (src.clone(), dst.clone());
            tokio::spawn(async move { import(&src, &dst, 0, until).await })
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while inj.paused() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the install never renamed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        for i in 0..10u64 {
            let ack = other
                .append(&[b"meanwhile"], Durability::Fsync)
                .await
                .unwrap();
            assert_eq!(ack.base_offset, i);
        }
        assert!(!install.is_finished());
        assert_eq!(dst.positions().durable, 0);
        inj.resume();
        assert_eq!(install.await.unwrap().unwrap(), until);
        copy_frames(&src, &dst, until, src.positions().durable).await;
        assert_eq!(
            offsets_and_values(read_all(&s, "dst").await),
            offsets_and_values(read_all(&s, "src").await)
        );
        s.shutdown().await.unwrap();
    });
}

macro_rules! suite {
    ($($backend:ident => $open:expr),*) => {$(
        mod $backend {
            use super::*;
            const OPEN: Open = $open;
            #[test] fn import_segments() { super::import_segments(OPEN) }
            #[test] fn import_into_a_log_created_for_import() { super::import_into_a_log_created_for_import(OPEN) }
            #[test] fn an_empty_allocated_segment_is_replaced_by_its_spare() { super::an_empty_allocated_segment_is_replaced_by_its_spare(OPEN) }
            #[test] fn an_allocated_segment_gives_way_after_a_restart() { super::an_allocated_segment_gives_way_after_a_restart(OPEN) }
            #[test] fn a_truncation_into_an_allocated_segment_gives_way_again() { super::a_truncation_into_an_allocated_segment_gives_way_again(OPEN) }
            #[test] fn import_a_span_of_the_active_segment() { super::import_a_span_of_the_active_segment(OPEN) }
            #[test] fn imports_overlap_the_install_before_them() { super::imports_overlap_the_install_before_them(OPEN) }
        }
    )*};
}

suite!(std_backend => open_std, uring_backend => open_uring, fault_backend => open_fault);
