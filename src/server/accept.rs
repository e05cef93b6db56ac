//! One port, two protocols: gRPC (HTTP/2) and segment fetch (see
//! `replication::segment_fetch`). Each accepted connection is told apart by its first
//! bytes, without consuming them: the HTTP/2 preface goes to tonic, [`MAGIC`] to the
//! segment-fetch server. A replica therefore needs nothing but its upstream's address.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::node::Node;
use super::replication::segment_fetch::{self, MAGIC};

/// A connection that has said nothing by then is closed (no client waits to be spoken to:
/// HTTP/2 clients send their preface at once).
const FIRST_BYTES_WITHIN: Duration = Duration::from_secs(10);
/// Connections accepted but not yet taken by tonic.
const QUEUE: usize = 128;

/// Accept on `listener` until tonic drops the returned stream (shutdown).
pub fn spawn(listener: TcpListener, node: Arc<Node>) -> ReceiverStream<std::io::Result<TcpStream>> {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => return,
            };
            match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(route(stream, tx.clone(), node.clone()));
                }
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

async fn route(stream: TcpStream, grpc: mpsc::Sender<std::io::Result<TcpStream>>, node: Arc<Node>) {
    // Without it, Nagle + delayed ACK add ~40 ms to small replies.
    let _ = stream.set_nodelay(true);
    match tokio::time::timeout(FIRST_BYTES_WITHIN, is_segment_fetch(&stream)).await {
        Ok(Ok(true)) => segment_fetch::serve(node, stream).await,
        Ok(Ok(false)) => {
            let _ = grpc.send(Ok(stream)).await;
        }
        Ok(Err(_)) | Err(_) => {} // closed or silent: nothing to serve
    }
}

/// Whether the connection starts with [`MAGIC`], looking without reading.
async fn is_segment_fetch(stream: &TcpStream) -> std::io::Result<bool> {
    let mut first = [0u8; MAGIC.len()];
    loop {
        let n = stream.peek(&mut first).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if first[..n] != MAGIC[..n] {
            return Ok(false);
        }
        if n == MAGIC.len() {
            return Ok(true);
        }
        // A prefix of the magic so far. Peeking again at once would return the same bytes
        // (the socket stays readable), so give the rest a moment to arrive.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
