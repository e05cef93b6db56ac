//! The Rust client: connect, manage logs, append (unary or pipelined), read, subscribe,
//! status. The `spool` CLI is built on it.
//!
//! Given several addresses (`"a:7070,b:7070,c:7070"`), the client follows the primary
//! through a failover: a call that fails the way a failover makes calls fail is sent again,
//! on the primary found through any reachable node, while it is safe
//! (`retry.rs` has the rules) and for at most [`ClientOptions::failover_timeout`].

mod appender;
mod connect;
mod producer;
mod retry;
mod subscription;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use spool_proto::v1 as pb;
use tonic::{Code, Status};

pub use appender::Appender;
pub use connect::endpoint_uri;
pub use pb::{AckMode, AppendResponse, LogInfo, Record, StatusResponse};
pub use producer::IdempotentProducer;
pub use subscription::{Position, Subscription, LOG_END_METADATA};

use connect::{dial, Conn, DialOptions, Reasons, Want};
use retry::{Next, Safety};

/// How long a client with several addresses keeps looking for the primary by default.
pub const FAILOVER_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("invalid address {0:?}: expected HOST:PORT or http://HOST:PORT, comma-separated")]
    BadAddress(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("the token has characters a header cannot carry (copy it again)")]
    BadToken,
    #[error("{:?}: {}", .0.code(), .0.message())]
    Rpc(Status),
    #[error("the append stream closed before replying")]
    StreamClosed,
    #[error(
        "batch {sequence} of producer {producer_id:#x} may or may not be in the log (its \
         last attempt failed); resend it (IdempotentProducer::resend) before appending \
         another, or start a new producer"
    )]
    Unsettled { producer_id: u64, sequence: u64 },
    #[error("Unavailable: no primary found in {waited:.1?} ({reasons}); retry later")]
    NoPrimary { waited: Duration, reasons: String },
}

impl From<Status> for ClientError {
    fn from(s: Status) -> Self {
        ClientError::Rpc(with_transport_cause(s))
    }
}

/// A status the transport made (it has a source; a node's own have none) with its
/// innermost cause added to the message: "operation was canceled" says nothing, the TLS
/// alert under it does ("received fatal alert: CertificateRequired"), as does a node's
/// GOAWAY saying it requires TLS.
fn with_transport_cause(s: Status) -> Status {
    let Some(mut cause) = std::error::Error::source(&s) else {
        return s;
    };
    while let Some(next) = cause.source() {
        cause = next;
    }
    let cause = cause.to_string();
    if s.message().contains(&cause) {
        return s;
    }
    Status::new(s.code(), format!("{}: {cause}", s.message()))
}

impl ClientError {
    /// The gRPC code, when the server answered (UNAVAILABLE when no primary was found).
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Rpc(s) => Some(s.code()),
            ClientError::NoPrimary { .. } => Some(Code::Unavailable),
            _ => None,
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// How a client follows a failover.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// How long one call may spend finding the primary and retrying, in total. `None`:
    /// [`FAILOVER_TIMEOUT_DEFAULT`] with several addresses; with one, none at all (a
    /// replica's refusal is followed once, other failures are returned as they come).
    pub failover_timeout: Option<Duration>,
    /// TLS: the CA to verify nodes with, and a client certificate if they ask for one.
    /// An `https://` address means TLS too.
    pub tls: Option<crate::tls::TlsOptions>,
    /// Bearer token sent with every call (nodes with `[auth]` need one).
    pub token: Option<String>,
    /// HTTP/2 connections to the node, taken in turn by calls. `None`: one per core of
    /// this machine ([`default_connections`]).
    pub connections: Option<usize>,
}

/// The pool size when none is given: one connection per core, so that neither side's
/// per-connection task bounds many concurrent unary calls.
pub fn default_connections() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A connection to a Spool node, and the addresses it may move to. Cheap to clone (the
/// clones share one pool of HTTP/2 connections). Writes refused by a replica go to the primary it names,
/// and the client stays connected there (reads then go to the primary too).
#[derive(Debug, Clone)]
pub struct Client {
    conn: Arc<parking_lot::RwLock<Conn>>,
    /// The addresses given (URIs), where the primary is looked for.
    seeds: Arc<Vec<String>>,
    /// Zero: no failover (one address, as before there were several).
    failover_timeout: Duration,
    dial: Arc<DialOptions>,
}

impl Client {
    /// Connect to `addrs`: one `HOST:PORT`, or several separated by commas.
    pub async fn connect(addrs: &str) -> Result<Client> {
        Self::connect_with(addrs, ClientOptions::default()).await
    }

    /// Connect with options. With several addresses, to the primary if one answers within
    /// the failover timeout, else to the first node that does.
    pub async fn connect_with(addrs: &str, options: ClientOptions) -> Result<Client> {
        let seeds = connect::parse_addrs(addrs)?;
        let https = seeds.iter().any(|s| s.starts_with("https://"));
        let dial_opts = DialOptions {
            tls: options.tls.or_else(|| https.then(Default::default)),
            token: DialOptions::bearer(options.token.as_deref())?,
            connections: options
                .connections
                .unwrap_or_else(default_connections)
                .max(1),
        };
        let tls = dial_opts.tls.is_some();
        let seeds: Vec<String> = seeds.iter().map(|s| crate::tls::uri(s, tls)).collect();
        let failover_timeout = match (options.failover_timeout, seeds.len()) {
            (Some(t), _) => t,
            (None, 1) => Duration::ZERO,
            (None, _) => FAILOVER_TIMEOUT_DEFAULT,
        };
        let conn = if seeds.len() == 1 {
            dial(&seeds[0], &dial_opts).await?
        } else {
            let deadline = Instant::now() + failover_timeout;
            let mut reasons = Reasons::default();
            connect::find(&seeds, &dial_opts, None, Want::Any, &mut reasons, deadline).await?
        };
        Ok(Client {
            conn: Arc::new(parking_lot::RwLock::new(conn)),
            seeds: Arc::new(seeds),
            failover_timeout,
            dial: Arc::new(dial_opts),
        })
    }

    fn conn(&self) -> Conn {
        self.conn.read().clone()
    }

    /// The node this client talks to now.
    pub fn addr(&self) -> String {
        self.conn.read().addr.clone()
    }

    /// The addresses the client was given.
    pub fn addrs(&self) -> &[String] {
        &self.seeds
    }

    /// Run `f` on the current node; on a failure that a failover explains, move (to the
    /// named primary, or the one found among the addresses) and run it again while
    /// `safety` allows and time is left.
    async fn call<T, F, Fut>(&self, safety: Safety, want: Want, f: F) -> Result<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        if self.failover_timeout.is_zero() {
            return self.call_once(f).await;
        }
        let deadline = Instant::now() + self.failover_timeout;
        let mut reasons = Reasons::default();
        let mut pause = Duration::from_millis(20);
        loop {
            let conn = self.conn();
            let status = match f(conn.clone()).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) => s,
            };
            let hint = match retry::next_step(&status, safety) {
                Next::Fail => return Err(status.into()),
                // Out of time: the same answer may go on (a primary short of replicas).
                _ if Instant::now() >= deadline => return Err(status.into()),
                Next::Redirect(primary) => Some(primary),
                Next::Rediscover => None,
            };
            tracing::debug!(addr = %conn.addr, error = %status.message(), "looking for the primary");
            reasons.note(
                &conn.addr,
                format!("{:?}: {}", status.code(), status.message()),
            );
            if hint.is_none() {
                // The same node may answer again at once (a lapsed lease): not in a spin.
                tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now())))
                    .await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            let next =
                connect::find(&self.seeds, &self.dial, hint, want, &mut reasons, deadline).await?;
            *self.conn.write() = next;
        }
    }

    /// The single-address behaviour: a replica's refusal naming another node is followed
    /// once; anything else is the caller's.
    async fn call_once<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let status = match f(self.conn()).await {
            Ok(r) => return Ok(r.into_inner()),
            Err(s) => s,
        };
        match retry::named_primary(&status) {
            Some(primary) if primary != self.addr() => {
                *self.conn.write() = dial(&primary, &self.dial).await?;
                Ok(f(self.conn()).await?.into_inner())
            }
            _ => Err(status.into()),
        }
    }

    /// A write that is sent again only when the refusal proves nothing was written.
    async fn write<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call(Safety::IfRefused, Want::Primary, f).await
    }

    /// A read: safe to send again, to any node when no primary answers.
    async fn read_call<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call(Safety::Always, Want::Any, f).await
    }

    pub async fn create_log(&self, name: &str, config: Option<pb::LogConfig>) -> Result<LogInfo> {
        let req = pb::CreateLogRequest {
            name: name.to_owned(),
            config,
        };
        self.write(|c| {
            let req = req.clone();
            async move { c.logs().create(req).await }
        })
        .await
    }

    pub async fn list_logs(&self) -> Result<Vec<LogInfo>> {
        let r = self
            .read_call(|c| async move { c.logs().list(pb::ListLogsRequest {}).await })
            .await?;
        Ok(r.logs)
    }

    pub async fn describe_log(&self, name: &str) -> Result<LogInfo> {
        let req = pb::DescribeLogRequest {
            name: name.to_owned(),
        };
        self.read_call(|c| {
            let req = req.clone();
            async move { c.logs().describe(req).await }
        })
        .await
    }

    pub async fn delete_log(&self, name: &str) -> Result<()> {
        let req = pb::DeleteLogRequest {
            name: name.to_owned(),
        };
        self.write(|c| {
            let req = req.clone();
            async move { c.logs().delete(req).await }
        })
        .await?;
        Ok(())
    }

    /// Append records as one batch and wait for the ack.
    pub async fn append(
        &self,
        log: &str,
        records: Vec<Bytes>,
        ack: AckMode,
    ) -> Result<AppendResponse> {
        self.append_with(pb::AppendRequest {
            log: log.to_owned(),
            records,
            ack: ack as i32,
            ..Default::default()
        })
        .await
    }

    /// Append with every field of the request (e.g. `semi_sync_replicas`). Through a
    /// failover, an append with a producer id is sent again whenever its outcome is
    /// unknown (a retry is answered with the first attempt's offsets); one without only
    /// when the refusal proves nothing was written.
    pub async fn append_with(&self, req: pb::AppendRequest) -> Result<AppendResponse> {
        let safety = if req.producer_id != 0 {
            Safety::Always
        } else {
            Safety::IfRefused
        };
        self.call(safety, Want::Primary, |c| {
            let req = req.clone();
            async move { c.log().append(req).await }
        })
        .await
    }

    /// A pipelined appender on one stream: many batches in flight, replies in order.
    /// Opened on the primary (found through this node's status when it is a replica).
    pub async fn appender(&self, log: &str, ack: AckMode) -> Result<Appender> {
        self.appender_with(log, ack, 0).await
    }

    /// Like [`Client::appender`], with semi-sync's k (0: the server's default).
    pub async fn appender_with(
        &self,
        log: &str,
        ack: AckMode,
        semi_sync_replicas: u32,
    ) -> Result<Appender> {
        if self.failover_timeout.is_zero() {
            let s = self.status().await?;
            if s.role == "replica" && !s.primary_addr.is_empty() {
                *self.conn.write() = dial(&s.primary_addr, &self.dial).await?;
            }
        } else {
            let deadline = Instant::now() + self.failover_timeout;
            let mut reasons = Reasons::default();
            let hint = Some(self.addr());
            *self.conn.write() = connect::find(
                &self.seeds,
                &self.dial,
                hint,
                Want::Primary,
                &mut reasons,
                deadline,
            )
            .await?;
        }
        Appender::open(self.conn().log(), log, ack, semi_sync_replicas).await
    }

    pub async fn read(&self, log: &str, from: u64, max_records: u32) -> Result<pb::ReadResponse> {
        self.read_with(pb::ReadRequest {
            log: log.to_owned(),
            from_offset: from,
            max_records,
            ..Default::default()
        })
        .await
    }

    pub async fn read_with(&self, req: pb::ReadRequest) -> Result<pb::ReadResponse> {
        self.read_call(|c| {
            let req = req.clone();
            async move { c.log().read(req).await }
        })
        .await
    }

    /// Read on from `at` (a [`Position::after`] a previous read, or a subscription's
    /// [`Subscription::position`]): if a failover cut the record before `at.offset` that
    /// the reader saw, the node refuses with FAILED_PRECONDITION and
    /// [`ClientError::log_end`] says where to read on from.
    pub async fn read_at(
        &self,
        log: &str,
        at: Position,
        max_records: u32,
    ) -> Result<pb::ReadResponse> {
        self.read_with(pb::ReadRequest {
            log: log.to_owned(),
            from_offset: at.offset,
            max_records,
            last_epoch: at.last_epoch,
            ..Default::default()
        })
        .await
    }

    /// Records from `from` (or from the end when `None`), then new ones as they arrive.
    pub async fn subscribe(&self, log: &str, from: Option<u64>) -> Result<Subscription> {
        match from {
            Some(o) => self.subscribe_at(log, Position::at(o)).await,
            None => self.subscribe_from(log, None).await,
        }
    }

    /// Records from `at` on (a previous subscription's [`Subscription::position`]), checked
    /// as [`Client::read_at`] checks: a subscriber that was given records a failover cut
    /// since is refused (FAILED_PRECONDITION, [`ClientError::log_end`]), not silently sent
    /// other records at the same offsets. A stream that is open when its node cuts the log
    /// below what it delivered ends with ABORTED, and `log_end` says where the cut is.
    pub async fn subscribe_at(&self, log: &str, at: Position) -> Result<Subscription> {
        self.subscribe_from(log, Some(at)).await
    }

    /// Subscribe from `at` (None: from the node's end).
    async fn subscribe_from(&self, log: &str, at: Option<Position>) -> Result<Subscription> {
        use pb::subscribe_request::Start;
        let req = pb::SubscribeRequest {
            log: log.to_owned(),
            start: Some(at.map_or(Start::FromEnd(true), |p| Start::FromOffset(p.offset))),
            max_records_per_message: 0,
            last_epoch: at.map_or(0, |p| p.last_epoch),
        };
        let stream = self.conn().log().subscribe(req).await?.into_inner();
        Ok(Subscription::new(Box::pin(stream), at))
    }

    /// The status of the node this client talks to (another one after a failover).
    pub async fn status(&self) -> Result<StatusResponse> {
        self.read_call(|c| async move { c.status().get(pb::StatusRequest {}).await })
            .await
    }

    /// Promote the node this client is connected to (a replica, usually) to primary.
    pub async fn promote(&self) -> Result<u64> {
        Ok(self.promote_at(None).await?.epoch)
    }

    /// Promote a delayed replica after cutting its logs at a point (`None`: plain promote).
    pub async fn promote_at(
        &self,
        at: Option<pb::promote_request::At>,
    ) -> Result<pb::PromoteResponse> {
        self.promote_with(pb::PromoteRequest {
            at,
            ..Default::default()
        })
        .await
    }

    /// Promote with every field of the request (only some logs, a dry run).
    pub async fn promote_with(&self, req: pb::PromoteRequest) -> Result<pb::PromoteResponse> {
        Ok(self.conn().admin().promote(req).await?.into_inner())
    }

    /// Freeze a delayed replica's horizon; returns the frozen cutoff (unix microseconds).
    pub async fn pause(&self) -> Result<u64> {
        Ok(self
            .conn()
            .admin()
            .pause(pb::PauseRequest {})
            .await?
            .into_inner()
            .horizon_time_us)
    }

    /// Let a delayed replica's horizon follow now - delay again.
    pub async fn resume(&self) -> Result<()> {
        self.conn().admin().resume(pb::ResumeRequest {}).await?;
        Ok(())
    }

    /// Scrub the node's sealed segments now (one log, or all with an empty name).
    pub async fn scrub(&self, log: &str) -> Result<pb::ScrubResponse> {
        Ok(self
            .conn()
            .admin()
            .scrub(pb::ScrubRequest { log: log.into() })
            .await?
            .into_inner())
    }

    /// Hand the primary's role to the member `to` (planned; sent to the primary).
    pub async fn switchover(&self, to: &str) -> Result<pb::SwitchoverResponse> {
        let req = pb::SwitchoverRequest { to: to.into() };
        Ok(self.conn().admin().switchover(req).await?.into_inner())
    }

    /// Name `to` the next primary while there is none (`force`: even if not eligible).
    pub async fn failover(&self, to: &str, force: bool) -> Result<()> {
        let req = pb::FailoverRequest {
            to: to.into(),
            force,
        };
        self.conn().admin().failover(req).await?;
        Ok(())
    }

    /// Tails the node cut when it followed a new primary (of `log`, or all if empty).
    pub async fn quarantine_list(&self, log: &str) -> Result<Vec<pb::QuarantinedTail>> {
        let req = pb::QuarantineListRequest { log: log.into() };
        Ok(self
            .conn()
            .admin()
            .quarantine_list(req)
            .await?
            .into_inner()
            .tails)
    }

    /// Records of the quarantined tail of `log` that starts at `first`, from `from` on.
    pub async fn quarantine_read(
        &self,
        req: pb::QuarantineReadRequest,
    ) -> Result<pb::QuarantineReadResponse> {
        Ok(self.conn().admin().quarantine_read(req).await?.into_inner())
    }

    /// Repair damaged records from a peer (its upstream or replicas unless `from` names one).
    pub async fn repair(&self, log: &str, from: &str) -> Result<pb::RepairResponse> {
        Ok(self
            .conn()
            .admin()
            .repair(pb::RepairRequest {
                log: log.into(),
                from_addr: from.into(),
            })
            .await?
            .into_inner())
    }
}
