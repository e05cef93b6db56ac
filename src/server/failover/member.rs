//! This node's member record, as published each round.

use std::collections::BTreeMap;

use crate::cluster::keys::MemberRecord;
use crate::config::ClusterConfig;
use crate::server::Node;

/// What does not change while the node runs.
#[derive(Debug, Clone)]
pub struct Identity {
    pub node: String,
    pub addr: String,
    pub delayed: bool,
    pub sync: bool,
}

/// The record now: role, epoch, and every log's durable end with its current epoch.
pub fn record(node: &Node, id: &Identity, cfg: &ClusterConfig, seq: u64) -> MemberRecord {
    let storage = node.storage();
    let logs: BTreeMap<String, [u64; 2]> = storage
        .list_logs()
        .into_iter()
        .filter_map(|name| {
            let log = storage.log(&name).ok()?;
            Some((name, [log.positions().durable, log.current_epoch()]))
        })
        .collect();
    MemberRecord {
        node: id.node.clone(),
        addr: id.addr.clone(),
        role: if node.role().is_primary() {
            "primary".into()
        } else {
            "replica".into()
        },
        epoch: node.role().epoch(),
        delayed: id.delayed,
        never_promote: cfg.never_promote,
        sync: id.sync,
        priority: cfg.priority,
        seq,
        logs,
    }
}
