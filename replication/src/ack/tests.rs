//! Scenario tests for the ack tracker, driven by a fake clock: shared helpers here, the
//! scenarios by topic in the submodules.

use std::time::{Duration, Instant};

use super::*;

mod modes;
mod timeouts;

const TIMEOUT: Duration = Duration::from_millis(100);

/// A fake clock: one base `Instant` plus elapsed time that only the test moves.
struct Clock {
    base: Instant,
    elapsed: Duration,
}

impl Clock {
    fn new() -> Self {
        Clock {
            base: Instant::now(),
            elapsed: Duration::ZERO,
        }
    }

    fn now(&self) -> Instant {
        self.base + self.elapsed
    }

    fn advance(&mut self, d: Duration) -> Instant {
        self.elapsed += d;
        self.now()
    }
}

fn tracker(policy: TimeoutPolicy) -> AckTracker {
    AckTracker::new(AckConfig {
        timeout: TIMEOUT,
        policy,
    })
}

fn done(req: RequestId, confirmed: u32) -> Command {
    Command::Complete {
        req,
        confirmed,
        degraded: false,
    }
}

fn degraded(req: RequestId, confirmed: u32) -> Command {
    Command::Complete {
        req,
        confirmed,
        degraded: true,
    }
}

/// Tracker with replicas r1, r2 (counting, not sync) and s1 (sync, counting) connected.
fn with_replicas(policy: TimeoutPolicy, c: &Clock) -> AckTracker {
    let mut t = tracker(policy);
    assert!(t.replica_connected(c.now(), "r1", false, true).is_empty());
    assert!(t.replica_connected(c.now(), "r2", false, true).is_empty());
    assert!(t.replica_connected(c.now(), "s1", true, true).is_empty());
    t
}
