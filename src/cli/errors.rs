//! Errors as one line a person reads: each cause once, the innermost transport cause
//! instead of tonic's layers, and what to try when no connection could be made.

use spool::client::{endpoint_uri, ClientError};
use tonic::Code;

/// `e` on one line. `given` is the `--addr` list: a connection that failed to another
/// address was to the primary a replica named.
pub fn describe(e: &anyhow::Error, given: &str) -> String {
    for cause in e.chain() {
        if let Some(ClientError::Connect { addr, source }) = cause.downcast_ref::<ClientError>() {
            return connect_failed(addr, source, given);
        }
    }
    let transport_failed = e.chain().any(|c| {
        matches!(c.downcast_ref::<ClientError>(), Some(ClientError::Rpc(s))
            if matches!(s.code(), Code::Cancelled | Code::Unknown | Code::Unavailable | Code::Internal))
    });
    if transport_failed {
        if let Some(addr) = given.split(',').map(str::trim).find(|a| speaks_http1(a)) {
            return format!(
                "{addr} answers HTTP/1 (a metrics port?): it is not a Spool gRPC port; give the \
                 node's --listen address (default {})",
                spool::config::DEFAULT_LISTEN
            );
        }
    }
    dedup_chain(e.chain().map(|c| c.to_string()))
}

/// Whether `addr` (HOST:PORT, no TLS) answers a plain HTTP/1 request, as a metrics
/// endpoint does and a Spool gRPC port does not. Bounded: one second per step.
fn speaks_http1(addr: &str) -> bool {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    const STEP: std::time::Duration = std::time::Duration::from_secs(1);
    let hostport = addr.strip_prefix("http://").unwrap_or(addr);
    if hostport.contains("://") {
        return false;
    }
    let Some(sock) = hostport.to_socket_addrs().ok().and_then(|mut a| a.next()) else {
        return false;
    };
    let Ok(mut conn) = std::net::TcpStream::connect_timeout(&sock, STEP) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(STEP));
    let _ = conn.set_write_timeout(Some(STEP));
    let request = format!("GET / HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n");
    if conn.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 8];
    conn.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}

/// The cause chain joined with ": ", leaving out a message an outer one already says
/// (tonic's "transport error: transport error: tcp connect error: tcp connect error").
pub fn dedup_chain(messages: impl Iterator<Item = String>) -> String {
    let mut line = String::new();
    for m in messages {
        let m = m.trim();
        if m.is_empty() || line.contains(m) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(m);
    }
    line
}

/// The innermost cause of `e` (the OS error, the TLS alert).
fn innermost<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> &'a (dyn std::error::Error + 'static) {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause
}

fn connect_failed(addr: &str, source: &tonic::transport::Error, given: &str) -> String {
    let cause = innermost(source);
    let refused = cause
        .downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused);
    let was_given = given.split(',').any(|g| endpoint_uri(g.trim()) == addr)
        || given.split(',').any(|g| g.trim() == addr);
    let shown = addr.strip_prefix("http://").unwrap_or(addr);
    let what = if was_given {
        format!("cannot connect to {shown}")
    } else {
        // The client was sent on by a replica: the node named as the primary is down.
        format!("the primary at {shown} (named by the node at {given}) is unreachable")
    };
    let hint = if !refused {
        String::new()
    } else if was_given {
        format!(
            " (is a spool node running there, on that port? `spool serve` listens on {} \
             unless given --listen; `spool status --addr HOST:PORT` checks one)",
            spool::config::DEFAULT_LISTEN
        )
    } else {
        " (is it down? a replica can be promoted: `spool admin promote`)".to_owned()
    };
    format!("{what}: {cause}{hint}")
}

/// Addresses in `--addr` without a port (`localhost`): the port would silently be 80.
pub fn missing_port(given: &str) -> Option<String> {
    for a in given.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        let rest = a.split_once("://").map_or(a, |(_, r)| r);
        let authority = rest.split('/').next().unwrap_or(rest);
        let has_port = match authority.rsplit_once(':') {
            // [::1]:7070 has one after the bracket; [::1] has none.
            Some((host, port)) => {
                !port.is_empty()
                    && port.bytes().all(|b| b.is_ascii_digit())
                    && (!host.starts_with('[') || host.ends_with(']'))
            }
            None => false,
        };
        if !has_port {
            let port = spool::config::DEFAULT_LISTEN
                .rsplit(':')
                .next()
                .unwrap_or("7070");
            return Some(format!(
                "--addr {a:?} has no port: give HOST:PORT ({authority}:{port} for a node \
                 listening on the default port {port})"
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_causes_show_once() {
        let chain = [
            "cannot connect to x: transport error",
            "transport error",
            "tcp connect error",
            "tcp connect error",
            "Connection refused (os error 111)",
        ];
        assert_eq!(
            dedup_chain(chain.iter().map(|s| s.to_string())),
            "cannot connect to x: transport error: tcp connect error: Connection refused (os error 111)"
        );
    }

    #[test]
    fn an_address_without_a_port_is_named() {
        assert!(missing_port("localhost")
            .unwrap()
            .contains("localhost:7070"));
        assert!(missing_port("http://localhost").is_some());
        assert!(missing_port("a:7070,b").unwrap().contains("\"b\""));
        assert!(missing_port("[::1]").is_some());
        assert_eq!(missing_port("localhost:7070"), None);
        assert_eq!(missing_port("https://h:1,[::1]:7070"), None);
    }
}
