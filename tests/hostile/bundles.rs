//! Hostile bundle traffic, end to end: a real coordinator watching a bundle directory
//! (signing and publishing per group) on a Mosquitto without an ACL, real agents, and
//! another MQTT login republishing captured signed bundles, retained, as an attacker with
//! a login on such a broker could (on the embedded broker only the coordinator may).
//!
//! - A replayed old bundle is refused after the agent left the group and rejoined, and
//!   after it restarts: the agent keeps a per-group version floor.
//! - A group removed from the bundle directory is removed from agents (a signed
//!   tombstone), and its old bundle replayed afterwards stays refused.

use std::path::PathBuf;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Outgoing, Packet, QoS};
use serde_json::Value;
use vigil_shared::bundle::{self, BundleKind, PublicKey, Release, SignedBundle};
use vigil_shared::{topics, wire};
use vigil_tests::{
    bin, bundle_subscriber, bundles_of, client_options, enroll_directly, get_json,
    start_coordinator, wait_for, write, Proc, TestDir,
};

const WAIT: Duration = Duration::from_secs(30);

/// A policy that fires at once on any host (no process has this name).
fn policy(name: &str) -> String {
    format!(
        "policies:\n  - name: {name}\n    severity: info\n    condition: {{type: process_missing, process: vigil-nonesuch}}\n"
    )
}

/// One agent of these tests: enrolled once, restartable with other labels. Its host name
/// comes from a config file (not `--host`), so a restart reuses its identity and data.
struct Agent {
    host: String,
    config: PathBuf,
    data: PathBuf,
    broker: String,
    log_dir: PathBuf,
}

impl Agent {
    fn enroll(dir: &TestDir, host: &str, broker: &str) -> Agent {
        let data = dir.path().join(format!("agent-data-{host}"));
        enroll_directly(host, &data, &dir.path().join("data"));
        let config = dir.path().join(format!("agent-{host}.toml"));
        std::fs::write(&config, format!("host = \"{host}\"\n")).expect("write agent config");
        Agent {
            host: host.to_string(),
            config,
            data,
            broker: broker.to_string(),
            log_dir: dir.path().to_path_buf(),
        }
    }

    /// Starts it with `label` (it trusts the coordinator's key: the test kit passes
    /// `<dir>/data/bundle-signing.pub` as `VIGIL_BUNDLE_KEY`).
    fn start(&self, label: &str) -> Proc {
        let args: Vec<String> = [
            "--config",
            &self.config.display().to_string(),
            "--broker",
            &self.broker,
            "--interval",
            "200ms",
            "--data-dir",
            &self.data.display().to_string(),
            "--label",
            label,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        Proc::start(
            &format!("agent-{}", self.host),
            &bin("vigil-agent"),
            &args,
            &self.log_dir,
        )
    }
}

async fn host(http: &str, name: &str) -> Value {
    get_json(&format!("{http}/api/v1/hosts/{name}")).await.1
}

/// Waits until the host's status comes from a run started after `after` (its
/// `agent_started_at`) and `check` holds for it; returns it.
async fn wait_host(
    http: &str,
    name: &str,
    what: &str,
    after: Option<&str>,
    check: impl Fn(&Value) -> bool,
) -> Value {
    wait_for(&format!("{name}: {what}"), WAIT, || async {
        let h = host(http, name).await;
        let fresh = after.is_none_or(|a| h["agent_started_at"].as_str() != Some(a));
        (h["online"] == true && fresh && check(&h)).then_some(h)
    })
    .await
}

/// The policies the host's agent reports loaded.
async fn policies_loaded(http: &str, name: &str) -> Option<u64> {
    let (_, runner) = get_json(&format!("{http}/api/v1/policies/runner/status")).await;
    runner["runner"]["agents"]
        .as_array()?
        .iter()
        .find(|a| a["host"] == name)?["policies_loaded"]
        .as_u64()
}

/// Waits until the host's agent reports `count` policies loaded.
async fn wait_policies(http: &str, name: &str, count: u64) {
    wait_for(&format!("{name} to run {count} policies"), WAIT, || async {
        (policies_loaded(http, name).await == Some(count)).then_some(())
    })
    .await;
}

/// The host's groups in `GET /api/v1/drift`: `(group, desired, applied)`.
async fn drift_groups(http: &str, name: &str) -> Vec<(String, Option<u64>, Option<u64>)> {
    let (_, drift) = get_json(&format!("{http}/api/v1/drift")).await;
    drift["hosts"]
        .as_array()
        .and_then(|hosts| hosts.iter().find(|h| h["host"] == name))
        .and_then(|h| h["groups"].as_array())
        .map(|groups| {
            groups
                .iter()
                .map(|g| {
                    (
                        g["group"].as_str().unwrap_or("?").to_string(),
                        g["desired_version"].as_u64(),
                        g["applied_version"].as_u64(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Watches a group's retained topic and hands out what it carries, verified with the
/// coordinator's key: the attacker's capture.
struct Capture {
    _client: AsyncClient,
    rx: tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    key: PublicKey,
}

impl Capture {
    async fn start(broker: &str, group: &str, key: PublicKey) -> Capture {
        let id = format!("capture-{group}-{}", std::process::id());
        let (client, rx) = bundle_subscriber(broker, &id, &topics::bundle(group)).await;
        Capture {
            _client: client,
            rx,
            key,
        }
    }

    /// Waits for the message of version `version` (of `kind`); returns its payload.
    async fn version(&mut self, kind: BundleKind, version: u64) -> Vec<u8> {
        let found = tokio::time::timeout(WAIT, async {
            while let Some((_, payload)) = self.rx.recv().await {
                let Ok(signed) = wire::decode::<SignedBundle>(&payload) else {
                    continue;
                };
                let verified = bundle::open(&signed, &self.key, None);
                if signed.kind == kind && verified.is_ok_and(|r| r.version() == version) {
                    return Some(payload);
                }
            }
            None
        })
        .await;
        found
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("no {kind:?} version {version} on the topic"))
    }
}

/// Another MQTT login (an integration's) republishing `payload` retained on the group's
/// bundle topic; returns once the broker acknowledged it.
async fn republish(broker: &str, group: &str, payload: Vec<u8>) {
    let id = format!("replayer-{}", std::process::id());
    let (client, mut eventloop) = AsyncClient::new(client_options(broker, &id), 16);
    client
        .publish(topics::bundle(group), QoS::AtLeastOnce, true, payload)
        .await
        .expect("queue the publish");
    tokio::time::timeout(WAIT, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return,
                Ok(_) => {}
                Err(e) => panic!("the replayer's connection failed: {e}"),
            }
        }
    })
    .await
    .expect("the broker acknowledges the replayed bundle");
    client.disconnect().await.expect("disconnect");
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while !matches!(
            eventloop.poll().await,
            Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_)
        ) {}
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_old_bundle_is_refused_after_leaving_rejoining_and_restarting() {
    let dir = TestDir::new();
    let bundles = dir.path().join("bundles");
    write(&bundles, "web/group.yaml", "selector: {role: web}\n");
    write(&bundles, "web/web.yaml", &policy("replay-v1"));
    // A Mosquitto without an ACL: any login may republish a captured bundle there (the
    // embedded broker lets nobody but the coordinator publish one), so the agent's own
    // version floor is what is tested.
    let mosquitto = vigil_tests::start_mosquitto(dir.path());
    let c = start_coordinator(
        &dir,
        Some(&mosquitto.url),
        &["--bundles", &bundles.display().to_string()],
    )
    .await;
    let http = c.http.as_str();
    let key = PublicKey::load(
        &dir.path()
            .join("data/bundle-signing.pub")
            .display()
            .to_string(),
    )
    .expect("the coordinator's public key");
    let mut capture = Capture::start(&c.broker, "web", key).await;
    let v1 = capture.version(BundleKind::Bundle, 1).await;

    let agent = Agent::enroll(&dir, "h-replay", &c.broker);
    let proc = agent.start("role=web");
    wait_host(http, "h-replay", "runs web:1", None, |h| {
        bundles_of(h) == ["web:1"]
    })
    .await;
    write(&bundles, "web/web.yaml", &policy("replay-v2"));
    capture.version(BundleKind::Bundle, 2).await;
    let h = wait_host(http, "h-replay", "runs web:2", None, |h| {
        bundles_of(h) == ["web:2"]
    })
    .await;

    // The host leaves the group (its labels change; the agent restarts with them).
    proc.stop();
    let proc = agent.start("role=db");
    let h = wait_host(
        http,
        "h-replay",
        "left the web group",
        h["agent_started_at"].as_str(),
        |h| bundles_of(h).is_empty() && h["labels"]["role"] == "db",
    )
    .await;
    // It rejoins (labels back, another restart). It left the group, so no web bundle is
    // in force: only its floor remembers version 2.
    proc.stop();
    let proc = agent.start("role=web");
    let h = wait_host(
        http,
        "h-replay",
        "rejoined",
        h["agent_started_at"].as_str(),
        |h| h["labels"]["role"] == "web",
    )
    .await;
    // Mosquitto hands it the retained version 2 again as it resubscribes; never less.
    assert!(bundles_of(&h).iter().all(|b| b == "web:2"), "{h}");
    // Another login replaces the retained version with the captured version 1.
    republish(&c.broker, "web", v1.clone()).await;
    let h = wait_host(http, "h-replay", "refused version 1", None, |h| {
        h["bundle_error"]
            .as_str()
            .is_some_and(|e| e.contains("version 1 is not newer than the applied version 2"))
    })
    .await;
    println!(
        "rejoined, offered the replayed version 1: {}",
        h["bundle_error"]
    );
    assert!(
        bundles_of(&h).iter().all(|b| b == "web:2"),
        "version 1 not applied: {h}"
    );

    // The coordinator publishes the group again (a new version): taken at once.
    write(&bundles, "web/web.yaml", &policy("replay-v3"));
    wait_host(http, "h-replay", "runs web:3", None, |h| {
        bundles_of(h) == ["web:3"] && h["bundle_error"].is_null()
    })
    .await;

    // A member offered the replay refuses it and keeps its version...
    republish(&c.broker, "web", v1.clone()).await;
    let h = wait_host(http, "h-replay", "refused version 1 again", None, |h| {
        h["bundle_error"]
            .as_str()
            .is_some_and(|e| e.contains("version 1 is not newer than the applied version 3"))
    })
    .await;
    assert_eq!(bundles_of(&h), ["web:3"]);
    // ...and so does it after a restart (its floor and version 3 come from its store).
    proc.stop();
    let proc = agent.start("role=web");
    wait_host(
        http,
        "h-replay",
        "restarted with web:3",
        h["agent_started_at"].as_str(),
        |h| bundles_of(h) == ["web:3"],
    )
    .await;
    republish(&c.broker, "web", v1.clone()).await;
    let h = wait_host(
        http,
        "h-replay",
        "refused version 1 after the restart",
        None,
        |h| {
            h["bundle_error"]
                .as_str()
                .is_some_and(|e| e.contains("version 1 is not newer than the applied version 3"))
                && bundles_of(h) == ["web:3"]
        },
    )
    .await;
    println!(
        "after a restart: {} and {}",
        bundles_of(&h).join(","),
        h["bundle_error"]
    );
    wait_policies(http, "h-replay", 1).await;
    assert_eq!(
        drift_groups(http, "h-replay").await,
        [("web".to_string(), Some(3), Some(3))]
    );
    proc.stop();
    c.proc.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_group_is_removed_from_agents_and_its_old_bundle_stays_refused() {
    let dir = TestDir::new();
    let bundles = dir.path().join("bundles");
    write(&bundles, "gone/group.yaml", "selector: {role: web}\n");
    write(&bundles, "gone/gone.yaml", &policy("gone-v1"));
    write(&bundles, "stays/group.yaml", "selector: {role: web}\n");
    write(&bundles, "stays/stays.yaml", &policy("stays-v1"));
    // A Mosquitto without an ACL: any login may republish a captured bundle there (the
    // embedded broker lets nobody but the coordinator publish one), so the agent's own
    // version floor is what is tested.
    let mosquitto = vigil_tests::start_mosquitto(dir.path());
    let c = start_coordinator(
        &dir,
        Some(&mosquitto.url),
        &["--bundles", &bundles.display().to_string()],
    )
    .await;
    let http = c.http.as_str();
    let key = PublicKey::load(
        &dir.path()
            .join("data/bundle-signing.pub")
            .display()
            .to_string(),
    )
    .expect("the coordinator's public key");
    let mut capture = Capture::start(&c.broker, "gone", key.clone()).await;
    let v1 = capture.version(BundleKind::Bundle, 1).await;

    let agent = Agent::enroll(&dir, "h-removed", &c.broker);
    let proc = agent.start("role=web");
    wait_host(http, "h-removed", "runs both groups", None, |h| {
        bundles_of(h) == ["gone:1", "stays:1"]
    })
    .await;
    wait_policies(http, "h-removed", 2).await;

    // The group's folder is deleted: the coordinator publishes its signed tombstone at
    // the next version, and the agent drops the group.
    std::fs::remove_dir_all(bundles.join("gone")).expect("delete the group");
    let tombstone = capture.version(BundleKind::Tombstone, 2).await;
    let signed: SignedBundle = wire::decode(&tombstone).expect("a signed message");
    match bundle::open(&signed, &key, None) {
        Ok(Release::Removed(t)) => assert_eq!((t.group.as_str(), t.version), ("gone", 2)),
        other => panic!("not a tombstone: {other:?}"),
    }
    let h = wait_host(http, "h-removed", "dropped the removed group", None, |h| {
        bundles_of(h) == ["stays:1"]
    })
    .await;
    assert!(h["bundle_error"].is_null(), "{h}");
    wait_policies(http, "h-removed", 1).await;
    assert_eq!(
        drift_groups(http, "h-removed").await,
        [("stays".to_string(), Some(1), Some(1))],
        "the removed group is gone from the host's drift"
    );

    // The captured version 1, republished by another login, is refused...
    republish(&c.broker, "gone", v1.clone()).await;
    let h = wait_host(http, "h-removed", "refused the old bundle", None, |h| {
        h["bundle_error"]
            .as_str()
            .is_some_and(|e| e.contains("version 1 is not newer than the applied version 2"))
    })
    .await;
    println!(
        "after the removal, the replayed version 1: {}",
        h["bundle_error"]
    );
    assert_eq!(bundles_of(&h), ["stays:1"]);
    // ...and stays refused after the agent restarts.
    proc.stop();
    let proc = agent.start("role=web");
    wait_host(
        http,
        "h-removed",
        "restarted without the removed group",
        h["agent_started_at"].as_str(),
        // The retained message it finds on subscribing is the replayed version 1: refused.
        |h| {
            bundles_of(h) == ["stays:1"]
                && h["bundle_error"]
                    .as_str()
                    .is_none_or(|e| e.contains("version 1 is not newer"))
        },
    )
    .await;
    republish(&c.broker, "gone", v1.clone()).await;
    let h = wait_host(
        http,
        "h-removed",
        "refused the old bundle after the restart",
        None,
        |h| {
            h["bundle_error"]
                .as_str()
                .is_some_and(|e| e.contains("version 1 is not newer than the applied version 2"))
        },
    )
    .await;
    assert_eq!(bundles_of(&h), ["stays:1"]);
    wait_policies(http, "h-removed", 1).await;
    assert_eq!(
        drift_groups(http, "h-removed").await,
        [("stays".to_string(), Some(1), Some(1))]
    );
    proc.stop();
    c.proc.stop();
}
