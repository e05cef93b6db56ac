//! The `[server]` table: how many connections the node takes and how long it waits for
//! them (enforced in `server::accept`, `server::conn_caps` and `server::idle`).

use std::time::Duration;

use anyhow::{bail, Result};
use serde::Deserialize;

/// The `[server]` table as written.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Connections open at once, all peers together (default: from the open-files limit).
    pub max_connections: Option<usize>,
    /// Connections open at once from one IPv4 address or IPv6 /64.
    pub max_connections_per_ip: Option<usize>,
    /// A new connection must have sent its whole protocol preface by then (HTTP/2: the
    /// 24-byte magic and a SETTINGS frame; segment fetch: its magic and request).
    pub handshake_timeout_ms: Option<u64>,
    /// An HTTP/2 connection with no request open for this long is closed.
    pub idle_timeout_ms: Option<u64>,
    /// HTTP/2 PING sent after this long without a frame from the peer...
    pub keepalive_interval_ms: Option<u64>,
    /// ...and the connection closed if the PING is not answered within this long.
    pub keepalive_timeout_ms: Option<u64>,
}

/// Descriptors left to everything but connections and logs' files: segment fetches' files,
/// spare segments, the runtime's own, the metrics listener (as storage's `FDS_RESERVED`).
const FDS_RESERVED: u64 = 256;
/// Whatever the open-files limit, at least this many connections.
const CONNECTIONS_MIN: usize = 64;
/// A client behind the same address as many others (NAT) still gets this many; an address
/// holding more is one peer hoarding. Processes on one host (a local cluster, tests, the
/// CLI) use a few each.
const PER_IP_DEFAULT: usize = 256;

/// Validated connection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionConfig {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
}

impl ConnectionConfig {
    /// The defaults for a node keeping `open_logs_max` logs' files open (up to three
    /// descriptors each) under the current open-files limit.
    pub fn defaults(open_logs_max: usize) -> ConnectionConfig {
        ConnectionConfig {
            max_connections: connections_default(open_files_soft_limit(), open_logs_max),
            max_connections_per_ip: PER_IP_DEFAULT,
            // Clients send their preface with the connection's first packet: 5 s leaves
            // room for two lost packets (TCP retransmits after 1 s, then 2 s more).
            handshake_timeout: Duration::from_secs(5),
            // As gRPC's MAX_CONNECTION_IDLE is commonly set: a client idle this long
            // reconnects when it next calls. Open streams (Subscribe, Replicate) never
            // count as idle.
            idle_timeout: Duration::from_secs(300),
            // Streams idle for long (Subscribe) see a PING every 30 s: a dead peer is
            // found within 40 s, and NATs keep the flow. Replication streams carry
            // heartbeats every second, so they never need one.
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
        }
    }

    pub fn build(s: &ServerSection, open_logs_max: usize) -> Result<ConnectionConfig> {
        let d = ConnectionConfig::defaults(open_logs_max);
        let ms = |name: &str, v: Option<u64>, default: Duration| -> Result<Duration> {
            match v {
                None => Ok(default),
                Some(0) => bail!("server.{name} is 0: it must be a positive number of ms"),
                Some(v) => Ok(Duration::from_millis(v)),
            }
        };
        let c = ConnectionConfig {
            max_connections: s.max_connections.unwrap_or(d.max_connections),
            max_connections_per_ip: s.max_connections_per_ip.unwrap_or(d.max_connections_per_ip),
            handshake_timeout: ms(
                "handshake_timeout_ms",
                s.handshake_timeout_ms,
                d.handshake_timeout,
            )?,
            idle_timeout: ms("idle_timeout_ms", s.idle_timeout_ms, d.idle_timeout)?,
            keepalive_interval: ms(
                "keepalive_interval_ms",
                s.keepalive_interval_ms,
                d.keepalive_interval,
            )?,
            keepalive_timeout: ms(
                "keepalive_timeout_ms",
                s.keepalive_timeout_ms,
                d.keepalive_timeout,
            )?,
        };
        if c.max_connections == 0 {
            bail!("server.max_connections is 0: the node would refuse every client");
        }
        if c.max_connections_per_ip == 0 {
            bail!("server.max_connections_per_ip is 0: the node would refuse every client");
        }
        Ok(c)
    }
}

/// Half of the descriptors the limit leaves after the reserve and the logs' files: the
/// other half stays free for what comes and goes (segment fetches' files, spares, repair).
fn connections_default(soft_limit: u64, open_logs_max: usize) -> usize {
    // Segment, index, and the segment's O_DIRECT descriptor of direct group commits.
    let logs = 3 * open_logs_max as u64;
    let left = soft_limit.saturating_sub(FDS_RESERVED).saturating_sub(logs);
    ((left / 2) as usize).max(CONNECTIONS_MIN)
}

/// The soft RLIMIT_NOFILE (`spool serve` has raised it to the hard one by now).
fn open_files_soft_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        1024
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_cap_follows_the_open_files_limit() {
        // This machine: 20000 descriptors, storage's default of a quarter for logs (up to
        // three descriptors each).
        let logs = ((20_000 - 256) / 12) as usize;
        assert_eq!(connections_default(20_000, logs), 7404);
        // A systemd default of 1024 still takes a few hundred clients.
        assert_eq!(connections_default(1024, (1024 - 256) / 12), 288);
        // Logs configured to take everything: the floor.
        assert_eq!(connections_default(1024, 10_000), CONNECTIONS_MIN);
    }

    #[test]
    fn zero_is_refused_with_the_setting_named() {
        for toml_text in [
            "max_connections = 0",
            "max_connections_per_ip = 0",
            "handshake_timeout_ms = 0",
            "idle_timeout_ms = 0",
            "keepalive_interval_ms = 0",
            "keepalive_timeout_ms = 0",
        ] {
            let s: ServerSection = toml::from_str(toml_text).unwrap();
            let e = ConnectionConfig::build(&s, 100).unwrap_err().to_string();
            let key = toml_text.split(' ').next().unwrap();
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn set_values_win() {
        let s: ServerSection = toml::from_str(
            "max_connections = 10\nmax_connections_per_ip = 3\nhandshake_timeout_ms = 200\n\
             idle_timeout_ms = 1000\nkeepalive_interval_ms = 300\nkeepalive_timeout_ms = 400",
        )
        .unwrap();
        let c = ConnectionConfig::build(&s, 100).unwrap();
        assert_eq!(
            c,
            ConnectionConfig {
                max_connections: 10,
                max_connections_per_ip: 3,
                handshake_timeout: Duration::from_millis(200),
                idle_timeout: Duration::from_secs(1),
                keepalive_interval: Duration::from_millis(300),
                keepalive_timeout: Duration::from_millis(400),
            }
        );
    }
}
