//! End-to-end signed policy bundles on the agent: real agent binaries, a real coordinator
//! as the broker (and as the reader of the agents' status and events), and bundles signed
//! and published here with a raw MQTT client, retained, as the coordinator would.
//!
//! Host groups: `web` selects `web=on`, `db` selects `db=on`; the hosts are `h-web`
//! (`web=on`), `h-db` (`db=on`) and `h-both` (both labels).

use std::path::Path;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, QoS};
use serde_json::Value;
use vigil_shared::bundle::{Bundle, BundleFile, BundleKeys, SignedBundle};
use vigil_shared::topics;
use vigil_tests::{
    adopt_admin_token, bin, bundles_of, client_options, free_port, get_json, start_agent_with,
    start_coordinator, wait_for, CoordinatorProc, Proc, TestDir,
};

const WAIT: Duration = Duration::from_secs(30);

/// A policy that fires at once on any host: no process has this name.
fn missing_process_policy(name: &str) -> String {
    format!(
        "policies:\n  - name: {name}\n    severity: info\n    condition: {{type: process_missing, process: vigil-nonesuch}}\n"
    )
}

fn bundle(group: &str, version: u64, policy: &str) -> Bundle {
    Bundle {
        group: group.into(),
        selector: vec![(group.to_string(), "on".to_string())],
        version,
        created_at_ms: vigil_shared::time::now_ms(),
        files: vec![BundleFile {
            name: format!("{group}.yaml"),
            text: missing_process_policy(policy),
        }],
        budget: None,
    }
}

/// An agent evaluating every 200 ms, with the bundle key and its own data dir, enrolled
/// with the coordinator store in `<dir>/data`.
fn start_agent(dir: &TestDir, host: &str, broker: &str, labels: &[&str], key: &str) -> Proc {
    start_agent_in(dir, dir.path(), host, broker, labels, key)
}

/// [`start_agent`], enrolled with the coordinator store in `<root>/data` and logging under
/// `root` (its data dir stays `<dir>/agent-data-{host}`).
fn start_agent_in(
    dir: &TestDir,
    root: &Path,
    host: &str,
    broker: &str,
    labels: &[&str],
    key: &str,
) -> Proc {
    let data = dir.path().join(format!("agent-data-{host}"));
    let data = data.display().to_string();
    let mut more = vec!["--data-dir", &data, "--bundle-key", key];
    for label in labels {
        more.extend(["--label", label]);
    }
    start_agent_with(host, broker, "200ms", &more, root)
}

/// A raw MQTT publisher: publishes retained QoS 1 and waits for the broker's ack.
struct Publisher {
    client: AsyncClient,
    acks: tokio::sync::mpsc::Receiver<()>,
}

impl Publisher {
    /// Connects with `options` (an integration's login: [`client_options`]).
    async fn connect(options: MqttOptions) -> Publisher {
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (tx, acks) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                        let _ = tx.send(()).await;
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Publisher { client, acks }
    }

    async fn publish(&mut self, group: &str, signed: &SignedBundle) {
        self.publish_raw(group, vigil_shared::wire::encode(signed))
            .await;
    }

    async fn publish_raw(&mut self, group: &str, payload: Vec<u8>) {
        self.client
            .publish(topics::bundle(group), QoS::AtLeastOnce, true, payload)
            .await
            .expect("queue publish");
        tokio::time::timeout(WAIT, self.acks.recv())
            .await
            .expect("broker acks the bundle");
    }
}

async fn host(http: &str, host: &str) -> Value {
    get_json(&format!("{http}/api/v1/hosts/{host}")).await.1
}

/// Waits until every host reports exactly its expected bundles.
async fn wait_bundles(http: &str, expected: &[(&str, &[&str])]) {
    for (name, want) in expected {
        let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        wait_for(
            &format!("{name} to report bundles {want:?}"),
            WAIT,
            || async {
                let h = host(http, name).await;
                (bundles_of(&h) == want).then_some(())
            },
        )
        .await;
    }
}

/// The `fired` events of one policy on one host.
async fn fired(http: &str, host: &str, policy: &str) -> Vec<Value> {
    let (_, body) = get_json(&format!(
        "{http}/api/v1/violations?limit=100&host={host}&policy={policy}&kind=fired"
    ))
    .await;
    body["events"].as_array().cloned().unwrap_or_default()
}

/// Waits until the host's `bundle_error` contains `needle`, and returns it.
async fn wait_bundle_error(http: &str, name: &str, needle: &str) -> String {
    wait_for(
        &format!("{name}'s bundle_error to mention `{needle}`"),
        WAIT,
        || async {
            let h = host(http, name).await;
            h["bundle_error"]
                .as_str()
                .filter(|e| e.contains(needle))
                .map(str::to_string)
        },
    )
    .await
}

#[tokio::test]
async fn each_host_gets_its_groups_bundles_and_tampered_ones_are_refused() {
    let dir = TestDir::new();
    // A Mosquitto without an ACL: the test publishes bundles signed with its own key, and
    // tampered ones, as anyone on such a broker could (the embedded broker lets nobody but
    // the coordinator publish a bundle).
    let mosquitto = vigil_tests::start_mosquitto(dir.path());
    let coordinator = start_coordinator(&dir, Some(&mosquitto.url), &[]).await;
    let CoordinatorProc { http, broker, .. } = &coordinator;
    let keys = BundleKeys::generate();
    let key = keys.public_hex();
    let _agents = [
        start_agent(&dir, "h-web", broker, &["web=on"], &key),
        start_agent(&dir, "h-db", broker, &["db=on"], &key),
        start_agent(&dir, "h-both", broker, &["web=on", "db=on"], &key),
    ];
    for name in ["h-web", "h-db", "h-both"] {
        wait_for(&format!("{name} online"), WAIT, || async {
            (host(http, name).await["online"] == true).then_some(())
        })
        .await;
    }
    let mut publisher = Publisher::connect(client_options(
        broker,
        &format!("bundle-test-{}", std::process::id()),
    ))
    .await;

    // Version 1 of both groups: each host gets exactly its groups.
    let web1 = keys.sign(&bundle("web", 1, "web-missing-v1"));
    let db1 = keys.sign(&bundle("db", 1, "db-missing-v1"));
    let started = Instant::now();
    publisher.publish("web", &web1).await;
    publisher.publish("db", &db1).await;
    wait_bundles(
        http,
        &[
            ("h-web", &["web:1"]),
            ("h-db", &["db:1"]),
            ("h-both", &["db:1", "web:1"]),
        ],
    )
    .await;
    println!(
        "version 1 of two groups published → all three hosts report it applied: {:?}",
        started.elapsed()
    );
    for name in ["h-web", "h-db", "h-both"] {
        assert!(host(http, name).await["bundle_error"].is_null());
    }
    // The web policy fires where it is in force, and only there.
    wait_for("web-missing-v1 fires on h-web", WAIT, || async {
        (!fired(http, "h-web", "web-missing-v1").await.is_empty()).then_some(())
    })
    .await;
    wait_for("db-missing-v1 fires on h-both", WAIT, || async {
        (!fired(http, "h-both", "db-missing-v1").await.is_empty()).then_some(())
    })
    .await;
    assert!(fired(http, "h-db", "web-missing-v1").await.is_empty());
    assert!(fired(http, "h-web", "db-missing-v1").await.is_empty());

    // A new version reaches every member; time from publish to all reported.
    let web2 = keys.sign(&bundle("web", 2, "web-missing-v2"));
    let started = Instant::now();
    publisher.publish("web", &web2).await;
    wait_bundles(
        http,
        &[
            ("h-web", &["web:2"]),
            ("h-both", &["db:1", "web:2"]),
            ("h-db", &["db:1"]),
        ],
    )
    .await;
    let elapsed = started.elapsed();
    println!("web version 2 published → h-web and h-both report it applied: {elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(2),
        "applied and reported within 2 s, took {elapsed:?}"
    );
    wait_for("web-missing-v2 fires on h-both", WAIT, || async {
        (!fired(http, "h-both", "web-missing-v2").await.is_empty()).then_some(())
    })
    .await;

    // Tampering: each is refused with its reason; version 2 stays in force.
    let forged = BundleKeys::generate().sign(&bundle("web", 3, "forged"));
    publisher.publish("web", &forged).await;
    let error = wait_bundle_error(http, "h-web", "bad signature").await;
    println!("forged: {error}");
    wait_bundle_error(http, "h-both", "bad signature").await;
    assert!(host(http, "h-db").await["bundle_error"].is_null());

    publisher.publish("web", &web1).await;
    let error = wait_bundle_error(http, "h-web", "is not newer than the applied version 2").await;
    println!("replayed: {error}");

    let mut altered = keys.sign(&bundle("web", 3, "web-missing-v3"));
    altered.content = postcard_of(&bundle("web", 3, "sneaky"));
    publisher.publish("web", &altered).await;
    // The signature covers the content, so altered bytes fail it before the hash check.
    wait_for("h-web to refuse the altered bundle", WAIT, || async {
        let h = host(http, "h-web").await;
        let error = h["bundle_error"].as_str().unwrap_or_default().to_string();
        (error.contains("bad signature") && error.contains("group `web`")).then_some(())
    })
    .await;
    let mut wrong_hash = keys.sign(&bundle("web", 3, "web-missing-v3"));
    wrong_hash.hash = vigil_shared::bundle::content_hash(b"something else");
    publisher.publish("web", &wrong_hash).await;
    let error = wait_bundle_error(http, "h-web", "does not match the declared").await;
    println!("hash mismatch: {error}");

    let invalid = keys.sign(&Bundle {
        files: vec![BundleFile {
            name: "web.yaml".into(),
            text: "policies:\n  - name: broken\n    condition: {type: metric_exceeds, metric: cpu_percent}\n".into(),
        }],
        ..bundle("web", 3, "unused")
    });
    publisher.publish("web", &invalid).await;
    let error = wait_bundle_error(http, "h-web", "web/web.yaml").await;
    println!("invalid policy: {error}");
    assert!(error.contains("broken"), "{error}");

    for name in ["h-web", "h-both"] {
        let h = host(http, name).await;
        assert!(bundles_of(&h).contains(&"web:2".to_string()), "{h}");
    }
    let v2_fired = fired(http, "h-web", "web-missing-v2").await;
    assert!(!v2_fired.is_empty(), "version 2 still in force and firing");
    assert!(fired(http, "h-web", "forged").await.is_empty());
    assert!(fired(http, "h-web", "sneaky").await.is_empty());

    // A good version 3 clears the error.
    publisher
        .publish("web", &keys.sign(&bundle("web", 3, "web-missing-v3")))
        .await;
    wait_bundles(http, &[("h-web", &["web:3"])]).await;
    assert!(host(http, "h-web").await["bundle_error"].is_null());
}

fn postcard_of(bundle: &Bundle) -> Vec<u8> {
    // The content bytes of a bundle as `BundleKeys::sign` encodes them.
    BundleKeys::generate().sign(bundle).content
}

/// Starts `vigil-coordinator serve` on `data_dir` with its embedded broker on `mqtt_port`;
/// returns it, its URL and its admin token (if it wrote one).
/// A coordinator on `data_dir` with `broker` (`--mqtt-listen ADDR` for its embedded
/// broker, or `--broker URL`).
async fn coordinator_on(
    dir: &TestDir,
    name: &str,
    data_dir: &Path,
    broker: [&str; 2],
) -> (Proc, String, Option<String>) {
    let http_port = free_port();
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--listen".into(),
        format!("127.0.0.1:{http_port}"),
    ];
    args.extend(broker.map(str::to_string));
    let proc = Proc::start(name, &bin("vigil-coordinator"), &args, dir.path());
    let http = format!("http://127.0.0.1:{http_port}");
    let url = format!("{http}/health");
    wait_for(&format!("{name} /health"), WAIT, || {
        let url = url.clone();
        async move { reqwest_ok(&url).await.then_some(()) }
    })
    .await;
    // Its REST calls (through the helpers) carry its admin token, if it wrote one.
    let token = adopt_admin_token(data_dir, &http).await;
    (proc, http, token)
}

async fn reqwest_ok(url: &str) -> bool {
    reqwest::get(url)
        .await
        .is_ok_and(|r| r.status().is_success())
}

fn log_mentions(dir: &Path, prefix: &str, needle: &str) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .any(|e| {
            std::fs::read_to_string(e.path())
                .unwrap_or_default()
                .contains(needle)
        })
}

#[tokio::test]
async fn a_persisted_bundle_runs_while_no_broker_is_up() {
    let dir = TestDir::new();
    let mqtt_port = free_port();
    let broker = format!("mqtt://127.0.0.1:{mqtt_port}");
    let keys = BundleKeys::generate();
    let key = keys.public_hex();

    // First life: the bundle arrives over MQTT and is persisted. The broker is a
    // Mosquitto without an ACL, so the test can publish a bundle signed with its own key
    // (the embedded broker lets nobody but the coordinator publish one). The coordinator
    // keeps its data in `<dir>/data`, where the agent is enrolled.
    let mosquitto =
        vigil_tests::start_mosquitto_on(dir.path(), mqtt_port, "allow_anonymous true\n");
    let (first, http, _) = coordinator_on(
        &dir,
        "coordinator-first",
        &dir.path().join("data"),
        ["--broker", &broker],
    )
    .await;
    let agent = start_agent(&dir, "h-off", &broker, &["web=on"], &key);
    let options = MqttOptions::new(
        format!("bundle-test-{}", std::process::id()),
        "127.0.0.1",
        mqtt_port,
    );
    let mut publisher = Publisher::connect(options).await;
    publisher
        .publish("web", &keys.sign(&bundle("web", 7, "offline-missing")))
        .await;
    wait_bundles(&http, &[("h-off", &["web:7"])]).await;
    assert!(dir
        .path()
        .join("agent-data-h-off/bundles/web.bundle")
        .is_file());
    agent.stop();
    first.stop();
    mosquitto.proc.stop();

    // Second life: no broker at all. The agent loads the persisted bundle and evaluates it.
    // The fresh coordinator that comes up later keeps its data under `second`: the agent
    // is enrolled there (a new identity in its data dir) before it starts, and logs there.
    let second = dir.path().join("second-life");
    std::fs::create_dir_all(&second).expect("second-life dir");
    let offline_from_ms = vigil_shared::time::now_ms();
    let agent = start_agent_in(&dir, &second, "h-off", &broker, &["web=on"], &key);
    wait_for("the agent to load its persisted bundle", WAIT, || async {
        log_mentions(
            &second,
            "agent-h-off",
            "persisted policy bundle verified and loaded",
        )
        .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let broker_started_ms = vigil_shared::time::now_ms();

    // A fresh coordinator (no retained bundle, no history) sees the bundle in force and
    // the event decided while the broker was down, delivered by the outbox.
    let (_second, http, _) = coordinator_on(
        &dir,
        "coordinator-second",
        &second.join("data"),
        ["--mqtt-listen", &format!("127.0.0.1:{mqtt_port}")],
    )
    .await;
    wait_bundles(&http, &[("h-off", &["web:7"])]).await;
    // (Events of the first life that its coordinator stored but had not yet acknowledged
    // when the agent stopped come too: this coordinator never had them.)
    let at = wait_for("the offline event to arrive", WAIT, || async {
        fired(&http, "h-off", "offline-missing")
            .await
            .iter()
            .filter_map(|e| e["timestamp"].as_str())
            .map(|t| vigil_shared::time::parse_time(t).expect("rfc 3339"))
            .filter(|at| *at >= offline_from_ms)
            .min()
    })
    .await;
    assert!(
        at < broker_started_ms,
        "fired while the broker was down: at {at}, broker up at {broker_started_ms}"
    );
    println!(
        "fired {} ms before the broker came up; delivered once it did",
        broker_started_ms - at
    );
    agent.stop();
}
