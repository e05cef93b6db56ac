//! One port, two protocols, and what a connection may take: gRPC (HTTP/2) and segment
//! fetch (see `replication::segment_fetch`), told apart by their first bytes
//! (`server::preface`). A replica therefore needs nothing but its upstream's address.
//!
//! Every connection, before a byte is read, needs a place under the connection caps
//! (`server::conn_caps`: over its peer's cap it is closed at once; at the total cap it
//! takes the place of the oldest connection still in its handshake, or is closed if none
//! is; each with a rate-limited WARN naming the peer and the setting). Then it has
//! `handshake_timeout` to send its whole preface: for HTTP/2 the magic and the SETTINGS
//! frame, for segment fetch the magic and the request. Only then does an HTTP/2 connection reach tonic, wrapped in `idle::Conn`,
//! which closes it after `idle_timeout` with no request open; hyper's keepalive PINGs
//! close those whose peer stopped answering. The accept loop itself only accepts, checks
//! the caps and spawns, so slow or silent peers never hold up the next accept.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use super::conn_caps::{ConnCaps, Permit};
use super::idle::Conn;
use super::node::Node;
use super::preface::{self, Preface};
use super::replication::segment_fetch::{self, MAGIC};
use crate::config::ConnectionConfig;

/// Connections the kernel completes and queues for `accept` (it caps this at
/// net.core.somaxconn): room for a burst of new connections while the runtime is busy,
/// whose dropped SYNs would wait for retransmits (decision record 0010).
const LISTEN_BACKLOG: u32 = 4096;
/// Connections whose preface is whole, not yet taken by tonic (whose accept loop only
/// spawns). A full queue holds back the connections' own tasks, never the accept loop.
const QUEUE: usize = 128;
/// First read's buffer: a preface is ~60 bytes, and what follows at once stays with it.
const FIRST_READ_BYTES: usize = 1024;

/// The node's listening socket, with room for bursts ([`LISTEN_BACKLOG`]).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // As std and tokio's `bind`: a restarted node takes its port back at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accept on `listener` until tonic drops the returned stream (shutdown).
pub fn spawn(
    listener: TcpListener,
    node: Arc<Node>,
    config: &ConnectionConfig,
) -> ReceiverStream<std::io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let caps = ConnCaps::new(config.max_connections, config.max_connections_per_ip);
    let (handshake, idle) = (config.handshake_timeout, config.idle_timeout);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => return,
            };
            match accepted {
                Ok((stream, peer)) => match caps.admit(peer.ip()) {
                    Ok(permit) => {
                        let to = Route {
                            grpc: tx.clone(),
                            node: node.clone(),
                            handshake,
                            idle,
                        };
                        tokio::spawn(to.route(stream, peer, permit));
                    }
                    // Over a cap (logged by `admit`): closed now.
                    Err(_) => drop(stream),
                },
                Err(e) => {
                    // Out of descriptors and the like: wait rather than spin; the listener
                    // stays open.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Where a connection goes once its preface is known.
struct Route {
    grpc: mpsc::Sender<std::io::Result<Conn>>,
    node: Arc<Node>,
    handshake: Duration,
    idle: Duration,
}

impl Route {
    async fn route(self, mut stream: TcpStream, peer: SocketAddr, permit: Permit) {
        // Small replies go out at once (Nagle and delayed ACK would hold them).
        let _ = stream.set_nodelay(true);
        let deadline = Instant::now() + self.handshake;
        let mut first = BytesMut::with_capacity(FIRST_READ_BYTES);
        let kind = loop {
            let kind = if first.is_empty() {
                Preface::Partial
            } else {
                preface::classify(&first)
            };
            if kind != Preface::Partial {
                break kind;
            }
            assert!(first.len() < preface::PREFACE_BYTES_MAX);
            let read = tokio::select! {
                r = tokio::time::timeout_at(deadline, stream.read_buf(&mut first)) => r,
                _ = permit.evicted() => {
                    tracing::debug!(%peer, received = first.len(), "closing a connection in its handshake: its place went to a newer one");
                    return;
                }
            };
            match read {
                Ok(Ok(0)) | Ok(Err(_)) => return, // closed: nothing to serve
                Ok(Ok(_)) => {}
                Err(_) => {
                    metrics::counter!("spool_connections_timed_out_total", "phase" => "handshake")
                        .increment(1);
                    tracing::debug!(
                        %peer,
                        received = first.len(),
                        "closing a connection that sent no whole preface within {:?}",
                        self.handshake
                    );
                    return;
                }
            }
        };
        if kind != Preface::Unknown {
            permit.handshake_done();
        }
        match kind {
            Preface::Http2 { .. } => {
                let conn = Conn::new(stream, first.freeze(), peer, self.idle, self.node, permit);
                let _ = self.grpc.send(Ok(conn)).await;
            }
            Preface::SegmentFetch => {
                let request = first.split_off(MAGIC.len()).freeze();
                segment_fetch::serve(self.node, stream, request, deadline).await;
                drop(permit);
            }
            Preface::Unknown => {
                tracing::debug!(%peer, "closing a connection that speaks neither HTTP/2 nor segment fetch");
            }
            Preface::Partial => unreachable!("the loop ends on a decision"),
        }
    }
}
