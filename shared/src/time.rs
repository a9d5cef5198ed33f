//! Timestamps: Vigil carries time as milliseconds since the Unix epoch (`i64`) on the wire and
//! in storage, and shows it as RFC 3339 (UTC, millisecond precision) to people and JSON clients.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// The latest time [`to_rfc3339`] can write: `9999-12-31T23:59:59.999Z` (RFC 3339 has
/// four-digit years).
pub const MAX_RENDERABLE_MS: i64 = 253_402_300_799_999;

/// Formats epoch milliseconds as RFC 3339 with milliseconds, e.g. `2026-01-20T12:34:56.789Z`.
///
/// Never panics, whatever the input: what enters Vigil is range-checked
/// ([`crate::validate::timestamp`]), but a stored value from before those checks (or from a
/// damaged record) must still render. Times before the epoch are clamped to
/// `1970-01-01T00:00:00.000Z`, times after year 9999 to `9999-12-31T23:59:59.999Z` (the
/// [`MAX_RENDERABLE_MS`]), so the output is always a valid RFC 3339 timestamp and a clamped
/// value is recognisable by being exactly one of those two.
pub fn to_rfc3339(ms: i64) -> String {
    let clamped = u64::try_from(ms.clamp(0, MAX_RENDERABLE_MS)).unwrap_or(0);
    let t = UNIX_EPOCH + Duration::from_millis(clamped);
    let mut out = String::with_capacity(24);
    // The clamp keeps the time inside what humantime can write; should it still refuse,
    // the upper bound is written rather than panicking (`to_string` would).
    if write!(out, "{}", humantime::format_rfc3339_millis(t)).is_err() {
        out = "9999-12-31T23:59:59.999Z".to_string();
    }
    out
}

/// Parses a point in time given either as RFC 3339 (`2026-01-20T12:34:56Z`) or as an integer
/// count of milliseconds since the epoch.
pub fn parse_time(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let t = humantime::parse_rfc3339_weak(text).map_err(|e| {
        format!("`{text}` is neither RFC 3339 (2026-01-20T12:34:56Z) nor epoch milliseconds: {e}")
    })?;
    let d = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| format!("`{text}` is before 1970"))?;
    i64::try_from(d.as_millis()).map_err(|_| format!("`{text}` is too far in the future"))
}

/// Parses a duration such as `5s`, `500ms`, `10m`, `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration like 5s, 500ms or 10m: {e}"))
}

/// Formats a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_through_parse() {
        let ms = 1_768_912_496_789;
        let text = to_rfc3339(ms);
        assert_eq!(text, "2026-01-20T12:34:56.789Z");
        assert_eq!(parse_time(&text), Ok(ms));
    }

    #[test]
    fn any_i64_renders_without_panicking() {
        assert_eq!(to_rfc3339(-1), "1970-01-01T00:00:00.000Z");
        assert_eq!(to_rfc3339(i64::MIN), "1970-01-01T00:00:00.000Z");
        assert_eq!(to_rfc3339(MAX_RENDERABLE_MS), "9999-12-31T23:59:59.999Z");
        // Year 10000 and beyond: the latest writable time.
        assert_eq!(to_rfc3339(253_402_300_800_000), "9999-12-31T23:59:59.999Z");
        assert_eq!(to_rfc3339(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(parse_time(&to_rfc3339(i64::MAX)), Ok(MAX_RENDERABLE_MS));
    }

    #[test]
    fn epoch_milliseconds_are_accepted() {
        assert_eq!(parse_time("1700000000000"), Ok(1_700_000_000_000));
    }

    #[test]
    fn garbage_time_is_rejected_with_the_input_named() {
        let err = parse_time("yesterday").unwrap_err();
        assert!(err.contains("yesterday"), "{err}");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").is_err());
    }
}
