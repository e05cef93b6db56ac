//! The metadata worker: one thread per node that runs the jobs logs need done on their
//! files (renames, directory syncs, small files, waiting for a spare; see
//! `log_writer::job`), so that the storage thread goes on committing other logs' groups
//! meanwhile.
//!
//! Jobs run one at a time, in the order they came; each log has at most one in flight (its
//! later commands wait on the storage thread until it is done), so the channels hold at
//! most one job and one result per log. Where the thread cannot be started, jobs run on
//! the storage thread as they are submitted, their results coming back the same way.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::io::MetaIo;
use crate::log_writer::{Done, Job};

/// A job's result, for the log `id`.
pub(crate) type Completed = (u64, Done);

#[derive(Debug)]
pub(crate) struct MetaWorker {
    mode: Mode,
}

#[derive(Debug)]
enum Mode {
    Thread {
        tx: Option<std::sync::mpsc::Sender<(u64, Job)>>,
        thread: Option<std::thread::JoinHandle<()>>,
    },
    Inline {
        io: Arc<dyn MetaIo>,
        done: mpsc::UnboundedSender<Completed>,
    },
}

impl MetaWorker {
    /// Start the thread; results come back on the returned receiver.
    pub fn start(io: Arc<dyn MetaIo>) -> (MetaWorker, mpsc::UnboundedReceiver<Completed>) {
        let (tx, jobs) = std::sync::mpsc::channel::<(u64, Job)>();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (thread_io, thread_done) = (io.clone(), done_tx.clone());
        let spawned = std::thread::Builder::new()
            .name("spool-meta".into())
            .spawn(move || {
                for (id, job) in jobs {
                    if thread_done.send((id, job.run(&*thread_io))).is_err() {
                        return;
                    }
                }
            });
        let mode = match spawned {
            Ok(thread) => Mode::Thread {
                tx: Some(tx),
                thread: Some(thread),
            },
            Err(e) => {
                tracing::warn!(error = %e, "no metadata worker thread; the storage thread does its jobs");
                Mode::Inline { io, done: done_tx }
            }
        };
        (MetaWorker { mode }, done_rx)
    }

    /// Run `job` for log `id` after the jobs before it.
    pub fn submit(&self, id: u64, job: Job) {
        match &self.mode {
            Mode::Thread { tx, .. } => {
                let tx = tx.as_ref().expect("the worker runs until stopped");
                tx.send((id, job))
                    .expect("the metadata worker thread is gone");
            }
            Mode::Inline { io, done } => {
                let _ = done.send((id, job.run(&**io)));
            }
        }
    }

    /// Let the thread finish the jobs it has, and wait for it.
    pub fn stop(&mut self) {
        if let Mode::Thread { tx, thread } = &mut self.mode {
            tx.take();
            if let Some(t) = thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for MetaWorker {
    fn drop(&mut self) {
        self.stop();
    }
}
