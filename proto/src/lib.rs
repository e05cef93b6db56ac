//! spool.v1: the gRPC API's messages and services, generated from `proto/spool/v1/spool.proto`.

#![allow(missing_debug_implementations, clippy::all)]

pub mod v1 {
    tonic::include_proto!("spool.v1");
}

/// Encoded file descriptor set, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("spool_descriptor");
