//! Table-driven tests for every condition type and the engine's state machine.

use std::time::Duration;

use super::engine::{DecisionKind, Engine};
use super::eval::{explain, holds};
use super::load::{load_text, LoadError};
use super::model::{ActionKind, Condition, Direction, Severity};
use super::observations::{Observations, StateKind, StateReading};
use super::spec::PolicySpec;
use crate::wire::Sample;

const H: &str = "web-01";

/// `(metric, value, time ms)` points.
type Points<'a> = &'a [(&'a str, f64, i64)];

fn sample(name: &str, value: f64, ts_ms: i64, tags: &[(&str, &str)]) -> Sample {
    Sample::new(name, value, ts_ms, tags)
}

fn obs_with(points: &[(&str, f64, i64)]) -> Observations {
    let mut obs = Observations::new(0);
    let lookbacks = [
        ("mem".to_string(), Duration::from_secs(3600)),
        ("restarts".to_string(), Duration::from_secs(3600)),
    ]
    .into_iter()
    .collect();
    obs.set_lookbacks(&lookbacks);
    for (name, value, ts) in points {
        obs.record(H, &sample(name, *value, *ts, &[]));
    }
    obs
}

fn cond(yaml: &str) -> Condition {
    let text = format!("policies:\n  - name: t\n    condition: {yaml}\n");
    let mut policies = load_text(&text, "test.yaml").unwrap_or_else(|e| panic!("{yaml}: {e}"));
    policies.remove(0).condition
}

#[test]
fn threshold_conditions_table() {
    // (condition, observations, now, expected)
    let cases: &[(&str, Points, i64, bool)] = &[
        (
            "{type: metric_exceeds, metric: cpu, threshold: 80}",
            &[("cpu", 81.0, 1000)],
            1000,
            true,
        ),
        (
            "{type: metric_exceeds, metric: cpu, threshold: 80}",
            &[("cpu", 80.0, 1000)],
            1000,
            false,
        ),
        (
            "{type: metric_exceeds, metric: cpu, threshold: 80, inclusive: true}",
            &[("cpu", 80.0, 1000)],
            1000,
            true,
        ),
        (
            "{type: metric_exceeds, metric: cpu, threshold: 80}",
            &[],
            1000,
            false,
        ),
        (
            "{type: metric_exceeds, metric: cpu, threshold: 80}",
            &[("other", 99.0, 1000)],
            1000,
            false,
        ),
        (
            "{type: metric_below, metric: disk, threshold: 10}",
            &[("disk", 9.99, 1000)],
            1000,
            true,
        ),
        (
            "{type: metric_below, metric: disk, threshold: 10}",
            &[("disk", 10.0, 1000)],
            1000,
            false,
        ),
        (
            "{type: metric_below, metric: disk, threshold: 10, inclusive: true}",
            &[("disk", 10.0, 1000)],
            1000,
            true,
        ),
        // A stale latest value (source stopped reporting) is ignored.
        (
            "{type: metric_exceeds, metric: cpu, threshold: 80}",
            &[("cpu", 99.0, 0)],
            400_000,
            false,
        ),
        ("\"cpu > 80%\"", &[("cpu", 85.0, 1)], 1, true),
        ("\"cpu <= 5\"", &[("cpu", 5.0, 1)], 1, true),
        ("\"failed\"", &[("failed", 1.0, 1)], 1, true),
        ("\"failed\"", &[("failed", 0.0, 1)], 1, false),
    ];
    for (yaml, points, now, expected) in cases {
        let c = cond(yaml);
        let obs = obs_with(points);
        assert_eq!(
            holds(&c, &obs, H, *now),
            *expected,
            "{yaml} with {points:?}"
        );
        assert_eq!(
            explain(&c, &obs, H, *now).held,
            *expected,
            "explain agrees: {yaml}"
        );
    }
}

#[test]
fn nan_is_treated_as_no_sample() {
    let mut obs = Observations::new(0);
    obs.record(H, &sample("cpu", f64::NAN, 1, &[]));
    let c = cond("{type: metric_below, metric: cpu, threshold: 10}");
    assert!(!holds(&c, &obs, H, 1));
    let e = explain(&c, &obs, H, 1);
    assert_eq!(e.detail.as_deref(), Some("no recent sample"));
}

#[test]
fn compound_conditions_and_their_explanation() {
    let obs = obs_with(&[
        ("cpu", 95.0, 1),
        ("memory_percent", 50.0, 1),
        ("disk", 3.0, 1),
    ]);
    let all = cond("{type: all, conditions: [{type: metric_exceeds, metric: cpu, threshold: 80}, {type: metric_exceeds, metric: memory_percent, threshold: 90}]}");
    let any = cond("{type: any, conditions: [{type: metric_exceeds, metric: cpu, threshold: 95}, {type: metric_below, metric: disk, threshold: 5}]}");
    assert!(!holds(&all, &obs, H, 1));
    assert!(holds(&any, &obs, H, 1));
    let e = explain(&all, &obs, H, 1);
    assert_eq!(e.children.len(), 2);
    assert!(e.children[0].held && !e.children[1].held);
    assert_eq!(e.children[1].condition, "memory_percent > 90");
    let e = explain(&any, &obs, H, 1);
    assert_eq!(e.summary(), "disk < 5 (observed 3)");
}

#[test]
fn tagged_variants_report_the_worst_one() {
    let mut obs = Observations::new(0);
    obs.record(H, &sample("disk_free_percent", 40.0, 1, &[("mount", "/")]));
    obs.record(
        H,
        &sample("disk_free_percent", 4.0, 1, &[("mount", "/var")]),
    );
    let c = cond("{type: metric_below, metric: disk_free_percent, threshold: 10}");
    let e = explain(&c, &obs, H, 1);
    assert!(e.held);
    assert_eq!(e.tags, vec![("mount".to_string(), "/var".to_string())]);
    assert_eq!(
        e.summary(),
        "disk_free_percent < 10 (observed 4) [mount=/var]"
    );
}

#[test]
fn trend_windows_table() {
    let min = 60_000;
    let c = cond("{type: trend, metric: mem, direction: increasing, by: 10, over: 30m}");
    let cases: &[(Points, i64, bool, &str)] = &[
        (
            &[
                ("mem", 50.0, 0),
                ("mem", 55.0, 15 * min),
                ("mem", 61.0, 30 * min),
            ],
            30 * min,
            true,
            "rose 11 over 30m",
        ),
        (
            &[("mem", 50.0, 0), ("mem", 60.0, 30 * min)],
            30 * min,
            false,
            "rose exactly 10",
        ),
        (
            &[("mem", 70.0, 0), ("mem", 50.0, 30 * min)],
            30 * min,
            false,
            "fell",
        ),
        // A gap at the start: the first sample is 20 minutes into the window.
        (
            &[("mem", 10.0, 20 * min), ("mem", 90.0, 30 * min)],
            30 * min,
            false,
            "window not covered",
        ),
        // Gaps inside the window do not matter once it is covered.
        (
            &[("mem", 10.0, 20_000), ("mem", 90.0, 30 * min)],
            30 * min,
            true,
            "covered, gap inside",
        ),
        (&[("mem", 10.0, 0)], 30 * min, false, "one point"),
        (&[], 30 * min, false, "no data"),
    ];
    for (points, now, expected, what) in cases {
        let obs = obs_with(points);
        assert_eq!(holds(&c, &obs, H, *now), *expected, "{what}");
    }
    let obs = obs_with(&[("mem", 10.0, 20 * min), ("mem", 90.0, 30 * min)]);
    let detail = explain(&c, &obs, H, 30 * min).detail.unwrap_or_default();
    assert!(detail.contains("cover"), "{detail}");

    let seed = cond("\"memory_usage increasing for 30m\"");
    assert!(
        matches!(seed, Condition::Trend { direction: Direction::Increasing, by, .. } if by == 0.0)
    );
}

#[test]
fn rate_conditions_table() {
    let min = 60_000;
    let c = cond("{type: rate, metric: restarts, over: 5m, per: 1m, above: 2}");
    let cases: &[(Points, i64, bool, &str)] = &[
        (
            &[("restarts", 0.0, 0), ("restarts", 15.0, 5 * min)],
            5 * min,
            true,
            "3 per minute",
        ),
        (
            &[("restarts", 0.0, 0), ("restarts", 10.0, 5 * min)],
            5 * min,
            false,
            "exactly 2 per minute",
        ),
        // Counter reset: 0 → 8, reset, 0 → 7: 15 in 5 minutes.
        (
            &[
                ("restarts", 0.0, 0),
                ("restarts", 8.0, 2 * min),
                ("restarts", 7.0, 5 * min),
            ],
            5 * min,
            true,
            "reset counted",
        ),
        (&[("restarts", 5.0, 5 * min)], 5 * min, false, "one point"),
    ];
    for (points, now, expected, what) in cases {
        assert_eq!(holds(&c, &obs_with(points), H, *now), *expected, "{what}");
    }
    let below = cond("{type: rate, metric: restarts, over: 5m, below: 0.001}");
    assert!(holds(
        &below,
        &obs_with(&[("restarts", 3.0, 0), ("restarts", 3.0, 5 * min)]),
        H,
        5 * min
    ));
}

#[test]
fn absence_counts_from_the_last_sample_or_the_start() {
    let c = cond("{type: absent, metric: heartbeat, for: 1m}");
    let obs = obs_with(&[("heartbeat", 1.0, 10_000)]);
    assert!(!holds(&c, &obs, H, 69_999));
    assert!(holds(&c, &obs, H, 70_000));
    let never = Observations::new(5_000);
    assert!(!holds(&c, &never, H, 60_000));
    assert!(holds(&c, &never, H, 65_000));
}

fn reading(state: &str, health: Option<&str>, failures: u32) -> StateReading {
    StateReading {
        state: state.into(),
        health: health.map(str::to_string),
        consecutive_failures: failures,
        detail: None,
        at_ms: 1,
    }
}

#[test]
fn state_conditions_table() {
    let cases: &[(&str, StateKind, &str, StateReading, &str, bool)] = &[
        (
            "{type: unit_state}",
            StateKind::Unit,
            "nginx.service",
            reading("failed", None, 0),
            "nginx.service",
            true,
        ),
        (
            "{type: unit_state}",
            StateKind::Unit,
            "nginx.service",
            reading("active", None, 0),
            "nginx.service",
            false,
        ),
        (
            "{type: unit_state, expect: [active, reloading]}",
            StateKind::Unit,
            "n.service",
            reading("reloading", None, 0),
            "n.service",
            false,
        ),
        (
            "{type: unit_state, unit: a.service}",
            StateKind::Unit,
            "a.service",
            reading("failed", None, 0),
            "b.service",
            false,
        ),
        (
            "{type: container_state}",
            StateKind::Container,
            "web",
            reading("exited", None, 0),
            "web",
            true,
        ),
        (
            "{type: container_state}",
            StateKind::Container,
            "web",
            reading("running", Some("unhealthy"), 0),
            "web",
            true,
        ),
        (
            "{type: container_state, unhealthy: false}",
            StateKind::Container,
            "web",
            reading("running", Some("unhealthy"), 0),
            "web",
            false,
        ),
        (
            "{type: container_state}",
            StateKind::Container,
            "web",
            reading("running", Some("healthy"), 0),
            "web",
            false,
        ),
        (
            "{type: process_missing, process: nginx}",
            StateKind::Process,
            "nginx",
            reading("missing", None, 0),
            "nginx",
            true,
        ),
        (
            "{type: process_missing, process: nginx}",
            StateKind::Process,
            "nginx",
            reading("running", None, 0),
            "nginx",
            false,
        ),
        (
            "{type: http_check, url: \"http://127.0.0.1:1/\", failures: 3}",
            StateKind::Http,
            "http://127.0.0.1:1/",
            reading("failing", None, 3),
            "http://127.0.0.1:1/",
            true,
        ),
        (
            "{type: http_check, url: \"http://127.0.0.1:1/\", failures: 3}",
            StateKind::Http,
            "http://127.0.0.1:1/",
            reading("failing", None, 2),
            "http://127.0.0.1:1/",
            false,
        ),
        (
            "{type: tcp_check, address: \"127.0.0.1:1\"}",
            StateKind::Tcp,
            "127.0.0.1:1",
            reading("failing", None, 3),
            "127.0.0.1:1",
            true,
        ),
    ];
    for (yaml, kind, name, r, subject, expected) in cases {
        let c = cond(yaml);
        let mut obs = Observations::new(0);
        obs.record_state(*kind, name, r.clone());
        assert_eq!(
            holds(&c, &obs, subject, 1),
            *expected,
            "{yaml} on {subject} with {r:?}"
        );
    }
    // No reading yet: does not hold, and says so.
    let c = cond("{type: unit_state}");
    let e = explain(&c, &Observations::new(0), "x.service", 1);
    assert!(!e.held);
    assert_eq!(e.detail.as_deref(), Some("no reading yet"));
}

fn engine(yaml: &str) -> Engine {
    Engine::new(load_text(yaml, "test.yaml").unwrap_or_else(|e| panic!("{e}")))
}

fn kinds(decisions: &[super::Decision]) -> Vec<&'static str> {
    decisions.iter().map(|d| d.kind.as_str()).collect()
}

/// Feeds `cpu` values one second apart and collects decisions per tick.
fn run(engine: &mut Engine, values: &[f64]) -> Vec<Vec<&'static str>> {
    let mut obs = Observations::new(0);
    let mut out = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let now = i as i64 * 1000;
        obs.record(H, &sample("cpu", *v, now, &[]));
        let mut decisions = Vec::new();
        engine.evaluate(&obs, now, &mut decisions);
        out.push(kinds(&decisions).into_iter().collect());
    }
    out
}

#[test]
fn for_resets_after_one_good_sample() {
    let mut e = engine("policies:\n  - name: hot\n    condition: cpu > 80 for 3s\n");
    let ticks = run(&mut e, &[90.0, 90.0, 90.0, 10.0, 90.0, 90.0, 90.0, 90.0]);
    let fired: Vec<usize> = ticks
        .iter()
        .enumerate()
        .filter(|(_, k)| k.contains(&"fired"))
        .map(|(i, _)| i)
        .collect();
    // Pending from t=4; held 3s at t=7 (t=0..2 was interrupted by the good sample at t=3).
    assert_eq!(fired, vec![7]);
}

#[test]
fn for_in_evaluations() {
    let mut e = engine("policies:\n  - name: hc\n    condition: cpu for 3 attempts\n");
    let ticks = run(&mut e, &[1.0, 1.0, 0.0, 1.0, 1.0, 1.0]);
    assert_eq!(ticks[5], vec!["fired"]);
    assert!(ticks[..5].iter().all(|t| t.is_empty()));
}

#[test]
fn fires_once_and_resolves_when_the_condition_clears() {
    let mut e = engine("policies:\n  - name: hot\n    condition: cpu > 80\n");
    let ticks = run(&mut e, &[90.0, 90.0, 90.0, 10.0]);
    assert_eq!(ticks, vec![vec!["fired"], vec![], vec![], vec!["resolved"]]);
}

#[test]
fn an_action_then_escalation_chain_with_verify_windows() {
    let yaml = "policies:\n  - name: hot\n    condition: cpu > 80\n    auto_remediate: true\n    verify: 2s\n    actions: [restart, {action: webhook, params: {url: \"http://x/\"}}]\n";
    let mut e = engine(yaml);
    let ticks = run(&mut e, &[90.0; 7]);
    assert_eq!(ticks[0], vec!["fired", "act"]);
    assert_eq!(ticks[1], Vec::<&str>::new());
    assert_eq!(
        ticks[2],
        vec!["verified", "act"],
        "restart did not help: next step"
    );
    assert_eq!(ticks[4], vec!["verified", "escalated"], "chain exhausted");
    assert!(ticks[5].is_empty() && ticks[6].is_empty(), "escalated once");
}

#[test]
fn an_action_that_works_is_verified_resolved() {
    let yaml = "policies:\n  - name: hot\n    condition: cpu > 80\n    auto_remediate: true\n    action: restart\n";
    let mut e = engine(yaml);
    let ticks = run(&mut e, &[90.0, 10.0]);
    assert_eq!(
        ticks,
        vec![vec!["fired", "act"], vec!["verified", "resolved"]]
    );
}

#[test]
fn cooldown_defers_the_next_episode_action() {
    let yaml = "policies:\n  - name: hot\n    condition: cpu > 80\n    auto_remediate: true\n    action: restart\n    cooldown: 5s\n";
    let mut e = engine(yaml);
    let ticks = run(&mut e, &[90.0, 10.0, 90.0, 90.0, 90.0, 90.0, 90.0]);
    assert_eq!(ticks[0], vec!["fired", "act"]);
    assert_eq!(ticks[2], vec!["fired", "deferred"]);
    assert!(ticks[3].is_empty() && ticks[4].is_empty());
    assert_eq!(ticks[5], vec!["act"], "5 s after the first action");
}

#[test]
fn flap_protection_escalates_and_resets_after_healthy_period() {
    let yaml = "policies:\n  - name: flappy\n    condition: cpu > 80\n    auto_remediate: true\n    action: restart\n    flap: {max_actions: 2, within: 1m, reset_after: 3s}\n";
    let mut e = engine(yaml);
    // Flaps: bad, good, bad, good, bad (third action refused), good ×3 (reset), bad.
    let ticks = run(
        &mut e,
        &[90.0, 10.0, 90.0, 10.0, 90.0, 10.0, 10.0, 10.0, 10.0, 90.0],
    );
    assert_eq!(ticks[0], vec!["fired", "act"]);
    assert_eq!(ticks[2], vec!["fired", "act"]);
    assert_eq!(ticks[4], vec!["fired", "escalated"]);
    assert_eq!(
        ticks[9],
        vec!["fired", "act"],
        "counters reset after 3 s healthy"
    );
}

#[test]
fn escalations_are_critical_and_explained() {
    let yaml = "policies:\n  - name: flappy\n    severity: info\n    condition: cpu > 80\n    auto_remediate: true\n    action: restart\n    flap: {max_actions: 1}\n";
    let mut e = engine(yaml);
    let mut obs = Observations::new(0);
    let mut out = Vec::new();
    for (t, v) in [(0, 90.0), (1000, 10.0), (2000, 90.0)] {
        obs.record(H, &sample("cpu", v, t, &[]));
        e.evaluate(&obs, t, &mut out);
    }
    let escalation = out
        .iter()
        .find(|d| matches!(d.kind, DecisionKind::Escalated { .. }))
        .expect("escalated");
    assert_eq!(escalation.severity, Severity::Critical);
    assert!(escalation.explanation.as_ref().is_some_and(|x| x.held));
}

#[test]
fn dry_run_and_record_only_policies() {
    let dry = "policies:\n  - name: d\n    condition: cpu > 80\n    auto_remediate: true\n    dry_run: true\n    action: restart\n";
    let mut e = engine(dry);
    let mut obs = Observations::new(0);
    obs.record(H, &sample("cpu", 90.0, 0, &[]));
    let mut out = Vec::new();
    e.evaluate(&obs, 0, &mut out);
    match &out[1].kind {
        DecisionKind::Act(request) => assert!(request.dry_run),
        other => panic!("{other:?}"),
    }
    let record_only = "policies:\n  - name: r\n    condition: cpu > 80\n    action: restart\n";
    let mut e = engine(record_only);
    let mut out = Vec::new();
    e.evaluate(&obs, 0, &mut out);
    assert_eq!(
        kinds(&out),
        vec!["fired"],
        "auto_remediate false: violation only"
    );
    let disabled = "policies:\n  - name: off\n    enabled: false\n    condition: cpu > 80\n";
    let mut e = engine(disabled);
    let mut out = Vec::new();
    e.evaluate(&obs, 0, &mut out);
    assert!(out.is_empty());
}

#[test]
fn glob_targets_select_subjects() {
    let yaml = "policies:\n  - name: web\n    target: web-*\n    condition: cpu > 80\n";
    let mut e = engine(yaml);
    let mut obs = Observations::new(0);
    for host in ["web-01", "web-02", "db-01"] {
        obs.record(host, &sample("cpu", 99.0, 0, &[]));
    }
    let mut out = Vec::new();
    e.evaluate(&obs, 0, &mut out);
    let subjects: Vec<&str> = out.iter().map(|d| d.subject.as_str()).collect();
    assert_eq!(subjects, vec!["web-01", "web-02"]);
}

#[test]
fn reload_keeps_state_of_unchanged_policies() {
    let yaml = "policies:\n  - name: hot\n    condition: cpu > 80 for 2s\n";
    let mut e = engine(yaml);
    let mut obs = Observations::new(0);
    let mut out = Vec::new();
    obs.record(H, &sample("cpu", 90.0, 0, &[]));
    e.evaluate(&obs, 0, &mut out);
    e.replace_policies(load_text(yaml, "again.yaml").unwrap());
    obs.record(H, &sample("cpu", 90.0, 2000, &[]));
    e.evaluate(&obs, 2000, &mut out);
    assert_eq!(
        kinds(&out),
        vec!["fired"],
        "the `for` timer survived the reload"
    );
}

/// Policies in the original system's formats load unchanged and evaluate as its users expect.
#[test]
fn original_examples_load_and_evaluate() {
    // The original REST API's JSON bodies, as YAML flow maps.
    let seed_json = r#"
policies:
  - {"name": "high-cpu-alert", "description": "Alert when CPU exceeds 80%", "severity": "warning",
     "target": "web-*", "enabled": true, "auto_remediate": false,
     "condition": {"type": "metric_exceeds", "metric": "cpu_percent", "threshold": 80},
     "action": "restart", "params": {"cooldown_seconds": 300}}
  - {"name": "high-cpu-scale", "description": "Scale up when CPU exceeds 90%", "severity": "warning",
     "target": "web-*", "enabled": true, "auto_remediate": true,
     "condition": {"type": "metric_exceeds", "metric": "cpu_percent", "threshold": 90},
     "action": "scale-up", "params": {"replicas": 2}}
  - name: compound-and
    condition:
      type: all
      conditions:
        - { type: metric_exceeds, metric: cpu_percent, threshold: 80 }
        - { type: metric_exceeds, metric: memory_percent, threshold: 90 }
  - name: compound-or
    condition:
      type: any
      conditions:
        - { type: metric_exceeds, metric: cpu_percent, threshold: 95 }
        - { type: metric_below, metric: disk_free_percent, threshold: 5 }
"#;
    let policies = load_text(seed_json, "seed-001.yaml").unwrap();
    assert_eq!(policies.len(), 4);
    assert_eq!(policies[0].cooldown, Duration::from_secs(300));
    assert_eq!(policies[1].actions[0].kind.as_str(), "scale");
    assert_eq!(policies[1].actions[0].params["replicas"], 2);
    // The original sandbox example: cpu 95, memory 88 on web-server-01.
    let mut obs = Observations::new(0);
    obs.record("web-server-01", &sample("cpu_percent", 95.0, 0, &[]));
    obs.record("web-server-01", &sample("memory_percent", 88.0, 0, &[]));
    let mut e = Engine::new(policies);
    let mut out = Vec::new();
    e.evaluate(&obs, 0, &mut out);
    let fired: Vec<&str> = out
        .iter()
        .filter(|d| d.kind == DecisionKind::Fired)
        .map(|d| d.policy.as_str())
        .collect();
    // cpu 95 is not above 95, and there is no disk sample: compound-or stays quiet.
    assert_eq!(fired, vec!["high-cpu-alert", "high-cpu-scale"]);
    assert!(out
        .iter()
        .any(|d| d.policy == "high-cpu-scale" && matches!(d.kind, DecisionKind::Act(_))));

    // One-line conditions and the original action names.
    let seed_002 = "policies:\n  - name: high-cpu-usage\n    condition: cpu_usage > 80% for 5m\n    severity: warning\n    action: scale_up\n\n  - name: service-down\n    condition: health_check_failed for 3 attempts\n    severity: critical\n    action: restart_service\n\n  - name: memory-leak\n    condition: memory_usage increasing for 30m\n    severity: warning\n    action: restart_service\n";
    let policies = load_text(seed_002, "seed-002.yaml").unwrap();
    assert_eq!(policies[1].severity, Severity::Critical);
    let mut e = Engine::new(policies);
    let mut obs = Observations::new(0);
    obs.set_lookbacks(&e.lookbacks());
    let mut fired = Vec::new();
    for minute in 0..=30 {
        let now = minute * 60_000;
        obs.record(H, &sample("cpu_usage", 85.0, now, &[]));
        obs.record(
            H,
            &sample(
                "health_check_failed",
                if minute < 2 { 0.0 } else { 1.0 },
                now,
                &[],
            ),
        );
        obs.record(H, &sample("memory_usage", 40.0 + minute as f64, now, &[]));
        let mut out = Vec::new();
        e.evaluate(&obs, now, &mut out);
        for d in out.into_iter().filter(|d| d.kind == DecisionKind::Fired) {
            fired.push((d.policy, minute));
        }
    }
    assert_eq!(
        fired,
        vec![
            ("service-down".to_string(), 4),
            ("high-cpu-usage".to_string(), 5),
            ("memory-leak".to_string(), 30),
        ]
    );
}

#[test]
fn bad_policies_name_file_policy_and_field() {
    let cases: &[(&str, &str)] = &[
        ("policies:\n  - name: a\n    condition: {type: metric_exceeds, metric: cpu}\n", "threshold"),
        ("policies:\n  - name: typed\n    condition: {type: metric_exceeds, metric: cpu, threshold: high}\n", "policy `typed`: policies[0].condition: field `threshold`: invalid type: string \"high\", expected f64 at line 3"),
        ("policies:\n  - name: a\n    condition: {type: metric_exceedz, metric: cpu, threshold: 1}\n", "unknown variant `metric_exceedz`"),
        ("policies:\n  - name: a\n    condition: {metric: cpu, threshold: 1}\n", "needs `type`"),
        ("policies:\n  - name: a\n    severity: severe\n    condition: cpu > 1\n", "severe"),
        ("policies:\n  - name: a\n    condition: {type: metric_exceeds, metric: cpu, threshold: 1}\n    action: drain-nodes\n", "drain-pod, rebalance"),
        ("policies:\n  - name: a\n    condition: {type: all, conditions: []}\n", "condition.conditions"),
        ("policies:\n  - name: a\n    condition: {type: any, conditions: [{type: metric_below, metric: \"\", threshold: 1}]}\n", "condition.conditions[0].metric"),
        ("policies:\n  - name: a\n    condition: cpu > 1 for 1m\n    for: 2m\n", "for"),
        ("policies:\n  - name: a\n    condition: cpu > 1\n    auto_remediate: true\n", "auto_remediate"),
        ("policies:\n  - name: a b\n    condition: cpu > 1\n", "name"),
        ("policies:\n  - name: a\n    condition: {type: rate, metric: r, over: 1m}\n", "above"),
        ("policies:\n  - name: a\n    condition: cpu > 1\n  - name: a\n    condition: cpu > 2\n", "defined twice"),
        ("policies:\n  - name: a\n    condition: cpu >\n", "cpu >"),
        ("policies:\n  - name: a\n    condition: cpu > 1\n    colour: red\n", "colour"),
        ("policies: [\n", "line"),
    ];
    for (yaml, needle) in cases {
        let err = load_text(yaml, "bad.yaml").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("bad.yaml"), "{text}");
        assert!(text.contains(needle), "expected `{needle}` in: {text}");
        if let LoadError::Policy { error, .. } = &err {
            assert_eq!(error.policy, if yaml.contains("a b") { "a b" } else { "a" });
        }
    }
}

#[test]
fn specs_round_trip_through_json() {
    let yaml = "policies:\n  - name: chain\n    target: nginx.service\n    condition: {type: unit_state}\n    for: 10s\n    cooldown: 1m\n    verify: 30s\n    flap: {max_actions: 3, within: 10m}\n    auto_remediate: true\n    actions: [restart, {action: webhook, params: {url: \"http://pager/\"}}]\n  - name: expr\n    condition: cpu_usage > 80% for 5m\n";
    let specs = super::load::parse_specs(yaml, "x").unwrap();
    for spec in specs {
        let json = serde_json::to_string(&spec).unwrap();
        let back: PolicySpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec, "{json}");
        assert_eq!(back.check().unwrap(), spec.check().unwrap());
    }
}

#[test]
fn every_action_of_the_original_format_loads_and_unmapped_ones_are_named() {
    let yaml = "policies:
  - name: drain
    condition: {type: metric_exceeds, metric: cpu_percent, threshold: 90}
    auto_remediate: true
    actions: [DRAIN_POD, {action: rebalance, params: {zone: a}}, restart]
  - name: backup
    condition: disk_free_percent < 5
    action: snapshot
  - name: grow
    condition: cpu_percent > 80
    action: scale-up
";
    let policies = load_text(yaml, "original.yaml").unwrap();
    let kinds: Vec<Vec<ActionKind>> = policies
        .iter()
        .map(|p| p.actions.iter().map(|a| a.kind).collect())
        .collect();
    assert_eq!(
        kinds,
        vec![
            vec![
                ActionKind::DrainPod,
                ActionKind::Rebalance,
                ActionKind::Restart
            ],
            vec![ActionKind::Snapshot],
            vec![ActionKind::Scale],
        ]
    );
    assert_eq!(policies[0].actions[0].written, "DRAIN_POD");
    let none = policies[0].unmapped_actions(|_| false);
    assert_eq!(none.len(), 2);
    assert!(
        none[0].contains("policy `drain`: action `DRAIN_POD`"),
        "{}",
        none[0]
    );
    assert!(none[0].contains("[actions] drain-pod"), "{}", none[0]);
    assert!(none[0].contains("not_runnable"), "{}", none[0]);
    let some = policies[0].unmapped_actions(|k| k == ActionKind::DrainPod);
    assert_eq!(some.len(), 1);
    assert!(some[0].contains("`rebalance`"), "{}", some[0]);
    assert!(policies[2].unmapped_actions(|_| false).is_empty());
    for kind in ActionKind::MAPPED {
        assert_eq!(ActionKind::parse(kind.as_str()), Ok(kind));
        assert!(kind.needs_mapping());
    }
    assert!(!ActionKind::Restart.needs_mapping());
}
