//! Damage the last batch of a small log byte by byte: cut it at every position (the rest
//! never reached the disk) and flip every single byte. A reopen in TruncateTail mode must
//! keep exactly the batches before the damage; Strict mode must refuse to open.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{config, record, run};
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

fn damage_case(pristine: &Path, damage: impl FnOnce(&mut Vec<u8>)) -> (Result<u64, String>, u64) {
    let work = tempfile::tempdir().unwrap();
    copy_dir(pristine, work.path());
    let p = seg_path(work.path());
    let mut bytes = fs::read(&p).unwrap();
    damage(&mut bytes);
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
        let (strict, kept) = damage_case(pristine.path(), |b| {
            b[cut as usize..end as usize].fill(0);
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
fn every_flipped_byte_of_the_last_batch_is_caught() {
    let pristine = tempfile::tempdir().unwrap();
    let (start, end) = build(pristine.path());
    let full = u64::from(BATCHES) * 2;
    for pos in start..end {
        let (strict, kept) = damage_case(pristine.path(), |b| b[pos as usize] ^= 0x5a);
        assert_eq!(kept, full - 2, "flip at byte {pos}");
        let e = strict.expect_err("strict refuses a corrupt tail");
        assert!(e.contains("corrupt data"), "{e}");
    }
}

#[test]
fn residue_after_a_clean_end_is_cleared() {
    // A crash can persist a later page of a write but not an earlier one: zeros at the end
    // of the data, then stray bytes. They must not survive to be taken for data later.
    let pristine = tempfile::tempdir().unwrap();
    let (_, end) = build(pristine.path());
    let (strict, kept) = damage_case(pristine.path(), |b| {
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
    // never scans old data), a read of it and `check` report the file and the byte.
    let mut b = fs::read(&seg0).unwrap();
    b[20_000] ^= 1;
    fs::write(&seg0, &b).unwrap();
    let s = Storage::open_with(config(dir.path()), StdBackend).unwrap();
    let log = s.log("t").unwrap();
    let err = log.reader().read(0, usize::MAX, usize::MAX).unwrap_err();
    assert!(err.is_corruption(), "{err}");
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
    let tail = b.iter().rposition(|&x| x != 0).unwrap();
    b[tail - 10] ^= 1;
    fs::write(&seg0, &b).unwrap();
    let err = Storage::open_with(config(dir.path()), StdBackend).unwrap_err();
    assert!(
        err.is_corruption() && err.to_string().contains("00000000000000000000.seg"),
        "{err}"
    );
}
