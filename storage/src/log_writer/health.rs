//! Whether a log takes writes: not over damage at its end (until a repair or a cut), not
//! once poisoned (a change to its files failed half-way, or a write or sync failed, so
//! the disk and this writer may disagree until a restart re-reads the disk).

use super::LogWriter;
use crate::error::{Result, StorageError};
use crate::io::IoFile;

impl<F: IoFile> LogWriter<F> {
    /// Writes land at the end: not over damage, not after a failed write.
    pub(super) fn check_writable(&self) -> Result<()> {
        if let Some((offset, _)) = self.damaged {
            return Err(StorageError::Damaged {
                log: self.shared.name.clone(),
                offset,
            });
        }
        self.check_poison()
    }

    pub(super) fn check_poison(&self) -> Result<()> {
        match &*self.shared.poisoned.lock() {
            Some(cause) => Err(StorageError::Poisoned {
                log: self.shared.name.clone(),
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    pub(super) fn is_poisoned(&self) -> bool {
        self.shared.poisoned.lock().is_some()
    }

    /// Refuse writes until a restart: a change to the files failed half-way, and the disk
    /// and this writer may disagree.
    pub(super) fn poison(&self, e: &StorageError) {
        let mut p = self.shared.poisoned.lock();
        if p.is_none() {
            *p = Some(e.to_string());
            tracing::error!(log = %self.shared.name, error = %e, "changing the log's files failed; log refuses writes until restart");
        }
    }
}
