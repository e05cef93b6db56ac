//! Cluster coordination: the [`Coordinator`](coordinator::Coordinator) trait that automatic
//! failover is written against, its etcd client, an in-memory implementation for tests,
//! and the key layout with the records stored under it. What a node does with them is the
//! server's cluster agent (`server::failover`).

pub mod coordinator;
pub mod etcd;
pub mod keys;
pub mod memory;
