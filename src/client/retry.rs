//! When a failed call may be sent again, and where: the rules that keep a retry from
//! writing a record twice.

use tonic::{Code, Status};

/// Metadata key a replica sets on refused writes: where the primary is.
pub(super) const PRIMARY_METADATA: &str = "spool-primary";

/// How safe a call is to send again after an answer that leaves its outcome unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Safety {
    /// Reads, status, and appends with a producer id and sequence (a retry is answered
    /// with the first attempt's offsets): any failover-looking failure may be retried.
    Always,
    /// Other writes: only when the refusal proves nothing was written.
    IfRefused,
}

/// What the client does after a failed call.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// Give the caller the error.
    Fail,
    /// A replica refused and named the primary: try there first.
    Redirect(String),
    /// Look for the primary among the addresses, then try again.
    Rediscover,
}

pub(super) fn next_step(s: &Status, safety: Safety) -> Next {
    if let Some(primary) = named_primary(s) {
        return Next::Redirect(primary);
    }
    if refused_before_writing(s) {
        return Next::Rediscover;
    }
    let lost = matches!(
        s.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled
    );
    if lost && (safety == Safety::Always || never_sent(s)) {
        return Next::Rediscover;
    }
    Next::Fail
}

/// The primary a replica's FAILED_PRECONDITION refusal names.
pub(super) fn named_primary(s: &Status) -> Option<String> {
    if s.code() != Code::FailedPrecondition {
        return None;
    }
    let v = s.metadata().get(PRIMARY_METADATA)?.to_str().ok()?;
    Some(super::endpoint_uri(v))
}

/// Refusals a node gives before it writes anything: a replica that knows no primary yet
/// (an election is on), an old primary fenced by a newer epoch, or a new primary that
/// semi-sync or sync acks need more replicas of than have reconnected to it yet.
fn refused_before_writing(s: &Status) -> bool {
    match s.code() {
        Code::Unavailable => s.message().contains("no primary is known yet"),
        Code::FailedPrecondition => {
            s.message().starts_with("this node is fenced")
                || s.message().contains("replica(s) counted for acks")
                || s.message().contains("needs a synchronous replica")
        }
        _ => false,
    }
}

/// The request never left: no connection could be made (the node is down), so nothing
/// can have been written.
fn never_sent(s: &Status) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(s);
    while let Some(e) = cause {
        let refused = e
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused);
        if refused || e.is::<tonic::ConnectError>() {
            return true;
        }
        cause = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(primary: &str) -> Status {
        let mut s = Status::failed_precondition("this node is a replica; send writes to ...");
        s.metadata_mut()
            .insert(PRIMARY_METADATA, primary.parse().unwrap());
        s
    }

    #[test]
    fn a_replicas_refusal_redirects_any_write() {
        let s = refusal("127.0.0.1:7071");
        let want = Next::Redirect("http://127.0.0.1:7071".into());
        assert_eq!(next_step(&s, Safety::IfRefused), want);
        assert_eq!(next_step(&s, Safety::Always), want);
    }

    #[test]
    fn an_unknown_outcome_is_retried_only_when_safe() {
        let s = Status::unavailable("this primary's lease lapsed before they were acknowledged");
        assert_eq!(next_step(&s, Safety::IfRefused), Next::Fail);
        assert_eq!(next_step(&s, Safety::Always), Next::Rediscover);
        let s = Status::deadline_exceeded("only 0 of 1 required replica(s) confirmed");
        assert_eq!(next_step(&s, Safety::Always), Next::Fail);
    }

    /// Just after a failover the new primary refuses semi-sync and sync appends until its
    /// replicas reconnect: refused before writing, so any write is tried again (within the
    /// failover timeout). The messages are the server's own.
    #[test]
    fn a_primary_short_of_replicas_is_retried_for_any_write() {
        use spool_replication::ack::{AckConfig, AckMode, AckTracker, TimeoutPolicy};
        let acks = AckTracker::new(AckConfig {
            timeout: std::time::Duration::from_secs(1),
            policy: TimeoutPolicy::Fail,
        });
        for mode in [AckMode::SemiSync(1), AckMode::Sync] {
            let why = acks.cannot_satisfy(mode).expect("no replica: refused");
            let s = Status::failed_precondition(why);
            assert_eq!(next_step(&s, Safety::IfRefused), Next::Rediscover, "{s:?}");
        }
    }

    #[test]
    fn an_election_in_progress_is_retried_for_any_write() {
        let s = Status::unavailable(
            "this node is a replica and no primary is known yet (the cluster is electing one)",
        );
        assert_eq!(next_step(&s, Safety::IfRefused), Next::Rediscover);
        let s = Status::failed_precondition("this node is fenced: a node with a higher epoch");
        assert_eq!(next_step(&s, Safety::IfRefused), Next::Rediscover);
        let s = Status::failed_precondition("out of order: expected sequence 4");
        assert_eq!(next_step(&s, Safety::Always), Next::Fail);
    }

    #[test]
    fn a_refused_connection_proves_nothing_was_sent() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let s = Status::from_error(Box::new(tonic::ConnectError(Box::new(io))));
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(next_step(&s, Safety::IfRefused), Next::Rediscover);
    }
}
