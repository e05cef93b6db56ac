//! What a new connection's first bytes say it is. Both protocols on the port begin with a
//! fixed preface the client sends at once, without waiting for the server:
//!
//! | protocol | preface |
//! |---|---|
//! | HTTP/2 (RFC 9113 §3.4) | the 24 bytes [`HTTP2_MAGIC`], then a SETTINGS frame: a 9-byte frame header (length u24 BE, type 0x4, flags without ACK, stream 0) and `length` bytes of 6-byte settings |
//! | segment fetch | the 8 bytes `SPOOLSF1` ([`MAGIC`]), then the request (see `segment_fetch`) |
//!
//! `server::accept` reads until [`classify`] decides, under the handshake deadline, so a
//! connection reaches tonic only once its HTTP/2 preface is whole: hyper has no deadline
//! of its own on it, and a peer that stopped half-way held its connection for ever.

use super::replication::segment_fetch::MAGIC;

/// The fixed first 24 bytes of every HTTP/2 connection (prior knowledge, as gRPC uses).
pub const HTTP2_MAGIC: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An HTTP/2 frame header: length (u24), type, flags, stream id (u32).
const FRAME_HEADER_BYTES: usize = 9;
const FRAME_TYPE_SETTINGS: u8 = 0x4;
const FLAG_ACK: u8 = 0x1;
/// Each setting is an id (u16) and a value (u32).
const SETTING_BYTES: usize = 6;
/// SETTINGS_MAX_FRAME_SIZE's initial value: no frame the client sends first is larger.
const SETTINGS_PAYLOAD_MAX: usize = 16_384;
/// Most bytes [`classify`] ever needs to decide.
pub const PREFACE_BYTES_MAX: usize = HTTP2_MAGIC.len() + FRAME_HEADER_BYTES + SETTINGS_PAYLOAD_MAX;

const _: () = assert!(
    HTTP2_MAGIC[0] != MAGIC[0],
    "the prefaces differ from the first byte"
);

/// What the bytes received so far are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preface {
    /// A prefix of a preface: wait for more.
    Partial,
    /// A whole HTTP/2 preface (magic and SETTINGS frame), `len` bytes.
    Http2 { len: usize },
    /// The segment-fetch magic.
    SegmentFetch,
    /// Neither protocol (or a malformed SETTINGS frame): nothing to serve.
    Unknown,
}

/// Decide from `first`, the bytes received so far (at least one).
pub fn classify(first: &[u8]) -> Preface {
    assert!(!first.is_empty());
    if first[0] == MAGIC[0] {
        let n = first.len().min(MAGIC.len());
        return match (first[..n] == MAGIC[..n], n == MAGIC.len()) {
            (false, _) => Preface::Unknown,
            (true, false) => Preface::Partial,
            (true, true) => Preface::SegmentFetch,
        };
    }
    let n = first.len().min(HTTP2_MAGIC.len());
    if first[..n] != HTTP2_MAGIC[..n] {
        return Preface::Unknown;
    }
    let header_end = HTTP2_MAGIC.len() + FRAME_HEADER_BYTES;
    let Some(h) = first.get(HTTP2_MAGIC.len()..header_end) else {
        return Preface::Partial;
    };
    let payload = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
    let settings = h[3] == FRAME_TYPE_SETTINGS && h[4] & FLAG_ACK == 0 && stream == 0;
    if !settings || payload > SETTINGS_PAYLOAD_MAX || payload % SETTING_BYTES != 0 {
        return Preface::Unknown;
    }
    let len = header_end + payload;
    assert!(len <= PREFACE_BYTES_MAX);
    if first.len() < len {
        Preface::Partial
    } else {
        Preface::Http2 { len }
    }
}

/// HTTP/2 GOAWAY (RFC 9113 §6.8) and its INADEQUATE_SECURITY error code.
const FRAME_TYPE_GOAWAY: u8 = 0x7;
const INADEQUATE_SECURITY: u32 = 0xc;

/// What a node answers an HTTP/2 client it refuses on security grounds (plaintext to a
/// TLS node, a client certificate refused): the server preface (an empty SETTINGS frame),
/// then a GOAWAY with INADEQUATE_SECURITY and `why` as its debug data, which the client's
/// failed call shows. Sent once the client's first request is in (see [`opens_a_stream`]):
/// h2 fails a request it has sent with the GOAWAY's reason, one still queued only as
/// "connection closed".
pub fn goaway(why: &str) -> Vec<u8> {
    let debug = why.as_bytes();
    let mut out = vec![0, 0, 0, FRAME_TYPE_SETTINGS, 0, 0, 0, 0, 0];
    let len = 8 + debug.len();
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8]);
    out.extend_from_slice(&[FRAME_TYPE_GOAWAY, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&0u32.to_be_bytes()); // last stream id: none was processed
    out.extend_from_slice(&INADEQUATE_SECURITY.to_be_bytes());
    out.extend_from_slice(debug);
    out
}

/// Whether the frames after a whole preface include a HEADERS frame (a request).
pub fn opens_a_stream(mut frames: &[u8]) -> bool {
    const FRAME_TYPE_HEADERS: u8 = 0x1;
    while frames.len() >= FRAME_HEADER_BYTES {
        if frames[3] == FRAME_TYPE_HEADERS {
            return true;
        }
        let len =
            usize::from(frames[0]) << 16 | usize::from(frames[1]) << 8 | usize::from(frames[2]);
        let Some(rest) = frames.get(FRAME_HEADER_BYTES + len..) else {
            return false;
        };
        frames = rest;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The magic and a SETTINGS frame of `settings` entries.
    fn http2_preface(settings: usize) -> Vec<u8> {
        let mut v = HTTP2_MAGIC.to_vec();
        let len = settings * SETTING_BYTES;
        v.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8]);
        v.extend_from_slice(&[FRAME_TYPE_SETTINGS, 0, 0, 0, 0, 0]);
        for i in 0..settings {
            v.extend_from_slice(&[0, i as u8 + 1, 0, 0, 0x10, 0]);
        }
        v
    }

    #[test]
    fn every_prefix_of_a_preface_waits_for_more() {
        for p in [http2_preface(0), http2_preface(3), MAGIC.to_vec()] {
            for n in 1..p.len() {
                assert_eq!(classify(&p[..n]), Preface::Partial, "{n} of {p:?}");
            }
        }
    }

    #[test]
    fn whole_prefaces_are_told_apart() {
        let p = http2_preface(3);
        assert_eq!(classify(&p), Preface::Http2 { len: p.len() });
        // What follows at once (a HEADERS frame) stays for hyper.
        let mut more = p.clone();
        more.extend_from_slice(&[0, 0, 4, 1, 4, 0, 0, 0, 1, 1, 2, 3, 4]);
        assert_eq!(classify(&more), Preface::Http2 { len: p.len() });
        assert_eq!(classify(&http2_preface(0)), Preface::Http2 { len: 33 });
        let mut fetch = MAGIC.to_vec();
        fetch.extend_from_slice(&[9, 0, 0, 0]);
        assert_eq!(classify(&fetch), Preface::SegmentFetch);
    }

    #[test]
    fn a_request_is_seen_among_the_frames_after_the_preface() {
        let settings = [
            0,
            0,
            6,
            FRAME_TYPE_SETTINGS,
            0,
            0,
            0,
            0,
            0,
            0,
            3,
            0,
            0,
            0,
            100,
        ];
        let window = [0, 0, 4, 0x8, 0, 0, 0, 0, 0, 0, 1, 0, 0];
        let headers = [0, 0, 1, 0x1, 4, 0, 0, 0, 1, 0x83];
        assert!(!opens_a_stream(&[]));
        assert!(!opens_a_stream(&settings[..7]));
        assert!(!opens_a_stream(&[&settings[..], &window[..]].concat()));
        assert!(opens_a_stream(
            &[&settings[..], &window[..], &headers[..]].concat()
        ));
        assert!(opens_a_stream(&headers[..9]));
        let goaway = goaway("why");
        assert_eq!(goaway.len(), 9 + 9 + 8 + 3);
        assert_eq!(goaway[9 + 3], FRAME_TYPE_GOAWAY);
    }

    #[test]
    fn anything_else_is_refused_at_once() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Preface::Unknown);
        assert_eq!(classify(b"SPOOLX"), Preface::Unknown);
        assert_eq!(classify(b"PRI * HTTP/1.1"), Preface::Unknown);
        let mut ack = http2_preface(0);
        ack[HTTP2_MAGIC.len() + 4] = FLAG_ACK;
        assert_eq!(classify(&ack), Preface::Unknown);
        let mut ping = http2_preface(0);
        ping[HTTP2_MAGIC.len() + 3] = 0x6;
        assert_eq!(classify(&ping), Preface::Unknown);
        let mut on_stream = http2_preface(0);
        on_stream[HTTP2_MAGIC.len() + 8] = 1;
        assert_eq!(classify(&on_stream), Preface::Unknown);
        let mut odd = http2_preface(1);
        odd[HTTP2_MAGIC.len() + 2] = 5;
        assert_eq!(classify(&odd), Preface::Unknown);
        let mut huge = http2_preface(0);
        huge[HTTP2_MAGIC.len()] = 1; // 65536 bytes of settings
        assert_eq!(classify(&huge), Preface::Unknown);
    }
}
