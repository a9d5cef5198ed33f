//! The fault suite: end-to-end delivery proven with real parts under real faults. Each
//! scenario ends by stopping every agent, reading what it made from its metric spool on
//! disk (the highest sequence number it gave out, and what it still holds), and comparing
//! that with what the coordinator stored (the one-point-per-batch series `cpu_percent`
//! from `GET /api/v1/metrics/query`): every batch stored once and in order, or dropped by
//! the agent's own full buffer and counted by the coordinator as missing. A table of the
//! figures is printed per scenario (`-- --nocapture`).
//!
//! - `partition_*`: a coordinator and four static agents in scratch containers on a
//!   Docker network; two agents are cut off (`docker network disconnect`) for
//!   `VIGIL_FAULTS_PARTITION_SECS` (default 20, must-show 300) and a fourth, with a 64 KiB
//!   buffer, until its buffer overflows;
//! - `coordinator_restarts_*`: the coordinator SIGKILLed three times and SIGTERMed three
//!   times under load (four agents at 200 ms), on its embedded broker and with a real
//!   Mosquitto, up `VIGIL_FAULTS_RESTART_UP_SECS` (default 4) and down
//!   `VIGIL_FAULTS_RESTART_DOWN_SECS` (default 2) each time;
//! - `coordinator_disk_full`: the coordinator's data dir on a 16 MiB tmpfs, filled for
//!   `VIGIL_FAULTS_DISK_FULL_SECS` (default 20, must-show 120);
//! - `agent_clock_*`: an agent under libfaketime six minutes ahead, then 90 s behind, on
//!   the same data dir, `VIGIL_FAULTS_CLOCK_SECS` (default 10) each.
//!
//! Run one with `CARGO_TARGET_DIR=… cargo test -p vigil-tests --test faults NAME --
//! --nocapture`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use vigil_tests::docker::{docker, try_docker, unique_name, Container};
use vigil_tests::faults::{
    agent_status, assert_delivered, not_increasing, print_table, secs_from_env, static_binaries,
    stored_timestamps, SpoolOnDisk, Tally,
};
use vigil_tests::packaging::{Image, Network};
use vigil_tests::{
    bin, enroll_directly, free_port, prometheus_value, read_admin_token, register_token,
    start_agent_with, start_mosquitto, try_wait_for, Proc, TestDir,
};

/// Debian's libfaketime (package `faketime`), preloaded into an agent with a wrong clock.
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The one-point-per-batch series counted.
const SERIES: &str = "cpu_percent";

/// How long an agent may take to get its backlog stored after a fault ends.
const CATCH_UP: Duration = Duration::from_secs(90);

/// Epoch ms now.
fn now_ms() -> i64 {
    vigil_shared::time::now_ms()
}

// ---------------------------------------------------------------------------------------
// A coordinator on the host, on fixed ports, that can be killed and started again.
// ---------------------------------------------------------------------------------------

/// `vigil-coordinator serve` on the host with its data in `<dir>/data`, on ports that
/// stay the same across restarts.
struct Coordinator {
    dir: PathBuf,
    args: Vec<String>,
    proc: Option<Proc>,
    /// `http://127.0.0.1:PORT`.
    http: String,
    /// The broker agents use.
    broker: String,
    /// The admin token.
    token: Option<String>,
    /// How many times it was started.
    starts: u32,
}

impl Coordinator {
    /// Starts it, on its embedded broker or on `external` (`mqtt://…`).
    async fn start(dir: &Path, external: Option<&str>) -> Coordinator {
        let http_port = free_port();
        let data = dir.join("data");
        let mut args = vec![
            "serve".to_string(),
            "--data-dir".into(),
            data.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{http_port}"),
        ];
        let broker = match external {
            Some(url) => {
                args.extend(["--broker".into(), url.to_string()]);
                url.to_string()
            }
            None => {
                let port = free_port();
                args.extend(["--mqtt-listen".into(), format!("127.0.0.1:{port}")]);
                format!("mqtt://127.0.0.1:{port}")
            }
        };
        let mut coordinator = Coordinator {
            dir: dir.to_path_buf(),
            args,
            proc: None,
            http: format!("http://127.0.0.1:{http_port}"),
            broker,
            token: None,
            starts: 0,
        };
        coordinator.launch().await;
        coordinator.token = read_admin_token(&data, Duration::from_secs(5)).await;
        if let Some(token) = &coordinator.token {
            register_token(&coordinator.http, token);
        }
        coordinator
    }

    /// Starts the process and waits for `/health`.
    async fn launch(&mut self) {
        assert!(self.proc.is_none(), "the coordinator runs already");
        let proc = Proc::start(
            "coordinator",
            &bin("vigil-coordinator"),
            &self.args,
            &self.dir,
        );
        self.starts += 1;
        let url = format!("{}/health", self.http);
        let client = reqwest::Client::new();
        let healthy = try_wait_for("the coordinator's /health", Duration::from_secs(30), || {
            let request = client.get(&url).timeout(Duration::from_secs(2)).send();
            async move { request.await.ok().filter(|r| r.status().is_success()) }
        })
        .await;
        if healthy.is_err() {
            panic!(
                "the coordinator (start {}) did not answer {url} within 30 s; log {}:\n{}",
                self.starts,
                proc.log.display(),
                tail(&proc.log, 40)
            );
        }
        self.proc = Some(proc);
    }

    /// Whether the process still runs (panics with its log if it died).
    fn assert_alive(&mut self, when: &str) {
        let proc = self.proc.as_mut().expect("the coordinator runs");
        if let Ok(Some(status)) = proc.child.try_wait() {
            panic!(
                "the coordinator exited ({status}) {when}; log {}:\n{}",
                proc.log.display(),
                tail(&proc.log, 60)
            );
        }
    }

    /// SIGKILL, reaped.
    fn kill(&mut self) {
        self.proc.take().expect("the coordinator runs").kill();
    }

    /// SIGTERM, waiting for it to exit.
    fn terminate(&mut self) {
        self.proc.take().expect("the coordinator runs").stop();
    }

    /// One series of `/metrics` (or the sum of a name), 0 if absent or unreachable.
    async fn metric(&self, series: &str) -> f64 {
        metric_at(&self.http, self.token.as_deref(), series).await
    }
}

/// One series of `<http>/metrics`, 0 if absent or unreachable.
async fn metric_at(http: &str, token: Option<&str>, series: &str) -> f64 {
    let url = format!("{http}/metrics");
    let request = vigil_tests::with_token(reqwest::Client::new().get(&url), token)
        .timeout(Duration::from_secs(10));
    match request.send().await {
        Ok(response) => prometheus_value(&response.text().await.unwrap_or_default(), series),
        Err(_) => 0.0,
    }
}

/// The last `n` lines of a log file.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------------
// Agents: host processes (the debug binary, maybe under faketime) or scratch containers.
// ---------------------------------------------------------------------------------------

/// What every agent of a scenario can do.
trait FaultAgent {
    /// Its host name.
    fn host(&self) -> &str;
    /// Its data directory, as the test sees it.
    fn data_dir(&self) -> PathBuf;
    /// Stops it gracefully (SIGTERM) and waits until it has exited.
    fn stop(&mut self);
    /// Starts it again on the same data dir, taking one sample and then none for an hour:
    /// to send what it still holds.
    fn start_quiet(&mut self);
    /// Its `vigil-agent status --json`.
    fn status(&self) -> Value;
}

/// The debug agent as a host process, optionally under `faketime -f OFFSET`.
struct HostAgent {
    host: String,
    broker: String,
    dir: PathBuf,
    faketime: Option<String>,
    proc: Option<Proc>,
}

impl HostAgent {
    /// Starts `host` against `broker` every `interval`, logging under `dir`.
    fn start(dir: &Path, host: &str, broker: &str, interval: &str) -> HostAgent {
        let mut agent = HostAgent {
            host: host.to_string(),
            broker: broker.to_string(),
            dir: dir.to_path_buf(),
            faketime: None,
            proc: None,
        };
        agent.launch(interval);
        agent
    }

    fn launch(&mut self, interval: &str) {
        assert!(self.proc.is_none(), "{} runs already", self.host);
        let proc = match &self.faketime {
            None => start_agent_with(&self.host, &self.broker, interval, &[], &self.dir),
            Some(offset) => {
                // libfaketime preloaded into the agent itself (the `faketime` wrapper
                // would stand between the test and the agent's signals). The kit does
                // not prepare this start: the agent is enrolled here and given its data
                // dir.
                enroll_directly(&self.host, &self.data_dir(), &self.dir.join("data"));
                let log = self
                    .dir
                    .join(format!("agent-{}-faketime-{}.log", self.host, now_ms()));
                let out = std::fs::File::create(&log).expect("create the agent's log");
                let err = out.try_clone().expect("clone the log file");
                let child = std::process::Command::new(bin("vigil-agent"))
                    .args(["--host", &self.host, "--broker", &self.broker])
                    .args(["--interval", interval, "--data-dir"])
                    .arg(self.data_dir())
                    .env("LD_PRELOAD", LIBFAKETIME)
                    .env("FAKETIME", offset)
                    .env("VIGIL_LOG", "info")
                    .stdin(std::process::Stdio::null())
                    .stdout(out)
                    .stderr(err)
                    .spawn()
                    .expect("start the agent under libfaketime");
                Proc {
                    child,
                    name: format!("agent-{}", self.host),
                    log,
                }
            }
        };
        self.proc = Some(proc);
    }
}

impl FaultAgent for HostAgent {
    fn host(&self) -> &str {
        &self.host
    }

    fn data_dir(&self) -> PathBuf {
        // Where the kit puts an agent's data when no --data-dir is given.
        self.dir.join(format!("agent-data-{}", self.host))
    }

    fn stop(&mut self) {
        if let Some(proc) = self.proc.take() {
            proc.stop();
        }
    }

    fn start_quiet(&mut self) {
        self.launch("1h");
    }

    fn status(&self) -> Value {
        agent_status(&bin("vigil-agent"), &self.data_dir())
    }
}

/// The static agent in a scratch container on a Docker network, its data dir bind-mounted
/// from the host.
struct ContainerAgent {
    host: String,
    data: PathBuf,
    image: String,
    network: String,
    broker: String,
    more: Vec<String>,
    static_agent: PathBuf,
    container: Option<Container>,
}

impl ContainerAgent {
    fn run(&mut self, interval: &str) {
        assert!(self.container.is_none(), "{} runs already", self.host);
        let volume = format!("{}:/var/lib/vigil", self.data.display());
        let mut args: Vec<&str> = vec![
            "--network",
            &self.network,
            "-v",
            &volume,
            "-e",
            "VIGIL_LOG=info",
            &self.image,
            "--host",
            &self.host,
            "--broker",
            &self.broker,
            "--interval",
            interval,
            "--data-dir",
            "/var/lib/vigil",
        ];
        args.extend(self.more.iter().map(String::as_str));
        self.container = Some(Container::run("fault-agent", &args));
    }

    fn name(&self) -> &str {
        &self
            .container
            .as_ref()
            .expect("the agent's container runs")
            .name
    }

    fn disconnect(&self) {
        docker(&["network", "disconnect", &self.network, self.name()]);
    }

    fn connect(&self) {
        docker(&["network", "connect", &self.network, self.name()]);
    }

    fn logs(&self) -> String {
        match &self.container {
            Some(c) => try_docker(&["logs", "--tail", "40", &c.name]).unwrap_or_else(|e| e),
            None => String::new(),
        }
    }
}

impl FaultAgent for ContainerAgent {
    fn host(&self) -> &str {
        &self.host
    }

    fn data_dir(&self) -> PathBuf {
        self.data.clone()
    }

    fn stop(&mut self) {
        if let Some(container) = self.container.take() {
            docker(&["stop", "--time", "15", &container.name]);
        }
    }

    fn start_quiet(&mut self) {
        self.run("1h");
    }

    fn status(&self) -> Value {
        agent_status(&self.static_agent, &self.data)
    }
}

/// Stops `agent` and reads its spool. While it still holds batches not acknowledged (a
/// batch made just before the stop), it is started again quietly to send them, and
/// stopped again: at most three times. The spool as last read.
async fn settle(agent: &mut dyn FaultAgent) -> SpoolOnDisk {
    for _ in 0..3 {
        agent.stop();
        let disk = SpoolOnDisk::read(&agent.data_dir());
        if disk.held == 0 {
            return disk;
        }
        eprintln!(
            "{}: {} batches not acknowledged at the stop; starting it once more to send them",
            agent.host(),
            disk.held
        );
        agent.start_quiet();
        tokio::time::sleep(Duration::from_secs(6)).await;
    }
    agent.stop();
    SpoolOnDisk::read(&agent.data_dir())
}

/// Waits until every agent's spool holds at most one batch not acknowledged (its backlog
/// is stored), up to [`CATCH_UP`].
async fn wait_caught_up(agents: &[&dyn FaultAgent], what: &str) {
    let started = Instant::now();
    let result = try_wait_for(what, CATCH_UP, || async {
        agents
            .iter()
            .all(|a| SpoolOnDisk::read(&a.data_dir()).held <= 1)
            .then_some(())
    })
    .await;
    let held: Vec<String> = agents
        .iter()
        .map(|a| {
            let disk = SpoolOnDisk::read(&a.data_dir());
            format!("{}: {disk:?}", a.host())
        })
        .collect();
    assert!(
        result.is_ok(),
        "{what}: agents still hold their backlog after {CATCH_UP:?}: {held:?}"
    );
    eprintln!(
        "{what}: backlogs stored after {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Starts `count` debug agents on the host (`{prefix}-{i}-{pid}`, every 200 ms) against
/// `coordinator`, and waits until it stored a first batch of each.
async fn start_agents(
    dir: &TestDir,
    coordinator: &Coordinator,
    prefix: &str,
    count: usize,
    since_ms: i64,
) -> Vec<HostAgent> {
    let pid = std::process::id();
    let agents: Vec<HostAgent> = (1..=count)
        .map(|i| {
            HostAgent::start(
                dir.path(),
                &format!("{prefix}-{i}-{pid}"),
                &coordinator.broker,
                "200ms",
            )
        })
        .collect();
    let hosts: Vec<&str> = agents.iter().map(|a| a.host.as_str()).collect();
    wait_first_batches(
        &coordinator.http,
        coordinator.token.as_deref(),
        &hosts,
        since_ms,
    )
    .await;
    agents
}

/// Waits until the coordinator stored at least one batch of each agent.
async fn wait_first_batches(http: &str, token: Option<&str>, hosts: &[&str], since_ms: i64) {
    for host in hosts {
        let found = try_wait_for(
            &format!("a first batch of {host}"),
            Duration::from_secs(60),
            || async {
                let stored =
                    stored_timestamps(http, token, host, SERIES, since_ms, now_ms() + 3_600_000)
                        .await
                        .unwrap_or_default();
                (!stored.is_empty()).then_some(())
            },
        )
        .await;
        assert!(found.is_ok(), "no batch of {host} was stored within 60 s");
    }
}

/// Settles `agent` and counts what the coordinator stored of it; `dropped` is what its
/// full buffer dropped.
async fn tally(
    agent: &mut dyn FaultAgent,
    http: &str,
    token: Option<&str>,
    since_ms: i64,
    dropped: u64,
) -> Tally {
    let status = agent.status();
    let disk = settle(agent).await;
    let stored = stored_timestamps(
        http,
        token,
        agent.host(),
        SERIES,
        since_ms,
        now_ms() + 3_600_000,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    Tally {
        host: agent.host().to_string(),
        generated: disk.generated(),
        status_generated: status["delivery"]["metrics_generated_total"].as_u64(),
        dropped,
        held: disk.held,
        stored: stored.len() as u64,
        out_of_order: not_increasing(&stored),
    }
}

// ---------------------------------------------------------------------------------------
// 1. Partition.
// ---------------------------------------------------------------------------------------

/// A root with only `files` (path inside, content, mode), for a scratch image.
fn scratch_root(root: &Path, files: &[(&str, Vec<u8>, u32)]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    for (inside, content, mode) in files {
        let path = root.join(inside.trim_start_matches('/'));
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("create image dirs");
        std::fs::write(&path, content).expect("write an image file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).expect("chmod");
    }
    root.to_path_buf()
}

#[tokio::test(flavor = "multi_thread")]
async fn partition_heals_without_losing_a_batch() {
    let partition = secs_from_env("VIGIL_FAULTS_PARTITION_SECS", 20);
    let overflow_limit = secs_from_env("VIGIL_FAULTS_OVERFLOW_LIMIT_SECS", 180);
    let binaries = static_binaries();
    let dir = TestDir::new();
    let data = dir.path().join("coordinator-data");
    std::fs::create_dir_all(&data).expect("create the coordinator's data dir");

    let coordinator_image = Image::from_root(
        "fault-coordinator-image",
        &scratch_root(
            &dir.path().join("coordinator-root"),
            &[(
                "/vigil-coordinator",
                std::fs::read(&binaries.coordinator).expect("read the static coordinator"),
                0o755,
            )],
        ),
        &[r#"ENTRYPOINT ["/vigil-coordinator"]"#],
    );
    let agent_image = Image::from_root(
        "fault-agent-image",
        &scratch_root(
            &dir.path().join("agent-root"),
            &[(
                "/usr/bin/vigil-agent",
                std::fs::read(&binaries.agent).expect("read the static agent"),
                0o755,
            )],
        ),
        &[r#"ENTRYPOINT ["/usr/bin/vigil-agent"]"#],
    );
    let network = Network::create("faults-net");
    let coordinator_name = unique_name("fault-coordinator");
    let coordinator = Container::run_named(
        &coordinator_name,
        &[
            "--network",
            &network.name,
            "-e",
            "VIGIL_LOG=info",
            "-v",
            &format!("{}:/data", data.display()),
            "-p",
            "127.0.0.1::8000",
            &coordinator_image.name,
            "serve",
            "--data-dir",
            "/data",
            "--listen",
            "0.0.0.0:8000",
            "--mqtt-listen",
            "0.0.0.0:1883",
            // The test network is the test's own.
            "--allow-plaintext-remote",
        ],
    );
    let published = docker(&["port", &coordinator.name, "8000/tcp"]);
    let port: u16 = published
        .lines()
        .find_map(|line| line.strip_prefix("127.0.0.1:")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no 127.0.0.1 port published for 8000: `{published}`"));
    let http = format!("http://127.0.0.1:{port}");
    let healthy = try_wait_for(
        "the coordinator container's /health",
        Duration::from_secs(30),
        || async {
            reqwest::get(format!("{http}/health"))
                .await
                .ok()
                .filter(|r| r.status().is_success())
        },
    )
    .await;
    assert!(
        healthy.is_ok(),
        "the coordinator container did not answer /health: {}",
        try_docker(&["logs", "--tail", "40", &coordinator.name]).unwrap_or_else(|e| e)
    );
    let token = read_admin_token(&data, Duration::from_secs(10)).await;
    let token = token.as_deref();

    // Four agents, each enrolled (on the host, with the static coordinator, in the same
    // store) into its own data dir.
    let since_ms = now_ms() - 60_000;
    let broker = format!("mqtt://{coordinator_name}:1883");
    let pid = std::process::id();
    let specs: [(&str, &str, &[&str]); 4] = [
        ("cut-1", "1s", &[]),
        ("cut-2", "1s", &[]),
        ("steady", "1s", &[]),
        ("small-buffer", "100ms", &["--metrics-buffer", "64KiB"]),
    ];
    let mut agents: Vec<ContainerAgent> = Vec::new();
    for (name, interval, more) in specs {
        let host = format!("fault-{name}-{pid}");
        let agent_data = dir.path().join(format!("agent-{name}"));
        let enrolled = std::process::Command::new(&binaries.coordinator)
            .args(["agent", "add", &host, "--identity-dir"])
            .arg(&agent_data)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .expect("run vigil-coordinator agent add");
        assert!(
            enrolled.status.success(),
            "agent add {host}: {}",
            String::from_utf8_lossy(&enrolled.stderr)
        );
        let mut agent = ContainerAgent {
            host,
            data: agent_data,
            image: agent_image.name.clone(),
            network: network.name.clone(),
            broker: broker.clone(),
            more: more.iter().map(|s| s.to_string()).collect(),
            static_agent: binaries.agent.clone(),
            container: None,
        };
        agent.run(interval);
        agents.push(agent);
    }
    let hosts: Vec<&str> = agents.iter().map(|a| a.host.as_str()).collect();
    wait_first_batches(&http, token, &hosts, since_ms).await;
    eprintln!("all four agents are stored; partitioning cut-1, cut-2 and small-buffer");

    // The partition.
    let started = Instant::now();
    for i in [0, 1, 3] {
        agents[i].disconnect();
    }
    // What the small buffer had not seen acknowledged when it was cut off: some of it may
    // be stored already, its acknowledgement lost with the network.
    let held_at_cut = SpoolOnDisk::read(&agents[3].data).held;
    tokio::time::sleep(partition).await;
    for i in [0, 1] {
        agents[i].connect();
    }
    eprintln!(
        "cut-1 and cut-2 reconnected after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // The small buffer stays cut off until it has dropped batches and says so.
    let overflowed = try_wait_for(
        "the 64 KiB agent to report dropped batches",
        overflow_limit.saturating_sub(started.elapsed()),
        || async {
            let disk = SpoolOnDisk::read(&agents[3].data);
            let reported = agents[3].status()["delivery"]["metrics_dropped_total"]
                .as_u64()
                .unwrap_or(0);
            (disk.dropped_unacknowledged() > 0 && reported > 0).then_some(reported)
        },
    )
    .await;
    let disk_before_heal = SpoolOnDisk::read(&agents[3].data);
    agents[3].connect();
    let reported_dropped = match overflowed {
        Ok(reported) => reported,
        Err(_) => panic!(
            "the 64 KiB agent did not report dropped batches within {overflow_limit:?}: \
             spool {disk_before_heal:?}, status {}\n{}",
            agents[3].status(),
            agents[3].logs()
        ),
    };
    let dropped = disk_before_heal.dropped_unacknowledged();
    eprintln!(
        "small-buffer reconnected after {:.1} s, having dropped {dropped} batches \
         (its status said {reported_dropped}); spool {disk_before_heal:?}",
        started.elapsed().as_secs_f64()
    );
    {
        let all: Vec<&dyn FaultAgent> = agents.iter().map(|a| a as &dyn FaultAgent).collect();
        wait_caught_up(&all, "partition healed").await;
    }
    // Its status catches up with the drops made after it last said (it refreshes its
    // delivery figures every 30 s).
    let reported_dropped = try_wait_for(
        "the 64 KiB agent's status to report every drop",
        Duration::from_secs(40),
        || async {
            agents[3].status()["delivery"]["metrics_dropped_total"]
                .as_u64()
                .filter(|d| *d >= dropped)
        },
    )
    .await
    .unwrap_or(reported_dropped);

    // Every batch is stored or counted missing by the coordinator; the other agents
    // drop nothing, so all that is missing is the small buffer's.
    let missing = metric_at(&http, token, "vigil_metric_batches_missing_total").await;
    let mut tallies = Vec::new();
    for (i, agent) in agents.iter_mut().enumerate() {
        let agent_missing = if i == 3 { missing as u64 } else { 0 };
        tallies.push(tally(agent, &http, token, since_ms, agent_missing).await);
    }
    let duplicates = metric_at(
        &http,
        token,
        r#"vigil_delivery_redelivered_total{outcome="duplicate",stream="metrics"}"#,
    )
    .await;
    print_table(
        &format!(
            "partition: 2 agents cut off {} s, a 64 KiB agent until it overflowed ({:.0} s)",
            partition.as_secs(),
            started.elapsed().as_secs_f64()
        ),
        &tallies,
        &[
            format!("vigil_metric_batches_missing_total = {missing}"),
            format!(
                "small-buffer: dropped {dropped} (spool), status metrics_dropped_total = \
                 {reported_dropped}, {held_at_cut} not acknowledged when cut off"
            ),
            format!("redelivered duplicates (not stored again) = {duplicates}"),
        ],
    );
    assert_delivered("partition", &tallies);
    // The agent's drop count and the coordinator's missing count agree, but for batches
    // stored whose acknowledgement the cut lost (the agent dropped them unacknowledged).
    let missing = missing as u64;
    assert!(
        missing <= dropped && dropped - missing <= held_at_cut,
        "the coordinator counts {missing} batches missing, the 64 KiB agent dropped \
         {dropped} with {held_at_cut} unacknowledged at the cut"
    );
    assert_eq!(
        reported_dropped, dropped,
        "the 64 KiB agent's status says it dropped {reported_dropped}, its spool {dropped}"
    );
    drop(agents);
    drop(coordinator);
    drop(network);
    drop(agent_image);
    drop(coordinator_image);
}

// ---------------------------------------------------------------------------------------
// 2. Coordinator restarts.
// ---------------------------------------------------------------------------------------

/// Kills the coordinator three times and stops it three times while `agents` report to
/// it, then checks that every batch was stored once.
async fn restarts(broker_label: &str, external: Option<&str>, dir: &TestDir) {
    let up = secs_from_env("VIGIL_FAULTS_RESTART_UP_SECS", 4);
    let down = secs_from_env("VIGIL_FAULTS_RESTART_DOWN_SECS", 2);
    let since_ms = now_ms() - 60_000;
    let mut coordinator = Coordinator::start(dir.path(), external).await;
    let mut agents = start_agents(
        dir,
        &coordinator,
        &format!("restart-{broker_label}"),
        4,
        since_ms,
    )
    .await;

    let started = Instant::now();
    let mut lives = Vec::new();
    for signal in [
        "SIGKILL", "SIGKILL", "SIGKILL", "SIGTERM", "SIGTERM", "SIGTERM",
    ] {
        tokio::time::sleep(up).await;
        coordinator.assert_alive("under load");
        lives.push(format!(
            "life {}: vigil_samples_stored_total {} before its {signal}",
            coordinator.starts,
            coordinator.metric("vigil_samples_stored_total").await
        ));
        if signal == "SIGKILL" {
            coordinator.kill();
        } else {
            coordinator.terminate();
        }
        tokio::time::sleep(down).await;
        coordinator.launch().await;
    }
    eprintln!("six restarts in {:.1} s", started.elapsed().as_secs_f64());
    {
        let all: Vec<&dyn FaultAgent> = agents.iter().map(|a| a as &dyn FaultAgent).collect();
        wait_caught_up(&all, "after the last restart").await;
    }
    let missing = coordinator
        .metric("vigil_metric_batches_missing_total")
        .await;
    let duplicates = coordinator
        .metric(r#"vigil_delivery_redelivered_total{outcome="duplicate",stream="metrics"}"#)
        .await;
    let mut tallies = Vec::new();
    for agent in agents.iter_mut() {
        tallies.push(
            tally(
                agent,
                &coordinator.http,
                coordinator.token.as_deref(),
                since_ms,
                0,
            )
            .await,
        );
    }
    coordinator.assert_alive("at the end");
    let mut extra = lives;
    extra.push(format!(
        "last life: vigil_metric_batches_missing_total = {missing}, redelivered duplicates = {duplicates}"
    ));
    print_table(
        &format!("coordinator SIGKILL x3 + SIGTERM x3 ({broker_label} broker), 4 agents at 200ms"),
        &tallies,
        &extra,
    );
    assert_delivered(&format!("restarts ({broker_label})"), &tallies);
    assert_eq!(missing, 0.0, "batches counted missing after the restarts");
}

#[tokio::test(flavor = "multi_thread")]
async fn coordinator_restarts_embedded_broker() {
    let dir = TestDir::new();
    restarts("embedded", None, &dir).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn coordinator_restarts_mosquitto() {
    let dir = TestDir::new();
    let mosquitto = start_mosquitto(dir.path());
    restarts("mosquitto", Some(&mosquitto.url), &dir).await;
    drop(mosquitto);
}

/// A restarted coordinator holds no session keys: what an agent sent under its old key
/// is refused (`rekeyed` once the agent's new Hello is in, `unknown_session` before) until
/// the agent has a new one. The agent sends it
/// again as soon as the new key is in, not after its resend timeout (which logs "sending
/// again"). SIGTERM, so that nothing is lost for another reason.
async fn rekey_after_restart(broker_label: &str, external: Option<&str>, dir: &TestDir) {
    let since_ms = now_ms() - 60_000;
    let mut coordinator = Coordinator::start(dir.path(), external).await;
    let mut agents = start_agents(
        dir,
        &coordinator,
        &format!("rekey-{broker_label}"),
        1,
        since_ms,
    )
    .await;
    for round in 1..=3 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        coordinator.terminate();
        tokio::time::sleep(Duration::from_secs(1)).await;
        coordinator.launch().await;
        let all: Vec<&dyn FaultAgent> = agents.iter().map(|a| a as &dyn FaultAgent).collect();
        wait_caught_up(&all, &format!("after restart {round}")).await;
        let refused = |reason: &'static str| {
            format!(r#"vigil_mqtt_messages_rejected_total{{channel="metrics",reason="{reason}"}}"#)
        };
        eprintln!(
            "restart {round}: metric batches refused under the key before the restart: {} \
             (rekeyed), {} (unknown_session)",
            coordinator.metric(&refused("rekeyed")).await,
            coordinator.metric(&refused("unknown_session")).await
        );
    }
    let log = agents[0].proc.as_ref().expect("the agent runs").log.clone();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let timeouts: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("sending again"))
        .collect();
    assert!(
        timeouts.is_empty(),
        "the agent waited for its resend timeout after a restart ({broker_label}): {timeouts:?}"
    );
    let tally = tally(
        &mut agents[0],
        &coordinator.http,
        coordinator.token.as_deref(),
        since_ms,
        0,
    )
    .await;
    assert_delivered(&format!("rekey after restarts ({broker_label})"), &[tally]);
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_refused_after_a_coordinator_restart_go_again_under_the_new_key_embedded() {
    let dir = TestDir::new();
    rekey_after_restart("embedded", None, &dir).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_refused_after_a_coordinator_restart_go_again_under_the_new_key_mosquitto() {
    let dir = TestDir::new();
    let mosquitto = start_mosquitto(dir.path());
    rekey_after_restart("mosquitto", Some(&mosquitto.url), &dir).await;
    drop(mosquitto);
}

// ---------------------------------------------------------------------------------------
// 3. Coordinator disk full.
// ---------------------------------------------------------------------------------------

/// A tmpfs mounted on a directory, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// `mount -t tmpfs -o size=SIZE tmpfs PATH`, or why not.
    fn mount(path: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).map_err(|e| format!("mkdir {}: {e}", path.display()))?;
        let output = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if output.status.success() {
            Ok(Tmpfs {
                path: path.to_path_buf(),
            })
        } else {
            Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// Writes `path` until the file system is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("create the filler");
    let chunk = vec![0x5au8; 64 << 10];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => written += n as u64,
        }
    }
    let _ = file.sync_all();
    written
}

#[tokio::test(flavor = "multi_thread")]
async fn coordinator_disk_full() {
    let full_for = secs_from_env("VIGIL_FAULTS_DISK_FULL_SECS", 20);
    let dir = TestDir::new();
    let tmpfs = match Tmpfs::mount(&dir.path().join("data"), "16m") {
        Ok(tmpfs) => tmpfs,
        Err(e) => {
            eprintln!(
                "SKIPPED coordinator_disk_full: `mount -t tmpfs` is not allowed here ({e}); \
                 run as root with CAP_SYS_ADMIN"
            );
            return;
        }
    };
    let since_ms = now_ms() - 60_000;
    let mut coordinator = Coordinator::start(dir.path(), None).await;
    let mut agents = start_agents(&dir, &coordinator, "diskfull", 3, since_ms).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let unacked_before = coordinator
        .metric("vigil_mqtt_deliveries_unacknowledged_total")
        .await;
    let errors_before = coordinator.metric("vigil_store_errors_total").await;
    let filler = tmpfs.path.join("filler");
    let filled = fill(&filler);
    let full_at = Instant::now();
    eprintln!(
        "the coordinator's 16 MiB data dir is full ({filled} bytes of filler); holding {} s",
        full_for.as_secs()
    );
    let mut max_held = vec![0u64; agents.len()];
    let mut hosts_answers = Vec::new();
    while full_at.elapsed() < full_for {
        tokio::time::sleep(Duration::from_secs(1)).await;
        coordinator.assert_alive("while its disk was full");
        // Whatever the store freed meanwhile is taken again.
        let _ = fill(
            &tmpfs
                .path
                .join(format!("filler-{}", full_at.elapsed().as_millis())),
        );
        for (i, agent) in agents.iter().enumerate() {
            max_held[i] = max_held[i].max(SpoolOnDisk::read(&agent.data_dir()).held);
        }
        let url = format!("{}/api/v1/hosts", coordinator.http);
        let answer = vigil_tests::with_token(
            reqwest::Client::new().get(&url),
            coordinator.token.as_deref(),
        )
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0);
        hosts_answers.push(answer);
    }
    let unacked = coordinator
        .metric("vigil_mqtt_deliveries_unacknowledged_total")
        .await
        - unacked_before;
    let errors = coordinator.metric("vigil_store_errors_total").await - errors_before;
    let buffered: Vec<Value> = agents
        .iter()
        .map(|a| a.status()["delivery"]["metrics_buffered"].clone())
        .collect();
    coordinator.assert_alive("at the end of the full disk");
    for entry in std::fs::read_dir(&tmpfs.path)
        .expect("list the data dir")
        .flatten()
    {
        if entry.file_name().to_string_lossy().starts_with("filler") {
            std::fs::remove_file(entry.path()).expect("remove the filler");
        }
    }
    eprintln!(
        "filler removed after {:.1} s",
        full_at.elapsed().as_secs_f64()
    );
    {
        let all: Vec<&dyn FaultAgent> = agents.iter().map(|a| a as &dyn FaultAgent).collect();
        wait_caught_up(&all, "after the disk was freed").await;
    }
    let missing = coordinator
        .metric("vigil_metric_batches_missing_total")
        .await;
    let mut tallies = Vec::new();
    for agent in agents.iter_mut() {
        tallies.push(
            tally(
                agent,
                &coordinator.http,
                coordinator.token.as_deref(),
                since_ms,
                0,
            )
            .await,
        );
    }
    coordinator.assert_alive("after the agents stopped");
    print_table(
        &format!(
            "coordinator disk full for {} s (16 MiB tmpfs)",
            full_for.as_secs()
        ),
        &tallies,
        &[
            format!("while full: unacknowledged deliveries +{unacked}, store errors +{errors}"),
            format!("while full: most batches held per agent (spool) {max_held:?}"),
            format!("while full: agents' status metrics_buffered {buffered:?}"),
            format!(
                "while full: GET /api/v1/hosts answered {:?}",
                hosts_answers
                    .iter()
                    .fold(std::collections::BTreeMap::new(), |mut m, s| {
                        *m.entry(*s).or_insert(0) += 1;
                        m
                    })
            ),
            format!("vigil_metric_batches_missing_total = {missing}"),
        ],
    );
    assert!(
        hosts_answers.iter().all(|s| *s == 200),
        "GET /api/v1/hosts did not always answer 200 while the disk was full: {hosts_answers:?}"
    );
    assert!(
        unacked + errors > 0.0,
        "neither vigil_mqtt_deliveries_unacknowledged_total nor vigil_store_errors_total rose \
         while the disk was full"
    );
    assert!(
        max_held.iter().all(|h| *h > 1),
        "the agents' buffers did not grow while the coordinator's disk was full: {max_held:?}"
    );
    assert_delivered("disk full", &tallies);
    assert_eq!(missing, 0.0, "batches counted missing after the full disk");
    drop(coordinator);
    drop(tmpfs);
}

// ---------------------------------------------------------------------------------------
// 4. Clocks.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn agent_clock_ahead_then_behind() {
    let run_for = secs_from_env("VIGIL_FAULTS_CLOCK_SECS", 10);
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "this scenario needs faketime: apt-get install faketime (see .ci/run)"
    );
    let dir = TestDir::new();
    let since_ms = now_ms() - 3_600_000;
    let coordinator = Coordinator::start(dir.path(), None).await;
    let host = format!("clock-{}", std::process::id());
    let mut agent = HostAgent {
        host: host.clone(),
        broker: coordinator.broker.clone(),
        dir: dir.path().to_path_buf(),
        faketime: Some("+6m".into()),
        proc: None,
    };
    agent.launch("1s");

    // Six minutes ahead: stored, the skew counted and measured.
    let skew = try_wait_for(
        "the agent's status to show its clock skew",
        Duration::from_secs(45),
        || async {
            let status = agent.status();
            status["delivery"]["clock_skew_ms"].as_i64()
        },
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the agent ahead by 6 minutes never reported its clock skew: {}",
            agent.status()
        )
    });
    tokio::time::sleep(run_for).await;
    let skewed = coordinator.metric("vigil_agent_clock_skewed_total").await;
    let ahead = tally(
        &mut agent,
        &coordinator.http,
        coordinator.token.as_deref(),
        since_ms,
        0,
    )
    .await;

    // Ninety seconds behind, same data dir: stored again.
    agent.faketime = Some("-90s".into());
    agent.launch("1s");
    let behind_skew = try_wait_for(
        "the agent's status to show its new clock skew",
        Duration::from_secs(45),
        || async {
            let status = agent.status();
            status["delivery"]["clock_skew_ms"]
                .as_i64()
                .filter(|s| *s < 0)
        },
    )
    .await
    .ok();
    tokio::time::sleep(run_for).await;
    let rejected = coordinator
        .metric("vigil_mqtt_messages_rejected_total")
        .await;
    let both = tally(
        &mut agent,
        &coordinator.http,
        coordinator.token.as_deref(),
        since_ms,
        0,
    )
    .await;
    print_table(
        "agent clock +6 min, then -90 s on the same data dir",
        &[
            Tally {
                host: format!("{host} (+6m)"),
                ..ahead.clone()
            },
            Tally {
                host: format!("{host} (+6m, -90s)"),
                ..both.clone()
            },
        ],
        &[
            format!("+6m: status delivery.clock_skew_ms = {skew}"),
            format!("-90s: status delivery.clock_skew_ms = {behind_skew:?}"),
            format!("vigil_agent_clock_skewed_total = {skewed}"),
            format!("vigil_mqtt_messages_rejected_total = {rejected}"),
        ],
    );
    assert_delivered("clock +6m", std::slice::from_ref(&ahead));
    assert_delivered("clock -90s", std::slice::from_ref(&both));
    assert!(
        both.generated > ahead.generated && both.stored > ahead.stored,
        "the agent behind did not get new batches stored: {ahead:?} then {both:?}"
    );
    assert!(skewed > 0.0, "vigil_agent_clock_skewed_total stayed 0");
    assert!(
        (skew - 360_000).abs() < 10_000,
        "clock_skew_ms {skew} is not about +360000"
    );
    assert_eq!(rejected, 0.0, "messages were refused");
}

// ---------------------------------------------------------------------------------------
// The agent's own account of delivery.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn agent_status_tells_its_delivery() {
    let dir = TestDir::new();
    let coordinator = Coordinator::start(dir.path(), None).await;
    let host = format!("status-{}", std::process::id());
    let mut agent = HostAgent::start(dir.path(), &host, &coordinator.broker, "200ms");
    // Two status file writes (every 5 s) after the first refresh of the figures.
    tokio::time::sleep(Duration::from_secs(14)).await;
    let status = agent.status();
    let disk = SpoolOnDisk::read(&agent.data_dir());
    agent.stop();
    let generated = status["delivery"]["metrics_generated_total"]
        .as_u64()
        .unwrap_or(0);
    // Written at most 5 s before the agent stopped, at 5 batches a second.
    assert!(
        generated + 30 >= disk.generated() && generated <= disk.generated(),
        "the status says {generated} batches made, the spool {}: {status}",
        disk.generated()
    );
}
