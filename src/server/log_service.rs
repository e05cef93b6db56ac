//! spool.v1.Log: append (unary and pipelined stream), read, subscribe.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesOrdered, Stream, StreamExt};
use spool_proto::v1 as pb;
use spool_storage::{Durability, Log, ProducerSeq, Record};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::auth;
use super::node::Node;
use super::replication::acks::Outcome;
use super::status_map::to_status;
use crate::config::DefaultAck;
use spool_replication::ack::AckMode;

/// Appends one stream may have in flight before the server stops reading it.
const STREAM_INFLIGHT_MAX: usize = 1024;
const READ_RECORDS_DEFAULT: u32 = 1000;
const READ_BYTES_DEFAULT: u64 = 1 << 20;
/// Keeps a read reply under the clients' default 4 MiB message limit.
const READ_BYTES_MAX: u64 = 3 << 20;
/// How long a read waits for `min_offset` when the call has no deadline.
const MIN_OFFSET_WAIT_DEFAULT: Duration = Duration::from_secs(10);
/// Subscribe replies buffered per subscriber: a slow reader holds the server back, it
/// never makes it buffer more than this.
const SUBSCRIBE_BUFFER: usize = 4;

#[derive(Debug, Clone)]
pub struct LogService {
    pub node: Arc<Node>,
}

/// What an append waits for: local durability, then maybe replicas.
fn ack_plan(req: &pb::AppendRequest, node: &Node) -> Result<(Durability, Option<AckMode>), Status> {
    let default = match node.default_ack() {
        DefaultAck::Written => Durability::Unsynced,
        DefaultAck::Async => Durability::Fsync,
    };
    match pb::AckMode::try_from(req.ack) {
        Ok(pb::AckMode::Unspecified) => Ok((default, None)),
        Ok(pb::AckMode::Written) => Ok((Durability::Unsynced, None)),
        Ok(pb::AckMode::Async) => Ok((Durability::Fsync, None)),
        Ok(pb::AckMode::SemiSync) => {
            let k = if req.semi_sync_replicas == 0 {
                node.config().semi_sync_replicas
            } else {
                req.semi_sync_replicas
            };
            Ok((Durability::Fsync, Some(AckMode::SemiSync(k))))
        }
        Ok(pb::AckMode::Sync) => Ok((Durability::Fsync, Some(AckMode::Sync))),
        Err(_) => Err(Status::invalid_argument(format!(
            "unknown ack mode {}",
            req.ack
        ))),
    }
}

/// The log an append names. Where this node has no such log, a node that takes no
/// writes says so first: a replica names its primary, which has the log even while the
/// replica has not received it yet (a log just created there).
fn log_to_append_to(node: &Node, name: &str) -> Result<Log, Status> {
    node.storage()
        .log(name)
        .map_err(|e| node.check_writable().err().unwrap_or_else(|| to_status(e)))
}

type ReplyFuture = Pin<Box<dyn Future<Output = Result<pb::AppendResponse, Status>> + Send>>;

async fn append_one(
    node: &Arc<Node>,
    log: &Log,
    req: pb::AppendRequest,
) -> Result<pb::AppendResponse, Status> {
    submit_one(node, log, req).await?.await
}

/// Check and queue one append; the returned future waits for its durability (and its
/// replicas). Queueing is done in call order, so a stream's appends keep their order in
/// the log while many of them wait for fsync together.
async fn submit_one(
    node: &Arc<Node>,
    log: &Log,
    req: pb::AppendRequest,
) -> Result<ReplyFuture, Status> {
    node.check_writable()?;
    node.check_log_writable(log.name())?;
    let (durability, replicated) = ack_plan(&req, node)?;
    if let Some(why) = replicated.and_then(|m| node.acks().cannot_satisfy(m)) {
        // Refused before anything is written: waiting could not help.
        return Err(Status::failed_precondition(why));
    }
    let epoch = node.role().epoch();
    if log.current_epoch() < epoch {
        // The node's epoch reaches each log before its first write in that epoch.
        log.begin_epoch(epoch).await.map_err(to_status)?;
    }
    let started = Instant::now();
    // Before the records exist: the frames that carry them go out asking replicas to sync.
    let wait = replicated.map(|_| node.acks().expect_wait());
    // The producer of an idempotent append (0: none); a retry is answered by storage.
    let producer = (req.producer_id != 0).then(|| ProducerSeq::new(req.producer_id, req.sequence));
    let durable = log
        .submit_with(&req.records, durability, producer)
        .await
        .map_err(to_status)?;
    let (node, log) = (node.clone(), log.clone());
    Ok(Box::pin(async move {
        let ack = durable.await.map_err(to_status)?;
        let reply = finish_append(&node, &log, req, ack, replicated, started).await;
        drop(wait);
        reply
    }))
}

/// The append path's metric handles, registered at the first append (the exporter is
/// installed before the node serves): a lookup by name per append costs a hash and a lock.
struct AppendMetrics {
    seconds: metrics::Histogram,
    duplicates: metrics::Counter,
    records: metrics::Counter,
    bytes: metrics::Counter,
}

fn append_metrics() -> &'static AppendMetrics {
    static HANDLES: std::sync::OnceLock<AppendMetrics> = std::sync::OnceLock::new();
    HANDLES.get_or_init(|| AppendMetrics {
        seconds: metrics::histogram!("spool_append_seconds"),
        duplicates: metrics::counter!("spool_append_duplicates_total"),
        records: metrics::counter!("spool_appended_records_total"),
        bytes: metrics::counter!("spool_appended_bytes_total"),
    })
}

async fn finish_append(
    node: &Node,
    log: &Log,
    req: pb::AppendRequest,
    ack: spool_storage::AppendAck,
    replicated: Option<AckMode>,
    started: Instant,
) -> Result<pb::AppendResponse, Status> {
    let mut out = pb::AppendResponse {
        first_offset: ack.base_offset,
        count: ack.record_count,
        epoch: ack.epoch,
        durability: match ack.durability {
            Durability::Fsync => pb::Durability::Local,
            Durability::Unsynced => pb::Durability::Written,
        } as i32,
        replicas_confirmed: 0,
        degraded: false,
        read_token: ack.next_offset(),
        request_id: req.request_id,
        duplicate: ack.duplicate,
    };
    if let Some(mode) = replicated {
        match node.acks().wait(log.name(), ack.next_offset(), mode).await {
            Outcome::Done {
                confirmed,
                degraded,
            } => {
                out.replicas_confirmed = confirmed;
                out.degraded = degraded;
                if !degraded {
                    out.durability = pb::Durability::Replicated as i32;
                }
            }
            Outcome::Failed {
                confirmed,
                required,
                reason,
            } => {
                return Err(Status::deadline_exceeded(format!(
                    "records {}..{} are durable on the primary and stay in the log, but only \
                     {confirmed} of {required} required replica(s) confirmed them: {reason}",
                    ack.base_offset,
                    ack.next_offset()
                )))
            }
        }
    }
    node.role()
        .check_ack(ack.epoch, ack.duplicate)
        .map_err(|why| why.status(ack.base_offset, ack.next_offset()))?;
    if !ack.duplicate && (replicated.is_none() || out.degraded) {
        let offsets = ack.base_offset..ack.next_offset();
        node.weak_acks().note(log.name(), ack.epoch, offsets);
    }
    let m = append_metrics();
    m.seconds.record(started.elapsed().as_secs_f64());
    if ack.duplicate {
        m.duplicates.increment(1);
        return Ok(out);
    }
    m.records.increment(u64::from(ack.record_count));
    m.bytes
        .increment(req.records.iter().map(|r| r.len() as u64).sum());
    Ok(out)
}

fn to_pb(r: Record) -> pb::Record {
    pb::Record {
        offset: r.offset,
        timestamp_us: r.timestamp_us,
        value: r.value,
    }
}

/// The call's deadline from its `grpc-timeout` header, if any.
fn deadline_of<T>(req: &Request<T>) -> Option<Duration> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl pb::log_server::Log for LogService {
    async fn append(
        &self,
        req: Request<pb::AppendRequest>,
    ) -> Result<Response<pb::AppendResponse>, Status> {
        auth::check_log(&req, &req.get_ref().log)?;
        let req = req.into_inner();
        let log = log_to_append_to(&self.node, &req.log)?;
        Ok(Response::new(append_one(&self.node, &log, req).await?))
    }

    type AppendStreamStream = BoxStream<pb::AppendResponse>;

    async fn append_stream(
        &self,
        req: Request<Streaming<pb::AppendRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let principal = req.extensions().get::<auth::Principal>().cloned();
        let mut incoming = req.into_inner();
        let node = self.node.clone();
        let (tx, rx) = mpsc::channel(STREAM_INFLIGHT_MAX);
        tokio::spawn(async move {
            // Requests are appended as they arrive (many in flight, so they share group
            // commits); replies go back in request order.
            let mut inflight = FuturesOrdered::new();
            let mut log: Option<Log> = None;
            let mut open = true;
            let mut stopping = false;
            loop {
                tokio::select! {
                    // A shutdown takes no more requests from the stream (an idle one would
                    // hold the server's stop forever), finishes those in flight, then ends
                    // the stream saying why.
                    _ = node.shutdown_started(), if open => {
                        open = false;
                        stopping = true;
                    }
                    next = incoming.next(), if open && inflight.len() < STREAM_INFLIGHT_MAX => {
                        match next {
                            Some(Ok(r)) => {
                                if log.as_ref().is_none_or(|l| l.name() != r.log) {
                                    log = None;
                                }
                                let found = match &log {
                                    Some(l) => Ok(l.clone()),
                                    None => auth::check_log_of(principal.as_ref(), &r.log)
                                        .and_then(|()| log_to_append_to(&node, &r.log)),
                                };
                                // Queued here, in stream order; only the waits overlap.
                                let reply: ReplyFuture = match found {
                                    Ok(l) => {
                                        let queued = submit_one(&node, &l, r).await;
                                        log = Some(l);
                                        match queued {
                                            Ok(f) => f,
                                            Err(s) => Box::pin(std::future::ready(Err(s))),
                                        }
                                    }
                                    Err(s) => Box::pin(std::future::ready(Err(s))),
                                };
                                inflight.push_back(reply);
                            }
                            Some(Err(_)) | None => open = false,
                        }
                    }
                    Some(res) = inflight.next() => {
                        let failed = res.is_err();
                        if tx.send(res).await.is_err() || failed {
                            // The stream ends at the first failed append: later replies
                            // would be ambiguous about which records made it.
                            break;
                        }
                    }
                    else => break,
                }
            }
            if stopping {
                let why =
                    "server is shutting down: appends sent after the last reply were not taken";
                let _ = tx.send(Err(Status::unavailable(why))).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn read(
        &self,
        req: Request<pb::ReadRequest>,
    ) -> Result<Response<pb::ReadResponse>, Status> {
        // Answer a little before the caller's deadline, so it gets our error, not its own.
        let wait = deadline_of(&req).map_or(MIN_OFFSET_WAIT_DEFAULT, |d| {
            d.saturating_sub((d / 5).min(Duration::from_millis(200)))
        });
        auth::check_log(&req, &req.get_ref().log)?;
        let req = req.into_inner();
        let log = self.node.storage().log(&req.log).map_err(to_status)?;
        // On a delayed replica everything below is bounded by the horizon, not the durable end.
        let reader = self.node.visible(&log);
        if req.min_offset > 0 && reader.end() < req.min_offset {
            let reached = tokio::time::timeout(wait, reader.wait_for(req.min_offset - 1)).await;
            match reached {
                Ok(r) => r.map_err(to_status)?,
                Err(_) => {
                    return Err(Status::deadline_exceeded(format!(
                    "this node has not reached offset {} of log {:?} within {wait:?} (it is at {}{})",
                    req.min_offset,
                    req.log,
                    reader.end(),
                    if self.node.active_delay().is_some() { ", a delayed replica" } else { "" }
                )))
                }
            }
        }
        let max_records = if req.max_records == 0 {
            READ_RECORDS_DEFAULT
        } else {
            req.max_records
        };
        let max_bytes = if req.max_bytes == 0 {
            READ_BYTES_DEFAULT
        } else {
            req.max_bytes.min(READ_BYTES_MAX)
        };
        check_last_epoch(&log, reader.end(), req.from_offset, req.last_epoch)?;
        let records = reader
            .read(req.from_offset, max_records as usize, max_bytes as usize)
            .map_err(to_status)?;
        let next_offset = records.last().map_or(req.from_offset, |r| r.offset + 1);
        metrics::counter!("spool_read_records_total").increment(records.len() as u64);
        Ok(Response::new(pb::ReadResponse {
            records: records.into_iter().map(to_pb).collect(),
            next_offset,
            end_offset: reader.end(),
            last_epoch: epoch_before(&log, next_offset),
        }))
    }

    type SubscribeStream = BoxStream<pb::SubscribeResponse>;

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        auth::check_log(&req, &req.get_ref().log)?;
        let req = req.into_inner();
        let log = self.node.storage().log(&req.log).map_err(to_status)?;
        let reader = self.node.visible(&log);
        // Cuts from here on may replace records this subscriber was sent.
        let mut cuts = reader.cut_count();
        let mut next = match req.start {
            Some(pb::subscribe_request::Start::FromOffset(o)) => o,
            Some(pb::subscribe_request::Start::FromEnd(_)) | None => reader.end(),
        };
        // Validate the start now, so a bad offset fails the call rather than the stream.
        check_last_epoch(&log, reader.end(), next, req.last_epoch)?;
        reader.read(next, 0, 0).map_err(to_status)?;
        let per_msg = if req.max_records_per_message == 0 {
            READ_RECORDS_DEFAULT
        } else {
            req.max_records_per_message
        } as usize;
        let (tx, rx) = mpsc::channel(SUBSCRIBE_BUFFER);
        let guard = self.node.subscriber();
        let node = self.node.clone();
        tokio::spawn(async move {
            let _guard = guard;
            // Wakes the wait below when the end moves at all, also backwards (a cut).
            let mut durable = log.watch_durable();
            loop {
                if let Some(cut) = reader.lowest_cut_since(cuts).filter(|&c| c < next) {
                    let _ = tx.send(Err(cut_status(log.name(), cut))).await;
                    return;
                }
                let ready = tokio::select! {
                    r = reader.wait_for(next) => r,
                    _ = durable.changed() => continue,
                    _ = tx.closed() => return,
                    _ = node.shutdown_started() => {
                        let _ = tx.send(Err(Status::unavailable("server is shutting down"))).await;
                        return;
                    }
                };
                if let Err(e) = ready {
                    let _ = tx.send(Err(to_status(e))).await;
                    return;
                }
                let read = reader.read(next, per_msg, READ_BYTES_DEFAULT as usize);
                match reader.lowest_cut_since(cuts) {
                    Some(cut) if cut < next => {
                        let _ = tx.send(Err(cut_status(log.name(), cut))).await;
                        return;
                    }
                    // Cut at or past what was sent: read again, the read may predate it.
                    Some(_) => {
                        cuts = reader.cut_count();
                        continue;
                    }
                    None => {}
                }
                match read.map(|r| within_one_epoch(&log, r)) {
                    Ok(records) if records.is_empty() => continue,
                    Ok(records) => {
                        next = records.last().map_or(next, |r| r.offset + 1);
                        metrics::counter!("spool_subscribed_records_total")
                            .increment(records.len() as u64);
                        let msg = pb::SubscribeResponse {
                            records: records.into_iter().map(to_pb).collect(),
                            last_epoch: epoch_before(&log, next),
                        };
                        // Waits while the client is slow: flow control, not buffering.
                        if tx.send(Ok(msg)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(to_status(e))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The records of `records` (read from one offset on) written in the epoch of the first:
/// a subscribe reply names one epoch, that of every record in it, so a client that stops
/// inside a reply still knows the epoch of the last record it took.
fn within_one_epoch(log: &Log, mut records: Vec<Record>) -> Vec<Record> {
    let Some(first) = records.first().map(|r| r.offset) else {
        return records;
    };
    let history = log.epochs();
    let next_epoch = history
        .entries()
        .iter()
        .map(|&(_, s)| s)
        .find(|&s| s > first);
    if let Some(limit) = next_epoch {
        records.retain(|r| r.offset < limit);
    }
    records
}

/// The epoch of the record at `next - 1` (0: none before `next`).
fn epoch_before(log: &Log, next: u64) -> u64 {
    next.checked_sub(1)
        .and_then(|o| log.epochs().epoch_at(o))
        .unwrap_or(0)
}

/// A reader that saw the record at `from - 1` in `last_epoch` continues at `from` only if
/// this log's history agrees: else (it was cut in a failover) FAILED_PRECONDITION names
/// where the histories part, as Kafka fences fetches by leader epoch.
fn check_last_epoch(log: &Log, end: u64, from: u64, last_epoch: u64) -> Result<(), Status> {
    if last_epoch == 0 || from == 0 {
        return Ok(());
    }
    let history = log.epochs();
    if last_epoch > history.current() {
        return Err(Status::unavailable(format!(
            "this node has not reached epoch {last_epoch} of log {:?} yet (it is at {}): \
             retry, or read from the primary",
            log.name(),
            history.current()
        )));
    }
    if from > end && history.current() == last_epoch {
        // Behind in the same epoch (a lagging replica): nothing was cut; the read says so.
        return Ok(());
    }
    let ours = (from <= end).then(|| history.epoch_at(from - 1)).flatten();
    if ours == Some(last_epoch) {
        return Ok(());
    }
    let parted = history.end_of(last_epoch, end).unwrap_or(0).min(from - 1);
    let mut s = Status::failed_precondition(format!(
        "log {:?} no longer holds the record at {} of epoch {last_epoch} (cut in a failover): \
         the history you read parts from the log's at offset {parted}; read on from there \
         (records you had past it were replaced)",
        log.name(),
        from - 1
    ));
    if let Ok(v) = parted.to_string().parse() {
        s.metadata_mut().insert(LOG_END_METADATA, v);
    }
    Err(s)
}

/// Metadata key naming where a reader's history and the log's part.
pub const LOG_END_METADATA: &str = "spool-log-end";

/// A subscriber was sent records at or past `cut`, and the log was cut back there (a
/// divergent tail removed after a failover, or a promotion at a point): those offsets will
/// hold other records.
fn cut_status(log: &str, cut: u64) -> Status {
    let mut s = Status::aborted(format!(
        "log {log:?} was cut back to offset {cut} (records past a failover or promotion \
         point were removed); records at and after {cut} that this subscription delivered \
         may be replaced: subscribe again from {cut}"
    ));
    if let Ok(v) = cut.to_string().parse() {
        s.metadata_mut().insert(LOG_END_METADATA, v);
    }
    s
}
