//! A node's log: records of (epoch, value), the durable end, and the epoch history
//! derived from them (plus an epoch a primary began without writing in it yet).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rec {
    pub epoch: u64,
    /// Unique across the run: who wrote what is told apart by it.
    pub value: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Log {
    pub recs: Vec<Rec>,
    /// Records below it survive a crash.
    pub durable: u64,
    /// An epoch begun at the end with no record in it yet (0: none).
    pub begun: u64,
}

impl Log {
    pub fn end(&self) -> u64 {
        self.recs.len() as u64
    }

    /// (epoch, start) ascending, as the storage keeps it.
    pub fn history(&self) -> Vec<(u64, u64)> {
        let mut h: Vec<(u64, u64)> = Vec::new();
        for (o, r) in self.recs.iter().enumerate() {
            if h.last().is_none_or(|&(e, _)| e != r.epoch) {
                h.push((r.epoch, o as u64));
            }
        }
        if self.begun > h.last().map_or(0, |&(e, _)| e) {
            h.push((self.begun, self.end()));
        }
        h
    }

    /// The history of the durable records (what an upstream or a peer serves).
    pub fn durable_history(&self) -> Vec<(u64, u64)> {
        let mut h = self.history();
        h.retain(|&(_, s)| s <= self.durable);
        h
    }

    /// The last epoch of the history.
    pub fn current_epoch(&self) -> u64 {
        self.recs.last().map_or(0, |r| r.epoch).max(self.begun)
    }

    /// A primary's first write in `epoch` begins it here.
    pub fn begin_epoch(&mut self, epoch: u64) {
        assert!(epoch >= self.current_epoch(), "epochs only grow in a log");
        self.begun = epoch;
    }

    pub fn push(&mut self, r: Rec) {
        assert!(
            r.epoch >= self.current_epoch(),
            "a record of an older epoch"
        );
        self.recs.push(r);
    }

    /// Records taken from an upstream at `at` (its end).
    pub fn append(&mut self, at: u64, recs: &[Rec]) {
        assert_eq!(at, self.end(), "replicated records land at the end");
        self.begun = 0;
        self.recs.extend_from_slice(recs);
    }

    pub fn truncate(&mut self, to: u64) {
        assert!(to <= self.end());
        self.recs.truncate(to as usize);
        self.durable = self.durable.min(to);
        self.begun = 0;
    }

    pub fn sync(&mut self) {
        self.durable = self.end();
    }

    /// A crash keeps what was durable.
    pub fn crash(&mut self) {
        self.recs.truncate(self.durable as usize);
    }

    pub fn get(&self, o: u64) -> Option<Rec> {
        self.recs.get(o as usize).copied()
    }
}
