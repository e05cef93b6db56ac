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

/// A connection to one Spool node. Cheap to clone (one HTTP/2 connection underneath).
#[derive(Debug, Clone)]
pub struct Client {
    addr: String,
    logs: pb::logs_client::LogsClient<Channel>,
    log: pb::log_client::LogClient<Channel>,
    status: pb::status_client::StatusClient<Channel>,
}

impl Client {
    pub async fn connect(addr: &str) -> Result<Client> {
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
        Ok(Client {
            addr: uri,
            logs: pb::logs_client::LogsClient::new(channel.clone()),
            log: pb::log_client::LogClient::new(channel.clone())
                .max_decoding_message_size(MESSAGE_BYTES_MAX)
                .max_encoding_message_size(MESSAGE_BYTES_MAX),
            status: pb::status_client::StatusClient::new(channel),
        })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub async fn create_log(&self, name: &str, config: Option<pb::LogConfig>) -> Result<LogInfo> {
        let req = pb::CreateLogRequest {
            name: name.to_owned(),
            config,
        };
        Ok(self.logs.clone().create(req).await?.into_inner())
    }

    pub async fn list_logs(&self) -> Result<Vec<LogInfo>> {
        Ok(self
            .logs
            .clone()
            .list(pb::ListLogsRequest {})
            .await?
            .into_inner()
            .logs)
    }

    pub async fn describe_log(&self, name: &str) -> Result<LogInfo> {
        let req = pb::DescribeLogRequest {
            name: name.to_owned(),
        };
        Ok(self.logs.clone().describe(req).await?.into_inner())
    }

    pub async fn delete_log(&self, name: &str) -> Result<()> {
        let req = pb::DeleteLogRequest {
            name: name.to_owned(),
        };
        self.logs.clone().delete(req).await?;
        Ok(())
    }

    /// Append records as one batch and wait for the ack.
    pub async fn append(
        &self,
        log: &str,
        records: Vec<Bytes>,
        ack: AckMode,
    ) -> Result<AppendResponse> {
        let req = pb::AppendRequest {
            log: log.to_owned(),
            records,
            ack: ack as i32,
            ..Default::default()
        };
        Ok(self.log.clone().append(req).await?.into_inner())
    }

    /// A pipelined appender on one stream: many batches in flight, replies in order.
    pub async fn appender(&self, log: &str, ack: AckMode) -> Result<Appender> {
        Appender::open(self.log.clone(), log, ack).await
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
        Ok(self.log.clone().read(req).await?.into_inner())
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
        };
        let stream = self.log.clone().subscribe(req).await?.into_inner();
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
            .status
            .clone()
            .get(pb::StatusRequest {})
            .await?
            .into_inner())
    }
}

type Pending = Arc<Mutex<VecDeque<oneshot::Sender<Result<AppendResponse>>>>>;

/// Pipelined appends over one `AppendStream` call.
#[derive(Debug)]
pub struct Appender {
    log: String,
    ack: AckMode,
    tx: mpsc::Sender<pb::AppendRequest>,
    pending: Pending,
    next_id: u64,
}

impl Appender {
    async fn open(
        mut client: pb::log_client::LogClient<Channel>,
        log: &str,
        ack: AckMode,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::channel(1024);
        let mut replies = client
            .append_stream(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let pending: Pending = Arc::default();
        let p = pending.clone();
        tokio::spawn(async move {
            loop {
                let reply = replies.message().await;
                let waiter = p.lock().pop_front();
                match (reply, waiter) {
                    (Ok(Some(r)), Some(w)) => {
                        let _ = w.send(Ok(r));
                    }
                    (Err(s), Some(w)) => {
                        let _ = w.send(Err(ClientError::Rpc(s)));
                        break;
                    }
                    _ => break,
                }
            }
            // Whatever is still waiting will not get a reply.
            for w in p.lock().drain(..) {
                let _ = w.send(Err(ClientError::StreamClosed));
            }
        });
        Ok(Appender {
            log: log.to_owned(),
            ack,
            tx,
            pending,
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
            request_id: self.next_id,
            ..Default::default()
        };
        // Registered before sending, so replies always find their waiter in order.
        self.pending.lock().push_back(w);
        if self.tx.send(req).await.is_err() {
            self.pending.lock().pop_back();
            return Err(ClientError::StreamClosed);
        }
        Ok(r)
    }

    /// Send and wait for this batch's ack.
    pub async fn append(&mut self, records: Vec<Bytes>) -> Result<AppendResponse> {
        let r = self.send(records).await?;
        r.await.map_err(|_| ClientError::StreamClosed)?
    }
}
