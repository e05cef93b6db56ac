//! Raw TCP connections for the connection tests: from a chosen loopback address (all of
//! 127.0.0.0/8 reaches a node listening on 127.0.0.1, so one host can be many peers),
//! saying as little or as much HTTP/2 as the test wants.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The first 24 bytes of every HTTP/2 connection.
pub const HTTP2_MAGIC: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;

/// 127.0.0.`n`.
pub fn loopback(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// A frame header and payload.
pub fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut v = vec![
        (len >> 16) as u8,
        (len >> 8) as u8,
        len as u8,
        kind,
        flags,
        0,
        0,
        0,
        0,
    ];
    v.extend_from_slice(payload);
    v
}

/// The whole client preface: magic and an empty SETTINGS frame.
pub fn http2_preface() -> Vec<u8> {
    let mut v = HTTP2_MAGIC.to_vec();
    v.extend(frame(SETTINGS, 0, &[]));
    v
}

/// A TCP connection to `addr` from `src`, having sent `first`.
pub async fn open_from(src: IpAddr, addr: &str, first: &[u8]) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(src, 0)).unwrap();
    let mut s = socket.connect(addr.parse().unwrap()).await.unwrap();
    if !first.is_empty() {
        s.write_all(first).await.unwrap();
    }
    s
}

/// Read (and drop) whatever the server sends until it closes the connection (end of file,
/// or a reset where it closed with bytes of ours unread); returns when that was.
pub async fn closed_by_server(s: &mut TcpStream) -> Instant {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return Instant::now(),
            Ok(_) => {}
        }
    }
}

/// Whether the server has closed `s` by now (within `wait`).
pub async fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    tokio::time::timeout(wait, closed_by_server(s))
        .await
        .is_ok()
}

/// What an HTTP/2 peer that opens no stream saw before the server closed its connection.
#[derive(Debug)]
pub struct IdlePeer {
    pub pings_answered: usize,
    pub goaway: bool,
    pub closed_at: Instant,
}

/// Send the client preface and wait for the server's SETTINGS (acknowledged): the node
/// has taken the connection past its handshake.
pub async fn http2_handshake(s: &mut TcpStream) {
    s.write_all(&http2_preface()).await.unwrap();
    loop {
        let (kind, flags, _) = read_frame(s).await.expect("closed in the handshake");
        if kind == SETTINGS && flags & ACK == 0 {
            s.write_all(&frame(SETTINGS, ACK, &[])).await.unwrap();
            return;
        }
    }
}

async fn read_frame(s: &mut TcpStream) -> Option<(u8, u8, Vec<u8>)> {
    let mut header = [0u8; 9];
    s.read_exact(&mut header).await.ok()?;
    let len = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.ok()?;
    Some((header[3], header[4], payload))
}

/// Be a well-behaved HTTP/2 client that never calls (after [`http2_handshake`]): answer
/// the server's PINGs and SETTINGS until it closes the connection.
pub async fn idle_http2_peer(mut s: TcpStream) -> IdlePeer {
    let mut peer = IdlePeer {
        pings_answered: 0,
        goaway: false,
        closed_at: Instant::now(),
    };
    while let Some((kind, flags, payload)) = read_frame(&mut s).await {
        let reply = match kind {
            SETTINGS if flags & ACK == 0 => Some(frame(SETTINGS, ACK, &[])),
            PING if flags & ACK == 0 => {
                peer.pings_answered += 1;
                Some(frame(PING, ACK, &payload))
            }
            GOAWAY => {
                peer.goaway = true;
                None
            }
            _ => None,
        };
        if let Some(r) = reply {
            // The server may have closed meanwhile: the next read says so.
            let _ = s.write_all(&r).await;
        }
    }
    peer.closed_at = Instant::now();
    peer
}

/// Raise this process's open-files limit to at least `n` (the hard limit too where it is
/// lower, which only root may do); panics, saying so, where it cannot.
pub fn raise_own_nofile(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct they are given.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur >= n {
            return;
        }
        let hard = lim.rlim_max;
        lim.rlim_cur = n;
        lim.rlim_max = lim.rlim_max.max(n);
        assert_eq!(
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim),
            0,
            "this test needs {n} open files; the hard limit is {hard} (raise it: ulimit -Hn)"
        );
    }
}
