//! Crash test: a child process appends with many concurrent writers and reports every
//! acknowledged (durable) offset on stdout; the parent SIGKILLs it at a random moment,
//! reopens the log and checks that every reported record is there, intact, and that
//! offsets continue densely. Rounds take the std and io_uring backends, buffered and with
//! direct group commits, in turn and keep appending to the same log, so every round also recovers the previous crash.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{record, run};
use rand::{Rng, SeedableRng};
use spool_storage::io::std_backend::StdBackend;
use spool_storage::{AppendIo, BackendChoice, Durability, Storage, StorageConfig};

const ROUNDS: u32 = 20;
const WRITERS: u32 = 48;

fn child_config(dir: &str, backend: BackendChoice, append_io: AppendIo) -> StorageConfig {
    let mut c = common::config(std::path::Path::new(dir));
    c.backend = backend;
    c.append_io = append_io;
    // Small segments: crashes land around rolls too.
    c.default_log.segment_bytes = 256 << 10;
    c
}

fn record_len(seq: u32) -> usize {
    1 + (seq as usize * 7919) % 3000
}

/// The child's body; runs only when the parent starts this binary with the env set.
#[test]
#[ignore = "child process of crash_rounds"]
fn crash_child() {
    let dir = std::env::var("SPOOL_CRASH_DIR").expect("run by crash_rounds");
    let round: u32 = std::env::var("SPOOL_CRASH_ROUND").unwrap().parse().unwrap();
    let (backend, append_io) = match round % 4 {
        0 => (BackendChoice::Std, AppendIo::Buffered),
        1 => (BackendChoice::Uring, AppendIo::Buffered),
        2 => (BackendChoice::Uring, AppendIo::Direct),
        _ => (BackendChoice::Std, AppendIo::Direct),
    };
    run(3600, async move {
        let s = Storage::open(child_config(&dir, backend, append_io)).unwrap();
        let log = match s.log("crash") {
            Ok(l) => l,
            Err(_) => s.create_log("crash").await.unwrap(),
        };
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            let out = std::io::stdout();
            for line in rx {
                let mut o = out.lock();
                writeln!(o, "{line}").unwrap();
                o.flush().unwrap();
            }
        });
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let log = log.clone();
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    let seq = round * 1_000_000 + i;
                    let rec = record(w, seq, record_len(seq));
                    let durability = Durability::Fsync;
                    let ack = log.append(&[&rec], durability).await.unwrap();
                    tx.send(format!("ack {} {w} {seq}", ack.base_offset))
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[test]
fn crash_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5EED);
    // offset -> (writer, seq) of every acknowledged record, across all rounds.
    let mut acked: HashMap<u64, (u32, u32)> = HashMap::new();
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args(["--ignored", "--exact", "crash_child", "--nocapture"])
            .env("SPOOL_CRASH_DIR", dir.path())
            .env("SPOOL_CRASH_ROUND", round.to_string())
            .env("RUST_BACKTRACE", "1")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("ack ") {
                    let v: Vec<u64> = rest.split(' ').map(|x| x.parse().unwrap()).collect();
                    let _ = tx.send((v[0], v[1] as u32, v[2] as u32));
                }
            }
        });
        // Wait for the child to be writing, then kill it at a random moment.
        let first = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("child acknowledged nothing within 30 s");
        let mut round_acks = vec![first];
        let kill_at = Instant::now() + Duration::from_millis(rng.gen_range(0..400));
        while let Some(left) = kill_at.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(a) => round_acks.push(a),
                Err(_) => break,
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        round_acks.extend(rx.try_iter());
        for (offset, w, seq) in round_acks {
            assert!(
                acked.insert(offset, (w, seq)).is_none(),
                "offset {offset} acknowledged twice"
            );
        }

        // Reopen in this process and check every acknowledged record.
        let (end, n) = run(60, async {
            let s = Storage::open_with(
                child_config(
                    dir.path().to_str().unwrap(),
                    BackendChoice::Std,
                    AppendIo::Buffered,
                ),
                StdBackend,
            )
            .unwrap();
            let log = s.log("crash").unwrap();
            let r = log.reader();
            let end = log.positions().durable;
            let mut n = 0u64;
            let mut from = 0;
            while from < end {
                let batch = r.read(from, 10_000, 64 << 20).unwrap();
                for rec in &batch {
                    assert_eq!(rec.offset, from, "offsets are dense");
                    if let Some(&(w, seq)) = acked.get(&rec.offset) {
                        assert_eq!(
                            rec.value,
                            Bytes::from(record(w, seq, record_len(seq))),
                            "round {round}: offset {} damaged",
                            rec.offset
                        );
                        n += 1;
                    }
                    from += 1;
                }
            }
            s.shutdown().await.unwrap();
            (end, n)
        });
        let max_acked = acked.keys().max().copied().unwrap_or(0);
        assert!(
            end > max_acked,
            "round {round}: log ends at {end}, acked up to {max_acked}"
        );
        assert_eq!(
            n,
            acked.len() as u64,
            "round {round}: every acked record is there"
        );
        eprintln!("round {round}: {} acked so far, log end {end}", acked.len());
    }
    let report = spool_storage::check::check_data_dir(dir.path(), &mut |_| {}).unwrap();
    assert!(report.is_ok(), "{:?}", report.logs[0].problems);
}
