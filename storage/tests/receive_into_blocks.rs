//! A segment received straight into the import's O_DIRECT blocks (`receive_buffer` /
//! `received`): frames straddling blocks, reads of every size, a frame larger than a
//! block, cuts resumed, a corrupt byte. With both writers (threads, io_uring).

mod common;

use bytes::Bytes;
use common::{config, open_std, read_all, record, run};
use spool_storage::{Durability, ImportIo, Log, SegmentImport, Storage, StorageError};

/// Frames of `n` records of sizes from a few bytes to `max` bytes, appended to "src" of
/// `s`; returns the log and its frames' bytes, as a segment fetch would send them.
async fn source(s: &Storage, n: u32, max: usize) -> (Log, Vec<u8>) {
    let src = s.create_log("src").await.unwrap();
    let mut len = 17usize;
    for i in 0..n {
        len = (len * 7919 + 104_729) % max + 1;
        src.append(&[record(3, i, len)], Durability::Unsynced)
            .await
            .unwrap();
    }
    // Reads stop at the durable end: wait (bounded) for the unsynced appends to get there.
    let end = src.positions().written;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while src.positions().durable < end {
        assert!(
            std::time::Instant::now() < deadline,
            "appends never became durable"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let mut bytes = Vec::new();
    let mut from = 0;
    while from < end {
        let c = src.reader().read_frames_until(from, 1 << 20, end).unwrap();
        bytes.extend_from_slice(&c.bytes);
        from = c.next_offset;
    }
    (src, bytes)
}

/// Feed `bytes` into `imp` in reads of varying size (seeded by `seed`), as a fetch does:
/// a frame larger than a block, and what follows, as whole frames through `write`.
/// `false` if the import is not direct (O_DIRECT refused here).
fn receive(imp: &mut SegmentImport, mut bytes: &[u8], seed: usize) -> bool {
    if imp.receive_buffer().is_none() {
        return false;
    }
    let mut step = seed;
    while !bytes.is_empty() {
        let Some(buf) = imp.receive_buffer() else {
            let mut rest = imp.take_unchecked();
            rest.extend_from_slice(bytes);
            let whole = spool_storage::format::whole_frames_len(&rest).unwrap();
            imp.write(&rest[..whole]).unwrap();
            assert_eq!(whole, rest.len(), "the bytes end in whole frames here");
            return true;
        };
        step = (step * 31 + 7) % 900_001 + 1;
        let n = step.min(buf.len()).min(bytes.len());
        buf[..n].copy_from_slice(&bytes[..n]);
        imp.received(n).unwrap();
        bytes = &bytes[n..];
    }
    true
}

fn values(records: Vec<spool_storage::Record>) -> Vec<(u64, Bytes)> {
    records.into_iter().map(|r| (r.offset, r.value)).collect()
}

/// Install `imp` into log `name` of `s`: it must end where `src` does and read the same.
async fn install_same(s: &Storage, imp: SegmentImport, name: &str, src: &Log) {
    assert_eq!(imp.install().await.unwrap(), src.positions().written);
    assert_eq!(
        values(read_all(s, name).await),
        values(read_all(s, "src").await)
    );
}

fn storage(dir: &std::path::Path, how: ImportIo) -> Storage {
    let mut c = config(dir);
    // Frames of several MiB: the default segment size.
    c.default_log = spool_storage::LogConfig::default();
    c.import_io = how;
    open_std(c)
}

/// Every frame arrives checked and in place, whatever the reads' sizes; frames up to
/// 5 MiB cross 4 MiB blocks, one at least a whole block. A staging file allocated ahead
/// (as a fetch does) ends as long as what it holds.
fn receives_whole_segments(how: ImportIo) {
    let dir = tempfile::tempdir().unwrap();
    run(120, async {
        let s = storage(dir.path(), how);
        let (src, bytes) = source(&s, 24, 5 << 20).await;
        assert!(bytes.len() > 3 * (4 << 20));
        let (mut at, mut largest) = (0usize, 0usize);
        while at < bytes.len() {
            let len = spool_storage::format::peek_header(&bytes[at..])
                .unwrap()
                .frame_len;
            largest = largest.max(len as usize);
            at += len as usize;
        }
        assert!(largest > 4 << 20, "a frame larger than a block");
        for seed in [1usize, 4096, 77_777] {
            let name = format!("dst{seed}");
            let dst = s.create_log(&name).await.unwrap();
            let mut imp = dst.begin_import(0).unwrap();
            if seed == 4096 {
                imp.reserve(bytes.len() as u64 + 12_345);
            }
            if !receive(&mut imp, &bytes, seed) {
                eprintln!("skipped: imports are buffered here (no O_DIRECT)");
                return;
            }
            assert_eq!(imp.staged_bytes(), bytes.len() as u64);
            install_same(&s, imp, &name, &src).await;
            let seg = dir
                .path()
                .join("logs")
                .join(&name)
                .join(format!("{:020}.seg", 0));
            assert_eq!(std::fs::metadata(&seg).unwrap().len(), bytes.len() as u64);
        }
        s.shutdown().await.unwrap();
    });
}

#[test]
fn threads_receive_whole_segments() {
    receives_whole_segments(ImportIo::Threads);
}

#[test]
fn io_uring_receives_whole_segments() {
    receives_whole_segments(ImportIo::Uring);
}

/// A staging file is allocated ahead only to a size a segment can hold: an announced
/// size past 4 GiB (or past u64) allocates nothing.
#[test]
fn a_size_past_a_segment_allocates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    run(60, async {
        let s = storage(dir.path(), ImportIo::Threads);
        let dst = s.create_log("dst").await.unwrap();
        let mut imp = dst.begin_import(0).unwrap();
        let staging = dir
            .path()
            .join("logs/dst")
            .join(format!("import-{:020}.tmp", 0));
        let len = || std::fs::metadata(&staging).unwrap().len();
        imp.reserve((4 << 30) + (1 << 20));
        imp.reserve(u64::MAX);
        assert_eq!(len(), 0);
        imp.reserve(1 << 20);
        // Direct imports only (the test directory's filesystem may refuse O_DIRECT).
        if imp.receive_buffer().is_some() {
            assert_eq!(len(), 1 << 20);
        }
        drop(imp);
        s.shutdown().await.unwrap();
    });
}

/// A receive cut inside a frame resumes at the last whole frame: within the block being
/// filled, inside a frame that crosses into the next block, or after a receive dropped
/// without a word (whole frames written next continue the checked ones).
#[test]
fn a_cut_receive_resumes() {
    let dir = tempfile::tempdir().unwrap();
    run(120, async {
        let s = storage(dir.path(), ImportIo::Threads);
        let (src, bytes) = source(&s, 40, 300 << 10).await;
        let dst = s.create_log("dst").await.unwrap();
        let mut imp = dst.begin_import(0).unwrap();
        imp.reserve(bytes.len() as u64);
        // Cut 100 bytes into the second frame: inside the first block.
        let first = spool_storage::format::peek_header(&bytes)
            .unwrap()
            .frame_len as usize;
        if !receive(&mut imp, &bytes[..first + 100], 5) {
            eprintln!("skipped: imports are buffered here (no O_DIRECT)");
            return;
        }
        imp.discard_unchecked();
        assert!(!imp.is_broken());
        assert_eq!(imp.staged_bytes(), first as u64);
        assert!(receive(&mut imp, &bytes[first..], 11));
        install_same(&s, imp, "dst", &src).await;

        // A receive dropped midway (no discard): whole frames written next continue the
        // checked ones, the partial frame left behind goes.
        let again = s.create_log("again").await.unwrap();
        let mut imp = again.begin_import(0).unwrap();
        assert!(receive(&mut imp, &bytes[..first + 100], 5));
        imp.write(&bytes[first..]).unwrap();
        install_same(&s, imp, "again", &src).await;

        // Cut inside the frame that crosses the first block's end: the block went only up
        // to that frame's page, so the receive resumes too.
        let other = s.create_log("other").await.unwrap();
        let mut imp = other.begin_import(0).unwrap();
        let block = 4 << 20;
        let mut at = 0usize;
        loop {
            let len = spool_storage::format::peek_header(&bytes[at..])
                .unwrap()
                .frame_len;
            if at + len as usize > block {
                break;
            }
            at += len as usize;
        }
        assert!(receive(&mut imp, &bytes[..block + 10], 3));
        assert_eq!(imp.staged_bytes(), at as u64);
        imp.discard_unchecked();
        assert!(!imp.is_broken());
        assert!(receive(&mut imp, &bytes[at..], 13));
        install_same(&s, imp, "other", &src).await;
        s.shutdown().await.unwrap();
    });
}

/// A corrupt byte fails the read that completes its frame; the frames before it stay
/// staged, and the receive resumes after them.
#[test]
fn a_corrupt_frame_is_refused_and_the_receive_resumes() {
    let dir = tempfile::tempdir().unwrap();
    run(60, async {
        let s = storage(dir.path(), ImportIo::Threads);
        let (src, bytes) = source(&s, 10, 20 << 10).await;
        let second = spool_storage::format::peek_header(&bytes)
            .unwrap()
            .frame_len as usize;
        let mut bad = bytes.clone();
        bad[second + 300] ^= 0x10;
        let dst = s.create_log("dst").await.unwrap();
        let mut imp = dst.begin_import(0).unwrap();
        let Some(buf) = imp.receive_buffer() else {
            eprintln!("skipped: imports are buffered here (no O_DIRECT)");
            return;
        };
        let n = buf.len().min(bad.len());
        buf[..n].copy_from_slice(&bad[..n]);
        assert!(matches!(
            imp.received(n),
            Err(StorageError::FrameRejected { .. })
        ));
        assert_eq!(
            imp.staged_bytes(),
            0,
            "the frames of a refused read are not staged"
        );
        imp.discard_unchecked();
        assert!(receive(&mut imp, &bytes, 9));
        install_same(&s, imp, "dst", &src).await;
        s.shutdown().await.unwrap();
    });
}
