//! The logs this node has, and a version bumped whenever they come and go: the handle
//! through which services and replication sessions reach the storage.

use std::sync::Arc;

use spool_storage::{Log, Storage, StorageError};
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct Catalog {
    storage: Storage,
    version: Arc<watch::Sender<u64>>,
}

impl Catalog {
    pub fn new(storage: Storage) -> Catalog {
        Catalog {
            storage,
            version: Arc::new(watch::Sender::new(0)),
        }
    }

    /// The storage, for what changes the catalog (create, delete) or its settings; say
    /// [`Catalog::changed`] after a change.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    pub fn log(&self, name: &str) -> Result<Log, StorageError> {
        self.storage.log(name)
    }

    pub fn names(&self) -> Vec<String> {
        self.storage.list_logs()
    }

    /// Logs were created or deleted: replication sessions look again.
    pub fn changed(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// Wakes on every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}
