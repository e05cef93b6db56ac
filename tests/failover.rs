//! Automatic failover on a real etcd: three nodes with `--cluster`, a semi-sync writer
//! recording every ack, faults to the primary; afterwards every acked record is on the new
//! primary at its offset with its bytes, and the old primary rejoins byte-identical.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::etcd::{etcd_bin, Etcd};
use common::{client, free_port, run, semi_sync, wait_until, write_config, Server};
use spool_proto::v1 as pb;

const CONFIG: &str = "[cluster]\nlease_ttl_ms = 2000\n";
const LOG: &str = "f";

/// Three nodes on fixed ports (a restarted node comes back at its address).
struct Nodes {
    url: String,
    dirs: Vec<PathBuf>,
    ports: Vec<u16>,
    servers: Vec<Option<Server>>,
    _tmp: tempfile::TempDir,
}

impl Nodes {
    fn start(etcd: &Etcd, n: usize) -> Nodes {
        let tmp = tempfile::tempdir().unwrap();
        let dirs: Vec<PathBuf> = (0..n).map(|i| tmp.path().join(format!("n{i}"))).collect();
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut nodes = Nodes {
            url: etcd.url(),
            dirs,
            ports,
            servers: Vec::new(),
            _tmp: tmp,
        };
        nodes.servers = (0..n).map(|i| Some(nodes.spawn(i))).collect();
        nodes
    }

    fn spawn(&self, i: usize) -> Server {
        let cfg = write_config(&self.dirs[i], CONFIG);
        let listen = format!("127.0.0.1:{}", self.ports[i]);
        Server::start_on(
            &listen,
            &self.dirs[i],
            &["--config", &cfg, "--cluster", &self.url],
        )
    }

    fn addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.ports[i])
    }

    fn live(&self) -> Vec<usize> {
        (0..self.servers.len())
            .filter(|&i| self.servers[i].is_some())
            .collect()
    }
}

/// The node that is primary and holds the leader key, among `candidates`.
async fn primary_among(nodes: &Nodes, candidates: &[usize]) -> Option<usize> {
    for &i in candidates {
        let Ok(c) = spool::client::Client::connect(&nodes.addr(i)).await else {
            continue;
        };
        let Ok(s) = c.status().await else { continue };
        let leads = s.cluster.as_ref().is_some_and(|c| c.leader == c.node);
        if s.role == "primary" && leads {
            return Some(i);
        }
    }
    None
}

async fn wait_primary(nodes: &Nodes, candidates: &[usize], limit: Duration) -> usize {
    wait_until("a primary is elected", limit, || {
        primary_among(nodes, candidates)
    })
    .await
}

/// Semi-sync (k = 1) appends of `tag-i` to the node at `addr`; the acked (offset, value).
async fn write_acked(addr: &str, tag: &str, n: usize) -> Vec<(u64, String)> {
    let c = client(addr).await;
    let mut acked = Vec::new();
    for i in 0..n {
        let v: &'static str = Box::leak(format!("{tag}-{i}").into_boxed_str());
        if let Ok(r) = c.append_with(semi_sync(LOG, v, 1)).await {
            acked.push((r.first_offset, v.to_owned()));
        }
    }
    acked
}

/// Every acked record is at its offset with its bytes on the node at `addr`.
async fn assert_holds(addr: &str, acked: &[(u64, String)]) {
    let c = client(addr).await;
    for (off, v) in acked {
        let r = c.read(LOG, *off, 1).await.unwrap();
        let got = r.records.first().map(|r| r.value.clone());
        assert_eq!(
            got.as_deref(),
            Some(v.as_bytes()),
            "acked record {v} at {off} missing on the new primary {addr}"
        );
    }
}

/// The first write a node other than `old` acknowledges after the kill: (node, time).
async fn first_ack_elsewhere(nodes: &Nodes, old: usize, since: Instant) -> (usize, Duration) {
    let others: Vec<usize> = nodes.live().into_iter().filter(|&i| i != old).collect();
    wait_until(
        "a write is acked after failover",
        Duration::from_secs(20),
        || async {
            let p = primary_among(nodes, &others).await?;
            let c = spool::client::Client::connect(&nodes.addr(p)).await.ok()?;
            c.append_with(semi_sync(LOG, "after", 1)).await.ok()?;
            Some((p, since.elapsed()))
        },
    )
    .await
}

#[test]
fn a_killed_primary_is_replaced_without_losing_a_semi_sync_ack() {
    let Some(bin) = etcd_bin("a_killed_primary_is_replaced") else {
        return;
    };
    let etcd = Etcd::start(&bin);
    let mut nodes = Nodes::start(&etcd, 3);
    run(120, async {
        let p = wait_primary(&nodes, &[0, 1, 2], Duration::from_secs(30)).await;
        let c = client(&nodes.addr(p)).await;
        c.create_log(LOG, None).await.unwrap();
        common::wait_connected(&nodes.addr(p), 2).await;
        let mut acked = write_acked(&nodes.addr(p), "before", 200).await;
        assert_eq!(acked.len(), 200, "every write before the fault is acked");

        nodes.servers[p].take().unwrap().kill9();
        let killed = Instant::now();
        let (q, took) = first_ack_elsewhere(&nodes, p, killed).await;
        eprintln!("failover: node {p} killed, node {q} acked a write after {took:?}");
        acked.extend(write_acked(&nodes.addr(q), "after", 100).await);
        assert_holds(&nodes.addr(q), &acked).await;

        // The old primary comes back and follows the new one.
        nodes.servers[p] = Some(nodes.spawn(p));
        let end = c_end(&nodes.addr(q)).await;
        common::reach_end(&nodes.addr(p), LOG, end).await;
        let s = client(&nodes.addr(p)).await.status().await.unwrap();
        assert_eq!(s.role, "replica", "the old primary rejoins as a replica");
    });
    let q_dir = nodes.dirs.clone();
    let digests: Vec<_> = nodes
        .servers
        .iter_mut()
        .zip(&q_dir)
        .map(|(s, dir)| {
            s.take().unwrap().stop();
            common::digests(dir)
        })
        .collect();
    assert!(
        digests.windows(2).all(|w| w[0] == w[1]),
        "nodes end identical: {digests:?}"
    );
}

async fn c_end(addr: &str) -> u64 {
    let info: pb::LogInfo = common::describe(addr, LOG).await;
    info.end_offset
}
