//! Which segments retention or an explicit `delete_before` may remove: whole segments only,
//! oldest first, never the active one, never one holding records at or above the floor
//! (what replication still needs).

use std::sync::atomic::Ordering;

use crate::log::LogShared;

/// Number of leading segments whose records all lie below `offset`.
pub(crate) fn segments_below(log: &LogShared, offset: u64) -> usize {
    let segs = log.segments.read();
    // Segment i ends where segment i+1 begins; the last (active) one is never counted.
    segs.windows(2)
        .take_while(|w| w[1].base_offset <= offset)
        .count()
}

/// Number of leading segments that retention by size and age removes at `now_us`.
pub(crate) fn segments_to_delete(log: &LogShared, now_us: u64) -> usize {
    let c = &log.config;
    if c.retention_bytes.is_none() && c.retention_ms.is_none() {
        return 0;
    }
    let floor = log.retention_floor.load(Ordering::Acquire);
    let segs = log.segments.read();
    let mut total: u64 = segs.iter().map(|s| s.durable_len()).sum();
    let mut n = 0;
    for w in segs.windows(2) {
        let (seg, next) = (&w[0], &w[1]);
        if next.base_offset > floor {
            break;
        }
        // Keep at least retention_bytes: delete only if what remains still covers it.
        let by_size = c
            .retention_bytes
            .is_some_and(|keep| total - seg.durable_len() >= keep);
        let by_age = c
            .retention_ms
            .is_some_and(|ms| seg.last_ts_us().saturating_add(ms * 1000) < now_us);
        if !(by_size || by_age) {
            break;
        }
        total -= seg.durable_len();
        n += 1;
    }
    n
}
