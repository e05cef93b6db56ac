//! The coordinator side of failover: the client (etcd), the key layout and records. What
//! a node does with them is the server's cluster agent (`server::failover`).

pub mod coordinator;
pub mod keys;
