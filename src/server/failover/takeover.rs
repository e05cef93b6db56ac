//! A node that won the leader key becomes primary: it first takes every tail a live peer
//! holds past its own end (records a sync or semi-sync ack may have counted), then begins
//! the epoch it won with. No write is taken before both are done.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use spool_replication::failover::{tails_to_fetch, Member, TailFetch};

use crate::server::promote::{promote, PromoteAt};
use crate::server::repair::{append_from_peer, peer_history};
use crate::server::Node;
use spool_replication::divergence::{decide_with_history, Decision};

/// Take the tails `me` lacks from the members holding them, each bounded by `limit`.
pub async fn take_tails(
    node: &Node,
    me: &Member,
    members: &[Member],
    epoch: u64,
    limit: Duration,
) -> Result<()> {
    for t in tails_to_fetch(me, members) {
        tokio::time::timeout(limit, take_one(node, &t, epoch))
            .await
            .with_context(|| {
                format!(
                    "taking log {} {}..{} from {}: too slow",
                    t.log, t.from, t.to, t.addr
                )
            })??;
    }
    Ok(())
}

async fn take_one(node: &Node, t: &TailFetch, epoch: u64) -> Result<()> {
    let log = node
        .storage()
        .log(&t.log)
        .with_context(|| format!("log {} is on {} but not here", t.log, t.addr))?;
    tracing::warn!(log = %t.log, from = t.from, to = t.to, peer = %t.addr, "taking a tail from a peer before leading");
    cut_divergent(node, &log, &t.addr).await?;
    append_from_peer(node, &log, &t.addr, t.to, epoch)
        .await
        .with_context(|| format!("taking log {} {}..{} from {}", t.log, t.from, t.to, t.addr))
}

/// Records of an older epoch this node holds past where its history and the peer's part
/// (it wrote on as a cut-off primary) are cut, kept in quarantine, before the peer's tail
/// is taken: the tail continues the peer's history, not ours.
async fn cut_divergent(node: &Node, log: &spool_storage::Log, addr: &str) -> Result<()> {
    let (theirs, their_end) = peer_history(node, log, addr).await?;
    let ours = log.epochs().entries().to_vec();
    let p = log.positions();
    let decision = decide_with_history(&theirs, 0, their_end, &ours, p.start, p.durable);
    if let Ok(Decision::TruncateThenContinue { to }) = decision {
        if to < p.durable {
            tracing::warn!(log = %log.name(), to, peer = %addr, "cutting a divergent tail before taking the peer's");
            crate::server::quarantine::keep(node, log, to).await?;
            log.truncate_to(to).await?;
        }
    }
    Ok(())
}

/// Begin `epoch` as primary (the follower was stopped by the caller).
pub async fn begin(node: &Arc<Node>, epoch: u64) -> Result<()> {
    promote(node, PromoteAt::Everything, Some(epoch))
        .await
        .map_err(|s| anyhow::anyhow!("promotion to epoch {epoch}: {}", s.message()))?;
    crate::server::give_incarnations(node).await
}
