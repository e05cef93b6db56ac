//! Cluster coordination: the [`Coordinator`](coordinator::Coordinator) trait that automatic
//! failover is written against, its etcd client, and an in-memory implementation for tests.

pub mod coordinator;
pub mod etcd;
pub mod memory;
