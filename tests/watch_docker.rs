//! The Docker watcher against a real Docker engine and real containers (of a tiny busybox
//! image built locally): states and health arrive from Docker's event stream at once, a
//! killed container is seen within milliseconds, names and globs are followed as they
//! change, missing names are reported, and an absent engine is waited for.
//!
//! Run with `cargo test -p vigil-tests --test watch_docker -- --nocapture` to see the
//! measured latencies.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use vigil_agent::watch::{docker, StateUpdate};
use vigil_tests::docker::{busybox_image, docker, unique_name, Container};

/// A Docker watcher running in this process, and what it reports.
struct Watcher {
    names: watch::Sender<Vec<String>>,
    updates: mpsc::Receiver<StateUpdate>,
    task: JoinHandle<()>,
}

impl Watcher {
    /// Starts watching `names` over `socket` (the default socket if `None`).
    fn start(names: &[&str], socket: Option<PathBuf>) -> Watcher {
        let (names_tx, names_rx) = watch::channel(names.iter().map(|n| n.to_string()).collect());
        let (tx, updates) = mpsc::channel(256);
        let task = tokio::spawn(docker::run(names_rx, tx, socket));
        Watcher {
            names: names_tx,
            updates,
            task,
        }
    }

    /// The next update satisfying `want`, skipping others; panics after `timeout`.
    async fn next(
        &mut self,
        what: &str,
        timeout: Duration,
        want: impl Fn(&StateUpdate) -> bool,
    ) -> StateUpdate {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.updates.recv()).await {
                Ok(Some(update)) if want(&update) => return update,
                Ok(Some(update)) => seen.push(format!(
                    "{} {} health={:?} detail={:?}",
                    update.name, update.reading.state, update.reading.health, update.reading.detail
                )),
                Ok(None) => panic!("the watcher stopped while waiting for {what}"),
                Err(_) => panic!(
                    "no update for {what} within {timeout:?}; other updates:\n  {}",
                    seen.join("\n  ")
                ),
            }
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Milliseconds since the epoch (the clock readings are stamped with).
fn epoch_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// An update about `name` in `state`.
fn is(name: &str, state: &str) -> impl Fn(&StateUpdate) -> bool {
    let (name, state) = (name.to_string(), state.to_string());
    move |u| u.name == name && u.reading.state == state
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_container_is_reported_exited_within_milliseconds() {
    let image = busybox_image();
    let c = Container::run("kill", &[image]);
    let mut watcher = Watcher::start(&[&c.name], None);
    let first = watcher
        .next("running", Duration::from_secs(10), is(&c.name, "running"))
        .await;
    assert_eq!(first.reading.health, None, "no health check, no health");

    // `docker kill`: the reading is timed from the moment the CLI is started.
    let t0 = epoch_ms();
    let started = Instant::now();
    docker(&["kill", &c.name]);
    let cli = started.elapsed();
    let exited = watcher
        .next(
            "exited after docker kill",
            Duration::from_secs(5),
            is(&c.name, "exited"),
        )
        .await;
    println!(
        "docker kill → `exited` reading: {} ms (the docker CLI itself ran {:.0} ms)",
        exited.reading.at_ms - t0,
        cli.as_secs_f64() * 1e3
    );
    assert_eq!(exited.reading.detail.as_deref(), Some("exit code 137"));

    // A crash: the container's process is SIGKILLed directly, as by the kernel's OOM killer.
    docker(&["start", &c.name]);
    watcher
        .next(
            "running again",
            Duration::from_secs(10),
            is(&c.name, "running"),
        )
        .await;
    let pid = c.host_pid();
    assert!(pid > 0, "a running container has a host pid");
    let t0 = epoch_ms();
    // SAFETY: kill(2) on the container's main process, which this test started.
    let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill {pid}: {}", std::io::Error::last_os_error());
    let crashed = watcher
        .next(
            "exited after SIGKILL",
            Duration::from_secs(5),
            is(&c.name, "exited"),
        )
        .await;
    let latency = Duration::from_millis(u64::try_from(crashed.reading.at_ms - t0).unwrap_or(0));
    println!(
        "SIGKILL of the container's process → `exited` reading: {} ms",
        latency.as_millis()
    );
    // Event-driven, not polled: far below the 30 s resync (and Docker's ≈320 ms restart).
    assert!(
        latency < Duration::from_secs(1),
        "a crash took {latency:?} to be reported"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_turning_unhealthy_is_reported() {
    let image = busybox_image();
    let c = Container::run(
        "health",
        &[
            "--health-cmd",
            "test -e /tmp/healthy",
            "--health-interval",
            "1s",
            "--health-timeout",
            "1s",
            "--health-retries",
            "1",
            image,
            "sh",
            "-c",
            "touch /tmp/healthy && exec sleep 3600",
        ],
    );
    let mut watcher = Watcher::start(&[&c.name], None);
    let health = |name: &str, h: &str| {
        let (name, h) = (name.to_string(), h.to_string());
        move |u: &StateUpdate| u.name == name && u.reading.health.as_deref() == Some(h.as_str())
    };
    watcher
        .next(
            "healthy",
            Duration::from_secs(15),
            health(&c.name, "healthy"),
        )
        .await;
    c.exec(&["rm", "/tmp/healthy"]);
    let t0 = Instant::now();
    let unhealthy = watcher
        .next(
            "unhealthy",
            Duration::from_secs(15),
            health(&c.name, "unhealthy"),
        )
        .await;
    println!(
        "health check broken → `unhealthy` update: {:.0} ms (health interval 1 s)",
        t0.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(unhealthy.reading.state, "running");
    let detail = unhealthy.reading.detail.unwrap_or_default();
    assert!(
        detail.starts_with("health check failed 1 times in a row"),
        "detail: {detail}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn globs_missing_names_and_name_changes_are_followed() {
    let image = busybox_image();
    let base = unique_name("glob");
    let web1 = Container::run_named(&format!("{base}-web-1"), &[image]);
    let web2 = Container::create_named(&format!("{base}-web-2"), &[image]);
    let other = Container::run_named(&format!("{base}-db"), &[image]);
    let nope = format!("{base}-nope");
    let glob = format!("{base}-web-*");
    let mut watcher = Watcher::start(&[&glob, &nope], None);

    // The first sync: every match, in whatever order, and the missing name.
    let mut initial = std::collections::BTreeMap::new();
    while initial.len() < 3 {
        let u = watcher
            .next("the initial readings", Duration::from_secs(10), |_| true)
            .await;
        initial.insert(u.name.clone(), u.reading.state.clone());
    }
    assert_eq!(initial.get(&web1.name).map(String::as_str), Some("running"));
    assert_eq!(initial.get(&web2.name).map(String::as_str), Some("created"));
    assert_eq!(initial.get(&nope).map(String::as_str), Some("missing"));
    assert!(!initial.contains_key(&other.name), "{initial:?}");

    // A new container matching the glob is reported from its events.
    let web3 = Container::run_named(&format!("{base}-web-3"), &[image]);
    watcher
        .next(
            "a new match",
            Duration::from_secs(5),
            is(&web3.name, "running"),
        )
        .await;

    // A removed one is reported missing.
    docker(&["rm", "-f", &web1.name]);
    let gone = watcher
        .next(
            "a removed match",
            Duration::from_secs(5),
            is(&web1.name, "missing"),
        )
        .await;
    assert_eq!(gone.reading.detail.as_deref(), Some("container removed"));

    // The missing name appears.
    let appeared = Container::run_named(&nope, &[image]);
    watcher
        .next(
            "the missing name appearing",
            Duration::from_secs(5),
            is(&appeared.name, "running"),
        )
        .await;

    // The names change: the other container is now watched and reported at once.
    watcher
        .names
        .send(vec![glob.clone(), other.name.clone()])
        .expect("the watcher listens");
    watcher
        .next(
            "a newly watched name",
            Duration::from_secs(5),
            is(&other.name, "running"),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_absent_engine_is_retried_until_it_appears() {
    let image = busybox_image();
    let c = Container::run("late", &[image]);
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("docker.sock");
    let mut watcher = Watcher::start(&[&c.name], Some(socket.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        watcher.updates.try_recv().is_err(),
        "no engine, no readings"
    );
    assert!(!watcher.task.is_finished(), "the watcher keeps retrying");

    // The engine "appears" at the socket path.
    let real = std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(str::to_string))
        .unwrap_or_else(|| "/var/run/docker.sock".to_string());
    std::os::unix::fs::symlink(real, &socket).expect("link the socket");
    watcher
        .next(
            "a reading once the engine is there",
            Duration::from_secs(10),
            is(&c.name, "running"),
        )
        .await;
}
