//! The `spool` package: the gRPC server, its configuration and the Rust client.
//! The `spool` binary (CLI) is built on these.

pub mod client;
pub mod config;
pub mod server;
