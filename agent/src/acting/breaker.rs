//! A circuit breaker per executor: after [`OPEN_AFTER`] failures in a row, the executor is
//! not tried for [`OPEN_FOR`]; then one trial attempt is let through (half-open), and its
//! result closes or re-opens the circuit. Jobs for an open executor wait in the queue
//! without spending attempts.

use std::collections::HashMap;

/// Consecutive failures that open a circuit.
pub const OPEN_AFTER: u32 = 5;
/// How long a circuit stays open, ms.
pub const OPEN_FOR_MS: i64 = 30_000;

#[derive(Debug, Clone, Copy, Default)]
struct Circuit {
    failures: u32,
    open_until_ms: Option<i64>,
    trial_running: bool,
}

/// The breakers of all executors.
#[derive(Debug, Default)]
pub struct Breakers {
    circuits: HashMap<String, Circuit>,
}

impl Breakers {
    /// Whether an attempt on `executor` may start now (marks a half-open trial as taken).
    pub fn allow(&mut self, executor: &str, now_ms: i64) -> bool {
        let circuit = self.circuits.entry(executor.to_string()).or_default();
        match circuit.open_until_ms {
            None => true,
            Some(until) if now_ms < until => false,
            Some(_) if circuit.trial_running => false,
            Some(_) => {
                circuit.trial_running = true;
                true
            }
        }
    }

    /// Records an attempt's result.
    pub fn record(&mut self, executor: &str, success: bool, now_ms: i64) {
        let circuit = self.circuits.entry(executor.to_string()).or_default();
        circuit.trial_running = false;
        if success {
            *circuit = Circuit::default();
            return;
        }
        circuit.failures += 1;
        if circuit.failures >= OPEN_AFTER || circuit.open_until_ms.is_some() {
            circuit.open_until_ms = Some(now_ms + OPEN_FOR_MS);
            if circuit.failures == OPEN_AFTER {
                tracing::warn!(
                    executor,
                    "circuit breaker open after {OPEN_AFTER} failures in a row"
                );
            }
        }
    }

    /// Executors whose circuit is open at `now_ms`.
    pub fn open(&self, now_ms: i64) -> Vec<String> {
        let mut open: Vec<String> = self
            .circuits
            .iter()
            .filter(|(_, c)| c.open_until_ms.is_some_and(|u| now_ms < u))
            .map(|(name, _)| name.clone())
            .collect();
        open.sort();
        open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_failures_half_opens_and_closes_on_success() {
        let mut b = Breakers::default();
        for _ in 0..OPEN_AFTER {
            assert!(b.allow("docker", 0));
            b.record("docker", false, 0);
        }
        assert!(!b.allow("docker", 1));
        assert_eq!(b.open(1), vec!["docker".to_string()]);
        assert!(b.allow("systemd", 1), "other executors are unaffected");
        assert!(b.allow("docker", OPEN_FOR_MS), "half-open: one trial");
        assert!(!b.allow("docker", OPEN_FOR_MS), "only one trial at a time");
        b.record("docker", false, OPEN_FOR_MS);
        assert!(
            !b.allow("docker", OPEN_FOR_MS + 1),
            "trial failed: open again"
        );
        assert!(b.allow("docker", 2 * OPEN_FOR_MS + 1));
        b.record("docker", true, 2 * OPEN_FOR_MS + 1);
        assert!(b.open(2 * OPEN_FOR_MS + 2).is_empty());
    }
}
