//! Executes the ack state machine (spool-replication's `AckTracker`): appends that wait
//! for replicas register here and are woken by the commands the machine emits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use spool_replication::ack::{AckConfig, AckMode, AckTracker, Command, RequestId};
use tokio::sync::{oneshot, Notify};

/// How often the ticker looks for timed-out waits while some are pending.
const TICK: Duration = Duration::from_millis(5);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done {
        confirmed: u32,
        degraded: bool,
    },
    Failed {
        confirmed: u32,
        required: u32,
        reason: String,
    },
}

#[derive(Debug)]
struct Inner {
    tracker: AckTracker,
    waiters: HashMap<RequestId, oneshot::Sender<Outcome>>,
}

#[derive(Debug)]
pub struct AckRuntime {
    inner: Mutex<Inner>,
    next_id: AtomicU64,
    /// Appends in flight that will wait for replicas (semi-sync/sync). Counted from before
    /// their records exist, so frames carrying them are always sent asking for a sync.
    replica_waits: AtomicU64,
    /// Woken when a wait begins while none was pending: the ticker sleeps meanwhile.
    pending: Notify,
    /// Ticks run, for tests.
    ticks: AtomicU64,
}

/// Held by an append that will wait for replicas, from submit to ack.
#[derive(Debug)]
pub struct ReplicaWait(Arc<AckRuntime>);

impl Drop for ReplicaWait {
    fn drop(&mut self) {
        self.0.replica_waits.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Forgets a request whose caller went away.
struct CancelGuard<'a> {
    rt: &'a AckRuntime,
    req: RequestId,
    armed: bool,
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut i = self.rt.inner.lock();
            i.tracker.cancel(self.req);
            i.waiters.remove(&self.req);
        }
    }
}

impl AckRuntime {
    pub fn new(config: AckConfig) -> Arc<Self> {
        Arc::new(AckRuntime {
            inner: Mutex::new(Inner {
                tracker: AckTracker::new(config),
                waiters: HashMap::new(),
            }),
            replica_waits: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            pending: Notify::new(),
            ticks: AtomicU64::new(0),
        })
    }

    fn execute(inner: &mut Inner, cmds: Vec<Command>) {
        for c in cmds {
            match c {
                Command::Complete {
                    req,
                    confirmed,
                    degraded,
                } => {
                    if let Some(w) = inner.waiters.remove(&req) {
                        let _ = w.send(Outcome::Done {
                            confirmed,
                            degraded,
                        });
                    }
                }
                Command::Fail {
                    req,
                    confirmed,
                    required,
                    reason,
                } => {
                    if let Some(w) = inner.waiters.remove(&req) {
                        let _ = w.send(Outcome::Failed {
                            confirmed,
                            required,
                            reason,
                        });
                    }
                }
                Command::Degraded { reason } => {
                    metrics::counter!("spool_ack_degraded_total").increment(1);
                    tracing::warn!(%reason, "replicated acks degraded to async");
                }
                Command::Recovered => {
                    metrics::counter!("spool_ack_recovered_total").increment(1);
                    tracing::info!("replicas caught up: replicated acks are back");
                }
            }
        }
    }

    /// Wait until `log` up to `end` satisfies `mode` (or the machine gives up).
    pub async fn wait(&self, log: &str, end: u64, mode: AckMode) -> Outcome {
        let req = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let first = {
            let mut i = self.inner.lock();
            let idle = i.tracker.pending_len() == 0;
            i.waiters.insert(req, tx);
            let cmds = i.tracker.append(Instant::now(), req, log, end, mode);
            Self::execute(&mut i, cmds);
            idle && i.tracker.pending_len() > 0
        };
        if first {
            self.pending.notify_one();
        }
        let mut guard = CancelGuard {
            rt: self,
            req,
            armed: true,
        };
        let out = rx.await.unwrap_or(Outcome::Failed {
            confirmed: 0,
            required: 0,
            reason: "ack tracking stopped".into(),
        });
        guard.armed = false;
        out
    }

    /// Note an append that will wait for replicas; hold the guard until it is acked.
    pub fn expect_wait(self: &Arc<Self>) -> ReplicaWait {
        self.replica_waits.fetch_add(1, Ordering::AcqRel);
        ReplicaWait(self.clone())
    }

    /// Whether replicas should sync what they receive now (someone waits on them), rather
    /// than with their periodic sync.
    pub fn replicas_awaited(&self) -> bool {
        self.replica_waits.load(Ordering::Acquire) > 0
    }

    pub fn connected(&self, id: &str, sync: bool, counts: bool) {
        let mut i = self.inner.lock();
        let cmds = i
            .tracker
            .replica_connected(Instant::now(), id, sync, counts);
        Self::execute(&mut i, cmds);
    }

    pub fn disconnected(&self, id: &str) {
        let mut i = self.inner.lock();
        let cmds = i.tracker.replica_disconnected(Instant::now(), id);
        Self::execute(&mut i, cmds);
    }

    pub fn acked(&self, id: &str, log: &str, end: u64) {
        let mut i = self.inner.lock();
        let cmds = i.tracker.replica_acked(Instant::now(), id, log, end);
        Self::execute(&mut i, cmds);
    }

    /// Replica `id` holds `log` up to exactly `end` (its handshake settled it, see
    /// `AckTracker::replica_holds`).
    pub fn holds(&self, id: &str, log: &str, end: u64) {
        let mut i = self.inner.lock();
        let cmds = i.tracker.replica_holds(Instant::now(), id, log, end);
        Self::execute(&mut i, cmds);
    }

    /// A log was deleted: waiting appends on it are released as the machine decides.
    pub fn forget_log(&self, log: &str) {
        let mut i = self.inner.lock();
        let cmds = i.tracker.forget_log(log);
        Self::execute(&mut i, cmds);
    }

    /// Why `mode` cannot be met with the replicas known now (see
    /// `AckTracker::cannot_satisfy`).
    pub fn cannot_satisfy(&self, mode: AckMode) -> Option<String> {
        self.inner.lock().tracker.cannot_satisfy(mode)
    }

    pub fn is_degraded(&self) -> bool {
        self.inner.lock().tracker.is_degraded()
    }

    /// Drive timeouts: a tick every [`TICK`] while waits are pending, none otherwise.
    pub fn spawn_ticker(self: &Arc<Self>) {
        let rt = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                if rt.inner.lock().tracker.pending_len() == 0 {
                    // A wait that begins after this look stores a permit: none is missed.
                    rt.pending.notified().await;
                    tick.reset();
                    continue;
                }
                tick.tick().await;
                rt.ticks.fetch_add(1, Ordering::Relaxed);
                let mut i = rt.inner.lock();
                let cmds = i.tracker.tick(Instant::now());
                Self::execute(&mut i, cmds);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use spool_replication::ack::TimeoutPolicy;

    use super::*;

    #[tokio::test]
    async fn the_ticker_sleeps_until_a_wait_begins_and_still_times_it_out() {
        let rt = AckRuntime::new(AckConfig {
            timeout: Duration::from_millis(50),
            policy: TimeoutPolicy::Fail,
        });
        rt.spawn_ticker();
        rt.connected("r1", true, true);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            rt.ticks.load(Ordering::Relaxed),
            0,
            "ticked with nothing waiting"
        );
        let waited = tokio::time::timeout(
            Duration::from_secs(10),
            rt.wait("a", 1, AckMode::SemiSync(1)),
        )
        .await
        .expect("the wait never timed out: the ticker slept through it");
        assert!(
            matches!(waited, Outcome::Failed { confirmed: 0, .. }),
            "{waited:?}"
        );
        let ticked = rt.ticks.load(Ordering::Relaxed);
        assert!(ticked > 0);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            rt.ticks.load(Ordering::Relaxed) <= ticked + 1,
            "kept ticking after the last wait ended"
        );
    }
}
