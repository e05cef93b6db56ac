//! Property-based fuzzing of what start-up reads from the disk: arbitrary bytes written
//! anywhere into a log's segments (sealed or active, frames, marks or zeros past the end)
//! never make the open, the reads or the next append panic or hang; an open that works
//! returns every record it has with its original bytes, or DATA_LOSS for damaged ones.
//! `PROPTEST_CASES=N` runs more cases than CI's default.

mod common;

use std::path::Path;

use common::{config, record, run};
use proptest::prelude::*;
use spool_storage::io::std_backend::StdBackend;
use spool_storage::{Durability, OnCorruption, RecoveryMode, Storage};

const RECORDS: u32 = 120;

fn pristine() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    run(30, async {
        let s = Storage::open_with(config(d.path()), StdBackend).unwrap();
        let log = s.create_log("f").await.unwrap();
        for i in 0..RECORDS {
            log.append(
                &[record(5, i, 300 + (i as usize % 7) * 40)],
                Durability::Fsync,
            )
            .await
            .unwrap();
        }
        s.shutdown().await.unwrap();
    });
    d
}

fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("logs/f"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "seg") && !p.to_string_lossy().contains("spare")
        })
        .collect();
    v.sort();
    v
}

fn copy(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.path().is_dir() {
            std::fs::create_dir_all(&dst).unwrap();
            copy(&e.path(), &dst);
        } else if e.file_name() != "LOCK" {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// Open, read everything, append once; every outcome but a panic or a wrong record is fine.
fn open_and_use(dir: &Path, recovery: RecoveryMode, on_corruption: OnCorruption) {
    let mut c = config(dir);
    c.recovery = recovery;
    c.on_corruption = on_corruption;
    let Ok(s) = Storage::open_with(c, StdBackend) else {
        return; // refused, naming the problem: fine
    };
    let log = s.log("f").unwrap();
    let end = log.positions().durable;
    // The records written, then at most one "after" per earlier open.
    assert!(end <= u64::from(RECORDS) + 2, "{end}");
    for o in 0..end {
        match log.reader().read(o, 1, usize::MAX) {
            Ok(r) if r[0].value[..] == b"after"[..] => {}
            Ok(r) => {
                let want = record(5, o as u32, 300 + (o as usize % 7) * 40);
                assert_eq!(&r[0].value[..], &want[..], "offset {o}");
            }
            Err(e) => assert!(e.is_corruption(), "offset {o}: {e}"),
        }
    }
    run(10, async {
        let _ = log.append(&[b"after"], Durability::Fsync).await;
        s.shutdown().await.unwrap();
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_in_a_segment_never_panic_the_open(
        which in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        garbage in prop::collection::vec(any::<u8>(), 1..600),
        strict in any::<bool>(),
        refuse in any::<bool>(),
    ) {
        let base = pristine();
        let work = tempfile::tempdir().unwrap();
        copy(base.path(), work.path());
        let segs = segments(work.path());
        let seg = which.get(&segs);
        let mut bytes = std::fs::read(seg).unwrap();
        // Mostly where the data is (frames, the mark after them), sometimes anywhere.
        let data_end = bytes.iter().rposition(|&b| b != 0).unwrap_or(0) + 64;
        let span = if at.index(4) == 0 { bytes.len() } else { data_end.min(bytes.len()) };
        let pos = at.index(span.max(1));
        let n = garbage.len().min(bytes.len() - pos);
        bytes[pos..pos + n].copy_from_slice(&garbage[..n]);
        std::fs::write(seg, &bytes).unwrap();
        let recovery = if strict { RecoveryMode::Strict } else { RecoveryMode::TruncateTail };
        let policy = if refuse { OnCorruption::Refuse } else { OnCorruption::Isolate };
        open_and_use(work.path(), recovery, policy);
        // Whatever the first open did, a second one works the same way.
        open_and_use(work.path(), recovery, policy);
    }
}
