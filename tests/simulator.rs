//! The fleet simulator against a real coordinator (embedded broker, real LMDB, real
//! HTTP), its virtual agents enrolled over REST, sealing every message and keeping what
//! they queue until the coordinator acknowledges it stored it: CHAOS mode for 60 s
//! leaves the coordinator up, every malformed payload counted under its reason in
//! `/metrics` (the seal layer's, the content rules' and the missing delivery header's),
//! and every generated action transition and metric sample stored exactly once
//! (duplicates and resends included), looked up by id; a coordinator SIGKILLed mid-run
//! and restarted on the same data loses nothing and stores nothing twice; and the
//! `vigil-sim simulate` command enrolls its fleet and verifies a run on its own, also
//! when run a second time against the same coordinator.

use std::process::Command;
use std::time::Duration;

use vigil_sim::chaos::{Chaos, Malformed};
use vigil_sim::enroll::Enroller;
use vigil_sim::fleet::{Fleet, FleetConfig};
use vigil_sim::mode::Mode;
use vigil_sim::verify::{verify, CoordinatorCounts};
use vigil_sim::virtual_agent::Plan;
use vigil_tests::{bin, get_json, post_raw, start_coordinator, wait_for, Proc, TestDir};

/// `vigil_mqtt_messages_rejected_total` summed over the series with this reason.
fn rejected_for(page: &str, reason: &str) -> u64 {
    page.lines()
        .filter(|l| l.starts_with("vigil_mqtt_messages_rejected_total{"))
        .filter(|l| l.contains(&format!("reason=\"{reason}\"")))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The sum of `name`'s series whose labels hold `label` (e.g. `outcome="ahead"`).
fn sum_where(page: &str, name: &str, label: &str) -> u64 {
    page.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread")]
async fn chaos_for_60s_counts_every_malformed_payload_and_stores_each_action_once() {
    let dir = TestDir::new();
    let mut c = start_coordinator(&dir, None, &[]).await;
    let mut config = FleetConfig {
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
            signatures_only: false,
            follow_bundles: false,
            start_together: false,
            pattern: None,
        },
        logins: Default::default(),
    };
    config.logins = Enroller::admin(&c.http, c.token.as_deref())
        .enroll(&config.hosts())
        .await
        .unwrap();
    assert_eq!(config.logins.len(), 50);
    let before = CoordinatorCounts::read(&c.http).await.unwrap();
    let fleet = Fleet::start(config).unwrap();
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
    assert_eq!(verification.transitions.looked_up, outcome.actions.len());
    assert_eq!(
        verification.transitions.generated, report.action_transitions,
        "{verification}"
    );
    assert!(verification.samples.generated > 10_000, "{verification}");
    assert_eq!(verification.counters_skipped, None, "{verification}");
    assert_eq!(report.unacknowledged, 0, "{report}");
    assert_eq!(report.stored, report.queued(), "{report}");

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
    assert_eq!(
        rejected_for(&page, "bad_signature"),
        sent(Malformed::Forged)
    );
    assert_eq!(
        rejected_for(&page, "no_delivery"),
        sent(Malformed::Unqueued)
    );
    // Nothing else was refused: no replays, no unknown agents.
    let all: u64 = vigil_sim::verify::rejected_by_reason(&page)
        .values()
        .sum::<f64>() as u64;
    assert_eq!(all, report.malformed_total(), "{page}");
    // Every copy was sealed anew: nothing was dropped as an identical redelivery, the
    // store's idempotence absorbed them (checked above: each stored once). (On the status
    // channel, an old connection's last will arriving after the reconnect is dropped and
    // counted there too; abrupt disconnects make that legitimately happen.)
    let counter = |name: &str| vigil_tests::prometheus_value(&page, name) as u64;
    for channel in ["metrics", "actions", "events"] {
        assert_eq!(
            counter(&format!(
                "vigil_mqtt_messages_duplicate_total{{channel=\"{channel}\"}}"
            )),
            0,
            "{channel}"
        );
    }
    // Every virtual agent logged in with its own enrolled login.
    assert_eq!(counter("vigil_mqtt_auth_failures_total"), 0);

    // Nothing the agents queued was given up on, nothing sent too far ahead of what was
    // stored; the injected duplicates (each the same place in the outbox, sent twice)
    // were not stored again.
    assert_eq!(counter("vigil_metric_batches_missing_total"), 0);
    assert_eq!(
        sum_where(
            &page,
            "vigil_delivery_redelivered_total",
            "outcome=\"ahead\""
        ),
        0
    );
    assert!(
        sum_where(
            &page,
            "vigil_delivery_redelivered_total",
            "stream=\"outbox\""
        ) > 0,
        "{page}"
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
    let token = c
        .token
        .clone()
        .expect("the coordinator wrote an admin token");
    // The admin token makes the join token, and authenticates the verification's action
    // lookups. Twice against the same coordinator: the second run revokes the hosts the
    // first one enrolled and enrolls them again.
    for run in 0..2 {
        let output = Command::new(bin("vigil-sim"))
            .args([
                "simulate",
                "--token",
                &token,
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
        assert!(output.status.success(), "run {run}: {stdout}\n{stderr}");
        assert!(stdout.contains("simulated 10 agents"), "{stdout}");
        assert!(stdout.contains("verify: PASSED"), "{stdout}");
        assert!(stderr.contains("10 virtual agents enrolled"), "{stderr}");
        if run == 1 {
            assert!(stderr.contains("revoking 10 identities"), "{stderr}");
        }
    }

    // With a join token (and --coordinator, --verify naming no URL) instead of the
    // admin token: other host names, since without the admin token nothing is revoked.
    let (status, join) = post_raw(
        &format!("{}/api/v1/join-tokens", c.http),
        r#"{"name": "sim-test", "uses": 6, "ttl": "1h"}"#,
    )
    .await;
    assert_eq!(status, 201, "{join}");
    let output = Command::new(bin("vigil-sim"))
        .args([
            "simulate",
            "--join-token",
            join["token"].as_str().unwrap(),
            "--coordinator",
            &c.http,
            "--broker",
            &c.broker,
            "--host-prefix",
            "joined-",
            "--agents",
            "3",
            "--duration",
            "2s",
            "--interval",
            "100ms",
            "--action-every",
            "0",
            "--malformed-rate",
            "0.2",
            "--verify",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("verify: PASSED"), "{stdout}");
    // Without a REST token nothing can be looked up by id: it says so.
    assert!(
        stdout.contains("verify: nothing looked up by id"),
        "{stdout}"
    );
    // Without the admin token, hosts enrolled earlier cannot be replaced (the join token
    // has uses left: it is the host names that are taken).
    let output = Command::new(bin("vigil-sim"))
        .args([
            "simulate",
            "--join-token",
            join["token"].as_str().unwrap(),
            "--coordinator",
            &c.http,
            "--broker",
            &c.broker,
            "--host-prefix",
            "joined-",
            "--agents",
            "3",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("already enrolled"), "{stderr}");

    // Without any token it says what it needs.
    let output = Command::new(bin("vigil-sim"))
        .args(["simulate", "--broker", &c.broker, "--coordinator", &c.http])
        .env_remove("VIGIL_TOKEN")
        .env_remove("VIGIL_JOIN_TOKEN")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("simulate needs an admin REST token (--token, see <data-dir>/admin.token)"),
        "{stderr}"
    );

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

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_killed_mid_run_loses_nothing_and_stores_nothing_twice() {
    let dir = TestDir::new();
    let c = start_coordinator(&dir, None, &[]).await;
    let mut config = FleetConfig {
        agents: 20,
        host_prefix: "restart-".into(),
        labels: Vec::new(),
        connect_rate: 500,
        plan: Plan {
            broker: c.broker.parse().unwrap(),
            credentials: None,
            mode: Mode::Steady,
            chaos: Chaos::NONE,
            interval: Duration::from_millis(200),
            samples_per_batch: 20,
            action_every: 1,
            duration: Duration::from_secs(25),
            batches_per_agent: None,
            seed: 9,
            signatures_only: false,
            follow_bundles: false,
            start_together: false,
            pattern: None,
        },
        logins: Default::default(),
    };
    config.logins = Enroller::admin(&c.http, c.token.as_deref())
        .enroll(&config.hosts())
        .await
        .unwrap();
    let before = CoordinatorCounts::read(&c.http).await.unwrap();
    let fleet = Fleet::start(config).unwrap();

    // Mid-run, the coordinator (and its embedded broker) dies without a word, then comes
    // back on the same data directory and ports.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let at_kill = fleet.snapshot();
    assert!(at_kill.stored > 0, "{}", at_kill.progress_line());
    let vigil_tests::CoordinatorProc {
        proc,
        http,
        broker,
        token,
        ..
    } = c;
    proc.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let restarted = Proc::start(
        "coordinator-restarted",
        &bin("vigil-coordinator"),
        &[
            "serve".into(),
            "--data-dir".into(),
            dir.path().join("data").display().to_string(),
            "--listen".into(),
            http.trim_start_matches("http://").to_string(),
            "--mqtt-listen".into(),
            broker.trim_start_matches("mqtt://").to_string(),
        ],
        dir.path(),
    );
    let health = format!("{http}/health");
    wait_for(
        "the restarted coordinator",
        Duration::from_secs(30),
        || async {
            reqwest::get(&health)
                .await
                .ok()
                .filter(|r| r.status().is_success())
        },
    )
    .await;

    let outcome = fleet.wait(Some(Duration::from_secs(5))).await;
    println!("{}", outcome.report);
    let report = &outcome.report;
    assert!(
        report.connection_errors > 0,
        "the agents saw it go: {report}"
    );
    assert!(report.batches > at_kill.batches, "{report}");
    assert_eq!(report.unacknowledged, 0, "{report}");

    let verification = verify(
        &http,
        token.as_deref(),
        &outcome,
        before,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    println!("{verification}");
    assert_eq!(verification.transitions.lost, 0, "{verification}");
    assert_eq!(verification.transitions.stored_twice, 0, "{verification}");
    assert_eq!(verification.samples.lost, 0, "{verification}");
    assert_eq!(verification.samples.stored_twice, 0, "{verification}");
    assert_eq!(
        verification.transitions.generated, report.action_transitions,
        "{verification}"
    );
    assert_eq!(verification.transitions.looked_up, outcome.actions.len());
    assert!(verification.counters_skipped.is_some(), "{verification}");
    assert!(verification.passed(), "{verification}");
    restarted.stop();
}
