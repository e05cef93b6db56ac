//! Operator requests the agent carries out: a switchover (planned handover from this
//! primary) and a failover to a named node (when there is no primary).

use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tonic::Status;

use crate::server::Node;

/// The longest a switchover waits for its target to hold every record (less if the
/// lease would lapse first).
pub const CATCH_UP_MAX: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub enum AdminOp {
    Switchover {
        to: String,
        reply: oneshot::Sender<Result<Duration, Status>>,
    },
    Failover {
        to: String,
        force: bool,
        reply: oneshot::Sender<Result<(), Status>>,
    },
}

/// Whether the replica `to` acknowledged every log up to this node's durable end.
fn caught_up(node: &Node, to: &str) -> bool {
    let Some(r) = node
        .replicas()
        .snapshot()
        .into_iter()
        .find(|r| r.id == to && r.connected)
    else {
        return false;
    };
    let storage = node.storage();
    storage.list_logs().iter().all(|name| {
        let end = storage.log(name).map_or(0, |l| l.positions().durable);
        r.acked.get(name).copied().unwrap_or(0) >= end
    })
}

/// Wait until `to` holds all this node has (writes already refused), until `deadline`.
pub async fn wait_caught_up(node: &Node, to: &str, deadline: Instant) -> Result<(), Status> {
    while !caught_up(node, to) {
        if Instant::now() >= deadline {
            return Err(Status::deadline_exceeded(format!(
                "{to} did not catch up in time (is it connected and following?): \
                 switchover abandoned, this node goes on as primary"
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}
