//! Debian's real Prometheus and Alertmanager (`prometheus`, `prometheus-alertmanager`),
//! each started on a free loopback port with its own configuration and storage in the
//! test's directory, killed when dropped. A test that needs them fails with a message
//! naming the package when they are not installed (`.ci/run` installs them).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::{free_port, wait_for, Proc};

const READY_WAIT: Duration = Duration::from_secs(60);

/// The path of a program from a Debian package, or a panic naming the package.
fn installed(program: &str, package: &str) -> PathBuf {
    let path = Path::new("/usr/bin").join(program);
    assert!(
        path.is_file(),
        "{} is missing: this test runs Debian's real `{package}`; install it with \
         `apt-get install prometheus prometheus-alertmanager` (`.ci/run` does)",
        path.display()
    );
    path
}

/// Waits until `url` answers 200.
async fn ready(what: &str, url: &str) {
    let client = reqwest::Client::new();
    wait_for(what, READY_WAIT, || async {
        client
            .get(url)
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())
    })
    .await;
}

/// A running Prometheus.
pub struct Prometheus {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    _proc: Proc,
}

impl Prometheus {
    /// Starts `/usr/bin/prometheus` with `config` (prometheus.yml text) written to
    /// `<dir>/prometheus.yml` and its TSDB in `<dir>/prometheus-data`; waits until ready.
    pub async fn start(dir: &Path, config: &str) -> Prometheus {
        Prometheus::start_with(dir, config, &[]).await
    }

    /// [`Prometheus::start`] with more flags.
    pub async fn start_with(dir: &Path, config: &str, extra: &[&str]) -> Prometheus {
        let program = installed("prometheus", "prometheus");
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let check = std::process::Command::new(installed("promtool", "prometheus"))
            .arg("check")
            .arg("config")
            .arg(&config_path)
            .output()
            .expect("run promtool check config");
        assert!(
            check.status.success(),
            "promtool check config:\n{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let port = free_port();
        let args = vec![
            format!("--config.file={}", config_path.display()),
            format!(
                "--storage.tsdb.path={}",
                dir.join("prometheus-data").display()
            ),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--log.level=debug".into(),
        ];
        let args: Vec<String> = args
            .into_iter()
            .chain(extra.iter().map(|s| s.to_string()))
            .collect();
        let proc = Proc::start("prometheus", &program, &args, dir);
        let url = format!("http://127.0.0.1:{port}");
        ready("Prometheus ready", &format!("{url}/-/ready")).await;
        Prometheus { url, _proc: proc }
    }

    /// The result of an instant PromQL query (`data.result`, a vector's samples).
    pub async fn query(&self, promql: &str) -> Vec<Value> {
        let response = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", promql)])
            .send()
            .await
            .unwrap_or_else(|e| panic!("query {promql}: {e}"));
        let body: Value = response.json().await.expect("query answer is JSON");
        assert_eq!(body["status"], "success", "query {promql}: {body}");
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The value of a query's single sample, once it has exactly one.
    pub async fn value(&self, promql: &str) -> Option<f64> {
        let result = self.query(promql).await;
        match result.as_slice() {
            [sample] => sample["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }

    /// The scrape targets' states (`data.activeTargets`).
    pub async fn targets(&self) -> Vec<Value> {
        let body: Value = reqwest::get(format!("{}/api/v1/targets", self.url))
            .await
            .expect("targets")
            .json()
            .await
            .expect("targets JSON");
        body["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

/// A running Alertmanager.
pub struct Alertmanager {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    _proc: Proc,
}

impl Alertmanager {
    /// Starts `/usr/bin/prometheus-alertmanager` with `config` (alertmanager.yml text)
    /// written to `<dir>/alertmanager.yml`, its state in `<dir>/alertmanager-data`, and
    /// no cluster (no gossip port); waits until ready.
    pub async fn start(dir: &Path, config: &str) -> Alertmanager {
        let program = installed("prometheus-alertmanager", "prometheus-alertmanager");
        let config_path = dir.join("alertmanager.yml");
        std::fs::write(&config_path, config).expect("write alertmanager.yml");
        let port = free_port();
        let args = vec![
            format!("--config.file={}", config_path.display()),
            format!("--storage.path={}", dir.join("alertmanager-data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--cluster.listen-address=".into(),
            "--log.level=debug".into(),
        ];
        let proc = Proc::start("alertmanager", &program, &args, dir);
        let url = format!("http://127.0.0.1:{port}");
        ready("Alertmanager ready", &format!("{url}/-/ready")).await;
        Alertmanager { url, _proc: proc }
    }

    /// The alerts Alertmanager holds (`GET /api/v2/alerts`).
    pub async fn alerts(&self) -> Vec<Value> {
        let body: Value = reqwest::get(format!("{}/api/v2/alerts", self.url))
            .await
            .expect("alerts")
            .json()
            .await
            .expect("alerts JSON");
        body.as_array().cloned().unwrap_or_default()
    }
}

/// Runs `promtool check metrics` on a Prometheus text page; its complaints (empty when
/// the page is clean).
pub fn promtool_check_metrics(page: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new(installed("promtool", "prometheus"))
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool check metrics");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(page.as_bytes())
        .expect("write the page to promtool");
    let output = child.wait_with_output().expect("promtool finishes");
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        complaints.trim().to_string()
    } else {
        format!("(exit {}) {}", output.status, complaints.trim())
    }
}
