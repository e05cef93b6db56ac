//! Starting, retargeting and stopping the follower task as leadership moves.

use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::server::replication::follower::{follow, FollowerConfig};
use crate::server::Node;

/// The follower task the agent runs (at most one).
#[derive(Debug)]
pub struct FollowerCtl {
    template: FollowerConfig,
    running: Option<(String, JoinHandle<()>)>,
}

impl FollowerCtl {
    pub fn new(template: FollowerConfig) -> FollowerCtl {
        FollowerCtl {
            template,
            running: None,
        }
    }

    /// The upstream followed now.
    pub fn upstream(&self) -> Option<&str> {
        self.running
            .as_ref()
            .filter(|(_, h)| !h.is_finished())
            .map(|(a, _)| a.as_str())
    }

    /// Follow `addr` (stopping a follower of another upstream first).
    pub async fn follow(&mut self, node: &Arc<Node>, addr: &str) {
        if self.upstream() == Some(addr) {
            return;
        }
        self.stop(node).await;
        let cfg = FollowerConfig {
            upstream: addr.to_owned(),
            ..self.template.clone()
        };
        node.follower_running().send_replace(true);
        let n = node.clone();
        let handle = tokio::spawn(async move {
            follow(n.clone(), cfg, n.upstream_view().clone()).await;
            n.follower_running().send_replace(false);
        });
        self.running = Some((addr.to_owned(), handle));
    }

    /// Stop following; returns once the task is gone, so no frame lands afterwards.
    pub async fn stop(&mut self, node: &Node) {
        if let Some((_, handle)) = self.running.take() {
            handle.abort();
            let _ = handle.await;
            node.follower_running().send_replace(false);
        }
    }
}
