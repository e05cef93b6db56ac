//! The coordinator as failover sees it: leases, keys and compare-and-swap transactions,
//! with etcd's semantics. [`EtcdCoordinator`](super::etcd::EtcdCoordinator) talks to etcd;
//! [`MemoryCoordinator`](super::memory::MemoryCoordinator) is the same contract in memory,
//! with a manual clock, for unit tests.
//!
//! The contract, held by every implementation (one conformance suite checks both):
//! - The store has one revision, raised by one for every call that changes it (a put, a
//!   transaction that changed keys, a lease that expired or was revoked with keys on it);
//!   every key changed by that call gets it as its `mod_revision`. Revisions only grow.
//! - A key put with a lease is removed when the lease expires or is revoked; a put without
//!   a lease detaches the key from any lease it had.
//! - A lease lives while it is renewed within its TTL; TTLs are whole seconds (a finer one
//!   is rounded up, and etcd may raise it to its own minimum).
//! - A call that fails with [`CoordError::Unavailable`] may or may not have been applied.
//!   [`CoordError::LeaseExpired`] and [`CoordError::Refused`] were not applied.

use std::future::Future;
use std::time::Duration;

/// A lease's id, as etcd numbers them. 0 is "no lease" on the wire; a granted lease is
/// never 0.
pub type LeaseId = i64;

/// One key as read: its value, the revision of its last change and the lease it is on
/// (0: none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
    pub lease: LeaseId,
}

/// One condition of a transaction, on one key, with etcd's semantics for a key that is
/// absent: it has create and mod revision 0 and lease 0, and no value (so `Value` never
/// holds for it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key does not exist (its create revision is 0).
    Absent(String),
    /// The key's last change was at this revision (0: the key is absent).
    ModRevision(String, i64),
    /// The key exists and holds exactly these bytes.
    Value(String, Vec<u8>),
    /// The key is on this lease (0: on none, or absent).
    LeaseIs(String, LeaseId),
}

/// One read of [`Coordinator::read`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// The key, if present: no entry or one.
    Key(String),
    /// Every key starting with this prefix, in key order.
    Prefix(String),
}

/// One write of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    /// Remove the key; nothing if it is absent.
    Delete(String),
}

#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    /// No endpoint answered within the client's timeout, or the coordinator said it cannot
    /// serve now (no leader, stopping). The call may have been applied.
    #[error("coordinator unreachable: {0}")]
    Unavailable(String),
    /// The lease named by the call is gone (expired or revoked); nothing was applied.
    #[error("lease {0} expired")]
    LeaseExpired(LeaseId),
    /// The coordinator answered and refused (bad credentials, permission, invalid request).
    #[error("coordinator refused: {0}")]
    Refused(String),
}

/// What failover needs of its coordinator. Implementations are cheap to clone handles on
/// shared state, and every call returns within the implementation's bound (etcd: its
/// client's timeout per endpoint tried).
pub trait Coordinator: Send + Sync + 'static {
    /// A new lease of at least `ttl` (whole seconds, at least one).
    fn grant(&self, ttl: Duration) -> impl Future<Output = Result<LeaseId, CoordError>> + Send;
    /// One renewal; the TTL etcd reports, or LeaseExpired.
    fn keep_alive(
        &self,
        lease: LeaseId,
    ) -> impl Future<Output = Result<Duration, CoordError>> + Send;
    /// End the lease now, removing its keys; LeaseExpired if it was already gone.
    fn revoke(&self, lease: LeaseId) -> impl Future<Output = Result<(), CoordError>> + Send;
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Entry>, CoordError>> + Send;
    /// Every key starting with `prefix`, in key order.
    fn get_prefix(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<Vec<Entry>, CoordError>> + Send;
    /// Several reads as one request, all at one revision: the entries of each, in order.
    fn read(
        &self,
        reads: Vec<Read>,
    ) -> impl Future<Output = Result<Vec<Vec<Entry>>, CoordError>> + Send;
    /// Set the key, on `lease` or on none; LeaseExpired if the lease is gone.
    fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> impl Future<Output = Result<(), CoordError>> + Send;
    /// Atomically: if every compare holds, apply `then`. Ok(true) if applied.
    /// The writes of `then` are one revision; a key may appear in `then` at most once, and
    /// a lease it names must be alive (LeaseExpired otherwise, checked only when applying).
    fn txn(
        &self,
        compares: Vec<Compare>,
        then: Vec<Op>,
    ) -> impl Future<Output = Result<bool, CoordError>> + Send;
}

/// `ttl` as etcd's whole seconds: rounded up, at least one.
pub(crate) fn ttl_seconds(ttl: Duration) -> i64 {
    let whole = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(whole.max(1)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_is_rounded_up_to_whole_seconds() {
        assert_eq!(ttl_seconds(Duration::ZERO), 1);
        assert_eq!(ttl_seconds(Duration::from_millis(1)), 1);
        assert_eq!(ttl_seconds(Duration::from_secs(1)), 1);
        assert_eq!(ttl_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(ttl_seconds(Duration::from_secs(30)), 30);
    }
}
