//! Micro-benchmarks of the hot CPU paths: batch frame encoding, the group buffer fill, CRC
//! check, decoding, zstd.
//!
//! `cargo bench --bench format -- --quick` for a fast pass.

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use spool_storage::format::{self, FrameBuilder, RECORD_PREFIX_BYTES};

const TS_US: u64 = 1_700_000_000_000_000;

/// Deterministic pseudo-random bytes (incompressible).
fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Log-like JSON lines, one per record, about `total` bytes in all.
fn json_records(total: usize) -> Vec<Vec<u8>> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut out = Vec::new();
    let mut bytes = 0;
    while bytes < total {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut s = String::new();
        let _ = write!(
            s,
            r#"{{"ts":"2024-05-{:02}T12:{:02}:{:02}.{:06}Z","level":"{}","service":"api-gateway-{}","host":"node-{:03}","msg":"{}","method":"{}","path":"/v1/accounts/{}/items/{}","status":{},"latency_ms":{}.{:03},"bytes":{},"trace_id":"{:016x}"}}"#,
            1 + x % 28,
            (x >> 5) % 60,
            (x >> 11) % 60,
            (x >> 17) % 1_000_000,
            ["INFO", "INFO", "INFO", "WARN", "DEBUG", "ERROR"][(x >> 37) as usize % 6],
            (x >> 40) % 4,
            (x >> 42) % 64,
            [
                "request completed",
                "cache miss",
                "upstream timeout, retrying",
                "request completed"
            ][(x >> 48) as usize % 4],
            ["GET", "GET", "POST", "PUT", "DELETE"][(x >> 50) as usize % 5],
            (x >> 20) % 100_000,
            (x >> 30) % 10_000,
            [200, 200, 201, 204, 404, 500][(x >> 53) as usize % 6],
            (x >> 56) % 250,
            (x >> 3) % 1000,
            (x >> 24) % 65_536,
            x
        );
        bytes += s.len() + RECORD_PREFIX_BYTES;
        out.push(s.into_bytes());
    }
    out
}

fn build(records: &[Vec<u8>], zstd_level: Option<i32>) -> Vec<u8> {
    let payload = records.iter().map(|r| r.len() + RECORD_PREFIX_BYTES).sum();
    let mut b = FrameBuilder::with_capacity(payload);
    for r in records {
        b.push(r);
    }
    let mut f = b.finish(zstd_level, 0);
    format::stamp_frame(&mut f, 1_000, 3, TS_US);
    f
}

/// Records of `record_bytes` filling a frame of about `frame_bytes`.
fn frame_of(frame_bytes: usize, record_bytes: usize) -> Vec<u8> {
    let count = (frame_bytes - format::HEADER_BYTES) / (record_bytes + RECORD_PREFIX_BYTES);
    let records: Vec<Vec<u8>> = (0..count)
        .map(|i| random_bytes(record_bytes, i as u64 + 1))
        .collect();
    build(&records, None)
}

fn label(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes % (1 << 20) == 0 {
        format!("{}MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes % (1 << 10) == 0 {
        format!("{}KiB", bytes >> 10)
    } else {
        format!("{bytes}B")
    }
}

/// FrameBuilder push + finish, then stamp_frame (which seals the CRC).
fn bench_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    for (count, size) in [(1usize, 100usize), (1, 1024), (64, 1024)] {
        let record = random_bytes(size, 7);
        g.throughput(Throughput::Bytes((count * size) as u64));
        g.bench_with_input(
            BenchmarkId::new("frame", format!("{count}x{}", label(size))),
            &record,
            |b, record| {
                b.iter(|| {
                    let mut fb = FrameBuilder::with_capacity(count * (size + RECORD_PREFIX_BYTES));
                    for _ in 0..count {
                        fb.push(black_box(record));
                    }
                    let mut f = fb.finish(None, 0);
                    format::stamp_frame(&mut f, black_box(42), 1, TS_US);
                    f
                })
            },
        );
    }
    g.finish();
}

/// The storage thread's part of a group commit, without the IO: carry the page head, push
/// 64 one-record frames with their waiters, take and give back the buffer, answer them.
fn bench_group_fill(c: &mut Criterion) {
    let mut g = c.benchmark_group("group_fill");
    let segment = random_bytes(8192, 3);
    for (count, size) in [(64usize, 100usize), (64, 1024)] {
        let frames: Vec<Vec<u8>> = (0..count)
            .map(|i| build(&[random_bytes(size, i as u64 + 1)], None))
            .collect();
        let mut fill = spool_storage::bench_support::GroupFill::default();
        g.throughput(Throughput::Elements(count as u64));
        g.bench_with_input(
            BenchmarkId::from_parameter(format!("{count}x{}", label(size))),
            &frames,
            |b, frames| b.iter(|| fill.commit(black_box(&segment), 6000, black_box(frames))),
        );
    }
    g.finish();
}

/// Header bounds + CRC over the whole frame.
fn bench_check(c: &mut Criterion) {
    let mut g = c.benchmark_group("check_frame");
    for frame_bytes in [64usize << 10, 1 << 20] {
        let frame = frame_of(frame_bytes, 1024);
        g.throughput(Throughput::Bytes(frame.len() as u64));
        g.bench_with_input(
            BenchmarkId::from_parameter(label(frame_bytes)),
            &frame,
            |b, frame| b.iter(|| format::check_frame(black_box(frame)).expect("valid frame")),
        );
    }
    g.finish();
}

/// Split a checked, uncompressed frame into records (copies the payload once).
fn bench_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_records");
    for (count, size) in [(64usize, 1024usize), (1024, 100)] {
        let records: Vec<Vec<u8>> = (0..count)
            .map(|i| random_bytes(size, i as u64 + 1))
            .collect();
        let frame = build(&records, None);
        let header = format::check_frame(&frame).expect("valid frame");
        g.throughput(Throughput::Bytes(u64::from(header.raw_payload_len)));
        g.bench_with_input(
            BenchmarkId::from_parameter(format!("{count}x{}", label(size))),
            &frame,
            |b, frame| {
                b.iter(|| format::decode_records(black_box(frame), &header).expect("decodes"))
            },
        );
    }
    g.finish();
}

/// zstd through the frame API on log-like JSON: FrameBuilder::finish(Some(level)) to
/// compress, decode_records to decompress. Throughput is counted in raw payload bytes.
fn bench_zstd(c: &mut Criterion) {
    const PAYLOAD: usize = 256 << 10;
    let records = json_records(PAYLOAD);
    let raw: usize = records.iter().map(|r| r.len() + RECORD_PREFIX_BYTES).sum();
    for level in [1, 3] {
        let f = build(&records, Some(level));
        let h = format::check_frame(&f).expect("valid frame");
        assert!(h.is_compressed());
        eprintln!(
            "zstd level {level}: {} records, {raw} B raw -> {} B frame, ratio {:.2}",
            records.len(),
            f.len(),
            raw as f64 / (f.len() - format::HEADER_BYTES) as f64
        );
    }

    let mut g = c.benchmark_group("zstd_compress");
    g.throughput(Throughput::Bytes(raw as u64));
    for level in [1, 3] {
        g.bench_with_input(
            BenchmarkId::new(format!("level{level}"), label(PAYLOAD)),
            &level,
            |b, &level| {
                b.iter_batched(
                    || {
                        let mut fb = FrameBuilder::with_capacity(raw);
                        for r in &records {
                            fb.push(r);
                        }
                        fb
                    },
                    |fb| fb.finish(Some(level), 0),
                    BatchSize::LargeInput,
                )
            },
        );
    }
    g.finish();

    let mut g = c.benchmark_group("zstd_decompress");
    g.throughput(Throughput::Bytes(raw as u64));
    for level in [1, 3] {
        let frame = build(&records, Some(level));
        let header = format::check_frame(&frame).expect("valid frame");
        g.bench_with_input(
            BenchmarkId::new(format!("level{level}"), label(PAYLOAD)),
            &frame,
            |b, frame| {
                b.iter(|| format::decode_records(black_box(frame), &header).expect("decodes"))
            },
        );
    }
    g.finish();
}

criterion_group!(
    benches,
    bench_encode,
    bench_group_fill,
    bench_check,
    bench_decode,
    bench_zstd
);
criterion_main!(benches);
