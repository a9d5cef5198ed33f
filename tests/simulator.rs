//! The fleet simulator against a real coordinator (embedded broker, real LMDB, real
//! HTTP): CHAOS mode for 60 s leaves the coordinator up, every malformed payload counted
//! under its reason in `/metrics`, and every well-formed action transition stored exactly
//! once; and the `vigil-sim simulate` command verifies a run on its own.

use std::process::Command;
use std::time::Duration;

use vigil_sim::chaos::{Chaos, Malformed};
use vigil_sim::fleet::{Fleet, FleetConfig};
use vigil_sim::mode::Mode;
use vigil_sim::verify::{verify, CoordinatorCounts};
use vigil_sim::virtual_agent::Plan;
use vigil_tests::{bin, get_json, start_coordinator, TestDir};

/// `vigil_mqtt_messages_rejected_total` summed over the series with this reason.
fn rejected_for(page: &str, reason: &str) -> u64 {
    page.lines()
        .filter(|l| l.starts_with("vigil_mqtt_messages_rejected_total{"))
        .filter(|l| l.contains(&format!("reason=\"{reason}\"")))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread")]
async fn chaos_for_60s_counts_every_malformed_payload_and_stores_each_action_once() {
    let dir = TestDir::new();
    let mut c = start_coordinator(&dir, None, &[]).await;
    let before = CoordinatorCounts::read(&c.http).await.unwrap();
    let fleet = Fleet::start(FleetConfig {
        agents: 50,
        host_prefix: "chaos-".into(),
        labels: vec![("env".into(), "test".into())],
        connect_rate: 500,
        plan: Plan {
            broker: c.broker.parse().unwrap(),
            credentials: None,
            mode: Mode::Chaos,
            chaos: Chaos::DEFAULT,
            interval: Duration::from_millis(200),
            samples_per_batch: 20,
            action_every: 5,
            duration: Duration::from_secs(60),
            batches_per_agent: None,
            seed: 42,
        },
    })
    .unwrap();
    let outcome = fleet.wait(Some(Duration::from_secs(10))).await;
    println!("{}", outcome.report);
    let report = &outcome.report;
    // Every fault really happened.
    assert!(report.malformed_total() > 100, "{report}");
    assert!(
        report.malformed.iter().all(|(_, n)| *n > 0),
        "every malformed kind was sent: {report}"
    );
    assert!(report.action_redeliveries > 50, "{report}");
    assert!(report.abrupt_disconnects > 20, "{report}");
    assert!(report.out_of_order > 50, "{report}");
    assert!(report.action_transitions > 1000, "{report}");

    let verification = verify(
        &c.http,
        c.token.as_deref(),
        &outcome,
        before,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    println!("{verification}");
    assert!(verification.passed(), "{verification}");
    assert_eq!(verification.actions_checked, outcome.actions.len());

    // Each kind is counted under the reason that names it.
    let page = reqwest::get(format!("{}/metrics", c.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let sent = |kind: Malformed| {
        report
            .malformed
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(0, |(_, n)| *n)
    };
    assert_eq!(rejected_for(&page, "empty"), sent(Malformed::Empty));
    assert_eq!(
        rejected_for(&page, "unknown_version"),
        sent(Malformed::UnknownVersion)
    );
    assert_eq!(
        rejected_for(&page, "malformed"),
        sent(Malformed::Truncated) + sent(Malformed::Garbage)
    );
    assert_eq!(rejected_for(&page, "invalid"), sent(Malformed::Invalid));
    assert_eq!(
        rejected_for(&page, "host_mismatch"),
        sent(Malformed::HostMismatch)
    );

    // Batches that never arrived and stragglers are counted, not silent: each malformed
    // payload left a gap where its number was (so did each late batch, and batches
    // queued in a connection that was cut: virtual agents, like real ones, keep only
    // action events durable).
    let counter = |name: &str| vigil_sim::procs::prometheus_value(&page, name) as u64;
    let missing = counter("vigil_metric_batches_missing_total");
    let late = counter("vigil_metric_batches_late_total");
    assert!(
        missing >= report.malformed_total(),
        "missing {missing}: {report}"
    );
    assert!(
        late > 0 && late <= report.out_of_order,
        "late {late}: {report}"
    );

    // The coordinator is still up and answering.
    assert!(
        c.proc.child.try_wait().unwrap().is_none(),
        "coordinator exited"
    );
    let (status, health) = get_json(&format!("{}/health", c.http)).await;
    assert_eq!(status, 200, "{health}");
    let (status, hosts) = get_json(&format!("{}/api/v1/hosts", c.http)).await;
    assert_eq!(status, 200);
    let listed = hosts
        .as_array()
        .or_else(|| hosts["hosts"].as_array())
        .map_or(0, |h| h.len());
    assert!(listed >= 50, "all 50 virtual hosts are known: {hosts}");
    c.proc.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_simulate_command_verifies_its_own_run() {
    let dir = TestDir::new();
    let c = start_coordinator(&dir, None, &[]).await;
    let mut simulate = Command::new(bin("vigil-sim"));
    simulate.arg("simulate");
    // The verification's action lookups authenticate with the coordinator's admin token.
    if let Some(token) = &c.token {
        simulate.args(["--token", token]);
    }
    let output = simulate
        .args([
            "--broker",
            &c.broker,
            "--agents",
            "10",
            "--mode",
            "burst",
            "--duration",
            "5s",
            "--interval",
            "100ms",
            "--malformed-rate",
            "0.1",
            "--duplicate-rate",
            "0.3",
            "--verify",
            &c.http,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("simulated 10 agents"), "{stdout}");
    assert!(stdout.contains("verify: PASSED"), "{stdout}");

    // Bad settings are refused with a message that names them.
    let output = Command::new(bin("vigil-sim"))
        .args(["simulate", "--agents", "0", "--broker", &c.broker])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--agents"));
    let output = Command::new(bin("vigil-sim"))
        .args(["simulate", "--malformed-rate", "2", "--broker", &c.broker])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--malformed-rate"));
    c.proc.stop();
}
