//! End-to-end tests of `spool serve` as a real process on a loopback port, driven through
//! the CLI and the Rust client.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::{run, stdout, Server};
use futures::StreamExt;
use spool::client::{AckMode, Client, ClientError};
use tonic::Code;

fn code(e: impl std::borrow::Borrow<ClientError>) -> Code {
    let e = e.borrow();
    e.code().unwrap_or_else(|| panic!("not an RPC error: {e}"))
}

/// Piped records to a log that does not exist: the error says so (the server's status),
/// however many batches the CLI had sent before the stream ended.
#[test]
fn cli_append_from_stdin_to_a_missing_log_names_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let lines: String = (0..20_000).map(|i| format!("{i}\n")).collect();
    for _ in 0..5 {
        let out = s.cli_stdin(&["append", "nolog", "--batch", "1"], &lines);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("NotFound") && err.contains("spool logs create nolog"),
            "{err}"
        );
    }
    // The same through the client: every pending ack and every send after the server
    // ended the stream report its status, not a bare "stream closed".
    run(30, async {
        let c = Client::connect(&s.addr).await.unwrap();
        let mut ap = match c.appender("nolog", AckMode::Async).await {
            Ok(ap) => ap,
            Err(e) => return assert_eq!(code(e), Code::NotFound),
        };
        let mut pending = Vec::new();
        let refused = loop {
            match ap.send(vec![Bytes::from_static(b"x")]).await {
                Ok(rx) => pending.push(rx),
                Err(e) => break e,
            }
            tokio::task::yield_now().await;
        };
        assert_eq!(code(&refused), Code::NotFound, "{refused}");
        for rx in pending {
            assert_eq!(code(rx.await.unwrap().unwrap_err()), Code::NotFound);
        }
    });
    s.stop();
}

#[test]
fn cli_round_trip_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    assert!(stdout(&s.cli(&["logs", "create", "events"])).contains("created log events"));
    let out = stdout(&s.cli(&["append", "events", "hello", "world"]));
    assert!(out.contains("offsets 0..2"), "{out}");
    let lines: String = (0..500).map(|i| format!("line {i}\n")).collect();
    let out = stdout(&s.cli_stdin(&["append", "events", "--batch", "64"], &lines));
    assert!(
        out.contains("appended 500 record(s) at offsets 2..502"),
        "{out}"
    );
    let text = stdout(&s.cli(&["read", "events", "--from", "0", "--count", "3"]));
    assert_eq!(text, "0\thello\n1\tworld\n2\tline 0\n");
    let json = stdout(&s.cli(&["read", "events", "--from", "501", "--format", "json"]));
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["offset"], 501);
    assert_eq!(v["value"], "line 499");
    let list = stdout(&s.cli(&["logs", "list", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(v[0]["end_offset"], 502);
    let status = stdout(&s.cli(&["status", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["role"], "primary");
    assert_eq!(v["logs"][0]["end_offset"], 502);

    // A clean stop (SIGTERM) exits 0; everything is back after a restart.
    let s = s.restart();
    let all = stdout(&s.cli(&["read", "events"]));
    assert_eq!(all.lines().count(), 502);
    assert!(all.ends_with("501\tline 499\n"));
    run(30, async {
        let c = Client::connect(&s.addr).await.unwrap();
        let info = c.describe_log("events").await.unwrap();
        assert_eq!((info.start_offset, info.end_offset), (0, 502));
        let r = c.read("events", 2, 10).await.unwrap();
        assert_eq!(r.records.len(), 10);
        assert_eq!(r.records[0].value, Bytes::from("line 0"));
        assert_eq!(r.next_offset, 12);
        c.delete_log("events").await.unwrap();
        assert!(c.list_logs().await.unwrap().is_empty());
    });
    s.stop();
}

/// `spool append` with a producer is safe to run again: the second run reports the first
/// run's offsets and writes nothing; a sequence gap is refused naming the expected one.
#[test]
fn cli_idempotent_append_is_safe_to_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    assert!(s.cli(&["logs", "create", "idem"]).status.success());
    let args = |seq| {
        [
            "append",
            "idem",
            "a",
            "b",
            "--producer-id",
            "42",
            "--sequence",
            seq,
        ]
    };
    let first = stdout(&s.cli(&args("0")));
    assert!(
        first.starts_with("appended 2 record(s) at offsets 0..2"),
        "{first}"
    );
    let again = stdout(&s.cli(&args("0")));
    assert!(again.starts_with("already appended"), "{again}");
    assert!(again.contains("offsets 0..2"), "{again}");
    let gap = s.cli(&args("5"));
    let err = String::from_utf8_lossy(&gap.stderr);
    assert!(!gap.status.success() && err.contains("expected 1"), "{err}");
    assert_eq!(stdout(&s.cli(&["read", "idem"])), "0\ta\n1\tb\n");
    s.stop();
}

#[test]
fn error_codes_fit_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[storage]\nrecord_bytes_max = 1000\n[replication]\nack_timeout_ms = 300\n";
    let s = Server::start_toml(&dir.path().join("data"), config, &[]);
    run(30, async {
        let c = Client::connect(&s.addr).await.unwrap();
        c.create_log("a", None).await.unwrap();
        let e = c.create_log("a", None).await.unwrap_err();
        assert_eq!(code(e), Code::AlreadyExists);
        let e = c.create_log("no/slash", None).await.unwrap_err();
        assert_eq!(code(e), Code::InvalidArgument);
        let e = c.read("missing", 0, 1).await.unwrap_err();
        assert_eq!(code(e), Code::NotFound);
        assert!(e_msg(c.describe_log("missing").await.unwrap_err()).contains("spool logs create"));
        let e = c
            .append("a", vec![Bytes::from(vec![0u8; 1001])], AckMode::Async)
            .await
            .unwrap_err();
        assert_eq!(code(e), Code::InvalidArgument);
        let e = c.append("a", vec![], AckMode::Async).await.unwrap_err();
        assert_eq!(code(e), Code::InvalidArgument);
        // Semi-sync with no replica attached cannot be met: refused before it is written.
        let e = c
            .append("a", vec![Bytes::from("x")], AckMode::SemiSync)
            .await
            .unwrap_err();
        assert_eq!(code(&e), Code::FailedPrecondition);
        assert!(e.to_string().contains("needs 1 replica"), "{e}");
        c.append("a", vec![Bytes::from("x")], AckMode::Async)
            .await
            .unwrap();
        let e = c.read("a", 5, 1).await.unwrap_err();
        assert_eq!(code(&e), Code::OutOfRange);
        assert!(e_msg(e).contains("offset 5"));
        // A read token the node has not reached: DEADLINE_EXCEEDED, with the position.
        let mut req = spool_proto::v1::ReadRequest {
            log: "a".into(),
            min_offset: 10,
            ..Default::default()
        };
        let mut rq = tonic::Request::new(req.clone());
        rq.set_timeout(Duration::from_secs(1));
        let mut raw = spool_proto::v1::log_client::LogClient::connect(format!("http://{}", s.addr))
            .await
            .unwrap();
        let e = raw.read(rq).await.unwrap_err();
        assert_eq!(e.code(), Code::DeadlineExceeded);
        req.min_offset = 1;
        assert_eq!(c.read_with(req).await.unwrap().records.len(), 1);
        // UNAVAILABLE while shutting down: an open subscription is told so.
        let mut sub = Box::pin(c.subscribe("a", None).await.unwrap());
        common::signal(&s.child, libc::SIGTERM);
        let end = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap();
        match end {
            Some(Err(e)) => assert_eq!(code(e), Code::Unavailable),
            other => panic!("expected UNAVAILABLE, got {other:?}"),
        }
    });
    let mut s = s;
    assert!(common::wait_timeout(&mut s.child, Duration::from_secs(30)).success());
}

fn e_msg(e: ClientError) -> String {
    e.to_string()
}

#[test]
fn disk_full_is_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_tmpfs) = common::Tmpfs::mount(dir.path(), "4m") else {
        return;
    };
    let s = Server::start(&dir.path().join("data"), &[]);
    run(60, async {
        let c = Client::connect(&s.addr).await.unwrap();
        let cfg = spool_proto::v1::LogConfig {
            segment_bytes: 256 << 10,
            ..Default::default()
        };
        c.create_log("full", Some(cfg)).await.unwrap();
        let filler = dir.path().join("filler");
        std::fs::write(&filler, vec![1u8; 2 << 20]).unwrap();
        let rec = Bytes::from(vec![7u8; 4000]);
        let mut acked = 0u64;
        let err = loop {
            match c.append("full", vec![rec.clone()], AckMode::Async).await {
                Ok(r) => {
                    assert_eq!(r.first_offset, acked);
                    acked += 1;
                }
                Err(e) => break e,
            }
            assert!(acked < 5000, "never ran out of space");
        };
        assert_eq!(code(err), Code::ResourceExhausted);
        let r = c.read("full", 0, 10_000).await.unwrap();
        assert_eq!(r.end_offset, acked);
        std::fs::remove_file(&filler).unwrap();
        let r = c
            .append("full", vec![rec.clone()], AckMode::Async)
            .await
            .unwrap();
        assert_eq!(r.first_offset, acked);
    });
    s.stop();
}

#[test]
fn sigkill_during_pipelined_appends_loses_no_ack() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let acked = run(60, async {
        let c = Client::connect(&s.addr).await.unwrap();
        c.create_log("p", None).await.unwrap();
        let mut app = c.appender("p", AckMode::Async).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let pump = tokio::spawn(async move {
            for i in 0u64.. {
                let recs: Vec<Bytes> = (0..8)
                    .map(|j| Bytes::from(format!("r{i}-{j}-{}", "x".repeat(200))))
                    .collect();
                let Ok(waiter) = app.send(recs).await else {
                    break;
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    if let Ok(Ok(r)) = waiter.await {
                        let _ = tx.send((i, r.first_offset));
                    }
                });
            }
        });
        let mut acked = Vec::new();
        while acked.len() < 300 {
            acked.push(rx.recv().await.unwrap());
        }
        // Kill in the middle of the stream, then take every ack that made it out.
        common::signal(&s.child, libc::SIGKILL);
        let _ = tokio::time::timeout(Duration::from_secs(5), pump).await;
        while let Ok(Some(a)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            acked.push(a);
        }
        acked
    });
    s.kill9();
    let s = Server::start(dir.path(), &[]);
    run(60, async {
        let c = Client::connect(&s.addr).await.unwrap();
        for (i, first) in &acked {
            let r = c.read("p", *first, 8).await.unwrap();
            assert_eq!(r.records.len(), 8);
            for (j, rec) in r.records.iter().enumerate() {
                let want = format!("r{i}-{j}-{}", "x".repeat(200));
                assert_eq!(rec.value, Bytes::from(want), "offset {}", rec.offset);
            }
        }
        eprintln!("{} acknowledged batches all present", acked.len());
    });
    s.stop();
}

#[test]
fn subscribe_delivers_new_records_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    run(60, async {
        let c = Client::connect(&s.addr).await.unwrap();
        c.create_log("t", None).await.unwrap();
        c.append("t", vec![Bytes::from("old")], AckMode::Async)
            .await
            .unwrap();
        let from_start = c.subscribe("t", Some(0)).await.unwrap();
        let from_end = c.subscribe("t", None).await.unwrap();
        let writer = c.clone();
        let w = tokio::spawn(async move {
            for i in 0..200 {
                writer
                    .append("t", vec![Bytes::from(format!("new {i}"))], AckMode::Async)
                    .await
                    .unwrap();
            }
        });
        let a: Vec<_> = from_start.take(201).collect().await;
        let b: Vec<_> = from_end.take(200).collect().await;
        w.await.unwrap();
        assert_eq!(a[0].as_ref().unwrap().value, Bytes::from("old"));
        for (i, r) in b.iter().enumerate() {
            let r = r.as_ref().unwrap();
            assert_eq!(r.offset, i as u64 + 1);
            assert_eq!(r.value, Bytes::from(format!("new {i}")));
        }
        assert_eq!(a[200].as_ref().unwrap().offset, 200);
        let e = c.subscribe("t", Some(999)).await.err().unwrap();
        assert_eq!(code(e), Code::OutOfRange);
    });
    s.stop();
}

#[test]
fn check_finds_planted_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    stdout(&s.cli(&["logs", "create", "c"]));
    let lines: String = (0..2000).map(|i| format!("record number {i}\n")).collect();
    stdout(&s.cli_stdin(&["append", "c"], &lines));
    s.stop();
    let out = stdout(&common::check(dir.path(), &[]));
    assert!(out.starts_with("ok"), "{out}");
    let seg = dir.path().join("logs/c/00000000000000000000.seg");
    let mut b = std::fs::read(&seg).unwrap();
    b[10_000] ^= 0x40;
    std::fs::write(&seg, b).unwrap();
    let bad = common::check(dir.path(), &[]);
    assert!(!bad.status.success());
    let out = String::from_utf8_lossy(&bad.stdout);
    assert!(
        out.contains("CORRUPT") && out.contains("00000000000000000000.seg"),
        "{out}"
    );
}

#[test]
fn python_grpc_client() {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyvenv/bin/python");
    if !python.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must create target/pyvenv with grpcio (see .ci/run)"
        );
        eprintln!("SKIPPED: no target/pyvenv (python3 -m venv target/pyvenv && target/pyvenv/bin/pip install grpcio grpcio-tools)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/client_test.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(&s.addr)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("proto/proto"))
        .arg(dir.path().join("gen"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("python client ok"));
    s.stop();
}

/// The README's Python retry through a failover runs as written: from a node that is
/// down, to a replica, to the primary the replica names, where the append is acked.
#[test]
fn the_readmes_python_failover_retry_runs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("target/pyvenv/bin/python");
    if !python.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must create target/pyvenv with grpcio (see scripts/test.sh)"
        );
        eprintln!("SKIPPED: no target/pyvenv");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = Server::start(&dir.path().join("p"), &[]);
    let r = Server::start(&dir.path().join("r"), &common::replica_of(&p.addr, &[]));
    run(30, async {
        common::create_log(&p.addr, "orders").await;
        common::wait_connected(&p.addr, 1).await;
    });
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let start = readme
        .find("# Retry through a failover")
        .expect("the README's snippet");
    let len = readme[start..].find("```").unwrap();
    let gen = dir.path().join("gen");
    std::fs::create_dir_all(&gen).unwrap();
    std::fs::write(gen.join("retry.py"), &readme[start..start + len]).unwrap();
    common::package::run_ok(
        Command::new(&python)
            .args(["-m", "grpc_tools.protoc", "-Iproto/proto"])
            .arg(format!("--python_out={}", gen.display()))
            .arg(format!("--grpc_python_out={}", gen.display()))
            .arg("proto/proto/spool/v1/spool.proto")
            .current_dir(root),
    );
    let down = format!("127.0.0.1:{}", common::free_port());
    let out = Command::new(&python)
        .arg("retry.py")
        .current_dir(&gen)
        .env("SPOOL_ADDR", format!("{down},{}", r.addr))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("appended at 0 in epoch 1"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    r.stop();
    p.stop();
}

/// A SIGTERM sent the moment the address is printed (as a script that starts and stops a
/// node does) is a clean stop: exit 0 and the shutdown record written. Before the signal
/// handlers were installed ahead of the address, it killed the process outright.
#[test]
fn sigterm_right_after_start_is_a_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    assert!(s.cli(&["logs", "create", "t"]).status.success());
    assert!(s.cli(&["append", "t", "a"]).status.success());
    s.stop();
    let record = dir.path().join("logs/t/sealed-at-shutdown.tmp");
    for round in 0..5 {
        // `start` returns as soon as it has read the "listening" line; `stop` signals then.
        Server::start(dir.path(), &[]).stop();
        assert!(record.exists(), "round {round}: no clean stop");
    }
}

/// This process's established TCP connections to `port` (its client side).
fn connections_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/self/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let remote_port = f[2].rsplit(':').next().unwrap();
            u16::from_str_radix(remote_port, 16).unwrap() == port && f[3] == "01"
        })
        .count()
}

/// A client's pool: concurrent unary calls are spread over the connections it was given,
/// and a one-connection client keeps to one.
#[test]
fn client_pool_spreads_calls_over_its_connections() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let port: u16 = s.addr.rsplit(':').next().unwrap().parse().unwrap();
    run(60, async {
        for (n, log) in [(3usize, "pool3"), (1, "pool1")] {
            let options = spool::client::ClientOptions {
                connections: Some(n),
                ..Default::default()
            };
            let c = Client::connect_with(&s.addr, options).await.unwrap();
            c.create_log(log, None).await.unwrap();
            let calls = (0..32).map(|i| {
                let c = c.clone();
                async move {
                    let v = Bytes::from(format!("r{i}"));
                    c.append(log, vec![v], AckMode::Async).await.unwrap()
                }
            });
            let acks = futures::future::join_all(calls).await;
            let mut offsets: Vec<u64> = acks.iter().map(|a| a.first_offset).collect();
            offsets.sort_unstable();
            assert_eq!(
                offsets,
                (0..32).collect::<Vec<u64>>(),
                "every call appended once"
            );
            assert_eq!(connections_to(port), n, "connections of a pool of {n}");
            drop(c);
            common::wait_until(
                "the pool's connections closed",
                Duration::from_secs(10),
                || {
                    let open = connections_to(port);
                    async move { (open == 0).then_some(()) }
                },
            )
            .await;
        }
    });
}
