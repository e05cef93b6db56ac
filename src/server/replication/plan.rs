//! What the upstream tells a connecting replica for one log, and what the replica holds
//! once it has done it: the log's identity first (another incarnation is copied again),
//! then the epoch histories (`spool_replication::divergence`), then, where the replica
//! keeps its last frame, that frame's bytes against the upstream's (two nodes never hold
//! different records at one offset in one epoch without it being said).

use spool_proto::v1 as pb;
use spool_replication::divergence::{self, Decision};
use spool_storage::Log;
use tonic::Status;

use crate::server::node::Node;

/// The upstream's answer for one log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Continue, truncate or full sync, as the histories decide.
    Follow(Decision),
    /// The replica's copy is another incarnation: drop it, continue empty from `from`.
    Recreate { from: u64 },
    /// The replica's last frame is not ours though the histories agree.
    Diverged { reason: String },
}

impl Plan {
    /// Where the replica's log ends once it has applied the plan: what it holds of ours
    /// and may be counted for (never its end before a cut, never records we do not have
    /// the same).
    pub fn held(&self) -> u64 {
        match self {
            Plan::Follow(Decision::Continue { from }) => *from,
            Plan::Follow(Decision::TruncateThenContinue { to }) => *to,
            Plan::Follow(Decision::FullSync { from }) | Plan::Recreate { from } => *from,
            Plan::Follow(Decision::Ahead { replica_end, .. }) => *replica_end,
            Plan::Diverged { .. } => 0,
        }
    }
}

/// Where this replica goes on in `log`, from what it told us. A delayed upstream decides
/// on its visible end (and the epochs begun below it): it vouches for nothing more.
pub fn plan_for(
    node: &Node,
    log: &Log,
    state: Option<&pb::ReplicaLogState>,
) -> Result<Plan, Status> {
    let visible = node.visible(log);
    let (start_here, end_here) = (log.positions().start.min(visible.end()), visible.end());
    let ours = log.incarnation();
    if let Some(s) = state.filter(|s| s.incarnation != 0 && ours != 0 && s.incarnation != ours) {
        tracing::warn!(log = %log.name(), ours = format!("{ours:016x}"), theirs = format!("{:016x}", s.incarnation), "the replica holds another incarnation of the log (deleted and created again here): it copies this one");
        return Ok(Plan::Recreate { from: start_here });
    }
    let epochs: Vec<(u64, u64)> = log
        .epochs()
        .entries()
        .iter()
        .copied()
        .filter(|&(_, start)| start <= end_here)
        .collect();
    let decided = match state {
        // A replica that sends only its last epoch (older versions).
        Some(s) if s.epochs.is_empty() && s.last_epoch > 0 => {
            divergence::decide(&epochs, start_here, end_here, s.last_epoch, s.end_offset)
        }
        Some(s) => {
            let theirs: Vec<(u64, u64)> =
                s.epochs.iter().map(|e| (e.epoch, e.start_offset)).collect();
            divergence::decide_with_history(
                &epochs,
                start_here,
                end_here,
                &theirs,
                s.start_offset,
                s.end_offset,
            )
        }
        None => divergence::decide(&epochs, start_here, end_here, 0, 0),
    };
    let decision = decided.map_err(|e| Status::failed_precondition(e.to_string()))?;
    if let (Decision::Continue { .. }, Some(s)) = (decision, state) {
        if let Some(reason) = last_frame_differs(log, s, start_here, end_here) {
            return Ok(Plan::Diverged { reason });
        }
    }
    Ok(Plan::Follow(decision))
}

/// Why the replica's last frame, which it keeps, is not the frame we hold at its offset
/// (None when it is, or when there is nothing of ours to compare it with).
fn last_frame_differs(log: &Log, s: &pb::ReplicaLogState, start: u64, end: u64) -> Option<String> {
    let at = s.last_frame_offset;
    if s.last_frame_crc == 0 || at < start || at >= end {
        return None;
    }
    let chunk = match log.reader().read_frames(at, 1) {
        Ok(c) => c,
        // Damaged here: nothing to compare; reads and repair deal with it.
        Err(_) => return None,
    };
    let crc = spool_storage::format::stored_crc(&chunk.bytes);
    if chunk.first_offset == at && crc == Some(s.last_frame_crc) {
        return None;
    }
    let reason = format!(
        "the replica's frame at offset {at} (crc {:08x}) is not this node's (frame at {} crc {}) \
         although both logs have it in the same epoch: the two nodes wrote different records \
         there; nothing is sent for this log until one copy is removed",
        s.last_frame_crc,
        chunk.first_offset,
        crc.map_or_else(|| "none".to_owned(), |c| format!("{c:08x}"))
    );
    tracing::error!(log = %log.name(), "{reason}");
    Some(reason)
}
