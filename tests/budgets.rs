//! Fleet-wide disruption budgets end to end, with real agent processes (each with its own
//! host name, data directory and identity), a real coordinator and its embedded broker,
//! and allowlisted commands as the remediation: a policy that fires on every host at once
//! acts on at most `max_concurrent` of them at a time (read from the audit trail's
//! timestamps); a SIGKILLed agent's lease frees itself after its TTL; with the
//! coordinator gone, `offline: wait` holds and `offline: act` acts; the coordinator's
//! copy of a bundled budget decides whatever an agent's local copy claims; a bundle
//! group's `group.yaml` budget is one pool for all the group's policies.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use vigil_tests::{
    bin, free_port, get_json, start_agent_with, start_coordinator, wait_for, Proc, TestDir,
};

const WAIT: Duration = Duration::from_secs(60);

fn ms(text: &str) -> i64 {
    vigil_shared::time::parse_time(text).unwrap_or_else(|e| panic!("time `{text}`: {e}"))
}

/// Writes the textfile the agents read: `cpu_percent{target="TARGET"} VALUE` per entry,
/// atomically.
fn set_cpu(dir: &Path, values: &[(&str, f64)]) {
    let text: String = values
        .iter()
        .map(|(target, value)| format!("cpu_percent{{target=\"{target}\"}} {value}\n"))
        .collect();
    let tmp = dir.join(".app.tmp");
    std::fs::write(&tmp, text).expect("write textfile");
    std::fs::rename(&tmp, dir.join("app.prom")).expect("rename textfile");
}

struct Setup {
    dir: TestDir,
    textfiles: PathBuf,
    policies: PathBuf,
    config: PathBuf,
}

/// A test directory with a textfile directory (all targets at 10 % CPU), the policies
/// `yaml`, and an agent config allowing `commands` (TOML lines).
fn setup(yaml: &str, commands: &str, targets: &[&str]) -> Setup {
    let dir = TestDir::new();
    let textfiles = dir.path().join("textfiles");
    std::fs::create_dir_all(&textfiles).expect("mkdir");
    let low: Vec<(&str, f64)> = targets.iter().map(|t| (*t, 10.0)).collect();
    set_cpu(&textfiles, &low);
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).expect("mkdir");
    std::fs::write(policies.join("p.yaml"), yaml).expect("write policies");
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, format!("[allow.commands]\n{commands}")).expect("write config");
    Setup {
        dir,
        textfiles,
        policies,
        config,
    }
}

impl Setup {
    fn agent(&self, host: &str, broker: &str) -> Proc {
        self.agent_with(host, broker, &self.policies)
    }

    /// An agent whose local policy directory is `policies`.
    fn agent_with(&self, host: &str, broker: &str, policies: &Path) -> Proc {
        let (policies, config, textfiles) = (
            policies.display().to_string(),
            self.config.display().to_string(),
            self.textfiles.display().to_string(),
        );
        start_agent_with(
            host,
            broker,
            "500ms",
            &[
                "--policies",
                &policies,
                "--config",
                &config,
                "--textfile-dir",
                &textfiles,
                "--label",
                "role=web",
            ],
            self.dir.path(),
        )
    }
}

async fn wait_online(http: &str, hosts: &[String]) {
    for host in hosts {
        vigil_tests::wait_reporting(http, host, WAIT).await;
    }
}

async fn actions(http: &str, query: &str) -> Vec<Value> {
    let (_, body) = get_json(&format!("{http}/api/v1/actions?limit=500&{query}")).await;
    body["actions"].as_array().cloned().unwrap_or_default()
}

/// The time of `action`'s first transition to `state`, epoch ms.
fn at(action: &Value, state: &str) -> Option<i64> {
    action["transitions"]
        .as_array()?
        .iter()
        .find(|t| t["state"] == state)
        .and_then(|t| t["at"].as_str())
        .map(ms)
}

fn detail(action: &Value, state: &str) -> String {
    action["transitions"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["state"] == state))
        .and_then(|t| t["detail"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// The most intervals `[start, end)` open at one time.
fn most_at_once(intervals: &[(i64, i64)]) -> usize {
    let mut edges: Vec<(i64, i32)> = intervals
        .iter()
        .flat_map(|(start, end)| [(*start, 1), (*end, -1)])
        .collect();
    // At one instant, ends come before starts (a lease is released before the next grant).
    edges.sort();
    let (mut open, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        open += step;
        most = most.max(open);
    }
    usize::try_from(most).unwrap_or(0)
}

async fn budgets(http: &str) -> Vec<Value> {
    let (status, body) = get_json(&format!("{http}/api/v1/budgets")).await;
    assert_eq!(status, 200, "{body}");
    body["budgets"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn ten_agents_fire_at_once_and_never_more_than_two_act() {
    const AGENTS: usize = 10;
    let s = setup(
        "policies:\n  - name: hot\n    target: app\n    condition: cpu_percent > 90\n    \
         auto_remediate: true\n    verify: 5m\n    action: exec\n    params: {command: slow}\n    \
         budget: {max_concurrent: 2, per: role}\n",
        "slow = [\"/bin/sleep\", \"1.5\"]\n",
        &["app"],
    );
    let coordinator = start_coordinator(s.dir.path(), None, &["--lease-ttl", "3s"]).await;
    let http = coordinator.http.clone();
    let hosts: Vec<String> = (1..=AGENTS).map(|i| format!("budget-web-{i:02}")).collect();
    let _agents: Vec<Proc> = hosts
        .iter()
        .map(|h| s.agent(h, &coordinator.broker))
        .collect();
    wait_online(&http, &hosts).await;

    set_cpu(&s.textfiles, &[("app", 99.0)]);
    let done = wait_for(
        "every host's action completed",
        Duration::from_secs(120),
        || async {
            let all = actions(&http, "policy=hot").await;
            let completed = all.iter().filter(|a| at(a, "completed").is_some()).count();
            (completed >= AGENTS).then_some(all)
        },
    )
    .await;

    assert_eq!(done.len(), AGENTS, "one action per host");
    let mut on_hosts: Vec<&str> = done.iter().filter_map(|a| a["host"].as_str()).collect();
    on_hosts.sort();
    assert_eq!(
        on_hosts,
        hosts.iter().map(String::as_str).collect::<Vec<_>>()
    );
    let intervals: Vec<(i64, i64)> = done
        .iter()
        .map(|a| {
            (
                at(a, "running").expect("running"),
                at(a, "completed").expect("completed"),
            )
        })
        .collect();
    let most = most_at_once(&intervals);
    let deferred: Vec<&Value> = done
        .iter()
        .filter(|a| at(a, "deferred").is_some())
        .collect();
    let first = intervals.iter().map(|i| i.0).min().unwrap_or(0);
    let last = intervals.iter().map(|i| i.1).max().unwrap_or(0);
    println!(
        "{AGENTS} agents, max_concurrent 2: at most {most} running at once; {} deferred; \
         first start to last completion {} ms",
        deferred.len(),
        last - first
    );
    assert!(most <= 2, "at most 2 at once, saw {most}: {intervals:?}");
    assert_eq!(most, 2, "the budget is used: two at once");
    assert!(
        deferred.len() >= AGENTS - 2,
        "at least {} waited for a lease: {}",
        AGENTS - 2,
        deferred.len()
    );
    for action in &deferred {
        let words = detail(action, "deferred");
        assert!(words.starts_with("deferred: budget"), "{words}");
        assert!(
            at(action, "deferred") < at(action, "running"),
            "deferred before running: {action}"
        );
    }

    let budget = budgets(&http)
        .await
        .into_iter()
        .find(|b| b["key"] == "hot#2/role=web")
        .expect("budget hot#2/role=web");
    assert_eq!(budget["source"], "agent", "{budget}");
    assert_eq!(budget["max"], 2, "{budget}");
    assert_eq!(budget["max_concurrent"], "2", "{budget}");
    assert_eq!(budget["granted_last_hour"], AGENTS, "{budget}");
    assert!(
        budget["deferred_total"].as_u64().unwrap_or(0) >= (AGENTS - 2) as u64,
        "{budget}"
    );
    // Every lease was released as its action ended.
    let held = wait_for("leases released", WAIT, || async {
        let b = budgets(&http).await;
        let held = b[0]["held"].as_u64().unwrap_or(99);
        (held == 0).then_some(held)
    })
    .await;
    assert_eq!(held, 0);
    let granted =
        vigil_tests::metric(&http, "vigil_budget_answers_total{outcome=\"granted\"}").await;
    assert!(
        granted >= AGENTS as f64,
        "granted answers (and renewals): {granted}"
    );
    coordinator.proc.stop();
}

#[tokio::test]
async fn a_sigkilled_agents_lease_frees_itself_after_its_ttl() {
    const TTL_MS: i64 = 3_000;
    let s = setup(
        "policies:\n  - name: long\n    target: app\n    condition: cpu_percent > 90\n    \
         auto_remediate: true\n    verify: 5m\n    action: exec\n    params: {command: long, timeout: 60s}\n    \
         budget: {max_concurrent: 1}\n",
        "long = [\"/bin/sleep\", \"30\"]\n",
        &["app"],
    );
    let coordinator = start_coordinator(s.dir.path(), None, &["--lease-ttl", "3s"]).await;
    let http = coordinator.http.clone();
    let hosts = vec!["budget-kill-a".to_string(), "budget-kill-b".to_string()];
    let mut agents: Vec<Option<Proc>> = hosts
        .iter()
        .map(|h| Some(s.agent(h, &coordinator.broker)))
        .collect();
    wait_online(&http, &hosts).await;
    set_cpu(&s.textfiles, &[("app", 99.0)]);

    // One holds the lease (its action runs), the other waits.
    let holder = wait_for("one lease held and one action deferred", WAIT, || async {
        let b = budgets(&http).await;
        let budget = b.iter().find(|b| b["key"] == "long#1")?;
        let holder = budget["leases"][0]["host"].as_str()?.to_string();
        (budget["held"] == 1 && budget["deferred"] == 1).then_some(holder)
    })
    .await;
    let index = hosts.iter().position(|h| *h == holder).expect("holder");
    let other = hosts[1 - index].clone();
    // Renewals keep the lease past its TTL while the action runs.
    tokio::time::sleep(Duration::from_millis(2 * TTL_MS as u64)).await;
    let b = budgets(&http).await;
    assert_eq!(b[0]["leases"][0]["host"], holder.as_str(), "renewed: {b:?}");
    let waiting = actions(&http, &format!("host={other}")).await;
    assert!(at(&waiting[0], "running").is_none(), "{waiting:?}");

    let killed_at = vigil_shared::time::now_ms();
    let started = Instant::now();
    if let Some(agent) = agents[index].take() {
        agent.kill();
    }
    let action = wait_for("the other host's action runs", WAIT, || async {
        actions(&http, &format!("host={other}"))
            .await
            .into_iter()
            .find(|a| at(a, "running").is_some())
    })
    .await;
    let running = at(&action, "running").expect("running");
    println!(
        "lease TTL {TTL_MS} ms: the other host ran {} ms after the holder was SIGKILLed (seen after {:?})",
        running - killed_at,
        started.elapsed()
    );
    // The holder renewed every third of the TTL: its lease outlives it by at least two
    // thirds of the TTL, never less.
    assert!(
        running - killed_at >= TTL_MS * 2 / 3 - 100,
        "the lease freed only by its TTL: {} ms",
        running - killed_at
    );
    assert!(
        running - killed_at <= TTL_MS + 3_000,
        "within the TTL plus a retry or two: {} ms",
        running - killed_at
    );
    assert!(
        detail(&action, "deferred").starts_with("deferred: budget"),
        "{action}"
    );
    let b = budgets(&http).await;
    assert_eq!(b[0]["leases"][0]["host"], other.as_str(), "{b:?}");
    drop(agents);
    coordinator.proc.stop();
}

/// Starts `vigil-coordinator serve` on fixed ports with its data in `<dir>/data` (so that
/// a restart finds its store and its agents' broker address).
async fn coordinator_on(dir: &Path, http_port: u16, mqtt_port: u16) -> Proc {
    let args: Vec<String> = [
        "serve",
        "--data-dir",
        &dir.join("data").display().to_string(),
        "--listen",
        &format!("127.0.0.1:{http_port}"),
        "--mqtt-listen",
        &format!("127.0.0.1:{mqtt_port}"),
        "--lease-ttl",
        "3s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let proc = Proc::start("coordinator", &bin("vigil-coordinator"), &args, dir);
    let url = format!("http://127.0.0.1:{http_port}/health");
    wait_for("coordinator health", WAIT, || async {
        reqwest::get(&url)
            .await
            .ok()
            .filter(|r| r.status().is_success())
    })
    .await;
    proc
}

#[tokio::test]
async fn with_the_coordinator_gone_wait_policies_hold_and_act_policies_act() {
    let s = setup(
        "policies:\n  \
         - name: careful\n    target: app-w\n    condition: cpu_percent > 90\n    \
         auto_remediate: true\n    verify: 5m\n    action: exec\n    params: {command: mark-w}\n    \
         budget: {max_concurrent: 1, offline: wait}\n  \
         - name: autonomous\n    target: app-a\n    condition: cpu_percent > 90\n    \
         auto_remediate: true\n    verify: 5m\n    action: exec\n    params: {command: mark-a}\n    \
         budget: {max_concurrent: 1, offline: act}\n",
        "",
        &["app-w", "app-a"],
    );
    let marks = s.dir.path().join("marks");
    std::fs::write(
        &s.config,
        format!(
            "[allow.commands]\nmark-w = [\"/bin/sh\", \"-c\", \"echo careful >> {0}\"]\n\
             mark-a = [\"/bin/sh\", \"-c\", \"echo autonomous >> {0}\"]\n",
            marks.display()
        ),
    )
    .expect("write config");
    let (http_port, mqtt_port) = (free_port(), free_port());
    let first = coordinator_on(s.dir.path(), http_port, mqtt_port).await;
    let http = format!("http://127.0.0.1:{http_port}");
    // Adopt the admin token the first start wrote, as the kit does.
    let _ = vigil_tests::adopt_admin_token(&s.dir.path().join("data"), &http).await;
    let broker = format!("mqtt://127.0.0.1:{mqtt_port}");
    let host = "budget-edge".to_string();
    let _agent = s.agent(&host, &broker);
    wait_online(&http, std::slice::from_ref(&host)).await;

    // The coordinator (and its embedded broker) dies; then both policies fire.
    first.kill();
    let gone_at = vigil_shared::time::now_ms();
    set_cpu(&s.textfiles, &[("app-w", 99.0), ("app-a", 99.0)]);
    wait_for("the act policy acted alone", WAIT, || async {
        std::fs::read_to_string(&marks)
            .ok()
            .filter(|m| m.contains("autonomous"))
    })
    .await;
    // Well past the answer timeout: the wait policy still holds.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let marked = std::fs::read_to_string(&marks).unwrap_or_default();
    assert!(!marked.contains("careful"), "offline: wait held: {marked}");

    // The coordinator returns: the waiting action gets its lease and runs; the audit
    // trail says what happened while it was gone.
    let back_at = vigil_shared::time::now_ms();
    let _second = coordinator_on(s.dir.path(), http_port, mqtt_port).await;
    wait_for(
        "the wait policy acted once the coordinator was back",
        WAIT,
        || async {
            std::fs::read_to_string(&marks)
                .ok()
                .filter(|m| m.contains("careful"))
        },
    )
    .await;
    // Every transition, the ones queued while the coordinator was gone too: those the
    // agent sent right after reconnecting may have been sealed under the session key the
    // restarted coordinator no longer holds, and then come again with its resends.
    let careful = wait_for("the careful action's whole record", WAIT, || async {
        actions(&http, "policy=careful")
            .await
            .into_iter()
            .find(|a| at(a, "completed").is_some() && at(a, "deferred").is_some())
    })
    .await;
    let autonomous = wait_for("the autonomous action's record", WAIT, || async {
        actions(&http, "policy=autonomous")
            .await
            .into_iter()
            .find(|a| at(a, "completed").is_some())
    })
    .await;
    let alone = detail(&autonomous, "running");
    assert!(alone.contains("without a budget lease"), "{autonomous}");
    assert!(at(&autonomous, "running").expect("running") < back_at);
    assert!(at(&autonomous, "running").expect("running") > gone_at);
    let held = detail(&careful, "deferred");
    assert!(held.contains("offline: wait"), "{careful}");
    assert!(
        at(&careful, "running").expect("running") > back_at,
        "{careful}"
    );
    println!(
        "coordinator gone at {gone_at}: the act policy ran {} ms later without a lease; \
         the wait policy ran {} ms after the coordinator came back",
        at(&autonomous, "running").unwrap_or(0) - gone_at,
        at(&careful, "running").unwrap_or(0) - back_at
    );
}

#[tokio::test]
async fn manual_actions_naming_a_policy_take_its_budget() {
    const AGENTS: usize = 3;
    // The agents run no policy of their own; the coordinator's policy directory holds the
    // budget the manual actions name.
    let s = setup(
        "policies: []\n",
        "slow = [\"/bin/sleep\", \"1.5\"]\n",
        &["app"],
    );
    let coordinator_policies = s.dir.path().join("coordinator-policies");
    std::fs::create_dir_all(&coordinator_policies).expect("mkdir");
    std::fs::write(
        coordinator_policies.join("p.yaml"),
        "policies:\n  - name: maintenance\n    target: app\n    condition: cpu_percent > 101\n    \
         budget: {max_concurrent: 1}\n",
    )
    .expect("write policies");
    let policies_arg = coordinator_policies.display().to_string();
    let coordinator = start_coordinator(
        s.dir.path(),
        None,
        &["--lease-ttl", "1s", "--policies", &policies_arg],
    )
    .await;
    let http = coordinator.http.clone();
    let hosts: Vec<String> = (1..=AGENTS).map(|i| format!("budget-manual-{i}")).collect();
    let _agents: Vec<Proc> = hosts
        .iter()
        .map(|h| s.agent(h, &coordinator.broker))
        .collect();
    wait_online(&http, &hosts).await;

    // A policy that does not exist, or has no budget, is refused naming the field.
    let (status, body) = vigil_tests::post_raw(
        &format!("{http}/api/v1/actions"),
        r#"{"host":"budget-manual-1","target":"app","action":"exec","params":{"command":"slow"},"policy":"nope"}"#,
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["field"], "policy", "{body}");

    for host in &hosts {
        let (status, body) = vigil_tests::post_raw(
            &format!("{http}/api/v1/actions"),
            &format!(
                r#"{{"host":"{host}","target":"app","action":"exec","params":{{"command":"slow"}},"policy":"maintenance"}}"#
            ),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let done = wait_for("every manual action completed", WAIT, || async {
        let all: Vec<Value> = actions(&http, "target=app")
            .await
            .into_iter()
            .filter(|a| at(a, "completed").is_some())
            .collect();
        (all.len() >= AGENTS).then_some(all)
    })
    .await;
    let intervals: Vec<(i64, i64)> = done
        .iter()
        .map(|a| {
            (
                at(a, "running").expect("running"),
                at(a, "completed").expect("completed"),
            )
        })
        .collect();
    assert_eq!(most_at_once(&intervals), 1, "one at a time: {intervals:?}");
    assert!(
        done.iter()
            .any(|a| detail(a, "deferred").starts_with("deferred: budget")),
        "some waited: {done:?}"
    );
    let budget = budgets(&http)
        .await
        .into_iter()
        .find(|b| b["key"] == "maintenance")
        .expect("budget maintenance");
    assert_eq!(budget["granted_last_hour"], AGENTS, "{budget}");
    assert_eq!(budget["source"], "coordinator", "{budget}");
    coordinator.proc.stop();
}

/// Lease requests are agent messages like any other: a payload that is not sealed, one
/// that speaks for another host, or one out of range is refused and counted; a good one is
/// answered on the host's own `grants` topic, signed with the coordinator's key.
#[tokio::test]
async fn lease_requests_are_checked_and_answers_are_signed() {
    use rumqttc::{Event, Packet, QoS};
    use vigil_shared::lease::{LeaseAnswer, LeaseOp, LeaseRequest};
    use vigil_shared::policy::budget::BudgetMax;
    use vigil_shared::signed;
    use vigil_shared::topics::{self, AgentChannel};

    let dir = TestDir::new();
    let coordinator = start_coordinator(dir.path(), None, &["--lease-ttl", "1s"]).await;
    let http = coordinator.http.clone();
    let raw = vigil_tests::RawAgent::enroll(dir.path(), "budget-raw", &coordinator.broker);
    let (client, mut eventloop) = vigil_tests::login(raw.options.clone())
        .await
        .expect("login");
    let grants = topics::agent("budget-raw", AgentChannel::Grants);
    client
        .subscribe(grants.clone(), QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let (answers_tx, mut answers) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = event {
                let _ = answers_tx.send(p.payload.to_vec()).await;
            }
        }
    });
    let leases = topics::agent("budget-raw", AgentChannel::Leases);
    let request = |host: &str, max: BudgetMax, id: &str| LeaseRequest {
        host: host.into(),
        request_id: id.into(),
        action_id: "a1".into(),
        policy: "p".into(),
        per: None,
        max,
        max_per_hour: None,
        op: LeaseOp::Acquire,
        sent_at_ms: vigil_shared::time::now_ms(),
    };
    let publish = |payload: Vec<u8>| {
        let (client, leases) = (client.clone(), leases.clone());
        async move {
            client
                .publish(leases, QoS::AtLeastOnce, false, payload)
                .await
                .expect("publish");
        }
    };
    let mut garbage = vec![vigil_shared::wire::PROTOCOL_VERSION];
    garbage.extend_from_slice(b"not a sealed message");
    publish(garbage).await;
    publish(raw.seal(
        AgentChannel::Leases,
        &request("budget-other", BudgetMax::Count(1), "r1"),
    ))
    .await;
    publish(raw.seal(
        AgentChannel::Leases,
        &request("budget-raw", BudgetMax::Count(0), "r2"),
    ))
    .await;
    // Sealed for another channel: the seal does not match the topic.
    publish(raw.seal(
        AgentChannel::Status,
        &request("budget-raw", BudgetMax::Count(1), "r3"),
    ))
    .await;
    // Under a label value this host does not carry (it reported no labels at all).
    let mut elsewhere = request("budget-raw", BudgetMax::Count(1), "r5");
    elsewhere.per = Some(("role".into(), "db".into()));
    publish(raw.seal(AgentChannel::Leases, &elsewhere)).await;
    publish(raw.seal(
        AgentChannel::Leases,
        &request("budget-raw", BudgetMax::Count(1), "r4"),
    ))
    .await;

    let payload = tokio::time::timeout(WAIT, answers.recv())
        .await
        .expect("an answer")
        .expect("answer payload");
    let key_hex = std::fs::read_to_string(dir.path().join("data/bundle-signing.pub"))
        .expect("coordinator key");
    let key = vigil_shared::bundle::PublicKey::from_hex(key_hex.trim()).expect("key");
    let answer =
        signed::open::<LeaseAnswer>(&payload, Some(&key), "budget-raw").expect("signed answer");
    assert_eq!(answer.request_id, "r4", "only the good request is answered");
    assert_eq!(
        answer.key, "p#1",
        "an unknown policy: the declared limits are in the key"
    );
    let other = vigil_shared::bundle::BundleKeys::generate();
    let other_key = vigil_shared::bundle::PublicKey::from_hex(&other.public_hex()).expect("key");
    assert!(signed::open::<LeaseAnswer>(&payload, Some(&other_key), "budget-raw").is_err());

    for reason in ["malformed", "host_mismatch", "invalid", "label_mismatch"] {
        let series =
            format!("vigil_mqtt_messages_rejected_total{{channel=\"leases\",reason=\"{reason}\"}}");
        let count = wait_for(&series, WAIT, || async {
            let n = vigil_tests::metric(&http, &series).await;
            (n >= 1.0).then_some(n)
        })
        .await;
        assert!(count >= 1.0);
    }
    coordinator.proc.stop();
}

/// Writes `<dir>/bundles/web/` (selector `role=web`) with `group` as its `group.yaml`
/// and `policies` as its `p.yaml`; returns the bundle directory.
fn web_bundle(dir: &Path, group: &str, policies: &str) -> PathBuf {
    let web = dir.join("bundles").join("web");
    std::fs::create_dir_all(&web).expect("mkdir");
    std::fs::write(web.join("group.yaml"), group).expect("write group.yaml");
    std::fs::write(web.join("p.yaml"), policies).expect("write policies");
    dir.join("bundles")
}

/// A policy on `target` that runs `slow` when its CPU is above 90 %, with `budget` (a
/// YAML line, or empty).
fn slow_policy(name: &str, target: &str, budget: &str) -> String {
    format!(
        "  - name: {name}\n    target: {target}\n    condition: cpu_percent > 90\n    \
         auto_remediate: true\n    verify: 5m\n    action: exec\n    params: {{command: slow}}\n{budget}"
    )
}

/// Waits until `host` reports the bundle of group `web` applied.
async fn wait_web_bundle(http: &str, host: &str) {
    wait_for(&format!("{host} applied bundle web"), WAIT, || async {
        vigil_tests::host_entry(http, host).await.filter(|h| {
            h["bundles"]
                .as_array()
                .is_some_and(|b| b.iter().any(|b| b["group"] == "web"))
        })
    })
    .await;
}

/// Every action of `policies` completed, once `count` have.
async fn completed(http: &str, count: usize) -> Vec<Value> {
    wait_for(
        &format!("{count} actions completed"),
        Duration::from_secs(120),
        || async {
            let all: Vec<Value> = actions(http, "target=app")
                .await
                .into_iter()
                .chain(actions(http, "target=app-b").await)
                .filter(|a| at(a, "completed").is_some())
                .collect();
            (all.len() >= count).then_some(all)
        },
    )
    .await
}

fn intervals(done: &[Value]) -> Vec<(i64, i64)> {
    done.iter()
        .map(|a| {
            (
                at(a, "running").expect("running"),
                at(a, "completed").expect("completed"),
            )
        })
        .collect()
}

/// Agents whose local copy of a bundled policy claims `max_concurrent: 100` (their local
/// file wins on the agent) still get at most the bundle's one lease at a time: the
/// coordinator decides by its copy, and counts each request that declared otherwise.
#[tokio::test]
async fn a_local_copy_claiming_more_than_the_bundle_never_gets_more() {
    let hostile = format!(
        "policies:\n{}",
        slow_policy("hot", "app", "    budget: {max_concurrent: 100}\n")
    );
    let s = setup(&hostile, "slow = [\"/bin/sleep\", \"1.5\"]\n", &["app"]);
    let bundles = web_bundle(
        s.dir.path(),
        "selector: {role: web}\n",
        &format!(
            "policies:\n{}",
            slow_policy("hot", "app", "    budget: {max_concurrent: 1}\n")
        ),
    );
    let bundles_arg = bundles.display().to_string();
    let coordinator = start_coordinator(
        s.dir.path(),
        None,
        &["--lease-ttl", "3s", "--bundles", &bundles_arg],
    )
    .await;
    let http = coordinator.http.clone();
    let honest_policies = s.dir.path().join("honest-policies");
    std::fs::create_dir_all(&honest_policies).expect("mkdir");
    std::fs::write(honest_policies.join("p.yaml"), "policies: []\n").expect("write");
    let hostile_hosts: Vec<String> = (1..=3).map(|i| format!("budget-claim-{i}")).collect();
    let honest = "budget-honest".to_string();
    let mut agents: Vec<Proc> = hostile_hosts
        .iter()
        .map(|h| s.agent(h, &coordinator.broker))
        .collect();
    agents.push(s.agent_with(&honest, &coordinator.broker, &honest_policies));
    let all_hosts: Vec<String> = hostile_hosts
        .iter()
        .cloned()
        .chain([honest.clone()])
        .collect();
    wait_online(&http, &all_hosts).await;
    for host in &all_hosts {
        wait_web_bundle(&http, host).await;
    }

    set_cpu(&s.textfiles, &[("app", 99.0)]);
    let done = completed(&http, all_hosts.len()).await;
    let spans = intervals(&done);
    let most = most_at_once(&spans);
    let mismatches = vigil_tests::metric(
        &http,
        "vigil_budget_declaration_mismatches_total{source=\"bundle\"}",
    )
    .await;
    println!(
        "3 agents claiming max_concurrent 100 + 1 honest, bundle says 1: at most {most} at once; \
         {mismatches} mismatched requests counted"
    );
    assert_eq!(most, 1, "the bundle's limit holds: {spans:?}");
    assert!(
        mismatches >= 3.0,
        "each claiming host's acquire is counted: {mismatches}"
    );
    let budget = budgets(&http)
        .await
        .into_iter()
        .find(|b| b["key"] == "hot")
        .expect("budget hot");
    assert_eq!(budget["source"], "bundle", "{budget}");
    assert_eq!(budget["group"], "web", "{budget}");
    assert_eq!(budget["max"], 1, "{budget}");
    assert_eq!(budget["max_concurrent"], "1", "{budget}");
    assert_eq!(budget["granted_last_hour"], all_hosts.len(), "{budget}");
    // No budget under the claimed limits exists.
    assert!(
        budgets(&http).await.iter().all(|b| b["source"] != "agent"),
        "no agent-declared budget"
    );
    drop(agents);
    coordinator.proc.stop();
}

/// A `group.yaml` budget reaches the agents in the signed bundle and is one pool for the
/// group: two policies firing on three hosts act on at most two hosts at a time.
#[tokio::test]
async fn a_group_budget_limits_remediation_across_the_groups_policies() {
    const AGENTS: usize = 3;
    let s = setup(
        "policies: []\n",
        "slow = [\"/bin/sleep\", \"1.5\"]\n",
        &["app", "app-b"],
    );
    let bundles = web_bundle(
        s.dir.path(),
        "selector: {role: web}\nbudget: {max_concurrent: 2, per: role}\n",
        &format!(
            "policies:\n{}{}",
            slow_policy("hot-a", "app", ""),
            slow_policy("hot-b", "app-b", "")
        ),
    );
    let bundles_arg = bundles.display().to_string();
    let coordinator = start_coordinator(
        s.dir.path(),
        None,
        &["--lease-ttl", "3s", "--bundles", &bundles_arg],
    )
    .await;
    let http = coordinator.http.clone();
    let hosts: Vec<String> = (1..=AGENTS).map(|i| format!("budget-pool-{i}")).collect();
    let _agents: Vec<Proc> = hosts
        .iter()
        .map(|h| s.agent(h, &coordinator.broker))
        .collect();
    wait_online(&http, &hosts).await;
    for host in &hosts {
        wait_web_bundle(&http, host).await;
    }

    set_cpu(&s.textfiles, &[("app", 99.0), ("app-b", 99.0)]);
    let done = completed(&http, 2 * AGENTS).await;
    let spans = intervals(&done);
    let most = most_at_once(&spans);
    let mut policies: Vec<&str> = done.iter().filter_map(|a| a["policy"].as_str()).collect();
    policies.sort();
    policies.dedup();
    println!(
        "{AGENTS} hosts × 2 policies under one group budget of 2: at most {most} actions at once"
    );
    assert_eq!(policies, vec!["hot-a", "hot-b"], "both policies acted");
    assert!(most <= 2, "at most 2 at once across the group: {spans:?}");
    assert_eq!(most, 2, "the pool is used: two at once");
    // Per host, the pool holds one lease: its two actions never overlap.
    for host in &hosts {
        let own: Vec<(i64, i64)> = done
            .iter()
            .filter(|a| a["host"] == host.as_str())
            .map(|a| {
                (
                    at(a, "running").unwrap_or(0),
                    at(a, "completed").unwrap_or(0),
                )
            })
            .collect();
        assert_eq!(most_at_once(&own), 1, "{host}: {own:?}");
    }
    let all = budgets(&http).await;
    assert_eq!(all.len(), 1, "one pool, not one budget per policy: {all:?}");
    let pool = &all[0];
    assert_eq!(pool["key"], "@web/role=web", "{pool}");
    assert_eq!(pool["source"], "bundle_group", "{pool}");
    assert_eq!(pool["group"], "web", "{pool}");
    assert_eq!(pool["granted_last_hour"], 2 * AGENTS, "{pool}");
    let mismatches = vigil_tests::metric(
        &http,
        "vigil_budget_declaration_mismatches_total{source=\"bundle_group\"}",
    )
    .await;
    assert_eq!(mismatches, 0.0, "the agents declared the group's budget");
    coordinator.proc.stop();
}

/// A hostile `group.yaml` budget is refused at entry, naming the field; the group is not
/// published until it is fixed.
#[tokio::test]
async fn hostile_group_budgets_are_refused_naming_the_field() {
    let dir = TestDir::new();
    let bundles = web_bundle(
        dir.path(),
        "selector: {role: web}\nbudget: {max_concurrent: 0}\n",
        &format!("policies:\n{}", slow_policy("hot", "app", "")),
    );
    let bundles_arg = bundles.display().to_string();
    let coordinator = start_coordinator(dir.path(), None, &["--bundles", &bundles_arg]).await;
    let http = coordinator.http.clone();
    let group_file = bundles.join("web").join("group.yaml");
    let mut previous = String::new();
    for (budget, field) in [
        ("{max_concurrent: 0}", "budget.max_concurrent"),
        ("{max_concurrent: \"250%\"}", "budget.max_concurrent"),
        ("{max_concurrent: 18446744073709551617}", "budget"),
        (
            "{max_concurrent: 2, max_per_hour: -1}",
            "budget.max_per_hour",
        ),
        ("{max_concurrent: 2, per: \"role=web\"}", "budget.per"),
        ("{max_concurrent: 2, offline: sometimes}", "budget.offline"),
        ("{max_concurrent: 2, max_parallel: 9}", "max_parallel"),
    ] {
        std::fs::write(
            &group_file,
            format!("selector: {{role: web}}\nbudget: {budget}\n"),
        )
        .expect("write group.yaml");
        let error = wait_for(&format!("the error for {budget}"), WAIT, || async {
            let (_, body) = get_json(&format!("{http}/api/v1/bundles")).await;
            body["error"]
                .as_str()
                .filter(|e| *e != previous)
                .map(str::to_string)
        })
        .await;
        println!("{budget}: {error}");
        assert!(
            error.contains("group `web`: group.yaml") && error.contains(field),
            "{budget}: {error}"
        );
        previous = error;
        let (_, body) = get_json(&format!("{http}/api/v1/bundles")).await;
        assert!(
            body["bundles"].as_array().is_some_and(|b| b.is_empty()),
            "nothing published: {body}"
        );
    }
    std::fs::write(
        &group_file,
        "selector: {role: web}\nbudget: {max_concurrent: \"50%\", per: role}\n",
    )
    .expect("write group.yaml");
    wait_for("the fixed group published", WAIT, || async {
        let (_, body) = get_json(&format!("{http}/api/v1/bundles")).await;
        (body["error"].is_null() && body["bundles"][0]["group"] == "web").then_some(())
    })
    .await;
    coordinator.proc.stop();
}
