//! Damage the last batch of a small log byte by byte. Cut at every position with its
//! durable mark gone too (the rest never reached the disk: a torn write), a reopen in
//! TruncateTail mode keeps exactly the batches before it and Strict refuses to open. Flip
//! every single byte with the mark still there (the batch had been synced), and nothing is
//! cut: the batch is damage, its records fail with DATA_LOSS, every other one reads back.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{config, record, run};
use spool_storage::format::MARK_BYTES;
use spool_storage::io::std_backend::StdBackend;
use spool_storage::{Durability, RecoveryMode, Storage, StorageError};

const BATCHES: u32 = 8;

fn seg_path(dir: &Path) -> PathBuf {
    dir.join("logs/t/00000000000000000000.seg")
}

/// Build the pristine log; return the byte range of its last batch.
fn build(dir: &Path) -> (u64, u64) {
    run(30, async {
        let s = Storage::open_with(config(dir), StdBackend).unwrap();
        let log = s.create_log("t").await.unwrap();
        for i in 0..BATCHES {
            // Two records per batch, the last one small so the cases stay quick.
            let n = if i == BATCHES - 1 { 40 } else { 300 };
            log.append(&[record(i, 0, n), record(i, 1, n)], Durability::Fsync)
                .await
                .unwrap();
        }
        s.shutdown().await.unwrap();
        let (data, _) = log.size_bytes();
        let last = log
            .reader()
            .read_frames(u64::from(BATCHES - 1) * 2, 1 << 20)
            .unwrap();
        (data - last.bytes.len() as u64, data)
    })
}

fn copy_dir(from: &Path, to: &Path) {
    for e in walk(from) {
        let rel = e.strip_prefix(from).unwrap();
        let dst = to.join(rel);
        fs::create_dir_all(dst.parent().unwrap()).unwrap();
        fs::copy(&e, &dst).unwrap();
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if !p.ends_with("LOCK") {
            out.push(p);
        }
    }
    out
}

/// Reopen and return (records kept, whether the values are the pristine ones).
fn reopen(dir: &Path, mode: RecoveryMode, append: bool) -> Result<u64, StorageError> {
    let mut c = config(dir);
    c.recovery = mode;
    let s = Storage::open_with(c, StdBackend)?;
    let log = s.log("t").unwrap();
    let end = log.positions().durable;
    let recs = log.reader().read(0, usize::MAX, usize::MAX).unwrap();
    assert_eq!(recs.len() as u64, end);
    for r in &recs {
        let (i, j) = ((r.offset / 2) as u32, (r.offset % 2) as u32);
        let n = if i == BATCHES - 1 { 40 } else { 300 };
        assert_eq!(&r.value[..], &record(i, j, n)[..], "offset {}", r.offset);
    }
    run(10, async {
        if append {
            // Appends continue right after what was kept.
            let ack = log.append(&[b"next"], Durability::Fsync).await.unwrap();
            assert_eq!(ack.base_offset, end);
        }
        s.shutdown().await.unwrap();
    });
    Ok(end)
}

/// As after a crash that lost the write after byte `from`: the clean shutdown's record and
/// the durable mark after the frames are gone.
fn lost_from(work: &Path, bytes: &mut [u8], from: usize, end: usize) {
    bytes[from..end + MARK_BYTES].fill(0);
    let _ = fs::remove_file(work.join("logs/t/sealed-at-shutdown.tmp"));
}

fn damage_case(
    pristine: &Path,
    damage: impl FnOnce(&Path, &mut Vec<u8>),
) -> (Result<u64, String>, u64) {
    let work = tempfile::tempdir().unwrap();
    copy_dir(pristine, work.path());
    let p = seg_path(work.path());
    let mut bytes = fs::read(&p).unwrap();
    damage(work.path(), &mut bytes);
    fs::write(&p, &bytes).unwrap();
    let strict = reopen(work.path(), RecoveryMode::Strict, false).map_err(|e| e.to_string());
    let kept = reopen(work.path(), RecoveryMode::TruncateTail, false).unwrap();
    // After recovery the log is consistent: Strict opens it as it is, and it takes writes.
    assert_eq!(
        reopen(work.path(), RecoveryMode::Strict, true).unwrap(),
        kept
    );
    (strict, kept)
}

#[test]
fn every_cut_of_the_last_batch_keeps_the_earlier_ones() {
    let pristine = tempfile::tempdir().unwrap();
    let (start, end) = build(pristine.path());
    let full = u64::from(BATCHES) * 2;
    for cut in start..end {
        let (strict, kept) = damage_case(pristine.path(), |work, b| {
            lost_from(work, b, cut as usize, end as usize)
        });
        assert_eq!(kept, full - 2, "cut at byte {cut}");
        if cut == start {
            // Nothing of the batch reached the disk: a clean end, not damage.
            assert_eq!(strict, Ok(full - 2));
        } else {
            let e = strict.expect_err("strict refuses a torn tail");
            assert!(e.contains("00000000000000000000.seg"), "{e}");
        }
    }
}

#[test]
fn every_flipped_byte_of_a_torn_last_batch_is_cut() {
    let pristine = tempfile::tempdir().unwrap();
    let (start, end) = build(pristine.path());
    let full = u64::from(BATCHES) * 2;
    for pos in start..end {
        let (strict, kept) = damage_case(pristine.path(), |work, b| {
            b[pos as usize] ^= 0x5a;
            // Not synced: no mark vouches for it, no clean shutdown recorded it.
            lost_from(work, b, end as usize, end as usize);
        });
        assert_eq!(kept, full - 2, "flip at byte {pos}");
        let e = strict.expect_err("strict refuses a corrupt tail");
        assert!(e.contains("corrupt data"), "{e}");
    }
}

/// Reopen a copy of `pristine` with byte `pos` of the segment flipped; returns the log's
/// end, which offsets read back (all with their pristine values), and whether it takes
/// writes.
fn flipped_synced(pristine: &Path, pos: u64) -> (u64, Vec<u64>, bool) {
    let work = tempfile::tempdir().unwrap();
    copy_dir(pristine, work.path());
    let p = seg_path(work.path());
    let mut bytes = fs::read(&p).unwrap();
    bytes[pos as usize] ^= 0x5a;
    fs::write(&p, &bytes).unwrap();
    let mut strict = config(work.path());
    strict.recovery = RecoveryMode::Strict;
    let e = Storage::open_with(strict, StdBackend).expect_err("strict refuses damage");
    assert!(e.is_corruption(), "{e}");
    let s = Storage::open_with(config(work.path()), StdBackend).unwrap();
    let log = s.log("t").unwrap();
    let end = log.positions().durable;
    let mut good = Vec::new();
    for o in 0..end {
        match log.reader().read(o, 1, usize::MAX) {
            Ok(r) => {
                let (i, j) = ((o / 2) as u32, (o % 2) as u32);
                let n = if i == BATCHES - 1 { 40 } else { 300 };
                assert_eq!(&r[0].value[..], &record(i, j, n)[..], "offset {o}");
                good.push(o);
            }
            Err(e) => assert!(e.is_data_loss(), "{e}"),
        }
    }
    let writable = run(10, async {
        let w = log.append(&[b"next"], Durability::Fsync).await;
        s.shutdown().await.unwrap();
        w.is_ok()
    });
    (end, good, writable)
}

#[test]
fn every_flipped_byte_of_a_synced_last_batch_is_damage_not_a_torn_tail() {
    let pristine = tempfile::tempdir().unwrap();
    let (start, end) = build(pristine.path());
    let full = u64::from(BATCHES) * 2;
    let before: Vec<u64> = (0..full - 2).collect();
    for pos in start..end {
        let (log_end, good, writable) = flipped_synced(pristine.path(), pos);
        // Nothing is cut and nothing else is lost: the batch's two records fail to read.
        assert_eq!(good, before, "flip at byte {pos}");
        if log_end == full {
            assert!(writable, "damage inside the log: appends go on after it");
        } else {
            // The bad frame's length is not to be trusted: the end is damaged, and no
            // append may overwrite what lies there.
            assert_eq!(log_end, full - 2, "flip at byte {pos}");
            assert!(!writable, "flip at byte {pos}: an append over damage");
        }
    }
}

#[test]
fn residue_after_a_clean_end_is_cleared() {
    // A crash can persist a later page of a write but not an earlier one: zeros at the end
    // of the data, then stray bytes. They must not survive to be taken for data later.
    let pristine = tempfile::tempdir().unwrap();
    let (_, end) = build(pristine.path());
    let (strict, kept) = damage_case(pristine.path(), |_, b| {
        b[end as usize + 5000..end as usize + 5100].fill(0xab);
    });
    assert_eq!(kept, u64::from(BATCHES) * 2);
    assert!(strict.is_err());
}

#[test]
fn corruption_in_a_sealed_segment_names_file_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let seg0 = run(30, async {
        let s = Storage::open_with(config(dir.path()), StdBackend).unwrap();
        let log = s.create_log("t").await.unwrap();
        for i in 0..300 {
            log.append(&[record(1, i, 1000)], Durability::Fsync)
                .await
                .unwrap();
        }
        assert!(log.segment_count() > 2);
        s.shutdown().await.unwrap();
        let (data, _) = log.size_bytes();
        assert!(data > 0);
        seg_path(dir.path())
    });
    // Damage the middle of the first (sealed) segment: open does not read it (start-up
    // never scans old data), a read of it and `check` report the file and the byte. The
    // read first returns every good record before the damage.
    let mut b = fs::read(&seg0).unwrap();
    b[20_000] ^= 1;
    fs::write(&seg0, &b).unwrap();
    let s = Storage::open_with(config(dir.path()), StdBackend).unwrap();
    let log = s.log("t").unwrap();
    let good = log.reader().read(0, usize::MAX, usize::MAX).unwrap();
    assert!(!good.is_empty() && good.len() < 300, "{}", good.len());
    let err = log
        .reader()
        .read(good.len() as u64, usize::MAX, usize::MAX)
        .unwrap_err();
    assert!(err.is_data_loss(), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("00000000000000000000.seg") && msg.contains("at byte"),
        "{msg}"
    );
    s.shutdown_blocking();
    let report = spool_storage::check::check_data_dir(dir.path(), &mut |_| {}).unwrap();
    assert!(!report.is_ok());
    assert!(report.logs[0].problems[0].contains("00000000000000000000.seg"));
    // Damage near the end of the sealed segment (the part open validates): open refuses.
    let len = {
        let s = Storage::open_with(config(dir.path()), StdBackend);
        drop(s);
        fs::read(&seg0).unwrap()
    };
    let mut b = len;
    // The frames end where the segment's durable mark is, if one fits after them.
    let tail = spool_storage::format::DurableMark::find_from(&b, 0, 0).map_or_else(
        || b.iter().rposition(|&x| x != 0).unwrap(),
        |m| m.own_pos as usize,
    );
    b[tail - 10] ^= 1;
    fs::write(&seg0, &b).unwrap();
    let mut refusing = config(dir.path());
    refusing.on_corruption = spool_storage::OnCorruption::Refuse;
    let err = Storage::open_with(refusing, StdBackend).unwrap_err();
    assert!(
        err.is_corruption() && err.to_string().contains("00000000000000000000.seg"),
        "{err}"
    );
}
