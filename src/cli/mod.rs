//! The CLI's subcommands, one module per job.

pub mod admin;
pub mod check;
pub mod client_cmds;
pub mod client_only;
pub mod confirm;
pub mod dev_cluster;
pub mod dev_etcd;
pub mod docs;
pub mod errors;
pub mod logging;
pub mod serve;
pub mod status;
pub mod times;
