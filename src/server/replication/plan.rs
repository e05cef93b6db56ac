//! The upstream's side of a handshake for one log: the facts
//! `spool_replication::handshake::plan` decides from (what the replica reported, what this
//! node holds and vouches for), and the LogStart message that tells the replica.

use spool_proto::v1 as pb;
use spool_replication::divergence::Decision;
use spool_replication::handshake::{self, Credit, Plan, ReplicaLog, UpstreamLog};
use spool_replication::sender::Fetch;
use spool_storage::Log;
use tonic::Status;

use crate::server::logs_service::config_to_pb;
use crate::server::node::Node;
use crate::server::visible::Visible;

/// An epoch history as sent: `(epoch, start offset)` pairs as `EpochStart`s.
pub fn epoch_starts(entries: &[(u64, u64)]) -> Vec<pb::EpochStart> {
    entries
        .iter()
        .map(|&(epoch, start_offset)| pb::EpochStart {
            epoch,
            start_offset,
        })
        .collect()
}

/// What the replica reported of a log, as the handshake takes it.
pub fn replica_log(s: &pb::ReplicaLogState) -> ReplicaLog {
    let pairs = |v: &[pb::EpochStart]| v.iter().map(|e| (e.epoch, e.start_offset)).collect();
    ReplicaLog {
        incarnation: s.incarnation,
        epochs: pairs(&s.epochs),
        last_epoch: s.last_epoch,
        start: s.start_offset,
        end: s.end_offset,
        last_frame: (s.last_frame_crc != 0).then_some((s.last_frame_offset, s.last_frame_crc)),
        staged: (s.staged_end > 0).then(|| (s.staged_end, pairs(&s.staged_epochs))),
    }
}

/// What this node holds of `log` and vouches for: up to its visible end (a delayed
/// replica's horizon), with the epochs begun below it.
pub fn upstream_log(log: &Log, visible: &Visible) -> UpstreamLog {
    let end = visible.end();
    UpstreamLog {
        incarnation: log.incarnation(),
        epochs: log
            .epochs()
            .entries()
            .iter()
            .copied()
            .filter(|&(_, start)| start <= end)
            .collect(),
        start: log.positions().start.min(end),
        end,
    }
}

/// What this node vouches for of `log`, its epoch included (see `UpstreamLog::leading`):
/// what plans, and a replica ahead waiting for this node, go by.
pub fn vouched(node: &Node, log: &Log, visible: &Visible) -> UpstreamLog {
    upstream_log(log, visible).leading(node.role().epoch())
}

/// The frame of `log` holding `offset`: (its first offset, its stored CRC).
pub fn frame_at(log: &Log, offset: u64) -> Option<(u64, u32)> {
    let chunk = log.reader().read_frames(offset, 1).ok()?;
    Some((
        chunk.first_offset,
        spool_storage::format::stored_crc(&chunk.bytes)?,
    ))
}

/// A replica's plan for one log, as the upstream decided it.
#[derive(Debug)]
pub struct Planned {
    pub plan: Plan,
    /// Where a segment the replica holds partly received resumes (if it does).
    pub resume: Option<u64>,
    /// What it is credited with for acks.
    pub credit: Credit,
    /// A full sync: where the records the replica drops stop being this node's too.
    pub own_records_from: Option<u64>,
}

/// Where the replica goes on in `log` (see [`Planned`]).
pub fn plan_for(
    node: &Node,
    log: &Log,
    reported: Option<&pb::ReplicaLogState>,
) -> Result<Planned, Status> {
    let visible = node.visible(log);
    let up = vouched(node, log, &visible);
    let replica = reported.map(replica_log);
    let plan = handshake::plan(&up, replica.as_ref(), &|o| frame_at(log, o))
        .map_err(|e| Status::failed_precondition(e.to_string()))?;
    match &plan {
        Plan::Recreate { .. } => {
            tracing::warn!(log = %log.name(), "the replica holds another incarnation of the log (deleted and created again here): it copies this one")
        }
        Plan::Diverged { reason } => tracing::error!(log = %log.name(), "{reason}"),
        _ => {}
    }
    let resume = handshake::staged_to_resume(&up, &plan, replica.as_ref());
    if resume.is_none() && replica.as_ref().is_some_and(|r| r.staged.is_some()) {
        tracing::warn!(log = %log.name(), "the replica's staged frames are not this log's (cut since?): sending them again");
    }
    let credit = plan.credit(&up, replica.as_ref(), &|o| frame_at(log, o));
    if !credit.whole && !matches!(plan, Plan::Follow(Decision::Ahead { .. })) {
        tracing::warn!(log = %log.name(), claimed = plan.held(), counted = credit.counted, "the replica's end could not be checked against this node's frames (no matching last frame): its acks count for nothing more in this log until it reconnects with one");
    }
    let own_records_from = match (&plan, &replica) {
        (Plan::Follow(Decision::FullSync { .. }), Some(r)) => handshake::own_records_from(&up, r),
        _ => None,
    };
    Ok(Planned {
        plan,
        resume,
        credit,
        own_records_from,
    })
}

/// The LogStart telling the replica its plan (`own_records_from`: see [`Planned`]).
pub fn start_message(
    visible: &Visible,
    log: &Log,
    plan: &Plan,
    own_records_from: Option<u64>,
    fetch: Fetch,
) -> pb::LogStart {
    use pb::log_start::Action;
    let (action, offset) = match plan {
        Plan::Follow(Decision::Continue { from }) => (Action::Continue, *from),
        Plan::Follow(Decision::TruncateThenContinue { to }) => (Action::Truncate, *to),
        Plan::Follow(Decision::FullSync { from }) => (Action::FullSync, *from),
        Plan::Recreate { from } => (Action::Recreate, *from),
        Plan::Follow(Decision::Ahead { replica_end, .. }) => (Action::Ahead, *replica_end),
        Plan::Diverged { .. } => (Action::Diverged, 0),
    };
    let reason = match plan {
        Plan::Follow(Decision::Ahead {
            upstream_end,
            replica_end,
        }) => format!(
            "the replica holds records {upstream_end}..{replica_end} of this log's current \
             epoch past this node's end: it keeps them and gets frames from its end once \
             this node has them"
        ),
        Plan::Diverged { reason } => reason.clone(),
        _ => String::new(),
    };
    pb::LogStart {
        name: log.name().to_owned(),
        config: Some(config_to_pb(log.config())),
        action: action as i32,
        offset,
        sealed_segments_follow: plan.continue_from().is_some()
            && action != Action::Ahead
            && segments_follow(visible, log, offset, fetch),
        incarnation: log.incarnation(),
        reason,
        own_records_from,
    }
}

/// Whether what the replica gets first from `offset` is a segment taken whole (a replica
/// creating the log need not zero-fill a first segment that imports will replace).
fn segments_follow(visible: &Visible, log: &Log, offset: u64, fetch: Fetch) -> bool {
    use spool_replication::sender::{Sender, Step};
    if log.reader().sealed_segment(offset).is_some() {
        return true;
    }
    let probe = Sender::new(offset, None, fetch).next(&super::sending::view(visible, log), false);
    fetch.active && matches!(probe, Step::Offer { .. })
}
