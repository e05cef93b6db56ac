//! Requests waiting for replica acks, indexed the three ways the tracker asks for them:
//! by id (cancel), by (log, need) in offset order (an ack completes a prefix), and by
//! deadline (tick and `next_deadline` look at the earliest only).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use super::{Need, RequestId};

/// One waiting request.
#[derive(Clone, Debug)]
pub(super) struct Waiting {
    pub(super) log: String,
    /// End offset (exclusive) of the request's records.
    pub(super) end: u64,
    pub(super) need: Need,
    /// `None` when the timeout is too large to represent: it never expires.
    pub(super) deadline: Option<Instant>,
}

/// The three indexes always hold the same requests (checked by `check_invariants`).
#[derive(Debug, Default)]
pub(super) struct PendingSet {
    by_req: BTreeMap<RequestId, Waiting>,
    /// Per log, per need: (end, req) ascending. Empty queues and logs are removed.
    queues: BTreeMap<String, BTreeMap<Need, BTreeSet<(u64, RequestId)>>>,
    /// (deadline, req) of the requests that have one.
    deadlines: BTreeSet<(Instant, RequestId)>,
}

impl PendingSet {
    pub(super) fn len(&self) -> usize {
        self.by_req.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.by_req.is_empty()
    }

    pub(super) fn contains(&self, req: RequestId) -> bool {
        self.by_req.contains_key(&req)
    }

    pub(super) fn get(&self, req: RequestId) -> Option<&Waiting> {
        self.by_req.get(&req)
    }

    pub(super) fn insert(&mut self, req: RequestId, w: Waiting) {
        let queue = self.queues.entry(w.log.clone()).or_default();
        let inserted = queue.entry(w.need).or_default().insert((w.end, req));
        debug_assert!(inserted);
        if let Some(d) = w.deadline {
            let inserted = self.deadlines.insert((d, req));
            debug_assert!(inserted);
        }
        let old = self.by_req.insert(req, w);
        assert!(old.is_none(), "request {req} is already pending");
    }

    pub(super) fn remove(&mut self, req: RequestId) -> Option<Waiting> {
        let w = self.by_req.remove(&req)?;
        let Some(needs) = self.queues.get_mut(&w.log) else {
            unreachable!("pending request {req} is queued");
        };
        let Some(queue) = needs.get_mut(&w.need) else {
            unreachable!("pending request {req} is queued");
        };
        let removed = queue.remove(&(w.end, req));
        debug_assert!(removed);
        if queue.is_empty() {
            needs.remove(&w.need);
            if needs.is_empty() {
                self.queues.remove(&w.log);
            }
        }
        if let Some(d) = w.deadline {
            let removed = self.deadlines.remove(&(d, req));
            debug_assert!(removed);
        }
        Some(w)
    }

    /// Logs that have waiting requests, in name order.
    pub(super) fn logs(&self) -> Vec<String> {
        self.queues.keys().cloned().collect()
    }

    /// The needs `log`'s waiting requests have.
    pub(super) fn needs(&self, log: &str) -> Vec<Need> {
        self.queues
            .get(log)
            .map(|n| n.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Removes the requests of `log` waiting for `need` whose end is at most `up_to`, in
    /// offset order: a prefix of the queue.
    pub(super) fn take_up_to(
        &mut self,
        log: &str,
        need: Need,
        up_to: u64,
    ) -> Vec<(RequestId, Waiting)> {
        let mut prefix = Vec::new();
        if let Some(queue) = self.queues.get(log).and_then(|n| n.get(&need)) {
            prefix.extend(queue.iter().take_while(|&&(end, _)| end <= up_to).copied());
        }
        prefix
            .into_iter()
            .map(|(_, req)| {
                let w = self.remove(req).expect("queued request is pending");
                (req, w)
            })
            .collect()
    }

    /// Removes every request of `log`, in (need, offset) order.
    pub(super) fn take_log(&mut self, log: &str) -> Vec<(RequestId, Waiting)> {
        let mut out = Vec::new();
        for need in self.needs(log) {
            out.extend(self.take_up_to(log, need, u64::MAX));
        }
        debug_assert!(!self.queues.contains_key(log));
        out
    }

    /// Requests whose deadline is at or before `now`, earliest first.
    pub(super) fn expired(&self, now: Instant) -> Vec<RequestId> {
        self.deadlines
            .iter()
            .take_while(|&&(d, _)| d <= now)
            .map(|&(_, req)| req)
            .collect()
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(d, _)| d)
    }

    /// Removes everything, in (log, need, offset) order.
    pub(super) fn drain(&mut self) -> Vec<(RequestId, Waiting)> {
        let mut out = Vec::with_capacity(self.len());
        for log in self.logs() {
            out.extend(self.take_log(&log));
        }
        debug_assert!(self.is_empty() && self.deadlines.is_empty());
        out
    }

    /// (log, need, end) of the first request in each queue.
    pub(super) fn heads(&self) -> impl Iterator<Item = (&str, Need, u64)> + '_ {
        self.queues.iter().flat_map(|(log, needs)| {
            needs.iter().filter_map(move |(need, queue)| {
                queue.first().map(|&(end, _)| (log.as_str(), *need, end))
            })
        })
    }

    /// Cheap consistency checks between the indexes (no per-request walk).
    pub(super) fn check_invariants(&self) {
        let queued: usize = self
            .queues
            .values()
            .flat_map(|n| n.values())
            .map(|q| q.len())
            .sum();
        assert_eq!(
            queued,
            self.by_req.len(),
            "every pending request is queued once"
        );
        assert!(self.deadlines.len() <= self.by_req.len());
        assert!(
            self.queues
                .values()
                .all(|n| !n.is_empty() && n.values().all(|q| !q.is_empty())),
            "empty queues are removed"
        );
    }
}
