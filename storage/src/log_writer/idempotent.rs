//! The storage thread's side of idempotent appends (rules and table in `producers`):
//! checking a producer's batch before it is stamped, and answering a retry.

use tokio::sync::oneshot;

use super::{LogWriter, Waiter};
use crate::config::Durability;
use crate::error::Result;
use crate::format::ProducerSeq;
use crate::io::IoFile;
use crate::log::AppendAck;
use crate::producers::{KeptBatch, Verdict};

impl<F: IoFile> LogWriter<F> {
    /// The producer check of an idempotent append (see `producers`): `Some(reply)` when
    /// the batch is to be appended; otherwise `reply` is answered, or waits with the group
    /// that makes the original durable.
    pub(super) fn dedupe(
        &mut self,
        p: ProducerSeq,
        ts_us: u64,
        durability: Durability,
        reply: oneshot::Sender<Result<AppendAck>>,
    ) -> Option<oneshot::Sender<Result<AppendAck>>> {
        match self.producers.table.check(p, ts_us, &self.shared.name) {
            Ok(Verdict::Append) => Some(reply),
            Ok(Verdict::Duplicate(original)) => {
                self.answer_duplicate(original, durability, reply);
                None
            }
            Err(e) => {
                let _ = reply.send(Err(e));
                None
            }
        }
    }

    /// Answer a retry with its original batch, never before the original reached the
    /// durability the retry asks for: a retry's ack promises what the first one would have.
    fn answer_duplicate(
        &mut self,
        original: KeptBatch,
        durability: Durability,
        reply: oneshot::Sender<Result<AppendAck>>,
    ) {
        let mut ack = AppendAck {
            base_offset: original.base_offset,
            record_count: original.record_count,
            epoch: original.epoch,
            durability,
            duplicate: true,
        };
        let end = original.next_offset();
        if end <= self.active.durable_next() {
            ack.durability = Durability::Fsync;
            let _ = reply.send(Ok(ack));
        } else if end <= self.active.written_next() && durability == Durability::Unsynced {
            let _ = reply.send(Ok(ack));
        } else {
            // In this group, or written and not yet synced: completes with the sync.
            if durability == Durability::Fsync {
                self.group.request_sync();
            }
            self.group.wait(Waiter::Local { reply, ack });
        }
    }
}
