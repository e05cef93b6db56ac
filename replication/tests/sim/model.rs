//! One node's copy of the log, as the simulation keeps it: records (one per frame) from
//! `start`, how far they are durable, the epoch history and the segments, with the same
//! operations the storage offers (append, cut, reset, retention, installing a segment).

use spool_replication::handshake::{ReplicaLog, UpstreamLog};
use spool_replication::sender::{LogView, Span};

/// Records per full segment.
pub const SEGMENT_RECS: u64 = 8;
/// Bytes a record stands for: with 8 per segment, the sender's fetch thresholds (4 MiB)
/// fall inside a segment, so every kind of step is taken.
pub const REC_BYTES: u64 = 1 << 20;

/// A record, identified by the write that made it (`id`), in the epoch of the primary
/// that wrote it, at the primary's time `ts` (ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rec {
    pub id: u64,
    pub epoch: u64,
    pub ts: u64,
}

#[derive(Debug, Clone)]
pub struct Log {
    pub incarnation: u64,
    pub start: u64,
    recs: Vec<Rec>,
    pub durable: u64,
    /// (epoch, first offset) ascending, as the storage keeps it.
    pub epochs: Vec<(u64, u64)>,
    /// Segment bases ascending; the last is the active segment.
    bases: Vec<u64>,
}

impl Log {
    pub fn new(incarnation: u64) -> Log {
        Log {
            incarnation,
            start: 0,
            recs: Vec::new(),
            durable: 0,
            epochs: Vec::new(),
            bases: vec![0],
        }
    }

    pub fn end(&self) -> u64 {
        self.start + self.recs.len() as u64
    }

    pub fn get(&self, offset: u64) -> Option<Rec> {
        let i = offset.checked_sub(self.start)?;
        self.recs.get(usize::try_from(i).ok()?).copied()
    }

    pub fn range(&self, from: u64, to: u64) -> Vec<Rec> {
        (from..to).map_while(|o| self.get(o)).collect()
    }

    /// Whether a frame of `epoch` may follow: the storage refuses an epoch older than
    /// its history's last (the history could not say which epoch wrote it).
    pub fn accepts(&self, epoch: u64) -> Result<(), String> {
        match self.epochs.last() {
            Some(&(e, s)) if epoch < e => Err(format!(
                "a frame of epoch {epoch} at {} after epoch {e} began at {s}",
                self.end()
            )),
            _ => Ok(()),
        }
    }

    /// Append one frame at the end (not durable until [`Log::sync`]).
    pub fn push(&mut self, r: Rec) {
        let end = self.end();
        self.accepts(r.epoch).expect("checked by the caller");
        if self.epochs.last().is_none_or(|&(e, _)| r.epoch > e) {
            self.begin_epoch(r.epoch);
        }
        let active = *self.bases.last().expect("a segment");
        if end - active >= SEGMENT_RECS {
            self.bases.push(end);
        }
        self.recs.push(r);
    }

    /// Record that `epoch` begins at the end (a promotion, or its first frame here).
    pub fn begin_epoch(&mut self, epoch: u64) {
        let end = self.end();
        if self.epochs.last().is_some_and(|&(_, s)| s == end) {
            self.epochs.pop();
        }
        debug_assert!(self.epochs.last().is_none_or(|&(e, _)| e < epoch));
        self.epochs.push((epoch, end));
    }

    pub fn sync(&mut self) {
        self.durable = self.end();
    }

    /// Remove everything from `to` on.
    pub fn truncate(&mut self, to: u64) {
        let to = to.max(self.start);
        self.recs.truncate((to - self.start) as usize);
        self.durable = self.durable.min(to);
        self.epochs.retain(|&(_, s)| s < to);
        self.bases.retain(|&b| b < to);
        if self.bases.is_empty() {
            self.bases.push(to);
        }
    }

    /// Empty the log and continue it from `from` (a full sync, another incarnation).
    pub fn reset(&mut self, from: u64) {
        self.recs.clear();
        self.start = from;
        self.durable = from;
        self.epochs.clear();
        self.bases = vec![from];
    }

    /// Sealed segment bases in `(start, upto]`: where retention may move the start.
    pub fn retention_points(&self, upto: u64) -> Vec<u64> {
        let n = self.bases.len();
        self.bases[..n.saturating_sub(1)]
            .iter()
            .skip(1)
            .copied()
            .filter(|&b| b > self.start && b <= upto)
            .collect()
    }

    /// Remove the segments below `base` (a segment base).
    pub fn retain_from(&mut self, base: u64) {
        assert!(self.bases.contains(&base) && base <= self.durable);
        self.recs.drain(..(base - self.start) as usize);
        self.bases.retain(|&b| b >= base);
        self.start = base;
    }

    /// Put a segment received whole in place at the end, durable, sealed.
    pub fn install(&mut self, base: u64, recs: &[Rec]) {
        assert_eq!(self.end(), base, "an import follows the log's end");
        if *self.bases.last().expect("a segment") != base {
            self.bases.push(base);
        }
        for &r in recs {
            self.accepts(r.epoch).expect("checked by the caller");
            if self.epochs.last().is_none_or(|&(e, _)| r.epoch > e) {
                self.begin_epoch(r.epoch);
            }
            self.recs.push(r);
        }
        self.bases.push(self.end());
        self.sync();
    }

    /// What a replica says of this log in its hello (`staged`: a segment partly received
    /// that begins at its end).
    pub fn hello(&self, staged: Option<(u64, &[Rec])>) -> ReplicaLog {
        let end = self.durable;
        let staged = staged.filter(|&(base, recs)| base == end && !recs.is_empty());
        ReplicaLog {
            incarnation: self.incarnation,
            epochs: self.epochs.clone(),
            last_epoch: self.epochs.last().map_or(0, |&(e, _)| e),
            start: self.start,
            end,
            last_frame: (end > self.start).then(|| (end - 1, crc(self.get(end - 1).unwrap()))),
            staged: staged.map(|(base, recs)| (base + recs.len() as u64, epochs_of(base, recs))),
        }
    }

    /// What an upstream vouches for, up to `visible`.
    pub fn upstream(&self, visible: u64) -> UpstreamLog {
        UpstreamLog {
            incarnation: self.incarnation,
            epochs: self
                .epochs
                .iter()
                .copied()
                .filter(|&(_, s)| s <= visible)
                .collect(),
            start: self.start,
            end: visible,
        }
    }

    /// The epoch history entries' epoch that wrote `offset` (0 below the first).
    pub fn epoch_at(&self, offset: u64) -> u64 {
        let i = self.epochs.partition_point(|&(_, s)| s <= offset);
        i.checked_sub(1).map_or(0, |i| self.epochs[i].0)
    }

    /// A view for the sender, bounded by `visible`.
    pub fn view(&self, visible: u64) -> View<'_> {
        View { log: self, visible }
    }
}

/// The frame's checksum stands for its bytes: equal records, equal checksums.
pub fn crc(r: Rec) -> u32 {
    (r.id as u32) ^ ((r.epoch as u32) << 24)
}

/// The epochs (epoch, first offset) of records laid from `base`.
pub fn epochs_of(base: u64, recs: &[Rec]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (i, r) in recs.iter().enumerate() {
        if out.last().is_none_or(|&(e, _)| e != r.epoch) {
            out.push((r.epoch, base + i as u64));
        }
    }
    out
}

#[derive(Debug)]
pub struct View<'a> {
    log: &'a Log,
    visible: u64,
}

impl LogView for View<'_> {
    fn sealed_segment(&self, offset: u64) -> Option<(u64, u64)> {
        let b = &self.log.bases;
        let i = b.partition_point(|&x| x <= offset).checked_sub(1)?;
        let next = *b.get(i + 1)?;
        (b[i] >= self.log.start && next <= self.visible).then_some((b[i], next))
    }

    fn sealed_bytes_from(&self, base: u64, from: u64) -> Option<u64> {
        let (b, next) = self.sealed_segment(from)?;
        (b == base).then(|| (next - from) * REC_BYTES)
    }

    fn active_span(&self, from: u64) -> Option<Span> {
        let base = *self.log.bases.last().expect("a segment");
        (from >= base && from >= self.log.start && from <= self.visible).then(|| Span {
            base,
            first: from,
            next: self.visible,
            bytes: (self.visible - from) * REC_BYTES,
        })
    }

    fn segment_bytes(&self) -> u64 {
        SEGMENT_RECS * REC_BYTES
    }
}
