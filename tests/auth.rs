//! Tokens and roles: every RPC with every role (allowed, or PERMISSION_DENIED), missing,
//! wrong, expired and revoked tokens, log-prefix grants, and the safe defaults (no
//! exposure beyond loopback without auth, a private data dir).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::{run, wait_until, Server};
use spool_proto::v1 as pb;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request};

/// One token per role, one limited to logs "orders", one expired.
const TOKENS: [(&str, &str, &str); 6] = [
    ("reader", "spool_reader", "roles = [\"read\"]"),
    ("writer", "spool_writer", "roles = [\"write\"]"),
    ("admin", "spool_admin", "roles = [\"admin\"]"),
    ("replica", "spool_replica", "roles = [\"replica\"]"),
    (
        "orders",
        "spool_orders",
        "roles = [\"write\"]\nlogs = [\"orders\"]",
    ),
    (
        "old",
        "spool_old",
        "roles = [\"admin\"]\nexpires_unix_s = 1",
    ),
];

fn sha256_hex(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn tokens_file(dir: &Path, which: &[(&str, &str, &str)]) -> String {
    let path = dir.join("tokens.toml");
    let body: String = which
        .iter()
        .map(|(p, t, rest)| {
            format!(
                "[[token]]\nprincipal = \"{p}\"\nsha256 = \"{}\"\n{rest}\n\n",
                sha256_hex(t)
            )
        })
        .collect();
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

async fn channel(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn with_token<T>(msg: T, token: Option<&str>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(t) = token {
        let v: MetadataValue<_> = format!("Bearer {t}").parse().unwrap();
        r.metadata_mut().insert("authorization", v);
    }
    r
}

/// The code `rpc` gets with `token` (Ok as `Code::Ok`).
async fn call(ch: &Channel, rpc: &str, token: Option<&str>) -> Code {
    let code = |r: Result<(), tonic::Status>| r.err().map_or(Code::Ok, |s| s.code());
    let mut log = pb::log_client::LogClient::new(ch.clone());
    let mut logs = pb::logs_client::LogsClient::new(ch.clone());
    let mut admin = pb::admin_client::AdminClient::new(ch.clone());
    let mut status = pb::status_client::StatusClient::new(ch.clone());
    let append = pb::AppendRequest {
        log: "orders".into(),
        records: vec!["r".into()],
        ..Default::default()
    };
    code(match rpc {
        "Append" => log.append(with_token(append, token)).await.map(|_| ()),
        "Read" => {
            let r = pb::ReadRequest {
                log: "orders".into(),
                ..Default::default()
            };
            log.read(with_token(r, token)).await.map(|_| ())
        }
        "List" => logs
            .list(with_token(pb::ListLogsRequest {}, token))
            .await
            .map(|_| ()),
        "Create" => {
            let r = pb::CreateLogRequest {
                name: "orders-2".into(),
                ..Default::default()
            };
            logs.create(with_token(r, token)).await.map(|_| ())
        }
        "Delete" => {
            let r = pb::DeleteLogRequest {
                name: "scratch".into(),
            };
            logs.delete(with_token(r, token)).await.map(|_| ())
        }
        "Status" => status
            .get(with_token(pb::StatusRequest {}, token))
            .await
            .map(|_| ()),
        "Scrub" => {
            let r = pb::ScrubRequest {
                log: "orders".into(),
            };
            admin.scrub(with_token(r, token)).await.map(|_| ())
        }
        "Describe" => {
            let r = pb::DescribeLogRequest {
                name: "orders".into(),
            };
            logs.describe(with_token(r, token)).await.map(|_| ())
        }
        "Subscribe" => {
            let r = pb::SubscribeRequest {
                log: "orders".into(),
                ..Default::default()
            };
            log.subscribe(with_token(r, token)).await.map(|_| ())
        }
        "AppendStream" => {
            let reqs = futures::stream::iter(Vec::<pb::AppendRequest>::new());
            log.append_stream(with_token(reqs, token)).await.map(|_| ())
        }
        "Replicate" => {
            let mut rep = pb::replication_client::ReplicationClient::new(ch.clone());
            let msgs = futures::stream::iter(Vec::<pb::ReplicaMessage>::new());
            rep.replicate(with_token(msgs, token)).await.map(|_| ())
        }
        "Pause" => admin
            .pause(with_token(pb::PauseRequest {}, token))
            .await
            .map(|_| ()),
        "Resume" => admin
            .resume(with_token(pb::ResumeRequest {}, token))
            .await
            .map(|_| ()),
        "Repair" => {
            let r = pb::RepairRequest {
                log: "orders".into(),
                ..Default::default()
            };
            admin.repair(with_token(r, token)).await.map(|_| ())
        }
        "Switchover" => {
            let r = pb::SwitchoverRequest { to: "n".into() };
            admin.switchover(with_token(r, token)).await.map(|_| ())
        }
        "Failover" => {
            let r = pb::FailoverRequest {
                to: "n".into(),
                force: false,
            };
            admin.failover(with_token(r, token)).await.map(|_| ())
        }
        "QuarantineList" => {
            let r = pb::QuarantineListRequest::default();
            admin
                .quarantine_list(with_token(r, token))
                .await
                .map(|_| ())
        }
        "QuarantineRead" => {
            let r = pb::QuarantineReadRequest {
                log: "orders".into(),
                ..Default::default()
            };
            admin
                .quarantine_read(with_token(r, token))
                .await
                .map(|_| ())
        }
        "FetchFrames" => {
            let mut rep = pb::replication_client::ReplicationClient::new(ch.clone());
            let r = pb::FetchFramesRequest {
                log: "orders".into(),
                ..Default::default()
            };
            rep.fetch_frames(with_token(r, token)).await.map(|_| ())
        }
        "LookNow" => {
            let mut rep = pb::replication_client::ReplicationClient::new(ch.clone());
            let r = pb::LookNowRequest::default();
            rep.look_now(with_token(r, token)).await.map(|_| ())
        }
        "Promote" => {
            let r = pb::PromoteRequest::default();
            admin.promote(with_token(r, token)).await.map(|_| ())
        }
        "Health" => {
            use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
            let r = HealthCheckRequest::default();
            let mut h = HealthClient::new(ch.clone());
            h.check(with_token(r, token)).await.map(|_| ())
        }
        "Reflection" => {
            use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
            let mut c = ServerReflectionClient::new(ch.clone());
            let reqs = futures::stream::iter(Vec::new());
            let r = c.server_reflection_info(with_token(reqs, token)).await;
            r.map(|_| ())
        }
        other => panic!("no rpc {other}"),
    })
}

/// The code a segment fetch (`SPOOLSF1`, beside gRPC on the same port) gets with `token`:
/// its refusal's words for the two auth failures, Ok for anything past them.
async fn segment_fetch(addr: &str, token: Option<&str>) -> Code {
    use prost::Message;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = pb::SegmentFetchRequest {
        log: "orders".into(),
        token: token.unwrap_or_default().into(),
        ..Default::default()
    };
    let body = req.encode_to_vec();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut out = b"SPOOLSF1".to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    tcp.write_all(&out).await.unwrap();
    let len = tcp.read_u32_le().await.unwrap();
    let mut reply = vec![0u8; len as usize];
    tcp.read_exact(&mut reply).await.unwrap();
    let error = pb::SegmentFetchReply::decode(&reply[..]).unwrap().error;
    if error.contains("lacks the replica role") {
        Code::PermissionDenied
    } else if error.contains("token") {
        Code::Unauthenticated
    } else {
        Code::Ok
    }
}

/// Whether a call with this role reaches its handler (any code but the two auth ones).
fn reached(c: Code) -> bool {
    !matches!(c, Code::Unauthenticated | Code::PermissionDenied)
}

#[test]
fn every_rpc_needs_its_role() {
    let d = tempfile::tempdir().unwrap();
    let tokens = tokens_file(d.path(), &TOKENS);
    let node = Server::start(&d.path().join("n"), &["--tokens-file", &tokens]);
    run(60, async {
        let ch = channel(&node.addr).await;
        // (rpc, roles that reach it)
        let readers: &[&str] = &["reader", "writer", "admin", "orders"];
        let admins: &[&str] = &["admin"];
        let everyone: &[&str] = &["reader", "writer", "admin", "replica", "orders"];
        let matrix: Vec<(&str, &[&str])> = vec![
            ("Append", &["writer", "admin", "orders"]),
            ("AppendStream", &["writer", "admin", "orders"]),
            ("Read", readers),
            ("Subscribe", readers),
            ("Describe", readers),
            ("List", readers),
            ("Pause", admins),
            ("Resume", admins),
            ("Repair", admins),
            ("Switchover", admins),
            ("Failover", admins),
            ("QuarantineList", admins),
            ("QuarantineRead", admins),
            ("Replicate", &["replica"]),
            ("Create", &["writer", "admin", "orders"]),
            ("Delete", &["admin"]),
            ("Status", &["reader", "writer", "admin", "orders"]),
            ("Scrub", &["admin"]),
            ("FetchFrames", &["replica"]),
            ("LookNow", &["replica"]),
            ("Promote", admins),
            ("Reflection", readers),
            ("Health", everyone),
            ("SegmentFetch", &["replica"]),
        ];
        let addr = node.addr.clone();
        let call = |ch: &Channel, rpc: &str, token: Option<&str>| {
            let (ch, rpc, token) = (ch.clone(), rpc.to_owned(), token.map(str::to_owned));
            let addr = addr.clone();
            async move {
                match rpc.as_str() {
                    "SegmentFetch" => segment_fetch(&addr, token.as_deref()).await,
                    rpc => call(&ch, rpc, token.as_deref()).await,
                }
            }
        };
        assert_eq!(call(&ch, "Create", Some("spool_admin")).await, Code::Ok);
        for (rpc, allowed) in matrix {
            for (principal, token, _) in &TOKENS[..5] {
                let got = call(&ch, rpc, Some(token)).await;
                let want = allowed.contains(principal);
                assert_eq!(reached(got), want, "{rpc} as {principal}: {got:?}");
                if !want {
                    assert_eq!(got, Code::PermissionDenied, "{rpc} as {principal}");
                }
            }
            if rpc == "Health" {
                // Open to anyone, for load balancers and orchestrators.
                assert_eq!(
                    call(&ch, rpc, None).await,
                    Code::Ok,
                    "{rpc} without a token"
                );
                continue;
            }
            assert_eq!(
                call(&ch, rpc, None).await,
                Code::Unauthenticated,
                "{rpc} without a token"
            );
            assert_eq!(
                call(&ch, rpc, Some("spool_nope")).await,
                Code::Unauthenticated
            );
            assert_eq!(
                call(&ch, rpc, Some("spool_old")).await,
                Code::Unauthenticated,
                "expired"
            );
        }
    });
}

#[test]
fn a_log_prefix_grant_stops_at_other_logs_and_denials_name_no_token() {
    let d = tempfile::tempdir().unwrap();
    let tokens = tokens_file(d.path(), &TOKENS);
    let node = Server::start(&d.path().join("n"), &["--tokens-file", &tokens]);
    run(60, async {
        let ch = channel(&node.addr).await;
        let mut logs = pb::logs_client::LogsClient::new(ch.clone());
        for name in ["orders", "payments"] {
            let r = pb::CreateLogRequest {
                name: name.into(),
                ..Default::default()
            };
            logs.create(with_token(r, Some("spool_admin")))
                .await
                .unwrap();
        }
        let mut log = pb::log_client::LogClient::new(ch.clone());
        let to = |l: &str| pb::AppendRequest {
            log: l.into(),
            records: vec!["x".into()],
            ..Default::default()
        };
        log.append(with_token(to("orders"), Some("spool_orders")))
            .await
            .unwrap();
        let denied = log
            .append(with_token(to("payments"), Some("spool_orders")))
            .await
            .unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied);
        assert!(
            denied.message().contains("orders") && !denied.message().contains("spool_"),
            "{denied:?}"
        );
        let listed = logs
            .list(with_token(pb::ListLogsRequest {}, Some("spool_orders")))
            .await
            .unwrap();
        let names: Vec<String> = listed
            .into_inner()
            .logs
            .into_iter()
            .map(|l| l.name)
            .collect();
        assert_eq!(names, vec!["orders".to_owned()]);
        let role = call(&ch, "Scrub", Some("spool_writer")).await;
        assert_eq!(role, Code::PermissionDenied);
    });
}

#[test]
fn a_revoked_token_stops_working_without_a_restart() {
    let d = tempfile::tempdir().unwrap();
    let tokens = tokens_file(d.path(), &TOKENS);
    let node = Server::start(&d.path().join("n"), &["--tokens-file", &tokens]);
    run(60, async {
        let ch = channel(&node.addr).await;
        assert_eq!(call(&ch, "Status", Some("spool_reader")).await, Code::Ok);
        // A later mtime, so the reload sees the change even within one second.
        std::thread::sleep(Duration::from_millis(1100));
        tokens_file(d.path(), &TOKENS[1..]);
        wait_until(
            "the revoked token is refused",
            Duration::from_secs(15),
            || async {
                (call(&ch, "Status", Some("spool_reader")).await == Code::Unauthenticated)
                    .then_some(())
            },
        )
        .await;
        assert_eq!(call(&ch, "Status", Some("spool_writer")).await, Code::Ok);
    });
}

#[test]
fn serve_refuses_exposure_without_auth_and_keeps_its_files_private() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("n");
    let out = std::process::Command::new(common::spool_bin())
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("without TLS and authentication") && err.contains("--insecure"),
        "{err}"
    );
    let node = Server::start(&dir, &[]);
    run(30, async { common::create_log(&node.addr, "p").await });
    node.stop();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    for entry in walk(&dir) {
        let m = mode(&entry);
        assert_eq!(m & 0o077, 0, "{} is {m:o}", entry.display());
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

/// A replica holding the replica role follows (frames and whole segments); one without a
/// token gets nothing and says why.
#[test]
fn only_a_replica_with_the_replica_role_follows() {
    let d = tempfile::tempdir().unwrap();
    let tokens = tokens_file(d.path(), &TOKENS);
    let auth = format!(
        "[auth]\ntokens_file = \"{tokens}\"\n{}",
        common::fixed_segments(1 << 20)
    );
    let p = Server::start_toml(&d.path().join("p"), &auth, &[]);
    let token_file = d.path().join("node-token");
    std::fs::write(&token_file, "spool_replica\n").unwrap();
    // Its replica id is its principal's name: the upstream takes no hello in another's.
    let with = format!(
        "[auth]\nnode_token_file = \"{}\"\n[replication]\nreplica_id = \"replica\"\n",
        token_file.display()
    );
    run(60, async {
        let ch = channel(&p.addr).await;
        let mut logs = pb::logs_client::LogsClient::new(ch.clone());
        let c = pb::CreateLogRequest {
            name: "l".into(),
            ..Default::default()
        };
        logs.create(with_token(c, Some("spool_admin")))
            .await
            .unwrap();
        let mut log = pb::log_client::LogClient::new(ch);
        let value = vec![bytes::Bytes::from(vec![7u8; 1000]); 64];
        for _ in 0..40 {
            let a = pb::AppendRequest {
                log: "l".into(),
                records: value.clone(),
                ..Default::default()
            };
            log.append(with_token(a, Some("spool_writer")))
                .await
                .unwrap();
        }
    });
    // Started after the writes: sealed segments come whole, by segment fetch.
    let r = Server::start_toml(
        &d.path().join("r"),
        &with,
        &common::replica_of(&p.addr, &[]),
    );
    let stranger = Server::start(&d.path().join("s"), &common::replica_of(&p.addr, &[]));
    run(60, async {
        common::reach_end(&r.addr, "l", 40 * 64).await;
        let up = common::upstream_log(&common::client(&r.addr).await, "l")
            .await
            .unwrap();
        assert!(
            up.segment_bytes_fetched > 0,
            "segments came by fetch: {up:?}"
        );
        let s = spool::client::Client::connect(&stranger.addr)
            .await
            .unwrap();
        wait_until(
            "the stranger says it was refused",
            Duration::from_secs(20),
            || async {
                let st = s.status().await.ok()?;
                let e = st.upstream?.last_error;
                e.to_lowercase().contains("token").then_some(())
            },
        )
        .await;
        assert!(
            s.list_logs().await.unwrap().is_empty(),
            "the stranger got no log"
        );
    });
}

/// An authenticated replica that claims more than it was sent is counted only for what it
/// was sent: a forged ack (durable_end 2^40) does not acknowledge a later semi-sync append.
#[test]
fn a_forged_ack_counts_only_up_to_what_was_sent() {
    let forged = pb::ReplicaAck {
        log: "l".into(),
        durable_end: 1 << 40,
    };
    forged_acks_ack_nothing(
        "",
        pb::ReplicaAcks {
            acks: vec![forged],
            ..Default::default()
        },
    );
}

/// A replica's report of replicas below it (counted with cascaded_counts_for_acks) is
/// capped too: below it, no replica holds more than this node sent it.
#[test]
fn a_forged_cascaded_ack_counts_only_up_to_what_was_sent() {
    let ghost = pb::DownstreamReplica {
        replica_id: "ghost".into(),
        sync: true,
        acks: vec![pb::ReplicaAck {
            log: "l".into(),
            durable_end: 1 << 40,
        }],
        ..Default::default()
    };
    forged_acks_ack_nothing(
        "cascaded_counts_for_acks = true\n",
        pb::ReplicaAcks {
            downstream: vec![ghost],
            ..Default::default()
        },
    );
}

/// A replica session that sends `acks` once its plan for log "l" is made: a semi-sync
/// append to "l" then waits for a real replica (and times out).
fn forged_acks_ack_nothing(replication_cfg: &str, acks: pb::ReplicaAcks) {
    let d = tempfile::tempdir().unwrap();
    let tokens = tokens_file(d.path(), &TOKENS);
    let cfg = format!(
        "[auth]\ntokens_file = \"{tokens}\"\n[replication]\nack_timeout_ms = 1000\n{replication_cfg}"
    );
    let p = Server::start_toml(&d.path().join("p"), &cfg, &[]);
    run(60, async {
        let ch = channel(&p.addr).await;
        let mut logs = pb::logs_client::LogsClient::new(ch.clone());
        let c = pb::CreateLogRequest {
            name: "l".into(),
            ..Default::default()
        };
        logs.create(with_token(c, Some("spool_admin")))
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let hello = pb::ReplicaHello {
            replica_id: "replica".into(),
            ..Default::default()
        };
        tx.send(pb::ReplicaMessage {
            msg: Some(pb::replica_message::Msg::Hello(hello)),
        })
        .await
        .unwrap();
        let mut rep = pb::replication_client::ReplicationClient::new(ch.clone());
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut inbound = rep
            .replicate(with_token(stream, Some("spool_replica")))
            .await
            .unwrap()
            .into_inner();
        // Once its plan for "l" is made, claim far more than exists.
        use tokio_stream::StreamExt;
        while let Some(m) = inbound.next().await {
            if let Some(pb::upstream_message::Msg::Start(s)) = m.unwrap().msg {
                if s.name == "l" {
                    break;
                }
            }
        }
        tx.send(pb::ReplicaMessage {
            msg: Some(pb::replica_message::Msg::Acks(acks)),
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await; // the ack is read before the append
        let mut log = pb::log_client::LogClient::new(ch);
        let append = common::semi_sync("l", "needs a real replica", 1);
        let r = log.append(with_token(append, Some("spool_writer"))).await;
        let code = r.as_ref().err().map(|s| s.code());
        assert_eq!(
            code,
            Some(Code::DeadlineExceeded),
            "acked by a forged ack: {r:?}"
        );
        drop(tx);
    });
}

/// The CLI sends SPOOL_TOKEN (or --token-file) with every call.
#[test]
fn the_cli_sends_its_token() {
    let d = tempfile::tempdir().unwrap();
    let tokens = tokens_file(d.path(), &TOKENS);
    let node = Server::start(&d.path().join("n"), &["--tokens-file", &tokens]);
    let spool = |env: Option<&str>, args: &[&str]| {
        let mut c = std::process::Command::new(common::spool_bin());
        c.args(["--addr", &node.addr])
            .args(args)
            .env_remove("SPOOL_TOKEN");
        if let Some(t) = env {
            c.env("SPOOL_TOKEN", t);
        }
        c.output().unwrap()
    };
    let out = spool(Some("spool_admin"), &["logs", "create", "t"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = spool(None, &["append", "t", "x"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Unauthenticated"),
        "{err}"
    );
    let file = d.path().join("tok");
    std::fs::write(&file, "spool_writer\n").unwrap();
    let out = spool(
        None,
        &["--token-file", file.to_str().unwrap(), "append", "t", "x"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = spool(Some("spool_reader"), &["append", "t", "x"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("PermissionDenied") && err.contains("write"),
        "{err}"
    );
}

/// A raw replication session as `principal` (its token `spool_<principal>`), with the
/// first message `hello`: what the upstream sends on it, and where to send more.
struct RawSession {
    tx: tokio::sync::mpsc::Sender<pb::ReplicaMessage>,
    inbound: tonic::Streaming<pb::UpstreamMessage>,
}

impl RawSession {
    async fn open(ch: &Channel, principal: &str, hello: pb::ReplicaHello) -> RawSession {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(pb::ReplicaMessage {
            msg: Some(pb::replica_message::Msg::Hello(hello)),
        })
        .await
        .unwrap();
        let mut rep = pb::replication_client::ReplicationClient::new(ch.clone());
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let token = format!("spool_{principal}");
        let inbound = rep
            .replicate(with_token(stream, Some(&token)))
            .await
            .unwrap()
            .into_inner();
        RawSession { tx, inbound }
    }

    /// The next message matching `pick`, skipping others.
    async fn until<T>(&mut self, pick: impl Fn(pb::upstream_message::Msg) -> Option<T>) -> T {
        use tokio_stream::StreamExt;
        while let Some(m) = self.inbound.next().await {
            if let Some(t) = m.unwrap().msg.and_then(&pick) {
                return t;
            }
        }
        panic!("the upstream ended the stream");
    }
}

/// A replica's claim at its hello that cannot be checked (records past the primary's end,
/// or an end without its last frame) never acknowledges an append: a semi-sync append
/// already durable on the primary and waiting for a replica times out instead of being
/// reported replicated by a peer that was never sent it.
#[test]
fn an_unchecked_claim_at_hello_acknowledges_nothing() {
    for (claim, want) in [(4u64, "the exact end"), (1 << 40, "ahead")] {
        forged_hello_claim(claim, want);
    }
}

fn forged_hello_claim(claim: u64, what: &str) {
    let d = tempfile::tempdir().unwrap();
    let mut tokens: Vec<(&str, &str, &str)> = TOKENS[..3].to_vec();
    tokens.extend([
        ("ra", "spool_ra", "roles = [\"replica\"]"),
        ("rb", "spool_rb", "roles = [\"replica\"]"),
    ]);
    let tokens = tokens_file(d.path(), &tokens);
    let cfg = format!("[auth]\ntokens_file = \"{tokens}\"\n[replication]\nack_timeout_ms = 3000\n");
    let p = Server::start_toml(&d.path().join("p"), &cfg, &[]);
    run(60, async {
        let ch = channel(&p.addr).await;
        let mut logs = pb::logs_client::LogsClient::new(ch.clone());
        let c = pb::CreateLogRequest {
            name: "l".into(),
            ..Default::default()
        };
        logs.create(with_token(c, Some("spool_admin")))
            .await
            .unwrap();
        let mut log = pb::log_client::LogClient::new(ch.clone());
        let three = pb::AppendRequest {
            log: "l".into(),
            records: vec!["a".into(), "b".into(), "c".into()],
            ..Default::default()
        };
        log.append(with_token(three, Some("spool_writer")))
            .await
            .unwrap();
        // "ra" is attached and counts, but acks nothing: the append below waits for it.
        let hello = |id: &str| pb::ReplicaHello {
            replica_id: id.into(),
            ..Default::default()
        };
        let mut a = RawSession::open(&ch, "ra", hello("ra")).await;
        let epoch = a
            .until(|m| match m {
                pb::upstream_message::Msg::Hello(h) => Some(h.node_epoch),
                _ => None,
            })
            .await;
        let mut w = log.clone();
        let append = tokio::spawn(async move {
            let r = common::semi_sync("l", "needs a real replica", 1);
            w.append(with_token(r, Some("spool_writer"))).await
        });
        a.until(|m| match m {
            pb::upstream_message::Msg::Frames(f) if f.next_offset >= 4 => Some(()),
            _ => None,
        })
        .await;
        // Durable on the primary at 3, waiting: "rb" claims to hold it (and more).
        let forged = pb::ReplicaLogState {
            name: "l".into(),
            last_epoch: epoch,
            epochs: vec![pb::EpochStart {
                epoch,
                start_offset: 0,
            }],
            end_offset: claim,
            ..Default::default()
        };
        let b_hello = pb::ReplicaHello {
            logs: vec![forged],
            node_epoch: epoch,
            ..hello("rb")
        };
        let mut b = RawSession::open(&ch, "rb", b_hello).await;
        let start = b
            .until(|m| match m {
                pb::upstream_message::Msg::Start(s) if s.name == "l" => Some(s),
                _ => None,
            })
            .await;
        let r = append.await.unwrap();
        assert_eq!(
            r.as_ref().err().map(|s| s.code()),
            Some(Code::DeadlineExceeded),
            "claiming {what} ({claim}) acknowledged the append: {r:?} (plan {start:?})"
        );
        drop((a.tx, b.tx));
    });
}

/// With auth on, a replica principal replicates only in its own name (or one its entry
/// lists): it cannot attach as another replica and have its acks counted for it.
#[test]
fn a_replica_replicates_only_in_its_own_name() {
    let d = tempfile::tempdir().unwrap();
    let tokens = tokens_file(
        d.path(),
        &[
            ("ra", "spool_ra", "roles = [\"replica\"]"),
            (
                "rb",
                "spool_rb",
                "roles = [\"replica\"]\nreplica_ids = [\"rb-old\"]",
            ),
        ],
    );
    let node = Server::start(&d.path().join("n"), &["--tokens-file", &tokens]);
    run(60, async {
        let ch = channel(&node.addr).await;
        let attach = |principal: &'static str, id: &'static str| {
            let ch = ch.clone();
            async move {
                let hello = pb::ReplicaHello {
                    replica_id: id.into(),
                    ..Default::default()
                };
                let m = pb::ReplicaMessage {
                    msg: Some(pb::replica_message::Msg::Hello(hello)),
                };
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                tx.send(m).await.unwrap();
                let mut rep = pb::replication_client::ReplicationClient::new(ch);
                let token = format!("spool_{principal}");
                let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
                let r = rep.replicate(with_token(stream, Some(&token))).await;
                (r.map(|_| ()), tx)
            }
        };
        for (principal, id) in [("ra", "ra"), ("rb", "rb"), ("rb", "rb-old")] {
            let (r, _tx) = attach(principal, id).await;
            assert!(r.is_ok(), "{principal} as {id}: {r:?}");
        }
        for (principal, id) in [("ra", "rb"), ("rb", "ra"), ("ra", "rb-old")] {
            let (r, _tx) = attach(principal, id).await;
            let e = r.unwrap_err();
            assert_eq!(e.code(), Code::PermissionDenied, "{principal} as {id}");
            assert!(
                e.message().contains(id) && !e.message().contains("spool_"),
                "{e:?}"
            );
        }
    });
}

/// Without a coordinator, a replica principal's newer epoch fences the primary only when
/// its hello's history began that epoch: a bare number, at hello or in acks, is refused
/// and the primary goes on taking writes.
#[test]
fn a_bare_epoch_claim_fences_nothing() {
    let d = tempfile::tempdir().unwrap();
    let tokens = tokens_file(d.path(), &TOKENS);
    let node = Server::start(&d.path().join("n"), &["--tokens-file", &tokens]);
    run(60, async {
        let ch = channel(&node.addr).await;
        let orders = pb::CreateLogRequest {
            name: "orders".into(),
            ..Default::default()
        };
        let mut logs = pb::logs_client::LogsClient::new(ch.clone());
        logs.create(with_token(orders, Some("spool_admin")))
            .await
            .unwrap();
        let writes = |ch: Channel| async move { call(&ch, "Append", Some("spool_writer")).await };
        let fenced = |ch: Channel| async move {
            let mut s = pb::status_client::StatusClient::new(ch);
            let r = s.get(with_token(pb::StatusRequest {}, Some("spool_admin")));
            r.await.unwrap().into_inner().fenced
        };
        let huge = 1u64 << 40;
        let hello = |logs: Vec<pb::ReplicaLogState>| pb::ReplicaHello {
            replica_id: "replica".into(),
            node_epoch: huge,
            logs,
            ..Default::default()
        };
        let mut rep = pb::replication_client::ReplicationClient::new(ch.clone());
        let first = |h| pb::ReplicaMessage {
            msg: Some(pb::replica_message::Msg::Hello(h)),
        };
        let bare = futures::stream::iter([first(hello(vec![]))]);
        let e = rep
            .replicate(with_token(bare, Some("spool_replica")))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(!fenced(ch.clone()).await);
        assert_eq!(writes(ch.clone()).await, Code::Ok);

        // In acks, within a session begun at the node's own epoch.
        let plain = pb::ReplicaHello {
            node_epoch: 0,
            ..hello(vec![])
        };
        let mut s = RawSession::open(&ch, "replica", plain).await;
        s.until(|m| matches!(m, pb::upstream_message::Msg::Start(_)).then_some(()))
            .await;
        let acks = pb::ReplicaAcks {
            node_epoch: huge,
            ..Default::default()
        };
        s.tx.send(pb::ReplicaMessage {
            msg: Some(pb::replica_message::Msg::Acks(acks)),
        })
        .await
        .unwrap();
        let ended = loop {
            use tokio_stream::StreamExt;
            match s.inbound.next().await {
                Some(Ok(_)) => continue,
                other => break other,
            }
        };
        let e = ended.unwrap().unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(!fenced(ch.clone()).await);
        assert_eq!(writes(ch.clone()).await, Code::Ok);

        // A hello whose log began that epoch is a newer primary's word: this node stops.
        let began = pb::ReplicaLogState {
            name: "orders".into(),
            last_epoch: huge,
            epochs: vec![pb::EpochStart {
                epoch: huge,
                start_offset: 0,
            }],
            ..Default::default()
        };
        let backed = futures::stream::iter([first(hello(vec![began]))]);
        let e = rep
            .replicate(with_token(backed, Some("spool_replica")))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(fenced(ch.clone()).await);
        assert_ne!(writes(ch).await, Code::Ok);
    });
}
