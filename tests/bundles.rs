//! Policy bundles end to end, against the real coordinator binary: retained delivery to a
//! late subscriber (verified with the public key), republish on edit, an invalid edit
//! publishes nothing, drift, and the `bundle` CLI.
//!
//! The fan-out figure: `cargo test -p vigil-tests --release --test bundles -- --ignored
//! --nocapture fanout_to_1000_subscribers` (needs `ulimit -n` ≥ 4096).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::mpsc::UnboundedReceiver;
use vigil_shared::bundle::{verify, Bundle, PublicKey, SignedBundle};
use vigil_shared::time::now_ms;
use vigil_shared::topics::AgentChannel;
use vigil_shared::wire::{
    self, AgentState, AgentStatus, AppliedBundle, PolicyRunnerStatus, QueueStatus,
};
use vigil_tests::{
    bin, bundle_subscriber, get_json, start_coordinator, wait_for, RawAgent, TestDir,
};

const WAIT: Duration = Duration::from_secs(20);

fn policy(threshold: u32) -> String {
    format!(
        "policies:\n  - name: cpu-high\n    condition: {{type: metric_exceeds, metric: cpu_percent, threshold: {threshold}}}\n"
    )
}

fn write(dir: &Path, path: &str, text: &str) {
    let path = dir.join(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn bundle_dir(root: &Path) -> std::path::PathBuf {
    let dir = root.join("bundles");
    write(&dir, "web/group.yaml", "selector: {role: web}\n");
    write(&dir, "web/cpu.yaml", &policy(90));
    write(
        &dir,
        "web/manifest.yaml",
        "units: [{name: nginx.service, remediation: restart}]\n",
    );
    dir
}

/// The next bundle on the subscription, decoded and verified.
async fn next_bundle(
    rx: &mut UnboundedReceiver<(String, Vec<u8>)>,
    key: &PublicKey,
    within: Duration,
) -> (SignedBundle, Bundle) {
    let (topic, payload) = tokio::time::timeout(within, rx.recv())
        .await
        .expect("a bundle within the deadline")
        .expect("subscriber alive");
    let signed: SignedBundle =
        wire::decode(&payload).unwrap_or_else(|e| panic!("bundle on {topic}: {e}"));
    let bundle = verify(&signed, key, None).expect("bundle verifies with the public key");
    assert_eq!(topic, format!("vigil/v1/bundles/{}", bundle.group));
    (signed, bundle)
}

async fn web_version(http: &str) -> (Option<u64>, Value) {
    let (_, body) = get_json(&format!("{http}/api/v1/bundles")).await;
    let version = body["bundles"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["group"] == "web"))
        .and_then(|b| b["version"].as_u64());
    (version, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn bundles_are_retained_versioned_on_edit_and_invalid_edits_publish_nothing() {
    let dir = TestDir::new();
    let bundles = bundle_dir(dir.path());
    let c = start_coordinator(&dir, None, &["--bundles", bundles.to_str().unwrap()]).await;
    wait_for("bundle web v1", WAIT, || async {
        (web_version(&c.http).await.0 == Some(1)).then_some(())
    })
    .await;
    let public = std::fs::read_to_string(dir.path().join("data/bundle-signing.pub")).unwrap();
    let key = PublicKey::from_hex(&public).unwrap();
    let (_, body) = web_version(&c.http).await;
    assert_eq!(body["public_key"], public.trim());
    assert_eq!(body["error"], Value::Null);
    let web = &body["bundles"][0];
    assert_eq!(web["selector"]["role"], "web");
    assert_eq!(web["policies"], 2, "{web}");
    assert_eq!(web["manifest"]["units"][0]["name"], "nginx.service");

    // A subscriber that connects late gets the retained bundle at once.
    let (_client, mut rx) = bundle_subscriber(&c.broker, "late-sub", "vigil/v1/bundles/#").await;
    let (_, bundle) = next_bundle(&mut rx, &key, WAIT).await;
    assert_eq!(bundle.version, 1);
    assert_eq!(bundle.selector, vec![("role".into(), "web".into())]);

    // An edit is republished as version 2 within about a second.
    let edited = Instant::now();
    write(&bundles, "web/cpu.yaml", &policy(95));
    let (_, bundle) = next_bundle(&mut rx, &key, Duration::from_secs(3)).await;
    println!("edit to publish: {:?}", edited.elapsed());
    assert_eq!(bundle.version, 2);
    assert!(bundle.files.iter().any(|f| f.text.contains("95")));

    // An invalid edit publishes nothing; the error shows; version 2 stays.
    write(
        &bundles,
        "web/cpu.yaml",
        &policy(95).replace("threshold", "treshold"),
    );
    let quiet = tokio::time::timeout(Duration::from_millis(2000), rx.recv()).await;
    assert!(quiet.is_err(), "nothing published for an invalid edit");
    let (version, body) = web_version(&c.http).await;
    assert_eq!(version, Some(2));
    let error = body["error"].as_str().expect("the build error");
    assert!(
        error.contains("cpu.yaml") && error.contains("cpu-high"),
        "{error}"
    );

    let (status, one) = get_json(&format!("{}/api/v1/bundles/web", c.http)).await;
    assert_eq!(status, 200);
    assert!(one["files"][0]["text"].as_str().unwrap().contains("95"));
    let (status, missing) = get_json(&format!("{}/api/v1/bundles/nope", c.http)).await;
    assert_eq!(status, 404);
    assert_eq!(missing["ok"], false);

    // Drift: one host in sync, one labelled web without the bundle.
    let (signed_hash, version) = (one["hash"].as_str().unwrap().to_string(), 2);
    // Each host played by hand: logged in as itself, its status sealed with its key.
    let mut connections = Vec::new();
    for (host, applied) in [
        (
            "drift-ok",
            vec![AppliedBundle {
                group: "web".into(),
                version,
                hash: signed_hash.clone(),
            }],
        ),
        ("drift-old", vec![]),
    ] {
        let raw = RawAgent::enroll(dir.path(), host, &c.broker);
        let (agent, pump) = connect(raw.options.clone());
        let status = agent_status(host, applied);
        agent
            .publish(
                format!("vigil/v1/agents/{host}/status"),
                rumqttc::QoS::AtLeastOnce,
                true,
                raw.seal(AgentChannel::Status, &status),
            )
            .await
            .unwrap();
        connections.push((agent, pump));
    }
    let hosts = wait_for("two hosts in drift", WAIT, || async {
        let (_, body) = get_json(&format!("{}/api/v1/drift", c.http)).await;
        let hosts = body["hosts"].as_array().cloned().unwrap_or_default();
        (hosts.len() == 2).then_some(hosts)
    })
    .await;
    let find = |h: &str| hosts.iter().find(|x| x["host"] == h).unwrap().clone();
    let ok = find("drift-ok");
    assert_eq!(ok["groups"][0]["in_sync"], true, "{ok}");
    assert_eq!(ok["groups"][0]["desired_version"], 2);
    let old = find("drift-old");
    assert_eq!(old["groups"][0]["in_sync"], false, "{old}");
    assert_eq!(old["groups"][0]["applied_version"], Value::Null);
    assert_eq!(old["bundle_error"], "refused: test");

    // The event feed says the same: drift-ok applied the bundle, drift-old drifts (the
    // stream from its start, filtered to those kinds).
    let url = format!(
        "{}/api/v1/events?last_event_id=0&kind=bundle,drift&host=drift-ok,drift-old",
        c.http
    );
    let mut stream = vigil_tests::authorized(&url, reqwest::Client::new().get(&url))
        .send()
        .await
        .expect("event stream");
    let mut text = String::new();
    let deadline = std::time::Instant::now() + WAIT;
    while !(text.contains("event:drift") && text.contains("event:bundle")) {
        assert!(
            std::time::Instant::now() < deadline,
            "no drift/bundle events: {text}"
        );
        if let Ok(Ok(Some(chunk))) =
            tokio::time::timeout(std::time::Duration::from_secs(1), stream.chunk()).await
        {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
    let data: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str(d.trim()).ok())
        .collect();
    let drifts: Vec<&Value> = data.iter().filter(|d| d["kind"] == "drift").collect();
    // drift-ok was in sync from the start: no drift event for it.
    assert_eq!(drifts.len(), 1, "{drifts:?}");
    let drifting = drifts[0];
    assert_eq!(drifting["host"], "drift-old", "{drifting}");
    assert_eq!(drifting["data"]["in_sync"], false, "{drifting}");
    assert_eq!(drifting["data"]["desired_version"], 2, "{drifting}");
    let applied = data
        .iter()
        .find(|d| d["kind"] == "bundle")
        .expect("a bundle event");
    assert_eq!(applied["host"], "drift-ok", "{applied}");
    assert_eq!(applied["data"]["bundle_version"], 2, "{applied}");
    drop(stream);

    for (agent, pump) in connections {
        let _ = agent.disconnect().await;
        let _ = pump.await;
    }
    c.proc.stop();
}

/// An MQTT connection with `options`, its event loop polled until it disconnects.
fn connect(options: rumqttc::MqttOptions) -> (rumqttc::AsyncClient, tokio::task::JoinHandle<()>) {
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 16);
    let pump = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    });
    (client, pump)
}

fn agent_status(host: &str, bundles: Vec<AppliedBundle>) -> AgentStatus {
    let now = now_ms();
    AgentStatus {
        host: host.into(),
        state: AgentState::Online,
        agent_version: "e2e".into(),
        started_at_ms: now,
        sent_at_ms: now,
        interval_ms: 60_000,
        labels: vec![("role".into(), "web".into())],
        bundle_error: bundles.is_empty().then(|| "refused: test".to_string()),
        bundles,
        remediation_paused: false,
        detail: None,
        policies: PolicyRunnerStatus::default(),
        queue: QueueStatus::default(),
        delivery: None,
    }
}

fn cli(args: &[&str]) -> (i32, String) {
    let out = Command::new(bin("vigil-coordinator"))
        .args(args)
        .env("VIGIL_LOG", "off")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn the_bundle_cli_builds_verifies_diffs_and_generates_keys() {
    let dir = TestDir::new();
    let root = dir.path();
    let src = bundle_dir(root);
    let key = root.join("keys/signing.key");
    let s = |p: &Path| p.display().to_string();

    let (code, text) = cli(&["bundle", "keygen", "--out", &s(&key)]);
    assert_eq!(code, 0, "{text}");
    assert!(root.join("keys/signing.pub").is_file());
    let (code, _) = cli(&["bundle", "keygen", "--out", &s(&key)]);
    assert_eq!(code, 1, "refuses to overwrite a key");

    let out = root.join("out");
    let (code, text) = cli(&[
        "bundle",
        "build",
        &s(&src),
        "--out",
        &s(&out),
        "--key",
        &s(&key),
    ]);
    assert_eq!(code, 0, "{text}");
    let file = out.join("web.bundle");
    let public = root.join("keys/signing.pub");
    let (code, text) = cli(&["bundle", "verify", &s(&file), "--public-key", &s(&public)]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("ok"), "{text}");

    let other = root.join("other.key");
    cli(&["bundle", "keygen", "--out", &s(&other)]);
    let (code, text) = cli(&[
        "bundle",
        "verify",
        &s(&file),
        "--public-key",
        &s(&root.join("other.pub")),
    ]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("bad signature"), "{text}");

    // Diff: the source directory against an edited copy, and bundle against bundle.
    let new_src = root.join("new");
    write(&new_src, "web/cpu.yaml", &policy(50));
    write(
        &new_src,
        "web/mem.yaml",
        "- name: mem-high\n  condition: {type: metric_exceeds, metric: memory_percent, threshold: 90}\n",
    );
    let (code, text) = cli(&["bundle", "diff", &s(&src), &s(&new_src)]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("group web: ~ cpu-high"), "{text}");
    assert!(text.contains("group web: + mem-high"), "{text}");
    assert!(
        text.contains("group web: - manifest:web:unit:nginx.service"),
        "{text}"
    );
    let new_out = root.join("new-out");
    let (code, text) = cli(&["bundle", "build", &s(&new_src), "--out", &s(&new_out)]);
    assert_eq!(code, 0, "{text}");
    let (code, text) = cli(&["bundle", "diff", &s(&file), &s(&new_out.join("web.bundle"))]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("+ mem-high"), "{text}");

    // An invalid group: exit 1 naming group, file, policy and field; nothing written.
    write(
        &src,
        "db/bad.yaml",
        &policy(1).replace("threshold", "treshold"),
    );
    let bad_out = root.join("bad-out");
    let (code, text) = cli(&["bundle", "build", &s(&src), "--out", &s(&bad_out)]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("db") && text.contains("bad.yaml") && text.contains("treshold"),
        "{text}"
    );
    assert!(!bad_out.exists());
}

/// Time to deliver a new bundle version to 1,000 subscribers of the embedded broker.
/// Run: `cargo test -p vigil-tests --release --test bundles -- --ignored --nocapture
/// fanout_to_1000_subscribers`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: 1,000 MQTT clients; run on demand"]
async fn fanout_to_1000_subscribers() {
    const N: usize = 1000;
    let dir = TestDir::new();
    let bundles = bundle_dir(dir.path());
    let c = start_coordinator(&dir, None, &["--bundles", bundles.to_str().unwrap()]).await;
    let public = std::fs::read_to_string(dir.path().join("data/bundle-signing.pub")).unwrap();
    let key = PublicKey::from_hex(&public).unwrap();
    // Every simulated agent is enrolled, so that its status (sealed with its own key) is
    // accepted; the subscribers log in as integrations and publish it.
    let enrolled = Instant::now();
    let sealers: Vec<RawAgent> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..8)
            .map(|w| {
                let (dir, broker) = (dir.path(), c.broker.as_str());
                scope.spawn(move || {
                    (w..N)
                        .step_by(8)
                        .map(|i| (i, RawAgent::enroll(dir, &format!("fan-{i}"), broker)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<(usize, RawAgent)> = workers
            .into_iter()
            .flat_map(|w| w.join().expect("enrollment thread"))
            .collect();
        all.sort_by_key(|(i, _)| *i);
        all.into_iter().map(|(_, raw)| raw).collect()
    });
    println!("enrolled {N} simulated agents in {:?}", enrolled.elapsed());
    let mut subscribers = Vec::with_capacity(N);
    for i in 0..N {
        subscribers
            .push(bundle_subscriber(&c.broker, &format!("fan-{i}"), "vigil/v1/bundles/web").await);
    }
    // Drain the retained version 1 everywhere.
    for (_, rx) in subscribers.iter_mut() {
        let (_, b) = next_bundle(rx, &key, WAIT).await;
        assert_eq!(b.version, 1);
    }
    let started = Instant::now();
    write(&bundles, "web/cpu.yaml", &policy(77));
    let (tx, mut done) = tokio::sync::mpsc::unbounded_channel();
    for (i, ((client, mut rx), raw)) in subscribers.into_iter().zip(sealers).enumerate() {
        let tx = tx.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let (signed, b) = next_bundle(&mut rx, &key, Duration::from_secs(60)).await;
            let _ = tx.send((b.version, Instant::now()));
            // Report it applied, as an agent does, in its status.
            let host = format!("fan-{i}");
            let status = AgentStatus {
                host: host.clone(),
                state: AgentState::Online,
                agent_version: "sim".into(),
                started_at_ms: now_ms(),
                sent_at_ms: now_ms(),
                interval_ms: 60_000,
                labels: vec![("role".into(), "web".into())],
                bundles: vec![AppliedBundle {
                    group: b.group.clone(),
                    version: b.version,
                    hash: signed.hash.clone(),
                }],
                bundle_error: None,
                remediation_paused: false,
                detail: None,
                policies: PolicyRunnerStatus::default(),
                queue: QueueStatus::default(),
                delivery: None,
            };
            let topic = format!("vigil/v1/agents/{host}/status");
            let _ = client
                .publish(
                    topic,
                    rumqttc::QoS::AtLeastOnce,
                    true,
                    raw.seal(AgentChannel::Status, &status),
                )
                .await;
            // Keep the connection until the test ends.
            tokio::time::sleep(Duration::from_secs(120)).await;
        });
    }
    drop(tx);
    let mut last = started;
    let mut received = 0;
    while let Some((version, at)) = tokio::time::timeout(Duration::from_secs(90), done.recv())
        .await
        .ok()
        .flatten()
    {
        assert_eq!(version, 2);
        received += 1;
        last = last.max(at);
        // The tasks keep their sender (and connection) alive, so stop at N, not at close.
        if received == N {
            break;
        }
    }
    println!(
        "bundle fan-out: {received}/{N} subscribers had version 2 {:?} after the file was written \
         (includes up to 500 ms of directory polling)",
        last - started
    );
    let applied = wait_for(
        "all simulated agents reported version 2",
        Duration::from_secs(120),
        || async {
            let (_, drift) = get_json(&format!("{}/api/v1/drift", c.http)).await;
            let in_sync = drift["hosts"]
                .as_array()?
                .iter()
                .filter(|h| {
                    h["groups"].as_array().is_some_and(|g| {
                        g.iter().any(|g| {
                            g["group"] == "web" && g["applied_version"] == 2 && g["in_sync"] == true
                        })
                    })
                })
                .count();
            (in_sync == N).then(Instant::now)
        },
    )
    .await;
    println!(
        "bundle fan-out: all {N} simulated agents reported version 2 applied (GET /api/v1/drift) {:?} after the file was written",
        applied - started
    );
    assert_eq!(received, N);
    c.proc.stop();
}
