//! Which logs have their files open, by last use: a node keeps at most
//! `StorageConfig::open_logs_max` logs' descriptors open (two each), closing the least
//! recently used idle ones, so thousands of logs fit under the open-files limit.

use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Default)]
pub(super) struct OpenLogs {
    tick: u64,
    by_tick: BTreeMap<u64, u64>,
    tick_of: HashMap<u64, u64>,
}

impl OpenLogs {
    pub fn used(&mut self, id: u64) {
        self.tick += 1;
        if let Some(old) = self.tick_of.insert(id, self.tick) {
            self.by_tick.remove(&old);
        }
        self.by_tick.insert(self.tick, id);
    }

    pub fn closed(&mut self, id: u64) {
        if let Some(t) = self.tick_of.remove(&id) {
            self.by_tick.remove(&t);
        }
    }

    pub fn len(&self) -> usize {
        self.tick_of.len()
    }

    /// Open logs, least recently used first.
    pub fn oldest(&self) -> Vec<u64> {
        self.by_tick.values().copied().collect()
    }
}
