//! Pipelined appends over one `AppendStream` call.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use spool_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::{AckMode, AppendResponse, ClientError, Result};

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
    pub(super) async fn open(
        mut client: pb::log_client::LogClient<super::connect::Transport>,
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
