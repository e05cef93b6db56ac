//! What every load generator shares (`spool bench` in the server binary, the peers' drivers
//! in `spool-loadgen`): latency histograms and their percentiles, CPU and memory samples,
//! log-like record payloads, and the JSON-or-table output.
//!
//! Both report through these, so figures from either side of a comparison are measured
//! and rounded the same way.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::Serialize;

pub const MIB: f64 = (1u64 << 20) as f64;

/// A multi-threaded tokio runtime for a load generator (`threads`: workers, default one
/// per core).
pub fn runtime(threads: Option<usize>) -> Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.enable_all();
    if let Some(n) = threads {
        b.worker_threads(n.max(1));
    }
    b.build().context("building the tokio runtime")
}

/// Log-like record content (JSON-ish text), deterministic, exactly `size` bytes.
pub fn record_payload(size: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut s = String::with_capacity(size + 256);
    while s.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let _ = write!(
            s,
            r#"{{"ts":"2024-05-{:02}T12:{:02}:{:02}.{:03}Z","level":"{}","svc":"api-{}","msg":"request done","path":"/v1/items/{}","status":{},"ms":{}}}"#,
            1 + x % 28,
            (x >> 8) % 60,
            (x >> 16) % 60,
            (x >> 24) % 1000,
            ["INFO", "WARN", "DEBUG", "ERROR"][(x >> 34) as usize % 4],
            (x >> 36) % 16,
            (x >> 40) % 100_000,
            [200, 201, 404, 500][(x >> 58) as usize % 4],
            (x >> 44) % 900
        );
    }
    let mut v = s.into_bytes();
    v.truncate(size);
    v
}

/// This process's CPU so far and its peak resident set.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rusage {
    pub user_s: f64,
    pub sys_s: f64,
    pub max_rss_kib: u64,
}

pub fn rusage() -> Rusage {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a `struct rusage` into the pointer it is given.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    if rc != 0 {
        return Rusage::default();
    }
    // SAFETY: zero-initialised and filled in by a successful getrusage.
    let ru = unsafe { ru.assume_init() };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Rusage {
        user_s: secs(ru.ru_utime),
        sys_s: secs(ru.ru_stime),
        max_rss_kib: ru.ru_maxrss.max(0) as u64,
    }
}

/// Current resident set size (MiB) from /proc/self/statm; 0 where unavailable.
pub fn current_rss_mib() -> f64 {
    statm_rss_mib("self").unwrap_or(0.0)
}

/// Resident set size (MiB) of another process now; None once it is gone.
pub fn process_rss_mib(pid: u32) -> Option<f64> {
    statm_rss_mib(&pid.to_string())
}

fn statm_rss_mib(proc_dir: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{proc_dir}/statm")).ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    Some((pages * page) as f64 / MIB)
}

/// Bytes another process has had written to storage so far (`write_bytes` of
/// /proc/PID/io: direct writes and page-cache writeback it caused); None once it is gone.
pub fn process_write_bytes(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// CPU seconds (user, system) another process has used so far, from /proc/PID/stat; None
/// once it is gone.
pub fn process_cpu_s(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after "(comm)": state is field 3, utime 14, stime 15 (clock ticks).
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((utime / hz, stime / hz))
}

pub fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Write `value` as pretty JSON to `path` ("-": stdout); nothing without a path.
pub fn write_json<T: Serialize>(path: &Option<PathBuf>, value: &T) -> Result<()> {
    let Some(path) = path else { return Ok(()) };
    let text = serde_json::to_string_pretty(value)?;
    if path.as_os_str() == "-" {
        println!("{text}");
    } else {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Human output goes to stderr when the JSON goes to stdout.
pub fn human(json: &Option<PathBuf>, line: &str) {
    if json.as_ref().is_some_and(|p| p.as_os_str() == "-") {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

/// Latency percentiles in microseconds, as every load generator reports them.
#[derive(Debug, Serialize)]
pub struct LatencyUs {
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// Latencies in nanoseconds, 1 ns to 100 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

impl LatencyUs {
    /// Percentiles of a histogram of nanoseconds, in microseconds.
    pub fn from_hist(h: &Histogram<u64>) -> LatencyUs {
        let us = |q: f64| round1(h.value_at_quantile(q) as f64 / 1e3);
        LatencyUs {
            mean: round1(h.mean() / 1e3),
            p50: us(0.5),
            p99: us(0.99),
            p999: us(0.999),
            max: round1(h.max() as f64 / 1e3),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_deterministic_and_exactly_sized() {
        for size in [0, 1, 100, 1024, 5000] {
            let a = record_payload(size, 7);
            assert_eq!(a.len(), size);
            assert_eq!(a, record_payload(size, 7));
        }
        assert_ne!(record_payload(1024, 1), record_payload(1024, 2));
    }

    #[test]
    fn this_process_is_measured_like_another() {
        let pid = std::process::id();
        assert!(process_cpu_s(pid).is_some());
        assert!(process_rss_mib(pid).unwrap() > 0.0);
        assert!(current_rss_mib() > 0.0);
    }
}
