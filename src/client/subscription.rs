//! Where a reader is in a log, with the epoch of the last record it saw, and a
//! subscription that keeps it: a reader resuming from there (a new subscription, the next
//! read) is told by the node when a failover cut records it was given, as Kafka fences
//! fetches by leader epoch.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::stream::Stream;
use spool_proto::v1 as pb;
use tonic::Status;

use super::{ClientError, Record, Result};

/// Metadata key of a refusal naming where the reader's history and the log's part (the
/// server's `LOG_END_METADATA`).
pub const LOG_END_METADATA: &str = "spool-log-end";

/// A reader's place in a log: the next offset to read and the epoch of the record just
/// before it (0: unknown, and then the node does not check).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    pub offset: u64,
    pub last_epoch: u64,
}

impl Position {
    /// From `offset`, unchecked (nothing was read before it).
    pub fn at(offset: u64) -> Position {
        Position {
            offset,
            last_epoch: 0,
        }
    }

    /// Where the read that answered `r` leaves the reader.
    pub fn after(r: &pb::ReadResponse) -> Position {
        Position {
            offset: r.next_offset,
            last_epoch: r.last_epoch,
        }
    }
}

impl ClientError {
    /// Where the log's history parts from the reader's, when a read or subscription was
    /// refused because a failover cut records the reader was given: read on from there.
    pub fn log_end(&self) -> Option<u64> {
        let ClientError::Rpc(s) = self else {
            return None;
        };
        s.metadata()
            .get(LOG_END_METADATA)?
            .to_str()
            .ok()?
            .parse()
            .ok()
    }
}

type Replies = Pin<Box<dyn Stream<Item = Result<pb::SubscribeResponse, Status>> + Send>>;

/// The records of a subscription, one at a time, and the [`Position`] after the last one
/// returned (to subscribe again from, with [`super::Client::subscribe_at`]).
pub struct Subscription {
    replies: Replies,
    /// Records of the current reply not yet returned, last first.
    pending: Vec<Record>,
    /// The epoch of the current reply's last record.
    pending_epoch: u64,
    position: Option<Position>,
}

impl Subscription {
    /// `from`: where it starts (None: at the node's end, unknown here).
    pub(super) fn new(replies: Replies, from: Option<Position>) -> Subscription {
        Subscription {
            replies,
            pending: Vec::new(),
            pending_epoch: 0,
            position: from,
        }
    }

    /// Where a new subscription goes on from: past the last record returned, with its
    /// epoch (None: started at the end, and no record returned yet).
    pub fn position(&self) -> Option<Position> {
        self.position
    }

    /// Record `r` is returned: the position moves past it, in the reply's epoch (a node
    /// never puts records of two epochs in one reply).
    fn returned(&mut self, r: &Record) {
        self.position = Some(Position {
            offset: r.offset + 1,
            last_epoch: self.pending_epoch,
        });
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("position", &self.position)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Stream for Subscription {
    type Item = Result<Record>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(r) = self.pending.pop() {
                self.returned(&r);
                return Poll::Ready(Some(Ok(r)));
            }
            match self.replies.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(m))) => {
                    self.pending = m.records;
                    self.pending.reverse();
                    self.pending_epoch = m.last_epoch;
                }
                Poll::Ready(Some(Err(s))) => return Poll::Ready(Some(Err(s.into()))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
