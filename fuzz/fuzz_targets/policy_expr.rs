//! The one-line condition expressions (`cpu_percent > 80 for 5m`) and the holds, durations
//! and times policies and queries are written with. Nothing panics; a hold written back
//! reads as the same hold; a time written back (RFC 3339) reads as the same time.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_shared::policy::expr;
use vigil_shared::time;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = expr::parse(text);
    if let Ok(hold) = expr::parse_hold(text) {
        let written = expr::format_hold(hold);
        assert_eq!(
            expr::parse_hold(&written),
            Ok(hold),
            "hold written as `{written}`"
        );
    }
    if let Ok(d) = time::parse_duration(text) {
        let written = time::format_duration(d);
        assert_eq!(
            time::parse_duration(&written),
            Ok(d),
            "written as `{written}`"
        );
    }
    if let Ok(ms) = time::parse_time(text) {
        let written = time::to_rfc3339(ms);
        // RFC 3339 writes years 0000–9999; times outside 1970–9999 are clamped.
        if (0..=253_402_300_799_999).contains(&ms) {
            if let Ok(back) = time::parse_time(&written) {
                assert_eq!(back, ms, "time written as `{written}`");
            }
        }
    }
});
