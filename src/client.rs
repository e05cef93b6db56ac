//! The Rust client: connect, manage logs, append (unary or pipelined), read, subscribe,
//! status. The `spool` CLI is built on it.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{Stream, StreamExt};
use parking_lot::Mutex;
use spool_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

pub use pb::{AckMode, AppendResponse, LogInfo, Record, StatusResponse};

/// Replies the client accepts (reads can be large).
const MESSAGE_BYTES_MAX: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("invalid address {0:?}: expected HOST:PORT or http://HOST:PORT")]
    BadAddress(String),
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
}

impl From<Status> for ClientError {
    fn from(s: Status) -> Self {
        ClientError::Rpc(s)
    }
}

impl ClientError {
    /// The gRPC code, when the server answered.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Rpc(s) => Some(s.code()),
            _ => None,
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Normalise `HOST:PORT` to a URI.
pub fn endpoint_uri(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}

#[derive(Debug, Clone)]
struct Conn {
    addr: String,
    logs: pb::logs_client::LogsClient<Channel>,
    log: pb::log_client::LogClient<Channel>,
    status: pb::status_client::StatusClient<Channel>,
    admin: pb::admin_client::AdminClient<Channel>,
}

async fn dial(addr: &str) -> Result<Conn> {
    let uri = endpoint_uri(addr);
    let endpoint = Endpoint::from_shared(uri.clone())
        .map_err(|_| ClientError::BadAddress(addr.to_owned()))?
        .tcp_nodelay(true);
    let channel = endpoint
        .connect()
        .await
        .map_err(|source| ClientError::Connect {
            addr: uri.clone(),
            source,
        })?;
    Ok(Conn {
        addr: uri,
        logs: pb::logs_client::LogsClient::new(channel.clone()),
        log: pb::log_client::LogClient::new(channel.clone())
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX),
        status: pb::status_client::StatusClient::new(channel.clone()),
        admin: pb::admin_client::AdminClient::new(channel),
    })
}

/// Metadata key a replica sets on refused writes: where the primary is.
const PRIMARY_METADATA: &str = "spool-primary";

/// A connection to one Spool node. Cheap to clone (one HTTP/2 connection underneath).
/// Writes refused by a replica are retried once on the primary it names, and the client
/// stays connected there (reads then go to the primary too).
#[derive(Debug, Clone)]
pub struct Client {
    conn: Arc<parking_lot::RwLock<Conn>>,
}

impl Client {
    pub async fn connect(addr: &str) -> Result<Client> {
        Ok(Client {
            conn: Arc::new(parking_lot::RwLock::new(dial(addr).await?)),
        })
    }

    fn conn(&self) -> Conn {
        self.conn.read().clone()
    }

    pub fn addr(&self) -> String {
        self.conn.read().addr.clone()
    }

    /// If `status` is a replica's refusal naming the primary, switch to the primary.
    async fn follow_redirect(&self, status: &Status) -> Result<bool> {
        if status.code() != Code::FailedPrecondition {
            return Ok(false);
        }
        let Some(primary) = status
            .metadata()
            .get(PRIMARY_METADATA)
            .and_then(|v| v.to_str().ok())
        else {
            return Ok(false);
        };
        if endpoint_uri(primary) == self.addr() {
            return Ok(false);
        }
        let conn = dial(primary).await?;
        *self.conn.write() = conn;
        Ok(true)
    }

    /// Run a write, following a replica's redirect once.
    async fn write<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        match f(self.conn()).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => {
                if self.follow_redirect(&s).await? {
                    Ok(f(self.conn()).await?.into_inner())
                } else {
                    Err(s.into())
                }
            }
        }
    }

    pub async fn create_log(&self, name: &str, config: Option<pb::LogConfig>) -> Result<LogInfo> {
        let req = pb::CreateLogRequest {
            name: name.to_owned(),
            config,
        };
        self.write(|mut c| {
            let req = req.clone();
            async move { c.logs.create(req).await }
        })
        .await
    }

    pub async fn list_logs(&self) -> Result<Vec<LogInfo>> {
        Ok(self
            .conn()
            .logs
            .list(pb::ListLogsRequest {})
            .await?
            .into_inner()
            .logs)
    }

    pub async fn describe_log(&self, name: &str) -> Result<LogInfo> {
        let req = pb::DescribeLogRequest {
            name: name.to_owned(),
        };
        Ok(self.conn().logs.describe(req).await?.into_inner())
    }

    pub async fn delete_log(&self, name: &str) -> Result<()> {
        let req = pb::DeleteLogRequest {
            name: name.to_owned(),
        };
        self.write(|mut c| {
            let req = req.clone();
            async move { c.logs.delete(req).await }
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

    /// Append with every field of the request (e.g. `semi_sync_replicas`).
    pub async fn append_with(&self, req: pb::AppendRequest) -> Result<AppendResponse> {
        self.write(|mut c| {
            let req = req.clone();
            async move { c.log.append(req).await }
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
        let s = self.status().await?;
        if s.role == "replica" && !s.primary_addr.is_empty() {
            *self.conn.write() = dial(&s.primary_addr).await?;
        }
        Appender::open(self.conn().log, log, ack, semi_sync_replicas).await
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
        Ok(self.conn().log.read(req).await?.into_inner())
    }

    /// Records from `from` (or from the end when `None`), then new ones as they arrive.
    pub async fn subscribe(
        &self,
        log: &str,
        from: Option<u64>,
    ) -> Result<impl Stream<Item = Result<Record>> + Send + 'static> {
        let start = Some(match from {
            Some(o) => pb::subscribe_request::Start::FromOffset(o),
            None => pb::subscribe_request::Start::FromEnd(true),
        });
        let req = pb::SubscribeRequest {
            log: log.to_owned(),
            start,
            max_records_per_message: 0,
            last_epoch: 0,
        };
        let stream = self.conn().log.subscribe(req).await?.into_inner();
        Ok(stream.flat_map(|msg| {
            let items: Vec<Result<Record>> = match msg {
                Ok(m) => m.records.into_iter().map(Ok).collect(),
                Err(s) => vec![Err(ClientError::Rpc(s))],
            };
            futures::stream::iter(items)
        }))
    }

    pub async fn status(&self) -> Result<StatusResponse> {
        Ok(self
            .conn()
            .status
            .get(pb::StatusRequest {})
            .await?
            .into_inner())
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
        Ok(self
            .conn()
            .admin
            .promote(pb::PromoteRequest { at })
            .await?
            .into_inner())
    }

    /// Freeze a delayed replica's horizon; returns the frozen cutoff (unix microseconds).
    pub async fn pause(&self) -> Result<u64> {
        Ok(self
            .conn()
            .admin
            .pause(pb::PauseRequest {})
            .await?
            .into_inner()
            .horizon_time_us)
    }

    /// Let a delayed replica's horizon follow now - delay again.
    pub async fn resume(&self) -> Result<()> {
        self.conn().admin.resume(pb::ResumeRequest {}).await?;
        Ok(())
    }

    /// Scrub the node's sealed segments now (one log, or all with an empty name).
    pub async fn scrub(&self, log: &str) -> Result<pb::ScrubResponse> {
        Ok(self
            .conn()
            .admin
            .scrub(pb::ScrubRequest { log: log.into() })
            .await?
            .into_inner())
    }

    /// Hand the primary's role to the member `to` (planned; sent to the primary).
    pub async fn switchover(&self, to: &str) -> Result<pb::SwitchoverResponse> {
        let req = pb::SwitchoverRequest { to: to.into() };
        Ok(self.conn().admin.switchover(req).await?.into_inner())
    }

    /// Name `to` the next primary while there is none (`force`: even if not eligible).
    pub async fn failover(&self, to: &str, force: bool) -> Result<()> {
        let req = pb::FailoverRequest {
            to: to.into(),
            force,
        };
        self.conn().admin.failover(req).await?;
        Ok(())
    }

    /// Tails the node cut when it followed a new primary (of `log`, or all if empty).
    pub async fn quarantine_list(&self, log: &str) -> Result<Vec<pb::QuarantinedTail>> {
        let req = pb::QuarantineListRequest { log: log.into() };
        Ok(self
            .conn()
            .admin
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
        Ok(self.conn().admin.quarantine_read(req).await?.into_inner())
    }

    /// Repair damaged records from a peer (its upstream or replicas unless `from` names one).
    pub async fn repair(&self, log: &str, from: &str) -> Result<pb::RepairResponse> {
        Ok(self
            .conn()
            .admin
            .repair(pb::RepairRequest {
                log: log.into(),
                from_addr: from.into(),
            })
            .await?
            .into_inner())
    }
}

/// Waiters for acks in request order, and whether the reply side has ended (with the
/// server's status, if it sent one): from then on no waiter may be added, nothing would
/// answer it.
#[derive(Debug, Default)]
struct Waiters {
    queue: VecDeque<oneshot::Sender<Result<AppendResponse>>>,
    ended: bool,
    status: Option<Status>,
}
type Pending = Arc<Mutex<Waiters>>;

impl Waiters {
    /// Why nothing more will be acknowledged.
    fn ended_error(&self) -> ClientError {
        self.status
            .clone()
            .map_or(ClientError::StreamClosed, ClientError::Rpc)
    }
}

/// Pipelined appends over one `AppendStream` call.
#[derive(Debug)]
pub struct Appender {
    log: String,
    ack: AckMode,
    semi_sync_replicas: u32,
    tx: mpsc::Sender<pb::AppendRequest>,
    pending: Pending,
    /// Becomes true when the reply task has seen the end of the stream.
    reader_done: tokio::sync::watch::Receiver<bool>,
    next_id: u64,
}

impl Appender {
    async fn open(
        mut client: pb::log_client::LogClient<Channel>,
        log: &str,
        ack: AckMode,
        semi_sync_replicas: u32,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::channel(1024);
        let mut replies = client
            .append_stream(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let pending: Pending = Arc::default();
        let p = pending.clone();
        let (done_tx, reader_done) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let status = loop {
                match replies.message().await {
                    Ok(Some(r)) => match p.lock().queue.pop_front() {
                        Some(w) => {
                            let _ = w.send(Ok(r));
                        }
                        None => break None,
                    },
                    Ok(None) => break None,
                    Err(s) => break Some(s),
                }
            };
            // Whatever is still waiting will not get a reply: each hears why the stream
            // ended (a log that does not exist, a node shutting down), as does every
            // later send.
            let mut p = p.lock();
            p.ended = true;
            p.status = status;
            for w in std::mem::take(&mut p.queue) {
                let _ = w.send(Err(p.ended_error()));
            }
            drop(p);
            let _ = done_tx.send(true);
        });
        Ok(Appender {
            log: log.to_owned(),
            ack,
            semi_sync_replicas,
            tx,
            pending,
            reader_done,
            next_id: 0,
        })
    }

    /// Queue a batch; the returned receiver resolves with its ack. Waits only when the
    /// stream's window is full.
    pub async fn send(
        &mut self,
        records: Vec<Bytes>,
    ) -> Result<oneshot::Receiver<Result<AppendResponse>>> {
        let (w, r) = oneshot::channel();
        self.next_id += 1;
        let req = pb::AppendRequest {
            log: self.log.clone(),
            records,
            ack: self.ack as i32,
            semi_sync_replicas: self.semi_sync_replicas,
            request_id: self.next_id,
            ..Default::default()
        };
        // Registered before sending, so replies always find their waiter in order.
        {
            let mut p = self.pending.lock();
            if p.ended {
                return Err(p.ended_error());
            }
            p.queue.push_back(w);
        }
        if self.tx.send(req).await.is_err() {
            {
                // Ours is last and was never sent: no reply will take it.
                let mut p = self.pending.lock();
                if !p.ended {
                    p.queue.pop_back();
                }
            }
            // The request side closes as the server ends the call; its status may still
            // be on its way to the reply task.
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                self.reader_done.wait_for(|d| *d),
            )
            .await;
            return Err(self.pending.lock().ended_error());
        }
        Ok(r)
    }

    /// Send and wait for this batch's ack.
    pub async fn append(&mut self, records: Vec<Bytes>) -> Result<AppendResponse> {
        let r = self.send(records).await?;
        r.await.map_err(|_| self.pending.lock().ended_error())?
    }
}

/// Appends that retries never write twice (idempotent appends): a random producer id,
/// and a sequence that goes up by one per batch. A batch whose outcome is unknown
/// (UNAVAILABLE, DEADLINE_EXCEEDED, a lost connection, a server error) is sent again
/// unchanged, with backoff; if the log already holds it, the server answers with its
/// original offsets (`AppendResponse::duplicate`) and appends nothing.
#[derive(Debug)]
pub struct IdempotentProducer {
    client: Client,
    log: String,
    ack: AckMode,
    producer_id: u64,
    next_sequence: u64,
    /// The batch whose attempts all failed without a definite answer.
    unsettled: Option<pb::AppendRequest>,
    attempts: u32,
}

/// Attempts per batch before [`IdempotentProducer::append`] gives up (about 6 s).
const PRODUCER_ATTEMPTS: u32 = 8;
const PRODUCER_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether a failed append may have been written: then only the same request may follow.
fn outcome_unknown(e: &ClientError) -> bool {
    match e {
        ClientError::Rpc(s) => matches!(
            s.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Internal
                | Code::Unknown
                | Code::Cancelled
                | Code::Aborted
        ),
        ClientError::Connect { .. } | ClientError::StreamClosed => true,
        ClientError::BadAddress(_) | ClientError::Unsettled { .. } => false,
    }
}

impl IdempotentProducer {
    /// A new producer with a random id, its sequences starting at 0.
    pub fn new(client: Client, log: &str, ack: AckMode) -> Self {
        use std::hash::{BuildHasher, Hasher};
        // RandomState is seeded from the OS's randomness: a fresh 64-bit id per producer.
        let id = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Self::resume(client, log, ack, id.max(1), 0)
    }

    /// A producer that goes on with `producer_id` from `next_sequence` (e.g. after a
    /// restart of the program, with both saved).
    pub fn resume(
        client: Client,
        log: &str,
        ack: AckMode,
        producer_id: u64,
        next_sequence: u64,
    ) -> Self {
        IdempotentProducer {
            client,
            log: log.to_owned(),
            ack,
            producer_id,
            next_sequence,
            unsettled: None,
            attempts: PRODUCER_ATTEMPTS,
        }
    }

    /// Attempts per batch (at least 1).
    pub fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    pub fn producer_id(&self) -> u64 {
        self.producer_id
    }

    /// The sequence the next batch gets.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// Append `records` as the producer's next batch, retrying it while its outcome is
    /// unknown. When every attempt failed that way, the batch stays unsettled: only
    /// [`IdempotentProducer::resend`] may follow (a different batch under its sequence
    /// would be taken for it if it did reach the log).
    pub async fn append(&mut self, records: Vec<Bytes>) -> Result<AppendResponse> {
        if self.unsettled.is_some() {
            return Err(ClientError::Unsettled {
                producer_id: self.producer_id,
                sequence: self.next_sequence,
            });
        }
        let req = pb::AppendRequest {
            log: self.log.clone(),
            records,
            ack: self.ack as i32,
            producer_id: self.producer_id,
            sequence: self.next_sequence,
            ..Default::default()
        };
        self.send(req).await
    }

    /// Send the unsettled batch again (a no-op answer `Ok(None)` when there is none).
    pub async fn resend(&mut self) -> Result<Option<AppendResponse>> {
        match self.unsettled.take() {
            Some(req) => self.send(req).await.map(Some),
            None => Ok(None),
        }
    }

    async fn send(&mut self, req: pb::AppendRequest) -> Result<AppendResponse> {
        let mut backoff = std::time::Duration::from_millis(50);
        let mut attempt = 1;
        loop {
            match self.client.append_with(req.clone()).await {
                Ok(r) => {
                    self.next_sequence += 1;
                    return Ok(r);
                }
                Err(e) if outcome_unknown(&e) && attempt < self.attempts => {
                    tracing::debug!(error = %e, attempt, "retrying an idempotent append");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(PRODUCER_BACKOFF_MAX);
                    attempt += 1;
                }
                Err(e) => {
                    if outcome_unknown(&e) {
                        self.unsettled = Some(req);
                    }
                    return Err(e);
                }
            }
        }
    }
}
