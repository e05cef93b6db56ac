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
//! - [`divergence`]: where a connecting replica continues in a log (continue, truncate its
//!   divergent tail first, or full sync), decided by epoch history as with Kafka's leader
//!   epochs.

pub mod ack;
pub mod divergence;
