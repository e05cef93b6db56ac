//! Idempotent appends: a producer id and sequence, retried while the outcome is unknown.

use bytes::Bytes;
use spool_proto::v1 as pb;
use tonic::Code;

use super::{AckMode, AppendResponse, Client, ClientError, Result};

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
        // The client looked for a new primary as long as it may: tried on no node since.
        ClientError::NoPrimary { .. } => true,
        ClientError::BadAddress(_)
        | ClientError::Tls(_)
        | ClientError::BadToken
        | ClientError::Unsettled { .. } => false,
    }
}

/// Whether this producer tries a failed batch again itself. Not after the client spent its
/// failover time looking for a primary: that bounds the total.
fn retry_later(e: &ClientError) -> bool {
    outcome_unknown(e) && !matches!(e, ClientError::NoPrimary { .. })
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
                Err(e) if retry_later(&e) && attempt < self.attempts => {
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
