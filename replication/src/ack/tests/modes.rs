//! Which replicas confirm what, per ack mode, and the bounds on remembered state.

use std::time::Duration;

use super::super::replicas::DISCONNECTED_MAX;
use super::*;

#[test]
fn async_completes_at_once_with_current_confirmations() {
    let c = Clock::new();
    let mut t = with_replicas(TimeoutPolicy::Fail, &c);
    assert_eq!(
        t.append(c.now(), 1, "a", 10, AckMode::Async),
        vec![done(1, 0)]
    );
    let _ = t.replica_acked(c.now(), "r1", "a", 10);
    let _ = t.replica_acked(c.now(), "s1", "a", 20);
    assert_eq!(
        t.append(c.now(), 2, "a", 10, AckMode::Async),
        vec![done(2, 2)]
    );
    assert_eq!(t.pending_len(), 0);
    assert_eq!(t.next_deadline(), None);
}

#[test]
fn semi_sync_zero_completes_at_once() {
    let c = Clock::new();
    let mut t = tracker(TimeoutPolicy::Fail);
    assert_eq!(
        t.append(c.now(), 1, "a", 10, AckMode::SemiSync(0)),
        vec![done(1, 0)]
    );
}

#[test]
fn semi_sync_waits_for_k_counting_replicas() {
    let c = Clock::new();
    let mut t = with_replicas(TimeoutPolicy::Fail, &c);
    assert!(t
        .append(c.now(), 1, "a", 10, AckMode::SemiSync(2))
        .is_empty());
    assert_eq!(t.pending_len(), 1);
    assert!(t.replica_acked(c.now(), "r1", "a", 10).is_empty());
    // Not far enough yet.
    assert!(t.replica_acked(c.now(), "r2", "a", 9).is_empty());
    assert_eq!(t.replica_acked(c.now(), "s1", "a", 12), vec![done(1, 2)]);
    assert_eq!(t.pending_len(), 0);
    assert_eq!(t.next_deadline(), None);
}

#[test]
fn semi_sync_already_confirmed_completes_at_append() {
    let c = Clock::new();
    let mut t = with_replicas(TimeoutPolicy::Fail, &c);
    let _ = t.replica_acked(c.now(), "r1", "a", 10);
    assert_eq!(
        t.append(c.now(), 1, "a", 10, AckMode::SemiSync(1)),
        vec![done(1, 1)]
    );
}

#[test]
fn non_counting_replicas_do_not_confirm() {
    let c = Clock::new();
    let mut t = tracker(TimeoutPolicy::Fail);
    let _ = t.replica_connected(c.now(), "delayed", false, false);
    let _ = t.replica_connected(c.now(), "grandchild", true, false);
    assert!(t
        .append(c.now(), 1, "a", 5, AckMode::SemiSync(1))
        .is_empty());
    assert!(t.replica_acked(c.now(), "delayed", "a", 5).is_empty());
    assert!(t.replica_acked(c.now(), "grandchild", "a", 5).is_empty());
    assert_eq!(t.confirmed("a", 5), 0);
    // A synchronous replica that does not count is not in the sync set.
    let out = t.append(c.now(), 2, "a", 5, AckMode::Sync);
    assert!(
        matches!(out.as_slice(), [Command::Fail { req: 2, .. }]),
        "{out:?}"
    );
}

#[test]
fn sync_fails_at_once_without_a_sync_replica() {
    let c = Clock::new();
    let mut t = tracker(TimeoutPolicy::DegradeToAsync);
    let _ = t.replica_connected(c.now(), "r1", false, true);
    let _ = t.replica_acked(c.now(), "r1", "a", 9);
    let out = t.append(c.now(), 1, "a", 5, AckMode::Sync);
    let [Command::Fail {
        req: 1,
        confirmed: 1,
        required: 0,
        reason,
    }] = out.as_slice()
    else {
        panic!("{out:?}");
    };
    assert!(reason.contains("synchronous replica"), "{reason}");
    assert_eq!(t.pending_len(), 0);
}

#[test]
fn sync_waits_for_every_sync_replica_even_a_disconnected_one() {
    let c = Clock::new();
    let mut t = tracker(TimeoutPolicy::Fail);
    let _ = t.replica_connected(c.now(), "s1", true, true);
    let _ = t.replica_connected(c.now(), "s2", true, true);
    let _ = t.replica_connected(c.now(), "r1", false, true);
    assert!(t.replica_disconnected(c.now(), "s2").is_empty());
    assert!(t.append(c.now(), 1, "a", 10, AckMode::Sync).is_empty());
    assert!(t.replica_acked(c.now(), "s1", "a", 10).is_empty());
    assert!(t.replica_acked(c.now(), "r1", "a", 10).is_empty());
    // s2 comes back and confirms.
    assert!(t.replica_connected(c.now(), "s2", true, true).is_empty());
    assert_eq!(t.replica_acked(c.now(), "s2", "a", 10), vec![done(1, 3)]);
}

#[test]
fn acks_stay_valid_after_disconnect() {
    let c = Clock::new();
    let mut t = with_replicas(TimeoutPolicy::Fail, &c);
    let _ = t.replica_acked(c.now(), "r1", "a", 10);
    let _ = t.replica_disconnected(c.now(), "r1");
    assert_eq!(t.confirmed("a", 10), 1);
    assert!(t
        .append(c.now(), 1, "a", 10, AckMode::SemiSync(2))
        .is_empty());
    assert_eq!(t.replica_acked(c.now(), "r2", "a", 10), vec![done(1, 2)]);
}

#[test]
fn older_acks_are_ignored() {
    let c = Clock::new();
    let mut t = with_replicas(TimeoutPolicy::Fail, &c);
    let _ = t.replica_acked(c.now(), "r1", "a", 10);
    let _ = t.replica_acked(c.now(), "r1", "a", 4);
    assert_eq!(t.confirmed("a", 10), 1);
    assert_eq!(t.confirmed("a", 11), 0);
}

#[test]
fn acks_from_unknown_replicas_are_ignored() {
    let c = Clock::new();
    let mut t = tracker(TimeoutPolicy::Fail);
    assert!(t
        .append(c.now(), 1, "a", 5, AckMode::SemiSync(1))
        .is_empty());
    assert!(t.replica_acked(c.now(), "stranger", "a", 5).is_empty());
    assert_eq!(t.confirmed("a", 5), 0);
    assert_eq!(t.pending_len(), 1);
}

#[test]
fn acks_are_per_log() {
    let c = Clock::new();
    let mut t = with_replicas(TimeoutPolicy::Fail, &c);
    assert!(t
        .append(c.now(), 1, "a", 5, AckMode::SemiSync(1))
        .is_empty());
    assert!(t
        .append(c.now(), 2, "b", 5, AckMode::SemiSync(1))
        .is_empty());
    assert_eq!(t.replica_acked(c.now(), "r1", "b", 5), vec![done(2, 1)]);
    assert_eq!(t.confirmed("a", 5), 0);
    assert_eq!(t.replica_acked(c.now(), "r1", "a", 7), vec![done(1, 1)]);
}

#[test]
fn an_ack_completes_a_prefix_in_offset_order() {
    let c = Clock::new();
    let mut t = with_replicas(TimeoutPolicy::Fail, &c);
    for (req, end) in [(1, 10), (2, 20), (3, 30), (4, 40)] {
        assert!(t
            .append(c.now(), req, "a", end, AckMode::SemiSync(1))
            .is_empty());
    }
    assert_eq!(
        t.replica_acked(c.now(), "r1", "a", 30),
        vec![done(1, 1), done(2, 1), done(3, 1)]
    );
    assert_eq!(t.pending_len(), 1);
    assert_eq!(t.replica_acked(c.now(), "r2", "a", 45), vec![done(4, 1)]);
}

#[test]
fn mixed_modes_in_one_log_complete_independently_in_offset_order() {
    let c = Clock::new();
    let mut t = with_replicas(TimeoutPolicy::Fail, &c);
    assert!(t
        .append(c.now(), 1, "a", 10, AckMode::SemiSync(2))
        .is_empty());
    assert!(t
        .append(c.now(), 2, "a", 20, AckMode::SemiSync(1))
        .is_empty());
    assert!(t.append(c.now(), 3, "a", 30, AckMode::Sync).is_empty());
    assert_eq!(t.replica_acked(c.now(), "r1", "a", 20), vec![done(2, 1)]);
    // s1 is the only sync replica: it completes the Sync request and the second confirmation.
    assert_eq!(
        t.replica_acked(c.now(), "s1", "a", 30),
        vec![done(1, 2), done(3, 1)]
    );
}

#[test]
fn losing_the_last_sync_replica_fails_pending_sync_requests() {
    let c = Clock::new();
    let mut t = tracker(TimeoutPolicy::Fail);
    let _ = t.replica_connected(c.now(), "s1", true, true);
    assert!(t.append(c.now(), 1, "a", 10, AckMode::Sync).is_empty());
    let _ = t.replica_acked(c.now(), "s1", "a", 5);
    let out = t.replica_connected(c.now(), "s1", false, true);
    assert!(
        matches!(
            out.as_slice(),
            [Command::Fail {
                req: 1,
                confirmed: 0,
                required: 0,
                ..
            }]
        ),
        "{out:?}"
    );
}

#[test]
fn a_new_sync_replica_joins_the_set_pending_requests_wait_for() {
    let c = Clock::new();
    let mut t = tracker(TimeoutPolicy::Fail);
    let _ = t.replica_connected(c.now(), "s1", true, true);
    assert!(t.append(c.now(), 1, "a", 10, AckMode::Sync).is_empty());
    assert!(t.replica_connected(c.now(), "s2", true, true).is_empty());
    assert!(t.replica_acked(c.now(), "s1", "a", 10).is_empty());
    assert_eq!(t.replica_acked(c.now(), "s2", "a", 10), vec![done(1, 2)]);
}

#[test]
fn cancel_forgets_the_request() {
    let mut c = Clock::new();
    let mut t = with_replicas(TimeoutPolicy::Fail, &c);
    assert!(t
        .append(c.now(), 1, "a", 10, AckMode::SemiSync(1))
        .is_empty());
    t.cancel(1);
    t.cancel(1);
    t.cancel(99);
    assert_eq!(t.pending_len(), 0);
    assert_eq!(t.next_deadline(), None);
    assert!(t.replica_acked(c.now(), "r1", "a", 10).is_empty());
    assert!(t.tick(c.advance(TIMEOUT * 2)).is_empty());
}

#[test]
fn a_cancelled_id_can_be_reused() {
    let c = Clock::new();
    let mut t = with_replicas(TimeoutPolicy::Fail, &c);
    assert!(t
        .append(c.now(), 1, "a", 10, AckMode::SemiSync(1))
        .is_empty());
    t.cancel(1);
    assert!(t
        .append(c.now(), 1, "b", 10, AckMode::SemiSync(1))
        .is_empty());
    assert!(t.replica_acked(c.now(), "r1", "a", 10).is_empty());
    assert_eq!(t.replica_acked(c.now(), "r1", "b", 10), vec![done(1, 1)]);
}

#[test]
fn requests_past_the_bound_fail_at_once() {
    let c = Clock::new();
    let mut t = with_replicas(TimeoutPolicy::Fail, &c);
    for req in 0..PENDING_MAX as u64 {
        assert!(t
            .append(c.now(), req, "a", req + 1, AckMode::SemiSync(1))
            .is_empty());
    }
    let out = t.append(c.now(), u64::MAX, "a", 1, AckMode::SemiSync(1));
    assert!(
        matches!(out.as_slice(), [Command::Fail { required: 1, reason, .. }] if reason.contains("retry")),
        "{out:?}"
    );
    // Async is never bounded: it does not wait.
    assert_eq!(t.append(c.now(), u64::MAX, "a", 1, AckMode::Async).len(), 1);
    assert_eq!(t.pending_len(), PENDING_MAX);
    assert_eq!(
        t.replica_acked(c.now(), "r1", "a", 3),
        vec![done(0, 1), done(1, 1), done(2, 1)]
    );
}

#[test]
fn gone_replicas_are_bounded_but_sync_ones_are_kept() {
    let mut c = Clock::new();
    let mut t = tracker(TimeoutPolicy::Fail);
    let _ = t.replica_connected(c.now(), "sync", true, true);
    let _ = t.replica_acked(c.now(), "sync", "a", 1);
    let _ = t.replica_disconnected(c.now(), "sync");
    let n = DISCONNECTED_MAX + 3;
    for i in 0..n {
        let id = format!("r{i}");
        let _ = t.replica_connected(c.now(), &id, false, true);
        let _ = t.replica_acked(c.now(), &id, "a", 1);
        c.advance(Duration::from_millis(1));
        let _ = t.replica_disconnected(c.now(), &id);
    }
    // The three longest gone are forgotten; the sync replica is not.
    assert_eq!(
        t.confirmed("a", 1),
        u32::try_from(DISCONNECTED_MAX).unwrap() + 1
    );
    assert!(t.append(c.now(), 1, "a", 2, AckMode::Sync).is_empty());
    // A forgotten replica that returns starts from nothing.
    let _ = t.replica_connected(c.now(), "r0", false, true);
    assert_eq!(
        t.confirmed("a", 1),
        u32::try_from(DISCONNECTED_MAX).unwrap() + 1
    );
}

#[test]
fn forget_log_fails_its_requests_and_drops_its_positions() {
    let mut c = Clock::new();
    let mut t = with_replicas(TimeoutPolicy::Fail, &c);
    let _ = t.replica_acked(c.now(), "r1", "a", 5);
    assert!(t
        .append(c.now(), 1, "a", 10, AckMode::SemiSync(1))
        .is_empty());
    assert!(t
        .append(c.now(), 2, "b", 10, AckMode::SemiSync(1))
        .is_empty());
    let out = t.forget_log("a");
    assert!(
        matches!(out.as_slice(), [Command::Fail { req: 1, reason, .. }] if reason.contains("deleted")),
        "{out:?}"
    );
    assert_eq!(t.confirmed("a", 5), 0);
    assert_eq!(t.pending_len(), 1);
    let _ = t.tick(c.advance(TIMEOUT));
    assert_eq!(t.pending_len(), 0);
}

#[test]
fn confirmed_counts_counting_replicas_at_or_beyond() {
    let c = Clock::new();
    let mut t = with_replicas(TimeoutPolicy::Fail, &c);
    let _ = t.replica_connected(c.now(), "nc", false, false);
    let _ = t.replica_acked(c.now(), "nc", "a", 100);
    let _ = t.replica_acked(c.now(), "r1", "a", 10);
    let _ = t.replica_acked(c.now(), "r2", "a", 20);
    assert_eq!(t.confirmed("a", 0), 3);
    assert_eq!(t.confirmed("a", 10), 2);
    assert_eq!(t.confirmed("a", 11), 1);
    assert_eq!(t.confirmed("a", 21), 0);
    assert_eq!(t.confirmed("other", 1), 0);
}

#[test]
fn reconnect_with_new_flags_settles_pending_requests() {
    let c = Clock::new();
    let mut t = tracker(TimeoutPolicy::Fail);
    let _ = t.replica_connected(c.now(), "r1", false, false);
    assert!(t
        .append(c.now(), 1, "a", 10, AckMode::SemiSync(1))
        .is_empty());
    let _ = t.replica_acked(c.now(), "r1", "a", 10);
    // Configured to count now: its earlier ack confirms.
    assert_eq!(
        t.replica_connected(c.now(), "r1", false, true),
        vec![done(1, 1)]
    );
}

#[test]
fn a_handshake_lowers_what_a_cut_back_replica_counts_for() {
    let c = Clock::new();
    let mut t = tracker(TimeoutPolicy::Fail);
    let _ = t.replica_connected(c.now(), "r1", false, true);
    let _ = t.replica_acked(c.now(), "r1", "a", 100);
    // It reconnects having cut its log back to 8: its ack of 100 no longer holds.
    let _ = t.replica_disconnected(c.now(), "r1");
    let _ = t.replica_holds(c.now(), "r1", "a", 8);
    let _ = t.replica_connected(c.now(), "r1", false, true);
    assert!(t
        .append(c.now(), 1, "a", 50, AckMode::SemiSync(1))
        .is_empty());
    assert_eq!(t.replica_acked(c.now(), "r1", "a", 50), vec![done(1, 1)]);
}
