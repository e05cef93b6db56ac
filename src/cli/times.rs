//! Times as people read them: RFC 3339 in UTC with how long ago
//! (`2026-12-06T13:01:50Z (12.3s ago)`), never raw microseconds.

use std::time::{SystemTime, UNIX_EPOCH};

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01 (Howard
/// Hinnant's algorithm; the inverse of `admin::days_from_civil`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `unix_us` as RFC 3339 UTC, to the second.
pub fn rfc3339(unix_us: u64) -> String {
    let secs = (unix_us / 1_000_000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let (h, mi, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// A duration in microseconds, short: 12.3s, 4m05s, 2h03m, 3d04h.
pub fn span(us: u64) -> String {
    let s = us / 1_000_000;
    match s {
        0..60 => format!("{:.1}s", us as f64 / 1e6),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// `unix_us` with its age relative to `now_us`: `2026-12-06T13:01:50Z (12.3s ago)`.
pub fn with_age_at(unix_us: u64, now_us: u64) -> String {
    let age = if now_us >= unix_us {
        format!("{} ago", span(now_us - unix_us))
    } else {
        format!("in {}", span(unix_us - now_us))
    };
    format!("{} ({age})", rfc3339(unix_us))
}

/// `unix_us` with its age now.
pub fn with_age(unix_us: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    with_age_at(unix_us, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_rfc3339_with_age() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400_000_000), "2000-02-29T00:00:00Z");
        // The inverse of --at-time's parser.
        let t = super::super::admin::parse_time_us("2026-12-06T13:01:50Z").unwrap();
        assert_eq!(rfc3339(t + 999_999), "2026-12-06T13:01:50Z");
        assert_eq!(
            with_age_at(t, t + 12_300_000),
            "2026-12-06T13:01:50Z (12.3s ago)"
        );
        assert_eq!(
            with_age_at(t + 5_000_000, t),
            "2026-12-06T13:01:55Z (in 5.0s)"
        );
        assert_eq!(span(245_000_000), "4m05s");
        assert_eq!(span(7_380_000_000), "2h03m");
        assert_eq!(span(273_600_000_000), "3d04h");
    }
}
