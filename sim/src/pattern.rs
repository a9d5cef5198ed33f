//! A known metric pattern, and the policies virtual agents evaluate on it: a square wave
//! of one metric per host (high for `half_period` batches, low for as many, each host
//! shifted by `phase_step` batches per fleet index), so what policies do on it is known
//! in advance; and, as a real agent's evaluator does at every tick, the shared policy
//! engine run on the very samples each batch publishes, counting what it decides. A
//! backtest of the stored history ([`vigil_coordinator`]'s `POST /api/v1/policies/backtest`)
//! must count the same.

use std::collections::BTreeMap;

use vigil_shared::policy::{DecisionKind, Engine, Observations, Policy, TARGET_TAG};
use vigil_shared::wire::Sample;

/// The pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    /// The metric it shapes (every sample of that name in a batch).
    pub metric: String,
    /// Its value in the low half.
    pub low: f64,
    /// Its value in the high half.
    pub high: f64,
    /// Batches per half period (at least 1).
    pub half_period: u64,
    /// How many batches each fleet index shifts the wave.
    pub phase_step: u64,
    /// The policies every virtual agent evaluates on its batches.
    pub policies: Vec<Policy>,
}

impl Pattern {
    /// The value of the agent at fleet `index` in its batch number `seq`.
    pub fn value(&self, index: usize, seq: u64) -> f64 {
        let shifted = seq.wrapping_add((index as u64).wrapping_mul(self.phase_step));
        if (shifted / self.half_period.max(1)) % 2 == 1 {
            self.high
        } else {
            self.low
        }
    }
}

/// What the engine decided, per policy, summed over a fleet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Decided {
    /// Violations fired.
    pub fired: u64,
    /// Actions asked for (not dry-run).
    pub acted: u64,
}

/// One agent's evaluator: its engine and observations.
pub struct LiveEvaluator {
    host: String,
    engine: Engine,
    observations: Observations,
}

impl LiveEvaluator {
    /// An evaluator for `host` running `policies`, observing since `started_ms`.
    pub fn new(host: &str, policies: Vec<Policy>, started_ms: i64) -> LiveEvaluator {
        let engine = Engine::new(policies);
        let mut observations = Observations::new(started_ms);
        observations.set_lookbacks(&engine.lookbacks());
        LiveEvaluator {
            host: host.to_string(),
            engine,
            observations,
        }
    }

    /// Records one tick's samples and evaluates at `now_ms`; adds what was decided to
    /// `out` (by policy).
    pub fn tick(&mut self, samples: &[Sample], now_ms: i64, out: &mut BTreeMap<String, Decided>) {
        for sample in samples {
            let subject = sample
                .tags
                .iter()
                .find(|(k, _)| k == TARGET_TAG)
                .map_or(self.host.as_str(), |(_, v)| v.as_str());
            self.observations.record(subject, sample);
        }
        let mut decisions = Vec::new();
        self.engine
            .evaluate(&self.observations, now_ms, &mut decisions);
        for decision in decisions {
            let counts = out.entry(decision.policy).or_default();
            match decision.kind {
                DecisionKind::Fired => counts.fired += 1,
                DecisionKind::Act(request) if !request.dry_run => counts.acted += 1,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wave_is_shifted_per_agent() {
        let p = Pattern {
            metric: "cpu_percent".into(),
            low: 10.0,
            high: 95.0,
            half_period: 3,
            phase_step: 1,
            policies: vec![],
        };
        let wave: Vec<f64> = (0..7).map(|s| p.value(0, s)).collect();
        assert_eq!(wave, vec![10.0, 10.0, 10.0, 95.0, 95.0, 95.0, 10.0]);
        assert_eq!(p.value(1, 2), 95.0);
    }
}
