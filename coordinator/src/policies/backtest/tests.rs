use std::sync::Arc;

use vigil_shared::policy::load::load_text;
use vigil_shared::wire::{AgentState, AgentStatus, Sample};

use super::*;
use crate::store::{MapSize, Points, Source, StoreWriter, Write};
use crate::telemetry::Telemetry;

const T0: i64 = 1_768_912_496_000;
const NOW: i64 = T0 + 600_000;

fn status(host: &str, role: &str) -> AgentStatus {
    AgentStatus {
        host: host.into(),
        state: AgentState::Online,
        agent_version: "test".into(),
        started_at_ms: T0,
        sent_at_ms: T0,
        interval_ms: 1_000,
        labels: vec![("role".into(), role.into())],
        bundles: Vec::new(),
        bundle_error: None,
        remediation_paused: false,
        detail: None,
        policies: Default::default(),
        queue: Default::default(),
        delivery: None,
    }
}

/// `cpu_percent` every second for 300 s: 95 for 20 s, then 10 for 20 s, shifted by
/// `phase` seconds; and `memory_percent` (read by no policy) at the half seconds.
fn square_wave(phase: i64) -> Vec<Sample> {
    let mut out = Vec::new();
    for s in 0..300 {
        let high = ((s + phase) / 20) % 2 == 1;
        out.push(Sample {
            name: "cpu_percent".into(),
            value: if high { 95.0 } else { 10.0 },
            ts_ms: T0 + s * 1_000,
            tags: vec![],
        });
        out.push(Sample {
            name: "memory_percent".into(),
            value: 50.0,
            ts_ms: T0 + s * 1_000 + 500,
            tags: vec![],
        });
    }
    out
}

struct Fleet {
    _dir: tempfile::TempDir,
    store: Store,
    /// Per host, its samples.
    hosts: Vec<(String, Vec<Sample>)>,
}

async fn fleet(roles: &[(&str, &str, i64)]) -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        MapSize {
            initial: 1 << 24,
            max: 1 << 26,
        },
    )
    .unwrap();
    let (writer, _thread) = StoreWriter::start(store.clone(), Arc::new(Telemetry::new()));
    let mut hosts = Vec::new();
    for (host, role, phase) in roles {
        writer
            .send(Write::Status {
                status: status(host, role),
                running: None,
                received_ms: T0,
                clock_skew_ms: None,
                order: None,
            })
            .await
            .unwrap();
        let samples = square_wave(*phase);
        writer
            .send_and_wait(|reply| Write::Samples {
                host: host.to_string(),
                points: Points::new(host, &[("role".into(), role.to_string())], &samples),
                source: Source::Mqtt,
                received_ms: T0,
                reply: Some(reply),
            })
            .await
            .unwrap();
        hosts.push((host.to_string(), samples));
    }
    writer.flush().await.unwrap();
    Fleet {
        _dir: dir,
        store,
        hosts,
    }
}

fn policies(yaml: &str) -> Vec<Policy> {
    load_text(yaml, "test.yaml").unwrap()
}

const RESTART: &str = "policies:\n  - name: cpu-hot\n    condition: \"cpu_percent > 80 for 3s\"\n    auto_remediate: true\n    action: restart\n    cooldown: 5s\n";

fn backtest(policies: Vec<Policy>, hosts: &str) -> Backtest {
    Backtest {
        policies,
        hosts: HostSelector::parse(hosts).unwrap(),
        since: Duration::from_secs(3600),
        events: MAX_EVENTS,
    }
}

/// What an agent's evaluator decides on `samples`, tick by tick: (fired, acted).
fn live(policies: &[Policy], host: &str, samples: &[Sample]) -> (u64, u64) {
    let mut engine = Engine::new(policies.to_vec());
    let mut obs = Observations::new(NOW - 3_600_000);
    obs.set_lookbacks(&engine.lookbacks());
    let mut decisions = Vec::new();
    let mut ticks: Vec<i64> = samples.iter().map(|s| s.ts_ms).collect();
    ticks.sort();
    ticks.dedup();
    for at in ticks {
        for s in samples
            .iter()
            .filter(|s| s.ts_ms == at && s.name == "cpu_percent")
        {
            obs.record(host, s);
        }
        engine.evaluate(&obs, at, &mut decisions);
    }
    let fired = decisions
        .iter()
        .filter(|d| d.kind == DecisionKind::Fired)
        .count() as u64;
    let acted = decisions
        .iter()
        .filter(|d| matches!(d.kind, DecisionKind::Act(_)))
        .count() as u64;
    (fired, acted)
}

#[tokio::test]
async fn the_replay_decides_what_an_agent_decided_on_the_same_samples() {
    let f = fleet(&[("web-1", "web", 0), ("web-2", "web", 7), ("db-1", "db", 13)]).await;
    let policies = policies(RESTART);
    let report = run(&f.store, &backtest(policies.clone(), "all"), NOW).unwrap();
    let (mut fired, mut acted) = (0, 0);
    for (host, samples) in &f.hosts {
        let (f, a) = live(&policies, host, samples);
        fired += f;
        acted += a;
    }
    assert!(fired > 10 && acted > 10, "{fired} {acted}");
    let counts = &report.policies[0];
    assert_eq!((counts.fired, counts.acted), (fired, acted), "{report:?}");
    assert_eq!(report.actions, acted);
    assert_eq!(report.hosts, vec!["db-1", "web-1", "web-2"]);
    // Every stored point was read: 600 per host; every sample time is a tick.
    assert_eq!(report.points, 3 * 600);
    assert_eq!(report.ticks, 3 * 600);
    assert!(!counts.reads_states);
    // Events are the earliest, in time order.
    // The default flap limit (5 actions within 10 minutes) stopped each host once.
    assert_eq!(counts.flap, 3);
    assert_eq!(report.events_total, fired + acted + counts.flap);
    assert!(report.events.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
    let first = &report.events[0];
    assert_eq!(
        (first.kind.as_str(), first.host.as_str()),
        ("fired", "db-1")
    );
    assert_eq!(first.at_ms, T0 + 10_000);

    // Labels select hosts; a small limit keeps the earliest events.
    let mut web = backtest(policies.clone(), "role=web");
    web.events = 3;
    let report = run(&f.store, &web, NOW).unwrap();
    assert_eq!(report.hosts, vec!["web-1", "web-2"]);
    assert_eq!(report.events.len(), 3);
    assert!(report.events_total > 3);
    assert_eq!(report.events[0].at_ms, T0 + 16_000, "{:?}", report.events);
    assert_eq!(
        run(&f.store, &backtest(policies, "db-*"), NOW)
            .unwrap()
            .hosts,
        vec!["db-1"]
    );
}

#[tokio::test]
async fn cooldown_and_flap_limits_are_counted_as_the_engine_applies_them() {
    let f = fleet(&[("web-1", "web", 0)]).await;
    let yaml = "policies:\n  - name: cpu-hot\n    condition: \"cpu_percent > 80\"\n    \
                auto_remediate: true\n    actions: [restart, restart, restart]\n    \
                cooldown: 10s\n    verify: 2s\n    flap: {max_actions: 4, within: 10m, reset_after: 1h}\n";
    let report = run(&f.store, &backtest(policies(yaml), "all"), NOW).unwrap();
    let c = &report.policies[0];
    assert_eq!(c.acted, 4, "{c:?}");
    assert!(c.cooldown > 0, "{c:?}");
    assert_eq!(c.flap, 1, "{c:?}");
    assert!(report.events.iter().any(|e| e.kind == "flap"));
}

#[tokio::test]
async fn a_budget_defers_what_live_would_have_deferred() {
    // Three web hosts in phase: each goes hot at the same second.
    let f = fleet(&[
        ("web-1", "web", 0),
        ("web-2", "web", 0),
        ("web-3", "web", 0),
    ])
    .await;
    let unbudgeted = run(&f.store, &backtest(policies(RESTART), "all"), NOW).unwrap();
    let budgeted = |verify: &str| {
        format!("{RESTART}    verify: {verify}\n    budget: {{max_concurrent: 1, per: role}}\n")
    };
    let report = run(&f.store, &backtest(policies(&budgeted("60s")), "all"), NOW).unwrap();
    let c = &report.policies[0];
    // With one place and each action holding it for 60 s, at most one action runs every
    // 60 s; the others wait (each counted once), some get their turn later.
    assert!(c.deferred > 0, "{c:?}");
    assert!(c.acted <= 600 / 60 + 1, "{c:?}");
    assert!(c.acted < unbudgeted.policies[0].acted, "{c:?}");
    let acts: Vec<&BacktestEvent> = report.events.iter().filter(|e| e.kind == "act").collect();
    assert!(
        acts.windows(2).all(|w| w[1].at_ms - w[0].at_ms >= 60_000),
        "{acts:?}"
    );
    let deferred = report.events.iter().find(|e| e.kind == "deferred").unwrap();
    let reason = deferred.detail.as_deref().unwrap();
    assert!(reason.contains("cpu-hot/role=web"), "{reason}");
    assert!(
        acts.iter()
            .any(|e| e.detail.as_deref().unwrap().contains("after waiting")),
        "{acts:?}"
    );
    // A budget per label gives each group its own place.
    let g = fleet(&[("a", "web", 0), ("b", "db", 0)]).await;
    let report = run(&g.store, &backtest(policies(&budgeted("10s")), "all"), NOW).unwrap();
    assert_eq!(report.policies[0].deferred, 0);
}

#[tokio::test]
async fn bounds_name_the_field() {
    let f = fleet(&[("web-1", "web", 0)]).await;
    let field = |b: Backtest| match run(&f.store, &b, NOW) {
        Err(BacktestError::Invalid { field, .. }) => field,
        other => panic!("{other:?}"),
    };
    assert_eq!(field(backtest(vec![], "all")), "policies");
    let many: Vec<Policy> = (0..=MAX_POLICIES)
        .map(|i| {
            let mut p = policies(RESTART).remove(0);
            p.name = format!("p{i}");
            p
        })
        .collect();
    assert_eq!(field(backtest(many, "all")), "policies");
    let mut long = backtest(policies(RESTART), "all");
    long.since = MAX_SINCE + Duration::from_secs(1);
    assert_eq!(field(long), "since");
    let mut listed = backtest(policies(RESTART), "all");
    listed.events = MAX_EVENTS + 1;
    assert_eq!(field(listed), "limit");
    assert!(parse_since("0s").is_err());
    assert!(parse_since("32d").is_err());
    assert_eq!(parse_since("7d").unwrap(), Duration::from_secs(7 * 86_400));
    assert!(HostSelector::parse("role=").is_err());
    assert!(HostSelector::parse("role=web,env").is_err());
    assert!(HostSelector::parse("web-[").is_err());
    assert!(HostSelector::parse(&"x".repeat(2000)).is_err());
    // A policy on states replays, and says its state parts never hold.
    let states =
        "policies:\n  - name: nginx\n    condition: {type: unit_state, unit: nginx.service}\n";
    let report = run(&f.store, &backtest(policies(states), "all"), NOW).unwrap();
    assert!(report.policies[0].reads_states);
    assert_eq!(report.policies[0].fired, 0);
}
