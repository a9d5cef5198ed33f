//! Timestamps: Vigil carries time as milliseconds since the Unix epoch (`i64`) on the wire and
//! in storage, and shows it as RFC 3339 (UTC, millisecond precision) to people and JSON clients.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// The last millisecond RFC 3339 can write (its years have four digits): 9999-12-31T23:59:59.999Z.
const MAX_RFC3339_MS: u64 = 253_402_300_799_999;

/// Formats epoch milliseconds as RFC 3339 with milliseconds, e.g. `2026-01-20T12:34:56.789Z`.
/// Times before the epoch are clamped to it, times after year 9999 to its last millisecond.
pub fn to_rfc3339(ms: i64) -> String {
    let ms = u64::try_from(ms).unwrap_or(0).min(MAX_RFC3339_MS);
    let t = UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
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
    fn times_past_year_9999_are_clamped_not_a_panic() {
        assert_eq!(to_rfc3339(253_402_300_800_000), "9999-12-31T23:59:59.999Z");
        assert_eq!(to_rfc3339(i64::MAX), "9999-12-31T23:59:59.999Z");
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
