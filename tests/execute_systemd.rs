//! The systemd executor against a real systemd: a container whose PID 1 is systemd
//! (Debian bookworm, built once with debootstrap), the `execute` example copied in and
//! run there against the container's system bus, acting on real units: restart (a new
//! main process), stop, start, reload (its `ExecReload` runs), a unit that fails to
//! start, a service that dies right after starting, an unknown unit, a unit outside the allowlist — and, outside the container, no
//! system bus at all.
//!
//! Run with `cargo test -p vigil-tests --test execute_systemd -- --nocapture` to see the
//! measured times.

use std::process::{Command, Stdio};

use serde_json::Value;
use vigil_tests::systemd::{execute_example, SystemdContainer};

/// Where the execute example is put inside the container.
const EXECUTE: &str = "/usr/local/bin/vigil-execute";
/// Where its config is put inside the container.
const CONFIG: &str = "/etc/vigil/executors.toml";

/// The allowlist: everything the test acts on except `vigil-other.service`.
const ALLOWLIST: &str = "[remediation]\n\
                         units = [\"vigil-sleep.service\", \"vigil-reload\", \
                         \"vigil-fail.service\", \"vigil-crash.service\", \
                         \"vigil-ghost.service\"]\n";

/// A service that runs until stopped.
const SLEEPER: &str = "[Unit]\nDescription=Vigil test sleeper\n\n\
                       [Service]\nType=simple\nExecStart=/bin/sleep infinity\n";

/// A service that can be reloaded: its reload leaves a mark in /run.
const RELOADABLE: &str = "[Unit]\nDescription=Vigil test reloadable\n\n\
                          [Service]\nType=simple\nExecStart=/bin/sleep infinity\n\
                          ExecReload=/bin/sh -c 'echo reloaded >> /run/vigil-reloaded'\n";

/// A service that fails to start.
const FAILING: &str = "[Unit]\nDescription=Vigil test failure\n\n\
                       [Service]\nType=oneshot\nExecStart=/bin/false\n";

/// A simple service that dies a moment after it started (its start job still succeeds).
const CRASHING: &str = "[Unit]\nDescription=Vigil test crash\n\n\
                        [Service]\nType=simple\nExecStart=/bin/sh -c 'sleep 0.05; exit 3'\n";

/// Runs the execute example inside the container; its JSON line.
fn execute(container: &SystemdContainer, args: &[&str]) -> Value {
    let output = Command::new("docker")
        .args(["exec", container.name(), EXECUTE, CONFIG])
        .args(args)
        .arg("timeout=20s")
        .stdin(Stdio::null())
        .output()
        .expect("run docker exec");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "execute {args:?} printed no JSON line ({e}): stdout `{stdout}`, stderr `{}`",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Asserts an outcome is a success; returns its detail.
fn ok(outcome: &Value) -> String {
    assert_eq!(outcome["ok"], true, "{outcome}");
    assert_eq!(outcome["executor"], "systemd", "{outcome}");
    outcome["detail"].as_str().unwrap_or_default().to_string()
}

/// Asserts an outcome is the error `kind`; returns its message.
fn error(outcome: &Value, kind: &str) -> String {
    assert_eq!(outcome["ok"], false, "{outcome}");
    assert_eq!(outcome["error"], kind, "{outcome}");
    outcome["message"].as_str().unwrap_or_default().to_string()
}

#[test]
fn units_are_restarted_stopped_started_and_reloaded_over_dbus() {
    let container = SystemdContainer::start("execute-systemd");
    container.copy_in(&execute_example(), EXECUTE);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("executors.toml");
    std::fs::write(&config, ALLOWLIST).expect("write the config");
    container.container.exec(&["mkdir", "-p", "/etc/vigil"]);
    container.copy_in(&config, CONFIG);
    container.install_unit("vigil-sleep.service", SLEEPER);
    container.install_unit("vigil-other.service", SLEEPER);
    container.install_unit("vigil-reload.service", RELOADABLE);
    container.install_unit("vigil-fail.service", FAILING);
    container.install_unit("vigil-crash.service", CRASHING);
    container.systemctl(&[
        "start",
        "vigil-sleep.service",
        "vigil-other.service",
        "vigil-reload.service",
    ]);

    // Restart: a new main process, a new activation time.
    let pid_before = container.unit_property("vigil-sleep.service", "MainPID");
    let since_before = container.unit_timestamp_ms("vigil-sleep.service", "ActiveEnterTimestamp");
    let outcome = execute(&container, &["restart", "vigil-sleep.service"]);
    let detail = ok(&outcome);
    println!(
        "restart: {detail} — {} ms in the executor (connecting to the bus and the 250 ms \
         settle check included)",
        outcome["elapsed_ms"]
    );
    let pid_after = container.unit_property("vigil-sleep.service", "MainPID");
    assert!(
        detail.starts_with("vigil-sleep.service active (running), main PID "),
        "{detail}"
    );
    assert!(
        detail.ends_with(&pid_after),
        "{detail} vs MainPID {pid_after}"
    );
    assert_ne!(pid_after, pid_before, "the main process is the old one");
    let since_after = container.unit_timestamp_ms("vigil-sleep.service", "ActiveEnterTimestamp");
    assert!(
        since_after > since_before && since_before.is_some(),
        "ActiveEnterTimestamp {since_before:?} → {since_after:?}"
    );

    // The same without the settle check: how long systemd's restart job itself takes.
    let outcome = execute(&container, &["restart", "vigil-sleep.service", "settle=0s"]);
    ok(&outcome);
    println!(
        "restart without the settle check: {} ms in the executor",
        outcome["elapsed_ms"]
    );

    // Stop, then start.
    let outcome = execute(&container, &["stop", "vigil-sleep.service"]);
    let detail = ok(&outcome);
    println!("stop: {detail} — {} ms", outcome["elapsed_ms"]);
    assert_eq!(detail, "vigil-sleep.service inactive (dead)");
    assert_eq!(
        container.unit_property("vigil-sleep.service", "ActiveState"),
        "inactive"
    );
    let outcome = execute(&container, &["start", "vigil-sleep.service"]);
    let detail = ok(&outcome);
    println!("start: {detail} — {} ms", outcome["elapsed_ms"]);
    assert!(detail.contains("active (running)"), "{detail}");
    assert_eq!(
        container.unit_property("vigil-sleep.service", "ActiveState"),
        "active"
    );

    // Reload runs ExecReload, keeps the main process. (`vigil-reload` is allowlisted
    // without its suffix, and named so here with the executor given.)
    let pid_before = container.unit_property("vigil-reload.service", "MainPID");
    let outcome = execute(&container, &["reload", "vigil-reload", "executor=systemd"]);
    let detail = ok(&outcome);
    println!("reload: {detail} — {} ms", outcome["elapsed_ms"]);
    assert!(detail.contains("active (running)"), "{detail}");
    assert_eq!(
        container.container.exec(&["cat", "/run/vigil-reloaded"]),
        "reloaded"
    );
    assert_eq!(
        container.unit_property("vigil-reload.service", "MainPID"),
        pid_before
    );
    // A unit without ExecReload cannot be reloaded: an invalid request.
    let message = error(
        &execute(&container, &["reload", "vigil-sleep.service"]),
        "invalid",
    );
    assert!(message.contains("vigil-sleep.service"), "{message}");

    // A unit that fails to start: the job result and the state are named.
    let outcome = execute(&container, &["restart", "vigil-fail.service"]);
    let message = error(&outcome, "failed");
    println!("failing unit: {message}");
    assert!(message.contains("ended `failed`"), "{message}");
    assert!(message.contains("failed (failed)"), "{message}");
    assert!(message.contains("result exit-code"), "{message}");
    assert_eq!(outcome["retryable"], true);

    // A simple service whose process dies right after starting: its start job is done,
    // but it does not stay up.
    let outcome = execute(&container, &["restart", "vigil-crash.service"]);
    let message = error(&outcome, "failed");
    println!("crashing unit: {message}");
    assert!(message.contains("did not stay up"), "{message}");
    assert!(message.contains("failed (failed)"), "{message}");

    // A unit systemd does not know.
    let message = error(
        &execute(&container, &["start", "vigil-ghost.service"]),
        "invalid",
    );
    println!("unknown unit: {message}");
    assert!(message.contains("vigil-ghost.service"), "{message}");

    // A unit outside the allowlist is refused, and left alone.
    let pid_before = container.unit_property("vigil-other.service", "MainPID");
    let outcome = execute(&container, &["restart", "vigil-other.service"]);
    let message = error(&outcome, "not_allowed");
    assert!(
        message.contains("vigil-other.service") && message.contains("remediation.units"),
        "{message}"
    );
    assert_eq!(outcome["retryable"], false);
    assert_eq!(
        container.unit_property("vigil-other.service", "MainPID"),
        pid_before
    );
}

#[test]
fn no_system_bus_is_unavailable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("executors.toml");
    std::fs::write(&config, ALLOWLIST).expect("write the config");
    let output = Command::new(execute_example())
        .arg(&config)
        .args(["restart", "vigil-sleep.service", "timeout=5s"])
        .env(
            "DBUS_SYSTEM_BUS_ADDRESS",
            format!("unix:path={}", dir.path().join("no-bus").display()),
        )
        .stdin(Stdio::null())
        .output()
        .expect("run the execute example");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let outcome: Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    let message = error(&outcome, "unavailable");
    assert_eq!(outcome["executor"], "systemd");
    assert_eq!(outcome["retryable"], true);
    assert!(message.contains("system bus"), "{message}");
}
