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
//! close those whose peer stopped answering.
//!
//! With TLS (`[tls]`), the handshake comes first, within the same `handshake_timeout`,
//! and the preface is read from the decrypted bytes: both protocols run inside TLS on the
//! one port. A client speaking plaintext to a TLS node is answered in its own protocol
//! (an HTTP/2 GOAWAY, a segment-fetch refusal) saying TLS is required; a TLS client of a
//! plaintext node gets a TLS alert. Either fails at once rather than waiting. The accept loop itself only accepts, checks
//! the caps and spawns, so slow or silent peers never hold up the next accept.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
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
use crate::tls::server::ServerTls;
use crate::tls::stream::ServerStream;

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
    tls: Option<Arc<ServerTls>>,
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
                            tls: tls.clone(),
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
    tls: Option<Arc<ServerTls>>,
}

impl Route {
    async fn route(self, stream: TcpStream, peer: SocketAddr, permit: Permit) {
        // Small replies go out at once (Nagle and delayed ACK would hold them).
        let _ = stream.set_nodelay(true);
        let deadline = Instant::now() + self.handshake;
        let mut stream = match self.tls.clone() {
            None => ServerStream::Plain(stream),
            Some(tls) => match self
                .tls_handshake(&tls, stream, peer, &permit, deadline)
                .await
            {
                Some(s) => s,
                None => return,
            },
        };
        let Some((kind, mut first)) =
            read_preface(&mut stream, peer, &permit, deadline, self.handshake).await
        else {
            return;
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
                let tls_hello = first.first() == Some(&TLS_HANDSHAKE_RECORD);
                if tls_hello && self.tls.is_none() {
                    tracing::debug!(%peer, "closing a TLS connection: this node serves plaintext");
                    // A TLS alert, so the client says more than "connection closed".
                    let _ = stream.write_all(&TLS_ALERT_PROTOCOL_VERSION).await;
                    linger(&mut stream, deadline).await;
                } else {
                    tracing::debug!(%peer, "closing a connection that speaks neither HTTP/2 nor segment fetch");
                }
            }
            Preface::Partial => unreachable!("the loop ends on a decision"),
        }
    }

    /// The TLS handshake, within the handshake deadline, and the client certificate
    /// check (`None`: the connection is done with). A client speaking plaintext, or whose
    /// certificate is refused, is told why in its own protocol.
    async fn tls_handshake(
        &self,
        tls: &ServerTls,
        stream: TcpStream,
        peer: SocketAddr,
        permit: &Permit,
        deadline: Instant,
    ) -> Option<ServerStream> {
        let mut byte = [0u8; 1];
        let peeked = tokio::select! {
            r = tokio::time::timeout_at(deadline, stream.peek(&mut byte)) => r,
            _ = permit.evicted() => return None,
        };
        match peeked {
            Ok(Ok(1)) => {}
            _ => return None, // closed or silent
        }
        if byte[0] != TLS_HANDSHAKE_RECORD {
            tracing::debug!(%peer, "refusing a plaintext connection: this node requires TLS");
            self.refuse(
                ServerStream::Plain(stream),
                TLS_REQUIRED,
                peer,
                permit,
                deadline,
            )
            .await;
            return None;
        }
        let loaded = tls.current();
        let accepted = tokio::select! {
            r = tokio::time::timeout_at(deadline, loaded.acceptor().accept(stream).into_fallible()) => r,
            _ = permit.evicted() => return None,
        };
        let stream = match accepted {
            Ok(Ok(s)) => ServerStream::Tls(Box::new(s)),
            Ok(Err((e, mut tcp))) => {
                metrics::counter!("spool_tls_handshakes_failed_total").increment(1);
                tracing::info!(%peer, error = %e, "TLS handshake failed");
                // The alert is sent: read until the client closes, so that it is not lost
                // to a reset.
                linger(&mut tcp, deadline).await;
                return None;
            }
            Err(_) => {
                metrics::counter!("spool_connections_timed_out_total", "phase" => "handshake")
                    .increment(1);
                tracing::debug!(%peer, "closing a connection whose TLS handshake took over {:?}", self.handshake);
                return None;
            }
        };
        if let Err(why) = loaded.check_client(stream.peer_certs()) {
            metrics::counter!("spool_tls_handshakes_failed_total").increment(1);
            tracing::info!(%peer, %why, "TLS client certificate refused");
            self.refuse(stream, &why, peer, permit, deadline).await;
            return None;
        }
        Some(stream)
    }

    /// Tell a client it is refused, in its protocol (an HTTP/2 GOAWAY once its first
    /// request is in, a segment-fetch reply), then close.
    async fn refuse(
        &self,
        mut stream: ServerStream,
        why: &str,
        peer: SocketAddr,
        permit: &Permit,
        deadline: Instant,
    ) {
        let Some((kind, mut first)) =
            read_preface(&mut stream, peer, permit, deadline, self.handshake).await
        else {
            return;
        };
        let refusal = match kind {
            Preface::Http2 { len } => {
                let until = deadline.min(Instant::now() + REFUSAL_LINGER);
                while !preface::opens_a_stream(&first[len..]) && first.len() < REFUSAL_READ_MAX {
                    match tokio::time::timeout_at(until, stream.read_buf(&mut first)).await {
                        Ok(Ok(n)) if n > 0 => {}
                        _ => break,
                    }
                }
                preface::goaway(why)
            }
            Preface::SegmentFetch => segment_fetch::refusal(why),
            _ => return,
        };
        let _ = tokio::time::timeout_at(deadline, stream.write_all(&refusal)).await;
        linger(&mut stream, deadline).await;
    }
}

/// What a plaintext client of a TLS node is told.
pub const TLS_REQUIRED: &str =
    "this node requires TLS: connect with https:// and --tls-ca (and --tls-cert/--tls-key \
     if it asks for a client certificate)";
/// How long a refused client has to send its first request, and to read the refusal and
/// close.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// Bytes read from a refused client while waiting for its first request.
const REFUSAL_READ_MAX: usize = 64 << 10;
/// The first byte of a TLS connection (a handshake record carrying the ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// A TLS fatal alert (record type 21, version 3.3, length 2): protocol_version (70).
const TLS_ALERT_PROTOCOL_VERSION: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46];

/// After a refusal is written: end the writing side, then read until the client closes
/// (at most [`REFUSAL_LINGER`]). Closing with its bytes unread would reset the connection,
/// and the client might never read the refusal.
async fn linger(stream: &mut (impl AsyncRead + AsyncWrite + Unpin), deadline: Instant) {
    let until = deadline.min(Instant::now() + REFUSAL_LINGER);
    let _ = tokio::time::timeout_at(until, async {
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// Read until [`preface::classify`] decides, within `deadline` (`None`: closed, evicted or
/// out of time; the connection is done with).
async fn read_preface(
    stream: &mut ServerStream,
    peer: SocketAddr,
    permit: &Permit,
    deadline: Instant,
    handshake: Duration,
) -> Option<(Preface, BytesMut)> {
    let mut first = BytesMut::with_capacity(FIRST_READ_BYTES);
    loop {
        let kind = if first.is_empty() {
            Preface::Partial
        } else {
            preface::classify(&first)
        };
        if kind != Preface::Partial {
            return Some((kind, first));
        }
        assert!(first.len() < preface::PREFACE_BYTES_MAX);
        let read = tokio::select! {
            r = tokio::time::timeout_at(deadline, stream.read_buf(&mut first)) => r,
            _ = permit.evicted() => {
                tracing::debug!(%peer, received = first.len(), "closing a connection in its handshake: its place went to a newer one");
                return None;
            }
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => return None, // closed: nothing to serve
            Ok(Ok(_)) => {}
            Err(_) => {
                metrics::counter!("spool_connections_timed_out_total", "phase" => "handshake")
                    .increment(1);
                tracing::debug!(
                    %peer,
                    received = first.len(),
                    "closing a connection that sent no whole preface within {handshake:?}"
                );
                return None;
            }
        }
    }
}
