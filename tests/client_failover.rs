//! Clients that follow a failover: the Rust client and the CLI given every node's address
//! find the primary, retry what is safe to retry, and say why when there is no primary;
//! `spool dev-cluster --etcd` runs such a cluster.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::cluster::EtcdNodes;
use common::etcd::{etcd_bin, Etcd};
use common::{run, wait_until};
use spool::client::{AckMode, Client, ClientOptions, IdempotentProducer};
use tonic::Code;

const CONFIG: &str = "[cluster]\nlease_ttl_ms = 2000\n";
const LOG: &str = "cf";
/// Batches the producer appends in all, and after how many acks the primary is killed.
const BATCHES: usize = 150;
const KILL_AFTER: usize = 50;

/// A client of every node, patient enough for a first election on a loaded machine.
async fn cluster_client(nodes: &EtcdNodes) -> Client {
    let options = ClientOptions {
        failover_timeout: Some(Duration::from_secs(30)),
        ..ClientOptions::default()
    };
    Client::connect_with(&nodes.addr_list(), options)
        .await
        .unwrap()
}

/// Acked (offset, value, epoch) of each batch, in order.
type Acked = Arc<Mutex<Vec<(u64, String, u64)>>>;

/// Append `v-0`, `v-1`, ... one record per batch with one producer; every batch must be
/// acked (the client follows the failover), resent when an attempt gives up.
async fn produce(client: Client, acked: Acked) {
    let mut p = IdempotentProducer::new(client, LOG, AckMode::SemiSync);
    for i in 0..BATCHES {
        let v = format!("v-{i}");
        let mut r = p.append(vec![Bytes::from(v.clone())]).await;
        for attempt in 0..20u32 {
            let Err(e) = &r else { break };
            eprintln!("batch {i}: {e}; trying again");
            // A refusal (e.g. no replica reconnected to a new primary yet) settles the
            // batch as not written: it is appended anew, an unknown outcome resent.
            tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt.min(5)))).await;
            r = match p.resend().await {
                Ok(Some(ok)) => Ok(ok),
                Ok(None) => p.append(vec![Bytes::from(v.clone())]).await,
                Err(e) => Err(e),
            };
        }
        let r = r.unwrap_or_else(|e| panic!("batch {i} was never acked: {e}"));
        acked.lock().unwrap().push((r.first_offset, v, r.epoch));
    }
}

/// Every record of the log, from the primary.
async fn read_all(client: &Client) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    loop {
        let r = client.read(LOG, out.len() as u64, 1000).await.unwrap();
        if r.records.is_empty() {
            return out;
        }
        for rec in r.records {
            out.push((rec.offset, String::from_utf8(rec.value.to_vec()).unwrap()));
        }
    }
}

#[test]
fn a_producer_given_every_address_survives_a_killed_primary_exactly_once() {
    let Some(bin) = etcd_bin("a_producer_given_every_address_survives") else {
        return;
    };
    let etcd = Etcd::start(&bin);
    let mut nodes = EtcdNodes::start(&etcd, 3, CONFIG);
    run(180, async {
        let client = cluster_client(&nodes).await;
        // Sent before an election may have ended: the client waits for the primary.
        client.create_log(LOG, None).await.unwrap();
        common::wait_connected(&client.addr(), 2).await;
        let old = nodes.index_of(&client.addr());
        let acked: Acked = Arc::default();
        let writer = tokio::spawn(produce(client.clone(), acked.clone()));
        let n = acked.clone();
        wait_until("acks before the kill", Duration::from_secs(60), || {
            let done = n.lock().unwrap().len() >= KILL_AFTER;
            async move { done.then_some(()) }
        })
        .await;
        nodes.kill9(old);
        writer.await.unwrap();

        let acked = acked.lock().unwrap().clone();
        assert_eq!(acked.len(), BATCHES);
        let epochs: Vec<u64> = acked.iter().map(|a| a.2).collect();
        assert!(
            epochs.last() > epochs.first(),
            "later acks come from a new primary's epoch: {epochs:?}"
        );
        assert_ne!(nodes.index_of(&client.addr()), old, "the client moved on");
        let log = read_all(&client).await;
        let mut seen: HashMap<&str, u64> = HashMap::new();
        for (off, v) in &log {
            assert!(seen.insert(v, *off).is_none(), "{v} is in the log twice");
        }
        for (off, v, _) in &acked {
            assert_eq!(seen.get(v.as_str()), Some(off), "acked {v} not at {off}");
        }
        assert_eq!(log.len(), BATCHES, "nothing else is in the log");
    });
}

#[test]
fn no_reachable_primary_is_unavailable_with_what_each_address_said() {
    let dead = [common::free_port(), common::free_port()];
    let addrs = format!("127.0.0.1:{},127.0.0.1:{}", dead[0], dead[1]);
    run(30, async {
        let options = ClientOptions {
            failover_timeout: Some(Duration::from_millis(500)),
            ..ClientOptions::default()
        };
        let e = Client::connect_with(&addrs, options).await.unwrap_err();
        assert_eq!(e.code(), Some(Code::Unavailable), "{e}");
        let msg = e.to_string();
        for port in dead {
            assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
        }
    });
    // The CLI says the same, in one line, and fails.
    let o = common::cli(&addrs, &["--failover-timeout-ms", "300", "status"], None);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("Unavailable: no primary found"), "{err}");
}

#[test]
fn dev_cluster_with_etcd_fails_clearly_without_etcd() {
    let d = tempfile::tempdir().unwrap();
    let o = Command::new(common::spool_bin())
        .args(["dev-cluster", "--etcd", "--dir"])
        .arg(d.path())
        .env("PATH", "")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("etcd-server"), "{err}");
}

/// `count` consecutive free loopback ports.
fn free_ports(count: u16) -> u16 {
    loop {
        let first = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = first.local_addr().unwrap().port();
        let rest_free = (1..count).all(|i| {
            base.checked_add(i)
                .is_some_and(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        });
        if rest_free {
            return base;
        }
    }
}

#[test]
fn dev_cluster_with_etcd_takes_writes_through_every_address_and_stops_on_ctrl_c() {
    if etcd_bin("dev_cluster_with_etcd").is_none() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let base = free_ports(3);
    let mut child = Command::new(common::spool_bin())
        .args(["dev-cluster", "--etcd", "--base-port", &base.to_string()])
        .arg("--dir")
        .arg(d.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let done = line.contains("Ctrl-C");
        printed.push(line);
        if done {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    let addrs = (0..3)
        .map(|i| format!("127.0.0.1:{}", base + i))
        .collect::<Vec<_>>()
        .join(",");
    assert!(
        printed
            .iter()
            .any(|l| l.contains(&format!("--addr {addrs}"))),
        "{printed:?}"
    );
    let etcd_port: u16 = printed
        .iter()
        .find_map(|l| l.split("etcd://127.0.0.1:").nth(1))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no etcd address in {printed:?}"));
    // The nodes may still be electing: the CLI waits for the primary.
    let create = common::cli(&addrs, &["logs", "create", "demo"], None);
    common::stdout(&create);
    let append = ["append", "demo", "--ack", "semi-sync:1", "hi"];
    let out = common::stdout(&common::cli(&addrs, &append, None));
    // semi-sync:1 waits for one replica; the other may have confirmed by then too.
    let confirmed = out
        .split(" replica(s) confirmed")
        .next()
        .and_then(|head| head.rsplit(' ').next()?.parse::<u32>().ok());
    assert!(matches!(confirmed, Some(1 | 2)), "{out}");

    common::signal(&child, libc::SIGINT);
    let status = common::wait_timeout(&mut child, Duration::from_secs(30));
    assert!(status.success(), "dev-cluster exited with {status}");
    let every = (0..3).map(|i| base + i).chain([etcd_port]);
    for port in every {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} still open"
        );
    }
}

/// A primary that semi-sync acks need more replicas of than it has refuses before writing;
/// a client given several addresses tries again while the failover timeout lasts (replicas
/// reconnect after a failover), then returns the refusal: it does not wait forever.
#[test]
fn a_primary_short_of_replicas_is_retried_until_the_failover_timeout() {
    let d = tempfile::tempdir().unwrap();
    let s = common::Server::start(d.path(), &[]);
    let dead = common::free_port();
    let addrs = format!("{},127.0.0.1:{dead}", s.addr);
    run(60, async {
        let options = ClientOptions {
            failover_timeout: Some(Duration::from_millis(1500)),
            ..ClientOptions::default()
        };
        let c = Client::connect_with(&addrs, options).await.unwrap();
        c.create_log("short", None).await.unwrap();
        let started = std::time::Instant::now();
        let e = c
            .append("short", vec![Bytes::from_static(b"x")], AckMode::SemiSync)
            .await
            .unwrap_err();
        let took = started.elapsed();
        assert_eq!(e.code(), Some(Code::FailedPrecondition), "{e}");
        assert!(e.to_string().contains("counted for acks"), "{e}");
        assert!(
            took >= Duration::from_millis(1000),
            "tried again meanwhile: {took:?}"
        );
        assert!(
            took < Duration::from_secs(10),
            "gave up at the timeout: {took:?}"
        );
        let log = c.describe_log("short").await.unwrap();
        assert_eq!(log.end_offset, 0, "nothing was written");
    });
}

/// A node started once on its own (as the Debian package's first start does) has a cluster
/// id of its own: with no logs it takes the coordinator's cluster when it joins one; with
/// logs it still refuses, because its records belong to another cluster.
#[test]
fn a_node_with_no_logs_leaves_its_own_cluster_for_the_coordinators() {
    let Some(bin) = etcd_bin("a_node_with_no_logs_leaves_its_own_cluster") else {
        return;
    };
    let etcd = Etcd::start(&bin);
    let nodes = EtcdNodes::start(&etcd, 1, CONFIG);
    let d = tempfile::tempdir().unwrap();
    let (empty, with_log) = (d.path().join("empty"), d.path().join("with-log"));
    for dir in [&empty, &with_log] {
        let s = common::Server::start(dir, &[]);
        if dir == &with_log {
            run(30, common::create_log(&s.addr, "mine"));
        }
        s.stop();
    }
    let cfg = common::write_config(&empty, CONFIG);
    let joined = common::Server::start(&empty, &["--config", &cfg, "--cluster", &etcd.url()]);
    run(60, common::wait_connected(&nodes.addr(0), 1));
    joined.stop();

    let cfg = common::write_config(&with_log, CONFIG);
    let mut refused = Command::new(common::spool_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&with_log)
        .args(["--config", &cfg, "--cluster", &etcd.url()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = common::wait_timeout(&mut refused, Duration::from_secs(30));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut refused.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        !status.success(),
        "a node holding logs of its own cluster must not join"
    );
    assert!(err.contains("in the coordinator has id"), "{err}");
}
