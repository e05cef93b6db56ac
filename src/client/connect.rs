//! Connections and finding the primary: a client given several nodes (`a,b,c`) talks to
//! the one that leads, moving on when one is down or names another as the primary.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use spool_proto::v1 as pb;
use tonic::transport::Channel;

use super::{ClientError, Result};
use crate::tls::TlsOptions;

/// Replies the client accepts (reads can be large).
const MESSAGE_BYTES_MAX: usize = 64 << 20;
/// Longest wait for one node (a dial, then its status) while looking for the primary: a
/// host that is gone may drop packets instead of refusing.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between rounds over the addresses while none is the primary.
const ROUND_PAUSE_MIN: Duration = Duration::from_millis(50);
const ROUND_PAUSE_MAX: Duration = Duration::from_millis(500);

/// Normalise `HOST:PORT` to a URI.
pub fn endpoint_uri(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}

/// `a,b,c` (or one address) as URIs, in order, without repeats.
pub(super) fn parse_addrs(list: &str) -> Result<Vec<String>> {
    let mut addrs: Vec<String> = Vec::new();
    for a in list.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        let uri = endpoint_uri(a);
        if !addrs.contains(&uri) {
            addrs.push(uri);
        }
    }
    if addrs.is_empty() {
        return Err(ClientError::BadAddress(list.to_owned()));
    }
    Ok(addrs)
}

/// Adds `authorization: Bearer TOKEN` to every call when the client has a token.
#[derive(Debug, Clone, Default)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// What the generated clients talk through: the channel, with the token added.
pub type Transport = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

/// A node's connections: `n` HTTP/2 connections that calls take in turn, because one
/// connection's task (on either side) bounds how many small calls it carries.
#[derive(Debug, Clone)]
pub(super) struct Conn {
    pub addr: String,
    pool: Arc<Pool>,
}

#[derive(Debug)]
struct Pool {
    channels: Vec<Transport>,
    next: AtomicUsize,
}

impl Conn {
    /// The next connection, round robin.
    fn channel(&self) -> Transport {
        let n = self.pool.next.fetch_add(1, Ordering::Relaxed);
        self.pool.channels[n % self.pool.channels.len()].clone()
    }

    pub fn log(&self) -> pb::log_client::LogClient<Transport> {
        pb::log_client::LogClient::new(self.channel())
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX)
    }

    pub fn logs(&self) -> pb::logs_client::LogsClient<Transport> {
        pb::logs_client::LogsClient::new(self.channel())
    }

    pub fn status(&self) -> pb::status_client::StatusClient<Transport> {
        pb::status_client::StatusClient::new(self.channel())
    }

    pub fn admin(&self) -> pb::admin_client::AdminClient<Transport> {
        pb::admin_client::AdminClient::new(self.channel())
    }
}

/// How every connection of a client is dialed (the same for each node it moves to).
#[derive(Debug, Clone)]
pub(super) struct DialOptions {
    /// TLS (`--tls-*`, or an `https://` address).
    pub tls: Option<TlsOptions>,
    /// The bearer token sent with every call (`SPOOL_TOKEN`, `--token-file`).
    pub token: Bearer,
    /// HTTP/2 connections per node (at least 1).
    pub connections: usize,
}

impl Default for DialOptions {
    fn default() -> Self {
        DialOptions {
            tls: None,
            token: Bearer::default(),
            connections: 1,
        }
    }
}

impl DialOptions {
    /// A token that cannot go in a header is refused here, not at the first call.
    pub fn bearer(token: Option<&str>) -> Result<Bearer> {
        token
            .map(|t| format!("Bearer {}", t.trim()).parse())
            .transpose()
            .map(Bearer)
            .map_err(|_| ClientError::BadToken)
    }
}

/// Connect to `addr`: the first connection now (so a dead node fails here), the rest of
/// the pool on first use (a probed node that is not kept costs one connection).
pub(super) async fn dial(addr: &str, opts: &DialOptions) -> Result<Conn> {
    let uri = crate::tls::uri(addr, opts.tls.is_some());
    let endpoint = crate::tls::endpoint(&uri, opts.tls.as_ref())
        .map_err(|e| ClientError::Tls(format!("{e:#}")))?
        .tcp_nodelay(true);
    let first = endpoint
        .connect()
        .await
        .map_err(|source| ClientError::Connect {
            addr: uri.clone(),
            source,
        })?;
    let lazy = (1..opts.connections).map(|_| endpoint.connect_lazy());
    let channels = std::iter::once(first)
        .chain(lazy)
        .map(|c| Transport::new(c, opts.token.clone()))
        .collect();
    Ok(Conn {
        addr: uri,
        pool: Arc::new(Pool {
            channels,
            next: AtomicUsize::new(0),
        }),
    })
}

/// The last thing each address said while the client looked for the primary: the reason
/// given when none is found.
#[derive(Debug, Default)]
pub(super) struct Reasons(Vec<(String, String)>);

impl Reasons {
    pub fn note(&mut self, addr: &str, why: impl Into<String>) {
        let why = why.into();
        match self.0.iter_mut().find(|(a, _)| a == addr) {
            Some((_, w)) => *w = why,
            None => self.0.push((addr.to_owned(), why)),
        }
    }

    pub fn summary(&self) -> String {
        let parts: Vec<String> = self.0.iter().map(|(a, w)| format!("{a}: {w}")).collect();
        parts.join("; ")
    }
}

/// What the search needs: the primary (writes), or any node that answers (reads, when no
/// primary answers in a whole round).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Want {
    Primary,
    Any,
}

/// One node's answer to "do you lead?".
enum Probe {
    Primary(Conn),
    /// A replica, and the primary it names (if it knows one).
    Other(Conn, Option<String>),
}

/// Dial `addr` and ask its status, each step bounded.
async fn probe(addr: &str, opts: &DialOptions, limit: Duration) -> Result<Probe, String> {
    let conn = match tokio::time::timeout(limit, dial(addr, opts)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(short_error(&e)),
        Err(_) => return Err(format!("no connection within {limit:?}")),
    };
    let mut status = conn.status();
    let s = match tokio::time::timeout(limit, status.get(pb::StatusRequest {})).await {
        Ok(Ok(s)) => s.into_inner(),
        Ok(Err(s)) => return Err(format!("{:?}: {}", s.code(), s.message())),
        Err(_) => return Err(format!("no status within {limit:?}")),
    };
    let leads = s.cluster.as_ref().is_none_or(|c| c.leader == c.node);
    if s.role == "primary" && !s.fenced && leads {
        return Ok(Probe::Primary(conn));
    }
    let named = [
        s.primary_addr.as_str(),
        s.cluster.as_ref().map_or("", |c| c.leader_addr.as_str()),
    ];
    let primary = named.into_iter().find(|a| !a.is_empty()).map(endpoint_uri);
    Ok(Probe::Other(conn, primary))
}

/// A transport error's innermost cause ("Connection refused"), not tonic's outer layers.
fn short_error(e: &ClientError) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// One pass: `hint` first, then `seeds`, then any primary a node names on the way.
async fn round(
    seeds: &[String],
    opts: &DialOptions,
    hint: Option<String>,
    want: Want,
    reasons: &mut Reasons,
    deadline: Instant,
) -> Option<Conn> {
    let mut queue: VecDeque<String> = hint.into_iter().chain(seeds.iter().cloned()).collect();
    let mut seen: Vec<String> = Vec::new();
    let mut any = None;
    while let Some(addr) = queue.pop_front() {
        if seen.contains(&addr) {
            continue;
        }
        seen.push(addr.clone());
        let limit = deadline
            .saturating_duration_since(Instant::now())
            .clamp(ROUND_PAUSE_MIN, PROBE_TIMEOUT);
        match probe(&addr, opts, limit).await {
            Ok(Probe::Primary(conn)) => return Some(conn),
            Ok(Probe::Other(conn, primary)) => {
                let why = match &primary {
                    Some(p) => format!("not the primary (it names {p})"),
                    None => "a replica that knows no primary yet".to_owned(),
                };
                reasons.note(&addr, why);
                queue.extend(primary);
                any.get_or_insert(conn);
            }
            Err(why) => reasons.note(&addr, why),
        }
    }
    any.filter(|_| want == Want::Any)
}

/// Look for the primary (or, with `Want::Any`, a node) until `deadline`, round after
/// round; UNAVAILABLE with what each address said when there is none.
pub(super) async fn find(
    seeds: &[String],
    opts: &DialOptions,
    mut hint: Option<String>,
    want: Want,
    reasons: &mut Reasons,
    deadline: Instant,
) -> Result<Conn> {
    let started = Instant::now();
    let mut pause = ROUND_PAUSE_MIN;
    loop {
        if let Some(conn) = round(seeds, opts, hint.take(), want, reasons, deadline).await {
            return Ok(conn);
        }
        if Instant::now() + pause >= deadline {
            return Err(ClientError::NoPrimary {
                waited: started.elapsed(),
                reasons: reasons.summary(),
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(ROUND_PAUSE_MAX);
    }
}
