//! Retention never deletes what a connected replica still needs, up to a cap: past it,
//! the lagging replica is left to a full sync so that it cannot fill the disk. On a delayed
//! replica the floor is also at most the visible horizon.

use std::sync::Arc;
use std::time::Duration;

use crate::server::node::Node;

pub fn spawn(node: Arc<Node>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut warned: std::collections::HashSet<(String, String)> = Default::default();
        loop {
            tick.tick().await;
            let storage = &node.storage();
            for name in storage.list_logs() {
                let Ok(log) = storage.log(&name) else {
                    continue;
                };
                let mut floor: Option<u64> = None;
                for (replica, needed) in node.replicas().needed(&name) {
                    let behind = log.bytes_from(needed);
                    if behind > node.config().replica_keep_bytes_max {
                        if warned.insert((replica.clone(), name.clone())) {
                            tracing::warn!(
                                %replica, log = %name, behind,
                                cap = node.config().replica_keep_bytes_max,
                                "replica lags past the retention cap: retention goes on, it will need a full sync"
                            );
                        }
                        continue;
                    }
                    warned.remove(&(replica, name.clone()));
                    floor = Some(floor.map_or(needed, |f: u64| f.min(needed)));
                }
                if let Some(d) = node.active_delay() {
                    // A delayed replica never removes what readers have not seen yet.
                    let h = d.horizon(&log).offset;
                    floor = Some(floor.map_or(h, |f| f.min(h)));
                }
                log.set_retention_floor(floor);
            }
        }
    });
}
