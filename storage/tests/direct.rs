//! Direct group commits (`append_io`): the pages a direct group write covers bypass the
//! page cache, and readers, which read through mmap, still get every byte of every record.
//! `replicated` sends only frames received from an upstream direct.

mod common;

use std::path::{Path, PathBuf};

use common::{config, copy_frames, open_std, read_all, record, run};
use spool_storage::{AppendIo, BackendChoice, Durability, Log, LogConfig, Storage};

const RECORDS: u32 = 300;

fn find_segment(dir: &Path) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()? {
        let p = e.ok()?.path();
        if p.is_dir() {
            if let Some(found) = find_segment(&p) {
                return Some(found);
            }
        } else if p.file_name()? == "00000000000000000000.seg" {
            return Some(p);
        }
    }
    None
}

/// Of the pages of `path` before `end` (the first page, read at open, left out), the share
/// in the page cache.
fn cached_share(path: &Path, end: u64) -> f64 {
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: a read-only mapping only handed to mincore, never read.
    let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    let pages = (end as usize) / 4096;
    let mut vec = vec![0u8; pages];
    // SAFETY: `map` spans the file, at least `pages` pages; `vec` has one byte per page.
    let rc = unsafe { libc::mincore(map.as_ptr() as *mut _, pages * 4096, vec.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    let cached = vec[1..].iter().filter(|v| **v & 1 == 1).count();
    cached as f64 / (pages - 1) as f64
}

fn one_segment() -> LogConfig {
    LogConfig {
        segment_bytes: 8 << 20,
        initial_segment_bytes: 8 << 20,
        ..LogConfig::default()
    }
}

/// A log `d` of RECORDS records, appended one synced group at a time (`replicated`: as
/// frames copied from another node's log) on `backend` with `append_io`; returns the
/// cached share of its written pages, after checking that a reader gets every record back.
fn cached_after_writes(backend: BackendChoice, append_io: AppendIo, replicated: bool) -> f64 {
    let (dir, src_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut c = config(dir.path());
    (c.default_log, c.backend, c.append_io) = (one_segment(), backend, append_io);
    let s = Storage::open(c).unwrap();
    let mut src_config = config(src_dir.path());
    src_config.default_log = one_segment();
    let src = open_std(src_config);
    let share = run(60, async {
        let (log, from) = (s.create_log("d").await.unwrap(), src.create_log("d").await);
        let local = if replicated {
            from.as_ref().unwrap()
        } else {
            &log
        };
        for i in 0..RECORDS {
            let ack = append(local, i).await;
            if replicated {
                copy_frames(local, &log, ack, ack + 1).await;
            }
        }
        assert_eq!(log.positions().durable, RECORDS as u64);
        let seg = find_segment(dir.path()).expect("the first segment");
        // Bytes written: at least a kilobyte per record.
        let share = cached_share(&seg, RECORDS as u64 * 1000);
        let got = read_all(&s, "d").await;
        assert_eq!(got.len(), RECORDS as usize);
        for (i, r) in got.iter().enumerate() {
            assert_eq!(r.value.as_ref(), record(0, i as u32, 1000), "record {i}");
        }
        share
    });
    s.shutdown_blocking();
    src.shutdown_blocking();
    share
}

async fn append(log: &Log, i: u32) -> u64 {
    let rec = record(0, i, 1000);
    let ack = log.append(&[rec], Durability::Fsync).await;
    ack.unwrap().base_offset
}

#[test]
fn direct_group_commits_bypass_the_page_cache_and_read_back_whole() {
    for backend in [BackendChoice::Std, BackendChoice::Uring] {
        let buffered = cached_after_writes(backend, AppendIo::Buffered, false);
        let direct = cached_after_writes(backend, AppendIo::Direct, false);
        assert!(
            buffered > 0.9,
            "{backend}: buffered writes stay cached: {buffered}"
        );
        assert!(
            direct < 0.1,
            "{backend}: direct writes leave no cache: {direct}"
        );
    }
}

#[test]
fn replicated_mode_sends_received_frames_direct_and_local_appends_buffered() {
    for backend in [BackendChoice::Std, BackendChoice::Uring] {
        let local = cached_after_writes(backend, AppendIo::Replicated, false);
        let received = cached_after_writes(backend, AppendIo::Replicated, true);
        assert!(local > 0.9, "{backend}: local appends stay cached: {local}");
        assert!(
            received < 0.1,
            "{backend}: received frames leave no cache: {received}"
        );
    }
}
