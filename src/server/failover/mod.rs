//! The cluster agent: a node's side of failover on a coordinator. Each round it renews its
//! lease, publishes its member record, looks at the leader key and the members, and
//! carries out what `spool_replication::failover` decides (follow, campaign, take tails,
//! promote, step down). The primary's lease gate (`RoleState::check_lease`) turns the
//! lease into "no acknowledgement past TTL minus the margin" without the agent's help.

mod admin;
mod agent;
mod follower_ctl;
mod hint;
mod member;
mod start;
mod takeover;

pub use admin::AdminOp;
pub use agent::{join_cluster, spawn, ClusterStatus};
pub use member::Identity;
pub use start::start;
