//! When an HTTP/2 connection is idle, and closing it then (`server.idle_timeout_ms`).
//!
//! Idle means no request open: no call in progress and no stream (Subscribe, Replicate,
//! an append stream) whose response has not ended, for `idle_timeout` since the last one
//! ended or since the connection came. Bytes do not count: HTTP/2 PINGs (ours, see
//! `keepalive_interval_ms`) go both ways on a connection nobody uses, and a Subscribe
//! waiting for records for hours is not idle. This is gRPC's MAX_CONNECTION_IDLE.
//!
//! Two pieces share a connection's [`Activity`]: [`CountStreamsLayer`], around every
//! service, counts requests from the call until the response body is dropped (ended, or
//! reset by the client); [`Conn`], the IO hyper serves, holds the idle timer and, once it
//! expires with nothing open, fails hyper's next read, which closes the connection (no
//! GOAWAY: nothing is in flight, and the client reconnects when it next calls). While the
//! node shuts down the timeout is [`SHUTDOWN_IDLE`]: tonic waits for every connection to
//! close, and a peer that never answers the GOAWAY's PING would otherwise hold the stop.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::Connected;

use super::conn_caps::Permit;
use super::node::Node;
use crate::tls::stream::ServerStream;

/// Idle timeout of a connection with nothing open once the node is shutting down: enough
/// for the last response's bytes, which hyper flushes after the stream is counted ended.
pub const SHUTDOWN_IDLE: Duration = Duration::from_secs(1);

/// A connection's open requests and since when it has had none.
#[derive(Debug)]
pub struct Activity {
    born: Instant,
    streams: AtomicUsize,
    /// Since `born`, when `streams` last went to zero.
    idle_since_ms: AtomicU64,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            born: Instant::now(),
            streams: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
        })
    }

    fn stream_opened(self: &Arc<Self>) -> StreamOpen {
        self.streams.fetch_add(1, Ordering::AcqRel);
        StreamOpen(self.clone())
    }

    /// When the connection is idle past `timeout`, or `None` while a request is open.
    fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.streams.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        Some(self.born + since + timeout)
    }
}

/// One open request of a connection, until dropped.
#[derive(Debug)]
struct StreamOpen(Arc<Activity>);

impl Drop for StreamOpen {
    fn drop(&mut self) {
        let a = &self.0;
        // Before the count drops: whoever sees zero sees this time.
        let now_ms = a.born.elapsed().as_millis() as u64;
        a.idle_since_ms.fetch_max(now_ms, Ordering::AcqRel);
        let before = a.streams.fetch_sub(1, Ordering::AcqRel);
        assert!(before > 0, "a stream ended that never opened");
    }
}

/// What tonic puts in each request's extensions for this connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The names (SANs, CN) of the client's TLS certificate, verified against the client
    /// CA: for authentication by certificate identity. Parsed once per connection, not
    /// per request.
    pub peer_names: Arc<[String]>,
    activity: Arc<Activity>,
}

/// An accepted HTTP/2 connection as hyper serves it: the preface bytes `server::accept`
/// read first, then the socket; closed when idle (see the module doc).
#[derive(Debug)]
pub struct Conn {
    received: Bytes,
    stream: ServerStream,
    info: ConnInfo,
    idle_timeout: Duration,
    idle_timer: Pin<Box<Sleep>>,
    node: Arc<Node>,
    /// Set once the idle timeout closed it (counted once, however often hyper reads).
    timed_out: bool,
    _permit: Permit,
}

impl Conn {
    pub fn new(
        stream: ServerStream,
        received: Bytes,
        peer: SocketAddr,
        idle_timeout: Duration,
        node: Arc<Node>,
        permit: Permit,
    ) -> Conn {
        let activity = Activity::new();
        let peer_names = stream
            .peer_cert()
            .map(|der| crate::server::auth::certs::names(&der))
            .unwrap_or_default()
            .into();
        let first_deadline = activity.born + idle_timeout;
        Conn {
            received,
            stream,
            info: ConnInfo {
                peer,
                peer_names,
                activity,
            },
            idle_timeout,
            idle_timer: Box::pin(tokio::time::sleep_until(first_deadline)),
            node,
            timed_out: false,
            _permit: permit,
        }
    }

    /// Ready once the connection is idle past its timeout; otherwise the timer is armed
    /// for the next moment it could be.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let timeout = if self.node.is_shutting_down() {
            SHUTDOWN_IDLE.min(self.idle_timeout)
        } else {
            self.idle_timeout
        };
        loop {
            let now = Instant::now();
            match self.info.activity.idle_deadline(timeout) {
                Some(at) if at <= now => return Poll::Ready(()),
                Some(at) if at != self.idle_timer.deadline() => self.idle_timer.as_mut().reset(at),
                Some(_) => {}
                // Something open: look again in a timeout (the end of a stream is always
                // followed by a read, which arms the timer for the right moment).
                None if self.idle_timer.deadline() <= now => {
                    self.idle_timer.as_mut().reset(now + timeout)
                }
                None => {}
            }
            ready!(self.idle_timer.as_mut().poll(cx));
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        if me.received.has_remaining() {
            let n = me.received.len().min(buf.remaining());
            buf.put_slice(&me.received[..n]);
            me.received.advance(n);
            return Poll::Ready(Ok(()));
        }
        if let Poll::Ready(r) = Pin::new(&mut me.stream).poll_read(cx, buf) {
            return Poll::Ready(r);
        }
        // Nothing to read: is there anything left to wait for?
        ready!(me.poll_idle(cx));
        if !me.timed_out {
            me.timed_out = true;
            metrics::counter!("spool_connections_timed_out_total", "phase" => "idle").increment(1);
            tracing::debug!(peer = %me.info.peer, "closing a connection idle for {:?}", me.idle_timeout);
        }
        Poll::Ready(Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connection idle with no request open",
        )))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

/// Counts each request on its connection's [`Activity`] until its response ends.
#[derive(Debug, Clone, Copy, Default)]
pub struct CountStreamsLayer;

impl<S> tower::Layer<S> for CountStreamsLayer {
    type Service = CountStreams<S>;

    fn layer(&self, inner: S) -> CountStreams<S> {
        CountStreams { inner }
    }
}

#[derive(Debug, Clone)]
pub struct CountStreams<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for CountStreams<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<CountedBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        // Absent only for connections that did not come through `accept` (none today).
        let open = req
            .extensions()
            .get::<ConnInfo>()
            .map(|c| c.activity.stream_opened());
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| CountedBody {
                body: tonic::body::Body::new(body),
                _open: open,
            }))
        })
    }
}

/// A response body that keeps its request counted open until it is dropped.
#[derive(Debug)]
pub struct CountedBody {
    body: tonic::body::Body,
    _open: Option<StreamOpen>,
}

impl http_body::Body for CountedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_counts_from_the_last_stream_end() {
        let a = Activity::new();
        let t = Duration::from_secs(10);
        assert_eq!(a.idle_deadline(t), Some(a.born + t));
        let s1 = a.stream_opened();
        let s2 = a.stream_opened();
        assert_eq!(a.idle_deadline(t), None);
        std::thread::sleep(Duration::from_millis(20));
        drop(s1);
        assert_eq!(a.idle_deadline(t), None, "one still open");
        std::thread::sleep(Duration::from_millis(20));
        let before_end = Instant::now();
        drop(s2);
        let at = a.idle_deadline(t).unwrap();
        // From the last end (to the ms), not from the connection's start.
        assert!(at + Duration::from_millis(1) >= before_end + t, "{at:?}");
        assert!(at <= Instant::now() + t);
    }
}
