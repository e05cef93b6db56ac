//! Promotion to primary in a new epoch: plain (keep everything received, as a failover
//! does), or, on a delayed replica, at a point (an offset or a time) to recover the logs as
//! they were before a mistake upstream.

use std::sync::Arc;
use std::time::Duration;

use spool_proto::v1 as pb;
use spool_storage::Log;
use tonic::Status;

use super::node::Node;
use super::replication::delay::Delay;
use super::status_map::to_status;

/// How long a promotion at a point waits for the follower to stop.
const FOLLOWER_STOP_MAX: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromoteAt {
    /// Keep everything stored.
    Everything,
    /// Every log ends at min(offset, its end).
    Offset(u64),
    /// Every log ends before its first record the primary wrote after this time (unix us).
    Time(u64),
}

impl PromoteAt {
    pub fn from_pb(at: Option<pb::promote_request::At>) -> PromoteAt {
        match at {
            None => PromoteAt::Everything,
            Some(pb::promote_request::At::AtOffset(o)) => PromoteAt::Offset(o),
            Some(pb::promote_request::At::AtTimeUs(t)) => PromoteAt::Time(t),
        }
    }
}

fn internal(what: &str, e: impl std::fmt::Display) -> Status {
    Status::internal(format!("{what}: {e}"))
}

/// Apply pending deletions now, recording the names in `deleted`.
async fn apply_deletions(
    delay: &Delay,
    node: &Node,
    due: Vec<String>,
    deleted: &mut Vec<String>,
) -> Result<(), Status> {
    for name in due {
        delay
            .apply_delete(node.catalog(), &name)
            .await
            .map_err(|e| internal("applying a deletion", e))?;
        deleted.push(name);
    }
    Ok(())
}

/// Where `log` ends when cut at `at`.
fn cut_point(log: &Log, delay: &Delay, at: PromoteAt) -> Result<u64, Status> {
    let p = log.positions();
    match at {
        PromoteAt::Everything => Ok(p.durable),
        PromoteAt::Offset(n) => Ok(n.clamp(p.start, p.durable)),
        PromoteAt::Time(t) => {
            // Records below the horizon are no newer than its cutoff: start there if we can.
            let h = delay.horizon(log);
            let from = if h.offset != u64::MAX && t >= h.cutoff_us {
                h.offset.clamp(p.start, p.durable)
            } else {
                p.start
            };
            let mut cursor = log.reader().frames(from).map_err(to_status)?;
            let mut end = from;
            // A batch's records share its timestamp: cut before the first newer batch.
            while let Some((h, _)) = cursor.next_frame().map_err(to_status)? {
                if h.first_ts_us > t {
                    return Ok(end);
                }
                end = h.next_offset();
            }
            Ok(end)
        }
    }
}

/// Timestamp of the last record below `end` (0 if none).
fn last_ts_before(log: &Log, end: u64) -> u64 {
    let start = log.positions().start;
    if end <= start {
        return 0;
    }
    log.reader()
        .read(end - 1, 1, 0)
        .ok()
        .and_then(|r| r.first().map(|r| r.timestamp_us))
        .unwrap_or(0)
}

/// Which logs a promotion at a point cuts, and whether it only says what it would cut.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// Only these logs are cut (the others are kept whole); empty: every log.
    pub logs: Vec<String>,
    /// Change nothing: answer with the cuts the promotion would make.
    pub dry_run: bool,
}

impl Scope {
    fn cuts(&self, name: &str) -> bool {
        self.logs.is_empty() || self.logs.iter().any(|l| l == name)
    }
}

/// Promote `node` into `epoch` (None: the next after its own; the cluster agent passes the
/// epoch it won the leader key with). A promotion at a point is for delayed replicas only.
pub async fn promote(
    node: &Arc<Node>,
    at: PromoteAt,
    epoch: Option<u64>,
) -> Result<pb::PromoteResponse, Status> {
    promote_scoped(node, at, epoch, &Scope::default()).await
}

/// What a promotion at `at` would cut from each log in `scope` now: no change.
fn plan_cuts(
    node: &Node,
    delay: &Delay,
    at: PromoteAt,
    scope: &Scope,
) -> Result<Vec<pb::PromoteCut>, Status> {
    let storage = &node.storage();
    let mut cuts = Vec::new();
    for name in storage.list_logs().into_iter().filter(|n| scope.cuts(n)) {
        let log = storage.log(&name).map_err(to_status)?;
        let end = cut_point(&log, delay, at)?;
        let durable = log.positions().durable;
        if end < durable {
            cuts.push(pb::PromoteCut {
                log: name,
                from_offset: end,
                end_offset: durable,
            });
        }
    }
    Ok(cuts)
}

/// [`promote`], cutting only the logs `scope` names, or only saying what it would cut.
pub async fn promote_scoped(
    node: &Arc<Node>,
    at: PromoteAt,
    epoch: Option<u64>,
    scope: &Scope,
) -> Result<pb::PromoteResponse, Status> {
    node.check_accepting()?;
    let delay = node.active_delay().cloned();
    let mut deleted = Vec::new();
    let mut cuts = Vec::new();
    if at != PromoteAt::Everything {
        let Some(delay) = &delay else {
            return Err(Status::failed_precondition(
                "promote --at-offset/--at-time needs a delayed replica (started with --delay) \
                 that was not promoted yet; use plain `promote` here",
            ));
        };
        let held = node.storage().list_logs();
        if let Some(missing) = scope.logs.iter().find(|l| !held.contains(l)) {
            return Err(Status::not_found(format!(
                "this node holds no log {missing:?}: nothing was done"
            )));
        }
        if scope.dry_run {
            return Ok(pb::PromoteResponse {
                cuts: plan_cuts(node, delay, at, scope)?,
                dry_run: true,
                ..Default::default()
            });
        }
        // Stop following first, and wait until it stopped: no frame may land after the cut.
        node.mark_promoted();
        let mut running = node.follower_running().subscribe();
        tokio::time::timeout(FOLLOWER_STOP_MAX, running.wait_for(|r| !r))
            .await
            .map_err(|_| Status::unavailable("the follower did not stop; retry the promotion"))?
            .map_err(|e| internal("waiting for the follower", e))?;
        let storage = &node.storage();
        let mut point_ts = match at {
            PromoteAt::Time(t) => t,
            _ => 0,
        };
        for name in storage.list_logs().into_iter().filter(|n| scope.cuts(n)) {
            let log = storage.log(&name).map_err(to_status)?;
            let end = cut_point(&log, delay, at)?;
            if let PromoteAt::Offset(_) = at {
                point_ts = point_ts.max(last_ts_before(&log, end));
            }
            let durable = log.positions().durable;
            if end < durable {
                let _guard = delay
                    .cut(&log, end, false)
                    .await
                    .map_err(|e| internal("saving the horizon", e))?;
                log.truncate_to(end).await.map_err(to_status)?;
                tracing::warn!(log = %name, end, "promotion at a point: log cut");
                cuts.push(pb::PromoteCut {
                    log: name,
                    from_offset: end,
                    end_offset: durable,
                });
            }
        }
        // Deletions that happened upstream before the point are applied; later ones never
        // happened in the recovered history. Logs outside the scope keep everything
        // received, their deletions included (as a plain promotion does).
        let (mut due, later) = delay.split_deletions(point_ts);
        let (later, kept_whole): (Vec<String>, Vec<String>) =
            later.into_iter().partition(|n| scope.cuts(n));
        due.extend(kept_whole);
        apply_deletions(delay, node, due, &mut deleted).await?;
        delay
            .drop_deletions(&later)
            .await
            .map_err(|e| internal("dropping deletions", e))?;
    }
    let role = &node.role();
    let epoch = epoch.unwrap_or(role.epoch() + 1);
    node.forget_take_backs();
    role.begin_leading(epoch)
        .await
        .map_err(|e| Status::internal(format!("persisting epoch {epoch}: {e:#}")))?;
    if let Some(delay) = &delay {
        if at == PromoteAt::Everything {
            // A failover to everything received: the upstream's deletions stand.
            node.mark_promoted();
            let (due, _) = delay.split_deletions(u64::MAX);
            apply_deletions(delay, node, due, &mut deleted).await?;
        }
        delay
            .deactivate()
            .await
            .map_err(|e| internal("ending the delay", e))?;
    }
    // Stop the follower before the first write of the new epoch.
    role.become_primary();
    node.mark_promoted();
    let storage = &node.storage();
    let mut ends = Vec::new();
    for name in storage.list_logs() {
        let log = storage.log(&name).map_err(to_status)?;
        log.begin_epoch(epoch).await.map_err(to_status)?;
        let p = log.positions();
        ends.push(pb::LogEnd {
            name,
            start_offset: p.start,
            end_offset: p.durable,
        });
    }
    tracing::warn!(epoch, ?at, "promoted to primary");
    Ok(pb::PromoteResponse {
        epoch,
        ends,
        deleted,
        cuts,
        dry_run: false,
    })
}
