//! spool.v1: the gRPC API's messages and services, generated from `proto/spool/v1/spool.proto`
//! (the public API) and `proto/spool/v1/replication.proto` (the internal protocol between
//! nodes, same package); and [`etcd`], the client side of the part of etcd's API the coordinator uses.

#![allow(missing_debug_implementations, clippy::all)]

pub mod v1 {
    tonic::include_proto!("spool.v1");
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
        assert!(internal.contains("service Replication") && internal.contains("package spool.v1;"));
    }
}
