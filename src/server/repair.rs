//! Repairing from peers: damaged records (found at open, by scrub or by a read) are fetched
//! from a peer holding the same records in the same epochs (the upstream, or a replica of
//! this node) and put back with `Log::repair`; a primary whose log ends below what a
//! replica holds in its own epoch takes those records back before its next write to the
//! log. Frames come from the peer's `FetchFrames`, and every one is checked here.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use spool_proto::v1 as pb;
use spool_storage::{DamageReport, Log};

use super::node::Node;
use super::role::Role;
use crate::tls::TlsOptions;

/// Bytes asked for per fetch.
const FETCH_BYTES: u32 = 4 << 20;
/// How often the node looks for damage to repair by itself.
const AUTO_REPAIR_EVERY: Duration = Duration::from_secs(5);

/// A connection to a peer's Replication service, over TLS with `tls` (a node's own
/// certificate as its identity).
async fn connect(
    addr: &str,
    tls: Option<&TlsOptions>,
) -> Result<pb::replication_client::ReplicationClient<tonic::transport::Channel>> {
    let channel = crate::tls::endpoint(addr, tls)?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    Ok(pb::replication_client::ReplicationClient::new(channel)
        .max_decoding_message_size(crate::server::MESSAGE_BYTES_MAX))
}

/// The frames of `log` from `from` (below `to` if not 0) that the peer at `addr` holds,
/// with its epoch history, as its FetchFrames answers.
pub async fn fetch_frames(
    addr: &str,
    tls: Option<&TlsOptions>,
    cluster_id: &str,
    log: &Log,
    from: u64,
    to: u64,
) -> Result<pb::FetchFramesResponse> {
    let mut client = connect(addr, tls).await?;
    let r = client
        .fetch_frames(crate::server::auth::as_node(pb::FetchFramesRequest {
            log: log.name().to_owned(),
            incarnation: log.incarnation(),
            from_offset: from,
            to_offset: to,
            max_bytes: FETCH_BYTES,
            cluster_id: cluster_id.to_owned(),
        }))
        .await
        .map_err(|s| anyhow!("{addr}: {}", s.message()))?
        .into_inner();
    if r.first_offset != from || r.frames.is_empty() {
        bail!("{addr} holds no frame of {} starting at {from}", log.name());
    }
    Ok(r)
}

/// The peer's epoch history of `log` and its end (a FetchFrames past its end: no frames).
pub async fn peer_history(node: &Node, log: &Log, addr: &str) -> Result<(Vec<(u64, u64)>, u64)> {
    let mut client = connect(addr, node.peer_tls()).await?;
    let r = client
        .fetch_frames(crate::server::auth::as_node(pb::FetchFramesRequest {
            log: log.name().to_owned(),
            incarnation: log.incarnation(),
            from_offset: u64::MAX,
            to_offset: 0,
            max_bytes: 0,
            cluster_id: node.role().cluster_id(),
        }))
        .await
        .map_err(|s| anyhow!("{addr}: {}", s.message()))?
        .into_inner();
    let epochs = r.epochs.iter().map(|e| (e.epoch, e.start_offset)).collect();
    Ok((epochs, r.end_offset))
}

/// Whether the peer's history gives `from..to` the epochs ours does (the same records).
fn same_epochs(log: &Log, peer: &[pb::EpochStart], from: u64, to: u64) -> bool {
    let theirs: Vec<(u64, u64)> = peer.iter().map(|e| (e.epoch, e.start_offset)).collect();
    let ours = log.epochs();
    spool_replication::divergence::staged_part_matches(
        ours.entries(),
        u64::MAX,
        &theirs_from(&theirs, from),
        from,
        to,
    )
}

/// Whether the peer's history is ours below `end` (our records are a prefix of its): its
/// frames past our end may then begin epochs ours has not seen yet.
fn same_history_below(log: &Log, peer: &[pb::EpochStart], end: u64) -> bool {
    let below = |h: Vec<(u64, u64)>| -> Vec<(u64, u64)> {
        h.into_iter().filter(|&(_, s)| s < end).collect()
    };
    let theirs = below(peer.iter().map(|e| (e.epoch, e.start_offset)).collect());
    let ours = below(log.epochs().entries().to_vec());
    theirs == ours
}

/// A history as it applies from `from` on: the epoch at `from` first.
fn theirs_from(history: &[(u64, u64)], from: u64) -> Vec<(u64, u64)> {
    let at = history
        .iter()
        .rev()
        .find(|&&(_, s)| s <= from)
        .map_or(0, |&(e, _)| e);
    std::iter::once((at, from))
        .chain(history.iter().copied().filter(|&(_, s)| s > from))
        .collect()
}

/// Put back one damaged run of `log` from the peer at `addr`, a node of cluster `cluster`.
pub async fn repair_run(
    cluster: &str,
    tls: Option<&TlsOptions>,
    log: &Log,
    d: &DamageReport,
    addr: &str,
) -> Result<u64> {
    let mut from = d.first_offset;
    let end = d.next_offset.unwrap_or(u64::MAX);
    loop {
        let to = if end == u64::MAX { 0 } else { end };
        let r = fetch_frames(addr, tls, cluster, log, from, to).await?;
        if !same_epochs(log, &r.epochs, from, r.next_offset) {
            bail!(
                "{addr} holds offsets {from}..{} of {} in other epochs: not the same records",
                r.next_offset,
                log.name()
            );
        }
        if from == d.first_offset {
            let done = log.repair(from, r.frames).await?;
            from = done.next_offset;
        } else {
            // A damaged end put back as far as its segment goes: the rest continues the log.
            from = log.append_frames(r.frames).await?;
        }
        if d.next_offset.is_some_and(|n| from >= n) || (end == u64::MAX && from >= r.end_offset) {
            return Ok(from);
        }
    }
}

/// The peers that may hold this node's records: the upstream, or the connected replicas.
fn peers(node: &Node) -> Vec<String> {
    match node.role().role() {
        Role::Replica { upstream } => vec![upstream],
        Role::Primary => node
            .replicas()
            .snapshot()
            .into_iter()
            .filter(|r| r.connected && !r.addr.is_empty())
            .map(|r| r.addr)
            .collect(),
    }
}

/// Repair every damaged run of `log` from `from_addr`, or from the first peer that can.
pub async fn repair_log(node: &Node, log: &Log, from_addr: Option<&str>) -> pb::RepairResponse {
    let mut out = pb::RepairResponse::default();
    let peers = from_addr.map_or_else(|| peers(node), |a| vec![a.to_owned()]);
    for d in log.damage() {
        let mut done = false;
        for addr in &peers {
            match repair_run(&node.role().cluster_id(), node.peer_tls(), log, &d, addr).await {
                Ok(next) => {
                    out.repaired.push(pb::RepairedRange {
                        log: log.name().to_owned(),
                        first_offset: d.first_offset,
                        next_offset: next,
                        from_addr: addr.clone(),
                    });
                    done = true;
                    break;
                }
                Err(e) => out
                    .errors
                    .push(format!("{} from {}: {e:#}", log.name(), d.first_offset)),
            }
        }
        if !done {
            if peers.is_empty() {
                out.errors.push(format!(
                    "{}: no peer to repair from (no upstream, no replica connected)",
                    log.name()
                ));
            }
            out.left.push(pb::ScrubFinding {
                log: log.name().to_owned(),
                range: Some(damaged_range(&d)),
            });
        }
    }
    out
}

pub fn damaged_range(d: &DamageReport) -> pb::DamagedRange {
    pb::DamagedRange {
        first_offset: d.first_offset,
        next_offset: d.next_offset.unwrap_or(0),
        segment_base: d.segment_base,
        reason: d.reason.clone(),
    }
}

/// Look for damage every few seconds and repair it from peers, quietly while none has it.
pub fn spawn_auto_repair(node: Arc<Node>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(AUTO_REPAIR_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = node.shutdown_started() => return,
            }
            for name in node.storage().list_logs() {
                let Ok(log) = node.storage().log(&name) else {
                    continue;
                };
                if log.damage().is_empty() {
                    continue;
                }
                let r = repair_log(&node, &log, None).await;
                for done in &r.repaired {
                    tracing::warn!(log = %done.log, from = done.first_offset, to = done.next_offset, peer = %done.from_addr, "damaged records repaired from a peer");
                }
                if !r.left.is_empty() {
                    tracing::debug!(log = %name, errors = ?r.errors, "damage not repaired yet");
                }
            }
        }
    });
}

/// Where a replica is reached to take records back from it.
#[derive(Debug, Clone)]
pub struct PeerAddr {
    pub addr: String,
    /// The host its replication stream came from, which `addr` must name (None: `addr`
    /// is known otherwise, from the coordinator).
    pub host: Option<std::net::IpAddr>,
}

impl PeerAddr {
    /// `addr`, once it is known to be the replica's own: it names the host the stream
    /// came from (loopback for loopback).
    async fn checked(&self) -> Result<&str> {
        if self.addr.is_empty() {
            bail!("no address is known for the replica (not a member, or none in its hello)");
        }
        let Some(host) = self.host else {
            return Ok(&self.addr);
        };
        let same = |ip: std::net::IpAddr| {
            let ip = ip.to_canonical();
            ip == host || (ip.is_loopback() && host.is_loopback())
        };
        let found = tokio::net::lookup_host(self.addr.as_str()).await;
        if !found.is_ok_and(|mut ips| ips.any(|a| same(a.ip()))) {
            bail!(
                "the replica's address {} is not the host its stream came from ({host}): not \
                 taken back from there",
                self.addr
            );
        }
        Ok(&self.addr)
    }
}

/// This primary's log ends at `from` but the replica at `peer` holds it up to `to` in the
/// log's current epoch: take those records back (as frames from the replica, checked and
/// appended unchanged, or put back over a damaged end) before the log takes another write.
pub fn spawn_take_back(node: Arc<Node>, log: Log, peer: PeerAddr, (from, to): (u64, u64)) {
    if !node.begin_take_back(log.name()) {
        return;
    }
    tokio::spawn(async move {
        let addr = peer.addr.clone();
        tracing::warn!(log = %log.name(), from, to, replica = %addr, "this primary lost records a replica holds: taking them back before the next write");
        let result = match peer.checked().await {
            Ok(addr) => take_back(&node, &log, addr, from, to).await,
            Err(e) => Err(e),
        };
        match &result {
            Ok(()) => {
                tracing::warn!(log = %log.name(), from, to, replica = %addr, "records taken back from the replica")
            }
            Err(e) => {
                tracing::error!(log = %log.name(), from, to, replica = %addr, error = %format!("{e:#}"), "taking records back failed; the log takes no writes until a replica that holds them reconnects")
            }
        }
        node.end_take_back(log.name(), result.is_ok());
    });
}

async fn take_back(node: &Node, log: &Log, addr: &str, from: u64, to: u64) -> Result<()> {
    let epoch = log.current_epoch();
    if let Some(d) = log
        .damage()
        .into_iter()
        .find(|d| d.first_offset == from && d.next_offset.is_none())
    {
        let reached = repair_run(&node.role().cluster_id(), node.peer_tls(), log, &d, addr).await?;
        if reached >= to {
            return Ok(());
        }
    }
    append_from_peer(node, log, addr, to, epoch).await
}

/// Append the frames the peer at `addr` holds past this log's end, up to `to`, if they are
/// of epochs up to `max_epoch` and its history agrees with ours over them (a new primary
/// taking the tails acked records may be on, or a primary taking back what it lost).
pub async fn append_from_peer(
    node: &Node,
    log: &Log,
    addr: &str,
    to: u64,
    max_epoch: u64,
) -> Result<()> {
    let cluster = node.role().cluster_id();
    let mut at = log.positions().durable;
    while at < to {
        let r = fetch_frames(addr, node.peer_tls(), &cluster, log, at, to).await?;
        let agrees = same_epochs(log, &r.epochs, at, r.next_offset)
            || (at == log.positions().durable && same_history_below(log, &r.epochs, at));
        if !agrees || r.epochs.last().map(|e| e.epoch) > Some(max_epoch) {
            bail!(
                "the peer's records {at}..{} are not of this log's history up to epoch {max_epoch}",
                r.next_offset
            );
        }
        at = log.append_frames(r.frames).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::PeerAddr;

    fn peer(addr: &str, host: Option<&str>) -> PeerAddr {
        PeerAddr {
            addr: addr.into(),
            host: host.map(|h| h.parse().unwrap()),
        }
    }

    /// Records are taken back only from the host the replica's stream came from (or the
    /// address the coordinator publishes for it).
    #[tokio::test]
    async fn records_are_taken_back_only_from_the_replicas_own_host() {
        let from = Some("10.0.0.7");
        assert!(peer("10.0.0.7:7070", from).checked().await.is_ok());
        let elsewhere = peer("10.0.0.8:7070", from).checked().await.unwrap_err();
        assert!(
            elsewhere.to_string().contains("not the host"),
            "{elsewhere}"
        );
        assert!(peer("127.0.0.1:7071", Some("127.0.0.2"))
            .checked()
            .await
            .is_ok());
        assert!(peer("", from).checked().await.is_err());
        assert!(
            peer("10.0.0.9:7070", None).checked().await.is_ok(),
            "a member's"
        );
    }
}
