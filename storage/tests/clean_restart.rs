//! A clean shutdown records the sealed segments, so that the next open reads none of them
//! (start-up time does not grow with the data), and the active one, so that it does not
//! read the zeros past its end either; without that record (a crash) or with one that no
//! longer describes the directory, recovery reads their tails as before.
//!
//! To tell the two apart, a byte is flipped in the last frame of a sealed segment, the
//! part recovery reads: an open that reads it finds the damage (and, told to refuse
//! damage, refuses the log), one that trusts the record opens it, and the damage is then
//! found by the read that reaches it and by `check`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{active_segment, config, plant_residue, record, residue_left, run};
use spool_storage::io::std_backend::StdBackend;
use spool_storage::{Durability, OnCorruption, Storage, StorageError};

const RECORD_BYTES: usize = 600;

fn log_dir(dir: &Path) -> PathBuf {
    dir.join("logs/t")
}

fn record_file(dir: &Path) -> PathBuf {
    log_dir(dir).join("sealed-at-shutdown.tmp")
}

fn open(dir: &Path) -> spool_storage::Result<Storage> {
    Storage::open_with(config(dir), StdBackend)
}

/// An open told to refuse damage: it fails exactly when it reads a damaged frame.
fn open_refusing(dir: &Path) -> spool_storage::Result<Storage> {
    let mut c = config(dir);
    c.on_corruption = OnCorruption::Refuse;
    Storage::open_with(c, StdBackend)
}

/// Where a frame lies in a sealed segment: (segment file, byte position of the frame).
type FrameAt = (PathBuf, u64);

/// Append `n` one-record batches to "t" (created if missing); returns the durable end and,
/// for each sealed segment, where its last frame is.
fn fill(dir: &Path, n: u32) -> (u64, Vec<FrameAt>) {
    run(30, async {
        let s = open(dir).unwrap();
        let log = match s.log("t") {
            Ok(l) => l,
            Err(_) => s.create_log("t").await.unwrap(),
        };
        let from = log.positions().durable as u32;
        for i in from..from + n {
            log.append(&[record(1, i, RECORD_BYTES)], Durability::Fsync)
                .await
                .unwrap();
        }
        let r = log.reader();
        let mut last_frames = Vec::new();
        let mut at = r.start_offset();
        while let Some((base, next)) = r.sealed_segment(at) {
            let span = r.sealed_span(base, next - 1).unwrap();
            last_frames.push((span.path.clone(), span.start));
            at = next;
        }
        let end = log.positions().durable;
        s.shutdown().await.unwrap();
        (end, last_frames)
    })
}

/// Flip a payload byte of the frame (its header still parses, its CRC no longer matches).
/// As bit rot would: the file's modification time is left as it was, unless `touch`.
fn flip_byte(frame: &FrameAt, touch: bool) {
    let (path, pos) = frame;
    let mtime = fs::metadata(path).unwrap().modified().unwrap();
    let mut bytes = fs::read(path).unwrap();
    bytes[*pos as usize + spool_storage::format::HEADER_BYTES + 10] ^= 0x20;
    fs::write(path, bytes).unwrap();
    if !touch {
        fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    }
}

/// Every record, read one offset at a time (each read finds its frame through the index).
fn read_each(s: &Storage, from: u64, end: u64) -> Vec<Result<Vec<u8>, StorageError>> {
    let r = s.log("t").unwrap().reader();
    (from..end)
        .map(|o| {
            r.read(o, 1, 1 << 20).map(|mut v| {
                assert_eq!(v.len(), 1);
                assert_eq!(v[0].offset, o);
                v.remove(0).value.to_vec()
            })
        })
        .collect()
}

#[test]
fn a_clean_restart_trusts_the_record_and_reads_indexes_when_needed() {
    let dir = tempfile::tempdir().unwrap();
    let (end, sealed) = fill(dir.path(), 300);
    assert!(sealed.len() >= 2, "{} sealed segments", sealed.len());
    assert!(record_file(dir.path()).exists());

    let s = open(dir.path()).unwrap();
    assert!(
        !record_file(dir.path()).exists(),
        "consumed at open: the log may change from now on"
    );
    assert_eq!(s.log("t").unwrap().positions().durable, end);
    let got = read_each(&s, 0, end);
    for (o, r) in got.into_iter().enumerate() {
        assert_eq!(r.unwrap(), record(1, o as u32, RECORD_BYTES), "offset {o}");
    }
    s.shutdown_blocking();
    drop(s);

    // The same open, with a sealed segment's last frame damaged: not read at open, found
    // by the read that reaches it and by check.
    flip_byte(&sealed[0], false);
    let s = open(dir.path()).unwrap();
    let got = read_each(&s, 0, end);
    let bad: Vec<usize> = (0..got.len()).filter(|&o| got[o].is_err()).collect();
    assert_eq!(bad.len(), 1, "exactly the damaged record fails: {bad:?}");
    assert!(matches!(got[bad[0]], Err(StorageError::DataLoss(_))));
    s.shutdown_blocking();
    drop(s);
    let report = spool_storage::check::check_data_dir(dir.path(), &mut |_| {}).unwrap();
    assert!(!report.is_ok(), "check reads everything");
}

#[test]
fn without_the_record_recovery_reads_the_tails() {
    let dir = tempfile::tempdir().unwrap();
    let (_, sealed) = fill(dir.path(), 300);
    fs::remove_file(record_file(dir.path())).unwrap();
    flip_byte(&sealed[0], false);
    assert!(matches!(
        open_refusing(dir.path()),
        Err(StorageError::Corrupt { .. })
    ));
    // By default the damage is isolated: the log opens and only the damaged record fails.
    let s = open(dir.path()).unwrap();
    let log = s.log("t").unwrap();
    let damage = log.damage();
    assert_eq!(damage.len(), 1, "{damage:?}");
    let got = read_each(&s, 0, log.positions().durable);
    let bad: Vec<usize> = (0..got.len()).filter(|&o| got[o].is_err()).collect();
    assert_eq!(bad, [damage[0].first_offset as usize]);
}

#[test]
fn a_segment_written_since_the_record_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let (_, sealed) = fill(dir.path(), 300);
    // As by a version that does not know the record: the file changed after it.
    flip_byte(&sealed[0], true);
    assert!(matches!(
        open_refusing(dir.path()),
        Err(StorageError::Corrupt { .. })
    ));
}

#[test]
fn a_record_that_no_longer_matches_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let (_, before) = fill(dir.path(), 300);
    let stale = fs::read(record_file(dir.path())).unwrap();
    // More segments sealed since; then the old record is planted back.
    let (_, after) = fill(dir.path(), 200);
    assert!(after.len() > before.len());
    fs::write(record_file(dir.path()), &stale).unwrap();
    flip_byte(after.last().unwrap(), false);
    assert!(matches!(
        open_refusing(dir.path()),
        Err(StorageError::Corrupt { .. })
    ));
    assert!(
        !record_file(dir.path()).exists(),
        "removed even when not used"
    );
}

/// Past the active segment's end a clean shutdown leaves only zeros: the next open does
/// not read them to make sure (24 MiB per log). Stray bytes planted there without changing
/// the file's modification time show it: they are not cleared. Once the file changed, or
/// without the record, the open reads the tail and clears them.
#[test]
fn a_clean_restart_does_not_read_past_the_active_end() {
    let dir = tempfile::tempdir().unwrap();
    let (end, _) = fill(dir.path(), 30);
    let active = active_segment(&log_dir(dir.path()));
    let at = plant_residue(&active, true);
    let s = open(dir.path()).unwrap();
    assert_eq!(s.log("t").unwrap().positions().durable, end);
    s.shutdown_blocking();
    drop(s);
    assert!(residue_left(&active, at), "the open read past the end");

    // The shutdown just now recorded the log again: a touched file is read.
    let at = plant_residue(&active, false);
    let s = open(dir.path()).unwrap();
    s.shutdown_blocking();
    drop(s);
    assert!(
        !residue_left(&active, at),
        "a file written since was trusted"
    );

    // As after a crash: no record.
    let at = plant_residue(&active, true);
    fs::remove_file(record_file(dir.path())).unwrap();
    let s = open(dir.path()).unwrap();
    assert_eq!(s.log("t").unwrap().positions().durable, end);
    s.shutdown_blocking();
    drop(s);
    assert!(
        !residue_left(&active, at),
        "without a record the tail is read"
    );
}

/// Logs open several at a time: each comes back with its own records, and one that
/// cannot be opened fails the whole open, naming its file.
#[test]
fn many_logs_open_together_and_a_damaged_one_is_named() {
    use spool_storage::RecoveryMode;
    let dir = tempfile::tempdir().unwrap();
    let name = |i: u32| format!("l{i}");
    run(30, async {
        let s = open(dir.path()).unwrap();
        for i in 0..20u32 {
            let log = s.create_log(&name(i)).await.unwrap();
            for j in 0..=i {
                log.append(&[record(i, j, 100)], Durability::Fsync)
                    .await
                    .unwrap();
            }
        }
        s.shutdown().await.unwrap();
    });
    let s = open(dir.path()).unwrap();
    for i in 0..20u32 {
        let log = s.log(&name(i)).unwrap();
        let recs = log.reader().read(0, usize::MAX, usize::MAX).unwrap();
        assert_eq!(recs.len() as u32, i + 1, "{}", name(i));
        for (j, r) in recs.iter().enumerate() {
            assert_eq!(&r.value[..], &record(i, j as u32, 100)[..], "{}", name(i));
        }
    }
    s.shutdown_blocking();
    drop(s);

    // The last frame of l7 torn (its last byte flipped): a strict open refuses it.
    let seg = active_segment(&dir.path().join("logs").join(name(7)));
    let mut bytes = fs::read(&seg).unwrap();
    let last = bytes.iter().rposition(|&b| b != 0).unwrap();
    bytes[last] ^= 0x01;
    fs::write(&seg, bytes).unwrap();
    let mut strict = config(dir.path());
    strict.recovery = RecoveryMode::Strict;
    match Storage::open_with(strict, StdBackend) {
        Err(StorageError::Corrupt { path, .. }) => {
            assert!(
                path.starts_with(dir.path().join("logs").join(name(7))),
                "{path:?}"
            )
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a strict open took a torn log"),
    }
}
