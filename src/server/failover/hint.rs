//! Hints between agents: "the leader key changed, look now". A hint only makes a round run
//! sooner; a lost or refused one leaves the peer to its next tick, and what the peer does
//! it decides from the coordinator, never from the hint.

use std::sync::Arc;
use std::time::Duration;

use spool_proto::replication::v1 as pb;

use crate::server::Node;

/// A hint not answered by then is dropped (the peer's tick covers it).
const HINT_TIMEOUT: Duration = Duration::from_secs(1);

/// Tell the agents at `addrs` to look at the coordinator now, in the background.
pub fn look_now(node: &Arc<Node>, from: &str, addrs: Vec<String>) {
    for addr in addrs {
        let (node, from) = (node.clone(), from.to_owned());
        tokio::spawn(async move {
            let sent = tokio::time::timeout(HINT_TIMEOUT, send(&node, &from, &addr)).await;
            match sent {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(peer = %addr, error = %e, "look-now hint failed"),
                Err(_) => tracing::debug!(peer = %addr, "look-now hint timed out"),
            }
        });
    }
}

async fn send(node: &Node, from: &str, addr: &str) -> anyhow::Result<()> {
    let channel = crate::tls::endpoint(addr, node.peer_tls())?
        .connect_timeout(HINT_TIMEOUT)
        .connect()
        .await?;
    let req = pb::LookNowRequest {
        cluster_id: node.role().cluster_id(),
        from_node: from.to_owned(),
    };
    pb::replication_client::ReplicationClient::new(channel)
        .look_now(crate::server::auth::as_node(req))
        .await?;
    Ok(())
}
