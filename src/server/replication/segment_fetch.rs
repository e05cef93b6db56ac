//! Segment fetch: a replica catching up copies a sealed segment straight from the
//! upstream's file, outside the gRPC stream, as Kafka's fetch path does with sendfile.
//!
//! The upstream calls sendfile on the segment file (no copy of its own) and the replica
//! receives into one buffer that it checks and writes: no HTTP/2 framing, flow control or
//! protobuf on the way (why: decision record 0003). Over TLS (`[tls]`: `server::accept`
//! ends TLS before it reads the magic) the bytes must be encrypted in user space, so the
//! upstream reads the file in chunks and writes them through the TLS stream instead; the
//! replica dials with its own certificate. The wire format inside is the same.
//!
//! Wire format (the messages are in spool.proto, next to `SegmentFetchRequest`): a TCP
//! connection to the upstream's gRPC port starts with [`MAGIC`] instead of the HTTP/2
//! preface (`server::accept` tells them apart); then, each as a u32 little-endian length
//! and the encoded message, a `SegmentFetchRequest` and a `SegmentFetchReply`; then, when
//! the reply has no error, `byte_len` bytes of whole frames exactly as stored. One fetch
//! per connection. The gRPC stream says when to fetch (`SegmentChunk.fetch`); the replica
//! checks every frame (CRC, offsets, epochs) as it stages it, as for frames in the stream.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use prost::Message;
use spool_proto::v1 as pb;
use spool_storage::{format, SegmentImport, SegmentSpan};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::upstream::DEAD_AFTER;
use crate::server::node::Node;
use crate::tls::stream::ServerStream;
use crate::tls::TlsOptions;

/// What a segment-fetch connection sends first, where HTTP/2 sends "PRI * HT".
pub const MAGIC: &[u8; 8] = b"SPOOLSF1";
/// Bound on an encoded request or reply (they hold a log name and a few numbers).
const MESSAGE_BYTES_MAX: u32 = 64 << 10;
/// Where a fetch does not receive into the import's blocks (a buffered import, a frame
/// larger than a block), it receives into a buffer this large (grown to one frame if a
/// frame is larger), then checks and stages the whole frames in it: big enough that
/// staging is rare per byte.
const RECEIVE_BUFFER_BYTES: usize = 8 << 20;
const _: () = assert!(RECEIVE_BUFFER_BYTES >= 2 * format::HEADER_BYTES);
/// Over TLS the upstream reads the file in chunks this large (one read ahead of the one
/// being encrypted and written) instead of sendfile.
const TLS_CHUNK_BYTES: usize = 1 << 20;

/// A replica's fetch connection: TCP, or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// `m` as sent: its length, then its bytes, after `prefix`.
fn framed(prefix: &[u8], m: &impl Message) -> Vec<u8> {
    let body = m.encode_to_vec();
    let mut out = Vec::with_capacity(prefix.len() + 4 + body.len());
    out.extend_from_slice(prefix);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// A reply refusing the fetch with `error` (as sent, framed).
pub fn refusal(error: &str) -> Vec<u8> {
    let reply = pb::SegmentFetchReply {
        error: error.to_owned(),
        ..Default::default()
    };
    framed(&[], &reply)
}

async fn read_msg<M: Message + Default>(stream: &mut (impl AsyncRead + Unpin)) -> Result<M> {
    let len = tokio::time::timeout(DEAD_AFTER, stream.read_u32_le())
        .await
        .map_err(|_| anyhow!("peer silent for {DEAD_AFTER:?}"))??;
    if len > MESSAGE_BYTES_MAX {
        bail!("segment-fetch message of {len} bytes (at most {MESSAGE_BYTES_MAX})");
    }
    let mut body = vec![0u8; len as usize];
    tokio::time::timeout(DEAD_AFTER, stream.read_exact(&mut body))
        .await
        .map_err(|_| anyhow!("peer silent for {DEAD_AFTER:?}"))??;
    Ok(M::decode(&body[..])?)
}

/// Upstream side: answer one fetch on a connection that began with [`MAGIC`]. `received`
/// is what `server::accept` read after the magic (the request, or its start); the whole
/// request must be in by `request_by` (the handshake deadline).
pub async fn serve(node: Arc<Node>, stream: ServerStream, received: Bytes, request_by: Instant) {
    let peer = stream.tcp().peer_addr().ok();
    if let Err(e) = serve_one(&node, stream, received, request_by).await {
        tracing::warn!(?peer, error = %format!("{e:#}"), "segment fetch failed");
    }
}

/// The verified client certificate's names (TLS with client certificates), else none.
fn cert_names(stream: &ServerStream) -> Vec<String> {
    stream
        .peer_cert()
        .map(|der| crate::server::auth::certs::names(&der))
        .unwrap_or_default()
}

async fn serve_one(
    node: &Node,
    mut stream: ServerStream,
    received: Bytes,
    request_by: Instant,
) -> Result<()> {
    let req: pb::SegmentFetchRequest = {
        let mut request = (&received[..]).chain(&mut stream);
        tokio::time::timeout_at(request_by, read_msg(&mut request))
            .await
            .map_err(|_| anyhow!("no whole request within the handshake timeout"))?
            .context("reading the request")?
    };
    let (span, file) = match open_span(node, &req, &cert_names(&stream)) {
        Ok(s) => s,
        Err(e) => {
            let error = format!("{e:#}");
            let _ = stream.write_all(&refusal(&error)).await;
            bail!(
                "refused {} segment {} from {}: {error}",
                req.log,
                req.segment_base,
                req.from_offset
            );
        }
    };
    let reply = pb::SegmentFetchReply {
        error: String::new(),
        first_offset: span.first_offset,
        next_offset: span.next_offset,
        byte_len: span.end - span.start,
    };
    stream.write_all(&framed(&[], &reply)).await?;
    let over_tls = matches!(stream, ServerStream::Tls(_));
    send_span(stream, file, &span).await?;
    node.replicas()
        .segment_sent(&req.replica_id, &req.log, None);
    tracing::debug!(log = %req.log, base = req.segment_base, bytes = span.end - span.start, over_tls, "segment fetched");
    Ok(())
}

/// The span a fetch asks for, once the caller is known to be a replica and the span is
/// durable, visible here and ends on a frame boundary; with its file open.
fn open_span(
    node: &Node,
    req: &pb::SegmentFetchRequest,
    cert_names: &[String],
) -> Result<(SegmentSpan, File)> {
    node.check_accepting()
        .and_then(|()| node.check_replica(&req.token, cert_names))
        .map_err(|s| anyhow!("{}", s.message()))?;
    let log = node.storage().log(&req.log)?;
    let visible = node.visible(&log);
    let span = if req.to_offset == 0 {
        visible.sealed_span(req.segment_base, req.from_offset)?
    } else {
        let span = visible.span(req.segment_base, req.from_offset, req.to_offset)?;
        if span.next_offset != req.to_offset {
            bail!(
                "offset {} is not a durable, visible frame boundary of segment {} \
                 (the span ends at {})",
                req.to_offset,
                req.segment_base,
                span.next_offset
            );
        }
        span
    };
    let file = File::open(&span.path).with_context(|| span.path.display().to_string())?;
    Ok((span, file))
}

/// Send the span's bytes: through TLS in chunks, or with sendfile on a plain socket.
async fn send_span(stream: ServerStream, file: File, span: &SegmentSpan) -> Result<()> {
    let (start, end) = (span.start, span.end);
    let context = || format!("sending {} bytes of {}", end - start, span.path.display());
    match stream {
        ServerStream::Tls(mut tls) => send_chunks(&mut tls, file, start, end)
            .await
            .with_context(context),
        // sendfile reads the file, which may wait for the disk: on a blocking thread, which
        // owns the socket (if this task is dropped meanwhile, the descriptor stays the
        // socket's until sendfile is done), made blocking with a send timeout standing for
        // a replica that stopped reading.
        ServerStream::Plain(tcp) => {
            let sock = tcp.into_std()?;
            tokio::task::spawn_blocking(move || send_file(sock, &file, start, end))
                .await
                .context("sendfile task")?
                .with_context(context)
        }
    }
}

/// sendfile `[pos, end)` of `file` to the socket `sock`, which this owns (closed when done).
fn send_file(
    sock: std::net::TcpStream,
    file: &File,
    mut pos: u64,
    end: u64,
) -> std::io::Result<()> {
    sock.set_nonblocking(false)?;
    sock.set_write_timeout(Some(DEAD_AFTER))?;
    let fd = sock.as_raw_fd();
    while pos < end {
        let mut off = pos as libc::off_t;
        let want = (end - pos).min(1 << 30) as usize;
        // SAFETY: both descriptors are open for the call; `off` is ours.
        let n = unsafe { libc::sendfile(fd, file.as_raw_fd(), &mut off, want) };
        match n {
            n if n > 0 => pos += n as u64,
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            _ => {
                let e = std::io::Error::last_os_error();
                match e.kind() {
                    std::io::ErrorKind::Interrupted => {}
                    std::io::ErrorKind::WouldBlock => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("replica read nothing for {DEAD_AFTER:?}"),
                        ))
                    }
                    _ => return Err(e),
                }
            }
        }
    }
    Ok(())
}

/// `[pos, end)` of `file` written through TLS (no sendfile: the bytes are encrypted in
/// user space), read in [`TLS_CHUNK_BYTES`] chunks on blocking threads, the next chunk
/// read while the last one is written. Ends with the TLS close_notify.
async fn send_chunks(
    stream: &mut (impl AsyncWrite + Unpin),
    file: File,
    mut pos: u64,
    end: u64,
) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let file = Arc::new(file);
    let read = |pos: u64| {
        let file = file.clone();
        let len = (end - pos).min(TLS_CHUNK_BYTES as u64) as usize;
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, pos).map(|()| buf)
        })
    };
    let mut next = (pos < end).then(|| read(pos));
    while let Some(reading) = next.take() {
        let chunk = reading.await.context("file read task")??;
        assert!(!chunk.is_empty() && pos + chunk.len() as u64 <= end);
        pos += chunk.len() as u64;
        next = (pos < end).then(|| read(pos));
        tokio::time::timeout(DEAD_AFTER, stream.write_all(&chunk))
            .await
            .map_err(|_| anyhow!("replica read nothing for {DEAD_AFTER:?}"))??;
    }
    assert_eq!(pos, end);
    tokio::time::timeout(DEAD_AFTER, stream.shutdown())
        .await
        .map_err(|_| anyhow!("replica read nothing for {DEAD_AFTER:?}"))??;
    Ok(())
}

/// Replica side: fetch `[imp.next_offset(), segment_next)` of the upstream's sealed segment
/// `(segment_base, segment_next)` of `imp`'s log from `upstream` and stage it in `imp`
/// (which starts at the segment's base, or inside it). `progress` hears the bytes staged
/// each time. On error, what was staged stays staged (a later fetch resumes there). With
/// `tls`, the connection is TLS (the node's own certificate as client identity).
pub async fn fetch(
    upstream: &str,
    tls: Option<&TlsOptions>,
    replica_id: &str,
    (segment_base, segment_next): (u64, u64),
    imp: &mut SegmentImport,
    mut progress: impl FnMut(&SegmentImport, u64),
) -> Result<()> {
    let mut stream = connect(upstream, tls).await?;
    // The fetch starts after the last whole frame: an earlier one cut (or dropped) midway
    // may have left part of a frame.
    imp.discard_unchecked();
    let req = pb::SegmentFetchRequest {
        log: imp.log_name().to_owned(),
        segment_base,
        from_offset: imp.next_offset(),
        replica_id: replica_id.to_owned(),
        // An upstream that predates spans of the active segment ignores it, and offers
        // only sealed segments, whose end it is.
        to_offset: segment_next,
        token: crate::server::auth::node_token().unwrap_or_default(),
    };
    // One write: with Nagle on, a second small one would wait for the first one's ack.
    stream.write_all(&framed(MAGIC, &req)).await?;
    stream.flush().await?;
    let reply: pb::SegmentFetchReply = read_msg(&mut stream).await.context("reading the reply")?;
    if !reply.error.is_empty() {
        bail!("upstream refused the fetch: {}", reply.error);
    }
    if reply.first_offset != req.from_offset || reply.next_offset != segment_next {
        bail!(
            "upstream offers {}..{} of segment {}, {}..{segment_next} was asked",
            reply.first_offset,
            reply.next_offset,
            req.segment_base,
            req.from_offset
        );
    }
    let segment = req.segment_base;
    tokio::task::block_in_place(|| imp.reserve(reply.byte_len));
    receive_into_blocks(&mut stream, imp, reply.byte_len, segment, &mut progress).await?;
    if imp.next_offset() != segment_next {
        bail!(
            "fetched segment {} ends at {}, not {segment_next}",
            req.segment_base,
            imp.next_offset()
        );
    }
    Ok(())
}

/// A fetch connection to `upstream` (given as `host:port` or a URI), through TLS with the
/// node's own certificate when `tls` is set.
async fn connect(upstream: &str, tls: Option<&TlsOptions>) -> Result<Box<dyn Io>> {
    // The upstream may be given as a URI (`http://host:port`, as gRPC takes it).
    let upstream = upstream
        .split_once("://")
        .map_or(upstream, |(_, rest)| rest);
    let upstream = upstream.trim_end_matches('/');
    let tcp = tokio::time::timeout(DEAD_AFTER, TcpStream::connect(upstream))
        .await
        .map_err(|_| anyhow!("connecting to {upstream}: timed out"))?
        .with_context(|| format!("connecting to {upstream}"))?;
    Ok(match tls {
        None => Box::new(tcp),
        Some(tls) => {
            let _ = tcp.set_nodelay(true);
            let name = crate::tls::server_name(upstream)?;
            let handshake = tls.connector()?.connect(name, tcp);
            Box::new(
                tokio::time::timeout(DEAD_AFTER, handshake)
                    .await
                    .map_err(|_| anyhow!("TLS handshake with {upstream}: timed out"))?
                    .with_context(|| format!("TLS handshake with {upstream}"))?,
            )
        }
    })
}

/// Receive `left` bytes of segment `segment` straight into `imp`'s O_DIRECT blocks (see
/// `SegmentImport::receive_buffer`): no copy between the socket and the disk. A block is
/// filled (or the rest taken), then its frames are checked and it goes to be written.
/// Where there are no blocks (a buffered import) or a frame is larger than one, the rest
/// goes through a buffer ([`receive_frames`]).
async fn receive_into_blocks(
    stream: &mut (impl AsyncRead + Unpin),
    imp: &mut SegmentImport,
    mut left: u64,
    segment: u64,
    progress: &mut impl FnMut(&SegmentImport, u64),
) -> Result<()> {
    while left > 0 {
        let staged = imp.staged_bytes();
        let Some(buf) = imp.receive_buffer() else {
            let begun = imp.take_unchecked();
            return receive_frames(stream, imp, left, segment, progress, begun).await;
        };
        let room = buf.len().min(left.try_into().unwrap_or(usize::MAX));
        read_full(stream, &mut buf[..room], left).await?;
        left -= room as u64;
        // CRC checks of a block, and its write handed over (which may wait for a slot).
        tokio::task::block_in_place(|| imp.received(room))?;
        progress(imp, imp.staged_bytes() - staged);
    }
    Ok(())
}

/// Receive `left` bytes of segment `segment` into a buffer that begins with `begun` (the
/// first bytes of a frame), and stage its whole frames.
async fn receive_frames(
    stream: &mut (impl AsyncRead + Unpin),
    imp: &mut SegmentImport,
    mut left: u64,
    segment: u64,
    progress: &mut impl FnMut(&SegmentImport, u64),
    begun: Vec<u8>,
) -> Result<()> {
    let mut buf = begun;
    let mut filled = buf.len();
    buf.resize(RECEIVE_BUFFER_BYTES.max(filled + 1), 0);
    loop {
        // Fill the buffer (or take the rest), then stage the whole frames in it.
        let room = (buf.len() - filled).min(left.try_into().unwrap_or(usize::MAX));
        read_full(stream, &mut buf[filled..filled + room], left).await?;
        (filled, left) = (filled + room, left - room as u64);
        if filled == 0 {
            return Ok(());
        }
        let whole = format::whole_frames_len(&buf[..filled])
            .map_err(|e| anyhow!("fetched bytes of segment {segment}: {e}"))?;
        if whole == 0 {
            if left == 0 {
                bail!("fetch of segment {segment} ended inside a frame");
            }
            // One frame larger than the buffer: grow to hold it (frames are bounded).
            let len = format::peek_header(&buf[..filled])?.frame_len as usize;
            buf.resize(len.max(buf.len() + 1), 0);
            continue;
        }
        // CRC checks and a write of a few MiB through the page cache: brief enough for a
        // worker.
        tokio::task::block_in_place(|| imp.write(&buf[..whole]))?;
        progress(imp, whole as u64);
        buf.copy_within(whole..filled, 0);
        filled -= whole;
    }
}

/// Fill `buf` from the upstream, which still had `left` bytes to send before it.
async fn read_full(stream: &mut (impl AsyncRead + Unpin), buf: &mut [u8], left: u64) -> Result<()> {
    let mut got = 0;
    while got < buf.len() {
        let n = tokio::time::timeout(DEAD_AFTER, stream.read(&mut buf[got..]))
            .await
            .map_err(|_| anyhow!("upstream sent nothing for {DEAD_AFTER:?}"))??;
        if n == 0 {
            bail!(
                "upstream closed the fetch with {} bytes still to come",
                left - got as u64
            );
        }
        got += n;
    }
    Ok(())
}
