//! A node under many logs, racing clients, odd requests and hostile connections, with real
//! processes: more logs than a tight open-files limit allows descriptors for, racing
//! creates and deletes of one name, new logs that take little disk, codes that say what
//! the client did, and clients served while thousands of connections stall half-open,
//! peers over the connection caps, and idle connections closed but not idle streams.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{run, Server};
use spool::client::{AckMode, Client, ClientError};
use spool_proto::v1 as pb;
use tonic::Code;

fn code(e: &ClientError) -> Option<Code> {
    e.code()
}

/// Bytes the files under `dir` take on the disk (allocated blocks, not lengths).
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            disk_usage(&e.path())
        } else {
            m.blocks() * 512
        };
    }
    total
}

/// More logs than the open-files limit has descriptors for (two per open log): every one
/// is created, written, and comes back after a restart under the same limit.
#[test]
fn more_logs_than_descriptors_open_and_restart() {
    const LOGS: usize = 600;
    const NOFILE: u64 = 512;
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("n");
    let n = Server::start_limited(&dir, &[], NOFILE);
    run(300, async {
        let c = Client::connect(&n.addr).await.unwrap();
        for i in 0..LOGS {
            let name = format!("log-{i:04}");
            c.create_log(&name, None).await.unwrap();
            c.append(&name, vec![Bytes::from(name.clone())], AckMode::Async)
                .await
                .unwrap();
        }
    });
    n.stop();
    let n = Server::start_limited(&dir, &[], NOFILE);
    run(300, async {
        let c = Client::connect(&n.addr).await.unwrap();
        assert_eq!(c.list_logs().await.unwrap().len(), LOGS);
        for i in (0..LOGS).step_by(7) {
            let name = format!("log-{i:04}");
            let r = c.read(&name, 0, 10).await.unwrap();
            assert_eq!(r.records.len(), 1, "{name}");
            assert_eq!(r.records[0].value, Bytes::from(name.clone()));
            // Written again after the restart: the log's files open on demand.
            let a = c
                .append(&name, vec![Bytes::from("again")], AckMode::Async)
                .await
                .unwrap();
            assert_eq!(a.first_offset, 1);
        }
    });
    n.stop();
    // Far too few descriptors to open the directory at all: the error says why and how
    // to fix it.
    let mut cmd = std::process::Command::new(common::spool_bin());
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .env("RUST_LOG", "error");
    common::limit_open_files(&mut cmd, 12);
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("open-files limit"), "{err}");
}

/// Of racing creates of one name exactly one succeeds and the others are told it exists;
/// create/append/delete churn on one name gets only OK, ALREADY_EXISTS or NOT_FOUND, no
/// error names a server path, and the catalog is whole after a restart.
#[test]
fn racing_creates_and_churn_are_clean() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("n");
    let n = Server::start(&dir, &[]);
    let addr = n.addr.clone();
    let data = dir.canonicalize().unwrap().display().to_string();
    run(120, async {
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let addr = addr.clone();
            tasks.push(tokio::spawn(async move {
                let c = Client::connect(&addr).await.unwrap();
                c.create_log("race", None)
                    .await
                    .map(|_| ())
                    .map_err(|e| code(&e))
            }));
        }
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(()) => ok += 1,
                Err(c) => assert_eq!(c, Some(Code::AlreadyExists)),
            }
        }
        assert_eq!(ok, 1, "exactly one create wins");

        let until = Instant::now() + Duration::from_secs(4);
        let mut tasks = Vec::new();
        for t in 0..10 {
            let (addr, data) = (addr.clone(), data.clone());
            tasks.push(tokio::spawn(async move {
                let c = Client::connect(&addr).await.unwrap();
                let mut n = 0u64;
                while Instant::now() < until {
                    n += 1;
                    let r = match (n + t) % 3 {
                        0 => c.create_log("churn", None).await.map(|_| ()),
                        1 => c
                            .append("churn", vec![Bytes::from("x")], AckMode::Async)
                            .await
                            .map(|_| ()),
                        _ => c.delete_log("churn").await,
                    };
                    if let Err(e) = r {
                        let fine = matches!(code(&e), Some(Code::AlreadyExists | Code::NotFound));
                        assert!(fine, "{e}");
                        assert!(!e.to_string().contains(&data), "{e}");
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    n.stop();
    let n = Server::start(&dir, &[]);
    run(30, async {
        let c = Client::connect(&n.addr).await.unwrap();
        for l in c.list_logs().await.unwrap() {
            c.read(&l.name, l.start_offset, 10).await.unwrap();
        }
    });
    n.stop();
    let report = common::digests(&dir);
    assert!(report.iter().any(|(name, ..)| name == "race"));
}

/// A new log takes its first segment's size on the disk, not a full segment's.
#[test]
fn small_logs_take_little_disk() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("n");
    let n = Server::start(&dir, &[]);
    run(60, async {
        let c = Client::connect(&n.addr).await.unwrap();
        for i in 0..50 {
            let name = format!("small-{i}");
            c.create_log(&name, None).await.unwrap();
            c.append(&name, vec![Bytes::from("one record")], AckMode::Async)
                .await
                .unwrap();
        }
    });
    n.stop();
    let used = disk_usage(&dir.join("logs"));
    // A log's first segment is small (docs/decisions/0009-segments-grow-from-256-kib.md).
    assert!(used < 50 << 20, "{used} bytes on disk for 50 small logs");
}

/// Raw bytes in a gRPC unary call (no protobuf encoding on the client side).
#[derive(Debug, Clone, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        let mut v = vec![0u8; src.remaining()];
        src.copy_to_slice(&mut v);
        Ok(Some(v))
    }
}

/// An Append call whose body is `bytes` as they are.
async fn raw_append(addr: &str, bytes: Vec<u8>) -> tonic::Status {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel).max_encoding_message_size(usize::MAX);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/spool.v1.Log/Append");
    grpc.unary::<Vec<u8>, Vec<u8>, _>(tonic::Request::new(bytes), path, RawCodec)
        .await
        .unwrap_err()
}

/// Codes that say what the client did: a name over the limit is INVALID_ARGUMENT and not
/// echoed whole; a request over the message limit is RESOURCE_EXHAUSTED naming it; a
/// malformed request is INVALID_ARGUMENT; an ack mode no replica can meet is
/// FAILED_PRECONDITION before anything is written; metrics exist before any append.
#[test]
fn codes_say_what_the_client_did() {
    let d = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let metrics = format!("127.0.0.1:{port}");
    let n = Server::start(&d.path().join("n"), &["--metrics-listen", &metrics]);
    run(60, async {
        common::wait_metrics(
            port,
            &[
                "spool_appended_records_total 0",
                "spool_append_seconds_count 0",
            ],
        )
        .await;
        let c = Client::connect(&n.addr).await.unwrap();
        let long = "n".repeat(10_000);
        let e = c.create_log(&long, None).await.unwrap_err();
        assert_eq!(code(&e), Some(Code::InvalidArgument));
        assert!(e.to_string().len() < 400, "{e}");

        c.create_log("k", None).await.unwrap();
        let huge = pb::AppendRequest {
            log: "k".into(),
            records: vec![Bytes::from(vec![7u8; 40 << 20])],
            ..Default::default()
        };
        let s = raw_append(&n.addr, prost::Message::encode_to_vec(&huge)).await;
        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        assert!(s.message().contains("limit"), "{}", s.message());
        let s = raw_append(&n.addr, vec![0xff; 64]).await;
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");

        for (ack, k) in [(AckMode::SemiSync, 1), (AckMode::Sync, 0)] {
            let e = c
                .append_with(pb::AppendRequest {
                    log: "k".into(),
                    records: vec![Bytes::from("x")],
                    ack: ack as i32,
                    semi_sync_replicas: k,
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(code(&e), Some(Code::FailedPrecondition), "{e}");
        }
        assert_eq!(
            c.describe_log("k").await.unwrap().end_offset,
            0,
            "nothing written"
        );
    });
}

/// What a hostile connection sends before going silent.
fn hostile_bytes(i: usize) -> Vec<u8> {
    use common::raw_conn::{frame, HTTP2_MAGIC};
    match i % 10 {
        // A part of the HTTP/2 magic.
        0..=5 => HTTP2_MAGIC[..1 + i % 23].to_vec(),
        // The whole magic, no SETTINGS.
        6 | 7 => HTTP2_MAGIC.to_vec(),
        // The magic and half a SETTINGS frame.
        8 => {
            let mut v = HTTP2_MAGIC.to_vec();
            v.extend_from_slice(&frame(0x4, 0, &[0, 3, 0, 0, 0, 100])[..12]);
            v
        }
        // A part of the segment-fetch magic.
        _ => b"SPOOL".to_vec(),
    }
}

/// 2,000 connections from ten addresses that send part of a preface (or the whole HTTP/2
/// magic without its SETTINGS) and go silent, plus some that send the whole preface and
/// then nothing: while they are held, a new client creates a log, appends and reads, each
/// in well under the handshake timeout; then the node closes every one of them, the
/// half-open ones at the handshake timeout and the silent HTTP/2 ones when their
/// keepalive PING goes unanswered.
#[test]
fn half_open_connections_do_not_lock_clients_out() {
    use common::raw_conn::{closed_by_server, http2_preface, loopback, open_from};
    const HOSTILE: usize = 2000;
    const SILENT_HTTP2: usize = 50;
    const HANDSHAKE: Duration = Duration::from_secs(5);
    const KEEPALIVE: Duration = Duration::from_millis(1000);
    // Descriptors for both ends' sockets (the node's cap follows its limit: ~2200 here).
    const NOFILE: u64 = 6144;
    common::raw_conn::raise_own_nofile(NOFILE);
    let d = tempfile::tempdir().unwrap();
    let config = format!(
        "[server]\nhandshake_timeout_ms = {}\nkeepalive_interval_ms = {}\nkeepalive_timeout_ms = {}\n",
        HANDSHAKE.as_millis(),
        KEEPALIVE.as_millis(),
        KEEPALIVE.as_millis()
    );
    let n = Server::start_configured(&d.path().join("n"), &config, Some(NOFILE));
    let addr = n.addr.clone();
    run(120, async move {
        // Ten peers of 200 each (under the per-address cap, so every one is held), opening
        // theirs at the same time, then one more sending whole prefaces.
        let peers: Vec<_> = (0..10)
            .map(|p| {
                let addr = addr.clone();
                tokio::spawn(async move {
                    let mut held = Vec::new();
                    for i in (p..HOSTILE).step_by(10) {
                        let s = open_from(loopback(2 + p as u8), &addr, &hostile_bytes(i)).await;
                        held.push((i, Instant::now(), s));
                    }
                    held
                })
            })
            .collect();
        let mut held = Vec::new();
        for p in peers {
            held.extend(p.await.unwrap());
        }
        for i in 0..SILENT_HTTP2 {
            let s = open_from(loopback(20), &addr, &http2_preface()).await;
            held.push((HOSTILE + i, Instant::now(), s));
        }
        assert_eq!(held.len(), HOSTILE + SILENT_HTTP2);
        let watchers: Vec<_> = held
            .into_iter()
            .map(|(i, opened, mut s)| {
                tokio::spawn(async move { (i, opened, closed_by_server(&mut s).await) })
            })
            .collect();

        let step = |what: &str, started: Instant| {
            let took = started.elapsed();
            assert!(took < Duration::from_secs(2), "{what} took {took:?}");
        };
        let t = Instant::now();
        let c = Client::connect(&addr).await.unwrap();
        c.create_log("served", None).await.unwrap();
        step("connect and create", t);
        let t = Instant::now();
        c.append("served", vec![Bytes::from("meanwhile")], AckMode::Async)
            .await
            .unwrap();
        step("append", t);
        let t = Instant::now();
        let r = c.read("served", 0, 10).await.unwrap();
        assert_eq!(r.records[0].value, Bytes::from("meanwhile"));
        step("read", t);
        let served_at = Instant::now();

        for w in watchers {
            let (i, opened, closed) = w.await.unwrap();
            let after = closed - opened;
            assert!(
                closed > served_at,
                "connection {i} closed {:?} after it opened, before the client was served",
                closed - opened
            );
            let (least, most) = if i < HOSTILE {
                (HANDSHAKE, HANDSHAKE + Duration::from_secs(6))
            } else {
                (KEEPALIVE, 2 * KEEPALIVE + Duration::from_secs(6))
            };
            assert!(
                // (The node may accept a little before the test sees its connect end.)
                after + Duration::from_millis(500) >= least && after <= most,
                "connection {i} ({:?}) closed after {after:?}",
                hostile_bytes(i)
            );
        }
        // The node still serves once they are gone.
        assert_eq!(c.describe_log("served").await.unwrap().end_offset, 1);
    });
    n.stop();
}

/// A client of the node at `addr` from the loopback address `src`, having made one call.
async fn logs_client_from(
    src: std::net::IpAddr,
    addr: &str,
) -> Result<pb::logs_client::LogsClient<tonic::transport::Channel>, String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .local_address(Some(src))
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let mut logs = pb::logs_client::LogsClient::new(channel);
    tokio::time::timeout(Duration::from_secs(5), logs.list(pb::ListLogsRequest {}))
        .await
        .map_err(|_| "list timed out".to_owned())?
        .map_err(|e| format!("{e:?}"))?;
    Ok(logs)
}

/// The caps. A peer at `max_connections_per_ip` has its next connection closed at once,
/// while other addresses are served. At `max_connections` a newcomer takes the place of
/// the oldest connection still in its handshake, oldest first; only when every place holds
/// a connection past its preface is it refused. Each says so in a WARN naming the setting
/// and the peer, and a new client is served again as soon as a place comes free.
#[test]
fn connection_caps_refuse_at_once_and_let_go() {
    use common::raw_conn::{
        closed_within, http2_handshake, idle_http2_peer, loopback, open_from, HTTP2_MAGIC,
    };
    const PER_IP: usize = 3;
    const TOTAL: usize = 6;
    let d = tempfile::tempdir().unwrap();
    // A long handshake timeout: half-open connections stay until evicted or closed here.
    let config = format!(
        "[server]\nmax_connections = {TOTAL}\nmax_connections_per_ip = {PER_IP}\n\
         handshake_timeout_ms = 60000\n"
    );
    let n = Server::start_configured(&d.path().join("n"), &config, None);
    let addr = n.addr.clone();
    let quick = Duration::from_secs(2);
    let logged = |line: &str| {
        let log = n.log();
        assert!(log.contains(line), "no {line:?} in the log:\n{log}");
    };
    run(60, async {
        let partial = &HTTP2_MAGIC[..10];
        // .1 holds three half-open connections: its fourth is closed at once, a client
        // from .1 is refused, and one from .2 is served (and keeps its connection).
        let mut half_open = Vec::new();
        for _ in 0..PER_IP {
            half_open.push(open_from(loopback(1), &addr, partial).await);
        }
        let mut over = open_from(loopback(1), &addr, partial).await;
        assert!(
            closed_within(&mut over, quick).await,
            "over the per-address cap, still open"
        );
        let refused = logs_client_from(loopback(1), &addr).await;
        assert!(refused.is_err(), "a client at its address's cap was served");
        let served = logs_client_from(loopback(2), &addr).await.unwrap();
        logged("server.max_connections_per_ip = 3 reached (3 open from 127.0.0.1)");

        // Two more half-open ones from .3 fill the node (3 + 1 + 2). Newcomers take their
        // places, oldest first: a client from .4, then HTTP/2 connections that finish
        // their handshake and stay, idle.
        for _ in 0..TOTAL - PER_IP - 1 {
            half_open.push(open_from(loopback(3), &addr, partial).await);
        }
        let _client = logs_client_from(loopback(4), &addr).await.unwrap();
        let mut idle_peers = Vec::new();
        for (k, mut oldest) in half_open.into_iter().enumerate() {
            if k > 0 {
                let mut s = open_from(loopback(5 + (k % 2) as u8), &addr, &[]).await;
                http2_handshake(&mut s).await;
                idle_peers.push(tokio::spawn(idle_http2_peer(s)));
            }
            assert!(
                closed_within(&mut oldest, quick).await,
                "half-open connection {k} kept its place"
            );
        }
        logged("server.max_connections = 6 reached: closed the oldest connection still in its handshake");

        // Every place holds a connection past its preface: a newcomer is refused.
        let mut over = open_from(loopback(7), &addr, partial).await;
        assert!(
            closed_within(&mut over, quick).await,
            "over the total cap, still open"
        );
        logged("server.max_connections = 6 reached (6 open, none still in its handshake)");

        // A place comes free: a client is served as soon as the node has seen it go.
        drop(served);
        let mut again =
            common::wait_until("never served again", Duration::from_secs(10), || async {
                logs_client_from(loopback(7), &addr).await.ok()
            })
            .await;
        again.list(pb::ListLogsRequest {}).await.unwrap();
        for p in &idle_peers {
            assert!(!p.is_finished(), "an idle HTTP/2 peer lost its place");
        }
    });
    n.stop();
}

/// Idle means no request open, not no bytes: a Subscribe that waits with nothing to say
/// for twice the idle timeout still delivers the record appended after, while an HTTP/2
/// connection that answers every keepalive PING but opens no stream is closed at the idle
/// timeout, and a client whose connection was closed so calls again without an error.
#[test]
fn idle_timeout_spares_open_streams() {
    use common::raw_conn::{http2_handshake, idle_http2_peer, loopback, open_from};
    use futures::StreamExt;
    const IDLE: Duration = Duration::from_millis(1500);
    const KEEPALIVE: Duration = Duration::from_millis(300);
    let d = tempfile::tempdir().unwrap();
    let metrics = common::free_port();
    let config = format!(
        "metrics_listen = \"127.0.0.1:{metrics}\"\n[server]\nidle_timeout_ms = {}\n\
         keepalive_interval_ms = {}\nkeepalive_timeout_ms = 5000\n",
        IDLE.as_millis(),
        KEEPALIVE.as_millis()
    );
    let n = Server::start_configured(&d.path().join("n"), &config, None);
    let addr = n.addr.clone();
    run(60, async move {
        let writer = Client::connect(&addr).await.unwrap();
        writer.create_log("quiet", None).await.unwrap();
        let subscriber = Client::connect(&addr).await.unwrap();
        let mut records = subscriber.subscribe("quiet", Some(0)).await.unwrap();
        let subscribed = Instant::now();
        let mut s = open_from(loopback(1), &addr, &[]).await;
        http2_handshake(&mut s).await;
        let idle_peer = tokio::spawn(idle_http2_peer(s));

        let peer = tokio::time::timeout(IDLE * 4, idle_peer)
            .await
            .expect("a connection with no stream was never closed")
            .unwrap();
        let lived = peer.closed_at - subscribed;
        assert!(
            lived + Duration::from_millis(50) >= IDLE,
            "closed after {lived:?}: {peer:?}"
        );
        assert!(peer.pings_answered >= 2, "keepalive PINGs: {peer:?}");

        // The subscription has been as quiet for twice the idle timeout: still there. The
        // writer's connection, idle as long with nothing open, was closed: its next call
        // connects again without an error.
        tokio::time::sleep_until((subscribed + 2 * IDLE).into()).await;
        let closed_idle = "spool_connections_timed_out_total{phase=\"idle\"} 2";
        common::wait_metrics(metrics, &[closed_idle]).await;
        writer
            .append("quiet", vec![Bytes::from("late")], AckMode::Async)
            .await
            .unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), records.next())
            .await
            .expect("the subscription delivered nothing")
            .expect("the subscription ended")
            .unwrap();
        assert_eq!(r.value, Bytes::from("late"));
    });
    n.stop();
}
