//! Idempotent appends: per log, the last batches each producer appended, so that a retried
//! append is answered with its original offsets instead of being written twice.
//!
//! An idempotent append carries (producer id, sequence) in its frame's producer extension
//! (see `format`). The storage thread, which serializes a log's appends, checks it against
//! the [`ProducerTable`] before it stamps the frame ([`ProducerTable::check`]):
//! - an unknown producer (new, expired, evicted or forgotten) is accepted;
//! - a sequence among the producer's last [`BATCHES_KEPT`] batches is a duplicate: the
//!   original ack is answered and nothing is written;
//! - the last sequence + 1 is accepted;
//! - any other sequence at or below the last is refused (appended before, its offsets no
//!   longer known), any other above it is out of order.
//!
//! Replicas record the producers of the frames they append, so a promoted replica answers
//! retries as its primary would have.
//!
//! # Persistence
//!
//! The table is rebuilt from the frames themselves. A snapshot ([`FILE`]) holds the table
//! as of an offset it covers (only batches below it); it is written at a clean shutdown,
//! before a segment rolls, after an imported segment is put in place and after a
//! truncation (which removes it first). Open loads it and observes the frames of the
//! active segment past that offset ([`rebuild`]), so start-up reads at most one segment.
//! A log that never saw an idempotent append has no snapshot and no frames are read for
//! it: the first producer a log records writes one (covering the active segment's base),
//! so a missing file means there is nothing to find. A damaged snapshot, or one that does
//! not cover the active segment (its roll's write failed), leaves the producers of the
//! active segment's frames only: older ones are forgotten, as if they had expired.
//!
//! Snapshot layout, little endian: magic `SPLPRODS`, version u32 ([`VERSION`]), covered
//! offset u64, row count u64, then rows of six u64 (producer id, sequence, base offset,
//! record count, epoch, timestamp µs), least recently written producer first, and a crc32
//! of every byte before it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};

use crate::config::{StorageConfig, PRODUCERS_MAX_DEFAULT, PRODUCER_EXPIRY_MS_DEFAULT};
use crate::crashsafe::replace_file_with;
use crate::error::{Result, StorageError};
use crate::format::{self, BatchHeader, ProducerSeq, RECORDS_PER_BATCH_MAX};
use crate::io::MetaIo;
use crate::segment::SegmentView;

/// Batches kept per producer: how many pipelined requests a retry may reach back.
pub(crate) const BATCHES_KEPT: usize = 5;
pub(crate) const FILE: &str = "producers";
const MAGIC: &[u8; 8] = b"SPLPRODS";
const VERSION: u32 = 1;
const HEAD_BYTES: usize = 8 + 4 + 8 + 8;
const ROW_BYTES: usize = 6 * 8;

/// Bounds of a log's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProducerLimits {
    /// Producers kept; the least recently written goes first.
    pub producers_max: usize,
    /// A producer whose last batch is older than this (by frame timestamps) is forgotten.
    pub expiry_us: u64,
}

impl Default for ProducerLimits {
    fn default() -> Self {
        ProducerLimits {
            producers_max: PRODUCERS_MAX_DEFAULT,
            expiry_us: PRODUCER_EXPIRY_MS_DEFAULT * 1000,
        }
    }
}

impl ProducerLimits {
    /// For rebuilding at open, before the writer applies the configured bounds: a snapshot
    /// holds at most what they kept, the active segment's frames a bounded number more.
    const NONE: ProducerLimits = ProducerLimits {
        producers_max: usize::MAX,
        expiry_us: u64::MAX,
    };

    pub fn of(config: &StorageConfig) -> Self {
        ProducerLimits {
            producers_max: config.producers_max,
            expiry_us: u64::try_from(config.producer_expiry.as_micros()).unwrap_or(u64::MAX),
        }
    }
}

/// One batch a producer appended: what its ack said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeptBatch {
    pub sequence: u64,
    pub base_offset: u64,
    pub record_count: u32,
    pub epoch: u64,
    pub ts_us: u64,
}

impl KeptBatch {
    pub fn of_frame(p: ProducerSeq, h: &BatchHeader) -> KeptBatch {
        KeptBatch {
            sequence: p.sequence,
            base_offset: h.base_offset,
            record_count: h.record_count,
            epoch: h.epoch,
            ts_us: h.last_ts_us,
        }
    }

    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }
}

/// What to do with an idempotent append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Append,
    /// A retry of this batch: answer with it, write nothing.
    Duplicate(KeptBatch),
}

#[derive(Debug)]
struct Entry {
    /// Oldest first, in log order; never empty, at most [`BATCHES_KEPT`].
    batches: VecDeque<KeptBatch>,
    /// Key in `ProducerTable::lru`.
    stamp: u64,
}

/// Producers of one log and their last batches. No IO: see [`Producers`].
#[derive(Debug, Default)]
pub(crate) struct ProducerTable {
    entries: HashMap<u64, Entry>,
    /// Write order: stamp -> producer id, least recently written first.
    lru: BTreeMap<u64, u64>,
    next_stamp: u64,
    limits: ProducerLimits,
}

impl ProducerTable {
    pub fn new(limits: ProducerLimits) -> Self {
        ProducerTable {
            limits,
            ..ProducerTable::default()
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn expired(&self, e: &Entry, now_us: u64) -> bool {
        let last = e.batches.back().map_or(0, |b| b.ts_us);
        last.saturating_add(self.limits.expiry_us) < now_us
    }

    /// Apply the sequence rules (module docs) to an append of `p` at time `now_us`.
    pub fn check(&mut self, p: ProducerSeq, now_us: u64, log: &str) -> Result<Verdict> {
        let Some(e) = self.entries.get(&p.producer_id) else {
            return Ok(Verdict::Append);
        };
        if self.expired(e, now_us) {
            self.remove(p.producer_id);
            return Ok(Verdict::Append);
        }
        if let Some(b) = e.batches.iter().find(|b| b.sequence == p.sequence) {
            return Ok(Verdict::Duplicate(*b));
        }
        let last = e.batches.back().expect("an entry has a batch").sequence;
        match last.checked_add(1) {
            Some(next) if next == p.sequence => Ok(Verdict::Append),
            _ if p.sequence <= last => Err(StorageError::SequenceTooOld {
                log: log.to_owned(),
                producer_id: p.producer_id,
                sequence: p.sequence,
                last,
                kept: BATCHES_KEPT,
            }),
            _ => Err(StorageError::SequenceOutOfOrder {
                log: log.to_owned(),
                producer_id: p.producer_id,
                sequence: p.sequence,
                expected: last.wrapping_add(1),
            }),
        }
    }

    /// Note a batch of `p` the log now holds (after every batch before it).
    pub fn record(&mut self, p: ProducerSeq, batch: KeptBatch) {
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        let e = self.entries.entry(p.producer_id).or_insert_with(|| Entry {
            batches: VecDeque::with_capacity(BATCHES_KEPT),
            stamp,
        });
        self.lru.remove(&e.stamp);
        e.stamp = stamp;
        e.batches.push_back(batch);
        if e.batches.len() > BATCHES_KEPT {
            e.batches.pop_front();
        }
        self.lru.insert(stamp, p.producer_id);
        self.trim(batch.ts_us);
    }

    /// Note the batch of `frame` if it is an idempotent append's.
    pub fn observe(&mut self, frame: &[u8], h: &BatchHeader) {
        if let Some(p) = h.producer(frame) {
            self.record(p, KeptBatch::of_frame(p, h));
        }
    }

    /// Forget every batch not wholly below `offset` (the log was cut there, or a failed
    /// write dropped what followed): a retry of it must be appended again.
    pub fn forget_from(&mut self, offset: u64) {
        let mut gone = Vec::new();
        for (&id, e) in self.entries.iter_mut() {
            while e.batches.back().is_some_and(|b| b.next_offset() > offset) {
                e.batches.pop_back();
            }
            if e.batches.is_empty() {
                gone.push(id);
            }
        }
        for id in gone {
            self.remove(id);
        }
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.lru.clear();
    }

    /// Take over `other`'s batches, which follow this table's in the log.
    pub fn merge(&mut self, other: ProducerTable) {
        let ProducerTable {
            mut entries, lru, ..
        } = other;
        for id in lru.into_values() {
            let e = entries.remove(&id).expect("every lru key has an entry");
            for b in e.batches {
                self.record(ProducerSeq::new(id, b.sequence), b);
            }
        }
    }

    /// Change the bounds, and apply them as of `now_us`.
    pub fn set_limits(&mut self, limits: ProducerLimits, now_us: u64) {
        self.limits = limits;
        self.trim(now_us);
    }

    /// Drop expired producers (least recently written first; write order follows time,
    /// which never goes back within a log), then the least recent beyond the bound.
    fn trim(&mut self, now_us: u64) {
        while let Some((_, &id)) = self.lru.first_key_value() {
            let over = self.entries.len() > self.limits.producers_max;
            if !over && !self.expired(&self.entries[&id], now_us) {
                break;
            }
            self.remove(id);
        }
    }

    fn remove(&mut self, id: u64) {
        if let Some(e) = self.entries.remove(&id) {
            self.lru.remove(&e.stamp);
        }
    }

    /// (producer id, batch) below `covers`, least recently written producer first.
    fn rows_below(&self, covers: u64) -> impl Iterator<Item = (u64, KeptBatch)> + '_ {
        self.lru.values().flat_map(move |&id| {
            self.entries[&id]
                .batches
                .iter()
                .filter(move |b| b.next_offset() <= covers)
                .map(move |&b| (id, b))
        })
    }
}

fn encode(table: &ProducerTable, covers: u64) -> Vec<u8> {
    let rows: Vec<(u64, KeptBatch)> = table.rows_below(covers).collect();
    let mut out = Vec::with_capacity(HEAD_BYTES + rows.len() * ROW_BYTES + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&covers.to_le_bytes());
    out.extend_from_slice(&(rows.len() as u64).to_le_bytes());
    for (id, b) in rows {
        let count = u64::from(b.record_count);
        for v in [id, b.sequence, b.base_offset, count, b.epoch, b.ts_us] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn word(b: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
}

/// The table a snapshot holds and the offset it covers; checks magic, version, CRC, then
/// every length and row before trusting it.
fn decode(bytes: &[u8], limits: ProducerLimits) -> Result<(ProducerTable, u64), String> {
    let split = bytes.len().checked_sub(4).ok_or("shorter than its CRC")?;
    let (body, crc) = bytes.split_at(split);
    let head = body.get(..HEAD_BYTES).ok_or("shorter than its header")?;
    if &head[..8] != MAGIC {
        return Err("bad magic".into());
    }
    let version = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(format!("unknown version {version}"));
    }
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err("CRC mismatch".into());
    }
    let covers = word(&head[12..], 0);
    let rows = &body[HEAD_BYTES..];
    if rows.len() % ROW_BYTES != 0 || (rows.len() / ROW_BYTES) as u64 != word(&head[12..], 1) {
        return Err("row count does not match the file's length".into());
    }
    let mut table = ProducerTable::new(limits);
    for r in rows.chunks_exact(ROW_BYTES) {
        let count = u32::try_from(word(r, 3)).ok().filter(|&c| c >= 1);
        let count = count
            .filter(|&c| c <= RECORDS_PER_BATCH_MAX)
            .ok_or("bad count")?;
        let base = word(r, 2);
        if base
            .checked_add(u64::from(count))
            .is_none_or(|n| n > covers)
        {
            return Err(format!(
                "a batch at {base} past the covered offset {covers}"
            ));
        }
        let batch = KeptBatch {
            sequence: word(r, 1),
            base_offset: base,
            record_count: count,
            epoch: word(r, 4),
            ts_us: word(r, 5),
        };
        table.record(ProducerSeq::new(word(r, 0), batch.sequence), batch);
    }
    Ok((table, covers))
}

/// A log's table and its snapshot file; owned by the log's writer on the storage thread.
#[derive(Debug)]
pub(crate) struct Producers {
    pub table: ProducerTable,
    dir: PathBuf,
    /// The log has had producers: a snapshot exists (or its first write was tried), and
    /// is kept current at rolls and shutdown. False: no idempotent append was ever seen.
    tracked: bool,
}

impl Producers {
    /// Note a batch the log now holds; the first a log ever records also writes the
    /// snapshot that makes the next open look for producers in the active segment.
    pub fn record(&mut self, io: &dyn MetaIo, p: ProducerSeq, batch: KeptBatch, active_base: u64) {
        self.table.record(p, batch);
        if !self.tracked {
            self.tracked = true;
            self.save(io, active_base);
        }
    }

    /// [`Producers::record`] for the batch of a replicated `frame`, if it has a producer.
    pub fn observe(&mut self, io: &dyn MetaIo, frame: &[u8], h: &BatchHeader, active_base: u64) {
        if let Some(p) = h.producer(frame) {
            self.record(io, p, KeptBatch::of_frame(p, h), active_base);
        }
    }

    /// Write the snapshot covering the log up to `covers` (a durable frame boundary) if
    /// the log has producers (see [`Producers::snapshot`]).
    pub fn save(&mut self, io: &dyn MetaIo, covers: u64) {
        if let Some(s) = self.snapshot(covers) {
            s.write(io);
        }
    }

    /// Whether the log has had producers (see the field).
    pub fn tracked(&self) -> bool {
        self.tracked
    }

    /// The snapshot a log's first producer writes, covering the active segment's base
    /// `covers` (see [`Producers::record`]); the log has producers from now on.
    pub fn first_snapshot(&mut self, covers: u64) -> Snapshot {
        self.tracked = true;
        Snapshot {
            path: self.dir.join(FILE),
            bytes: encode(&self.table, covers),
        }
    }

    /// The snapshot covering the log up to `covers`, to write now or off the storage
    /// thread; `None` if the log never had producers.
    pub fn snapshot(&mut self, covers: u64) -> Option<Snapshot> {
        if !self.tracked && self.table.is_empty() {
            return None;
        }
        self.tracked = true;
        Some(Snapshot {
            path: self.dir.join(FILE),
            bytes: encode(&self.table, covers),
        })
    }

    /// The snapshot's file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// The snapshot was removed before a cut (by its job: it may cover offsets that will
    /// hold other records); saved again after it, or marked again by the next producer.
    pub fn unsaved(&mut self) {
        self.tracked = false;
    }

    /// The log was cut to end at `end`: forget the batches cut.
    pub fn forget_from(&mut self, end: u64) {
        self.table.forget_from(end);
    }

    /// Every record went (a reset): forget every batch.
    pub fn clear(&mut self) {
        self.table.clear();
    }
}

/// A producers snapshot, encoded, to be written.
#[derive(Debug)]
pub(crate) struct Snapshot {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl Snapshot {
    /// Replace the snapshot file. A failure is logged, not returned: the next open then
    /// knows fewer producers (as if expired), never wrong offsets.
    pub fn write(&self, io: &dyn MetaIo) {
        if let Err(e) = replace_file_with(io, &self.path, &self.bytes) {
            tracing::warn!(file = %self.path.display(), error = %e, "writing the producers snapshot failed; the next open may forget older producers");
        }
    }
}

/// The producers of a log being opened: the snapshot, then the frames of the active
/// segment `active` from the offset it covers to `end` (frames recovery has validated).
/// Not bounded here: the writer applies the configured bounds when it takes the log.
pub(crate) fn rebuild(dir: &Path, active: &SegmentView, end: u64) -> Producers {
    let path = dir.join(FILE);
    let limits = ProducerLimits::NONE;
    let bytes = match fs::read(&path) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Producers {
                table: ProducerTable::new(limits),
                dir: dir.to_owned(),
                tracked: false,
            }
        }
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot read the producers snapshot");
            None
        }
    };
    let base = active.base_offset;
    let loaded = bytes.map(|b| decode(&b, limits)).and_then(|r| {
        r.inspect_err(|reason| tracing::warn!(file = %path.display(), %reason, "ignoring a damaged producers snapshot"))
            .ok()
    });
    let mut table = match loaded {
        Some((t, covers)) if (base..=end).contains(&covers) => {
            observe_segment(t, active, covers, end)
        }
        _ => None,
    };
    if table.is_none() {
        tracing::info!(file = %path.display(), base, "producers rebuilt from the active segment only; older ones are forgotten");
        table = observe_segment(ProducerTable::new(limits), active, base, end);
    }
    Producers {
        table: table.unwrap_or_else(|| ProducerTable::new(limits)),
        dir: dir.to_owned(),
        tracked: true,
    }
}

/// `table` with the producers of `seg`'s frames from offset `from` (a frame boundary) to
/// `end` observed; `None` where `from` is not where a frame starts. Headers are bounded
/// by recovery; a frame with a producer is CRC-checked too, since a damaged one would
/// answer retries with wrong offsets (it is skipped: those retries are appended).
fn observe_segment(
    mut table: ProducerTable,
    seg: &SegmentView,
    from: u64,
    end: u64,
) -> Option<ProducerTable> {
    let mut pos = if from == end || from == seg.base_offset {
        0
    } else {
        let f = seg.locate(from).ok().flatten()?;
        (f.header.base_offset == from).then_some(f.pos)? as usize
    };
    if from == end {
        return Some(table);
    }
    let bytes = &seg.raw()[..seg.durable_len() as usize];
    while let Ok(h) = format::peek_header(&bytes[pos..]) {
        let Some(frame) = bytes.get(pos..pos + h.frame_len as usize) else {
            break;
        };
        if h.has_producer() && format::check_frame(frame).is_ok() {
            table.observe(frame, &h);
        }
        pos += frame.len();
    }
    Some(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "t";
    const DAY_US: u64 = 24 * 3600 * 1_000_000;

    fn batch(sequence: u64, base_offset: u64, ts_us: u64) -> KeptBatch {
        KeptBatch {
            sequence,
            base_offset,
            record_count: 2,
            epoch: 3,
            ts_us,
        }
    }

    /// A table where producer `id` appended sequences `seqs` (2 records each, from `at`).
    fn table_with(id: u64, seqs: std::ops::Range<u64>, at: u64) -> ProducerTable {
        let mut t = ProducerTable::default();
        for (i, s) in seqs.enumerate() {
            t.record(ProducerSeq::new(id, s), batch(s, at + 2 * i as u64, 1000));
        }
        t
    }

    #[test]
    fn sequence_rules() {
        let mut t = table_with(7, 0..8, 100);
        let check = |t: &mut ProducerTable, s| t.check(ProducerSeq::new(7, s), 1000, LOG);
        // The next one, and any sequence of an unknown producer, is appended.
        assert_eq!(check(&mut t, 8).unwrap(), Verdict::Append);
        let other = t.check(ProducerSeq::new(8, 99), 1000, LOG).unwrap();
        assert_eq!(other, Verdict::Append);
        // The last five are answered with their batches.
        for s in 3..8 {
            let want = batch(s, 100 + 2 * s, 1000);
            assert_eq!(check(&mut t, s).unwrap(), Verdict::Duplicate(want));
        }
        let old = check(&mut t, 2).unwrap_err();
        assert!(matches!(
            old,
            StorageError::SequenceTooOld {
                sequence: 2,
                last: 7,
                ..
            }
        ));
        let gap = check(&mut t, 10).unwrap_err();
        assert!(matches!(
            gap,
            StorageError::SequenceOutOfOrder {
                sequence: 10,
                expected: 8,
                ..
            }
        ));
        assert!(gap.to_string().contains("expected 8") && gap.to_string().contains(" 10 "));
    }

    #[test]
    fn least_recently_written_producers_are_evicted() {
        let limits = ProducerLimits {
            producers_max: 3,
            expiry_us: DAY_US,
        };
        let mut t = ProducerTable::new(limits);
        for id in 1..=3 {
            t.record(ProducerSeq::new(id, 0), batch(0, id * 10, 1000));
        }
        // Producer 1 writes again: 2 is now the least recent, and goes for 4.
        t.record(ProducerSeq::new(1, 1), batch(1, 40, 1000));
        t.record(ProducerSeq::new(4, 0), batch(0, 50, 1000));
        assert_eq!(t.len(), 3);
        let known = |t: &mut ProducerTable, id| {
            t.check(ProducerSeq::new(id, 0), 1000, LOG).unwrap() != Verdict::Append
        };
        assert!(known(&mut t, 1) && known(&mut t, 3) && known(&mut t, 4));
        assert!(!known(&mut t, 2));
    }

    #[test]
    fn producers_expire_by_frame_time() {
        let mut t = ProducerTable::new(ProducerLimits {
            producers_max: 10,
            expiry_us: DAY_US,
        });
        t.record(ProducerSeq::new(1, 0), batch(0, 0, 1000));
        t.record(ProducerSeq::new(2, 0), batch(0, 2, 1000 + DAY_US));
        let dup = t.check(ProducerSeq::new(1, 0), 1000 + DAY_US, LOG).unwrap();
        assert!(matches!(dup, Verdict::Duplicate(_)));
        // A day and a microsecond after its last batch, producer 1 is unknown.
        let later = 1001 + DAY_US;
        let p = ProducerSeq::new(1, 0);
        assert_eq!(t.check(p, later, LOG).unwrap(), Verdict::Append);
        // A write at a later time drops whoever expired by then.
        t.record(ProducerSeq::new(3, 0), batch(0, 4, 1001 + 2 * DAY_US));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_cut_forgets_the_batches_it_reaches() {
        let mut t = table_with(7, 0..4, 10);
        t.record(ProducerSeq::new(8, 0), batch(0, 18, 1000));
        // Batches at 10, 12, 14, 16 (two records each) and 18: a cut at 15 reaches into
        // the one at 14, which is forgotten with those after it.
        t.forget_from(15);
        let p = |s| ProducerSeq::new(7, s);
        assert_eq!(t.check(p(2), 1000, LOG).unwrap(), Verdict::Append);
        assert!(matches!(
            t.check(p(1), 1000, LOG),
            Ok(Verdict::Duplicate(_))
        ));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn snapshot_round_trip_keeps_order_and_covers() {
        let mut t = table_with(7, 0..7, 0);
        t.record(ProducerSeq::new(9, 4), batch(4, 14, 1000));
        t.record(ProducerSeq::new(7, 7), batch(7, 16, 1000));
        let bytes = encode(&t, 16);
        let (back, covers) = decode(&bytes, ProducerLimits::default()).unwrap();
        assert_eq!(covers, 16);
        // The batch at 16 is past what the snapshot covers: left for the frames to tell.
        let rows: Vec<_> = back.rows_below(u64::MAX).collect();
        assert_eq!(rows, t.rows_below(16).collect::<Vec<_>>());
        // Least recently written first: 9, then 7 (whose last write was later).
        assert_eq!(rows.first().map(|r| r.0), Some(9));
        assert_eq!(rows.last().map(|r| r.0), Some(7));
        assert_eq!(rows.len(), 5);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(decode(&bad, ProducerLimits::default()).is_err(), "byte {i}");
        }
        assert!(decode(&bytes[..bytes.len() - 1], ProducerLimits::default()).is_err());
    }

    #[test]
    fn merge_follows_the_table() {
        let mut t = table_with(7, 0..2, 0);
        t.merge(table_with(7, 2..4, 4));
        let dup = t.check(ProducerSeq::new(7, 3), 1000, LOG).unwrap();
        assert_eq!(dup, Verdict::Duplicate(batch(3, 6, 1000)));
        assert_eq!(
            t.check(ProducerSeq::new(7, 4), 1000, LOG).unwrap(),
            Verdict::Append
        );
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
                sealed in proptest::prelude::any::<bool>()) {
            // Garbage, and garbage behind a valid magic and version under a good CRC.
            let mut bytes = body.clone();
            if sealed {
                bytes = [&MAGIC[..], &VERSION.to_le_bytes(), &body].concat();
                let crc = crc32fast::hash(&bytes);
                bytes.extend_from_slice(&crc.to_le_bytes());
            }
            let _ = decode(&bytes, ProducerLimits::default());
        }
    }
}
