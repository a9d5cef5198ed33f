//! Policy backtest against a real coordinator (embedded broker, real LMDB, real HTTP):
//! virtual agents publish a known pattern (a square wave of `cpu_percent`, each host
//! shifted) and, as real agents do at every tick, run the shared policy engine on the
//! very samples they publish, counting what it fires and acts; the backtest of the
//! stored history — over REST, and with the `vigil-coordinator policy backtest` command
//! offline and through the API — counts the same, and not zero. Then a bundle group
//! whose backtest would act more than its `max_actions` is not published, with the reason
//! in `GET /api/v1/bundles`, while a group within its gate is.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use vigil_shared::policy::load::load_text;
use vigil_sim::chaos::Chaos;
use vigil_sim::enroll::Enroller;
use vigil_sim::fleet::{Fleet, FleetConfig};
use vigil_sim::mode::Mode;
use vigil_sim::pattern::Pattern;
use vigil_sim::virtual_agent::Plan;
use vigil_tests::{bin, create_token, get_json, post_raw, start_coordinator, write, TestDir};

/// Acts once on every high half of the wave (it lasts 2 s: ten batches, one per 200 ms;
/// the verify window outlasts it, so the action is judged resolved, never escalated).
const POLICY: &str = "policies:\n  - name: cpu-hot\n    condition: \"cpu_percent > 80 for 600ms\"\n    auto_remediate: true\n    action: restart\n    cooldown: 1s\n    verify: 5s\n    flap: {max_actions: 100, within: 1h, reset_after: 1h}\n";

const AGENTS: usize = 6;

/// `vigil-coordinator ARGS`: its stdout, after checking it succeeded.
fn coordinator_cli(args: &[&str]) -> String {
    let output = Command::new(bin("vigil-coordinator"))
        .args(args)
        .output()
        .expect("run vigil-coordinator");
    assert!(
        output.status.success(),
        "vigil-coordinator {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_backtest_counts_what_live_agents_decided_and_a_gate_holds_a_bundle_back() {
    let dir = TestDir::new();
    let bundles = dir.path().join("bundles");
    std::fs::create_dir_all(&bundles).unwrap();
    let bundles_arg = bundles.display().to_string();
    let c = start_coordinator(&dir, None, &["--bundles", &bundles_arg]).await;

    // The fleet: six agents (roles web, db, cache round-robin), 150 batches each, one
    // every 200 ms; the wave is high for 10 batches, low for 10, shifted 3 per agent.
    let mut config = FleetConfig {
        agents: AGENTS,
        host_prefix: "bt-".into(),
        labels: vec![("env".into(), "test".into())],
        connect_rate: 100,
        plan: Plan {
            broker: c.broker.parse().unwrap(),
            credentials: None,
            mode: Mode::Steady,
            chaos: Chaos::NONE,
            interval: Duration::from_millis(200),
            samples_per_batch: 10,
            action_every: 0,
            duration: Duration::from_secs(600),
            batches_per_agent: Some(150),
            seed: 7,
            signatures_only: false,
            follow_bundles: false,
            start_together: false,
            pattern: Some(Pattern {
                metric: "cpu_percent".into(),
                low: 10.0,
                high: 95.0,
                half_period: 10,
                phase_step: 3,
                policies: load_text(POLICY, "cpu.yaml").unwrap(),
            }),
        },
        logins: Default::default(),
    };
    config.logins = Enroller::admin(&c.http, c.token.as_deref())
        .enroll(&config.hosts())
        .await
        .unwrap();
    let outcome = Fleet::start(config).unwrap().wait(None).await;
    let report = &outcome.report;
    assert_eq!(report.unacknowledged, 0, "{report}");
    assert_eq!(report.stored, report.queued(), "{report}");
    let live = outcome.decided["cpu-hot"];
    println!("live agents decided: {live:?}");
    // Each agent sees about seven high halves in 150 batches.
    assert!(live.fired >= AGENTS as u64 * 5, "{live:?}");
    assert_eq!(live.acted, live.fired, "{live:?}");

    // Over REST (a viewer may ask): the same counts.
    let url = format!("{}/api/v1/policies/backtest", c.http);
    let body = json!({"policies": POLICY, "hosts": "bt-*", "since": "1h", "limit": 1000});
    let (status, answer) = post_raw(&url, &body.to_string()).await;
    assert_eq!(status, 200, "{answer}");
    let counts = &answer["policies"][0];
    println!("backtest: {counts}");
    assert_eq!(counts["policy"], "cpu-hot");
    assert_eq!(counts["fired"], live.fired, "{counts}");
    assert_eq!(counts["acted"], live.acted, "{counts}");
    assert_eq!(answer["actions"], live.acted);
    assert_eq!(answer["hosts"].as_array().unwrap().len(), AGENTS);
    assert_eq!(
        answer["events_total"].as_u64().unwrap(),
        live.fired + live.acted,
        "{answer}"
    );
    let events = answer["events"].as_array().unwrap();
    assert_eq!(events.len() as u64, (live.fired + live.acted).min(1000));
    assert!(events
        .iter()
        .all(|e| e["kind"] == "fired" || (e["kind"] == "act" && e["detail"] == "restart")));

    // The command line, offline on the data dir, and through the API with a viewer token.
    let file = dir.path().join("cpu.yaml");
    std::fs::write(&file, POLICY).unwrap();
    let file_arg = file.display().to_string();
    let data = dir.path().join("data").display().to_string();
    let offline: Value = serde_json::from_str(&coordinator_cli(&[
        "policy",
        "backtest",
        &file_arg,
        "--data-dir",
        &data,
        "--hosts",
        "bt-*",
        "--since",
        "1h",
        "--json",
    ]))
    .unwrap();
    assert_eq!(offline["policies"][0]["fired"], live.fired);
    assert_eq!(offline["policies"][0]["acted"], live.acted);
    let viewer = create_token(&dir.path().join("data"), "viewer", "backtester");
    let table = coordinator_cli(&[
        "policy", "backtest", &file_arg, "--api", &c.http, "--token", &viewer, "--hosts",
        "role=web", "--since", "1h",
    ]);
    println!("{table}");
    assert!(table.contains("2 host(s)"), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("cpu-hot"))
        .unwrap_or_else(|| panic!("{table}"));
    let numbers: Vec<u64> = row
        .split_whitespace()
        .skip(1)
        .map(|n| n.parse().unwrap())
        .collect();
    assert!(numbers[0] > 0 && numbers[1] > 0, "{row}");

    // Out-of-range requests are refused naming the field, and counted.
    let (status, refused) = post_raw(&url, r#"{"since": "90d"}"#).await;
    assert_eq!((status, refused["field"].as_str()), (422, Some("since")));

    // The gate: the web hosts (bt-00000, bt-00003) would act far more than once.
    let (_, web_only) = post_raw(
        &url,
        &json!({"policies": POLICY, "hosts": "role=web", "since": "1h"}).to_string(),
    )
    .await;
    let web_actions = web_only["actions"].as_u64().unwrap();
    assert!(web_actions > 1, "{web_only}");
    // Written hidden, then renamed: the coordinator's watcher sees each group whole.
    for (group, max) in [("web", 1), ("roomy", 100_000)] {
        write(
            &bundles,
            &format!(".{group}/group.yaml"),
            &format!("selector: {{role: web}}\nbacktest: {{since: 1h, max_actions: {max}}}\n"),
        );
        write(&bundles, &format!(".{group}/cpu.yaml"), POLICY);
        std::fs::rename(bundles.join(format!(".{group}")), bundles.join(group)).unwrap();
    }
    let (status, reload) = post_raw(&format!("{}/api/v1/bundles/reload", c.http), "").await;
    assert_eq!(status, 422, "{reload}");
    let errors = reload["errors"].to_string();
    assert!(
        errors.contains("web") && errors.contains("more than max_actions 1"),
        "{reload}"
    );
    let (status, list) = get_json(&format!("{}/api/v1/bundles", c.http)).await;
    assert_eq!(status, 200);
    let published: Vec<&str> = list["bundles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["group"].as_str().unwrap())
        .collect();
    assert_eq!(published, vec!["roomy"], "{list}");
    let gates = list["gates"].as_array().unwrap();
    let gate = |group: &str| {
        gates
            .iter()
            .find(|g| g["group"] == group)
            .unwrap_or_else(|| panic!("{list}"))
    };
    let web = gate("web");
    assert_eq!(web["passed"], false);
    assert_eq!(web["actions"], web_actions);
    assert_eq!(web["hosts"], 2);
    let reason = web["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("{web_actions} actions")) && reason.contains("max_actions 1"),
        "{reason}"
    );
    assert_eq!(gate("roomy")["passed"], true);
    assert!(
        list["error"].as_str().unwrap().contains("not published"),
        "{list}"
    );
    let page = reqwest::get(format!("{}/metrics", c.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(vigil_tests::prometheus_value(&page, "vigil_bundle_gate_refusals_total") >= 1.0);
    assert!(
        vigil_tests::prometheus_value(
            &page,
            "vigil_http_requests_rejected_total{field=\"since\",route=\"/api/v1/policies/backtest\"}"
        ) >= 1.0,
        "{page}"
    );

    // `bundle build --data-dir` runs the same gates: refused, nothing written.
    let out = dir.path().join("out");
    let output = Command::new(bin("vigil-coordinator"))
        .args(["bundle", "build", &bundles_arg, "--out"])
        .arg(&out)
        .args(["--data-dir", &data])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("max_actions 1"), "{stderr}");
    assert!(!out.join("roomy.bundle").exists());
}
