//! The coordinator the cluster agent keeps its keys in (etcd; in memory for tests).

use std::future::Future;
use std::time::Duration;

pub type LeaseId = i64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
    pub lease: LeaseId,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    Absent(String),
    ModRevision(String, i64),
    Value(String, Vec<u8>),
    LeaseIs(String, LeaseId),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Delete(String),
}

#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("coordinator unreachable: {0}")]
    Unavailable(String),
    #[error("lease {0} expired")]
    LeaseExpired(LeaseId),
    #[error("coordinator refused: {0}")]
    Refused(String),
}

pub trait Coordinator: Send + Sync + 'static {
    fn grant(&self, ttl: Duration) -> impl Future<Output = Result<LeaseId, CoordError>> + Send;
    /// One renewal; the TTL etcd reports, or LeaseExpired.
    fn keep_alive(
        &self,
        lease: LeaseId,
    ) -> impl Future<Output = Result<Duration, CoordError>> + Send;
    fn revoke(&self, lease: LeaseId) -> impl Future<Output = Result<(), CoordError>> + Send;
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Entry>, CoordError>> + Send;
    fn get_prefix(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<Vec<Entry>, CoordError>> + Send;
    fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> impl Future<Output = Result<(), CoordError>> + Send;
    /// Atomically: if every compare holds, apply `then`. Ok(true) if applied.
    fn txn(
        &self,
        compares: Vec<Compare>,
        then: Vec<Op>,
    ) -> impl Future<Output = Result<bool, CoordError>> + Send;
}
