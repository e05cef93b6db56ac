//! Executes one log's `spool_replication::sender::Sender` towards one replica: waits for
//! the log to hold what comes next, asks the sender what to send, reads it from the
//! mapped segments exactly as stored and queues it on the replica's stream.

use std::sync::Arc;

use spool_proto::v1 as pb;
use spool_replication::divergence::Decision;
use spool_replication::handshake::{self, Plan};
use spool_replication::sender::{Fetch, LogView, Sender, Span, Step};
use spool_storage::{FrameChunk, Log, StorageError};
use tokio::sync::mpsc;
use tonic::Status;

use super::plan::{start_message, vouched};
use super::upstream::HEARTBEAT_EVERY;
use crate::server::node::Node;
use crate::server::status_map::to_status;
use crate::server::visible::Visible;

/// Bytes of frames per message: large enough to catch up at disk speed, small enough to
/// stay well under the message size limit.
const FRAMES_PER_MESSAGE_BYTES: usize = 1 << 20;

pub type Out = mpsc::Sender<Result<pb::UpstreamMessage, Status>>;

/// `m` as sent by a node at `node_epoch` (every message says its epoch: a replica fences
/// a deposed sender by it).
pub fn msg(node_epoch: u64, m: pb::upstream_message::Msg) -> Result<pb::UpstreamMessage, Status> {
    Ok(pb::UpstreamMessage {
        msg: Some(m),
        node_epoch,
    })
}

/// The log as the replica may see it: the sender's [`LogView`].
pub fn view<'a>(visible: &'a Visible, log: &'a Log) -> impl LogView + 'a {
    View { visible, log }
}

struct View<'a> {
    visible: &'a Visible,
    log: &'a Log,
}

impl LogView for View<'_> {
    fn sealed_segment(&self, offset: u64) -> Option<(u64, u64)> {
        self.visible.sealed_segment(offset)
    }
    fn sealed_bytes_from(&self, base: u64, from: u64) -> Option<u64> {
        self.visible
            .sealed_span(base, from)
            .ok()
            .map(|s| s.end - s.start)
    }
    fn active_span(&self, from: u64) -> Option<Span> {
        self.visible.active_span(from).map(|s| Span {
            base: s.base,
            first: s.first_offset,
            next: s.next_offset,
            bytes: s.end - s.start,
        })
    }
    fn segment_bytes(&self) -> u64 {
        self.log.config().segment_bytes
    }
}

/// One log's stream to one replica, from where its plan put it.
#[derive(Debug)]
pub struct LogStream {
    pub node: Arc<Node>,
    pub replica: String,
    pub log: Log,
    pub out: Out,
    pub fetch: Fetch,
    /// Cuts of the log seen when the plan was made (see `LogReader::cut_count`).
    pub cuts: u64,
    /// How far each log was sent to this replica (its acks count up to there).
    pub sent: super::upstream::SentTo,
}

impl LogStream {
    /// Stream frames from `from` on, following the visible end (the durable end, or a
    /// delayed replica's horizon), as the sender decides (`resume_at`: where a segment
    /// the replica holds partly received resumes).
    pub async fn run(mut self, from: u64, resume_at: Option<u64>) {
        let visible = self.node.visible(&self.log);
        let mut sender = Sender::new(from, resume_at, self.fetch);
        loop {
            if !self
                .wait_for(&visible, sender.from(), sender.sent_to())
                .await
            {
                return;
            }
            let step = sender.next(&view(&visible, &self.log), self.out.capacity() == 0);
            let m = match self.read(&visible, &mut sender, step) {
                Ok(Some(m)) => m,
                Ok(None) => continue,
                Err(s) => {
                    let _ = self.out.send(Err(s)).await;
                    return;
                }
            };
            // Recorded before the replica can see it, so its ack never outruns it.
            self.record_sent(sender.sent_to());
            if self
                .out
                .send(msg(self.node.role().epoch(), m))
                .await
                .is_err()
            {
                return;
            }
        }
    }

    fn record_sent(&self, to: u64) {
        let mut sent = self.sent.lock();
        sent.entry(self.log.name().to_owned())
            .or_default()
            .reached(to);
    }

    /// Wait until the log holds `from`. False when the stream must end: the log was cut
    /// below `sent`, what was sent (told to the replica, which reconnects and has its tail
    /// decided again), deleted (the session says so), the replica went away or the node
    /// stops.
    async fn wait_for(&mut self, visible: &Visible, from: u64, sent: u64) -> bool {
        loop {
            if let Some(c) = self.cut_below(visible, sent) {
                return self.abort_cut(c, sent).await;
            }
            tokio::select! {
                r = visible.wait_for(from) => {
                    // Frames read in a race with a cut are caught at the next check, and the
                    // new decision then cuts them on the replica too.
                    return match (r, self.cut_below(visible, sent)) {
                        (_, Some(c)) => self.abort_cut(c, sent).await,
                        (r, None) => r.is_ok(),
                    };
                }
                // A cut need not wake the wait (the end may stay below `from`).
                _ = tokio::time::sleep(HEARTBEAT_EVERY) => {}
                _ = self.out.closed() => return false,
                _ = self.node.shutdown_started() => return false,
            }
        }
    }

    /// Tell the replica the log was cut below what it was sent: it reconnects and has its
    /// tail decided again. Returns false (the stream ends).
    async fn abort_cut(&self, cut: u64, from: u64) -> bool {
        let _ = self
            .out
            .send(Err(Status::aborted(format!(
                "log {} was cut back to offset {cut} here, below the {from} sent to this \
                 replica: reconnect",
                self.log.name()
            ))))
            .await;
        false
    }

    /// The lowest cut since the last check below `from` (a cut at or past it took nothing
    /// sent: later checks start after it).
    fn cut_below(&mut self, visible: &Visible, from: u64) -> Option<u64> {
        let now = visible.cut_count();
        let below = visible.lowest_cut_since(self.cuts).filter(|&c| c < from);
        if below.is_none() {
            self.cuts = now;
        }
        below
    }

    /// The message for `step`, read from the segments (None: nothing there yet).
    fn read(
        &self,
        visible: &Visible,
        sender: &mut Sender,
        step: Step,
    ) -> Result<Option<pb::upstream_message::Msg>, Status> {
        let name = self.log.name();
        let at = match step {
            Step::Offer { base, first, next } => {
                // The replica copies [first, next) itself (segment_fetch.rs); the stream
                // goes on from there, and the replica reads on once the segment is in.
                self.progress(Some((first, next)));
                return Ok(Some(segment_msg(name, (base, next), None, (first, next))));
            }
            Step::Chunk { at, .. } | Step::Frames { at } => at,
        };
        let chunk = match visible.read_frames(at, FRAMES_PER_MESSAGE_BYTES) {
            Ok(c) if c.bytes.is_empty() => return Ok(None),
            Ok(c) => c,
            Err(StorageError::OffsetOutOfRange { start, .. }) if at < start => {
                return Ok(Some(self.fell_behind(visible, sender, at, start)));
            }
            Err(e) => return Err(to_status(e)),
        };
        Ok(Some(match step {
            Step::Chunk { base, next, .. } => {
                sender.chunk_sent(chunk.next_offset);
                self.progress(sender.segment_progress());
                let range = (chunk.first_offset, chunk.next_offset);
                segment_msg(name, (base, next), Some(chunk), range)
            }
            _ => {
                sender.frames_sent(chunk.next_offset);
                frames_msg(name, chunk, self.node.replicas_should_sync())
            }
        }))
    }

    /// Retention removed what this replica needed: it copies the log again from `start`.
    fn fell_behind(
        &self,
        visible: &Visible,
        sender: &mut Sender,
        at: u64,
        start: u64,
    ) -> pb::upstream_message::Msg {
        tracing::warn!(
            log = self.log.name(),
            from = at,
            start,
            "replica fell behind retention: full sync"
        );
        sender.fell_behind(start);
        // It holds nothing below `start` once it carried the full sync out: what it is
        // sent from there is checked as for a new log (a claim it could not prove at its
        // hello no longer matters).
        self.sent.lock().insert(
            self.log.name().to_owned(),
            super::upstream::Sent {
                to: start,
                credited: true,
            },
        );
        self.progress(None);
        self.node
            .replicas()
            .full_sync_started(&self.replica, self.log.name(), visible.end());
        let plan = Plan::Follow(Decision::FullSync { from: start });
        pb::upstream_message::Msg::Start(start_message(visible, &self.log, &plan, None, self.fetch))
    }

    /// The sealed segment being sent whole to this replica: (sent up to, its end).
    fn progress(&self, progress: Option<(u64, u64)>) {
        self.node
            .replicas()
            .segment_sent(&self.replica, self.log.name(), progress);
    }

    /// A replica ahead of this node in the log (records `upstream_end..replica_end` of the
    /// epoch this node was in): wait until this node holds them too, then stream from the
    /// replica's end, if they are still of that epoch here; if this node's history changed
    /// under them meanwhile, end the stream so the replica's tail is decided again.
    pub async fn run_when_there(
        self,
        (upstream_end, replica_end): (u64, u64),
        last_frame: Option<(u64, u32)>,
    ) {
        let epoch = self.log.epochs().epoch_at(upstream_end).unwrap_or(0);
        let visible = self.node.visible(&self.log);
        let same = || {
            visible
                .lowest_cut_since(self.cuts)
                .is_none_or(|c| c >= replica_end)
                && handshake::ahead_still_holds(
                    &vouched(&self.node, &self.log, &visible).epochs,
                    (upstream_end, replica_end),
                    epoch,
                )
        };
        // Checked while waiting too: an upstream that learns of a newer epoch meanwhile
        // may never get to the replica's end.
        while same() {
            tokio::select! {
                r = visible.wait_for(replica_end - 1) => match r {
                    Ok(()) => break,
                    Err(_) => return,
                },
                _ = tokio::time::sleep(HEARTBEAT_EVERY) => {}
                _ = self.out.closed() => return,
                _ = self.node.shutdown_started() => return,
            }
        }
        if !same() {
            let _ = self
                .out
                .send(Err(Status::aborted(format!(
                    "log {}: this node's history changed under records {upstream_end}..{replica_end} \
                     the replica holds: reconnect to decide its tail again",
                    self.log.name()
                ))))
                .await;
            return;
        }
        self.node
            .replicas()
            .set_blocked(&self.replica, self.log.name(), String::new());
        self.check_ahead(replica_end, last_frame);
        self.run(replica_end, None).await;
    }

    /// This node holds what the replica said it was ahead with: it is credited with it if
    /// its last frame is this node's frame there (the same bytes), else with nothing more.
    fn check_ahead(&self, replica_end: u64, last_frame: Option<(u64, u32)>) {
        let ours = super::plan::frame_at(&self.log, replica_end - 1);
        if last_frame.is_none() || ours != last_frame {
            tracing::warn!(log = %self.log.name(), replica = %self.replica, replica_end, "the replica's last frame is not this node's at its end: its acks count for nothing more in this log until it reconnects");
            return;
        }
        let mut sent = self.sent.lock();
        let s = sent.entry(self.log.name().to_owned()).or_default();
        s.credited = true;
        s.reached(replica_end);
    }
}

/// A SegmentChunk: frames of segment `(base, next)` covering `range`, or (without
/// frames) an offer to fetch them.
fn segment_msg(
    log: &str,
    (base, next): (u64, u64),
    chunk: Option<FrameChunk>,
    (first, last): (u64, u64),
) -> pb::upstream_message::Msg {
    pb::upstream_message::Msg::Segment(pb::SegmentChunk {
        log: log.to_owned(),
        segment_base: base,
        segment_next: next,
        first_offset: first,
        next_offset: last,
        fetch: chunk.is_none(),
        frames: chunk.map(|c| c.bytes).unwrap_or_default(),
    })
}

fn frames_msg(log: &str, chunk: FrameChunk, sync: bool) -> pb::upstream_message::Msg {
    pb::upstream_message::Msg::Frames(pb::LogFrames {
        log: log.to_owned(),
        first_offset: chunk.first_offset,
        next_offset: chunk.next_offset,
        frames: chunk.bytes,
        sync,
    })
}
