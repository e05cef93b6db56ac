//! Direct group commits (`append_io = "direct"`): the pages a group writes bypass the page
//! cache, and readers, which read through mmap, still get every byte of every record.

mod common;

use std::path::{Path, PathBuf};

use common::{config, open_uring, open_uring_direct, read_all, record, run};
use spool_storage::{Durability, LogConfig, Storage, StorageConfig};

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

/// Of the pages of `path` before `end` (the first page, read at open, left out), how many
/// are in the page cache.
fn resident(path: &Path, end: u64) -> (usize, usize) {
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: a read-only mapping only handed to mincore, never read.
    let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    let pages = (end as usize) / 4096;
    let mut vec = vec![0u8; pages];
    // SAFETY: `map` spans the file, at least `pages` pages; `vec` has one byte per page.
    let rc = unsafe { libc::mincore(map.as_ptr() as *mut _, pages * 4096, vec.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    let inside = vec[1..].iter().filter(|v| **v & 1 == 1).count();
    (inside, pages - 1)
}

/// Appends records one synced group at a time; returns the cached share of the written
/// pages, after checking that a reader gets every record back whole.
fn cached_share(open: fn(StorageConfig) -> Storage) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.default_log = LogConfig {
        segment_bytes: 8 << 20,
        initial_segment_bytes: 8 << 20,
        ..LogConfig::default()
    };
    let s = open(c);
    let share = run(60, async {
        let log = s.create_log("d").await.unwrap();
        for i in 0..RECORDS {
            log.append(&[record(0, i, 1000)], Durability::Fsync)
                .await
                .unwrap();
        }
        let seg = find_segment(dir.path()).expect("the first segment");
        let end = log.positions().durable;
        assert_eq!(end, RECORDS as u64);
        // Bytes written: at least a kilobyte per record.
        let (cached, pages) = resident(&seg, RECORDS as u64 * 1000);
        let got = read_all(&s, "d").await;
        assert_eq!(got.len(), RECORDS as usize);
        for (i, r) in got.iter().enumerate() {
            assert_eq!(r.value.as_ref(), record(0, i as u32, 1000), "record {i}");
        }
        cached as f64 / pages as f64
    });
    s.shutdown_blocking();
    share
}

#[test]
fn direct_group_commits_bypass_the_page_cache_and_read_back_whole() {
    let buffered = cached_share(open_uring);
    let direct = cached_share(open_uring_direct);
    assert!(
        buffered > 0.9,
        "buffered writes leave their pages cached: {buffered}"
    );
    assert!(
        direct < 0.1,
        "direct writes leave their pages uncached: {direct}"
    );
}
