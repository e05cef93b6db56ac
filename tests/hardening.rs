//! A node under many logs, racing clients and odd requests, with real processes: more logs
//! than a tight open-files limit allows descriptors for, racing creates and deletes of one
//! name, new logs that take little disk, and codes that say what the client did.

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
    // 50 logs of a 128 MiB segment each took 6.4 GB; now well under a MiB each.
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
