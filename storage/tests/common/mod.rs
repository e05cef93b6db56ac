//! Helpers shared by the storage integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use spool_storage::io::fault::FaultBackend;
use spool_storage::io::std_backend::StdBackend;
use spool_storage::{BackendChoice, Log, LogConfig, Storage, StorageConfig};

/// Open storage with the std backend (pwrite + fdatasync).
pub fn open_std(c: StorageConfig) -> Storage {
    Storage::open_with(c, StdBackend).unwrap()
}

/// Open storage with the fault backend, no fault armed.
pub fn open_fault(c: StorageConfig) -> Storage {
    Storage::open_with(c, FaultBackend::default()).unwrap()
}

/// Every record of log `name`, from its start.
pub async fn read_all(s: &Storage, name: &str) -> Vec<spool_storage::Record> {
    let log = s.log(name).unwrap();
    let r = log.reader();
    let mut out = Vec::new();
    let mut from = r.start_offset();
    loop {
        let batch = r.read(from, 1000, 1 << 20).unwrap();
        if batch.is_empty() {
            break;
        }
        from = batch.last().unwrap().offset + 1;
        out.extend(batch);
    }
    out
}

/// Open storage with the io_uring backend, refusing a fallback.
pub fn open_uring(mut c: StorageConfig) -> Storage {
    c.backend = BackendChoice::Uring;
    c.append_io = spool_storage::AppendIo::Buffered;
    let s = Storage::open(c).unwrap();
    assert_eq!(s.backend_name(), "uring");
    s
}

/// Open storage with the std backend and every group commit direct.
pub fn open_std_direct(mut c: StorageConfig) -> Storage {
    c.backend = BackendChoice::Std;
    c.append_io = spool_storage::AppendIo::Direct;
    let s = Storage::open(c).unwrap();
    assert_eq!(s.backend_name(), "std-direct");
    s
}

/// Open storage with io_uring and every group commit direct, refusing a fallback.
pub fn open_uring_direct(mut c: StorageConfig) -> Storage {
    c.backend = BackendChoice::Uring;
    c.append_io = spool_storage::AppendIo::Direct;
    let s = Storage::open(c).unwrap();
    assert_eq!(s.backend_name(), "uring-direct");
    s
}

/// Copy `src` into `dst` from `from` up to `until` as appended frames (a replica's path).
pub async fn copy_frames(src: &Log, dst: &Log, mut from: u64, until: u64) {
    while from < until {
        let c = src
            .reader()
            .read_frames_until(from, 8 << 10, until)
            .unwrap();
        assert_eq!(c.first_offset, from);
        assert_eq!(dst.append_frames(c.bytes).await.unwrap(), c.next_offset);
        from = c.next_offset;
    }
}

/// Small segments so that tests roll often.
pub fn small_log() -> LogConfig {
    LogConfig {
        segment_bytes: 64 << 10,
        index_interval_bytes: 1024,
        ..LogConfig::default()
    }
}

pub fn config(dir: &Path) -> StorageConfig {
    let mut c = StorageConfig::new(dir);
    c.default_log = small_log();
    c.unsynced_flush_interval = Duration::from_millis(20);
    c
}

/// Deterministic record content for (writer, seq): a tag then a pattern, `len` bytes.
pub fn record(writer: u32, seq: u32, len: usize) -> Vec<u8> {
    let tag = format!("w{writer}s{seq}:");
    let mut v = tag.into_bytes();
    let mut x = writer.wrapping_mul(2654435761) ^ seq;
    while v.len() < len {
        x = x.wrapping_mul(1103515245).wrapping_add(12345);
        v.push((x >> 16) as u8);
    }
    v.truncate(len.max(1));
    v
}

/// Run a future to completion on a fresh multi-thread runtime, bounded in time.
pub fn run<F: std::future::Future>(secs: u64, f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        tokio::time::timeout(Duration::from_secs(secs), f)
            .await
            .expect("test timed out")
    })
}

/// The last segment file (`*.seg`, not a spare) of the log directory `dir`.
pub fn active_segment(dir: &Path) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.ends_with(".seg") && !n.starts_with("spare-")
        })
        .collect();
    segs.sort();
    segs.pop().expect("a log has an active segment")
}

/// Put stray bytes 8 KiB past the last data of segment `path` (the residue of a write
/// torn by a crash, or bit rot); with `keep_mtime` its modification time stays as it was,
/// so the file passes for the one a clean shutdown recorded, else it moves on a second.
/// Returns their position.
pub fn plant_residue(path: &Path, keep_mtime: bool) -> u64 {
    use std::os::unix::fs::FileExt;
    let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
    let bytes = std::fs::read(path).unwrap();
    let last = bytes.iter().rposition(|&b| b != 0).unwrap_or(0) as u64;
    let at = last + (8 << 10);
    assert!(at + 64 <= bytes.len() as u64, "no room past the data");
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.write_all_at(&[0xab; 64], at).unwrap();
    f.sync_all().unwrap();
    // Set either way: within the clock's granularity a write need not move it.
    let mtime = if keep_mtime {
        mtime
    } else {
        mtime + Duration::from_secs(1)
    };
    f.set_modified(mtime).unwrap();
    at
}

/// Whether the 64 bytes at `at` of `path` are still the planted residue.
pub fn residue_left(path: &Path, at: u64) -> bool {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 64];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, at)
        .unwrap();
    assert!(
        buf == [0xab; 64] || buf == [0; 64],
        "neither residue nor zeros"
    );
    buf == [0xab; 64]
}
