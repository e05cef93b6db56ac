//! Faults in the metadata operations (renames, removals, directory and small-file syncs,
//! small files, spare preparation), through the fault backend's `MetaIo`.
//!
//! For each way a log's directory changes (a roll, a new epoch, a truncation, retention, a
//! clean shutdown, creating and deleting a log) the n-th next operation of one kind fails.
//! Whatever fails, the log is left poisoned or as it was, never inconsistent: an append
//! after it lands right after the acknowledged records or is refused as poisoned, and a
//! reopen finds every acknowledged record (less what a truncation or retention removed on
//! purpose), each frame in the epoch its history gives its offset, and passes `check`.

mod common;

use common::{config, record, run, small_log};
use spool_storage::io::fault::{FaultBackend, FaultInjector, FaultKind, FaultOp};
use spool_storage::io::std_backend::StdBackend;
use spool_storage::{Durability, Log, LogConfig, Storage, StorageError};

/// About 21 frames per 64 KiB segment: rolls come quickly.
const RECORD_BYTES: usize = 3000;
/// Records appended before the fault is armed: a few segments.
const BEFORE: u32 = 50;
/// Where the truncation cuts: inside the second segment.
const CUT_AT: u64 = 25;
/// Appends tried while waiting for a roll.
const ROLL_APPENDS_MAX: u32 = 60;

const META_OPS: [FaultOp; 6] = [
    FaultOp::Rename,
    FaultOp::Remove,
    FaultOp::SyncDir,
    FaultOp::SyncFile,
    FaultOp::WriteFile,
    FaultOp::Prepare,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Roll,
    BeginEpoch,
    Truncate,
    Retention,
    Shutdown,
    Create,
    Delete,
}

const SCENARIOS: [Scenario; 7] = [
    Scenario::Roll,
    Scenario::BeginEpoch,
    Scenario::Truncate,
    Scenario::Retention,
    Scenario::Shutdown,
    Scenario::Create,
    Scenario::Delete,
];

fn value(seq: u32) -> Vec<u8> {
    record(5, seq, RECORD_BYTES)
}

/// What a reopen must find of log "f".
#[derive(Debug)]
struct Expect {
    /// The value's seq at each offset the log held acknowledged.
    acked: Vec<u32>,
    /// The end may be as low as this (a truncation that failed part way); else all acked.
    end_at_least: u64,
    /// The log may be gone (a delete whose outcome is unknown), or is gone (`Some(true)`).
    deleted: Option<bool>,
    /// The epoch begun at the end, if its begin succeeded.
    epoch_begun: Option<(u64, u64)>,
}

impl Expect {
    fn new(n: u32) -> Expect {
        Expect {
            acked: (0..n).collect(),
            end_at_least: u64::from(n),
            deleted: Some(false),
            epoch_begun: None,
        }
    }

    fn push(&mut self, seq: u32) {
        self.acked.push(seq);
        self.end_at_least = self.acked.len() as u64;
    }
}

fn log_config(scenario: Scenario) -> LogConfig {
    LogConfig {
        // Keep about one segment: retention removes the first one.
        retention_bytes: (scenario == Scenario::Retention).then_some(small_log().segment_bytes),
        ..small_log()
    }
}

async fn append(log: &Log, seq: u32) -> Result<u64, StorageError> {
    log.append(&[value(seq)], Durability::Fsync)
        .await
        .map(|a| a.base_offset)
}

/// Append `seq` after a scenario: it lands at the end, or the log is poisoned.
async fn append_after(log: &Log, seq: u32, expect: &mut Expect, what: &str) {
    match append(log, seq).await {
        Ok(at) => {
            assert_eq!(at, expect.acked.len() as u64, "{what}: not at the end");
            expect.push(seq);
        }
        Err(StorageError::Poisoned { .. }) => {}
        Err(e) => panic!("{what}: an append after the fault failed: {e}"),
    }
}

/// Run `scenario` on log "f" of `s` with the fault armed, and say what must survive.
async fn scenario_run(
    s: &Storage,
    log: &Log,
    inj: &FaultInjector,
    scenario: Scenario,
    expect: &mut Expect,
) {
    let mut seq = BEFORE;
    match scenario {
        Scenario::Roll => {
            let segments = log.segment_count();
            while log.segment_count() == segments && seq < BEFORE + ROLL_APPENDS_MAX {
                match append(log, seq).await {
                    Ok(at) => {
                        assert_eq!(at, expect.acked.len() as u64);
                        expect.push(seq);
                    }
                    // The append that needed the roll fails with it; nothing was written.
                    Err(e) => assert!(!matches!(e, StorageError::InvalidInput(_)), "roll: {e}"),
                }
                seq += 1;
            }
        }
        Scenario::BeginEpoch => {
            if log.begin_epoch(7).await.is_ok() {
                expect.epoch_begun = Some((7, expect.acked.len() as u64));
            }
        }
        Scenario::Truncate => match log.truncate_to(CUT_AT).await {
            Ok(()) => {
                expect.acked.truncate(CUT_AT as usize);
                expect.end_at_least = CUT_AT;
            }
            // Poisoned part way: the tail past the cut may be gone, or not.
            Err(_) => expect.end_at_least = CUT_AT,
        },
        Scenario::Retention => s.run_retention().await.unwrap(),
        Scenario::Shutdown => {
            s.shutdown().await.unwrap();
            return;
        }
        Scenario::Create => {
            if s.create_log("g").await.is_err() {
                inj.clear();
                match s.create_log("g").await {
                    Ok(_) | Err(StorageError::LogExists(_)) => {}
                    Err(e) => panic!("create after a failed create: {e}"),
                }
            }
        }
        Scenario::Delete => {
            let r = s.delete_log("f").await;
            expect.deleted = match (r, s.log("f")) {
                (Ok(()), _) => Some(true),
                // Moved aside, not durably: a restart may find it or not.
                (Err(_), Err(StorageError::LogNotFound(_))) => None,
                (Err(_), Ok(_)) => Some(false),
                (Err(_), Err(e)) => panic!("delete: {e}"),
            };
            if expect.deleted != Some(false) {
                return;
            }
        }
    }
    inj.clear();
    append_after(log, seq + 1000, expect, &format!("{scenario:?}")).await;
}

/// Reopen with the std backend and check what `expect` says.
async fn verify(dir: &std::path::Path, expect: &Expect, what: &str) {
    let s = Storage::open_with(config(dir), StdBackend).unwrap();
    let log = match (s.log("f"), expect.deleted) {
        (Err(StorageError::LogNotFound(_)), Some(true) | None) => {
            s.shutdown().await.unwrap();
            return;
        }
        (Ok(log), Some(false) | None) => log,
        (r, d) => panic!(
            "{what}: deleted {d:?}, found {:?}",
            r.map(|l| l.positions())
        ),
    };
    let p = log.positions();
    assert!(
        p.durable >= expect.end_at_least && p.durable <= expect.acked.len() as u64,
        "{what}: reopened end {} outside {}..={}",
        p.durable,
        expect.end_at_least,
        expect.acked.len()
    );
    let epochs = log.epochs();
    let mut cursor = log.reader().frames(p.start).unwrap();
    let mut next = p.start;
    while let Some((h, frame)) = cursor.next_frame().unwrap() {
        assert_eq!(h.base_offset, next, "{what}: offsets not dense");
        assert_eq!(
            Some(h.epoch),
            epochs.epoch_at(h.base_offset).or(Some(0)),
            "{what}: frame {next} in another epoch than its history says"
        );
        let records = spool_storage::format::decode_records(frame, &h).unwrap();
        for r in records {
            let seq = expect.acked[r.offset as usize];
            assert_eq!(r.value, value(seq), "{what}: offset {}", r.offset);
        }
        next = h.next_offset();
    }
    assert_eq!(next, p.durable, "{what}: frames end before the log");
    if let Some((epoch, at)) = expect.epoch_begun {
        assert!(
            epochs.entries().contains(&(epoch, at)),
            "{what}: {epochs:?}"
        );
    }
    s.shutdown().await.unwrap();
    let report = spool_storage::check::check_data_dir(dir, &mut |_| {}).unwrap();
    assert!(report.is_ok(), "{what}: {:?}", report.logs);
}

/// Run one case; returns whether the fault fired.
fn case(scenario: Scenario, op: FaultOp, n: u64, kind: FaultKind) -> bool {
    let what = format!("{scenario:?}, {op:?} #{n} {kind:?}");
    let dir = tempfile::tempdir().unwrap();
    run(60, async {
        let backend = FaultBackend::default();
        let inj = backend.injector.clone();
        let s = Storage::open_with(config(dir.path()), backend).unwrap();
        let log = s.create_log_with("f", log_config(scenario)).await.unwrap();
        for seq in 0..BEFORE {
            assert_eq!(append(&log, seq).await.unwrap(), u64::from(seq));
        }
        let mut expect = Expect::new(BEFORE);
        inj.fail_nth(op, n, kind);
        scenario_run(&s, &log, &inj, scenario, &mut expect).await;
        let fired = inj.fired() > 0;
        inj.clear();
        let _ = s.shutdown().await;
        drop(s);
        verify(dir.path(), &expect, &what).await;
        fired
    })
}

#[test]
fn a_failed_metadata_operation_leaves_the_log_poisoned_or_unchanged() {
    for scenario in SCENARIOS {
        let mut fired = Vec::new();
        for op in META_OPS {
            for n in [1, 2] {
                if case(scenario, op, n, FaultKind::Eio) {
                    fired.push((op, n));
                }
            }
        }
        eprintln!("{scenario:?}: faults fired {fired:?}");
        // Every scenario changes the directory at least twice (a rename or removal, and
        // the directory sync that makes it durable): those must have failed.
        assert!(fired.len() >= 2, "{scenario:?}: only {fired:?} fired");
    }
}

/// A full disk where a roll prepares its segment: the append fails with `DiskFull`, the
/// log is not poisoned, and appends resume once space returns.
#[test]
fn a_roll_on_a_full_disk_fails_the_append_and_resumes_after() {
    let dir = tempfile::tempdir().unwrap();
    run(60, async {
        let backend = FaultBackend::default();
        let inj = backend.injector.clone();
        let s = Storage::open_with(config(dir.path()), backend).unwrap();
        let log = s.create_log("f").await.unwrap();
        inj.fail_all(FaultOp::Prepare, FaultKind::Enospc);
        let mut expect = Expect::new(0);
        let mut seq = 0;
        let err = loop {
            assert!(seq < ROLL_APPENDS_MAX, "no roll was needed");
            match append(&log, seq).await {
                Ok(at) => {
                    assert_eq!(at, u64::from(seq));
                    expect.push(seq);
                }
                Err(e) => break e,
            }
            seq += 1;
        };
        assert!(err.is_disk_full(), "{err}");
        let again = append(&log, seq + 1).await.unwrap_err();
        assert!(again.is_disk_full(), "{again}");
        inj.clear();
        append_after(&log, seq + 2, &mut expect, "after space returned").await;
        assert_eq!(
            expect.acked.len() as u32,
            seq + 1,
            "poisoned by a full disk"
        );
        s.shutdown().await.unwrap();
        drop(s);
        verify(dir.path(), &expect, "full disk").await;
    });
}

/// A full disk while the new epoch's history is written: the epoch is not begun, in
/// memory either, and the log is not poisoned.
#[test]
fn an_epoch_that_cannot_be_saved_is_not_begun() {
    let dir = tempfile::tempdir().unwrap();
    run(60, async {
        let backend = FaultBackend::default();
        let inj = backend.injector.clone();
        let s = Storage::open_with(config(dir.path()), backend).unwrap();
        let log = s.create_log("f").await.unwrap();
        let mut expect = Expect::new(0);
        append_after(&log, 0, &mut expect, "first").await;
        inj.fail_nth(FaultOp::WriteFile, 1, FaultKind::Enospc);
        assert!(log.begin_epoch(4).await.unwrap_err().is_disk_full());
        assert_eq!(log.current_epoch(), 0);
        let ack = log.append(&[value(1)], Durability::Fsync).await.unwrap();
        assert_eq!((ack.base_offset, ack.epoch), (1, 0));
        expect.push(1);
        log.begin_epoch(4).await.unwrap();
        expect.epoch_begun = Some((4, 2));
        s.shutdown().await.unwrap();
        drop(s);
        verify(dir.path(), &expect, "epoch on a full disk").await;
    });
}

/// Storage over the fault backend with logs "slow" and "fast" (small segments).
async fn slow_and_fast(dir: &std::path::Path) -> (Storage, FaultInjector, Log, Log) {
    let backend = FaultBackend::default();
    let inj = backend.injector.clone();
    let s = Storage::open_with(config(dir), backend).unwrap();
    let slow = s.create_log("slow").await.unwrap();
    let fast = s.create_log("fast").await.unwrap();
    (s, inj, slow, fast)
}

/// Wait (bounded) until an operation is held at a pause.
async fn until_paused(inj: &FaultInjector) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while inj.paused() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing reached the pause"
        );
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

/// While log "slow" waits: "fast" takes `n` appends (acked), and "slow" does not move.
async fn fast_goes_on(slow: &Log, fast: &Log, n: u32) {
    let held_at = slow.positions().durable;
    let from = fast.positions().durable;
    for i in 0..n {
        let at = append(fast, i).await.unwrap();
        assert_eq!(at, from + u64::from(i));
    }
    assert_eq!(slow.positions().durable, held_at, "the waiting log moved");
}

/// Reopen `dir` and check each (log, n): its records are `value(0..n)`.
async fn reopened_holds(dir: &std::path::Path, logs: &[(&str, u32)]) {
    let s = Storage::open_with(config(dir), StdBackend).unwrap();
    for &(name, n) in logs {
        let got = s
            .log(name)
            .unwrap()
            .reader()
            .read(0, usize::MAX, usize::MAX)
            .unwrap();
        assert_eq!(got.len() as u32, n, "{name}");
        for (i, r) in got.iter().enumerate() {
            assert_eq!(r.value, value(i as u32), "{name} offset {i}");
        }
    }
    s.shutdown().await.unwrap();
}

/// A roll whose rename waits on the disk holds only its own log: another log's appends
/// are acked meanwhile (the storage thread is not waiting with it), and the waiting log's
/// appends go on, in order, once the rename is done.
#[test]
fn a_roll_waiting_on_the_disk_holds_only_its_own_log() {
    let dir = tempfile::tempdir().unwrap();
    run(60, async {
        let (s, inj, slow, fast) = slow_and_fast(dir.path()).await;
        // The roll's placement: a rename to `<base>.seg` (spares are `spare-*`).
        inj.pause(FaultOp::Rename, "/logs/slow/000");
        let writer = {
            let slow = slow.clone();
            tokio::spawn(async move {
                for i in 0..60 {
                    assert_eq!(append(&slow, i).await.unwrap(), u64::from(i));
                }
            })
        };
        until_paused(&inj).await;
        fast_goes_on(&slow, &fast, 20).await;
        assert!(!writer.is_finished());
        inj.resume();
        writer.await.unwrap();
        assert!(slow.segment_count() >= 2, "no roll");
        s.shutdown().await.unwrap();
        drop(s);
        reopened_holds(dir.path(), &[("slow", 60), ("fast", 20)]).await;
    });
}

/// A truncation whose file steps wait on the disk (a segment past the cut being removed;
/// the cut epoch history being saved) holds only its own log: another log's appends are
/// acked meanwhile, and the cut log ends where it was cut, on disk too.
#[test]
fn a_truncate_waiting_on_the_disk_holds_only_its_own_log() {
    let dir = tempfile::tempdir().unwrap();
    run(60, async {
        let (s, inj, slow, fast) = slow_and_fast(dir.path()).await;
        let mut n = 0;
        while slow.segment_count() < 3 {
            append(&slow, n).await.unwrap();
            n += 1;
        }
        // Segments past the cut go first; then (cut again) an epoch begun past the cut.
        truncate_held(&inj, &slow, &fast, (FaultOp::Remove, "/logs/slow/000"), 5).await;
        assert_eq!(slow.segment_count(), 1);
        slow.begin_epoch(4).await.unwrap();
        for i in 5..9 {
            append(&slow, i).await.unwrap();
        }
        truncate_held(
            &inj,
            &slow,
            &fast,
            (FaultOp::Rename, "/logs/slow/epochs"),
            5,
        )
        .await;
        assert_eq!(slow.current_epoch(), 0, "epoch 4 began past the cut");
        assert_eq!(fast.positions().durable, 20);
        s.shutdown().await.unwrap();
        drop(s);
        reopened_holds(dir.path(), &[("slow", 5)]).await;
    });
}

/// A reset (a replica's full sync) whose file steps wait on the disk holds only its own
/// log; the log then continues empty from the new start, on disk too.
#[test]
fn a_reset_waiting_on_the_disk_holds_only_its_own_log() {
    let dir = tempfile::tempdir().unwrap();
    run(60, async {
        let (s, inj, slow, fast) = slow_and_fast(dir.path()).await;
        for i in 0..10 {
            append(&slow, i).await.unwrap();
        }
        inj.pause(FaultOp::Remove, "/logs/slow/000");
        let reset = {
            let slow = slow.clone();
            tokio::spawn(async move { slow.reset_to(1000).await })
        };
        until_paused(&inj).await;
        fast_goes_on(&slow, &fast, 10).await;
        assert!(!reset.is_finished());
        inj.resume();
        reset.await.unwrap().unwrap();
        let p = slow.positions();
        assert_eq!((p.start, p.durable), (1000, 1000));
        assert_eq!(append(&slow, 10).await.unwrap(), 1000);
        s.shutdown().await.unwrap();
        drop(s);
        let s = Storage::open_with(config(dir.path()), StdBackend).unwrap();
        let slow = s.log("slow").unwrap();
        let p = slow.positions();
        assert_eq!((p.start, p.durable), (1000, 1001));
        let got = slow.reader().read(1000, 1, usize::MAX).unwrap();
        assert_eq!(got[0].value, value(10));
        s.shutdown().await.unwrap();
    });
}

/// Truncate `slow` to `cut` with `pause` held: `fast` goes on meanwhile.
async fn truncate_held(
    inj: &FaultInjector,
    slow: &Log,
    fast: &Log,
    pause: (FaultOp, &str),
    cut: u64,
) {
    inj.pause(pause.0, pause.1);
    let truncate = {
        let slow = slow.clone();
        tokio::spawn(async move { slow.truncate_to(cut).await })
    };
    until_paused(inj).await;
    fast_goes_on(slow, fast, 10).await;
    assert!(!truncate.is_finished(), "{pause:?}");
    inj.resume();
    truncate.await.unwrap().unwrap();
    assert_eq!(slow.positions().durable, cut);
}

/// A new epoch whose history waits on the disk: other logs go on; the log's appends after
/// it wait, and are written in the new epoch.
#[test]
fn an_epoch_waiting_on_the_disk_holds_only_its_own_log() {
    let dir = tempfile::tempdir().unwrap();
    run(60, async {
        let (s, inj, slow, fast) = slow_and_fast(dir.path()).await;
        append(&slow, 0).await.unwrap();
        inj.pause(FaultOp::Rename, "/logs/slow/epochs");
        let begin = {
            let slow = slow.clone();
            tokio::spawn(async move { slow.begin_epoch(3).await })
        };
        until_paused(&inj).await;
        let after = {
            let slow = slow.clone();
            tokio::spawn(async move { slow.append(&[value(1)], Durability::Fsync).await })
        };
        fast_goes_on(&slow, &fast, 10).await;
        assert!(!begin.is_finished() && !after.is_finished());
        assert_eq!(slow.current_epoch(), 0, "in memory before it is on disk");
        inj.resume();
        begin.await.unwrap().unwrap();
        let ack = after.await.unwrap().unwrap();
        assert_eq!((ack.base_offset, ack.epoch), (1, 3));
        s.shutdown().await.unwrap();
        drop(s);
        reopened_holds(dir.path(), &[("slow", 2), ("fast", 10)]).await;
    });
}

/// Deleting a log whose directory's move waits on the disk: other logs go on; the delete
/// answers once it is done.
#[test]
fn a_delete_waiting_on_the_disk_holds_only_its_own_log() {
    let dir = tempfile::tempdir().unwrap();
    run(60, async {
        let (s, inj, slow, fast) = slow_and_fast(dir.path()).await;
        append(&slow, 0).await.unwrap();
        inj.pause(FaultOp::Rename, "/logs/.trash-slow");
        let delete = {
            let s = s.clone();
            tokio::spawn(async move { s.delete_log("slow").await })
        };
        until_paused(&inj).await;
        fast_goes_on(&slow, &fast, 10).await;
        assert!(!delete.is_finished());
        inj.resume();
        delete.await.unwrap().unwrap();
        assert!(matches!(s.log("slow"), Err(StorageError::LogNotFound(_))));
        assert!(slow.is_deleted());
        s.shutdown().await.unwrap();
        drop(s);
        reopened_holds(dir.path(), &[("fast", 10)]).await;
    });
}
