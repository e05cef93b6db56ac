//! A replica carrying out its upstream's LogStart for one log: create it as the upstream
//! has it, drop another incarnation, cut a divergent tail, reset for a full sync, or keep
//! what it holds (ahead, diverged) and say why in its status.

use std::sync::Arc;

use anyhow::{anyhow, Result};
use parking_lot::Mutex;
use spool_proto::v1 as pb;
use spool_storage::Log;

use super::follower::UpstreamView;
use crate::server::logs_service::config_from_pb;
use crate::server::node::Node;

/// Create `s.name` as the upstream has it: its config (retention by age delayed too on a
/// delayed replica) and incarnation.
async fn create_as_upstream(node: &Arc<Node>, s: &pb::LogStart) -> Result<Log> {
    let storage = &node.storage();
    let mut config = config_from_pb(s.config, &storage.config().default_log)
        .map_err(|st| anyhow!("log config from upstream: {}", st.message()))?;
    if let Some(d) = node.active_delay() {
        // Retention by age reaches a delayed replica only after the delay too.
        config.retention_ms = config
            .retention_ms
            .map(|ms| ms.saturating_add(d.delay.as_millis() as u64));
    }
    let incarnation = match s.incarnation {
        0 => spool_storage::meta::new_incarnation(),
        i => i,
    };
    let l = if s.sealed_segments_follow {
        storage
            .create_log_for_import(&s.name, config, incarnation)
            .await?
    } else {
        storage
            .create_log_copy(&s.name, config, incarnation)
            .await?
    };
    if let Some(d) = node.active_delay() {
        // Its horizon (and retention floor) exist before its first frame arrives.
        d.horizon(&l);
    }
    node.catalog_changed();
    tracing::info!(log = %s.name, "log created by the upstream");
    Ok(l)
}

/// The log the start is about: ours (given the upstream's incarnation if it had none, as
/// written by a version without them), a new copy of another incarnation, or a new one.
async fn log_for_start(node: &Arc<Node>, s: &pb::LogStart) -> Result<Log> {
    use pb::log_start::Action;
    let recreate = s.action == Action::Recreate as i32;
    match node.storage().log(&s.name) {
        Ok(l) if recreate => {
            tracing::warn!(log = %s.name, ours = format!("{:016x}", l.incarnation()), theirs = format!("{:016x}", s.incarnation), "the log was deleted and created again upstream: dropping this copy and copying the new one");
            match node.storage().delete_log(&s.name).await {
                Ok(()) | Err(spool_storage::StorageError::LogNotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
            node.catalog_changed();
            create_as_upstream(node, s).await
        }
        Ok(l) => {
            l.set_incarnation(s.incarnation).await?;
            Ok(l)
        }
        Err(_) => create_as_upstream(node, s).await,
    }
}

pub async fn apply_start(
    node: &Arc<Node>,
    s: &pb::LogStart,
    view: &Mutex<UpstreamView>,
) -> Result<()> {
    use pb::log_start::Action;
    let action = Action::try_from(s.action).unwrap_or(Action::Continue);
    if let Action::Ahead | Action::Diverged = action {
        // Nothing here changes: the upstream lags or lost records this log holds (it sends
        // frames from this log's end once it has them), or the two wrote different ones.
        if action == Action::Diverged {
            tracing::error!(log = %s.name, reason = %s.reason, "this log diverged from the upstream's in the same epoch; it does not follow until resolved");
        } else {
            tracing::warn!(log = %s.name, reason = %s.reason, "this log is ahead of the upstream; keeping every record");
        }
        let mut v = view.lock();
        let f = v.logs.entry(s.name.clone()).or_default();
        f.blocked = format!("{}: {}", action.as_str_name().to_lowercase(), s.reason);
        return Ok(());
    }
    let log = log_for_start(node, s).await?;
    let end = log.positions().durable;
    // A delayed replica lowers the horizon before cutting (cuts stay immediate: the
    // upstream's word on divergence is not delayed).
    let _cut = match (node.active_delay(), action) {
        (Some(d), Action::FullSync | Action::Recreate) => Some(d.cut(&log, s.offset, true).await?),
        (Some(d), _) if s.offset < end => Some(d.cut(&log, s.offset, false).await?),
        _ => None,
    };
    let full_sync = match action {
        Action::Continue => {
            if end != s.offset {
                // Our end moved since the hello (cannot happen while we follow one
                // upstream); resolve it by the upstream's word.
                log.truncate_to(s.offset.min(end)).await?;
            }
            false
        }
        Action::Truncate => {
            tracing::warn!(log = %s.name, from = end, to = s.offset, "divergent tail: truncating");
            crate::server::quarantine::keep(node, &log, s.offset).await?;
            log.truncate_to(s.offset).await?;
            false
        }
        Action::FullSync | Action::Recreate => {
            if action == Action::FullSync {
                tracing::warn!(log = %s.name, start = s.offset, "offsets gone upstream: full sync");
                if let Some(own) = s.own_records_from {
                    // Records only this node held (it wrote them cut off): kept, not lost.
                    let own = own.max(log.positions().start);
                    crate::server::quarantine::keep(node, &log, own).await?;
                }
            }
            if log.positions().durable != s.offset || log.positions().start != s.offset {
                log.reset_to(s.offset).await?;
            }
            true
        }
        Action::Ahead | Action::Diverged => unreachable!("handled above"),
    };
    let mut v = view.lock();
    let f = v.logs.entry(s.name.clone()).or_default();
    f.full_sync = full_sync;
    f.staged = None;
    f.blocked.clear();
    Ok(())
}
