//! A planned switchover as clients see it: once `admin switchover` returns, the old
//! primary no longer names itself the leader, so a client finding the primary by status
//! goes to the new one.

mod common;

use std::time::{Duration, Instant};

use common::cluster::EtcdNodes;
use common::etcd::{etcd_bin, Etcd};
use common::{cli, run, status, stdout, wait_until};

const CONFIG: &str = "[cluster]\nlease_ttl_ms = 2000\n";
/// A first election and two replicas attaching, on a loaded machine.
const SETTLE_MAX: Duration = Duration::from_secs(60);

/// The node that is primary and holds the leader key, once both others replicate from it.
async fn settled_primary(nodes: &EtcdNodes) -> usize {
    wait_until("a primary with two replicas", SETTLE_MAX, || async {
        for i in 0..3 {
            if settled(nodes, i).await {
                return Some(i);
            }
        }
        None
    })
    .await
}

/// Node `i` is primary, holds the leader key, and both others replicate from it.
async fn settled(nodes: &EtcdNodes, i: usize) -> bool {
    let s = status(&nodes.addr(i)).await;
    let leads = s.cluster.as_ref().is_some_and(|c| c.leader == c.node);
    let connected = s.replicas.iter().filter(|r| r.connected).count();
    s.role == "primary" && leads && connected == 2
}

#[test]
fn after_a_switchover_the_old_primary_no_longer_claims_the_lead() {
    let Some(bin) = etcd_bin("after_a_switchover_the_old_primary") else {
        return;
    };
    let etcd = Etcd::start(&bin);
    let nodes = EtcdNodes::start(&etcd, 3, CONFIG);
    run(120, async {
        let p = settled_primary(&nodes).await;
        let q = (p + 1) % 3;
        let name = |i: usize| {
            let addr = nodes.addr(i);
            async move { status(&addr).await.cluster.unwrap().node }
        };
        let (old, target) = (name(p).await, name(q).await);
        let out = cli(
            &nodes.addr(p),
            &["admin", "switchover", "--to", &target, "--yes"],
            None,
        );
        // It succeeded (stdout panics otherwise).
        stdout(&out);
        // At once: the key was deleted before the command returned.
        let c = status(&nodes.addr(p)).await.cluster.unwrap();
        assert_ne!(
            c.leader, old,
            "the old primary still names itself the leader"
        );
        wait_until("the target leads", SETTLE_MAX, || async {
            let c = status(&nodes.addr(p)).await.cluster?;
            (c.leader == target).then_some(())
        })
        .await;
    });
}

/// A long lease gives the agents a long tick (a third of the margin).
const LONG_TICK_CONFIG: &str = "[cluster]\nlease_ttl_ms = 30000\n";
const SWITCHOVERS: u32 = 6;
/// For all the switchovers together, from each command's return to the target leading
/// with both others replicating. Polling would take about a tick for the target to see
/// the vacancy and another for the third node to see the new leader: over twice this.
const SETTLED_ALL_MAX: Duration = Duration::from_millis(450 * SWITCHOVERS as u64);

#[test]
fn a_switchover_settles_without_waiting_for_the_agents_tick() {
    let Some(bin) = etcd_bin("a_switchover_settles_without_waiting") else {
        return;
    };
    let etcd = Etcd::start(&bin);
    let nodes = EtcdNodes::start(&etcd, 3, LONG_TICK_CONFIG);
    run(180, async {
        let mut p = settled_primary(&nodes).await;
        let mut total = Duration::ZERO;
        for _ in 0..SWITCHOVERS {
            let q = (p + 1) % 3;
            let target = status(&nodes.addr(q)).await.cluster.unwrap().node;
            let out = cli(
                &nodes.addr(p),
                &["admin", "switchover", "--to", &target, "--yes"],
                None,
            );
            stdout(&out);
            let returned = Instant::now();
            wait_until("the target leads with two replicas", SETTLE_MAX, || async {
                settled(&nodes, q).await.then_some(())
            })
            .await;
            total += returned.elapsed();
            p = q;
        }
        eprintln!("{SWITCHOVERS} switchovers settled in {total:?} together");
        assert!(
            total < SETTLED_ALL_MAX,
            "{SWITCHOVERS} switchovers took {total:?} to settle: the hints did not wake the agents"
        );
    });
}
