//! [`EtcdCoordinator`]: the [`Coordinator`] contract on etcd's v3 gRPC API (the subset in
//! `spool_proto::etcd`), over plain HTTP/2 to one of several endpoints.
//!
//! Invariants:
//! - One endpoint is preferred at a time; every call starts there, and the preference moves
//!   to the next endpoint (in the configured order, wrapping) only when a call fails on it
//!   for a transport reason. An endpoint that works stays preferred.
//! - Every attempt on one endpoint (dial, authenticate, the request, one re-authentication
//!   and its retry) is bounded by the client's `timeout`; a call makes at most one attempt
//!   per endpoint, so it returns within [`EtcdCoordinator::call_bound`].
//! - Reads, grants, renewals and revocations are retried on the next endpoint after a
//!   transport failure. Puts and transactions are retried only if they were never sent
//!   (the dial or authentication failed): once sent, a lost answer is `Unavailable`, so a
//!   transaction never reports `false` because its own first attempt was applied.
//! - With credentials, every request carries the token of the last authentication on the
//!   session's endpoint; a request refused for an invalid or outdated token
//!   re-authenticates once and is sent again.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use spool_proto::etcd::etcdserverpb as pb;
use spool_proto::etcd::mvccpb;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use super::coordinator::{ttl_seconds, Compare, CoordError, Coordinator, Entry, LeaseId, Op, Read};

mod config;
pub use config::{
    parse_cluster_url, parse_endpoint, EtcdConfig, EtcdConfigError, CLUSTER_SCHEME, DEFAULT_TIMEOUT,
};

/// The metadata key etcd reads the auth token from.
const TOKEN_METADATA: &str = "token";

/// [`EtcdCoordinator::connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Config(#[from] EtcdConfigError),
    #[error(transparent)]
    Coordinator(#[from] CoordError),
}

/// A cheap-to-clone handle on one etcd cluster; clones share the preferred endpoint, its
/// connection and the token.
#[derive(Clone)]
pub struct EtcdCoordinator {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Vec<String>,
    credentials: Option<(String, String)>,
    timeout: Duration,
    tls: Option<crate::tls::TlsOptions>,
    state: Mutex<State>,
}

struct State {
    /// Index into `endpoints` of the endpoint calls start on.
    preferred: usize,
    /// The connection to the preferred endpoint, once made.
    session: Option<Session>,
}

/// A connection to one endpoint and the token got on it.
#[derive(Clone)]
struct Session {
    index: usize,
    channel: Channel,
    token: Option<AsciiMetadataValue>,
}

impl Session {
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(token) = &self.token {
            request.metadata_mut().insert(TOKEN_METADATA, token.clone());
        }
        request
    }

    fn kv(&self) -> pb::kv_client::KvClient<Channel> {
        pb::kv_client::KvClient::new(self.channel.clone())
    }

    fn lease(&self) -> pb::lease_client::LeaseClient<Channel> {
        pb::lease_client::LeaseClient::new(self.channel.clone())
    }
}

impl std::fmt::Debug for EtcdCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCoordinator")
            .field("endpoints", &self.inner.endpoints)
            .field("preferred", &self.endpoint())
            .field("authenticated", &self.inner.credentials.is_some())
            .field("timeout", &self.inner.timeout)
            .finish()
    }
}

/// Whether a failed call may be sent to the next endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Applying it twice is harmless (reads, renewals, grants: an extra lease expires).
    Always,
    /// Only if it was never sent.
    UnlessSent,
}

/// Why one attempt failed.
enum Failure {
    /// The endpoint did not answer; try the next one.
    Transport(String),
    /// etcd answered with an error.
    Status(Status),
}

impl EtcdCoordinator {
    /// One read in a request of its own.
    async fn range(&self, read: Read) -> Result<Vec<Entry>, CoordError> {
        let request = range_request(&read);
        let response = self
            .call(Retry::Always, None, |s| {
                let request = s.request(request.clone());
                async move { s.kv().range(request).await.map(Response::into_inner) }
            })
            .await?;
        response.kvs.into_iter().map(entry).collect()
    }

    /// Check the configuration; nothing is dialled until the first call.
    pub fn new(cfg: &EtcdConfig) -> Result<Self, EtcdConfigError> {
        if cfg.endpoints.is_empty() {
            return Err(EtcdConfigError::Empty(String::new()));
        }
        let endpoints = cfg
            .endpoints
            .iter()
            .map(|e| parse_endpoint(e.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        let credentials = match (&cfg.username, &cfg.password) {
            (Some(user), Some(password)) => Some((user.clone(), password.clone())),
            (None, None) => None,
            _ => return Err(EtcdConfigError::HalfCredentials),
        };
        if cfg.timeout.is_zero() {
            return Err(EtcdConfigError::ZeroTimeout);
        }
        Ok(EtcdCoordinator {
            inner: Arc::new(Inner {
                endpoints,
                credentials,
                timeout: cfg.timeout,
                tls: cfg.tls.clone(),
                state: Mutex::new(State {
                    preferred: 0,
                    session: None,
                }),
            }),
        })
    }

    /// Check the configuration and get an answer from one endpoint: an authentication if
    /// configured, else a count of one key (refused if etcd wants credentials).
    pub async fn connect(cfg: &EtcdConfig) -> Result<Self, ConnectError> {
        let coordinator = Self::new(cfg)?;
        let probe = pb::RangeRequest {
            key: vec![0],
            count_only: true,
            ..Default::default()
        };
        coordinator
            .call(Retry::Always, None, |s| {
                let request = (s.token.is_none()).then(|| s.request(probe.clone()));
                async move {
                    match request {
                        Some(request) => s.kv().range(request).await.map(|_| ()),
                        None => Ok(()),
                    }
                }
            })
            .await?;
        Ok(coordinator)
    }

    /// The endpoint calls start on: the last one that worked, or the next to try.
    pub fn endpoint(&self) -> String {
        self.inner.endpoints[self.inner.state.lock().preferred].clone()
    }

    /// The longest a call takes: one attempt's timeout per endpoint.
    pub fn call_bound(&self) -> Duration {
        let endpoints = u32::try_from(self.inner.endpoints.len()).unwrap_or(u32::MAX);
        self.inner.timeout.saturating_mul(endpoints)
    }

    /// Run `op` on the preferred endpoint, moving on to the next after a transport failure
    /// as `retry` allows. `lease` is the lease a "lease not found" refusal is about.
    async fn call<T, F, Fut>(
        &self,
        retry: Retry,
        lease: Option<LeaseId>,
        op: F,
    ) -> Result<T, CoordError>
    where
        F: Fn(Session) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let timeout = self.inner.timeout;
        let mut failures = Vec::new();
        for _ in 0..self.inner.endpoints.len() {
            let index = self.inner.state.lock().preferred;
            let mut sent = false;
            let why = match tokio::time::timeout(timeout, self.attempt(index, &op, &mut sent)).await
            {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(Failure::Status(status))) => return Err(refusal(status, lease)),
                Ok(Err(Failure::Transport(why))) => why,
                Err(_) => format!("no answer within {timeout:?}"),
            };
            self.failed(index);
            failures.push(format!("{}: {why}", self.inner.endpoints[index]));
            if sent && retry == Retry::UnlessSent {
                failures.push("not retried: it may have been applied".into());
                break;
            }
        }
        Err(CoordError::Unavailable(failures.join("; ")))
    }

    /// One attempt on endpoint `index`; `sent` is set once `op` may have reached etcd.
    async fn attempt<T, F, Fut>(&self, index: usize, op: &F, sent: &mut bool) -> Result<T, Failure>
    where
        F: Fn(Session) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let session = self.session(index).await?;
        *sent = true;
        match op(session.clone()).await {
            Err(status) if self.inner.credentials.is_some() && token_refused(&status) => {
                let session = self.reauthenticate(session).await?;
                op(session).await.map_err(failure)
            }
            result => result.map_err(failure),
        }
    }

    /// The session on endpoint `index`: the one kept, or a new one (kept if `index` is
    /// still preferred).
    async fn session(&self, index: usize) -> Result<Session, Failure> {
        {
            let state = self.inner.state.lock();
            if let Some(session) = state.session.as_ref().filter(|s| s.index == index) {
                return Ok(session.clone());
            }
        }
        let endpoint = &self.inner.endpoints[index];
        let channel = crate::tls::endpoint(endpoint, self.inner.tls.as_ref())
            .map_err(|e| Failure::Transport(format!("bad endpoint: {e:#}")))?
            .connect_timeout(self.inner.timeout)
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| Failure::Transport(error_chain(&e)))?;
        let token = self.authenticate(&channel).await?;
        let session = Session {
            index,
            channel,
            token,
        };
        let mut state = self.inner.state.lock();
        if state.preferred == index {
            state.session = Some(session.clone());
        }
        Ok(session)
    }

    async fn authenticate(&self, channel: &Channel) -> Result<Option<AsciiMetadataValue>, Failure> {
        let Some((name, password)) = &self.inner.credentials else {
            return Ok(None);
        };
        let response = pb::auth_client::AuthClient::new(channel.clone())
            .authenticate(pb::AuthenticateRequest {
                name: name.clone(),
                password: password.clone(),
            })
            .await
            .map_err(failure)?
            .into_inner();
        let token = AsciiMetadataValue::try_from(response.token.as_str()).map_err(|_| {
            Failure::Status(Status::internal("etcd gave a token that is not ASCII"))
        })?;
        Ok(Some(token))
    }

    async fn reauthenticate(&self, session: Session) -> Result<Session, Failure> {
        let token = self.authenticate(&session.channel).await?;
        let session = Session { token, ..session };
        let mut state = self.inner.state.lock();
        if let Some(kept) = state.session.as_mut().filter(|s| s.index == session.index) {
            kept.token = session.token.clone();
        }
        Ok(session)
    }

    /// Endpoint `index` failed: if it is still preferred, prefer the next one.
    fn failed(&self, index: usize) {
        let mut state = self.inner.state.lock();
        if state.preferred == index {
            state.preferred = (index + 1) % self.inner.endpoints.len();
            state.session = None;
        }
    }
}

/// A status that says the endpoint could not serve: the transport failed, or etcd cannot
/// answer now (no leader, stopping); another endpoint may.
fn is_transport(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Internal
    )
}

fn failure(status: Status) -> Failure {
    if is_transport(&status) {
        Failure::Transport(format!("{:?}: {}", status.code(), status.message()))
    } else {
        Failure::Status(status)
    }
}

/// etcd refused the token: expired or unknown (`invalid auth token`), or issued before
/// the last change of users or roles (`revision of auth store is old`).
fn token_refused(status: &Status) -> bool {
    let message = status.message();
    (status.code() == Code::Unauthenticated && message.contains("invalid auth token"))
        || (status.code() == Code::InvalidArgument && message.contains("auth store is old"))
}

/// etcd's answer as a refusal; "lease not found" is `LeaseExpired(lease)`.
fn refusal(status: Status, lease: Option<LeaseId>) -> CoordError {
    if let Some(lease) = lease {
        if status.code() == Code::NotFound && status.message().contains("lease not found") {
            return CoordError::LeaseExpired(lease);
        }
    }
    CoordError::Refused(format!("{:?}: {}", status.code(), status.message()))
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// etcd's end of the range of keys starting with `prefix`: the prefix with its last byte
/// below 0xff raised by one (the bytes after it dropped); `\0` (no end) if there is none.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn range_request(read: &Read) -> pb::RangeRequest {
    match read {
        Read::Key(key) => pb::RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        },
        // etcd has no empty key: the whole keyspace is ["\0", "\0" as no end).
        Read::Prefix(prefix) if prefix.is_empty() => pb::RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        },
        Read::Prefix(prefix) => pb::RangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: prefix_end(prefix.as_bytes()),
            ..Default::default()
        },
    }
}

fn entry(kv: mvccpb::KeyValue) -> Result<Entry, CoordError> {
    let key = String::from_utf8(kv.key)
        .map_err(|e| CoordError::Refused(format!("etcd returned a key that is not UTF-8: {e}")))?;
    Ok(Entry {
        key,
        value: kv.value,
        mod_revision: kv.mod_revision,
        lease: kv.lease,
    })
}

fn compare(compare: Compare) -> pb::Compare {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    let (key, target, union) = match compare {
        Compare::Absent(key) => (key, CompareTarget::Create, TargetUnion::CreateRevision(0)),
        Compare::ModRevision(key, rev) => (key, CompareTarget::Mod, TargetUnion::ModRevision(rev)),
        Compare::Value(key, value) => (key, CompareTarget::Value, TargetUnion::Value(value)),
        Compare::LeaseIs(key, lease) => (key, CompareTarget::Lease, TargetUnion::Lease(lease)),
    };
    pb::Compare {
        result: CompareResult::Equal as i32,
        target: target as i32,
        key: key.into_bytes(),
        target_union: Some(union),
        range_end: Vec::new(),
    }
}

fn request_op(op: Op) -> pb::RequestOp {
    use pb::request_op::Request as R;
    let request = match op {
        Op::Put { key, value, lease } => R::RequestPut(put_request(key, value, lease)),
        Op::Delete(key) => R::RequestDeleteRange(pb::DeleteRangeRequest {
            key: key.into_bytes(),
            ..Default::default()
        }),
    };
    pb::RequestOp {
        request: Some(request),
    }
}

fn put_request(key: String, value: Vec<u8>, lease: Option<LeaseId>) -> pb::PutRequest {
    pb::PutRequest {
        key: key.into_bytes(),
        value,
        lease: lease.unwrap_or(0),
        ..Default::default()
    }
}

impl Coordinator for EtcdCoordinator {
    async fn grant(&self, ttl: Duration) -> Result<LeaseId, CoordError> {
        let request = pb::LeaseGrantRequest {
            ttl: ttl_seconds(ttl),
            id: 0,
        };
        let response = self
            .call(Retry::Always, None, |s| {
                let request = s.request(request);
                async move {
                    s.lease()
                        .lease_grant(request)
                        .await
                        .map(Response::into_inner)
                }
            })
            .await?;
        if !response.error.is_empty() {
            return Err(CoordError::Refused(response.error));
        }
        if response.id == 0 {
            return Err(CoordError::Refused("etcd granted lease 0".into()));
        }
        Ok(response.id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, CoordError> {
        let response = self
            .call(Retry::Always, Some(lease), |s| {
                let request =
                    s.request(tokio_stream::once(pb::LeaseKeepAliveRequest { id: lease }));
                async move {
                    let mut answers = s.lease().lease_keep_alive(request).await?.into_inner();
                    answers
                        .message()
                        .await?
                        .ok_or_else(|| Status::unavailable("keep-alive stream ended unanswered"))
                }
            })
            .await?;
        // etcd answers TTL 0 for a lease it does not know.
        let ttl = u64::try_from(response.ttl).unwrap_or(0);
        if ttl == 0 {
            return Err(CoordError::LeaseExpired(lease));
        }
        Ok(Duration::from_secs(ttl))
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), CoordError> {
        self.call(Retry::Always, Some(lease), |s| {
            let request = s.request(pb::LeaseRevokeRequest { id: lease });
            async move { s.lease().lease_revoke(request).await.map(|_| ()) }
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>, CoordError> {
        Ok(self
            .range(Read::Key(key.to_owned()))
            .await?
            .into_iter()
            .next())
    }

    async fn get_prefix(&self, prefix: &str) -> Result<Vec<Entry>, CoordError> {
        self.range(Read::Prefix(prefix.to_owned())).await
    }

    async fn read(&self, reads: Vec<Read>) -> Result<Vec<Vec<Entry>>, CoordError> {
        use pb::request_op::Request as R;
        use pb::response_op::Response as Got;
        // A transaction without compares: its ranges are read at one revision, in one
        // request (etcd serves each request a linearizable read of its own).
        let request = pb::TxnRequest {
            compare: Vec::new(),
            success: reads
                .iter()
                .map(|r| pb::RequestOp {
                    request: Some(R::RequestRange(range_request(r))),
                })
                .collect(),
            failure: Vec::new(),
        };
        let response = self
            .call(Retry::Always, None, |s| {
                let request = s.request(request.clone());
                async move { s.kv().txn(request).await.map(Response::into_inner) }
            })
            .await?;
        if response.responses.len() != reads.len() {
            return Err(CoordError::Refused(format!(
                "etcd answered {} reads of {}",
                response.responses.len(),
                reads.len()
            )));
        }
        response
            .responses
            .into_iter()
            .map(|r| match r.response {
                Some(Got::ResponseRange(range)) => range.kvs.into_iter().map(entry).collect(),
                _ => Err(CoordError::Refused(
                    "etcd answered a read with no range".into(),
                )),
            })
            .collect()
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<(), CoordError> {
        let request = put_request(key.to_owned(), value, lease);
        self.call(Retry::UnlessSent, lease, |s| {
            let request = s.request(request.clone());
            async move { s.kv().put(request).await.map(|_| ()) }
        })
        .await
    }

    /// When the writes name several leases and one is gone, etcd does not say which: the
    /// first named is reported.
    async fn txn(&self, compares: Vec<Compare>, then: Vec<Op>) -> Result<bool, CoordError> {
        let lease = then.iter().find_map(|op| match op {
            Op::Put {
                lease: Some(lease), ..
            } => Some(*lease),
            _ => None,
        });
        let request = pb::TxnRequest {
            compare: compares.into_iter().map(compare).collect(),
            success: then.into_iter().map(request_op).collect(),
            failure: Vec::new(),
        };
        let response = self
            .call(Retry::UnlessSent, lease, |s| {
                let request = s.request(request.clone());
                async move { s.kv().txn(request).await.map(Response::into_inner) }
            })
            .await?;
        Ok(response.succeeded)
    }
}

/// Whether the etcd serving clients in plain HTTP on 127.0.0.1:`port` answers its
/// `/health` with `"health":"true"` (for `dev-cluster --etcd` and tests that start one).
pub fn local_http_healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = "GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    let mut body = String::new();
    s.write_all(req.as_bytes()).is_ok()
        && s.read_to_string(&mut body).is_ok()
        && body.contains("\"health\":\"true\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_checked_before_dialling() {
        let mut cfg = EtcdConfig::new(vec![]);
        assert!(matches!(
            EtcdCoordinator::new(&cfg),
            Err(EtcdConfigError::Empty(_))
        ));
        cfg.endpoints = vec!["h:1".into()];
        cfg.username = Some("root".into());
        assert_eq!(
            EtcdCoordinator::new(&cfg).unwrap_err(),
            EtcdConfigError::HalfCredentials
        );
        cfg.password = Some("secret".into());
        let c = EtcdCoordinator::new(&cfg).unwrap();
        assert_eq!(c.endpoint(), "h:1");
        assert!(!format!("{cfg:?}").contains("secret"));
        cfg.timeout = Duration::ZERO;
        assert_eq!(
            EtcdCoordinator::new(&cfg).unwrap_err(),
            EtcdConfigError::ZeroTimeout
        );
    }

    #[test]
    fn prefix_end_is_etcds() {
        assert_eq!(prefix_end(b"a"), b"b");
        assert_eq!(prefix_end(b"spool/"), b"spool0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }

    #[test]
    fn transport_and_token_failures_are_told_apart() {
        assert!(is_transport(&Status::unavailable("etcdserver: no leader")));
        assert!(!is_transport(&Status::not_found(
            "etcdserver: requested lease not found"
        )));
        assert!(token_refused(&Status::unauthenticated(
            "etcdserver: invalid auth token"
        )));
        assert!(!token_refused(&Status::invalid_argument(
            "etcdserver: authentication failed, invalid user ID or password"
        )));
        assert!(matches!(
            refusal(
                Status::not_found("etcdserver: requested lease not found"),
                Some(7)
            ),
            CoordError::LeaseExpired(7)
        ));
        assert!(matches!(
            refusal(
                Status::permission_denied("etcdserver: permission denied"),
                Some(7)
            ),
            CoordError::Refused(_)
        ));
    }
}
