//! A planned switchover as clients see it: once `admin switchover` returns, the old
//! primary no longer names itself the leader, so a client finding the primary by status
//! goes to the new one.

mod common;

use std::time::Duration;

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
            let s = status(&nodes.addr(i)).await;
            let leads = s.cluster.as_ref().is_some_and(|c| c.leader == c.node);
            let connected = s.replicas.iter().filter(|r| r.connected).count();
            if s.role == "primary" && leads && connected == 2 {
                return Some(i);
            }
        }
        None
    })
    .await
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
