//! Automatic failover on a real etcd: three nodes with `--cluster`, writers recording every
//! ack, a fault to the primary; afterwards every acked record is on the new primary at its
//! offset with its bytes, no two nodes acked in one epoch, and the nodes end identical.
//! Each node reaches etcd, and its peers reach it, through a proxy a test can cut.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::etcd::{etcd_bin, url_of, Etcd};
use common::proxy::Proxy;
use common::{client, free_port, run, wait_until, write_config, Server};
use futures::StreamExt;
use spool::client::{Client, Position};
use spool_proto::v1 as pb;

const LOG: &str = "f";
const ELECTION_MAX: Duration = Duration::from_secs(20);
/// Every node a synchronous replica when it follows: sync writes wait for all of them.
const SYNC_REPLICAS: &str = "[replication]\nsync_replica = true\n";

/// Three nodes on fixed ports (a restarted node comes back at its address), each behind
/// two proxies: to etcd, and from its peers.
struct Nodes {
    etcd_url: String,
    /// More `[cluster]` settings for every node.
    extra: String,
    dirs: Vec<PathBuf>,
    ports: Vec<u16>,
    /// Each node's Prometheus endpoint.
    metrics: Vec<u16>,
    to_etcd: Vec<Proxy>,
    from_peers: Vec<Proxy>,
    servers: Vec<Option<Server>>,
    _tmp: tempfile::TempDir,
}

impl Nodes {
    fn start(etcd_url: &str, n: usize) -> Nodes {
        Nodes::start_with(etcd_url, n, "")
    }

    fn start_with(etcd_url: &str, n: usize, extra: &str) -> Nodes {
        let tmp = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let first_etcd = etcd_url
            .trim_start_matches("etcd://")
            .split(',')
            .next()
            .unwrap();
        let mut nodes = Nodes {
            etcd_url: etcd_url.to_owned(),
            extra: extra.to_owned(),
            dirs: (0..n).map(|i| tmp.path().join(format!("n{i}"))).collect(),
            to_etcd: (0..n).map(|_| Proxy::start(first_etcd)).collect(),
            from_peers: ports
                .iter()
                .map(|p| Proxy::start(&format!("127.0.0.1:{p}")))
                .collect(),
            ports,
            metrics: (0..n).map(|_| free_port()).collect(),
            servers: Vec::new(),
            _tmp: tmp,
        };
        nodes.servers = (0..n).map(|i| Some(nodes.spawn(i))).collect();
        nodes
    }

    /// Node `i` with a 2 s lease, reaching etcd through its proxy (the other members, if
    /// any, directly), advertising its peers' proxy.
    fn spawn(&self, i: usize) -> Server {
        let config = format!(
            "[cluster]\nlease_ttl_ms = 2000\nadvertise = \"{}\"\nnode_name = \"n{i}\"\n{}",
            self.from_peers[i].addr(),
            self.extra
        );
        let cfg = write_config(&self.dirs[i], &config);
        let others = self
            .etcd_url
            .trim_start_matches("etcd://")
            .split(',')
            .skip(1);
        let url = std::iter::once(self.to_etcd[i].addr())
            .chain(others.map(str::to_owned))
            .collect::<Vec<_>>()
            .join(",");
        let listen = format!("127.0.0.1:{}", self.ports[i]);
        let cluster = format!("etcd://{url}");
        let metrics = format!("127.0.0.1:{}", self.metrics[i]);
        let flags = ["--config", &cfg, "--cluster", &cluster];
        let flags = [&flags[..], &["--metrics-listen", &metrics]].concat();
        Server::start_on(&listen, &self.dirs[i], &flags)
    }

    fn addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.ports[i])
    }

    fn others(&self, i: usize) -> Vec<usize> {
        (0..self.servers.len())
            .filter(|&j| j != i && self.servers[j].is_some())
            .collect()
    }

    fn signal(&self, i: usize, sig: i32) {
        common::signal(&self.servers[i].as_ref().unwrap().child, sig);
    }

    /// Stop every node (replicas first: a primary stopping first would hand over), and
    /// return each one's `spool check` digests.
    fn stop_all(mut self, primary: usize) -> Vec<Vec<(String, u64, u64, String)>> {
        // Semi-sync k = 1 leaves one replica behind: every node catches up first.
        let live: Vec<usize> = (0..self.servers.len())
            .filter(|&i| self.servers[i].is_some())
            .collect();
        let addrs: Vec<String> = live.iter().map(|&i| self.addr(i)).collect();
        let primary_addr = self.addr(primary);
        run(60, async move {
            let end = common::describe(&primary_addr, LOG).await.end_offset;
            for a in &addrs {
                common::reach_end(a, LOG, end).await;
            }
        });
        let mut order = self.others(primary);
        order.push(primary);
        for &i in &order {
            self.servers[i].take().unwrap().stop();
        }
        self.dirs.iter().map(|d| common::digests(d)).collect()
    }
}

/// One semi-sync append acked by the node at `addr` itself (no redirect followed).
async fn probe(addr: &str) -> Option<()> {
    let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .ok()?
        .connect()
        .await
        .ok()?;
    let mut log = pb::log_client::LogClient::new(ch);
    log.append(request("probe", pb::AckMode::SemiSync))
        .await
        .ok()?;
    Some(())
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

async fn wait_primary(nodes: &Nodes, candidates: &[usize]) -> usize {
    wait_until("a primary is elected", ELECTION_MAX, || {
        primary_among(nodes, candidates)
    })
    .await
}

/// Every ack: (node, epoch) -> (offset -> value).
#[derive(Default)]
struct Acks(BTreeMap<(usize, u64), BTreeMap<u64, String>>);

impl Acks {
    /// Appends (`ack`, one record each) of `tag-i` to node `i`, recording the acked ones.
    async fn write(&mut self, nodes: &Nodes, i: usize, tag: &str, n: usize, ack: pb::AckMode) {
        self.write_k(nodes, i, tag, n, ack, 1).await
    }

    /// As [`Acks::write`], semi-sync needing `k` replicas.
    async fn write_k(
        &mut self,
        nodes: &Nodes,
        i: usize,
        tag: &str,
        n: usize,
        ack: pb::AckMode,
        k: u32,
    ) {
        let c = client(&nodes.addr(i)).await;
        for j in 0..n {
            let v = format!("{tag}-{j}");
            let req = pb::AppendRequest {
                semi_sync_replicas: k,
                ..request(&v, ack)
            };
            if let Ok(r) = c.append_with(req).await {
                self.0
                    .entry((i, r.epoch))
                    .or_default()
                    .insert(r.first_offset, v);
            }
        }
    }

    fn count(&self) -> usize {
        self.0.values().map(BTreeMap::len).sum()
    }

    /// No two nodes acknowledged writes in the same epoch.
    fn assert_one_writer_per_epoch(&self) {
        let mut by_epoch: BTreeMap<u64, usize> = BTreeMap::new();
        for &(node, epoch) in self.0.keys() {
            let first = *by_epoch.entry(epoch).or_insert(node);
            assert_eq!(
                first, node,
                "nodes {first} and {node} both acked in epoch {epoch}"
            );
        }
    }

    /// After a failover to node `q`: every acked record is on it, and no two nodes acked
    /// in one epoch.
    async fn assert_kept_by(&self, nodes: &Nodes, q: usize) {
        self.assert_held_by(nodes, q).await;
        self.assert_one_writer_per_epoch();
    }

    /// Every acked record is at its offset with its bytes on node `i`.
    async fn assert_held_by(&self, nodes: &Nodes, i: usize) {
        let c = client(&nodes.addr(i)).await;
        for (off, v) in self.0.values().flatten() {
            let r = c.read(LOG, *off, 1).await.unwrap();
            let got = r.records.first().map(|r| r.value.clone());
            assert_eq!(
                got.as_deref(),
                Some(v.as_bytes()),
                "acked {v} at {off} not on node {i}"
            );
        }
    }
}

impl Acks {
    /// Add acks recorded elsewhere (node, epoch, offset, value).
    fn add(&mut self, acked: Vec<Acked>) {
        for (node, epoch, off, v) in acked {
            self.0.entry((node, epoch)).or_default().insert(off, v);
        }
    }

    /// No acked record is among those node `i` cut (kept in its quarantine).
    async fn assert_none_quarantined(&self, nodes: &Nodes, i: usize) {
        let cut = quarantined(nodes, i).await;
        for (off, v) in self.0.values().flatten() {
            assert!(
                !cut.values().any(|q| q == v),
                "acked {v} at {off} was cut by node {i}"
            );
        }
    }
}

/// One ack: (the node that answered, epoch, offset, value).
type Acked = (usize, u64, u64, String);

fn index_of(ports: &[u16], addr: &str) -> usize {
    let port = addr.trim_end_matches('/').rsplit(':').next().unwrap();
    let port: u16 = port.parse().unwrap();
    ports.iter().position(|&p| p == port).unwrap()
}

/// A writer running through a fault: one record per append with `ack`, on a client given
/// every node's address (it follows the failover), until stopped; every ack recorded.
struct Through {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Acked>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Through {
    fn start(nodes: &Nodes, tag: &'static str, ack: pb::AckMode) -> Through {
        let addrs: Vec<String> = (0..nodes.ports.len()).map(|i| nodes.addr(i)).collect();
        let (addrs, ports) = (addrs.join(","), nodes.ports.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (s, a) = (stop.clone(), acked.clone());
        let task = tokio::spawn(async move {
            let c = Client::connect(&addrs).await.unwrap();
            for j in 0.. {
                if s.load(Ordering::Acquire) {
                    break;
                }
                let v = format!("{tag}-{j}");
                match c.append_with(request(&v, ack)).await {
                    Ok(r) => {
                        let node = index_of(&ports, &c.addr());
                        a.lock().unwrap().push((node, r.epoch, r.first_offset, v));
                    }
                    // Paced: some refusals come at once (no primary, too few replicas).
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        });
        Through { stop, acked, task }
    }

    /// Wait until this writer has `n` acks in epochs `epoch_ok` accepts.
    async fn wait_acked(&self, what: &str, n: usize, epoch_ok: impl Fn(u64) -> bool) {
        wait_until(what, ELECTION_MAX, || async {
            let acked = self.acked.lock().unwrap();
            (acked.iter().filter(|a| epoch_ok(a.1)).count() >= n).then_some(())
        })
        .await
    }

    async fn stop(self) -> Vec<Acked> {
        self.stop.store(true, Ordering::Release);
        self.task.await.unwrap();
        Arc::try_unwrap(self.acked).unwrap().into_inner().unwrap()
    }
}

/// Every record node `i` holds in quarantine: offset -> value.
async fn quarantined(nodes: &Nodes, i: usize) -> BTreeMap<u64, String> {
    let c = client(&nodes.addr(i)).await;
    let mut out = BTreeMap::new();
    for tail in c.quarantine_list(LOG).await.unwrap() {
        let mut from = tail.first_offset;
        while from < tail.next_offset {
            let req = pb::QuarantineReadRequest {
                log: LOG.into(),
                first_offset: tail.first_offset,
                from_offset: from,
                max_records: 0,
            };
            let r = c.quarantine_read(req).await.unwrap();
            for rec in r.records {
                out.insert(rec.offset, String::from_utf8_lossy(&rec.value).into_owned());
            }
            assert!(r.next_offset > from, "a quarantine read moves on");
            from = r.next_offset;
        }
    }
    out
}

fn request(value: &str, ack: pb::AckMode) -> pb::AppendRequest {
    pb::AppendRequest {
        log: LOG.into(),
        records: vec![bytes::Bytes::from(value.to_owned())],
        ack: ack as i32,
        semi_sync_replicas: 1,
        ..Default::default()
    }
}

/// The first write another node acknowledges after `since`: (node, time).
async fn first_ack_elsewhere(nodes: &Nodes, old: usize, since: Instant) -> (usize, Duration) {
    let others = nodes.others(old);
    wait_until("a write is acked after failover", ELECTION_MAX, || async {
        let p = primary_among(nodes, &others).await?;
        probe(&nodes.addr(p)).await?;
        Some((p, since.elapsed()))
    })
    .await
}

/// A cluster with log `f` and both replicas attached; the primary's index.
async fn ready(nodes: &Nodes) -> usize {
    let p = wait_primary(nodes, &[0, 1, 2]).await;
    client(&nodes.addr(p))
        .await
        .create_log(LOG, None)
        .await
        .unwrap();
    common::wait_connected(&nodes.addr(p), 2).await;
    p
}

/// Node `old` rejoins (restarted or resumed) and catches up with the primary `new`: it
/// is a replica, and its log ends where the primary's does, in the same epoch (an end
/// reached by a tail it has yet to cut is not caught up).
async fn rejoined(nodes: &Nodes, old: usize, new: usize) {
    let what = format!("node {old} follows as a replica, caught up");
    let (o, n) = (
        client(&nodes.addr(old)).await,
        client(&nodes.addr(new)).await,
    );
    wait_until(&what, ELECTION_MAX, || async {
        let s = o.status().await.ok()?;
        let ours = last_of(&o).await?;
        (s.role == "replica" && ours == last_of(&n).await?).then_some(())
    })
    .await;
}

/// Where a node's log ends, and the epoch of its last record.
async fn last_of(c: &Client) -> Option<(u64, u64)> {
    let end = c.describe_log(LOG).await.ok()?.end_offset;
    let r = c.read(LOG, end.checked_sub(1)?, 1).await.ok()?;
    Some((end, r.last_epoch))
}

fn assert_identical(digests: &[Vec<(String, u64, u64, String)>]) {
    assert!(
        digests.windows(2).all(|w| w[0] == w[1]),
        "nodes end identical: {digests:?}"
    );
}

/// Semi-sync and sync writers run through a kill -9 of the primary, on clients that
/// follow the failover: every ack either gave is on the new primary.
#[test]
fn a_killed_primary_is_replaced_without_losing_a_semi_sync_ack() {
    let Some(bin) = etcd_bin("a_killed_primary_is_replaced") else {
        return;
    };
    let etcd = Etcd::start(&bin);
    let mut nodes = Nodes::start_with(&etcd.url(), 3, SYNC_REPLICAS);
    let q = run(120, async {
        let p = ready(&nodes).await;
        let mut acks = Acks::default();
        acks.write(&nodes, p, "before", 200, pb::AckMode::SemiSync)
            .await;
        acks.write(&nodes, p, "before-sync", 50, pb::AckMode::Sync)
            .await;
        assert_eq!(acks.count(), 250, "every write before the fault is acked");
        let epoch = client(&nodes.addr(p)).await.status().await.unwrap().epoch;
        let writers = [
            Through::start(&nodes, "semi", pb::AckMode::SemiSync),
            Through::start(&nodes, "sync", pb::AckMode::Sync),
        ];
        for w in &writers {
            w.wait_acked("a writer acks before the fault", 50, |e| e == epoch)
                .await;
        }
        nodes.servers[p].take().unwrap().kill9();
        let (q, took) = first_ack_elsewhere(&nodes, p, Instant::now()).await;
        eprintln!("failover: node {p} killed, node {q} acked a write after {took:?}");
        for w in &writers {
            w.wait_acked("a writer acks after the failover", 50, |e| e > epoch)
                .await;
        }
        for w in writers {
            let acked = w.stop().await;
            let after = acked.iter().filter(|a| a.1 > epoch).count();
            eprintln!(
                "a writer through the fault: {} acks, {after} after it",
                acked.len()
            );
            acks.add(acked);
        }
        acks.write(&nodes, q, "after", 100, pb::AckMode::SemiSync)
            .await;
        acks.assert_kept_by(&nodes, q).await;
        nodes.servers[p] = Some(nodes.spawn(p));
        rejoined(&nodes, p, q).await;
        acks.assert_none_quarantined(&nodes, p).await;
        q
    });
    assert_identical(&nodes.stop_all(q));
}

/// SIGSTOP past the lease, then SIGCONT: the old primary (a zombie) acknowledges nothing
/// sent to it meanwhile and follows the new primary. What it cuts on rejoining (records
/// it wrote that no replica had: often none, as it stopped between writes) goes to its
/// quarantine, and no acknowledged record is among them.
#[test]
fn a_paused_primary_acks_nothing_after_the_others_moved_on() {
    let Some(bin) = etcd_bin("a_paused_primary_acks_nothing") else {
        return;
    };
    let etcd = Etcd::start(&bin);
    let nodes = Nodes::start(&etcd.url(), 3);
    let q = run(120, async {
        let p = ready(&nodes).await;
        let mut acks = Acks::default();
        acks.write(&nodes, p, "before", 50, pb::AckMode::SemiSync)
            .await;
        let zombie_epoch = client(&nodes.addr(p)).await.status().await.unwrap().epoch;
        // Connected before the pause: a stopped node cannot complete a handshake.
        let conns = [client(&nodes.addr(p)).await, client(&nodes.addr(p)).await];
        nodes.signal(p, libc::SIGSTOP);
        let zombie_writes = tokio::spawn(zombie_writer(conns));
        let (q, took) = first_ack_elsewhere(&nodes, p, Instant::now()).await;
        eprintln!("pause: node {p} stopped, node {q} acked after {took:?}");
        acks.write(&nodes, q, "after", 50, pb::AckMode::SemiSync)
            .await;
        nodes.signal(p, libc::SIGCONT);
        // An answer is an error, or an ack in a later epoch: the client followed the
        // zombie's redirect to the new primary (which must then hold the record).
        for (value, answer) in zombie_writes.await.unwrap() {
            if let Ok(r) = answer {
                assert!(
                    r.epoch > zombie_epoch,
                    "the zombie acked {value} in epoch {}",
                    r.epoch
                );
                acks.0
                    .entry((q, r.epoch))
                    .or_default()
                    .insert(r.first_offset, value);
            }
        }
        rejoined(&nodes, p, q).await;
        acks.assert_kept_by(&nodes, q).await;
        acks.assert_none_quarantined(&nodes, p).await;
        q
    });
    assert_identical(&nodes.stop_all(q));
}

/// Appends sent to a stopped node: each one's answer once it runs again (async and
/// semi-sync, on separate connections, so neither waits behind the other).
async fn zombie_writer(
    conns: [spool::client::Client; 2],
) -> Vec<(String, Result<pb::AppendResponse, String>)> {
    let modes = [pb::AckMode::Async, pb::AckMode::SemiSync];
    let calls = conns
        .into_iter()
        .zip(modes)
        .enumerate()
        .map(|(k, (c, ack))| async move {
            let value = format!("zombie-{k}");
            let answer = c.append_with(request(&value, ack)).await;
            (value, answer.map_err(|e| e.to_string()))
        });
    futures::future::join_all(calls).await
}

/// The primary loses etcd but not its peers: it stops acknowledging before its lease can
/// expire, another node leads, and once etcd is back the old one follows.
#[test]
fn a_primary_cut_off_from_etcd_stops_acking_and_follows() {
    cut_off_primary("a_primary_cut_off_from_etcd", false);
}

/// The primary loses etcd and its peers at once: the others elect a new primary; once
/// the network heals the old one follows and what it held alone is cut (kept aside).
#[test]
fn a_primary_cut_off_from_everyone_rejoins_as_a_replica() {
    cut_off_primary("a_primary_cut_off_from_everyone", true);
}

/// Cut the primary off from etcd (and from its peers if `peers_too`), write through the
/// new primary, heal, check. The old primary acks async writes alone until its lease
/// lapses: each is then on the new primary or, cut, in the old one's quarantine and
/// counted as an async ack lost. Cut off from everyone, it has some such, and a reader
/// of its log that took them is told of the cut.
fn cut_off_primary(test: &str, peers_too: bool) {
    let Some(bin) = etcd_bin(test) else {
        return;
    };
    let etcd = Etcd::start(&bin);
    let nodes = Nodes::start(&etcd.url(), 3);
    let q = run(120, async {
        let p = ready(&nodes).await;
        let mut acks = Acks::default();
        acks.write(&nodes, p, "before", 50, pb::AckMode::SemiSync)
            .await;
        // Reading the old primary from before the fault, on a connection of its own.
        let reader = client(&nodes.addr(p)).await;
        let mut sub = reader.subscribe_at(LOG, Position::at(0)).await.unwrap();
        nodes.to_etcd[p].cut();
        if peers_too {
            nodes.from_peers[p].cut();
        }
        let alone = acked_alone(&nodes, p).await;
        let (q, took) = first_ack_elsewhere(&nodes, p, Instant::now()).await;
        eprintln!(
            "{test}: node {q} acked after {took:?}; {} async acks alone",
            alone.len()
        );
        // Meanwhile the old primary, still reachable by this test, acks nothing.
        acks.write(&nodes, p, "cut-off", 5, pb::AckMode::Async)
            .await;
        assert_eq!(acks.count(), 50, "the cut-off primary acked nothing more");
        acks.write(&nodes, q, "after", 50, pb::AckMode::SemiSync)
            .await;
        // Everything it wrote (the last write may not have been acked).
        let read_to = common::describe(&nodes.addr(p), LOG).await.end_offset;
        let seen = take_until(&mut sub, read_to).await;
        nodes.to_etcd[p].restore();
        nodes.from_peers[p].restore();
        rejoined(&nodes, p, q).await;
        acks.assert_kept_by(&nodes, q).await;
        acks.assert_none_quarantined(&nodes, p).await;
        let lost = async_acks_lost(&nodes, p, q, &alone).await;
        if peers_too {
            assert!(lost > 0, "acked alone, replicated nowhere: cut");
            let cut = quarantined(&nodes, p).await.into_keys().next().unwrap();
            reader_is_told_of_the_cut(&reader, sub, seen, cut).await;
        }
        q
    });
    assert_identical(&nodes.stop_all(q));
}

/// Async appends to node `p` alone (a client of its own) until it refuses one: its lease
/// lapsed. Every ack: (p, epoch, offset, value).
async fn acked_alone(nodes: &Nodes, p: usize) -> Vec<Acked> {
    let c = client(&nodes.addr(p)).await;
    let mut acked = Vec::new();
    let until = Instant::now() + ELECTION_MAX;
    for j in 0.. {
        assert!(Instant::now() < until, "node {p} still acks alone");
        let v = format!("alone-{j}");
        match c.append_with(request(&v, pb::AckMode::Async)).await {
            Ok(r) => acked.push((p, r.epoch, r.first_offset, v)),
            Err(_) => break,
        }
    }
    acked
}

/// Each async ack `alone` of node `p` is on `q` at its offset, or was cut: in `p`'s
/// quarantine, and counted in its metric of async acks lost. Returns how many were cut.
async fn async_acks_lost(nodes: &Nodes, p: usize, q: usize, alone: &[Acked]) -> u64 {
    let (c, cut) = (client(&nodes.addr(q)).await, quarantined(nodes, p).await);
    let mut lost = 0;
    for (_, _, off, v) in alone {
        // Past the new primary's end (OUT_OF_RANGE), or another record there: cut.
        let r = c.read(LOG, *off, 1).await.ok();
        let held = r.and_then(|r| r.records.into_iter().next());
        if held.is_some_and(|r| r.value == v.as_bytes()) {
            continue;
        }
        assert_eq!(
            cut.get(off),
            Some(v),
            "async ack {v} at {off}: not on {q}, nor cut"
        );
        lost += 1;
    }
    if lost > 0 {
        let name = "spool_failover_cut_async_acked_records_total";
        let body = common::wait_metrics(nodes.metrics[p], &[name]).await;
        let line = body.lines().find(|l| l.starts_with(name)).unwrap();
        assert_eq!(
            line,
            format!("{name} {lost}"),
            "node {p} counts what it lost"
        );
    }
    lost
}

/// Records from `sub` until one at `to - 1`; returns the position past it.
async fn take_until(sub: &mut spool::client::Subscription, to: u64) -> Position {
    let took = tokio::time::timeout(ELECTION_MAX, async {
        while sub.position().is_none_or(|p| p.offset < to) {
            sub.next().await.unwrap().unwrap();
        }
    });
    took.await.expect("the reader takes every record acked");
    sub.position().unwrap()
}

/// A subscription open on the node when it cut its log at `cut` (below what it had
/// delivered, `seen`) ends with ABORTED; subscribing or reading on from `seen`, with the
/// epoch it was in, is refused with FAILED_PRECONDITION; both name `cut` as the log's
/// end to go on from.
async fn reader_is_told_of_the_cut(
    reader: &Client,
    mut sub: spool::client::Subscription,
    seen: Position,
    cut: u64,
) {
    let ended = tokio::time::timeout(ELECTION_MAX, sub.next()).await;
    let err = ended.expect("the stream ends").unwrap().unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::Aborted), "{err}");
    assert_eq!(err.log_end(), Some(cut), "{err}");
    let err = reader.subscribe_at(LOG, seen).await.err().unwrap();
    assert_eq!(err.code(), Some(tonic::Code::FailedPrecondition), "{err}");
    assert_eq!(err.log_end(), Some(cut), "{err}");
    let err = reader.read_at(LOG, seen, 10).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::FailedPrecondition), "{err}");
    assert_eq!(err.log_end(), Some(cut), "{err}");
    // From there on, the log is the new primary's.
    let r = reader.read_at(LOG, Position::at(cut), 1).await.unwrap();
    assert!(r.records.first().is_some_and(|r| r.offset == cut));
}

/// etcd restarts under a running cluster: the primary keeps (or regains) the lead, writes
/// go on afterwards, nothing acked is lost.
#[test]
fn an_etcd_restart_loses_nothing() {
    let Some(bin) = etcd_bin("an_etcd_restart_loses_nothing") else {
        return;
    };
    let mut etcd = Etcd::start(&bin);
    let nodes = Nodes::start(&etcd.url(), 3);
    let q = run(120, async {
        let p = ready(&nodes).await;
        let mut acks = Acks::default();
        acks.write(&nodes, p, "before", 50, pb::AckMode::SemiSync)
            .await;
        etcd.restart();
        let (q, took) = first_ack_after_restart(&nodes).await;
        eprintln!("etcd restarted: node {q} (was {p}) acked after {took:?}");
        acks.write(&nodes, q, "after", 50, pb::AckMode::SemiSync)
            .await;
        acks.assert_kept_by(&nodes, q).await;
        q
    });
    assert_identical(&nodes.stop_all(q));
}

async fn first_ack_after_restart(nodes: &Nodes) -> (usize, Duration) {
    first_ack_after(nodes, Instant::now()).await
}

/// The first write any node acknowledges after `since`: (node, time).
async fn first_ack_after(nodes: &Nodes, since: Instant) -> (usize, Duration) {
    wait_until("a write is acked", ELECTION_MAX, || async {
        let p = primary_among(nodes, &[0, 1, 2]).await?;
        probe(&nodes.addr(p)).await?;
        Some((p, since.elapsed()))
    })
    .await
}

/// A three-member etcd loses the member the primary talks to, and then the primary dies:
/// the nodes go on through the other members.
#[test]
fn one_etcd_member_down_does_not_stop_failover() {
    let Some(bin) = etcd_bin("one_etcd_member_down") else {
        return;
    };
    let mut members = Etcd::start_members(&bin, 3);
    let mut nodes = Nodes::start(&url_of(&members), 3);
    let q = run(150, async {
        let p = ready(&nodes).await;
        let mut acks = Acks::default();
        acks.write(&nodes, p, "before", 50, pb::AckMode::SemiSync)
            .await;
        members[0].kill();
        acks.write(&nodes, p, "one-down", 50, pb::AckMode::SemiSync)
            .await;
        nodes.servers[p].take().unwrap().kill9();
        let (q, took) = first_ack_elsewhere(&nodes, p, Instant::now()).await;
        eprintln!("etcd member down, primary killed: node {q} acked after {took:?}");
        acks.assert_kept_by(&nodes, q).await;
        nodes.servers[p] = Some(nodes.spawn(p));
        rejoined(&nodes, p, q).await;
        q
    });
    assert_identical(&nodes.stop_all(q));
}

/// A planned switchover: writes pause briefly, the named node leads, nothing is lost.
#[test]
fn a_switchover_hands_over_without_losing_a_write() {
    let Some(bin) = etcd_bin("a_switchover_hands_over") else {
        return;
    };
    let etcd = Etcd::start(&bin);
    let nodes = Nodes::start(&etcd.url(), 3);
    let q = run(120, async {
        let p = ready(&nodes).await;
        let q = nodes.others(p)[0];
        let mut acks = Acks::default();
        acks.write(&nodes, p, "before", 50, pb::AckMode::SemiSync)
            .await;
        let since = Instant::now();
        let out = nodes.servers[p].as_ref().unwrap().cli(&[
            "admin",
            "switchover",
            "--to",
            &format!("n{q}"),
            "--yes",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (new, took) = first_ack_after(&nodes, since).await;
        assert_eq!(new, q, "the named node leads");
        eprintln!(
            "switchover: {} ; first ack on n{q} after {took:?}",
            common::stdout(&out).trim()
        );
        acks.write(&nodes, q, "after", 50, pb::AckMode::SemiSync)
            .await;
        rejoined(&nodes, p, q).await;
        acks.assert_kept_by(&nodes, q).await;
        q
    });
    assert_identical(&nodes.stop_all(q));
}

/// With automatic failover off, a dead primary is replaced only when the operator names
/// the next one.
#[test]
fn with_failover_off_the_operator_names_the_next_primary() {
    let Some(bin) = etcd_bin("with_failover_off") else {
        return;
    };
    let etcd = Etcd::start(&bin);
    let mut nodes = Nodes::start_with(&etcd.url(), 3, "failover = false\n");
    let q = run(120, async {
        let p = ready(&nodes).await;
        let mut acks = Acks::default();
        acks.write(&nodes, p, "before", 50, pb::AckMode::SemiSync)
            .await;
        nodes.servers[p].take().unwrap().kill9();
        let q = nodes.others(p)[0];
        wait_until("the replicas say failover is off", ELECTION_MAX, || async {
            let s = client(&nodes.addr(q)).await.status().await.ok()?;
            s.cluster?.note.contains("failover is off").then_some(())
        })
        .await;
        let out = nodes.servers[q].as_ref().unwrap().cli(&[
            "admin",
            "failover",
            "--to",
            &format!("n{q}"),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(wait_primary(&nodes, &nodes.others(p)).await, q);
        acks.assert_held_by(&nodes, q).await;
        nodes.servers[p] = Some(nodes.spawn(p));
        rejoined(&nodes, p, q).await;
        q
    });
    assert_identical(&nodes.stop_all(q));
}

/// A replica dies while the primary's replacement is being elected (the dead primary's
/// lease has expired, no leader yet): the survivor takes over with every record acked by
/// both replicas (semi-sync k = 2).
#[test]
fn a_replica_killed_during_failover_loses_no_ack() {
    let Some(bin) = etcd_bin("a_replica_killed_during_failover") else {
        return;
    };
    let etcd = Etcd::start(&bin);
    let mut nodes = Nodes::start(&etcd.url(), 3);
    let q = run(150, async {
        let p = ready(&nodes).await;
        let mut acks = Acks::default();
        acks.write_k(&nodes, p, "before", 100, pb::AckMode::SemiSync, 2)
            .await;
        let r = nodes.others(p)[1];
        let rc = client(&nodes.addr(r)).await;
        let old = rc.status().await.unwrap().cluster.unwrap().leader;
        nodes.servers[p].take().unwrap().kill9();
        // The election begins when the leader key's lease expires: r no longer sees p
        // lead. (It may see no leader only briefly: the winner tells it at once.)
        wait_until("the leader key expires", ELECTION_MAX, || async {
            let c = rc.status().await.ok()?.cluster?;
            (c.leader != old).then_some(())
        })
        .await;
        nodes.servers[r].take().unwrap().kill9();
        let q = wait_primary(&nodes, &nodes.others(p)).await;
        eprintln!("primary {p} and replica {r} killed: node {q} leads");
        acks.assert_kept_by(&nodes, q).await;
        nodes.servers[p] = Some(nodes.spawn(p));
        nodes.servers[r] = Some(nodes.spawn(r));
        rejoined(&nodes, p, q).await;
        rejoined(&nodes, r, q).await;
        q
    });
    assert_identical(&nodes.stop_all(q));
}

/// A peer claiming an epoch the coordinator never began does not fence the primary.
#[test]
fn a_claimed_epoch_past_the_coordinators_fences_nothing() {
    let Some(bin) = etcd_bin("a_claimed_epoch_past_the_coordinators") else {
        return;
    };
    let etcd = Etcd::start(&bin);
    let nodes = Nodes::start(&etcd.url(), 3);
    let p = run(60, async {
        let p = ready(&nodes).await;
        let s = client(&nodes.addr(p)).await.status().await.unwrap();
        let hello = pb::ReplicaHello {
            replica_id: format!("n{}", nodes.others(p)[0]),
            node_epoch: 1 << 40,
            cluster_id: s.cluster_id,
            ..Default::default()
        };
        let first = pb::ReplicaMessage {
            msg: Some(pb::replica_message::Msg::Hello(hello)),
        };
        let ch = tonic::transport::Channel::from_shared(format!("http://{}", nodes.addr(p)))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut rep = pb::replication_client::ReplicationClient::new(ch);
        let stranger = pb::ReplicaHello {
            replica_id: "stranger".into(),
            ..hello_of(&first)
        };
        let msg = pb::ReplicaMessage {
            msg: Some(pb::replica_message::Msg::Hello(stranger)),
        };
        let refused = rep
            .replicate(futures::stream::iter([msg]))
            .await
            .unwrap_err();
        assert!(refused.message().contains("not a member"), "{refused:?}");
        let refused = rep
            .replicate(futures::stream::iter([first]))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        assert!(refused.message().contains("never begun"), "{refused:?}");
        let mut acks = Acks::default();
        acks.write(&nodes, p, "still", 5, pb::AckMode::SemiSync)
            .await;
        assert_eq!(acks.count(), 5, "the primary still takes writes");
        assert!(!client(&nodes.addr(p)).await.status().await.unwrap().fenced);
        p
    });
    assert_identical(&nodes.stop_all(p));
}

/// etcd over mutual TLS: a node with `[cluster] etcd_ca/etcd_cert/etcd_key` joins and
/// leads; one without them cannot reach etcd and says so.
#[test]
fn a_node_reaches_etcd_over_tls() {
    let Some(bin) = etcd_bin("a_node_reaches_etcd_over_tls") else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let ca = spool::tls::dev_certs::DevCa::new("etcd-ca").unwrap();
    ca.write(&d.path().join("ca.pem")).unwrap();
    let issue = |name: &str| {
        let issued = ca.issue(name, &["127.0.0.1", "localhost"]).unwrap();
        issued.write(d.path(), name).unwrap()
    };
    let (server, node) = (issue("etcd"), issue("node"));
    let etcd = Etcd::start_tls(&bin, &server.cert, &server.key, &d.path().join("ca.pem"));
    let url = format!("etcd://127.0.0.1:{}", etcd.client_port);
    let tls = format!(
        "[cluster]\netcd_ca = \"{}\"\netcd_cert = \"{}\"\netcd_key = \"{}\"\n",
        d.path().join("ca.pem").display(),
        node.cert.display(),
        node.key.display()
    );
    let n = Server::start_toml(&d.path().join("n"), &tls, &["--cluster", &url]);
    run(60, async {
        wait_until("the node leads over TLS to etcd", ELECTION_MAX, || async {
            let s = client(&n.addr).await.status().await.ok()?;
            let c = s.cluster?;
            (s.role == "primary" && c.leader == c.node).then_some(())
        })
        .await;
    });
    let plain = std::process::Command::new(common::spool_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--cluster",
            &url,
            "--data-dir",
        ])
        .arg(d.path().join("plain"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&plain.stderr);
    assert!(
        !plain.status.success() && err.contains("cannot reach etcd"),
        "{err}"
    );
}

fn hello_of(m: &pb::ReplicaMessage) -> pb::ReplicaHello {
    match &m.msg {
        Some(pb::replica_message::Msg::Hello(h)) => h.clone(),
        _ => unreachable!("a hello"),
    }
}
