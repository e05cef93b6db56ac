//! Random event sequences against a naive model of the ack rules, with a fake clock.
//!
//! The model recounts everything from scratch on every check; the tracker must agree with it
//! on what it completes (and when), what it fails, and the degraded state.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

const TIMEOUT_MS: u64 = 100;
const REPLICAS: [&str; 4] = ["r0", "r1", "r2", "r3"];
const LOGS: [&str; 2] = ["a", "b"];

#[derive(Clone, Debug)]
enum Op {
    Connect { id: usize, sync: bool, counts: bool },
    Disconnect { id: usize },
    Ack { id: usize, log: usize, end: u64 },
    Holds { id: usize, log: usize, end: u64 },
    Append { log: usize, end: u64, mode: AckMode },
    Advance { ms: u64 },
    Tick,
    Cancel { pick: prop::sample::Index },
}

fn mode() -> impl Strategy<Value = AckMode> {
    prop_oneof![
        Just(AckMode::Async),
        (0u32..4).prop_map(AckMode::SemiSync),
        Just(AckMode::Sync),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..REPLICAS.len(), any::<bool>(), any::<bool>())
            .prop_map(|(id, sync, counts)| Op::Connect { id, sync, counts }),
        1 => (0..REPLICAS.len()).prop_map(|id| Op::Disconnect { id }),
        5 => (0..REPLICAS.len(), 0..LOGS.len(), 0u64..40)
            .prop_map(|(id, log, end)| Op::Ack { id, log, end }),
        1 => (0..REPLICAS.len(), 0..LOGS.len(), 0u64..40)
            .prop_map(|(id, log, end)| Op::Holds { id, log, end }),
        5 => (0..LOGS.len(), 1u64..40, mode()).prop_map(|(log, end, mode)| Op::Append { log, end, mode }),
        2 => (0u64..80).prop_map(|ms| Op::Advance { ms }),
        2 => Just(Op::Tick),
        1 => any::<prop::sample::Index>().prop_map(|pick| Op::Cancel { pick }),
    ]
}

#[derive(Debug, Default)]
struct ModelReplica {
    sync: bool,
    counts: bool,
    acked: BTreeMap<usize, u64>,
}

#[derive(Debug)]
struct ModelRequest {
    log: usize,
    end: u64,
    mode: AckMode,
    at: Instant,
}

#[derive(Debug, Default)]
struct Model {
    replicas: BTreeMap<usize, ModelReplica>,
    pending: BTreeMap<RequestId, ModelRequest>,
    degraded: bool,
    /// While degraded, per log: the candidates for the tracker's probe (the newest append, or
    /// every released request with the largest end: which one the tracker keeps is its choice).
    probes: BTreeMap<usize, Vec<(u64, AckMode)>>,
}

impl Model {
    fn confirmed(&self, log: usize, end: u64) -> u32 {
        let n = self
            .replicas
            .values()
            .filter(|r| r.counts && r.acked.get(&log).copied().unwrap_or(0) >= end)
            .count();
        u32::try_from(n).unwrap()
    }

    fn sync_set(&self) -> impl Iterator<Item = &ModelReplica> {
        self.replicas.values().filter(|r| r.sync && r.counts)
    }

    fn satisfied(&self, log: usize, end: u64, mode: AckMode) -> bool {
        match mode {
            AckMode::Async => true,
            AckMode::SemiSync(k) => self.confirmed(log, end) >= k,
            AckMode::Sync => {
                self.sync_set().count() > 0
                    && self
                        .sync_set()
                        .all(|r| r.acked.get(&log).copied().unwrap_or(0) >= end)
            }
        }
    }
}

/// Checks one batch of commands against the model and applies them to it.
fn check_commands(
    model: &mut Model,
    out: &[Command],
    now: Instant,
    policy: TimeoutPolicy,
    appended: Option<(RequestId, ModelRequest)>,
) -> Result<(), TestCaseError> {
    let mut appended = appended;
    let timeout = Duration::from_millis(TIMEOUT_MS);
    for c in out {
        match c {
            Command::Degraded { .. } => {
                prop_assert_eq!(policy, TimeoutPolicy::DegradeToAsync);
                prop_assert!(!model.degraded, "Degraded twice");
                model.degraded = true;
            }
            Command::Recovered => {
                prop_assert!(model.degraded, "Recovered while not degraded");
                let probe_satisfied = model.probes.iter().any(|(&log, cands)| {
                    cands
                        .iter()
                        .any(|&(end, mode)| model.satisfied(log, end, mode))
                });
                let append_satisfied = appended
                    .as_ref()
                    .is_some_and(|(_, r)| model.satisfied(r.log, r.end, r.mode));
                prop_assert!(probe_satisfied || append_satisfied, "unjustified Recovered");
                model.degraded = false;
                model.probes.clear();
            }
            Command::Complete {
                req,
                confirmed,
                degraded,
            } => {
                let (r, new) = take(model, &mut appended, *req)?;
                prop_assert_eq!(*confirmed, model.confirmed(r.log, r.end));
                if *degraded {
                    prop_assert!(model.degraded, "degraded ack outside degraded mode");
                    prop_assert!(r.mode != AckMode::Async);
                    prop_assert!(!model.satisfied(r.log, r.end, r.mode));
                    let cands = model.probes.entry(r.log).or_default();
                    let largest = cands.first().map(|c| c.0);
                    if new || largest.is_none_or(|e| e < r.end) {
                        *cands = vec![(r.end, r.mode)];
                    } else if largest == Some(r.end) {
                        cands.push((r.end, r.mode));
                    }
                } else {
                    prop_assert!(model.satisfied(r.log, r.end, r.mode), "early ack {:?}", r);
                }
            }
            Command::Fail { req, confirmed, .. } => {
                let (r, _) = take(model, &mut appended, *req)?;
                prop_assert_eq!(*confirmed, model.confirmed(r.log, r.end));
                prop_assert!(!model.satisfied(r.log, r.end, r.mode));
                let no_sync = r.mode == AckMode::Sync && model.sync_set().count() == 0;
                let timed_out = policy == TimeoutPolicy::Fail && now >= r.at + timeout;
                prop_assert!(no_sync || timed_out, "unexpected failure of {:?}", r);
            }
        }
    }
    // Not decided now: it waits.
    if let Some((req, r)) = appended {
        model.pending.insert(req, r);
    }
    Ok(())
}

/// The request a command decides, exactly once: the one just appended (true) or a pending one.
fn take(
    model: &mut Model,
    appended: &mut Option<(RequestId, ModelRequest)>,
    req: RequestId,
) -> Result<(ModelRequest, bool), TestCaseError> {
    if appended.as_ref().is_some_and(|(id, _)| *id == req) {
        return Ok((appended.take().unwrap().1, true));
    }
    let r = model.pending.remove(&req);
    let r =
        r.ok_or_else(|| TestCaseError::fail(format!("request {req} decided twice or unknown")))?;
    Ok((r, false))
}

/// After every event: the tracker holds exactly the model's waiting requests, none of which is
/// satisfiable or past its deadline after a tick.
fn check_state(t: &AckTracker, model: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(t.is_degraded(), model.degraded);
    prop_assert_eq!(t.pending_len(), model.pending.len());
    if model.degraded {
        prop_assert!(model.pending.is_empty());
        // A probe whose every candidate is satisfied must have ended degraded mode.
        for (&log, cands) in &model.probes {
            let all = cands
                .iter()
                .all(|&(end, mode)| model.satisfied(log, end, mode));
            prop_assert!(cands.is_empty() || !all, "missed recovery on log {}", log);
        }
    }
    for r in model.pending.values() {
        prop_assert!(
            !model.satisfied(r.log, r.end, r.mode),
            "satisfied but waiting: {:?}",
            r
        );
    }
    let oldest = model.pending.values().map(|r| r.at).min();
    prop_assert_eq!(
        t.next_deadline(),
        oldest.map(|at| at + Duration::from_millis(TIMEOUT_MS))
    );
    for (log, name) in LOGS.iter().enumerate() {
        for end in [0, 1, 20, 39] {
            prop_assert_eq!(t.confirmed(name, end), model.confirmed(log, end));
        }
    }
    Ok(())
}

fn run(policy: TimeoutPolicy, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let base = Instant::now();
    let mut elapsed = Duration::ZERO;
    let mut t = AckTracker::new(AckConfig {
        timeout: Duration::from_millis(TIMEOUT_MS),
        policy,
    });
    let mut model = Model::default();
    let mut next_req: RequestId = 1;
    for op in ops
        .into_iter()
        .chain([Op::Advance { ms: TIMEOUT_MS }, Op::Tick])
    {
        let now = base + elapsed;
        let mut appended = None;
        let out = match op {
            Op::Connect { id, sync, counts } => {
                let r = model.replicas.entry(id).or_default();
                r.sync = sync;
                r.counts = counts;
                t.replica_connected(now, REPLICAS[id], sync, counts)
            }
            Op::Disconnect { id } => t.replica_disconnected(now, REPLICAS[id]),
            Op::Ack { id, log, end } => {
                if let Some(r) = model.replicas.get_mut(&id) {
                    let e = r.acked.entry(log).or_default();
                    *e = (*e).max(end);
                }
                t.replica_acked(now, REPLICAS[id], LOGS[log], end)
            }
            Op::Holds { id, log, end } => {
                if let Some(r) = model.replicas.get_mut(&id) {
                    r.acked.insert(log, end);
                }
                t.replica_holds(now, REPLICAS[id], LOGS[log], end)
            }
            Op::Append { log, end, mode } => {
                let req = next_req;
                next_req += 1;
                appended = Some((
                    req,
                    ModelRequest {
                        log,
                        end,
                        mode,
                        at: now,
                    },
                ));
                t.append(now, req, LOGS[log], end, mode)
            }
            Op::Advance { ms } => {
                elapsed += Duration::from_millis(ms);
                Vec::new()
            }
            Op::Tick => t.tick(now),
            Op::Cancel { pick } => {
                if !model.pending.is_empty() {
                    let req = *model
                        .pending
                        .keys()
                        .nth(pick.index(model.pending.len()))
                        .unwrap();
                    model.pending.remove(&req);
                    t.cancel(req);
                }
                Vec::new()
            }
        };
        let ticked = matches!(op, Op::Tick);
        check_commands(&mut model, &out, now, policy, appended)?;
        check_state(&t, &model)?;
        if ticked {
            let deadline = Duration::from_millis(TIMEOUT_MS);
            prop_assert!(model.pending.values().all(|r| now < r.at + deadline));
        }
    }
    // The final advance and tick settled everything.
    prop_assert_eq!(t.pending_len(), 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn fail_policy_matches_the_model(ops in prop::collection::vec(op(), 0..80)) {
        run(TimeoutPolicy::Fail, ops)?;
    }

    #[test]
    fn degrade_policy_matches_the_model(ops in prop::collection::vec(op(), 0..80)) {
        run(TimeoutPolicy::DegradeToAsync, ops)?;
    }
}
