//! The Docker executor against a real Docker engine and real containers (of the tiny
//! busybox test image): a killed container is brought back — timed against Docker's own
//! `--restart=always`, side by side — a health-checked container is
//! waited for until healthy, a container that dies at once fails the attempt quickly,
//! containers outside the allowlist are not touched, stop/start work, and a
//! Compose-labelled service is scaled up and down.
//!
//! Run with `cargo test -p vigil-tests --test execute_docker -- --nocapture` to see the
//! measured times. The tests take turns (the timing one would be skewed by the others).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::Mutex;
use vigil_agent::executors::{ExecError, ExecOutcome, ExecRequest, ExecutorConfig, Executors};
use vigil_shared::policy::ActionKind;
use vigil_tests::docker::{busybox_image, docker, try_docker, unique_name, Container};

/// One test at a time: they all use the one Docker engine, and one measures it.
static TURN: Mutex<()> = Mutex::const_new(());

/// Executors allowed to act on `containers` (names, globs or Compose services).
fn executors(containers: &[&str]) -> Executors {
    Executors::new(ExecutorConfig {
        containers: containers.iter().map(|c| c.to_string()).collect(),
        ..ExecutorConfig::default()
    })
}

/// A request for `kind` on `target` with `params` (a JSON object), 10 s to run.
fn request(kind: ActionKind, target: &str, params: Value) -> ExecRequest {
    ExecRequest {
        decided_at_ms: None,
        action_id: unique_name("action"),
        kind,
        target: target.to_string(),
        params: match params {
            Value::Object(map) => map.into_iter().collect(),
            _ => BTreeMap::new(),
        },
        timeout: Duration::from_secs(10),
    }
}

/// When the container last started, in epoch ms (Docker's `State.StartedAt`).
fn started_at_ms(container: &Container) -> i64 {
    let text = container.inspect("{{.State.StartedAt}}");
    vigil_shared::time::parse_time(&text)
        .unwrap_or_else(|e| panic!("{}: StartedAt `{text}`: {e}", container.name))
}

/// Milliseconds since the epoch.
fn epoch_ms() -> i64 {
    vigil_shared::time::now_ms()
}

/// SIGKILLs a container's main process from the host, as a crash would; returns when.
fn crash(container: &Container) -> i64 {
    let pid = container.host_pid();
    assert!(pid > 0, "{} is not running", container.name);
    let at = epoch_ms();
    // SAFETY: kill(2) on the pid Docker reports for the container's main process.
    let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill {pid}: {}", std::io::Error::last_os_error());
    at
}

/// The middle value.
fn median(mut values: Vec<i64>) -> i64 {
    values.sort_unstable();
    values[values.len() / 2]
}

/// Rounds of the kill → running comparison.
const ROUNDS: usize = 3;

/// How long the engine is left alone before each measurement (starting a container
/// leaves it busy for a while).
const QUIET: Duration = Duration::from_millis(300);

/// Kills `container` and has Vigil's executor restart it at once (as the watcher's `die`
/// would trigger it): ms from the kill to Docker's `StartedAt`, and until the call
/// returned.
async fn vigil_restart(executors: &Executors, container: &Container) -> (i64, i64) {
    let killed = crash(container);
    let started = Instant::now();
    let outcome = executors
        .run(&request(ActionKind::Restart, &container.name, json!({})))
        .await
        .unwrap_or_else(|e| panic!("restart after kill: {e}"));
    let returned = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
    assert_eq!(container.inspect("{{.State.Status}}"), "running");
    assert!(outcome.detail.contains("running"), "{}", outcome.detail);
    let running = started_at_ms(container) - killed;
    assert!(running > 0, "started before it was killed?");
    (running, returned)
}

/// Kills `container` (run with `--restart=always`) and waits for Docker to start it
/// again: ms from the kill to its `StartedAt`. The docker CLI polls rarely, so as not to
/// slow the engine down meanwhile.
async fn policy_restart(container: &Container) -> i64 {
    let before = started_at_ms(container);
    let killed = crash(container);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = started_at_ms(container);
        if now != before && container.inspect("{{.State.Status}}") == "running" {
            return now - killed;
        }
        assert!(
            Instant::now() < deadline,
            "Docker did not restart {}",
            container.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_container_runs_again_sooner_than_with_dockers_restart_policy() {
    let _turn = TURN.lock().await;
    let image = busybox_image();
    let mut vigil = Vec::new();
    let mut returned = Vec::new();
    let mut policy = Vec::new();
    // Fresh containers each round: Docker doubles its back-off for a container that ran
    // less than 10 s, so a second kill of the same one would not be a fair comparison.
    // Who goes first alternates.
    for round in 1..=ROUNDS {
        let ours = Container::run("exec-kill", &[image]);
        let theirs = Container::run("exec-policy", &["--restart=always", image]);
        // An agent's executors are connected long before a container dies.
        let executors = executors(&[&ours.name]);
        executors
            .run(&request(
                ActionKind::Start,
                &ours.name,
                json!({"settle": 0}),
            ))
            .await
            .unwrap_or_else(|e| panic!("warming up: {e}"));
        let (vigil_ms, returned_ms, policy_ms);
        if round % 2 == 1 {
            tokio::time::sleep(QUIET).await;
            (vigil_ms, returned_ms) = vigil_restart(&executors, &ours).await;
            tokio::time::sleep(QUIET).await;
            policy_ms = policy_restart(&theirs).await;
        } else {
            tokio::time::sleep(QUIET).await;
            policy_ms = policy_restart(&theirs).await;
            tokio::time::sleep(QUIET).await;
            (vigil_ms, returned_ms) = vigil_restart(&executors, &ours).await;
        }
        println!(
            "round {round}: kill → running again: Vigil's executor {vigil_ms} ms (its call \
             returned after {returned_ms} ms, settle check included), Docker's \
             --restart=always {policy_ms} ms"
        );
        vigil.push(vigil_ms);
        returned.push(returned_ms);
        policy.push(policy_ms);
    }
    let (vigil, returned, policy) = (median(vigil), median(returned), median(policy));
    println!(
        "kill → running again (median of {ROUNDS}): Vigil's executor {vigil} ms, Docker's \
         --restart=always {policy} ms; Docker takes {:.2}× as long (Vigil's restart call \
         returned after {returned} ms, with its settle check)",
        policy as f64 / vigil as f64
    );
    // Docker's 100 ms back-off starts when the container dies and runs while the engine
    // cleans the dead container up (≈100 ms here, holding the container's lock, which
    // any API call waits for): its restart begins when the container is free again, just
    // when Vigil's can. So the two are about even here, with the engine's own start time
    // (≈300 ms) dominating; this checks that the executor adds nothing of its own.
    assert!(
        vigil * 10 <= policy * 12,
        "Vigil ({vigil} ms) is clearly slower than Docker's restart policy ({policy} ms)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_waits_until_the_health_check_passes() {
    let _turn = TURN.lock().await;
    let image = busybox_image();
    // Healthy half a second after each start (/run is a fresh tmpfs every start).
    let c = Container::run(
        "exec-health",
        &[
            "--tmpfs",
            "/run",
            "--health-cmd",
            "test -f /run/ready",
            "--health-interval",
            "100ms",
            "--health-retries",
            "100",
            image,
            "sh",
            "-c",
            "sleep 0.5; touch /run/ready; exec sleep 3600",
        ],
    );
    c.wait_inspect(
        "{{.State.Health.Status}}",
        "healthy",
        Duration::from_secs(10),
    );
    let executors = executors(&[&c.name]);
    let started = Instant::now();
    let outcome = executors
        .run(&request(
            ActionKind::Restart,
            &c.name,
            json!({"stop_timeout": 0}),
        ))
        .await
        .unwrap_or_else(|e| panic!("restart: {e}"));
    let took = started.elapsed();
    println!("{} after {} ms", outcome.detail, took.as_millis());
    assert!(
        outcome.detail.contains("running, healthy"),
        "{}",
        outcome.detail
    );
    assert!(
        took >= Duration::from_millis(500),
        "returned before healthy"
    );
    assert_eq!(c.inspect("{{.State.Health.Status}}"), "healthy");

    // A health check that never passes: unhealthy after its retries, and the attempt fails.
    let sick = Container::run(
        "exec-unhealthy",
        &[
            "--health-cmd",
            "echo not ready; false",
            "--health-interval",
            "100ms",
            "--health-retries",
            "2",
            image,
        ],
    );
    let executors = crate::executors(&[&sick.name]);
    let started = Instant::now();
    let error = executors
        .run(&request(
            ActionKind::Restart,
            &sick.name,
            json!({"stop_timeout": 0}),
        ))
        .await
        .unwrap_err();
    println!("{error} after {} ms", started.elapsed().as_millis());
    assert!(
        matches!(&error, ExecError::Failed { executor: "docker", message }
            if message.contains("unhealthy") && message.contains("not ready")),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_that_dies_at_once_fails_the_restart_quickly() {
    let _turn = TURN.lock().await;
    let image = busybox_image();
    let c = Container::run("exec-dies", &[image, "sh", "-c", "exit 1"]);
    c.wait_inspect("{{.State.Status}}", "exited", Duration::from_secs(10));
    let executors = executors(&[&c.name]);
    let started = Instant::now();
    let error = executors
        .run(&request(ActionKind::Restart, &c.name, json!({})))
        .await
        .unwrap_err();
    let took = started.elapsed();
    println!("{error} after {} ms", took.as_millis());
    assert!(
        matches!(&error, ExecError::Failed { executor: "docker", message }
            if message.contains("exited") && message.contains("exit code 1")),
        "{error:?}"
    );
    assert!(error.retryable());
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn containers_outside_the_allowlist_are_not_touched() {
    let _turn = TURN.lock().await;
    let image = busybox_image();
    let c = Container::run("exec-denied", &[image]);
    let before = c.inspect("{{.State.StartedAt}}");
    let executors = executors(&["vigil-test-allowed-*", "web"]);
    for kind in [ActionKind::Restart, ActionKind::Stop, ActionKind::Scale] {
        let error = executors
            .run(&request(kind, &c.name, json!({"replicas": 2})))
            .await
            .unwrap_err();
        assert!(
            matches!(&error, ExecError::NotAllowed(why)
                if why.contains(&c.name) && why.contains("remediation.containers")),
            "{error:?}"
        );
        assert!(!error.retryable());
    }
    assert_eq!(c.inspect("{{.State.Status}}"), "running");
    assert_eq!(
        c.inspect("{{.State.StartedAt}}"),
        before,
        "it was restarted"
    );
    // `reload` is for units; an unknown container is refused without harm.
    let executors = crate::executors(&["*"]);
    let error = executors
        .run(&request(ActionKind::Reload, &c.name, json!({})))
        .await
        .unwrap_err();
    assert!(matches!(error, ExecError::Invalid(_)), "{error:?}");
    let error = executors
        .run(&request(
            ActionKind::Restart,
            "vigil-test-no-such-container",
            json!({}),
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ExecError::Invalid(why) if why.contains("no such container")),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_and_start() {
    let _turn = TURN.lock().await;
    let image = busybox_image();
    let c = Container::run("exec-stopstart", &[image]);
    let executors = executors(&["vigil-test-*"]);
    // busybox sleep as PID 1 ignores SIGTERM: no grace period, or this waits 10 s.
    let stop = request(ActionKind::Stop, &c.name, json!({"stop_timeout": 0}));
    let outcome = executors.run(&stop).await.unwrap();
    println!("{}", outcome.detail);
    assert_eq!(c.inspect("{{.State.Status}}"), "exited");
    assert!(outcome.detail.contains("exited"), "{}", outcome.detail);
    let again = executors.run(&stop).await.unwrap();
    assert!(again.detail.contains("already stopped"), "{}", again.detail);

    let start = request(ActionKind::Start, &c.name, json!({}));
    let outcome = executors.run(&start).await.unwrap();
    println!("{}", outcome.detail);
    assert_eq!(c.inspect("{{.State.Status}}"), "running");
    let again: ExecOutcome = executors.run(&start).await.unwrap();
    assert!(again.detail.contains("already running"), "{}", again.detail);
}

/// A Docker network removed when dropped.
struct Network(String);

impl Drop for Network {
    fn drop(&mut self) {
        let _ = try_docker(&["network", "rm", &self.0]);
    }
}

/// The service's containers (name, state), by name.
fn service_containers(project: &str, service: &str) -> Vec<(String, String)> {
    let listing = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
        "--filter",
        &format!("label=com.docker.compose.service={service}"),
        "--format",
        "{{.Names}} {{.State}}",
    ]);
    let mut containers: Vec<(String, String)> = listing
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(n, s)| (n.to_string(), s.to_string()))
        .collect();
    containers.sort();
    containers
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compose_service_scales_up_and_down() {
    let _turn = TURN.lock().await;
    let image = busybox_image();
    let project = unique_name("shop");
    let network = Network(format!("{project}_default"));
    docker(&["network", "create", &network.0]);
    let labels = |n: u32| {
        [
            format!("com.docker.compose.project={project}"),
            "com.docker.compose.service=web".to_string(),
            format!("com.docker.compose.container-number={n}"),
        ]
    };
    let [l1, l2, l3] = labels(1);
    let first = Container::run_named(
        &format!("{project}-web-1"),
        &[
            "--label",
            &l1,
            "--label",
            &l2,
            "--label",
            &l3,
            "--network",
            &network.0,
            "--network-alias",
            "web",
            "--env",
            "ROLE=web",
            image,
        ],
    );
    // Whatever the executor creates is removed at the end, also if the test fails.
    let _copies: Vec<Container> = (2..=4)
        .map(|n| Container::adopt(&format!("{project}-web-{n}")))
        .collect();
    let executors = executors(&["web", "db"]);
    let scale = |params: Value| {
        let mut params = params;
        params["project"] = json!(project);
        request(ActionKind::Scale, "web", params)
    };

    let started = Instant::now();
    let outcome = executors
        .run(&scale(json!({"replicas": 3})))
        .await
        .unwrap_or_else(|e| panic!("scale up: {e}"));
    println!("{} ({} ms)", outcome.detail, started.elapsed().as_millis());
    assert!(
        outcome.detail.contains("1 → 3 containers (3 running)"),
        "{}",
        outcome.detail
    );
    let names: Vec<String> = (1..=3).map(|n| format!("{project}-web-{n}")).collect();
    assert_eq!(
        service_containers(&project, "web"),
        names
            .iter()
            .map(|n| (n.clone(), "running".to_string()))
            .collect::<Vec<_>>()
    );
    // The copy has the template's config, its number, and the network with the alias.
    let inspect = |template: &str| docker(&["inspect", "--format", template, &names[2]]);
    assert!(inspect("{{json .Config.Env}}").contains("ROLE=web"));
    assert_eq!(
        inspect("{{index .Config.Labels \"com.docker.compose.container-number\"}}"),
        "3"
    );
    let networks: Value = serde_json::from_str(&inspect("{{json .NetworkSettings.Networks}}"))
        .expect("networks as JSON");
    let aliases = &networks[&network.0]["Aliases"];
    assert!(
        aliases
            .as_array()
            .is_some_and(|a| a.contains(&json!("web"))),
        "{networks}"
    );

    let outcome = executors
        .run(&scale(json!({"by": "-2", "stop_timeout": 0})))
        .await
        .unwrap_or_else(|e| panic!("scale down: {e}"));
    println!("{}", outcome.detail);
    assert!(
        outcome.detail.contains("3 → 1 containers"),
        "{}",
        outcome.detail
    );
    assert_eq!(
        service_containers(&project, "web"),
        vec![(first.name.clone(), "running".to_string())]
    );

    let outcome = executors.run(&scale(json!({"by": 1}))).await.unwrap();
    assert!(
        outcome.detail.contains("1 → 2 containers"),
        "{}",
        outcome.detail
    );
    assert!(
        outcome.detail.contains(&format!("{project}-web-2")),
        "{}",
        outcome.detail
    );

    let error = executors
        .run(&scale(json!({"replicas": 0})))
        .await
        .unwrap_err();
    assert!(matches!(error, ExecError::Invalid(_)), "{error:?}");
    let error = executors
        .run(&request(
            ActionKind::Scale,
            "db",
            json!({"replicas": 2, "project": project}),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        error,
        ExecError::Invalid("no Compose-labelled containers for service db".into())
    );
}
