//! spool.v1: the gRPC API's messages and services, generated from `proto/spool/v1/spool.proto`
//! (the public API) and [`replication`] from `proto/spool/v1/replication.proto` (the
//! internal protocol between nodes, package spool.replication.v1); and [`etcd`], the client side of the part of etcd's API the coordinator uses.

#![allow(missing_debug_implementations, clippy::all)]

pub mod v1 {
    tonic::include_proto!("spool.v1");
    // The nodes' code names both packages' types through `v1` (message names are unique
    // across the two).
    pub use crate::replication::v1::*;
}

/// spool.replication.v1: the internal protocol between nodes (`replication.proto`).
pub mod replication {
    pub mod v1 {
        tonic::include_proto!("spool.replication.v1");
    }
}

/// A subset of etcd's v3 API (KV, leases, Authenticate), generated from
/// `proto/etcd/{rpc,kv}.proto` with etcd's own names and field numbers, so it talks to a
/// real etcd. Generated here because the `etcd-client` crate's build needs a system protoc.
pub mod etcd {
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
}

/// Encoded file descriptor set, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("spool_descriptor");

#[cfg(test)]
mod tests {
    /// Client stubs are generated from spool.proto alone: the internal protocol stays out.
    #[test]
    fn the_public_file_holds_no_replication_protocol() {
        let public = include_str!("../proto/spool/v1/spool.proto");
        for internal in [
            "service Replication",
            "message ReplicaMessage",
            "message UpstreamMessage",
        ] {
            assert!(!public.contains(internal), "spool.proto has {internal}");
        }
        let internal = include_str!("../proto/spool/v1/replication.proto");
        assert!(
            internal.contains("service Replication")
                && internal.contains("package spool.replication.v1;"),
            "the internal protocol is its own package"
        );
        // Reflection describes both files (package names appear in the encoded set).
        let set = String::from_utf8_lossy(super::FILE_DESCRIPTOR_SET);
        assert!(set.contains("spool.replication.v1") && set.contains("replication.proto"));
    }
}
