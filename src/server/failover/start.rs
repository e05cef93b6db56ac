//! Starting the agent at `serve`: reach the coordinator, join its cluster, spawn.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::{agent, Identity};
use crate::cluster::etcd::{EtcdConfig, EtcdCoordinator};
use crate::config::{ClusterConfig, ReplicationConfig};
use crate::server::replication::follower::FollowerConfig;
use crate::server::Node;

/// How long `serve` waits for the coordinator before giving up with an error.
const REACH_WITHIN: Duration = Duration::from_secs(15);

/// Connect to etcd, join the cluster there and run the agent.
pub async fn start(
    node: &Arc<Node>,
    cfg: &ClusterConfig,
    repl: &ReplicationConfig,
    bound: SocketAddr,
) -> Result<()> {
    let etcd = EtcdConfig {
        username: cfg.etcd_username.clone(),
        password: cfg.etcd_password.clone(),
        tls: cfg.etcd_tls.clone(),
        ..EtcdConfig::new(cfg.endpoints.clone())
    };
    let coord = reach(&etcd).await?;
    agent::join_cluster(node, &coord, cfg).await?;
    let addr = cfg.advertise.clone().unwrap_or_else(|| bound.to_string());
    let id = Identity {
        node: cfg.node_name.clone().unwrap_or_else(|| addr.clone()),
        addr,
        delayed: repl.delay.is_some(),
        sync: repl.sync_replica,
    };
    let follower = FollowerConfig {
        upstream: String::new(),
        replica_id: id.node.clone(),
        sync: repl.sync_replica,
        delayed: repl.delay.is_some(),
        segment_fetch: repl.segment_fetch,
        coordinated: true,
    };
    tracing::info!(cluster = %cfg.name, node = %id.node, endpoints = ?cfg.endpoints, "joined the cluster");
    agent::spawn(node.clone(), coord, cfg.clone(), id, follower);
    Ok(())
}

async fn reach(etcd: &EtcdConfig) -> Result<EtcdCoordinator> {
    let deadline = Instant::now() + REACH_WITHIN;
    loop {
        match EtcdCoordinator::connect(etcd).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() >= deadline => {
                bail!(
                    "cannot reach etcd at {} within {REACH_WITHIN:?}: {e}; start etcd or fix \
                     --cluster",
                    etcd.endpoints.join(",")
                )
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}
