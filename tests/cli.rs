//! End-to-end tests of `vigilctl`, the command-line client, against the real
//! `vigil-coordinator` binary with a real `vigil-agent`: every REST route the client calls
//! is in the OpenAPI document the coordinator serves; manual actions created through the
//! client run on the agent and are listed by `actions --host --status` exactly as the API
//! lists them (a table, and `--json` that parses to the API's answer); `actions --follow`
//! prints an action created after it started; pause/resume, hosts, drift and violations
//! answer; a bad token and a too-low role exit non-zero with the API's message. Over
//! HTTPS, `--ca-file` pins the coordinator's CA and anything else is refused.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use vigil_tests::{
    bin, create_token, free_port, get_json, read_admin_token, start_agent, start_coordinator,
    wait_for, CoordinatorProc, Proc, TestDir,
};

const WAIT: Duration = Duration::from_secs(30);
const HOST: &str = "e2e-cli";

/// `vigilctl ARGS` against the coordinator at `url`, with `token` in `VIGIL_TOKEN` (if
/// given) and no other `VIGIL_…` setting from the test's environment.
fn vigilctl(url: &str, token: Option<&str>, args: &[&str]) -> Command {
    let mut command = Command::new(bin("vigilctl"));
    for name in [
        "VIGIL_TOKEN",
        "VIGIL_TOKEN_FILE",
        "VIGIL_URL",
        "VIGIL_CA_FILE",
    ] {
        command.env_remove(name);
    }
    command.arg("--url").arg(url).args(args);
    if let Some(token) = token {
        command.env("VIGIL_TOKEN", token);
    }
    command
}

/// Runs `command`; its output, with stdout and stderr as text.
fn run(mut command: Command) -> (Output, String, String) {
    let output = command.output().expect("run vigilctl");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    (output, stdout, stderr)
}

/// Runs `command` and expects success; its stdout.
fn ok(command: Command) -> String {
    let description = format!("{command:?}");
    let (output, stdout, stderr) = run(command);
    assert!(
        output.status.success(),
        "{description} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    stdout
}

/// A `vigilctl` left running (`--follow`), killed when dropped, whose stdout and stderr
/// lines arrive on channels.
struct Running {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl Running {
    fn start(mut command: Command) -> Running {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("start vigilctl");
        let lines = |pipe: Box<dyn std::io::Read + Send>| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        };
        let stdout = lines(Box::new(child.stdout.take().expect("stdout")));
        let stderr = lines(Box::new(child.stderr.take().expect("stderr")));
        Running {
            child,
            stdout,
            stderr,
        }
    }

    /// Reads `lines` until one satisfies `wanted`, within `timeout`; every line read.
    fn read_until(
        lines: &mpsc::Receiver<String>,
        what: &str,
        timeout: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    let done = wanted(&line);
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                Err(e) => panic!(
                    "{what}: no such line within {timeout:?} ({e}); read:\n{}",
                    seen.join("\n")
                ),
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The action id in `vigilctl action`'s line `… : action ID`.
fn created_id(stdout: &str) -> String {
    stdout
        .trim()
        .rsplit_once("action ")
        .map(|(_, id)| id.trim().to_string())
        .filter(|id| !id.is_empty() && !id.contains(' '))
        .unwrap_or_else(|| panic!("no action id in `{stdout}`"))
}

/// The ids (first column) of a table's rows, header left out.
fn table_ids(table: &str) -> Vec<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn ids(listing: &Value) -> Vec<String> {
    listing["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .map(|a| a["id"].as_str().expect("id").to_string())
        .collect()
}

/// Waits until the API lists action `id` of [`HOST`] as `status`.
async fn wait_status(c: &CoordinatorProc, id: &str, status: &str) {
    let url = format!("{}/api/v1/actions/{id}", c.http);
    wait_for(&format!("action {id} {status}"), WAIT, || async {
        let (code, action) = get_json(&url).await;
        (code == 200 && action["status"] == status).then_some(())
    })
    .await;
}

fn token_file(dir: &Path) -> PathBuf {
    dir.join("data").join("admin.token")
}

#[tokio::test(flavor = "multi_thread")]
async fn vigilctl_lists_follows_and_acts_against_a_real_coordinator_and_agent() {
    let dir = TestDir::new();
    let c = start_coordinator(&dir, None, &[]).await;
    let admin = c
        .token
        .clone()
        .expect("the coordinator wrote an admin token");
    let _agent = start_agent(HOST, &c.broker, &["env=cli-test"], dir.path());
    vigil_tests::wait_reporting(&c.http, HOST, WAIT).await;

    // Every route the client calls is one the coordinator documents, with that method.
    let (code, openapi) = get_json(&format!("{}/api/v1/openapi.json", c.http)).await;
    assert_eq!(code, 200);
    for route in vigilctl::routes::ALL {
        let operation = &openapi["paths"][route.path][route.method.to_lowercase()];
        assert!(
            operation.is_object(),
            "vigilctl calls {} {}, which the coordinator's OpenAPI document does not have",
            route.method,
            route.path
        );
    }

    // hosts: the agent's row, from the token file.
    let file = token_file(dir.path());
    let hosts = ok(vigilctl(
        &c.http,
        None,
        &["hosts", "--token-file", file.to_str().expect("utf-8 path")],
    ));
    let row = hosts
        .lines()
        .find(|l| l.starts_with(HOST))
        .unwrap_or_else(|| panic!("no row for {HOST}:\n{hosts}"));
    assert!(
        row.contains("online") && row.contains("env=cli-test"),
        "{hosts}"
    );
    assert!(hosts.starts_with("HOST"), "{hosts}");

    // Two manual actions through the client (table and JSON answers), run by the agent.
    let created = ok(vigilctl(
        &c.http,
        Some(&admin),
        &[
            "action",
            "--host",
            HOST,
            "--target",
            HOST,
            "--action",
            "notify",
            "--details",
            "cli one",
        ],
    ));
    let first = created_id(&created);
    let created = ok(vigilctl(
        &c.http,
        Some(&admin),
        &[
            "--json", "action", "--host", HOST, "--target", HOST, "--action", "notify", "--param",
            "note=two",
        ],
    ));
    let reply: Value = serde_json::from_str(created.trim()).expect("--json action parses");
    assert_eq!(reply["ok"], true, "{reply}");
    let second = reply["action_id"].as_str().expect("action_id").to_string();
    wait_status(&c, &first, "completed").await;
    wait_status(&c, &second, "completed").await;

    // actions --host --status: exactly what the API lists, as a table and as JSON.
    let (code, api) = get_json(&format!(
        "{}/api/v1/actions?host={HOST}&status=completed",
        c.http
    ))
    .await;
    assert_eq!(code, 200, "{api}");
    let api_ids = ids(&api);
    assert!(
        api_ids.contains(&first) && api_ids.contains(&second),
        "{api}"
    );
    let table = ok(vigilctl(
        &c.http,
        Some(&admin),
        &["actions", "--host", HOST, "--status", "completed"],
    ));
    assert!(table.starts_with("ID"), "{table}");
    assert_eq!(table_ids(&table), api_ids, "{table}");
    for line in table.lines().skip(1) {
        assert!(
            line.contains(HOST) && line.contains("completed") && line.contains("notify"),
            "{table}"
        );
    }
    let json = ok(vigilctl(
        &c.http,
        Some(&admin),
        &["--json", "actions", "--host", HOST, "--status", "completed"],
    ));
    let listed: Value = serde_json::from_str(json.trim()).expect("--json actions parses");
    assert_eq!(listed["count"], api["count"], "{listed}");
    assert_eq!(ids(&listed), api_ids);
    // Another status lists none of them; a limit is passed on.
    let failed = ok(vigilctl(
        &c.http,
        Some(&admin),
        &["actions", "--host", HOST, "--status", "failed"],
    ));
    assert!(table_ids(&failed).is_empty(), "{failed}");
    let limited = ok(vigilctl(
        &c.http,
        Some(&admin),
        &["--json", "actions", "--host", HOST, "--limit", "1"],
    ));
    let limited: Value = serde_json::from_str(limited.trim()).expect("parses");
    assert_eq!(limited["count"], 1, "{limited}");

    // --follow: an action created after it started is printed live.
    let follow = Running::start(vigilctl(
        &c.http,
        Some(&admin),
        &["actions", "--host", HOST, "--follow"],
    ));
    Running::read_until(&follow.stderr, "the follow banner", WAIT, |l| {
        l.contains("following new action transitions")
    });
    let created = ok(vigilctl(
        &c.http,
        Some(&admin),
        &[
            "action",
            "--host",
            HOST,
            "--target",
            HOST,
            "--action",
            "notify",
            "--details",
            "followed",
        ],
    ));
    let third = created_id(&created);
    let lines = Running::read_until(&follow.stdout, "the new action, completed", WAIT, |l| {
        l.contains(&third) && l.contains("completed")
    });
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&third) && l.contains(HOST) && l.contains("notify")),
        "{lines:?}"
    );
    drop(follow);

    // --follow --json: one feed entry per line, each parsing.
    let follow = Running::start(vigilctl(
        &c.http,
        Some(&admin),
        &[
            "--json",
            "actions",
            "--host",
            HOST,
            "--status",
            "completed",
            "--follow",
        ],
    ));
    let listing = follow.stdout.recv_timeout(WAIT).expect("the listing line");
    let listing: Value = serde_json::from_str(&listing).expect("the listing parses");
    assert!(ids(&listing).contains(&third), "{listing}");
    Running::read_until(&follow.stderr, "the follow banner", WAIT, |l| {
        l.contains("following")
    });
    let created = ok(vigilctl(
        &c.http,
        Some(&admin),
        &[
            "action", "--host", HOST, "--target", HOST, "--action", "notify",
        ],
    ));
    let fourth = created_id(&created);
    let lines = Running::read_until(&follow.stdout, "the new action as JSON", WAIT, |l| {
        l.contains(&fourth)
    });
    let entry: Value = serde_json::from_str(lines.last().expect("a line")).expect("JSON line");
    assert_eq!(entry["kind"], "action", "{entry}");
    assert_eq!(entry["data"]["id"], fourth.as_str(), "{entry}");
    assert_eq!(
        entry["data"]["state"], "completed",
        "only --status completed: {entry}"
    );
    drop(follow);

    // The kill switch, drift and violations answer.
    let paused = ok(vigilctl(&c.http, Some(&admin), &["pause", HOST]));
    assert!(paused.contains("pause sent"), "{paused}");
    let resumed = ok(vigilctl(&c.http, Some(&admin), &["--json", "resume", HOST]));
    let resumed: Value = serde_json::from_str(resumed.trim()).expect("parses");
    assert_eq!(resumed["paused"], false, "{resumed}");
    let drift = ok(vigilctl(&c.http, Some(&admin), &["drift"]));
    assert!(drift.starts_with("HOST") && drift.contains(HOST), "{drift}");
    let violations = ok(vigilctl(
        &c.http,
        Some(&admin),
        &["--json", "violations", "--host", HOST],
    ));
    let violations: Value = serde_json::from_str(violations.trim()).expect("parses");
    assert!(violations["events"].is_array(), "{violations}");

    // A bad token: non-zero, with the API's own message.
    let (code, refusal) = {
        let response = reqwest::Client::new()
            .get(format!("{}/api/v1/hosts", c.http))
            .bearer_auth("not-a-token")
            .send()
            .await
            .expect("GET");
        let code = response.status().as_u16();
        (code, response.json::<Value>().await.expect("JSON error"))
    };
    assert_eq!(code, 401);
    let message = refusal["error"].as_str().expect("error message");
    let (output, stdout, stderr) = run(vigilctl(&c.http, Some("not-a-token"), &["hosts"]));
    assert!(!output.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains("401") && stderr.contains(message),
        "stderr should carry the 401 and `{message}`: {stderr}"
    );
    assert!(stdout.is_empty(), "{stdout}");

    // A viewer may list but not pause: 403 naming the role needed.
    let viewer = create_token(&dir.path().join("data"), "viewer", "cli-viewer");
    ok(vigilctl(
        &c.http,
        Some(&viewer),
        &["actions", "--host", HOST],
    ));
    let (output, _, stderr) = run(vigilctl(&c.http, Some(&viewer), &["pause", HOST]));
    assert!(!output.status.success());
    assert!(
        stderr.contains("403") && stderr.contains("operator"),
        "{stderr}"
    );

    // No token at all, and a coordinator out of reach: non-zero with a reason.
    let (output, _, stderr) = run(vigilctl(&c.http, None, &["hosts"]));
    assert!(
        !output.status.success() && stderr.contains("VIGIL_TOKEN"),
        "{stderr}"
    );
    let gone = format!("http://127.0.0.1:{}", free_port());
    let (output, _, stderr) = run(vigilctl(&gone, Some(&admin), &["hosts"]));
    assert!(
        !output.status.success() && stderr.contains("127.0.0.1"),
        "{stderr}"
    );
}

/// `vigil-coordinator certs init` in `data_dir`; the CA certificate's path.
fn certs_init(data_dir: &Path) -> PathBuf {
    let output = Command::new(bin("vigil-coordinator"))
        .args(["certs", "init", "--name", "coordinator.test", "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("run certs init");
    assert!(output.status.success(), "certs init: {output:?}");
    data_dir.join("tls/ca.pem")
}

#[tokio::test(flavor = "multi_thread")]
async fn vigilctl_pins_the_coordinators_ca_over_https() {
    let dir = TestDir::new();
    let data = dir.path().join("data");
    let ca = certs_init(&data);
    let other_ca = certs_init(&dir.path().join("other"));
    let port = free_port();
    let _coordinator = Proc::start(
        "coordinator",
        &bin("vigil-coordinator"),
        &[
            "serve".into(),
            "--data-dir".into(),
            data.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--mqtt-listen".into(),
            format!("127.0.0.1:{}", free_port()),
        ],
        dir.path(),
    );
    let token = read_admin_token(&data, WAIT).await.expect("admin token");
    let https = format!("https://127.0.0.1:{port}");
    let ca = ca.to_str().expect("utf-8 path");

    // Pinned: the coordinator answers (once it is up).
    let hosts = wait_for("vigilctl hosts over HTTPS", WAIT, || async {
        let (output, stdout, _) = run(vigilctl(&https, Some(&token), &["--ca-file", ca, "hosts"]));
        output.status.success().then_some(stdout)
    })
    .await;
    assert!(hosts.starts_with("HOST"), "{hosts}");

    // The public roots, or another CA: refused before any token is sent.
    for extra in [
        vec![],
        vec!["--ca-file", other_ca.to_str().expect("utf-8 path")],
    ] {
        let mut args = extra.clone();
        args.push("hosts");
        let (output, stdout, stderr) = run(vigilctl(&https, Some(&token), &args));
        assert!(!output.status.success(), "{extra:?}: {stdout}");
        assert!(
            stderr.to_lowercase().contains("certificate") || stderr.contains("UnknownIssuer"),
            "{extra:?}: the refusal should say why: {stderr}"
        );
    }
}
