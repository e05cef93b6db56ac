//! Timeouts under both policies, degraded mode and recovery.

use std::time::Duration;

use super::*;

#[test]
fn timeout_fails_under_the_fail_policy() {
    let mut c = Clock::new();
    let mut t = with_replicas(TimeoutPolicy::Fail, &c);
    assert!(t
        .append(c.now(), 1, "a", 10, AckMode::SemiSync(2))
        .is_empty());
    let _ = t.replica_acked(c.now(), "r1", "a", 10);
    let out = t.tick(c.advance(TIMEOUT));
    let [Command::Fail {
        req: 1,
        confirmed: 1,
        required: 2,
        reason,
    }] = out.as_slice()
    else {
        panic!("{out:?}");
    };
    assert!(
        reason.contains("timed out") && reason.contains("\"a\""),
        "{reason}"
    );
    assert!(!t.is_degraded());
    assert_eq!(t.pending_len(), 0);
}

#[test]
fn timeout_fires_at_the_deadline_not_before() {
    let mut c = Clock::new();
    let mut t = with_replicas(TimeoutPolicy::Fail, &c);
    let start = c.now();
    assert!(t.append(c.now(), 1, "a", 10, AckMode::Sync).is_empty());
    assert_eq!(t.next_deadline(), Some(start + TIMEOUT));
    assert!(t
        .tick(c.advance(TIMEOUT - Duration::from_nanos(1)))
        .is_empty());
    assert_eq!(t.tick(c.advance(Duration::from_nanos(1))).len(), 1);
}

#[test]
fn next_deadline_is_the_oldest_pending_request() {
    let mut c = Clock::new();
    let mut t = with_replicas(TimeoutPolicy::Fail, &c);
    let first = c.now();
    assert!(t
        .append(c.now(), 1, "a", 10, AckMode::SemiSync(1))
        .is_empty());
    let second = c.advance(Duration::from_millis(30));
    assert!(t
        .append(c.now(), 2, "b", 10, AckMode::SemiSync(1))
        .is_empty());
    assert_eq!(t.next_deadline(), Some(first + TIMEOUT));
    let _ = t.replica_acked(c.now(), "r1", "a", 10);
    assert_eq!(t.next_deadline(), Some(second + TIMEOUT));
    // Only the expired one fails.
    let third = c.advance(Duration::from_millis(100));
    assert!(t.append(third, 3, "b", 20, AckMode::SemiSync(1)).is_empty());
    let out = t.tick(third);
    assert!(
        matches!(out.as_slice(), [Command::Fail { req: 2, .. }]),
        "{out:?}"
    );
    assert_eq!(t.next_deadline(), Some(third + TIMEOUT));
}

#[test]
fn zero_timeout_expires_at_the_next_tick() {
    let c = Clock::new();
    let mut t = AckTracker::new(AckConfig {
        timeout: Duration::ZERO,
        policy: TimeoutPolicy::Fail,
    });
    let _ = t.replica_connected(c.now(), "r1", false, true);
    assert!(t
        .append(c.now(), 1, "a", 1, AckMode::SemiSync(1))
        .is_empty());
    assert_eq!(t.tick(c.now()).len(), 1);
}

#[test]
fn unrepresentable_timeout_never_expires() {
    let c = Clock::new();
    let mut t = AckTracker::new(AckConfig {
        timeout: Duration::MAX,
        policy: TimeoutPolicy::Fail,
    });
    let _ = t.replica_connected(c.now(), "r1", false, true);
    assert!(t
        .append(c.now(), 1, "a", 1, AckMode::SemiSync(1))
        .is_empty());
    assert_eq!(t.next_deadline(), None);
    assert!(t.tick(c.now() + Duration::from_secs(1 << 30)).is_empty());
    assert_eq!(t.replica_acked(c.now(), "r1", "a", 1), vec![done(1, 1)]);
}

#[test]
fn degrade_policy_completes_degraded_and_enters_degraded_mode_once() {
    let mut c = Clock::new();
    let mut t = with_replicas(TimeoutPolicy::DegradeToAsync, &c);
    assert!(t
        .append(c.now(), 1, "a", 10, AckMode::SemiSync(3))
        .is_empty());
    let _ = t.replica_acked(c.now(), "r1", "a", 10);
    let out = t.tick(c.advance(TIMEOUT));
    let [Command::Degraded { reason }, c1] = out.as_slice() else {
        panic!("{out:?}");
    };
    assert!(reason.contains("1 of 3"), "{reason}");
    assert_eq!(c1, &degraded(1, 1));
    assert!(t.is_degraded());
    // Further appends in degraded mode do not emit Degraded again.
    assert_eq!(
        t.append(c.now(), 2, "a", 20, AckMode::SemiSync(3)),
        vec![degraded(2, 0)]
    );
    assert!(t.tick(c.advance(TIMEOUT)).is_empty());
}

#[test]
fn degrading_releases_every_pending_request() {
    let mut c = Clock::new();
    let mut t = with_replicas(TimeoutPolicy::DegradeToAsync, &c);
    assert!(t
        .append(c.now(), 1, "a", 10, AckMode::SemiSync(1))
        .is_empty());
    c.advance(TIMEOUT / 2);
    assert!(t.append(c.now(), 2, "b", 10, AckMode::Sync).is_empty());
    assert!(t
        .append(c.now(), 3, "a", 20, AckMode::SemiSync(1))
        .is_empty());
    let out = t.tick(c.advance(TIMEOUT / 2));
    assert!(matches!(out[0], Command::Degraded { .. }));
    assert_eq!(out[1..], [degraded(1, 0), degraded(3, 0), degraded(2, 0)]);
    assert_eq!(t.pending_len(), 0);
    assert_eq!(t.next_deadline(), None);
}

#[test]
fn async_append_while_degraded_is_not_degraded() {
    let mut c = Clock::new();
    let mut t = with_replicas(TimeoutPolicy::DegradeToAsync, &c);
    assert!(t.append(c.now(), 1, "a", 10, AckMode::Sync).is_empty());
    let _ = t.tick(c.advance(TIMEOUT));
    assert_eq!(
        t.append(c.now(), 2, "a", 20, AckMode::Async),
        vec![done(2, 0)]
    );
}

#[test]
fn recovers_when_a_probe_is_confirmed_then_waits_again() {
    let mut c = Clock::new();
    let mut t = with_replicas(TimeoutPolicy::DegradeToAsync, &c);
    assert!(t
        .append(c.now(), 1, "a", 10, AckMode::SemiSync(1))
        .is_empty());
    let _ = t.tick(c.advance(TIMEOUT));
    assert_eq!(
        t.append(c.now(), 2, "a", 20, AckMode::SemiSync(1)),
        vec![degraded(2, 0)]
    );
    // Probe is request 2 (end 20): the old end 10 is not enough.
    assert!(t.replica_acked(c.now(), "r1", "a", 10).is_empty());
    assert!(t.is_degraded());
    assert_eq!(
        t.replica_acked(c.now(), "r1", "a", 20),
        vec![Command::Recovered]
    );
    assert!(!t.is_degraded());
    // Recovered once: later acks emit nothing, later appends wait.
    assert!(t.replica_acked(c.now(), "r2", "a", 20).is_empty());
    assert!(t
        .append(c.now(), 3, "a", 30, AckMode::SemiSync(1))
        .is_empty());
    assert_eq!(t.pending_len(), 1);
    assert_eq!(t.replica_acked(c.now(), "r2", "a", 30), vec![done(3, 1)]);
}

#[test]
fn released_requests_become_probes_newest_per_log() {
    let mut c = Clock::new();
    let mut t = with_replicas(TimeoutPolicy::DegradeToAsync, &c);
    assert!(t
        .append(c.now(), 1, "a", 10, AckMode::SemiSync(1))
        .is_empty());
    assert!(t
        .append(c.now(), 2, "a", 20, AckMode::SemiSync(1))
        .is_empty());
    let _ = t.tick(c.advance(TIMEOUT));
    assert!(t.replica_acked(c.now(), "r1", "a", 10).is_empty());
    assert_eq!(
        t.replica_acked(c.now(), "r1", "a", 20),
        vec![Command::Recovered]
    );
}

#[test]
fn any_log_probe_recovers() {
    let mut c = Clock::new();
    let mut t = with_replicas(TimeoutPolicy::DegradeToAsync, &c);
    assert!(t.append(c.now(), 1, "a", 10, AckMode::Sync).is_empty());
    let _ = t.tick(c.advance(TIMEOUT));
    let _ = t.append(c.now(), 2, "b", 5, AckMode::SemiSync(2));
    assert!(t.replica_acked(c.now(), "r1", "b", 5).is_empty());
    assert_eq!(
        t.replica_acked(c.now(), "r2", "b", 5),
        vec![Command::Recovered]
    );
}

#[test]
fn confirmed_append_while_degraded_recovers() {
    let mut c = Clock::new();
    let mut t = with_replicas(TimeoutPolicy::DegradeToAsync, &c);
    assert!(t
        .append(c.now(), 1, "a", 10, AckMode::SemiSync(2))
        .is_empty());
    let _ = t.tick(c.advance(TIMEOUT));
    let _ = t.replica_acked(c.now(), "r1", "b", 50);
    assert_eq!(
        t.append(c.now(), 2, "b", 50, AckMode::SemiSync(1)),
        vec![Command::Recovered, done(2, 1)]
    );
    assert!(!t.is_degraded());
}

#[test]
fn reconnect_with_new_flags_can_recover() {
    let mut c = Clock::new();
    let mut t = tracker(TimeoutPolicy::DegradeToAsync);
    let _ = t.replica_connected(c.now(), "r1", false, false);
    assert!(t
        .append(c.now(), 1, "a", 10, AckMode::SemiSync(1))
        .is_empty());
    let _ = t.tick(c.advance(TIMEOUT));
    let _ = t.replica_acked(c.now(), "r1", "a", 10);
    assert!(t.is_degraded());
    assert_eq!(
        t.replica_connected(c.now(), "r1", false, true),
        vec![Command::Recovered]
    );
}
