//! Spool's replication decisions, as sans-IO state machines and pure functions.
//!
//! Nothing here touches a socket, a file, a thread or the system clock: events come in as
//! method calls (an append became durable on the primary, a replica acked, time passed) with
//! the current `Instant` passed as an argument, and decisions come out as values
//! ([`ack::Command`], [`divergence::Decision`]). The server owns the IO and executes those
//! commands; tests drive the same logic deterministically with a fake clock (one base
//! `Instant` plus `Duration`s) and seeded random inputs.
//!
//! - [`ack`]: when an append may be acknowledged under its ack mode (async, semi-sync(k),
//!   sync), timeouts, and degrading to async and recovering.
//! - [`delay`]: what a delayed replica shows of what it stores (its horizon).
//! - [`divergence`]: where a connecting replica continues in a log (continue, truncate its
//!   divergent tail first, full sync, or keep what is ahead), decided by epoch history as
//!   with Kafka's leader epochs.
//! - [`failover`]: on a coordinator, how long a primary may ack on its lease, who may and
//!   who should become primary, and which tails it takes from peers first.
//! - [`follow`]: the replica side's policies (whom to follow, where a chunk goes, delayed
//!   deletions, gathered acks, liveness, reconnect backoff).
//! - [`handshake`]: the upstream's plan for one log of a connecting replica (identity,
//!   histories, its last frame) and what the replica holds after it.
//! - [`session`]: the replica side of one session as a state machine: upstream messages
//!   in, commands out (drain, append, import, install, start, delete, ack).
//! - [`sender`]: what the upstream sends a replica next in one log (frames, a sealed
//!   segment whole, a span of the active one to fetch).

pub mod ack;
pub mod delay;
pub mod divergence;
pub mod failover;
pub mod follow;
pub mod handshake;
pub mod sender;
pub mod session;
