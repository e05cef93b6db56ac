//! Damage found and repaired from a peer: scrub finds a flipped byte in a sealed segment
//! that the open did not read, and an index entry pointing at no frame; a copy of the log
//! made the way a replica makes it (the same frames appended unchanged) puts back damaged
//! records in a sealed segment, inside the active one, and at a damaged end, after which
//! the log takes writes again. Frames that are not the same records are refused and leave
//! the damage as it was.

mod common;

use std::fs;
use std::path::Path;

use bytes::Bytes;
use common::{active_segment, config, record, run};
use spool_storage::io::fault::{FaultBackend, FaultKind, FaultOp};
use spool_storage::io::std_backend::StdBackend;
use spool_storage::{Durability, Log, Storage, StorageError};

const RECORDS: u32 = 120;

fn value(i: u32) -> Vec<u8> {
    record(3, i, 700)
}

/// A log of one-record batches on `a`, and the same frames appended unchanged on `b`.
async fn twins(a: &Storage, b: &Storage) -> (Log, Log) {
    let la = a.create_log("t").await.unwrap();
    for i in 0..RECORDS {
        la.append(&[value(i)], Durability::Fsync).await.unwrap();
    }
    let lb = b.create_log("t").await.unwrap();
    let mut at = 0;
    while at < RECORDS as u64 {
        let chunk = la.reader().read_frames(at, 1 << 20).unwrap();
        at = chunk.next_offset;
        lb.append_frames(chunk.bytes).await.unwrap();
    }
    (la, lb)
}

/// The frames of `log` holding offsets `from..to`.
fn frames(log: &Log, from: u64, to: u64) -> Bytes {
    let mut out = Vec::new();
    let mut at = from;
    while at < to {
        let c = log.reader().read_frames_until(at, 1 << 20, to).unwrap();
        out.extend_from_slice(&c.bytes);
        at = c.next_offset;
    }
    Bytes::from(out)
}

fn read_all(log: &Log) -> Vec<Result<Vec<u8>, StorageError>> {
    (0..log.positions().durable)
        .map(|o| {
            log.reader()
                .read(o, 1, usize::MAX)
                .map(|r| r[0].value.to_vec())
        })
        .collect()
}

/// Build the twins, stop `a`, damage its copy with `damage(log dir)`, reopen it.
fn damaged_twins(dirs: (&Path, &Path), damage: impl FnOnce(&Path)) -> (Storage, Storage) {
    let b = run(30, async {
        let a = Storage::open_with(config(dirs.0), StdBackend).unwrap();
        let b = Storage::open_with(config(dirs.1), StdBackend).unwrap();
        twins(&a, &b).await;
        a.shutdown().await.unwrap();
        b
    });
    damage(&dirs.0.join("logs/t"));
    (Storage::open_with(config(dirs.0), StdBackend).unwrap(), b)
}

fn flip(path: &Path, pos: usize) {
    let mut bytes = fs::read(path).unwrap();
    bytes[pos] ^= 0x08;
    fs::write(path, bytes).unwrap();
}

fn digest(dir: &Path) -> u32 {
    let r = spool_storage::check::check_data_dir(dir, &mut |_| {}).unwrap();
    assert!(r.is_ok(), "{:?}", r.logs[0].problems);
    r.logs[0].digest
}

/// Repair every damaged run of `a`'s log from `b`'s, then check both read the same.
fn repair_all(a: &Storage, b: &Storage) {
    let (la, lb) = (a.log("t").unwrap(), b.log("t").unwrap());
    run(30, async {
        for d in la.damage() {
            let to = d.next_offset.unwrap_or(lb.positions().durable);
            let r = la
                .repair(d.first_offset, frames(&lb, d.first_offset, to))
                .await;
            let r = r.unwrap();
            assert_eq!(r.first_offset, d.first_offset);
        }
    });
    assert!(la.damage().is_empty(), "{:?}", la.damage());
    let got = read_all(&la);
    assert_eq!(got.len(), RECORDS as usize);
    for (i, v) in got.into_iter().enumerate() {
        assert_eq!(v.unwrap(), value(i as u32), "offset {i}");
    }
}

#[test]
fn a_damaged_sealed_segment_is_repaired_in_place() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = damaged_twins((da.path(), db.path()), |dir| {
        flip(&dir.join("00000000000000000000.seg"), 9_000);
    });
    let la = a.log("t").unwrap();
    let bad: Vec<usize> = (0..RECORDS as usize)
        .filter(|&o| read_all(&la)[o].is_err())
        .collect();
    assert_eq!(bad.len(), 1, "{bad:?}");
    repair_all(&a, &b);
    run(10, async {
        la.append(&[b"after"], Durability::Fsync).await.unwrap();
        b.log("t")
            .unwrap()
            .append(&[b"after"], Durability::Fsync)
            .await
            .unwrap();
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    });
    assert_eq!(digest(da.path()), digest(db.path()));
}

#[test]
fn a_sealed_repair_that_cannot_be_synced_fails_and_keeps_the_damage() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = damaged_twins((da.path(), db.path()), |dir| {
        flip(&dir.join("00000000000000000000.seg"), 9_000);
    });
    run(10, a.shutdown()).unwrap();
    let backend = FaultBackend::default();
    let inj = backend.injector.clone();
    let a = Storage::open_with(config(da.path()), backend).unwrap();
    let (la, lb) = (a.log("t").unwrap(), b.log("t").unwrap());
    // Reading finds the damage (the open reads no sealed segment).
    assert_eq!(read_all(&la).iter().filter(|r| r.is_err()).count(), 1);
    let d = la.damage()[0].clone();
    let to = d
        .next_offset
        .expect("a sealed run ends before the log does");
    inj.fail_all(FaultOp::SyncFile, FaultKind::Eio);
    let r = run(
        10,
        la.repair(d.first_offset, frames(&lb, d.first_offset, to)),
    );
    assert!(
        r.is_err(),
        "a repair whose sync failed is not reported done: {r:?}"
    );
    assert_eq!(la.damage().len(), 1, "the damage is still listed");
    inj.clear();
    repair_all(&a, &b);
    run(10, async {
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    });
}

#[test]
fn damage_inside_the_active_segment_is_repaired() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = damaged_twins((da.path(), db.path()), |dir| {
        flip(&active_segment(dir), 2_000);
    });
    let la = a.log("t").unwrap();
    assert_eq!(la.positions().durable, u64::from(RECORDS));
    // Before the tail the open reads: found by the read that reaches it.
    assert!(la.damage().is_empty());
    let failed = read_all(&la).iter().filter(|r| r.is_err()).count();
    assert_eq!(failed, 1);
    assert_eq!(la.damage().len(), 1);
    repair_all(&a, &b);
}

#[test]
fn a_damaged_end_takes_no_writes_until_repaired() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = damaged_twins((da.path(), db.path()), |dir| {
        // The last frame's length field: where it ends is no longer known.
        let seg = active_segment(dir);
        let bytes = fs::read(&seg).unwrap();
        let base = seg.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        let m = spool_storage::format::DurableMark::find_from(&bytes, 0, base).unwrap();
        let last = m.own_pos as usize - (700 + 4 + 64);
        flip(&seg, last + 13);
    });
    let la = a.log("t").unwrap();
    assert_eq!(la.positions().durable, u64::from(RECORDS) - 1);
    let refused = run(10, la.append(&[b"x"], Durability::Fsync)).unwrap_err();
    assert!(
        matches!(refused, StorageError::Damaged { offset, .. } if offset == u64::from(RECORDS) - 1),
        "{refused}"
    );
    // Frames of other records are refused and leave the damage as it was.
    let wrong = frames(&b.log("t").unwrap(), 0, 1);
    let e = run(10, la.repair(u64::from(RECORDS) - 1, wrong)).unwrap_err();
    assert!(matches!(e, StorageError::FrameRejected { .. }), "{e}");
    assert_eq!(la.damage().len(), 1);
    repair_all(&a, &b);
    run(10, async {
        let ack = la.append(&[b"after"], Durability::Fsync).await.unwrap();
        assert_eq!(ack.base_offset, u64::from(RECORDS));
        a.shutdown().await.unwrap();
        b.log("t")
            .unwrap()
            .append(&[b"after"], Durability::Fsync)
            .await
            .unwrap();
        b.shutdown().await.unwrap();
    });
    assert_eq!(digest(da.path()), digest(db.path()));
}

#[test]
fn scrub_finds_a_flipped_byte_the_open_did_not_read_and_repair_clears_it() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = damaged_twins((da.path(), db.path()), |dir| {
        // Bit rot: the file's modification time stays, so the clean shutdown's record is
        // trusted and the open reads nothing of the segment.
        let seg = dir.join("00000000000000000000.seg");
        let mtime = fs::metadata(&seg).unwrap().modified().unwrap();
        flip(&seg, 9_000);
        let f = fs::File::options().write(true).open(&seg).unwrap();
        f.set_modified(mtime).unwrap();
    });
    let la = a.log("t").unwrap();
    assert!(la.damage().is_empty(), "not read at open");
    let report = run(30, a.scrub_now(None)).unwrap();
    assert_eq!(report.damage.len(), 1, "{report:?}");
    assert!(report.segments >= 1 && report.bytes > 0);
    let d = la.damage();
    assert_eq!(d.len(), 1);
    let e = la
        .reader()
        .read(d[0].first_offset, 1, usize::MAX)
        .unwrap_err();
    assert!(e.is_data_loss(), "{e}");
    assert_eq!(
        a.scrub_stats()
            .damage_found
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    repair_all(&a, &b);
    let again = run(30, a.scrub_now(Some("t"))).unwrap();
    assert!(again.damage.is_empty(), "{again:?}");
}

#[test]
fn scrub_rebuilds_an_index_that_points_at_no_frame() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, _b) = damaged_twins((da.path(), db.path()), |dir| {
        let idx = dir.join("00000000000000000000.idx");
        let mut bytes = fs::read(&idx).unwrap();
        // The second entry's byte position, moved into the middle of a frame.
        bytes[8 + 4] = bytes[8 + 4].wrapping_add(3);
        fs::write(&idx, bytes).unwrap();
    });
    let report = run(30, a.scrub_now(None)).unwrap();
    assert_eq!(report.index_rebuilt, 1, "{report:?}");
    assert!(report.damage.is_empty());
    let got = read_all(&a.log("t").unwrap());
    for (i, v) in got.into_iter().enumerate() {
        assert_eq!(v.unwrap(), value(i as u32), "offset {i}");
    }
    assert_eq!(run(30, a.scrub_now(None)).unwrap().index_rebuilt, 0);
}
