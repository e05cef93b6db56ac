//! The `spool` package: the gRPC server, its configuration and the Rust client, plus
//! the measuring helpers its load generators share with `spool-loadgen` ([`measure`]).
//! The `spool` binary (CLI) is built on these.

pub mod client;
pub mod cluster;
pub mod config;
pub mod measure;
pub mod server;
