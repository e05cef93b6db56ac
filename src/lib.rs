//! The `spool` package: the gRPC server, its configuration, the Rust client and the
//! cluster coordinator ([`cluster`]), plus the measuring helpers its load generators share
//! with `spool-loadgen` ([`measure`]). The `spool` binary (CLI) is built on these.

pub mod client;
pub mod cluster;
pub mod config;
pub mod measure;
pub mod server;
pub mod tls;
