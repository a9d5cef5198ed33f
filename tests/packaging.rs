//! Packaging, with the real release artifacts of `scripts/dist` (built once per
//! test process; a quick no-op when `.ci/run` built them already):
//! - the static x86_64 musl agent runs alone in a container built `FROM scratch` (the
//!   binary, its config and the coordinator's CA; no libc, no shell) and reports over
//!   TLS to a static coordinator in another scratch container on a Docker network; its
//!   host appears online in `/api/v1/hosts`;
//! - on a real systemd (PID 1 of a Debian bookworm container): `vigil-coordinator install`
//!   and `vigil-agent install` from the static binaries make active units, the agent
//!   reports, a second `install` changes nothing, systemd brings back a killed agent, the
//!   watchdog kills and restarts a hung (SIGSTOPped) one, and `uninstall` removes it
//!   cleanly, keeping data unless `--purge`;
//! - the same with `dpkg -i` of the `.deb` packages, then `apt-get remove` and `purge`;
//!   the packages carry the man pages and bash, zsh and fish completions (`man
//!   vigil-agent`'s page is installed and readable, the bash completion loads), and the
//!   coordinator's package the static `vigilctl`, which lists the agent's host;
//! - under systemd both log to the journal with structured fields, not as text: the
//!   agent's start with `VIGIL_HOST`, a policy firing and its action's transitions with
//!   `VIGIL_POLICY` and `VIGIL_ACTION_ID` (`journalctl -o json`), levels as priorities.
//!
//! Run with `cargo test -p vigil-tests --test packaging -- --nocapture` to see progress.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use vigil_tests::docker::{docker, try_docker, unique_name, Container};
use vigil_tests::journal::{unit_entries, Entry};
use vigil_tests::packaging::{
    assert_static, diagnostics, dist, host_online_inside, rest_get_inside, sh, wait_in, Image,
    Network, Run, STATIC_TARGET, VERSION,
};
use vigil_tests::systemd::SystemdContainer;
use vigil_tests::TestDir;

/// Where the artifacts are put inside the systemd containers (readable by user `vigil`).
const DIST: &str = "/opt/vigil-dist";
/// The agent's unit.
const AGENT: &str = "vigil-agent.service";
/// The coordinator's unit.
const COORDINATOR: &str = "vigil-coordinator.service";
/// Both units, for failure messages.
const UNITS: &[&str] = &[AGENT, COORDINATOR];
/// The coordinator's data dir as `vigil-coordinator install` and the package make it.
const COORDINATOR_DATA: &str = "/var/lib/vigil-coordinator";
/// The REST port an installed coordinator listens on (127.0.0.1).
const REST_PORT: u16 = 8000;

// ---------------------------------------------------------------------------------------
// Must show 1: the static agent alone in a scratch container.
// ---------------------------------------------------------------------------------------

/// Runs the static coordinator binary on the host (to prepare its data dir).
fn coordinator_cli(binary: &Path, args: &[&str]) -> String {
    let output = Command::new(binary)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
    assert!(
        output.status.success(),
        "vigil-coordinator {}: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// `docker logs` of each container, for failure messages.
fn container_logs(containers: &[&Container]) -> String {
    containers
        .iter()
        .map(|c| {
            let state = try_docker(&[
                "inspect",
                "--format",
                "{{.State.Status}} (exit {{.State.ExitCode}})",
                &c.name,
            ])
            .unwrap_or_else(|e| e);
            let output = Command::new("docker")
                .args(["logs", "--tail", "60", &c.name])
                .output();
            let logs = match output {
                Ok(o) => format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => e.to_string(),
            };
            format!(
                "\n===== docker logs {} ({state}) =====\n{}",
                c.name,
                logs.trim_end()
            )
        })
        .collect()
}

/// A root with only `files` (path inside, content, mode), for a scratch image.
fn scratch_root(dir: &Path, files: &[(&str, Vec<u8>, u32)]) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let root = dir.to_path_buf();
    for (inside, content, mode) in files {
        let path = root.join(inside.trim_start_matches('/'));
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("create image dirs");
        std::fs::write(&path, content).expect("write an image file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).expect("chmod");
    }
    root
}

#[tokio::test(flavor = "multi_thread")]
async fn static_agent_runs_alone_in_a_scratch_container() {
    let artifacts = dist();
    assert_static(&artifacts.agent);
    assert_static(&artifacts.coordinator);
    println!(
        "static agent: {} bytes, static coordinator: {} bytes",
        std::fs::metadata(&artifacts.agent).expect("agent").len(),
        std::fs::metadata(&artifacts.coordinator)
            .expect("coordinator")
            .len()
    );

    let dir = TestDir::new();
    let data = dir.path().join("coordinator-data");
    let coordinator_name = unique_name("scratch-coordinator");
    let agent_host = format!("scratch-agent-{}", std::process::id());

    // The coordinator's data dir, made on the host: a CA and a server certificate valid
    // for the coordinator container's name, and a join token for the agent's host.
    std::fs::create_dir_all(data.join("lmdb")).expect("create the data dir");
    let data_arg = data.display().to_string();
    coordinator_cli(
        &artifacts.coordinator,
        &[
            "certs",
            "init",
            "--data-dir",
            &data_arg,
            "--name",
            &coordinator_name,
        ],
    );
    let join_token = coordinator_cli(
        &artifacts.coordinator,
        &[
            "token",
            "create",
            "--join",
            "--host",
            &agent_host,
            "--data-dir",
            &data_arg,
        ],
    );
    assert!(join_token.starts_with("vigil_join_"), "{join_token}");
    let ca_pem = std::fs::read(data.join("tls/ca.pem")).expect("the CA certificate");

    // Two images FROM scratch: each holds one static binary (and the agent's its config
    // and the CA it pins), nothing else.
    let coordinator_root = dir.path().join("coordinator-root");
    let coordinator_binary = std::fs::read(&artifacts.coordinator).expect("read coordinator");
    let coordinator_image = Image::from_root(
        "scratch-coordinator-image",
        &scratch_root(
            &coordinator_root,
            &[("/vigil-coordinator", coordinator_binary, 0o755)],
        ),
        &[r#"ENTRYPOINT ["/vigil-coordinator"]"#],
    );
    let agent_config = format!(
        "host = \"{agent_host}\"\n\
         coordinator = \"https://{coordinator_name}:8443\"\n\
         join_token = \"{join_token}\"\n\
         broker = \"mqtts://{coordinator_name}:8883\"\n\
         ca = \"/etc/vigil/ca.pem\"\n\
         data_dir = \"/var/lib/vigil\"\n\
         interval = \"1s\"\n\
         \n[labels]\nimage = \"scratch\"\n"
    );
    let agent_root = dir.path().join("agent-root");
    let agent_binary = std::fs::read(&artifacts.agent).expect("read agent");
    let agent_image = Image::from_root(
        "scratch-agent-image",
        &scratch_root(
            &agent_root,
            &[
                ("/usr/bin/vigil-agent", agent_binary, 0o755),
                ("/etc/vigil/agent.toml", agent_config.into_bytes(), 0o600),
                ("/etc/vigil/ca.pem", ca_pem.clone(), 0o644),
            ],
        ),
        &[r#"ENTRYPOINT ["/usr/bin/vigil-agent", "--config", "/etc/vigil/agent.toml"]"#],
    );

    // A network of their own; the coordinator's HTTPS port is published on loopback for
    // this test's requests.
    let network = Network::create("packaging-net");
    let user = format!("{}:{}", unsafe { libc::getuid() }, unsafe {
        libc::getgid()
    });
    let coordinator = Container::run_named(
        &coordinator_name,
        &[
            "--network",
            &network.name,
            "--user",
            &user,
            "-e",
            "VIGIL_LOG=info",
            "-v",
            &format!("{data_arg}:/data"),
            "-p",
            "127.0.0.1::8443",
            &coordinator_image.name,
            "serve",
            "--data-dir",
            "/data",
            "--listen",
            "0.0.0.0:8443",
            "--mqtt-listen",
            "0.0.0.0:8883",
        ],
    );
    let published = docker(&["port", &coordinator.name, "8443/tcp"]);
    let port: u16 = published
        .lines()
        .find_map(|line| line.strip_prefix("127.0.0.1:")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no 127.0.0.1 port published for 8443: `{published}`"));
    let https = format!("https://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca_pem).expect("CA PEM"))
        .tls_built_in_root_certs(false)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let health = client.get(format!("{https}/health")).send().await;
        if health.as_ref().is_ok_and(|r| r.status().is_success()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the scratch coordinator did not answer /health over HTTPS within 30 s \
             (last: {health:?}){}",
            container_logs(&[&coordinator])
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let admin = vigil_tests::read_admin_token(&data, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| {
            panic!(
                "the coordinator wrote no admin.token into its data dir{}",
                container_logs(&[&coordinator])
            )
        });

    // The agent: only its image, a tmpfs for its data, the network.
    let agent = Container::run(
        "scratch-agent",
        &[
            "--network",
            &network.name,
            "--tmpfs",
            "/var/lib/vigil:mode=0700",
            "-e",
            "VIGIL_LOG=info",
            &agent_image.name,
        ],
    );

    // Nothing but the agent in there: not even a shell to run.
    let shell = try_docker(&["exec", &agent.name, "/bin/sh", "-c", "true"]);
    assert!(
        shell.is_err(),
        "the scratch agent container has a shell: {shell:?}"
    );

    // Its host appears online, reported by the agent's version.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    let entry = loop {
        let hosts: Value = match client
            .get(format!("{https}/api/v1/hosts"))
            .bearer_auth(&admin)
            .send()
            .await
        {
            Ok(response) => response.json().await.unwrap_or(Value::Null),
            Err(e) => Value::String(e.to_string()),
        };
        let entry = hosts["hosts"]
            .as_array()
            .and_then(|hosts| hosts.iter().find(|h| h["host"] == agent_host.as_str()))
            .cloned();
        if let Some(entry) = entry.filter(|e| e["online"] == true && e["agent_version"].is_string())
        {
            break entry;
        }
        assert!(
            Instant::now() < deadline,
            "host `{agent_host}` of the scratch agent was not online in /api/v1/hosts \
             within 60 s; last answer: {hosts}{}",
            container_logs(&[&agent, &coordinator])
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!(
        "the scratch agent's host was online after {:.1} s: {entry}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(entry["agent_version"], VERSION, "{entry}");
    assert_eq!(entry["labels"]["image"], "scratch", "{entry}");
    assert_eq!(
        agent.inspect("{{.State.Running}}"),
        "true",
        "{}",
        container_logs(&[&agent])
    );
    drop(agent);
    drop(coordinator);
    drop(agent_image);
    drop(coordinator_image);
    drop(network);
}

// ---------------------------------------------------------------------------------------
// Must show 2: on a real systemd.
// ---------------------------------------------------------------------------------------

/// Runs `script` in the container; panics with its output and the units' status and
/// journal unless it exits 0.
fn must(c: &SystemdContainer, script: &str) -> Run {
    let run = sh(c, script);
    assert!(run.ok(), "expected success: {run}{}", diagnostics(c, UNITS));
    run
}

/// Some properties of a unit (`systemctl show -p …`).
fn props(c: &SystemdContainer, unit: &str, names: &[&str]) -> HashMap<String, String> {
    let mut script = String::from("systemctl show");
    for name in names {
        script.push_str(" -p ");
        script.push_str(name);
    }
    script.push(' ');
    script.push_str(unit);
    sh(c, &script)
        .stdout
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Whether a process named `comm` runs in the container (minbase has no pgrep).
fn process_running(c: &SystemdContainer, comm: &str) -> bool {
    sh(
        c,
        &format!(
            "for p in /proc/[0-9]*; do [ \"$(cat $p/comm 2>/dev/null)\" = {comm} ] && exit 0; \
             done; exit 1"
        ),
    )
    .ok()
}

/// Whether a path exists in the container.
fn exists(c: &SystemdContainer, path: &str) -> bool {
    sh(c, &format!("test -e {path}")).ok()
}

/// Waits until `unit` is active with a main process; returns its PID and `NRestarts`.
fn wait_active(c: &SystemdContainer, unit: &str, what: &str, timeout: Duration) -> (u32, u32) {
    wait_in(c, UNITS, what, timeout, || {
        let p = props(
            c,
            unit,
            &["ActiveState", "SubState", "MainPID", "NRestarts"],
        );
        let pid: u32 = p.get("MainPID").and_then(|v| v.parse().ok()).unwrap_or(0);
        let restarts: u32 = p.get("NRestarts").and_then(|v| v.parse().ok()).unwrap_or(0);
        if p.get("ActiveState").map(String::as_str) == Some("active") && pid != 0 {
            Ok((pid, restarts))
        } else {
            Err(format!("{unit}: {p:?}"))
        }
    })
}

/// Waits until `unit` is active again with a main process other than `old_pid` and
/// more restarts than `old_restarts`; returns the new PID and count.
fn wait_restarted(
    c: &SystemdContainer,
    what: &str,
    old_pid: u32,
    old_restarts: u32,
    timeout: Duration,
) -> (u32, u32) {
    wait_in(c, UNITS, what, timeout, || {
        let p = props(
            c,
            AGENT,
            &["ActiveState", "SubState", "MainPID", "NRestarts"],
        );
        let pid: u32 = p.get("MainPID").and_then(|v| v.parse().ok()).unwrap_or(0);
        let restarts: u32 = p.get("NRestarts").and_then(|v| v.parse().ok()).unwrap_or(0);
        let active = p.get("ActiveState").map(String::as_str) == Some("active");
        if active && pid != 0 && pid != old_pid && restarts > old_restarts {
            Ok((pid, restarts))
        } else {
            Err(format!(
                "{AGENT}: {p:?} (before: MainPID {old_pid}, NRestarts {old_restarts})"
            ))
        }
    })
}

/// Copies the artifact `host` into the container's [`DIST`] as `name`.
fn copy_artifact(c: &SystemdContainer, host: &Path, name: &str) -> String {
    let inside = format!("{DIST}/{name}");
    must(c, &format!("mkdir -p {DIST}"));
    c.copy_in(host, &inside);
    must(c, &format!("chmod 0755 {DIST} && chmod a+r {inside}"));
    inside
}

/// Waits for the admin token an installed coordinator writes on its first start.
fn admin_token(c: &SystemdContainer) -> String {
    wait_in(
        c,
        UNITS,
        "the coordinator's admin.token",
        Duration::from_secs(20),
        || {
            let run = sh(c, &format!("cat {COORDINATOR_DATA}/admin.token"));
            let token = run.stdout.trim().to_string();
            if run.ok() && !token.is_empty() {
                Ok(token)
            } else {
                Err(run.to_string())
            }
        },
    )
}

/// A join token made as the coordinator's user against its data dir, with the
/// coordinator binary found on PATH, else `fallback`.
fn join_token(c: &SystemdContainer, fallback: &str) -> String {
    let run = must(
        c,
        &format!(
            "bin=$(command -v vigil-coordinator || echo {fallback}); \
             runuser -u vigil -- \"$bin\" token create --join --data-dir {COORDINATOR_DATA}"
        ),
    );
    let token = run.stdout.trim().to_string();
    assert!(
        token.starts_with("vigil_join_") && !token.contains(char::is_whitespace),
        "`token create --join` printed no join token: {run}"
    );
    token
}

/// Waits until `host` is online in `/api/v1/hosts`, asked inside the container; with
/// `restarted_since`, reported by an agent process other than the one of that earlier
/// entry (another `agent_started_at`).
fn wait_online(
    c: &SystemdContainer,
    admin: &str,
    host: &str,
    restarted_since: Option<&Value>,
) -> Value {
    let started = Instant::now();
    let before = restarted_since.map(|entry| entry["agent_started_at"].clone());
    let what = match &before {
        Some(at) => format!(
            "host `{host}` online in /api/v1/hosts, reported by an agent started after {at}"
        ),
        None => format!("host `{host}` online in /api/v1/hosts"),
    };
    let entry = wait_in(c, UNITS, &what, Duration::from_secs(60), || {
        let entry = host_online_inside(c, REST_PORT, admin, host)?;
        match &before {
            Some(at) if entry["agent_started_at"] == *at => Err(format!(
                "still the entry of the agent started at {at}: {entry}"
            )),
            _ => Ok(entry),
        }
    });
    println!(
        "[{}] `{host}` online after {:.1} s: {entry}",
        c.name(),
        started.elapsed().as_secs_f64()
    );
    entry
}

/// `systemctl kill -s KILL` of the agent: systemd starts it again (a new main process,
/// one more restart). Returns the new PID and count.
fn kill_and_expect_restart(c: &SystemdContainer) -> (u32, u32) {
    let (pid, restarts) = wait_active(c, AGENT, "the agent active", Duration::from_secs(30));
    let started = Instant::now();
    must(c, "systemctl kill -s KILL vigil-agent");
    let back = wait_restarted(
        c,
        "systemd to restart the killed agent",
        pid,
        restarts,
        Duration::from_secs(30),
    );
    println!(
        "[{}] SIGKILLed agent (PID {pid}) back as PID {} after {:.1} s (NRestarts {})",
        c.name(),
        back.0,
        started.elapsed().as_secs_f64(),
        back.1
    );
    back
}

/// The host name the container reports under by default.
fn container_hostname(c: &SystemdContainer) -> String {
    must(c, "cat /proc/sys/kernel/hostname")
        .stdout
        .trim()
        .to_string()
}

#[test]
fn static_binaries_install_as_systemd_units_restart_and_uninstall() {
    let artifacts = dist();
    let c = SystemdContainer::start("packaging-binaries");
    let coordinator_bin = copy_artifact(&c, &artifacts.coordinator, "vigil-coordinator");
    let agent_bin = copy_artifact(&c, &artifacts.agent, "vigil-agent");
    let host = format!("packaged-{}", std::process::id());

    // The coordinator: installed, running as its own user, with its admin token.
    let run = must(&c, &format!("{coordinator_bin} install"));
    println!("[{}] vigil-coordinator install:\n{}", c.name(), run.all());
    wait_active(
        &c,
        COORDINATOR,
        "vigil-coordinator active",
        Duration::from_secs(30),
    );
    let user = props(&c, COORDINATOR, &["User"]);
    assert_eq!(
        user.get("User").map(String::as_str),
        Some("vigil"),
        "the coordinator's unit runs as {user:?}{}",
        diagnostics(&c, &[COORDINATOR])
    );
    must(&c, "getent passwd vigil");
    must(&c, "test -f /etc/vigil/coordinator.toml");
    let admin = admin_token(&c);
    let token = join_token(&c, &coordinator_bin);

    // The agent: install → copied to /usr/local/bin, config 0600, data dir 0700, unit
    // enabled and active, host online.
    let install = format!(
        "{agent_bin} install --coordinator http://127.0.0.1:{REST_PORT} --join-token {token} \
         --host {host} --label packaged=binary"
    );
    let run = must(&c, &install);
    println!("[{}] vigil-agent install:\n{}", c.name(), run.all());
    assert_eq!(
        sh(&c, "systemctl is-active vigil-agent").stdout.trim(),
        "active",
        "`vigil-agent install` returned but the unit is not active{}",
        diagnostics(&c, UNITS)
    );
    assert_eq!(
        sh(&c, "systemctl is-enabled vigil-agent").stdout.trim(),
        "enabled",
        "{}",
        diagnostics(&c, &[AGENT])
    );
    must(&c, "test -x /usr/local/bin/vigil-agent");
    must(&c, "test -f /etc/systemd/system/vigil-agent.service");
    assert_eq!(
        must(&c, "stat -c %a /etc/vigil/agent.toml").stdout.trim(),
        "600",
        "/etc/vigil/agent.toml must be readable by root only"
    );
    assert_eq!(
        must(&c, "stat -c %a /var/lib/vigil").stdout.trim(),
        "700",
        "/var/lib/vigil must be accessible by root only"
    );
    let unit = props(&c, AGENT, &["Type", "WatchdogUSec", "Restart"]);
    assert_eq!(
        unit.get("Type").map(String::as_str),
        Some("notify"),
        "{unit:?}"
    );
    assert_eq!(
        unit.get("Restart").map(String::as_str),
        Some("on-failure"),
        "{unit:?}"
    );
    assert_eq!(
        unit.get("WatchdogUSec").map(String::as_str),
        Some("15s"),
        "{unit:?}"
    );
    let entry = wait_online(&c, &admin, &host, None);
    assert_eq!(entry["agent_version"], VERSION, "{entry}");
    assert_eq!(entry["labels"]["packaged"], "binary", "{entry}");

    // A second install with the same arguments changes nothing: not even the process.
    let (pid, _) = wait_active(&c, AGENT, "the agent active", Duration::from_secs(10));
    let again = must(&c, &install);
    assert!(
        again.all().contains("unchanged"),
        "a second `vigil-agent install` should say it changed nothing (\"unchanged\"): {again}"
    );
    let (pid_after, _) = wait_active(&c, AGENT, "the agent active", Duration::from_secs(10));
    assert_eq!(
        pid_after,
        pid,
        "a second identical install restarted the agent{}",
        diagnostics(&c, &[AGENT])
    );

    // status: the running agent is connected.
    let status = wait_in(
        &c,
        UNITS,
        "`vigil-agent status --json` saying connected",
        Duration::from_secs(30),
        || {
            let run = sh(&c, "/usr/local/bin/vigil-agent status --json");
            let json: Value = serde_json::from_str(run.stdout.trim()).unwrap_or(Value::Null);
            if run.ok() && json["connected"] == true {
                Ok(json)
            } else {
                Err(run.to_string())
            }
        },
    );
    println!("[{}] vigil-agent status --json: {status}", c.name());
    let plain = must(&c, "/usr/local/bin/vigil-agent status");
    println!("[{}] vigil-agent status:\n{}", c.name(), plain.stdout);

    // Killed: systemd brings it back.
    kill_and_expect_restart(&c);

    // Hung: stopped with SIGSTOP (and never continued), it stops pinging the watchdog;
    // systemd kills it and starts it again.
    let (pid, restarts) = wait_active(&c, AGENT, "the agent active", Duration::from_secs(30));
    let started = Instant::now();
    must(&c, "systemctl kill -s STOP vigil-agent");
    let (new_pid, new_restarts) = wait_restarted(
        &c,
        "the watchdog to kill and restart the hung agent",
        pid,
        restarts,
        Duration::from_secs(45),
    );
    println!(
        "[{}] hung agent (PID {pid}) killed by the watchdog and back as PID {new_pid} after \
         {:.1} s (NRestarts {new_restarts})",
        c.name(),
        started.elapsed().as_secs_f64()
    );
    let journal = sh(&c, "journalctl --no-pager -u vigil-agent 2>&1").stdout;
    assert!(
        journal.contains("Watchdog timeout"),
        "the journal does not show systemd's watchdog killing the hung agent{}",
        diagnostics(&c, &[AGENT])
    );
    wait_online(&c, &admin, &host, Some(&entry));
    // `status` speaks of the new process.
    wait_in(
        &c,
        UNITS,
        "`vigil-agent status --json` of the restarted agent",
        Duration::from_secs(30),
        || {
            let run = sh(&c, "/usr/local/bin/vigil-agent status --json");
            let json: Value = serde_json::from_str(run.stdout.trim()).unwrap_or(Value::Null);
            if run.ok() && json["pid"] == new_pid && json["connected"] == true {
                Ok(())
            } else {
                Err(format!("(MainPID {new_pid}) {run}"))
            }
        },
    );

    // uninstall: unit, binary and config gone, data kept.
    let run = must(&c, "/usr/local/bin/vigil-agent uninstall");
    println!("[{}] vigil-agent uninstall:\n{}", c.name(), run.all());
    let gone = props(&c, AGENT, &["LoadState", "ActiveState"]);
    assert_eq!(
        gone.get("LoadState").map(String::as_str),
        Some("not-found"),
        "after uninstall systemd still knows the unit: {gone:?}{}",
        diagnostics(&c, &[AGENT])
    );
    assert!(
        !sh(&c, "systemctl cat vigil-agent").ok(),
        "`systemctl cat vigil-agent` still finds the unit after uninstall"
    );
    for path in [
        "/etc/systemd/system/vigil-agent.service",
        "/usr/local/bin/vigil-agent",
        "/etc/vigil/agent.toml",
    ] {
        assert!(!exists(&c, path), "{path} is still there after uninstall");
    }
    assert!(
        !process_running(&c, "vigil-agent"),
        "an agent process is still running after uninstall"
    );
    assert!(
        exists(&c, "/var/lib/vigil"),
        "uninstall without --purge removed the data dir /var/lib/vigil"
    );
    // --purge removes the data too.
    let run = must(&c, &format!("{agent_bin} uninstall --purge"));
    println!(
        "[{}] vigil-agent uninstall --purge:\n{}",
        c.name(),
        run.all()
    );
    assert!(
        !exists(&c, "/var/lib/vigil"),
        "uninstall --purge kept /var/lib/vigil"
    );

    // The coordinator likewise.
    must(&c, &format!("{coordinator_bin} uninstall"));
    let gone = props(&c, COORDINATOR, &["LoadState"]);
    assert_eq!(
        gone.get("LoadState").map(String::as_str),
        Some("not-found"),
        "after `vigil-coordinator uninstall` systemd still knows the unit: {gone:?}"
    );
    assert!(
        exists(&c, COORDINATOR_DATA),
        "`vigil-coordinator uninstall` without --purge removed {COORDINATOR_DATA}"
    );
    must(&c, &format!("{coordinator_bin} uninstall --purge"));
    assert!(
        !exists(&c, COORDINATOR_DATA),
        "`vigil-coordinator uninstall --purge` kept {COORDINATOR_DATA}"
    );
    assert!(
        !exists(&c, "/etc/vigil/coordinator.toml"),
        "`vigil-coordinator uninstall` kept /etc/vigil/coordinator.toml"
    );
}

// ---------------------------------------------------------------------------------------
// The journal: structured entries, and no text.
// ---------------------------------------------------------------------------------------

/// The unit the journal check's policy restarts (inactive until then).
const PROBE_UNIT: &str = "vigil-journal-probe.service";
/// The policy that restarts it.
const PROBE_POLICY: &str = "journal-probe";
/// The drop-in that gives the packaged agent the policy directory and allows the unit.
const PROBE_DROP_IN: &str = "/etc/systemd/system/vigil-agent.service.d/journal-probe.conf";

/// Gives the running agent something to do: [`PROBE_UNIT`], stopped, and a policy that
/// wants it active and restarts it, in `/etc/vigil/policies`, which a drop-in adds to the
/// agent's command line with the unit's allowlist; then restarts the agent.
fn start_probe_policy(c: &SystemdContainer) {
    c.install_unit(
        PROBE_UNIT,
        "[Unit]\nDescription=Vigil journal probe\n\n[Service]\nExecStart=/bin/sleep infinity\n",
    );
    let policy = format!(
        "policies:\n  - name: {PROBE_POLICY}\n    severity: critical\n    target: {PROBE_UNIT}\n    \
         condition: {{type: unit_state, expect: [active]}}\n    auto_remediate: true\n    \
         verify: 5s\n    action: restart\n"
    );
    must(
        c,
        &format!(
            "mkdir -p /etc/vigil/policies && cat > /etc/vigil/policies/journal.yaml <<'EOF'\n{policy}EOF\n\
             vigil-agent policy check /etc/vigil/policies"
        ),
    );
    must(
        c,
        &format!(
            "mkdir -p {dir} && cat > {PROBE_DROP_IN} <<'EOF'\n[Service]\nExecStart=\n\
             ExecStart=/usr/bin/vigil-agent --config /etc/vigil/agent.toml \
             --policies /etc/vigil/policies --allow-unit {PROBE_UNIT}\nEOF\n\
             systemctl daemon-reload && systemctl restart vigil-agent",
            dir = Path::new(PROBE_DROP_IN)
                .parent()
                .expect("a directory")
                .display()
        ),
    );
}

/// Removes what [`start_probe_policy`] added and restarts the agent as packaged.
fn stop_probe_policy(c: &SystemdContainer) {
    must(
        c,
        &format!(
            "rm -rf {PROBE_DROP_IN} /etc/vigil/policies && systemctl daemon-reload && \
             systemctl restart vigil-agent && systemctl stop {PROBE_UNIT}"
        ),
    );
}

/// The entries the program sent over journald's socket with their fields
/// (`SYSLOG_IDENTIFIER` the program, `_TRANSPORT=journal`): not systemd's about the
/// unit, nor lines of its stdout and stderr.
fn written_by<'a>(entries: &'a [Entry], program: &str) -> Vec<&'a Entry> {
    entries
        .iter()
        .filter(|e| e.is("SYSLOG_IDENTIFIER", program) && e.is("_TRANSPORT", "journal"))
        .collect()
}

/// The program's log entries have priorities its levels map to, and none came as text
/// through its stdout or stderr (`_TRANSPORT=stdout`; what is there, such as the message
/// of an agent that exits for want of an identity, is not a log line): neither a text
/// log line nor the message of a structured entry.
fn assert_structured_only(entries: &[Entry], program: &str) {
    let own = written_by(entries, program);
    assert!(!own.is_empty(), "no journal entry of {program}");
    for entry in &own {
        assert!(
            matches!(entry.get("PRIORITY"), Some("3" | "4" | "6" | "7")),
            "an entry of {program} with a priority no level maps to: {entry}"
        );
    }
    let text: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.is("_TRANSPORT", "stdout"))
        .collect();
    for line in &text {
        let message = line.message();
        assert!(
            !["TRACE", "DEBUG", "INFO", "WARN", "ERROR"]
                .iter()
                .any(|level| message.contains(&format!(" {level} "))),
            "a text log line of {program} reached the journal through stderr: {line}"
        );
        assert!(
            !own.iter()
                .any(|e| !e.message().is_empty() && message.contains(e.message())),
            "a message of {program} reached the journal twice, structured and as text: {line}"
        );
    }
    println!(
        "{program}: {} structured journal entries, {} lines through stdout/stderr{}",
        own.len(),
        text.len(),
        text.iter()
            .map(|l| format!("\n  {}", l.brief()))
            .collect::<String>()
    );
}

/// Under systemd the agent and the coordinator log to the journal with their fields: the
/// agent's start with its host, the probe policy firing, and its action's transitions
/// with host, policy and action id (the action the coordinator records); the
/// coordinator's enrollment of the host. Levels map to syslog priorities, and nothing
/// is logged twice as text.
fn check_structured_journal(c: &SystemdContainer, admin: &str, host: &str) {
    start_probe_policy(c);
    let (action_id, agent) = wait_in(
        c,
        UNITS,
        &format!("a journal entry of the agent: `{PROBE_POLICY}`'s action completed"),
        Duration::from_secs(60),
        || {
            let entries = unit_entries(c, AGENT)?;
            let completed = entries
                .iter()
                .filter(|e| e.is("SYSLOG_IDENTIFIER", "vigil-agent"))
                .find(|e| e.is("VIGIL_POLICY", PROBE_POLICY) && e.is("VIGIL_STATE", "completed"))
                .and_then(|e| e.get("VIGIL_ACTION_ID"))
                .map(str::to_string);
            match completed {
                Some(id) => Ok((id, entries)),
                None => Err(format!(
                    "{} entries of {AGENT}, none of a completed `{PROBE_POLICY}` action",
                    entries.len()
                )),
            }
        },
    );
    let own = written_by(&agent, "vigil-agent");

    // The start of the agent the drop-in configured: its host, at INFO (priority 6).
    let starting = format!("vigil-agent {VERSION} starting");
    let start = own
        .iter()
        .rev()
        .find(|e| e.message().starts_with(&starting))
        .unwrap_or_else(|| panic!("no `{starting}` entry of the agent in the journal"));
    assert_eq!(start.get("VIGIL_HOST"), Some(host), "{start}");
    assert_eq!(
        start.get("PRIORITY"),
        Some("6"),
        "INFO is informational: {start}"
    );
    assert!(
        start
            .get("VIGIL_POLICIES")
            .is_some_and(|p| p.contains("/etc/vigil/policies")),
        "{start}"
    );
    println!(
        "[{}] the agent's start in the journal: {}",
        c.name(),
        start.brief()
    );

    // The policy fired (a warning, 4), and asked for the action.
    let fired = own
        .iter()
        .find(|e| e.is("VIGIL_POLICY", PROBE_POLICY) && e.is("VIGIL_KIND", "fired"))
        .unwrap_or_else(|| panic!("no entry of `{PROBE_POLICY}` firing"));
    for (field, value) in [
        ("VIGIL_HOST", host),
        ("VIGIL_TARGET", PROBE_UNIT),
        ("VIGIL_SEVERITY", "critical"),
        ("PRIORITY", "4"),
    ] {
        assert_eq!(fired.get(field), Some(value), "{field} of {fired}");
    }
    let act = own
        .iter()
        .find(|e| e.is("VIGIL_KIND", "act") && e.is("VIGIL_ACTION_ID", &action_id))
        .unwrap_or_else(|| panic!("no `act` entry naming action {action_id}"));
    assert_eq!(act.get("VIGIL_POLICY"), Some(PROBE_POLICY), "{act}");
    assert_eq!(act.get("VIGIL_ACTION"), Some("restart"), "{act}");
    println!(
        "[{}] the policy fired: {}\n  {}",
        c.name(),
        fired.brief(),
        act.brief()
    );

    // The action's transitions, each with host, policy and action id.
    let transitions: Vec<&&Entry> = own
        .iter()
        .filter(|e| e.is("VIGIL_ACTION_ID", &action_id) && e.get("VIGIL_STATE").is_some())
        .collect();
    let states: Vec<&str> = transitions
        .iter()
        .filter_map(|e| e.get("VIGIL_STATE"))
        .collect();
    assert!(
        states.starts_with(&["pending", "running", "completed"]),
        "the action's transitions in the journal: {states:?}"
    );
    for entry in &transitions {
        for (field, value) in [
            ("VIGIL_HOST", host),
            ("VIGIL_POLICY", PROBE_POLICY),
            ("VIGIL_TARGET", PROBE_UNIT),
            ("VIGIL_ACTION", "restart"),
            ("PRIORITY", "6"),
        ] {
            assert_eq!(entry.get(field), Some(value), "{field} of {entry}");
        }
    }
    let completed = transitions
        .iter()
        .find(|e| e.is("VIGIL_STATE", "completed"))
        .expect("checked above");
    assert_eq!(
        completed.get("VIGIL_EXECUTOR"),
        Some("systemd"),
        "{completed}"
    );
    println!(
        "[{}] the action's transitions:{}",
        c.name(),
        transitions
            .iter()
            .map(|e| format!("\n  {}", e.brief()))
            .collect::<String>()
    );

    // It really ran, and it is the action the coordinator records.
    assert_eq!(
        sh(c, &format!("systemctl is-active {PROBE_UNIT}"))
            .stdout
            .trim(),
        "active",
        "the journal says the action completed, but {PROBE_UNIT} is not active"
    );
    wait_in(
        c,
        UNITS,
        &format!("action {action_id} in /api/v1/actions"),
        Duration::from_secs(30),
        || {
            let (status, action) =
                rest_get_inside(c, REST_PORT, &format!("/api/v1/actions/{action_id}"), admin)?;
            if status == 200 && action["policy"] == PROBE_POLICY && action["host"] == host {
                Ok(())
            } else {
                Err(format!("{status}: {action}"))
            }
        },
    );
    assert_structured_only(&agent, "vigil-agent");

    // The coordinator: the host's enrollment, with the host as a field.
    let coordinator = unit_entries(c, COORDINATOR).unwrap_or_else(|e| panic!("{e}"));
    let enrolled = written_by(&coordinator, "vigil-coordinator")
        .into_iter()
        .find(|e| e.message() == "agent enrolled")
        .unwrap_or_else(|| panic!("no `agent enrolled` entry of the coordinator"));
    assert_eq!(enrolled.get("VIGIL_HOST"), Some(host), "{enrolled}");
    assert_eq!(enrolled.get("PRIORITY"), Some("6"), "{enrolled}");
    println!(
        "[{}] the coordinator enrolled the host: {}",
        c.name(),
        enrolled.brief()
    );
    assert_structured_only(&coordinator, "vigil-coordinator");

    stop_probe_policy(c);
}

/// `dpkg-query`'s status abbreviation of a package (`ii `, `rc `), or `None` when dpkg
/// knows nothing of it.
fn package_status(c: &SystemdContainer, package: &str) -> Option<String> {
    let run = sh(
        c,
        &format!("dpkg-query -W -f='${{db:Status-Abbrev}}' {package} 2>/dev/null"),
    );
    let status = run.stdout.trim().to_string();
    (run.ok() && !status.is_empty() && !status.starts_with('u')).then_some(status)
}

/// What `dpkg-deb -c` lists in `deb`: the paths, without the leading `.`.
fn package_paths(deb: &Path) -> Vec<String> {
    let output = Command::new("dpkg-deb")
        .arg("-c")
        .arg(deb)
        .output()
        .unwrap_or_else(|e| panic!("cannot run dpkg-deb: {e}"));
    assert!(output.status.success(), "dpkg-deb -c {}", deb.display());
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .map(|path| path.trim_start_matches('.').to_string())
        .collect()
}

/// The man page and the three completion files of `program`, where Debian looks for them.
fn docs_of(program: &str) -> [String; 4] {
    [
        format!("/usr/share/man/man1/{program}.1.gz"),
        format!("/usr/share/bash-completion/completions/{program}"),
        format!("/usr/share/zsh/vendor-completions/_{program}"),
        format!("/usr/share/fish/vendor_completions.d/{program}.fish"),
    ]
}

/// `program`'s man page as installed: `man` renders it if the container has `man`, and
/// its NAME section names the program; its bash completion loads in bash.
fn check_installed_docs(c: &SystemdContainer, program: &str) {
    let has_man = sh(c, "command -v man").ok();
    let page = if has_man {
        must(c, &format!("MANPAGER=cat MANWIDTH=100 man {program}")).stdout
    } else {
        must(c, &format!("zcat /usr/share/man/man1/{program}.1.gz")).stdout
    };
    let name = page
        .split_once(if has_man { "NAME" } else { ".SH NAME" })
        .map(|(_, rest)| rest.trim_start().lines().next().unwrap_or("").to_string())
        .unwrap_or_else(|| panic!("no NAME section in {program}'s man page:\n{page}"));
    assert!(
        name.replace("\\-", "-")
            .replace('\u{2010}', "-")
            .starts_with(program),
        "the NAME section should name {program}: `{name}`"
    );
    let complete = must(
        c,
        &format!(
            "bash -c 'source /usr/share/bash-completion/completions/{program} && complete -p {program}'"
        ),
    );
    assert!(
        complete.stdout.contains(&format!(" {program}")),
        "the bash completion of {program} does not register: {complete}"
    );
}

#[test]
fn debian_packages_install_restart_remove_and_purge() {
    let artifacts = dist();
    let c = SystemdContainer::start("packaging-debs");
    let coordinator_deb = copy_artifact(
        &c,
        &artifacts.coordinator_deb,
        "vigil-coordinator_amd64.deb",
    );
    let agent_deb = copy_artifact(&c, &artifacts.agent_deb, "vigil-agent_amd64.deb");

    // Man pages and completions in both packages, vigilctl (static) in the coordinator's.
    let vigilctl = artifacts
        .dir
        .join(format!("vigilctl-{VERSION}-{STATIC_TARGET}"));
    assert_static(&vigilctl);
    let agent_paths = package_paths(&artifacts.agent_deb);
    let coordinator_paths = package_paths(&artifacts.coordinator_deb);
    for (paths, program) in [
        (&agent_paths, "vigil-agent"),
        (&coordinator_paths, "vigil-coordinator"),
        (&coordinator_paths, "vigilctl"),
    ] {
        for wanted in docs_of(program)
            .into_iter()
            .chain([format!("/usr/bin/{program}")])
        {
            assert!(
                paths.contains(&wanted),
                "{wanted} is not in the package: {paths:?}"
            );
        }
    }

    // The coordinator's package: user, unit enabled and active, admin token.
    let run = must(&c, &format!("dpkg -i {coordinator_deb}"));
    println!("[{}] dpkg -i vigil-coordinator:\n{}", c.name(), run.all());
    must(&c, "getent passwd vigil");
    must(&c, "test -x /usr/bin/vigil-coordinator");
    assert_eq!(
        sh(&c, "systemctl is-enabled vigil-coordinator")
            .stdout
            .trim(),
        "enabled",
        "{}",
        diagnostics(&c, &[COORDINATOR])
    );
    wait_active(
        &c,
        COORDINATOR,
        "vigil-coordinator active after dpkg -i",
        Duration::from_secs(30),
    );
    let admin = admin_token(&c);
    let token = join_token(&c, "/usr/bin/vigil-coordinator");

    // The agent's package: the unit is enabled (and waits for its configuration).
    let run = must(&c, &format!("dpkg -i {agent_deb}"));
    println!("[{}] dpkg -i vigil-agent:\n{}", c.name(), run.all());
    must(&c, "test -x /usr/bin/vigil-agent");
    assert_eq!(
        sh(&c, "systemctl is-enabled vigil-agent").stdout.trim(),
        "enabled",
        "{}",
        diagnostics(&c, &[AGENT])
    );
    let unit = props(&c, AGENT, &["FragmentPath"]);
    let fragment = unit.get("FragmentPath").cloned().unwrap_or_default();
    assert!(
        fragment.ends_with("/lib/systemd/system/vigil-agent.service"),
        "the packaged unit should come from /lib/systemd/system: {unit:?}"
    );

    // Configured with `install`: the packaged unit is restarted with the config, and no
    // second unit is written.
    let host = container_hostname(&c);
    let run = must(
        &c,
        &format!(
            "vigil-agent install --coordinator http://127.0.0.1:{REST_PORT} --join-token {token}"
        ),
    );
    println!("[{}] vigil-agent install:\n{}", c.name(), run.all());
    wait_active(
        &c,
        AGENT,
        "the packaged agent active once configured",
        Duration::from_secs(30),
    );
    assert!(
        !exists(&c, "/etc/systemd/system/vigil-agent.service"),
        "`install` wrote its own unit next to the package's"
    );
    assert!(
        !exists(&c, "/usr/local/bin/vigil-agent"),
        "`install` copied the packaged binary to /usr/local/bin"
    );
    assert_eq!(
        must(&c, "stat -c %a /etc/vigil/agent.toml").stdout.trim(),
        "600"
    );
    let entry = wait_online(&c, &admin, &host, None);
    assert_eq!(entry["agent_version"], VERSION, "{entry}");

    // The installed man pages read and the completions load; vigilctl lists the host.
    for program in ["vigil-agent", "vigil-coordinator", "vigilctl"] {
        check_installed_docs(&c, program);
    }
    let hosts = must(&c, &format!("VIGIL_TOKEN={admin} vigilctl hosts")).stdout;
    assert!(
        hosts
            .lines()
            .any(|l| l.starts_with(&host) && l.contains("online")),
        "vigilctl hosts inside the container: {hosts}"
    );

    // The package's agent is removed with apt-get, not with `uninstall`.
    let refused = sh(&c, "vigil-agent uninstall");
    assert!(
        !refused.ok() && refused.all().contains("apt-get remove"),
        "`vigil-agent uninstall` of the packaged agent should refuse and point at \
         apt-get remove: {refused}"
    );
    wait_active(
        &c,
        AGENT,
        "the agent still active after the refused uninstall",
        Duration::from_secs(10),
    );

    // Killed: systemd brings it back, and it reports again.
    kill_and_expect_restart(&c);
    wait_online(&c, &admin, &host, Some(&entry));

    // Its logs, and the coordinator's, are structured journal entries.
    check_structured_journal(&c, &admin, &host);

    // apt-get remove: stopped, binary gone, config and data kept.
    let run = must(&c, "apt-get remove -y vigil-agent");
    println!("[{}] apt-get remove vigil-agent:\n{}", c.name(), run.stdout);
    let state = props(&c, AGENT, &["ActiveState", "LoadState"]);
    assert_ne!(
        state.get("ActiveState").map(String::as_str),
        Some("active"),
        "the agent still runs after apt-get remove: {state:?}"
    );
    assert!(
        !process_running(&c, "vigil-agent"),
        "an agent process is still running after apt-get remove"
    );
    assert!(
        !exists(&c, "/usr/bin/vigil-agent"),
        "apt-get remove kept /usr/bin/vigil-agent"
    );
    assert!(
        exists(&c, "/etc/vigil/agent.toml"),
        "apt-get remove removed the config /etc/vigil/agent.toml"
    );
    assert!(
        exists(&c, "/var/lib/vigil"),
        "apt-get remove removed the data dir /var/lib/vigil"
    );
    assert_eq!(
        package_status(&c, "vigil-agent").as_deref().map(str::trim),
        Some("rc"),
        "after apt-get remove only the agent's config files should be left"
    );

    // apt-get purge: config and data gone too.
    must(&c, "apt-get purge -y vigil-agent");
    for path in ["/etc/vigil/agent.toml", "/var/lib/vigil"] {
        assert!(!exists(&c, path), "apt-get purge kept {path}");
    }
    assert_eq!(package_status(&c, "vigil-agent"), None);

    // The coordinator likewise (its user may stay).
    must(&c, "apt-get remove -y vigil-coordinator");
    let state = props(&c, COORDINATOR, &["ActiveState"]);
    assert_ne!(
        state.get("ActiveState").map(String::as_str),
        Some("active"),
        "the coordinator still runs after apt-get remove: {state:?}"
    );
    assert!(
        !exists(&c, "/usr/bin/vigil-coordinator"),
        "apt-get remove kept /usr/bin/vigil-coordinator"
    );
    assert!(
        exists(&c, COORDINATOR_DATA),
        "apt-get remove removed the coordinator's data {COORDINATOR_DATA}"
    );
    must(&c, "apt-get purge -y vigil-coordinator");
    for path in ["/etc/vigil/coordinator.toml", COORDINATOR_DATA] {
        assert!(!exists(&c, path), "apt-get purge kept {path}");
    }
    assert_eq!(package_status(&c, "vigil-coordinator"), None);
}
