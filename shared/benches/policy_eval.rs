//! Policy evaluation throughput: a 100-policy set against one target's 50-metric sample,
//! on one core.
//!
//! Run: `cargo bench -p vigil-shared --bench policy_eval`
//!
//! Prints evaluations per second (one evaluation = one policy on one target, including
//! the engine's `for`/cooldown/flap bookkeeping) for the engine, next to a baseline
//! measured in the same run: a hand-written loop that checks 100 thresholds against a
//! `HashMap` of the same 50 values — the least work any evaluator could do. Rounds are
//! interleaved and the median is reported, because machines here are noisy.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use vigil_shared::policy::load::load_text;
use vigil_shared::policy::{Engine, Observations};
use vigil_shared::wire::Sample;

const METRICS: usize = 50;
const POLICIES: usize = 100;
const ROUND: Duration = Duration::from_millis(400);
const ROUNDS: usize = 7;

fn policy_yaml() -> String {
    let mut yaml = String::from("policies:\n");
    for i in 0..POLICIES {
        let m = i % METRICS;
        let condition = match i % 5 {
            0 => format!("{{type: metric_exceeds, metric: m{m}, threshold: 90}}"),
            1 => format!("{{type: metric_below, metric: m{m}, threshold: 5}}"),
            2 => format!(
                "{{type: all, conditions: [{{type: metric_exceeds, metric: m{m}, threshold: 80}}, {{type: metric_exceeds, metric: m{}, threshold: 70}}]}}",
                (m + 1) % METRICS
            ),
            3 => format!(
                "{{type: any, conditions: [{{type: metric_exceeds, metric: m{m}, threshold: 99}}, {{type: metric_below, metric: m{}, threshold: 1}}]}}",
                (m + 7) % METRICS
            ),
            _ => format!("{{type: trend, metric: m{m}, direction: increasing, by: 50, over: 1m}}"),
        };
        yaml.push_str(&format!(
            "  - name: p{i}\n    condition: {condition}\n    for: 30s\n    auto_remediate: true\n    action: restart\n"
        ));
    }
    yaml
}

fn main() {
    let policies = load_text(&policy_yaml(), "bench.yaml").expect("bench policies are valid");
    let mut engine = Engine::new(policies);
    let mut obs = Observations::new(0);
    obs.set_lookbacks(&engine.lookbacks());
    // One minute of history at 1 s, values in the quiet range (nothing fires).
    for t in 0..60i64 {
        for m in 0..METRICS {
            obs.record(
                "host",
                &Sample {
                    name: format!("m{m}"),
                    value: 40.0 + (m as f64 % 10.0),
                    ts_ms: t * 1000,
                    tags: Vec::new(),
                },
            );
        }
    }
    let values: HashMap<String, f64> = (0..METRICS)
        .map(|m| (format!("m{m}"), 40.0 + (m as f64 % 10.0)))
        .collect();
    let thresholds: Vec<(String, f64)> = (0..POLICIES)
        .map(|i| (format!("m{}", i % METRICS), 90.0))
        .collect();

    let mut engine_rates = Vec::new();
    let mut baseline_rates = Vec::new();
    let mut decisions = Vec::new();
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let before = engine.stats().evaluations;
        while start.elapsed() < ROUND {
            engine.evaluate(&obs, 60_000, &mut decisions);
            decisions.clear();
        }
        let n = engine.stats().evaluations - before;
        engine_rates.push(n as f64 / start.elapsed().as_secs_f64());

        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < ROUND {
            let mut fired = 0;
            for (metric, threshold) in &thresholds {
                if values
                    .get(black_box(metric.as_str()))
                    .is_some_and(|v| v > threshold)
                {
                    fired += 1;
                }
            }
            black_box(fired);
            n += POLICIES as u64;
        }
        baseline_rates.push(n as f64 / start.elapsed().as_secs_f64());
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let engine_rate = median(&mut engine_rates);
    let baseline_rate = median(&mut baseline_rates);
    println!(
        "policy evaluation, {POLICIES} policies x 1 target, {METRICS}-metric sample, one core"
    );
    println!(
        "  engine:   {:>12.0} evaluations/s  ({:.1} µs per 100-policy pass)",
        engine_rate,
        100.0 / engine_rate * 1e6
    );
    println!(
        "  baseline: {:>12.0} threshold checks/s (hand-written HashMap loop)",
        baseline_rate
    );
    println!(
        "  ratio:    engine runs at {:.2}x the baseline's rate",
        engine_rate / baseline_rate
    );
}
