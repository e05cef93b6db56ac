//! The gRPC server: one node's services on a multi-thread tokio runtime, in front of the
//! storage thread.

mod accept;
mod admin_service;
pub mod auth;
pub(crate) mod catalog;
mod codes;
mod conn_caps;
pub mod failover;
mod idle;
mod log_service;
pub(crate) mod logs_service;
mod metrics_catalog;
mod metrics_export;
pub(crate) mod node;
mod preface;
pub(crate) mod promote;
pub(crate) mod quarantine;
pub mod repair;
pub mod replication;
pub mod role;
mod rpc_metrics;
pub(crate) mod status_map;
mod status_service;
pub(crate) mod visible;
pub(crate) mod weak_acks;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use spool_proto::v1 as pb;
use spool_storage::Storage;

use crate::config::ServerConfig;
pub use node::Node;
use role::{Role, RoleState};
pub use status_map::to_status;

/// Largest request a client may send (an append batch); above the storage frame limit so
/// that oversized records get the storage's clear error, not a transport one.
pub const MESSAGE_BYTES_MAX: usize = 32 << 20;

/// Services the health service reports on (besides "", the whole server), each SERVING
/// until shutdown begins: the public API and the replication stream replicas dial.
pub const HEALTH_SERVICES: [&str; 5] = [
    "spool.v1.Logs",
    "spool.v1.Log",
    "spool.v1.Status",
    "spool.v1.Admin",
    "spool.replication.v1.Replication",
];

/// Logs written by a version without incarnation ids get one on the primary (replicas
/// copy it at their next handshake).
pub(crate) async fn give_incarnations(node: &Node) -> Result<()> {
    for name in node.storage().list_logs() {
        let log = node.storage().log(&name)?;
        if log.incarnation() == spool_storage::meta::INCARNATION_UNKNOWN {
            log.set_incarnation(spool_storage::meta::new_incarnation())
                .await?;
        }
    }
    Ok(())
}

/// Open storage, bind, serve until `shutdown` resolves, then stop accepting, let in-flight
/// appends finish, fsync and close. `on_bound` gets the bound address (port 0 allowed).
pub async fn serve(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(SocketAddr),
) -> Result<()> {
    // Data files are the node's alone: directories 0700, files 0600.
    // SAFETY: umask only sets this process's file-creation mask.
    unsafe { libc::umask(0o077) };
    let auth = config
        .auth
        .tokens_file
        .clone()
        .map(auth::Auth::open)
        .transpose()?;
    if let Some(path) = &config.auth.node_token_file {
        auth::load_node_token(path)?;
    }
    // Bind first: a port in use is refused before the data directory is made or opened.
    let listener =
        accept::bind(config.listen).with_context(|| format!("binding {}", config.listen))?;
    let storage_config = config.storage.clone();
    let storage = tokio::task::spawn_blocking(move || Storage::open(storage_config))
        .await?
        .map_err(|e| {
            let hint = if e.to_string().contains("Too many open files") {
                "; the open-files limit is too low for this node's logs: raise it (ulimit -n, \
                 LimitNOFILE= in a systemd unit) or lower [storage] open_logs_max"
            } else {
                ""
            };
            anyhow::anyhow!(e).context(format!(
                "opening data directory {}{hint}",
                config.storage.data_dir.display()
            ))
        })?;
    warn_if_data_dir_open(&config.storage.data_dir);
    let repl = config.replication.clone();
    let initial_role = match (&repl.replica_of, &config.cluster) {
        // The coordinator says whom to follow, or elects this node.
        (_, Some(_)) => Role::Replica {
            upstream: String::new(),
        },
        (Some(up), None) => Role::Replica {
            upstream: up.clone(),
        },
        (None, None) => Role::Primary,
    };
    // Both may read and write (fsync) their state files: on a blocking thread.
    let dir = config.storage.data_dir.clone();
    let role = tokio::task::spawn_blocking(move || RoleState::open(&dir, initial_role)).await??;
    let delay = match repl.delay {
        Some(d) => {
            let storage = storage.clone();
            let open = move || replication::delay::Delay::open(storage, d);
            Some(tokio::task::spawn_blocking(open).await??)
        }
        None => None,
    };
    let node = Arc::new(Node::new(
        storage.clone(),
        role,
        repl.clone(),
        config.default_ack,
        delay,
    ));
    if let Some(addr) = config.metrics_listen {
        metrics_export::install(addr, node.clone())?;
    }
    let tls = config
        .tls
        .clone()
        .map(crate::tls::server::ServerTls::load)
        .transpose()?;
    if let (Some(t), Some(c)) = (&tls, &config.tls) {
        t.spawn_reloader()?;
        node.set_peer_tls(crate::tls::TlsOptions::for_node(c));
    }
    let bound = listener.local_addr()?;
    *node.role().listen_addr.write() = bound.to_string();
    tracing::info!(listen = %bound, backend = storage.backend_name(), role = ?node.role().role(), epoch = node.role().epoch(), "spool serving");
    on_bound(bound);
    node.acks().spawn_ticker();
    replication::retention::spawn(node.clone());
    repair::spawn_auto_repair(node.clone());
    if node.role().is_primary() {
        give_incarnations(&node).await?;
    }
    if let Some(delay) = node.visibility().delay().cloned() {
        replication::delay::spawn(node.clone(), delay);
    }
    if let Some(cluster) = &config.cluster {
        failover::start(&node, cluster, &repl, bound).await?;
    }
    if let Some(upstream) = repl.replica_of.clone() {
        let cfg = replication::follower::FollowerConfig {
            upstream,
            replica_id: repl.replica_id.clone().unwrap_or_else(|| bound.to_string()),
            sync: repl.sync_replica,
            delayed: repl.delay.is_some(),
            segment_fetch: repl.segment_fetch,
            coordinated: false,
        };
        node.follower_running().send_replace(true);
        let n = node.clone();
        tokio::spawn(async move {
            replication::follower::follow(n.clone(), cfg, n.upstream_view().clone()).await;
            n.follower_running().send_replace(false);
        });
    }

    if let Some(a) = &auth {
        a.spawn_reload();
        node.set_auth(a.clone());
    }
    let (health_reporter, health) = tonic_health::server::health_reporter();
    for service in HEALTH_SERVICES {
        health_reporter
            .set_service_status(service, tonic_health::ServingStatus::Serving)
            .await;
    }
    // Both reflection versions: grpcurl speaks v1, stock grpcio-reflection v1alpha.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(spool_proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(spool_proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let logs = pb::logs_server::LogsServer::new(logs_service::LogsService { node: node.clone() });
    let log = pb::log_server::LogServer::new(log_service::LogService { node: node.clone() })
        .max_decoding_message_size(MESSAGE_BYTES_MAX);
    let status =
        pb::status_server::StatusServer::new(status_service::StatusService { node: node.clone() });
    let replication_svc =
        pb::replication_server::ReplicationServer::new(replication::upstream::ReplicationService {
            node: node.clone(),
        })
        .max_encoding_message_size(MESSAGE_BYTES_MAX);
    let admin =
        pb::admin_server::AdminServer::new(admin_service::AdminService { node: node.clone() });

    let stop_node = node.clone();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: no new requests, finishing in-flight appends");
        stop_node.begin_shutdown();
        for service in HEALTH_SERVICES {
            health_reporter
                .set_service_status(service, tonic_health::ServingStatus::NotServing)
                .await;
        }
    };
    let conns = &config.connections;
    tonic::transport::Server::builder()
        // Dead peers and those that stopped answering: PINGs after this long without a
        // frame (idle streams too), closed if one is not answered in time.
        .http2_keepalive_interval(Some(conns.keepalive_interval))
        .http2_keepalive_timeout(Some(conns.keepalive_timeout))
        // Clients may send DATA frames this large (a batch of appends in few pieces, each
        // copied once into the decoder's buffer; HTTP/2's default is 16 KiB).
        .max_frame_size(Some(1 << 20))
        // Outermost: every request counts against its connection's idle timeout.
        .layer(idle::CountStreamsLayer)
        .layer(rpc_metrics::RpcMetricsLayer)
        .layer(auth::layer::AuthLayer(auth.clone()))
        .layer(tower::util::MapResponseLayer::new(codes::fix_decode_errors))
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(logs)
        .add_service(log)
        .add_service(status)
        .add_service(replication_svc)
        .add_service(admin)
        // Connections come through `accept` (caps, preface deadline), which keeps segment
        // fetches for itself.
        .serve_with_incoming_shutdown(accept::spawn(listener, node.clone(), conns, tls), signal)
        .await
        .context("grpc server")?;
    storage.shutdown().await?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// A data dir others can read (made before this version, or by hand) is reported, not
/// changed: it may be shared on purpose, and a chmod of the wrong directory would be worse.
fn warn_if_data_dir_open(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(dir) {
        let mode = m.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(dir = %dir.display(), mode = format!("{mode:o}"), "the data directory is open to other users: chmod 700 it");
        }
    }
}
