//! The systemd watcher against a real systemd: a container whose PID 1 is systemd (Debian
//! bookworm, built once with debootstrap), the `watch` example copied in and run there
//! against the container's system bus, and real units started, stopped, killed, installed.
//!
//! Run with `cargo test -p vigil-tests --test watch_systemd -- --nocapture` to see the
//! measured latencies.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use vigil_tests::systemd::{watch_example, SystemdContainer};

/// Where the watch example is put inside the container.
const WATCH: &str = "/usr/local/bin/vigil-watch";

/// A simple service that runs until stopped or killed. (Enabled, it stays loaded when
/// stopped, so systemd still has the time it stopped.)
const SLEEPER: &str = "[Unit]\nDescription=Vigil test sleeper\n\n\
                       [Service]\nType=simple\nExecStart=/bin/sleep infinity\n\n\
                       [Install]\nWantedBy=multi-user.target\n";

/// The watch example running inside the container, and the JSON lines it prints.
struct WatchProc {
    child: Child,
    lines: mpsc::Receiver<Value>,
    seen: Vec<String>,
}

impl WatchProc {
    /// `docker exec NAME vigil-watch systemd UNITS…`.
    fn start(container: &SystemdContainer, units: &[&str]) -> WatchProc {
        let mut child = Command::new("docker")
            .args([
                "exec",
                container.name(),
                "env",
                "VIGIL_LOG=debug",
                WATCH,
                "systemd",
            ])
            .args(units)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run docker exec");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Value>(&line) {
                    Ok(value) => {
                        if tx.send(value).is_err() {
                            break;
                        }
                    }
                    Err(e) => eprintln!("watch printed a line that is not JSON ({e}): {line}"),
                }
            }
        });
        WatchProc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The latest update per name, until `count` names have been seen; panics after
    /// `timeout`.
    fn collect(&mut self, count: usize, timeout: Duration) -> BTreeMap<String, Value> {
        let deadline = Instant::now() + timeout;
        let mut latest = BTreeMap::new();
        while latest.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    let name = v["name"].as_str().unwrap_or_default().to_string();
                    latest.insert(name, v);
                }
                Err(_) => panic!("only {latest:?} within {timeout:?}, wanted {count} names"),
            }
        }
        latest
    }

    /// The next update about `name` in `state`, skipping others; panics after `timeout`.
    fn next(&mut self, name: &str, state: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) if v["name"] == name && v["state"] == state => return v,
                Ok(v) => self.seen.push(v.to_string()),
                Err(_) => panic!(
                    "no `{state}` update for {name} within {timeout:?}; updates so far:\n  {}",
                    self.seen.join("\n  ")
                ),
            }
        }
    }
}

impl Drop for WatchProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Milliseconds since the epoch.
fn epoch_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Prints how long a change took to be reported: from the command (wall time, including
/// `docker exec`) and from systemd's own timestamp of the state change to the reading.
fn report_latency(
    what: &str,
    container: &SystemdContainer,
    unit: &str,
    issued: Instant,
    update: &Value,
) {
    let wall = issued.elapsed();
    let at_ms = update["at_ms"].as_i64().unwrap_or(0);
    let since_systemd = container
        .unit_timestamp_ms(unit, "InactiveEnterTimestamp")
        .map(|t| format!("{} ms", at_ms - t))
        .unwrap_or_else(|| "unknown".into());
    println!(
        "{what}: systemd's state change → watcher reading {since_systemd}; \
         command issued → update received {:.0} ms (includes docker exec)",
        wall.as_secs_f64() * 1e3
    );
}

#[test]
fn unit_states_arrive_from_systemd_signals() {
    let container = SystemdContainer::start("systemd");
    container.copy_in(&watch_example(), WATCH);
    for unit in [
        "vigil-sleep.service",
        "vigil-crash.service",
        "vigil-glob-a.service",
    ] {
        container.install_unit(unit, SLEEPER);
    }
    container.systemctl(&["enable", "vigil-sleep.service"]);
    container.systemctl(&[
        "start",
        "vigil-sleep.service",
        "vigil-crash.service",
        "vigil-glob-a.service",
    ]);

    let mut watch = WatchProc::start(
        &container,
        &[
            "vigil-sleep.service",
            "vigil-crash",
            "vigil-nope.service",
            "vigil-glob-*.service",
        ],
    );
    // The first readings, in whatever order.
    let initial = watch.collect(4, Duration::from_secs(20));
    let reading = |name: &str| {
        initial.get(name).map(|v| {
            (
                v["state"].as_str().unwrap_or(""),
                v["detail"].as_str().unwrap_or(""),
            )
        })
    };
    assert_eq!(reading("vigil-sleep.service"), Some(("active", "running")));
    // A name without a type suffix is a service, reported under the name as written.
    assert_eq!(reading("vigil-crash"), Some(("active", "running")));
    assert_eq!(
        reading("vigil-nope.service"),
        Some(("missing", "unit not found"))
    );
    assert_eq!(reading("vigil-glob-a.service"), Some(("active", "running")));

    let t = Duration::from_secs(5);
    let issued = Instant::now();
    container.systemctl(&["stop", "vigil-sleep.service"]);
    let stopped = watch.next("vigil-sleep.service", "inactive", t);
    assert_eq!(stopped["detail"], "dead");
    report_latency(
        "systemctl stop → inactive",
        &container,
        "vigil-sleep.service",
        issued,
        &stopped,
    );

    // The service's process dies (SIGKILL): the unit fails.
    let issued = Instant::now();
    container.systemctl(&["kill", "--signal=KILL", "vigil-crash.service"]);
    let failed = watch.next("vigil-crash", "failed", t);
    assert_eq!(failed["detail"], "failed");
    report_latency(
        "process killed → failed",
        &container,
        "vigil-crash.service",
        issued,
        &failed,
    );
    let lag = failed["at_ms"].as_i64().unwrap_or(0)
        - container
            .unit_timestamp_ms("vigil-crash.service", "InactiveEnterTimestamp")
            .unwrap_or(0);
    assert!(
        lag < 1000,
        "the failure was read {lag} ms after systemd saw it: not signal-driven"
    );

    // Started again; a glob picks up a unit that appears later.
    container.systemctl(&["start", "vigil-sleep.service"]);
    watch.next("vigil-sleep.service", "active", t);
    container.install_unit("vigil-glob-b.service", SLEEPER);
    container.systemctl(&["start", "vigil-glob-b.service"]);
    watch.next("vigil-glob-b.service", "active", t);

    // The missing unit is installed: after the daemon-reload it is known (and inactive).
    let before = epoch_ms();
    container.install_unit("vigil-nope.service", SLEEPER);
    let known = watch.next("vigil-nope.service", "inactive", t);
    assert!(known["at_ms"].as_i64().unwrap_or(0) >= before);
}
