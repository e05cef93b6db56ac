//! A delayed replica's visibility, as a policy: which of the records it stores readers,
//! subscribers and downstream replicas may see. Records become visible in log order once
//! the primary wrote them at least the delay ago (their timestamps are the primary's), so
//! the visible part is always a prefix, bounded by a *horizon* offset that only moves
//! back when the log is cut.

use std::time::Duration;

/// Records the primary wrote at or before this time (unix microseconds) are visible: `now`
/// minus the delay, or the cutoff frozen by a pause.
pub fn cutoff_us(now_us: u64, delay: Duration, paused_cutoff_us: Option<u64>) -> u64 {
    paused_cutoff_us.unwrap_or_else(|| {
        now_us.saturating_sub(u64::try_from(delay.as_micros()).unwrap_or(u64::MAX))
    })
}

/// Where a scan for the horizon starts: the last horizon, never below the log's start
/// (retention or a reset moved it) nor past its durable end.
pub fn scan_from(horizon: u64, start: u64, durable: u64) -> u64 {
    horizon.clamp(start, durable.max(start))
}

/// The horizon after the frames from `from` on, given in log order as (offset past the
/// frame, newest record's timestamp): past every frame not newer than `cutoff_us`,
/// stopping at the first newer one (never skipping ahead).
pub fn scan(from: u64, frames: impl IntoIterator<Item = (u64, u64)>, cutoff_us: u64) -> u64 {
    frames
        .into_iter()
        .take_while(|&(_, ts)| ts <= cutoff_us)
        .last()
        .map_or(from, |(next, _)| next.max(from))
}

/// The horizon once the log is cut to `to` (`reset`: emptied and continued from `to`).
/// It is lowered before the cut, so nothing about to be removed is ever visible.
pub fn after_cut(horizon: u64, to: u64, reset: bool) -> u64 {
    if reset {
        to
    } else {
        horizon.min(to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_horizon_passes_old_enough_frames_in_order() {
        let frames = [(11, 100), (12, 150), (13, 300), (14, 120)];
        assert_eq!(scan(10, frames, 200), 12, "stops at the first newer frame");
        assert_eq!(scan(10, frames, 50), 10);
        assert_eq!(scan(10, frames, 400), 14);
        assert_eq!(scan(10, [], 400), 10);
    }

    #[test]
    fn cutoff_is_now_minus_the_delay_unless_paused() {
        let d = Duration::from_secs(2);
        assert_eq!(cutoff_us(5_000_000, d, None), 3_000_000);
        assert_eq!(cutoff_us(1_000_000, d, None), 0);
        assert_eq!(cutoff_us(5_000_000, d, Some(42)), 42);
    }

    #[test]
    fn cuts_lower_the_horizon_and_resets_move_it() {
        assert_eq!(after_cut(50, 30, false), 30);
        assert_eq!(after_cut(20, 30, false), 20);
        assert_eq!(after_cut(20, 30, true), 30);
        assert_eq!(scan_from(5, 10, 40), 10);
        assert_eq!(scan_from(50, 10, 40), 40);
    }
}
