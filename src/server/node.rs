//! What every service shares: the storage, the start time, the shutdown flag.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Instant;

use spool_storage::Storage;
use tonic::Status;

use crate::config::DefaultAck;

#[derive(Debug)]
pub struct Node {
    pub storage: Storage,
    pub started: Instant,
    pub default_ack: DefaultAck,
    shutting_down: AtomicBool,
    shutdown_tx: tokio::sync::watch::Sender<bool>,
    subscribers: AtomicI64,
}

impl Node {
    pub fn new(storage: Storage, default_ack: DefaultAck) -> Self {
        Node {
            storage,
            started: Instant::now(),
            default_ack,
            shutting_down: AtomicBool::new(false),
            shutdown_tx: tokio::sync::watch::Sender::new(false),
            subscribers: AtomicI64::new(0),
        }
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.shutdown_tx.send_replace(true);
    }

    /// Resolves once shutdown began (long-lived streams end on it).
    pub async fn shutdown_started(&self) {
        let mut rx = self.shutdown_tx.subscribe();
        let _ = rx.wait_for(|&s| s).await;
    }

    /// UNAVAILABLE once shutdown began: clients retry on another node or after restart.
    pub fn check_accepting(&self) -> Result<(), Status> {
        if self.shutting_down.load(Ordering::Acquire) {
            Err(Status::unavailable(
                "server is shutting down; retry after it restarts",
            ))
        } else {
            Ok(())
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Count an open subscriber until the guard drops.
    pub fn subscriber(self: &std::sync::Arc<Self>) -> SubscriberGuard {
        let n = self.subscribers.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!("spool_subscribers").set(n as f64);
        SubscriberGuard(self.clone())
    }
}

#[derive(Debug)]
pub struct SubscriberGuard(std::sync::Arc<Node>);

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        let n = self.0.subscribers.fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!("spool_subscribers").set(n as f64);
    }
}
