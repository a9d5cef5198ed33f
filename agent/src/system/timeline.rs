//! Timestamps of the steps from a watched object's change to the action it led to: a
//! killed container seen dying, the policy firing, the action stored, handed to its
//! executor, the Docker calls returning. Each step is a debug event of its own target,
//! [`TARGET`], off unless asked for (`VIGIL_LOG=warn,vigil_agent::timeline=debug`):
//! `vigil-sim bench --part restart` reads them from the agent's log to show where the
//! milliseconds of a restart go.
//!
//! An event reads `… vigil_agent::timeline: step=STEP subject=NAME action=ID at_us=N`:
//! the step, the container or unit, the action's id (`-` before there is one) and the
//! wall clock in microseconds since the epoch (the clock Docker stamps its events with).

/// The events' target.
pub(crate) const TARGET: &str = "vigil_agent::timeline";

/// Records that `step` happened now for `subject` (and `action`, if there is one yet).
pub(crate) fn mark(step: &'static str, subject: &str, action: Option<&str>) {
    tracing::debug!(
        target: TARGET,
        step = %step,
        subject = %subject,
        action = %action.unwrap_or("-"),
        at_us = now_us(),
    );
}

/// Microseconds since the epoch, now (0 if the clock is before the epoch).
fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_is_in_microseconds() {
        let ms = vigil_shared::time::now_ms();
        let us = now_us();
        assert!((us / 1000 - ms).abs() < 1000, "{us} µs vs {ms} ms");
    }
}
