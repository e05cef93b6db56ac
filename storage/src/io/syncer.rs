//! Background fdatasyncs: a thread that syncs files while the storage thread writes the
//! next group, so the disk is never idle between a group's sync and the next group's
//! write (see `LogWriter::start_sync`).

use std::fs::File;
use std::io;
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc as tmpsc, oneshot};

/// Where a background sync's result goes: the log's writer (`result`), then the storage
/// thread's loop, woken with the log's id to take it.
#[derive(Debug)]
pub struct SyncDone {
    result: oneshot::Sender<io::Result<()>>,
    wake: tmpsc::UnboundedSender<u64>,
    log: u64,
}

impl SyncDone {
    pub fn new(
        wake: tmpsc::UnboundedSender<u64>,
        log: u64,
    ) -> (SyncDone, oneshot::Receiver<io::Result<()>>) {
        let (result, rx) = oneshot::channel();
        (SyncDone { result, wake, log }, rx)
    }

    pub fn complete(self, res: io::Result<()>) {
        let _ = self.result.send(res);
        let _ = self.wake.send(self.log);
    }
}

/// An fdatasync to run (the fault backend's checks its rules first).
type SyncFn = Box<dyn FnOnce() -> io::Result<()> + Send>;

type Request = (SyncFn, SyncDone);

/// The process's sync thread, started at the first background sync; `None` if it could
/// not be started (the caller then syncs inline).
fn thread() -> Option<&'static mpsc::Sender<Request>> {
    static SYNCER: OnceLock<Option<mpsc::Sender<Request>>> = OnceLock::new();
    SYNCER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Request>();
            let spawned = std::thread::Builder::new()
                .name("spool-sync".into())
                .spawn(move || {
                    for (sync, done) in rx {
                        done.complete(sync());
                    }
                });
            match spawned {
                Ok(_) => Some(tx),
                Err(e) => {
                    tracing::warn!(error = %e, "no sync thread; group commits sync inline");
                    None
                }
            }
        })
        .as_ref()
}

/// fdatasync `file` on the sync thread, `done` hearing the result.
pub(crate) fn sync_in_background(file: Arc<File>, done: SyncDone) {
    run_in_background(Box::new(move || file.sync_data()), done);
}

/// Run `sync` on the sync thread, `done` hearing its result; inline where the thread
/// could not be started.
pub(crate) fn run_in_background(sync: SyncFn, done: SyncDone) {
    match thread() {
        Some(tx) => {
            if let Err(mpsc::SendError((sync, done))) = tx.send((sync, done)) {
                done.complete(sync());
            }
        }
        None => done.complete(sync()),
    }
}
