//! A delayed replica's visible horizon, pause, and delayed deletions.
//!
//! Frames are stored as soon as they arrive (a later catch-up never depends on the upstream
//! still having them), but readers, subscribers and downstream replicas see a log only up
//! to its *horizon*: the first offset whose batch the primary wrote after the *cutoff*
//! (`now - delay`, or the frozen cutoff while paused). Timestamps come from the frames,
//! i.e. from the primary's clock; the cutoff from this node's clock (keep them in sync).
//!
//! A task advances every log's horizon every [`TICK`] by scanning frame headers from the
//! previous horizon, publishes it through a `watch`, keeps the retention floor at it, and
//! applies deletions whose time has come. Horizons only move back when the log is cut
//! ([`Delay::cut`]), and then *before* the cut, with a new generation so that a read that
//! raced the cut is retried.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use spool_replication::delay as policy;
use spool_storage::{Log, Storage};
use tokio::sync::watch;

use super::delay_state::{DelayState, DelayStateError};
use super::upstream::now_us;
use crate::server::catalog::Catalog;
use crate::server::node::Node;

/// How often horizons advance: a record becomes visible at most this late.
pub const TICK: Duration = Duration::from_millis(50);
/// Frames one tick scans per log, so that a long catch-up cannot stall the others.
const SCAN_FRAMES_MAX: usize = 20_000;
/// Horizons are saved (an optimisation: a restart scans from them) at most this often.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// A log's visible end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Horizon {
    /// Records below this offset are visible; `u64::MAX` once the delay ended (promotion).
    pub offset: u64,
    /// The cutoff it was computed with (primary's clock, unix microseconds).
    pub cutoff_us: u64,
    /// Bumped when the horizon moves back: a read that started before must be retried.
    pub generation: u64,
}

#[derive(Debug)]
struct Entry {
    tx: watch::Sender<Horizon>,
    /// Cuts in progress: the tick leaves the log alone meanwhile (it would re-expose the
    /// frames about to be removed). The mutex orders the tick's scan-and-publish with cuts.
    held: Mutex<u32>,
}

#[derive(Debug)]
pub struct Delay {
    pub delay: Duration,
    data_dir: PathBuf,
    storage: Storage,
    active: AtomicBool,
    /// The persisted part, as readers see it (held only briefly, never across a save).
    state: Mutex<DelayState>,
    /// Held across a save (see `save`): snapshots are taken and written in this lock's
    /// order, so an older one never overwrites a newer one.
    saving: tokio::sync::Mutex<()>,
    entries: Mutex<HashMap<String, Arc<Entry>>>,
    /// Bumped when a pending deletion is applied (the follower then reconnects, to pick up
    /// a log recreated upstream under the same name).
    pub deletions_applied: watch::Sender<u64>,
}

/// While alive, the tick leaves the log's horizon alone (a truncation is running).
#[derive(Debug)]
pub struct CutGuard(Arc<Entry>);

impl Drop for CutGuard {
    fn drop(&mut self) {
        *self.0.held.lock() -= 1;
    }
}

/// Why a delayed-replica operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DelayError {
    #[error(transparent)]
    State(#[from] DelayStateError),
    #[error(transparent)]
    Storage(#[from] spool_storage::StorageError),
    #[error("saving the delayed replica's state: {0}")]
    Task(String),
}

/// The horizon from `from` on (`spool_replication::delay::scan` over the frame headers,
/// at most [`SCAN_FRAMES_MAX`] of them).
fn scan(log: &Log, from: u64, cutoff_us: u64) -> u64 {
    let Ok(mut cursor) = log.reader().frames(from) else {
        return from;
    };
    // The durable end or a read error ends the frames (never skipping ahead).
    let frames = std::iter::from_fn(|| {
        let (h, _) = cursor.next_frame().ok().flatten()?;
        Some((h.next_offset(), h.last_ts_us))
    })
    .take(SCAN_FRAMES_MAX);
    policy::scan(from, frames, cutoff_us)
}

impl Delay {
    pub fn open(storage: Storage, delay: Duration) -> Result<Arc<Delay>, DelayError> {
        let data_dir = storage.config().data_dir.clone();
        let state = DelayState::load(&data_dir)?;
        let d = Arc::new(Delay {
            delay,
            data_dir,
            storage,
            active: AtomicBool::new(true),
            state: Mutex::new(state),
            saving: tokio::sync::Mutex::new(()),
            entries: Mutex::new(HashMap::new()),
            deletions_applied: watch::Sender::new(0),
        });
        // Before anything serves or retention runs: every log's floor is at its horizon.
        for name in d.storage.list_logs() {
            if let Ok(log) = d.storage.log(&name) {
                d.entry(&log);
            }
        }
        Ok(d)
    }

    /// False once the node was promoted: it then exposes everything it stores.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    pub fn paused_cutoff_us(&self) -> Option<u64> {
        self.state.lock().paused_cutoff_us
    }

    /// Records the primary wrote up to this time are visible.
    pub fn cutoff_us(&self) -> u64 {
        policy::cutoff_us(now_us(), self.delay, self.paused_cutoff_us())
    }

    fn entry(&self, log: &Log) -> Arc<Entry> {
        if let Some(e) = self.entries.lock().get(log.name()) {
            return e.clone();
        }
        // Start from the saved horizon (records below it were old enough when it was
        // saved; cuts save at once), else from the log's start: nothing visible yet.
        // (Lock order: state before entries, never both the other way.)
        let saved = self.state.lock().horizons.get(log.name()).copied();
        let mut entries = self.entries.lock();
        if let Some(e) = entries.get(log.name()) {
            return e.clone();
        }
        let p = log.positions();
        let offset = saved.unwrap_or(p.start).clamp(p.start, p.durable);
        log.set_retention_floor(Some(offset));
        let e = Arc::new(Entry {
            tx: watch::Sender::new(Horizon {
                offset: if self.is_active() { offset } else { u64::MAX },
                cutoff_us: 0,
                generation: 0,
            }),
            held: Mutex::new(0),
        });
        entries.insert(log.name().to_owned(), e.clone());
        e
    }

    /// The horizon of `log`, to read under.
    pub fn watch(&self, log: &Log) -> watch::Receiver<Horizon> {
        self.entry(log).tx.subscribe()
    }

    pub fn horizon(&self, log: &Log) -> Horizon {
        *self.entry(log).tx.borrow()
    }

    /// Move `log`'s horizon to at most `to` (or exactly `to` on a reset, which empties the
    /// log and continues from there) *before* the caller truncates; the tick stays away
    /// until the guard drops. Saved at once: after a crash the horizon must not point past
    /// data that is no longer what was visible.
    pub async fn cut(&self, log: &Log, to: u64, reset: bool) -> Result<CutGuard, DelayError> {
        let e = self.entry(log);
        let offset = {
            let mut held = e.held.lock();
            *held += 1;
            e.tx.send_modify(|h| {
                if h.offset != u64::MAX {
                    h.offset = policy::after_cut(h.offset, to, reset);
                }
                h.generation += 1;
            });
            let offset = e.tx.borrow().offset;
            offset
        };
        let guard = CutGuard(e.clone());
        if offset != u64::MAX {
            self.state
                .lock()
                .horizons
                .insert(log.name().to_owned(), offset);
        }
        self.save().await?;
        Ok(guard)
    }

    /// Write the persisted state as it is now, on a blocking thread (an fsync, a rename
    /// and a directory fsync), without holding `state` meanwhile.
    async fn save(&self) -> Result<(), DelayError> {
        let _saving = self.saving.lock().await;
        let snapshot = self.state.lock().clone();
        let dir = self.data_dir.clone();
        tokio::task::spawn_blocking(move || snapshot.save(&dir))
            .await
            .map_err(|e| DelayError::Task(e.to_string()))??;
        Ok(())
    }

    /// One pass: advance every log's horizon and keep its retention floor there.
    fn advance_all(&self) -> bool {
        let cutoff = self.cutoff_us();
        let mut changed = false;
        for name in self.storage.list_logs() {
            let Ok(log) = self.storage.log(&name) else {
                continue;
            };
            let e = self.entry(&log);
            let held = e.held.lock();
            if *held > 0 || !self.is_active() {
                continue;
            }
            let cur = *e.tx.borrow();
            let p = log.positions();
            let from = policy::scan_from(cur.offset, p.start, p.durable);
            let next = scan(&log, from, cutoff);
            if next != cur.offset || cur.cutoff_us != cutoff {
                e.tx.send_modify(|h| {
                    if next < h.offset {
                        h.generation += 1;
                    }
                    h.offset = next;
                    h.cutoff_us = cutoff;
                });
                changed |= next != cur.offset;
            }
            drop(held);
        }
        changed
    }

    /// Pause: freeze the cutoff (persisted). Data keeps arriving and is stored.
    pub async fn pause(&self) -> Result<u64, DelayError> {
        let (cutoff, changed) = {
            let mut st = self.state.lock();
            match st.paused_cutoff_us {
                Some(c) => (c, false),
                None => {
                    // The horizons already published were computed with an earlier cutoff:
                    // freezing the current one moves them at most one tick further.
                    let c = policy::cutoff_us(now_us(), self.delay, None);
                    st.paused_cutoff_us = Some(c);
                    (c, true)
                }
            }
        };
        if changed {
            self.save().await?;
        }
        tracing::warn!(
            cutoff_us = cutoff,
            "delayed replica paused: horizons frozen"
        );
        Ok(cutoff)
    }

    pub async fn resume(&self) -> Result<(), DelayError> {
        let resumed = self.state.lock().paused_cutoff_us.take().is_some();
        if resumed {
            self.save().await?;
        }
        tracing::warn!("delayed replica resumed");
        Ok(())
    }

    /// The upstream deleted `name` at `deleted_at_us`: delete it here after the delay. A
    /// repeated notice (after a reconnect) keeps the first, earlier time.
    pub async fn schedule_delete(&self, name: &str, deleted_at_us: u64) -> Result<(), DelayError> {
        {
            let mut st = self.state.lock();
            if st.deletions.contains_key(name) {
                return Ok(());
            }
            st.deletions.insert(name.to_owned(), deleted_at_us);
        }
        self.save().await?;
        tracing::warn!(log = name, deleted_at_us, delay = ?self.delay, "log deleted upstream: deleting here after the delay");
        Ok(())
    }

    /// When the upstream deleted `name`, if its deletion here is pending.
    pub fn pending_delete(&self, name: &str) -> Option<u64> {
        self.state.lock().deletions.get(name).copied()
    }

    /// Deletions whose upstream time is at or before `cutoff_us`, and the rest.
    pub fn split_deletions(&self, cutoff_us: u64) -> (Vec<String>, Vec<String>) {
        self.state
            .lock()
            .deletions
            .iter()
            .map(|(n, &at)| (n.clone(), at <= cutoff_us))
            .fold((vec![], vec![]), |(mut due, mut later), (n, is_due)| {
                if is_due {
                    due.push(n)
                } else {
                    later.push(n)
                }
                (due, later)
            })
    }

    /// Delete `name` now and forget its horizon and pending deletion.
    pub async fn apply_delete(&self, catalog: &Catalog, name: &str) -> Result<(), DelayError> {
        match self.storage.delete_log(name).await {
            Ok(()) | Err(spool_storage::StorageError::LogNotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        // Dropping the sender ends waiting subscribers with "log not found".
        self.entries.lock().remove(name);
        {
            let mut st = self.state.lock();
            st.deletions.remove(name);
            st.horizons.remove(name);
        }
        self.save().await?;
        catalog.changed();
        self.deletions_applied.send_modify(|n| *n += 1);
        tracing::warn!(log = name, "delayed deletion applied");
        Ok(())
    }

    /// Forget pending deletions (promotion at a point before them).
    pub async fn drop_deletions(&self, names: &[String]) -> Result<(), DelayError> {
        {
            let mut st = self.state.lock();
            for n in names {
                st.deletions.remove(n);
            }
        }
        self.save().await
    }

    /// Promotion: expose everything stored from now on, and forget the pause.
    pub async fn deactivate(&self) -> Result<(), DelayError> {
        self.active.store(false, Ordering::Release);
        for e in self.entries.lock().values() {
            let _held = e.held.lock();
            e.tx.send_modify(|h| h.offset = u64::MAX);
        }
        {
            let mut st = self.state.lock();
            st.paused_cutoff_us = None;
            st.horizons.clear();
        }
        self.save().await
    }

    async fn save_horizons(&self) -> Result<(), DelayError> {
        let entries: Vec<(String, u64)> = self
            .entries
            .lock()
            .iter()
            .map(|(n, e)| (n.clone(), e.tx.borrow().offset))
            .filter(|(_, o)| *o != u64::MAX)
            .collect();
        // A cut that lowers a horizon meanwhile saves after this one, with its value.
        self.state.lock().horizons.extend(entries);
        self.save().await
    }
}

/// Run the horizon task until the node is promoted.
pub fn spawn(node: Arc<Node>, delay: Arc<Delay>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last_save = Instant::now();
        let mut dirty = false;
        loop {
            tick.tick().await;
            if !delay.is_active() || node.is_shutting_down() {
                return;
            }
            let d = delay.clone();
            let advanced = tokio::task::spawn_blocking(move || d.advance_all())
                .await
                .unwrap_or(false);
            dirty |= advanced;
            let (due, _) = delay.split_deletions(delay.cutoff_us());
            for name in due {
                if let Err(e) = delay.apply_delete(node.catalog(), &name).await {
                    tracing::error!(log = %name, error = %e, "applying a delayed deletion failed; retrying");
                }
            }
            if dirty && last_save.elapsed() >= SAVE_EVERY {
                match delay.save_horizons().await {
                    Ok(()) => dirty = false,
                    Err(e) => tracing::warn!(error = %e, "saving horizons failed"),
                }
                last_save = Instant::now();
            }
        }
    });
}
