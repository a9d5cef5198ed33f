//! Benchmark part: the agent's footprint: resident memory and CPU share of a
//! real agent with 50 policies at a 1 s interval, against one with none and against
//! Debian's Monit, the classic peer, watching the same host in the same run.
//!
//! One real coordinator (embedded broker) and two real `vigil-agent` processes (enrolled
//! at start-up with a join token, sealing what they send) reporting to it every second:
//! one with 50 policies loaded from 50 YAML files (host-health thresholds with `for`
//! holds and actions, plus systemd unit and Docker container state checks on name
//! patterns that match nothing, a process check and a TCP check, none of which fires on a
//! healthy host), and one with no policies, the same-run baseline. The agent binary is
//! the one beside `vigil-sim`, or `--agent PATH` (the shipped static build). Beside them
//! runs `monit -I` (when installed) with a 1 s cycle and one process check (the measured
//! agent, by its pid file), its own control file (mode 0600), state, id and log files in
//! the run's directory. All three are sampled once a second from `/proc/<pid>/status`
//! (VmRSS, RssAnon, RssFile, VmHWM) and `/proc/<pid>/stat` (utime + stime). Before the
//! figures are believed, the coordinator's REST API must show both agents online and
//! reporting, the first with its 50 policies loaded and evaluated, the second with none;
//! and Monit must notice within a few cycles that the measured agent stopped.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::stack::{self, join_token, status_kib};
use super::{Baseline, BenchEnv, BenchError, Figure};
use vigil_testkit::{KitError, Launcher, Proc};

/// Policies the measured agent loads.
const POLICIES: usize = 50;
/// Host name of the agent with policies.
const HOST_POLICIES: &str = "footprint-50-policies";
/// Host name of the baseline agent.
const HOST_BASELINE: &str = "footprint-no-policies";
/// Monit's name for its one check (the measured agent).
const MONIT_CHECK: &str = "vigil-agent";
/// How long Monit gets to notice that the measured agent stopped (a few 1 s cycles).
const MONIT_NOTICE: Duration = Duration::from_secs(8);

/// Measures this part's figures.
pub async fn run(env: &BenchEnv) -> Result<Vec<Figure>, BenchError> {
    let dir = fresh_dir(&env.work_dir)?;
    let (measure_for, warm_up) = if env.quick {
        (Duration::from_secs(10), Duration::from_secs(3))
    } else {
        (Duration::from_secs(60), Duration::from_secs(5))
    };

    let policy_dir = dir.join("policies");
    let coordinator = stack::start_coordinator(&dir).await?;
    let coordinator_address = coordinator
        .http
        .strip_prefix("http://")
        .unwrap_or(&coordinator.http)
        .trim_end_matches('/')
        .to_string();
    write_policies(&policy_dir, POLICIES, &coordinator_address)?;
    let agent_program = match &env.agent {
        Some(path) => path.clone(),
        None => Launcher::Simulator.program("vigil-agent")?,
    };
    let agent_bytes = std::fs::metadata(&agent_program)
        .map(|m| m.len())
        .map_err(|e| {
            BenchError::Failed(format!(
                "footprint: the agent program {}: {e}",
                agent_program.display()
            ))
        })?;
    // Both agents enroll themselves at start-up, through the real path: a join token
    // (two uses) and `--coordinator`.
    let join_token = join_token(&coordinator, 2)
        .await
        .map_err(|e| BenchError::Failed(format!("footprint: {e}")))?;
    let start_agent = |host: &str, policies: Option<&Path>| -> Result<Proc, BenchError> {
        let data_dir = dir.join(host);
        create_dir(&data_dir)?;
        let mut args = vec![
            "--host".to_string(),
            host.to_string(),
            "--broker".into(),
            coordinator.broker.clone(),
            "--interval".into(),
            "1s".into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--coordinator".into(),
            coordinator.http.clone(),
            "--join-token".into(),
            join_token.clone(),
        ];
        if let Some(p) = policies {
            args.extend(["--policies".into(), p.display().to_string()]);
        }
        Ok(Launcher::Simulator.start(host, &agent_program, &args, &dir)?)
    };
    let mut measured = start_agent(HOST_POLICIES, Some(&policy_dir))?;
    let mut baseline = start_agent(HOST_BASELINE, None)?;
    let agents_started = Instant::now();

    // The peer: Monit watching the measured agent through its pid file.
    let mut monit = match find_program("monit") {
        Some(program) => Some(start_monit(&program, &dir, measured.pid())?),
        None => None,
    };

    let client = reqwest::Client::new();
    // Start-up: both agents connected and their samples stored.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        stack::check_alive("footprint", &mut measured)?;
        stack::check_alive("footprint", &mut baseline)?;
        let hosts = get_json(
            &client,
            coordinator.token.as_deref(),
            &format!("{}/api/v1/hosts", coordinator.http),
        )
        .await;
        if let Ok(hosts) = &hosts {
            if [HOST_POLICIES, HOST_BASELINE]
                .iter()
                .all(|h| host_entry(hosts, h).is_some_and(|e| e["online"] == true))
            {
                break;
            }
        }
        if Instant::now() > deadline {
            return Err(BenchError::Failed(format!(
                "footprint: the agents were not both online at the coordinator 30 s after \
                 starting (last /api/v1/hosts answer: {}); see the logs in {}",
                hosts.map_or_else(|e| e, |v| v.to_string()),
                dir.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let online_after = agents_started.elapsed();
    tokio::time::sleep(warm_up).await;
    if let Some(m) = monit.as_mut() {
        stack::check_alive("footprint", &mut m.proc)?;
    }

    // The measurement window: one reading of each process a second.
    let clk_tck = clock_ticks_per_second()?;
    let mut watched = vec![Watched::new(measured.pid()), Watched::new(baseline.pid())];
    if let Some(m) = &monit {
        watched.push(Watched::new(m.proc.pid()));
    }
    let window_start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for w in &mut watched {
            let reading = read_proc(w.pid).map_err(|e| {
                BenchError::Failed(format!(
                    "footprint: cannot read /proc/{} (did it exit? see the logs in {}): {e}",
                    w.pid,
                    dir.display()
                ))
            })?;
            w.add(reading);
        }
        if window_start.elapsed() >= measure_for {
            break;
        }
    }
    stack::check_alive("footprint", &mut measured)?;
    stack::check_alive("footprint", &mut baseline)?;
    if let Some(m) = monit.as_mut() {
        stack::check_alive("footprint", &mut m.proc)?;
    }
    // Where the resident pages are, at the end of the window.
    let agent_pages = Breakdown::of(measured.pid()).map_err(|e| {
        BenchError::Failed(format!("footprint: /proc/{}/smaps: {e}", measured.pid()))
    })?;
    let monit_pages = match &monit {
        Some(m) => Some(Breakdown::of(m.proc.pid()).map_err(|e| {
            BenchError::Failed(format!("footprint: /proc/{}/smaps: {e}", m.proc.pid()))
        })?),
        None => None,
    };

    // Both agents really reported all along, and the 50 policies were loaded and run.
    let hosts = get_json(
        &client,
        coordinator.token.as_deref(),
        &format!("{}/api/v1/hosts", coordinator.http),
    )
    .await
    .map_err(BenchError::Failed)?;
    for host in [HOST_POLICIES, HOST_BASELINE] {
        let entry = host_entry(&hosts, host).ok_or_else(|| {
            BenchError::Failed(format!(
                "footprint: {host} is missing from /api/v1/hosts: {hosts}"
            ))
        })?;
        if entry["online"] != true || entry["interval_seconds"].as_f64() != Some(1.0) {
            return Err(BenchError::Failed(format!(
                "footprint: {host} is not online at a 1 s interval after the run: {entry}"
            )));
        }
        let detail = get_json(
            &client,
            coordinator.token.as_deref(),
            &format!("{}/api/v1/hosts/{host}", coordinator.http),
        )
        .await
        .map_err(BenchError::Failed)?;
        if detail["metric_count"].as_u64().unwrap_or(0) == 0 {
            return Err(BenchError::Failed(format!(
                "footprint: the coordinator stored no metrics of {host}: {detail}"
            )));
        }
    }
    let runner = get_json(
        &client,
        coordinator.token.as_deref(),
        &format!("{}/api/v1/policies/runner/status", coordinator.http),
    )
    .await
    .map_err(BenchError::Failed)?;
    let runner_of = |host: &str| {
        runner["runner"]["agents"]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["host"] == host))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let with_policies = runner_of(HOST_POLICIES);
    let loaded = with_policies["policies_loaded"].as_u64().unwrap_or(0);
    let evaluations = with_policies["evaluations"].as_u64().unwrap_or(0);
    if loaded != POLICIES as u64 || !with_policies["load_error"].is_null() || evaluations == 0 {
        return Err(BenchError::Failed(format!(
            "footprint: {HOST_POLICIES} should report {POLICIES} policies loaded, no load \
             error and some evaluations; its runner status: {with_policies}"
        )));
    }
    let without = runner_of(HOST_BASELINE);
    if without["policies_loaded"].as_u64().unwrap_or(0) != 0 {
        return Err(BenchError::Failed(format!(
            "footprint: the baseline {HOST_BASELINE} should have no policies: {without}"
        )));
    }
    let events = get_json(
        &client,
        coordinator.token.as_deref(),
        &format!(
            "{}/api/v1/violations?host={HOST_POLICIES}&limit=1000",
            coordinator.http
        ),
    )
    .await
    .map_err(BenchError::Failed)?;
    let fired = events["count"].as_u64().unwrap_or(0);

    // Monit really checked: it notices within a few cycles that the agent it watches
    // stopped.
    stack::stop(measured);
    let monit_noticed = match &monit {
        Some(m) => Some(m.noticed_stop().await),
        None => None,
    };
    stack::stop(baseline);
    if let Some(m) = monit {
        stack::stop(m.proc);
    }
    stack::stop(coordinator.proc);

    let figures = Figures {
        clk_tck,
        warm_up,
        online_after,
        evaluations,
        fired,
        agent_program,
        agent_bytes,
        monit_noticed,
        agent_pages,
        monit_pages,
    };
    figures.make(&watched)
}

/// Everything the figures' notes need besides the readings.
struct Figures {
    clk_tck: f64,
    warm_up: Duration,
    online_after: Duration,
    evaluations: u64,
    fired: u64,
    agent_program: PathBuf,
    agent_bytes: u64,
    /// Whether Monit logged that the measured agent stopped (`None`: no Monit).
    monit_noticed: Option<bool>,
    /// The measured agent's resident pages by mapping, at the end of the window.
    agent_pages: Breakdown,
    /// Monit's.
    monit_pages: Option<Breakdown>,
}

impl Figures {
    /// The figures, from the readings of the measured agent, the baseline agent and
    /// (when it ran) Monit, in that order.
    fn make(&self, watched: &[Watched]) -> Result<Vec<Figure>, BenchError> {
        let (Some(agent), Some(base)) = (watched.first(), watched.get(1)) else {
            return Err(BenchError::Failed("footprint: no /proc readings".into()));
        };
        let (Some(a), Some(b)) = (agent.summary(self.clk_tck), base.summary(self.clk_tck)) else {
            return Err(BenchError::Failed("footprint: no /proc readings".into()));
        };
        let window = a.window_s;
        let fired = self.fired;
        let evaluations = self.evaluations;
        let mut mem_note = format!(
            "VmHWM (the kernel's resident high-water mark, start-up included) at the end of \
             the run; sampled VmRSS over {window:.0} s: peak {:.1} MiB, mean {:.1} MiB \
             (baseline: peak {:.1}, mean {:.1}); of the last VmRSS, {:.1} MiB ({:.1} for the \
             baseline) is RssFile, mapped files, mostly the agent binary's code ({}, {:.1} \
             MiB), counted in full for each agent though shared. {POLICIES} policies in \
             {POLICIES} YAML files, written not to fire ({fired} policy events recorded), \
             {evaluations} policy x target evaluations by the last status; both agents \
             online {:.1} s after start. The agent's resident pages at the end (smaps): {}.",
            mib(a.rss_peak_kib),
            mib(a.rss_mean_kib),
            mib(b.rss_peak_kib),
            mib(b.rss_mean_kib),
            mib(a.last.file_kib),
            mib(b.last.file_kib),
            self.agent_program.display(),
            self.agent_bytes as f64 / 1024.0 / 1024.0,
            self.online_after.as_secs_f64(),
            self.agent_pages.describe(),
        );
        if fired > 0 {
            let _ = write!(
                mem_note,
                " WARNING: {fired} policy events were recorded, so the agent did more than \
                 evaluate."
            );
        }
        let host_processes = count_processes();
        let cpu_note = format!(
            "{:.2}% vs {:.2}%: utime + stime from /proc/<pid>/stat over {window:.0} s after \
             {:.0} s of warm-up once both agents were online ({} ticks/s: resolution {:.3} \
             points); includes sampling, evaluation, probes, watchers, MQTT publishing and \
             the outbox, on a host with {host_processes} processes (the agent lists /proc \
             every sample). Cores shared with other work: the figure is noisy, compare it \
             to the same-run baseline.",
            a.cpu_percent,
            b.cpu_percent,
            self.warm_up.as_secs_f64(),
            self.clk_tck,
            100.0 / self.clk_tck / window.max(1.0),
        );
        let mut figures = vec![
            Figure {
                name: format!("agent resident memory (peak), {POLICIES} policies, 1 s interval"),
                value: mib(a.last.hwm_kib),
                unit: "MiB",
                baseline: Some(Baseline {
                    name: "agent without policies".into(),
                    value: mib(b.last.hwm_kib),
                }),
                note: mem_note,
            },
            Figure {
                name: format!("agent CPU, {POLICIES} policies, 1 s interval"),
                value: a.cpu_percent,
                unit: "% of one core",
                baseline: Some(Baseline {
                    name: "agent without policies".into(),
                    value: b.cpu_percent,
                }),
                note: cpu_note,
            },
        ];
        let monit = watched.get(2).and_then(|m| m.summary(self.clk_tck));
        let mut rows = vec![
            (format!("vigil-agent, {POLICIES} policies"), &a),
            ("vigil-agent, no policies".to_string(), &b),
        ];
        match &monit {
            Some(m) => {
                figures.extend(self.versus_monit(&a, m));
                rows.push(("monit, 1 process check".to_string(), m));
            }
            None => println!(
                "agent vs monit: skipped: no `monit` program on PATH or in /usr/bin, \
                 /usr/sbin (Debian: apt-get install monit)"
            ),
        }
        print!("{}", side_by_side(&rows));
        println!("{}", goal_verdict(&a));
        Ok(figures)
    }

    /// The two figures of the agent next to Monit.
    fn versus_monit(&self, a: &Summary, m: &Summary) -> [Figure; 2] {
        let window = a.window_s;
        let split = |s: &Summary| {
            format!(
                "RssAnon {:.1} + RssFile {:.1} MiB",
                mib(s.anon_mean_kib),
                mib(s.file_mean_kib)
            )
        };
        let noticed = match self.monit_noticed {
            Some(true) => "Monit logged that the agent stopped when it was stopped after the \
                           window: it was checking"
                .to_string(),
            _ => format!(
                "WARNING: Monit did not log within {} s that the agent it watched stopped: \
                 its checks may not have run",
                MONIT_NOTICE.as_secs()
            ),
        };
        let mem_note = format!(
            "mean VmRSS over {window:.0} s: agent {} (peak {:.1}), monit {} (peak {:.1}); \
             RssFile is mapped files: the agent's static binary, monit's binary and shared \
             libraries (libc, OpenSSL, PAM, zlib), both shared with other processes. The \
             agent: {POLICIES} policies at a 1 s interval, reporting over MQTT; monit: `monit \
             -I -c FILE`, `set daemon 1`, one process check (the agent, by pid file; cpu and \
             totalmem limits), no HTTP interface, logging to a file. {noticed}. Monit's \
             resident pages at the end (smaps): {}.",
            split(a),
            mib(a.rss_peak_kib),
            split(m),
            mib(m.rss_peak_kib),
            self.monit_pages
                .as_ref()
                .map_or_else(|| "not read".into(), Breakdown::describe),
        );
        let cpu_note = format!(
            "{:.2}% vs {:.2}%: utime + stime from /proc/<pid>/stat over the same {window:.0} \
             s ({} ticks/s: resolution {:.3} points). Monit reads the process table every \
             cycle; the agent also samples the host, evaluates its policies and publishes.",
            a.cpu_percent,
            m.cpu_percent,
            self.clk_tck,
            100.0 / self.clk_tck / window.max(1.0),
        );
        let peer = "monit, 1 s cycle, one process check";
        [
            Figure {
                name: format!("agent vs monit: resident memory (VmRSS, mean), {POLICIES} policies"),
                value: mib(a.rss_mean_kib),
                unit: "MiB",
                baseline: Some(Baseline {
                    name: peer.into(),
                    value: mib(m.rss_mean_kib),
                }),
                note: mem_note,
            },
            Figure {
                name: format!("agent vs monit: CPU, {POLICIES} policies, 1 s interval"),
                value: a.cpu_percent,
                unit: "% of one core",
                baseline: Some(Baseline {
                    name: peer.into(),
                    value: m.cpu_percent,
                }),
                note: cpu_note,
            },
        ]
    }
}

/// The agent's goal: at most 6 MB (decimal) resident, mean over the window, ...
const GOAL_RSS_KIB: u64 = 6_000_000 / 1024;
/// ... and less than this share of one core.
const GOAL_CPU_PERCENT: f64 = 0.3;

/// The processes' readings as a table, one row each.
fn side_by_side(rows: &[(String, &Summary)]) -> String {
    let mut out = format!(
        "agent footprint, side by side (means over the window):\n  {:<28} {:>10} {:>10} {:>10} {:>10}\n",
        "process", "VmRSS MiB", "RssAnon", "RssFile", "CPU %"
    );
    for (name, s) in rows {
        let _ = writeln!(
            out,
            "  {name:<28} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
            mib(s.rss_mean_kib),
            mib(s.anon_mean_kib),
            mib(s.file_mean_kib),
            s.cpu_percent
        );
    }
    out
}

/// Whether the measured agent meets the goal, in one line.
fn goal_verdict(a: &Summary) -> String {
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    format!(
        "agent footprint goal (VmRSS mean <= 6 MB = {:.2} MiB, CPU < {GOAL_CPU_PERCENT}% of one \
         core): memory {:.2} MiB {}, CPU {:.2}% {}",
        mib(GOAL_RSS_KIB),
        mib(a.rss_mean_kib),
        verdict(a.rss_mean_kib <= GOAL_RSS_KIB),
        a.cpu_percent,
        verdict(a.cpu_percent < GOAL_CPU_PERCENT),
    )
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Monit, running in the foreground with its files in the run's directory.
struct Monit {
    proc: Proc,
    log: PathBuf,
}

impl Monit {
    /// Whether Monit logs, within [`MONIT_NOTICE`], that its check's process is gone
    /// (called once the measured agent was stopped).
    async fn noticed_stop(&self) -> bool {
        let deadline = Instant::now() + MONIT_NOTICE;
        let wanted = format!("'{MONIT_CHECK}' process is not running");
        loop {
            if std::fs::read_to_string(&self.log).is_ok_and(|log| log.contains(&wanted)) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Starts `monit -I -c DIR/monitrc`: a 1 s cycle, one process check of `agent_pid` (by
/// a pid file), its state, id, pid and log files in `dir`. Monit refuses a control file
/// that others may read, so it is written with mode 0600.
fn start_monit(program: &Path, dir: &Path, agent_pid: u32) -> Result<Monit, BenchError> {
    let write = |path: &Path, text: &str, mode: u32| -> Result<(), BenchError> {
        let io = |source| {
            BenchError::Proc(KitError::Write {
                path: path.to_path_buf(),
                source,
            })
        };
        std::fs::write(path, text).map_err(io)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io)
    };
    let pid_file = dir.join("vigil-agent.pid");
    write(&pid_file, &format!("{agent_pid}\n"), 0o644)?;
    let log = dir.join("monit-events.log");
    let control = dir.join("monitrc");
    let text = format!(
        "# Written by `vigil-sim bench --part footprint`: Monit as the agent's peer.\n\
         set daemon 1\n\
         set log {log}\n\
         set pidfile {pid}\n\
         set idfile {id}\n\
         set statefile {state}\n\
         check process {MONIT_CHECK} with pidfile {pid_file}\n\
         \x20 if cpu > 90% for 5 cycles then alert\n\
         \x20 if totalmem > 200 MB for 5 cycles then alert\n",
        log = log.display(),
        pid = dir.join("monit.pid").display(),
        id = dir.join("monit.id").display(),
        state = dir.join("monit.state").display(),
        pid_file = pid_file.display(),
    );
    write(&control, &text, 0o600)?;
    let args = vec!["-I".to_string(), "-c".into(), control.display().to_string()];
    let proc = Launcher::Simulator.start("monit", program, &args, dir)?;
    Ok(Monit { proc, log })
}

/// `name` on `PATH`, else in `/usr/bin` or `/usr/sbin`.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The readings of one process over the window.
struct Watched {
    pid: u32,
    first: Option<Reading>,
    last: Option<Reading>,
    readings: u64,
    rss_peak_kib: u64,
    rss_sum_kib: u64,
    anon_sum_kib: u64,
    file_sum_kib: u64,
}

/// What the figures use of a [`Watched`].
struct Summary {
    last: Reading,
    window_s: f64,
    rss_peak_kib: u64,
    rss_mean_kib: u64,
    anon_mean_kib: u64,
    file_mean_kib: u64,
    cpu_percent: f64,
}

impl Watched {
    fn new(pid: u32) -> Watched {
        Watched {
            pid,
            first: None,
            last: None,
            readings: 0,
            rss_peak_kib: 0,
            rss_sum_kib: 0,
            anon_sum_kib: 0,
            file_sum_kib: 0,
        }
    }

    fn add(&mut self, reading: Reading) {
        self.rss_peak_kib = self.rss_peak_kib.max(reading.rss_kib);
        self.rss_sum_kib += reading.rss_kib;
        self.anon_sum_kib += reading.anon_kib;
        self.file_sum_kib += reading.file_kib;
        self.readings += 1;
        self.first.get_or_insert(reading);
        self.last = Some(reading);
    }

    fn summary(&self, clk_tck: f64) -> Option<Summary> {
        let (first, last) = (self.first?, self.last?);
        let n = self.readings.max(1);
        let window_s = last.at.duration_since(first.at).as_secs_f64();
        let cpu_percent = if window_s > 0.0 {
            last.cpu_ticks.saturating_sub(first.cpu_ticks) as f64 / clk_tck / window_s * 100.0
        } else {
            0.0
        };
        Some(Summary {
            last,
            window_s,
            rss_peak_kib: self.rss_peak_kib,
            rss_mean_kib: self.rss_sum_kib / n,
            anon_mean_kib: self.anon_sum_kib / n,
            file_mean_kib: self.file_sum_kib / n,
            cpu_percent,
        })
    }
}

/// Where a process's resident pages are, from `/proc/<pid>/smaps`, in KiB.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Breakdown {
    /// The program's own executable segment (machine code).
    code: u64,
    /// The program's read-only segments (constants, relocation-free tables, unwind
    /// tables, headers).
    rodata: u64,
    /// The program's writable segments (data, and the relocated read-only-after-start data
    /// of a position-independent binary).
    data: u64,
    /// Other files: shared libraries, memory-mapped databases.
    other_files: u64,
    /// The `brk` heap.
    heap: u64,
    /// Anonymous mappings that follow a guard page: thread stacks.
    thread_stacks: u64,
    /// How many such stacks.
    stacks: u64,
    /// Other anonymous mappings: large allocations, allocator arenas.
    anon_other: u64,
    /// The main thread's stack.
    main_stack: u64,
    /// Everything else (`[vdso]`, `[vvar]`, …).
    other: u64,
}

impl Breakdown {
    /// Reads `/proc/<pid>/smaps` (and `/proc/<pid>/exe`).
    fn of(pid: u32) -> Result<Breakdown, String> {
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
            .map_err(|e| format!("smaps: {e}"))?;
        let exe =
            std::fs::read_link(format!("/proc/{pid}/exe")).map_err(|e| format!("exe: {e}"))?;
        Ok(Breakdown::parse(&smaps, &exe.to_string_lossy()))
    }

    /// Classifies each mapping of the text of `/proc/<pid>/smaps` (`exe` is the program's
    /// path as the mappings name it).
    fn parse(smaps: &str, exe: &str) -> Breakdown {
        let mut b = Breakdown::default();
        // (permissions, path) of the mapping being read, and of the one before it.
        let mut current: Option<(String, String)> = None;
        let mut previous_perms = String::new();
        for line in smaps.lines() {
            let mut fields = line.split_whitespace();
            let Some(first) = fields.next() else { continue };
            if first.contains('-') && !first.ends_with(':') {
                // A mapping's header: `start-end perms offset dev inode [path]`.
                if let Some((perms, _)) = current.take() {
                    previous_perms = perms;
                }
                let perms = fields.next().unwrap_or("").to_string();
                let path = fields.nth(3).unwrap_or("").to_string();
                current = Some((perms, path));
                continue;
            }
            if first != "Rss:" {
                continue;
            }
            let Some(kib) = fields.next().and_then(|v| v.parse::<u64>().ok()) else {
                continue;
            };
            let Some((perms, path)) = &current else {
                continue;
            };
            let slot = if path == exe {
                if perms.contains('x') {
                    &mut b.code
                } else if perms.contains('w') {
                    &mut b.data
                } else {
                    &mut b.rodata
                }
            } else if path.starts_with('/') {
                &mut b.other_files
            } else if path == "[heap]" {
                &mut b.heap
            } else if path == "[stack]" {
                &mut b.main_stack
            } else if path.is_empty() && previous_perms.starts_with("---") {
                b.stacks += 1;
                &mut b.thread_stacks
            } else if path.is_empty() {
                &mut b.anon_other
            } else {
                &mut b.other
            };
            *slot += kib;
        }
        b
    }

    /// One line for a figure's note.
    fn describe(&self) -> String {
        let m = |kib: u64| format!("{:.2}", kib as f64 / 1024.0);
        format!(
            "code {} MiB, read-only data {}, writable data {}, other files {}, heap {}, \
             {} thread stacks {}, other anonymous {}, main stack {}, other {}",
            m(self.code),
            m(self.rodata),
            m(self.data),
            m(self.other_files),
            m(self.heap),
            self.stacks,
            m(self.thread_stacks),
            m(self.anon_other),
            m(self.main_stack),
            m(self.other),
        )
    }
}

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
struct Reading {
    at: Instant,
    rss_kib: u64,
    hwm_kib: u64,
    /// RssAnon: anonymous pages (heap, stacks).
    anon_kib: u64,
    /// RssFile: pages of mapped files, mostly the binary's code, shared between agents.
    file_kib: u64,
    cpu_ticks: u64,
}

fn read_proc(pid: u32) -> Result<Reading, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("status: {e}"))?;
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| format!("stat: {e}"))?;
    let at = Instant::now();
    let (rss_kib, hwm_kib) = parse_status(&status).ok_or("no VmRSS/VmHWM in status")?;
    let anon_kib = status_kib(&status, "RssAnon").unwrap_or(0);
    let file_kib = status_kib(&status, "RssFile").unwrap_or(0);
    let cpu_ticks = parse_stat_cpu_ticks(&stat).ok_or("unreadable stat")?;
    Ok(Reading {
        at,
        rss_kib,
        hwm_kib,
        anon_kib,
        file_kib,
        cpu_ticks,
    })
}

/// `(VmRSS, VmHWM)` in KiB from the text of `/proc/<pid>/status`.
fn parse_status(text: &str) -> Option<(u64, u64)> {
    Some((status_kib(text, "VmRSS")?, status_kib(text, "VmHWM")?))
}

/// utime + stime, in clock ticks, from the text of `/proc/<pid>/stat`. The command name
/// (field 2, in parentheses) may hold spaces and parentheses, so fields are counted from
/// the last `)`: state is field 3, utime field 14, stime field 15.
fn parse_stat_cpu_ticks(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_second() -> Result<f64, BenchError> {
    // SAFETY: sysconf(3) only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks <= 0 {
        return Err(BenchError::Failed(
            "footprint: sysconf(_SC_CLK_TCK) failed".into(),
        ));
    }
    Ok(ticks as f64)
}

pub(super) async fn get_json(
    client: &reqwest::Client,
    token: Option<&str>,
    url: &str,
) -> Result<Value, String> {
    let response = vigil_testkit::with_token(client.get(url), token)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if !status.is_success() {
        return Err(format!("GET {url}: {status}: {body}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("GET {url}: not JSON ({e}): {body}"))
}

pub(super) fn host_entry<'a>(hosts: &'a Value, host: &str) -> Option<&'a Value> {
    hosts["hosts"]
        .as_array()?
        .iter()
        .find(|h| h["host"] == host)
}

pub(super) fn create_dir(path: &Path) -> Result<(), BenchError> {
    std::fs::create_dir_all(path).map_err(|source| {
        BenchError::Proc(KitError::Write {
            path: path.to_path_buf(),
            source,
        })
    })
}

/// A new, empty directory under `work_dir` for this run.
fn fresh_dir(work_dir: &Path) -> Result<PathBuf, BenchError> {
    let dir = work_dir.join(format!("footprint-{}", ulid::Ulid::generate()));
    create_dir(&dir)?;
    Ok(dir)
}

/// Writes `n` policy files, one policy each, to `dir`: host-health thresholds on CPU,
/// memory, swap, disk, load and process count, with `for` holds, cooldowns and actions
/// (notify, webhook, escalation chains, dry-run), set so that none fires on a healthy host;
/// in the last ten, systemd unit and Docker container state checks on name patterns that
/// match nothing here (so the agent runs its systemd and Docker watchers), a check that
/// `vigil-sim` runs and a TCP check of `tcp_address` (the coordinator's REST port).
fn write_policies(dir: &Path, n: usize, tcp_address: &str) -> Result<(), BenchError> {
    create_dir(dir)?;
    for i in 0..n {
        let (name, yaml) = policy_yaml(i, tcp_address);
        let path = dir.join(format!("{i:02}-{name}.yaml"));
        std::fs::write(&path, yaml).map_err(|source| {
            BenchError::Proc(KitError::Write {
                path: path.clone(),
                source,
            })
        })?;
    }
    Ok(())
}

/// The `i`th generated policy: its name and its file.
fn policy_yaml(i: usize, tcp_address: &str) -> (String, String) {
    let hook = "{action: webhook, params: {url: \"http://127.0.0.1:9/vigil-hook\"}}";
    let round = i / 10; // thresholds and holds vary between the five rounds
    let k = round as f64;
    let mut target = "all".to_string();
    let state_round = round == 4;
    let (kind, fields): (&str, Vec<String>) = match i % 10 {
        // The last round's state checks: units and containers by name pattern (none
        // matches here, as on a host without them), a process and a port.
        1 if state_round => {
            target = "vigil-bench-web-*.service".into();
            (
                "units-web",
                vec![
                    "severity: critical".into(),
                    "condition: {type: unit_state, expect: [active, reloading]}".into(),
                    "for: 5s".into(),
                    "auto_remediate: true".into(),
                    "verify: 30s".into(),
                    "cooldown: 10s".into(),
                    "flap: {max_actions: 3, within: 10m, reset_after: 10m}".into(),
                    format!("actions: [restart, restart, {hook}]"),
                ],
            )
        }
        2 if state_round => {
            target = "vigil-bench-db-*.service".into();
            (
                "units-db",
                vec![
                    "severity: critical".into(),
                    "condition: {type: unit_state}".into(),
                    "auto_remediate: true".into(),
                    "action: restart".into(),
                ],
            )
        }
        4 if state_round => {
            target = "vigil-bench-web-*".into();
            (
                "containers-web",
                vec![
                    "severity: critical".into(),
                    "condition: {type: container_state, expect: running, unhealthy: true}".into(),
                    "auto_remediate: true".into(),
                    "action: restart".into(),
                ],
            )
        }
        5 if state_round => {
            target = "vigil-bench-cache-*".into();
            (
                "containers-cache",
                vec![
                    "severity: warning".into(),
                    "condition: {type: container_state}".into(),
                    "action: notify".into(),
                ],
            )
        }
        7 if state_round => {
            target = "vigil-sim".into();
            (
                "process-running",
                vec![
                    "severity: critical".into(),
                    "condition: {type: process_missing, process: vigil-sim}".into(),
                    "action: notify".into(),
                ],
            )
        }
        8 if state_round => {
            target = tcp_address.to_string();
            (
                "port-open",
                vec![
                    "severity: critical".into(),
                    format!(
                        "condition: {{type: tcp_check, address: \"{tcp_address}\", failures: 3}}"
                    ),
                    "action: notify".into(),
                ],
            )
        }
        0 => (
            "cpu-high",
            vec![
                "severity: warning".into(),
                format!(
                    "condition: {{type: metric_exceeds, metric: cpu_percent, threshold: {}}}",
                    99.0 + k * 0.1
                ),
                format!("for: {}m", 5 + round),
                "cooldown: 10m".into(),
                "action: notify".into(),
            ],
        ),
        1 => (
            "memory-high",
            vec![
                "severity: critical".into(),
                format!(
                    "condition: {{type: metric_exceeds, metric: memory_percent, threshold: {}}}",
                    98.0 + k * 0.2
                ),
                format!("for: {}s", 120 + 30 * round),
                "auto_remediate: true".into(),
                "cooldown: 15m".into(),
                format!("actions: [notify, {hook}]"),
            ],
        ),
        2 => (
            "disk-low",
            vec![
                "severity: critical".into(),
                format!(
                    "condition: {{type: metric_below, metric: disk_free_percent, threshold: {}}}",
                    1.0 + k * 0.2
                ),
                "for: 1m".into(),
                "auto_remediate: true".into(),
                "cooldown: 1h".into(),
                format!("actions: [{hook}]"),
            ],
        ),
        3 => (
            "load1-high",
            vec![
                "severity: warning".into(),
                format!(
                    "condition: {{type: metric_exceeds, metric: load1, threshold: {}}}",
                    200 + 10 * round
                ),
                "for: 3m".into(),
                "action: notify".into(),
            ],
        ),
        4 => (
            "load15-high",
            vec![
                "severity: info".into(),
                format!("condition: load15 > {} for 15m", 150 + 10 * round),
                "action: notify".into(),
            ],
        ),
        5 => (
            "swap-high",
            vec![
                "severity: warning".into(),
                format!(
                    "condition: {{type: metric_exceeds, metric: swap_percent, threshold: {}}}",
                    95 + round
                ),
                "for: 10m".into(),
                "auto_remediate: true".into(),
                "dry_run: true".into(),
                "cooldown: 30m".into(),
                "flap: {max_actions: 3, within: 1h, reset_after: 1h}".into(),
                format!("actions: [{hook}]"),
            ],
        ),
        6 => (
            "processes-many",
            vec![
                "severity: warning".into(),
                format!(
                    "condition: {{type: metric_exceeds, metric: process_count, threshold: {}}}",
                    50_000 + 1000 * round
                ),
                "for: 2m".into(),
                "action: notify".into(),
            ],
        ),
        7 => (
            "cpu-and-memory",
            vec![
                "severity: critical".into(),
                "condition:".into(),
                "  type: all".into(),
                "  conditions:".into(),
                format!(
                    "    - {{type: metric_exceeds, metric: cpu_percent, threshold: {}}}",
                    98.0 + k * 0.2
                ),
                format!(
                    "    - {{type: metric_exceeds, metric: memory_percent, threshold: {}}}",
                    97.0 + k * 0.2
                ),
                "for: 2m".into(),
                "auto_remediate: true".into(),
                "verify: 1m".into(),
                "cooldown: 10m".into(),
                format!("actions: [notify, {hook}]"),
            ],
        ),
        8 => (
            "cpu-or-disk",
            vec![
                "severity: warning".into(),
                "condition:".into(),
                "  type: any".into(),
                "  conditions:".into(),
                format!(
                    "    - {{type: metric_exceeds, metric: cpu_percent, threshold: {}}}",
                    99.5 + k * 0.1
                ),
                format!(
                    "    - {{type: metric_below, metric: disk_free_percent, threshold: {}}}",
                    0.5 + k * 0.1
                ),
                "for: 5m".into(),
                "action: notify".into(),
            ],
        ),
        _ => (
            "memory-creep",
            vec![
                "severity: info".into(),
                format!(
                    "condition: {{type: trend, metric: memory_percent, direction: increasing, \
                     by: {}, over: 30m}}",
                    60 + 5 * round
                ),
                "action: notify".into(),
            ],
        ),
    };
    let name = format!("{kind}-{i:02}");
    let mut yaml = format!(
        "# Generated by `vigil-sim bench --part footprint`: a host-health policy that does \
         not fire on a healthy host.\npolicies:\n  - name: {name}\n    \
         description: footprint benchmark policy {i}\n    target: \"{target}\"\n"
    );
    for field in fields {
        let _ = writeln!(yaml, "    {field}");
    }
    (name, yaml)
}

/// The processes on this host: the all-digit names in `/proc` (0 where it cannot be read).
fn count_processes() -> usize {
    std::fs::read_dir("/proc").map_or(0, |entries| {
        entries
            .flatten()
            .filter(|e| {
                let name = e.file_name();
                let name = name.as_encoded_bytes();
                !name.is_empty() && name.iter().all(u8::is_ascii_digit)
            })
            .count()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rss_and_high_water_mark_from_status() {
        let status = "Name:\tvigil-agent\nVmPeak:\t  123456 kB\nVmHWM:\t    9876 kB\n\
                      VmRSS:\t    8765 kB\nRssAnon:\t    4000 kB\nThreads:\t4\n";
        assert_eq!(parse_status(status), Some((8765, 9876)));
        assert_eq!(parse_status("Name:\tx\nVmRSS:\t 1 kB\n"), None);
        assert_eq!(status_kib(status, "RssAnon"), Some(4000));
        assert_eq!(status_kib(status, "Rss"), None);
    }

    #[test]
    fn adds_user_and_system_ticks_from_stat_even_with_odd_names() {
        let stat = "4242 (vigil (a) b) S 1 4242 4242 0 -1 4194560 900 0 0 0 \
                    250 31 0 0 20 0 3 0 123 456789 1234 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(281));
        assert_eq!(parse_stat_cpu_ticks("1 (x) S 1 2"), None);
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(parse_stat_cpu_ticks(&own).is_some());
        let own = std::fs::read_to_string("/proc/self/status").unwrap();
        let (rss, hwm) = parse_status(&own).unwrap();
        assert!(rss > 0 && hwm >= rss);
    }

    #[test]
    fn sorts_resident_pages_by_mapping() {
        let smaps = "\
55d0-55d1 r--p 00000000 08:01 42 /usr/bin/vigil-agent
Rss:                  40 kB
55d1-55d9 r-xp 00001000 08:01 42 /usr/bin/vigil-agent
Size:               2048 kB
Rss:                1500 kB
55d9-55da rw-p 00009000 08:01 42 /usr/bin/vigil-agent
Rss:                  12 kB
55da-55db rw-p 00000000 00:00 0                          [heap]
Rss:                 300 kB
7f00-7f01 ---p 00000000 00:00 0
Rss:                   0 kB
7f01-7f02 rw-p 00000000 00:00 0
Rss:                  16 kB
7f02-7f03 rw-p 00000000 00:00 0
Rss:                 100 kB
7f03-7f04 r--s 00000000 08:01 77 /var/lib/vigil/agent/data.mdb
Rss:                  64 kB
7ffd-7ffe rw-p 00000000 00:00 0                          [stack]
Rss:                  24 kB
7ffe-7fff r-xp 00000000 00:00 0                          [vdso]
Rss:                   4 kB
";
        let b = Breakdown::parse(smaps, "/usr/bin/vigil-agent");
        assert_eq!(
            b,
            Breakdown {
                code: 1500,
                rodata: 40,
                data: 12,
                other_files: 64,
                heap: 300,
                thread_stacks: 16,
                stacks: 1,
                anon_other: 100,
                main_stack: 24,
                other: 4,
            }
        );
        let own = Breakdown::of(std::process::id()).unwrap();
        assert!(own.code > 0, "{own:?}");
    }

    #[test]
    fn the_goal_is_six_decimal_megabytes_and_three_tenths_of_a_core() {
        let summary = |rss_mean_kib: u64, cpu_percent: f64| Summary {
            last: Reading {
                at: Instant::now(),
                rss_kib: rss_mean_kib,
                hwm_kib: rss_mean_kib,
                anon_kib: 0,
                file_kib: 0,
                cpu_ticks: 0,
            },
            window_s: 60.0,
            rss_peak_kib: rss_mean_kib,
            rss_mean_kib,
            anon_mean_kib: 1024,
            file_mean_kib: rss_mean_kib - 1024,
            cpu_percent,
        };
        let met = goal_verdict(&summary(5859, 0.28));
        assert!(met.contains("memory 5.72 MiB met, CPU 0.28% met"), "{met}");
        let missed = goal_verdict(&summary(6250, 0.62));
        assert!(
            missed.contains("6.10 MiB NOT met, CPU 0.62% NOT met"),
            "{missed}"
        );
        let table = side_by_side(&[("monit".into(), &summary(7373, 0.9))]);
        assert!(table.lines().nth(2).unwrap().contains("7.20"), "{table}");
    }

    #[test]
    fn generated_policies_are_valid_and_distinct() {
        let dir = tempfile::tempdir().unwrap();
        write_policies(dir.path(), POLICIES, "127.0.0.1:8000").unwrap();
        let policies = vigil_shared::policy::load::load_dir(dir.path()).unwrap();
        assert_eq!(policies.len(), POLICIES);
        let mut names: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), POLICIES);
        let states = policies
            .iter()
            .filter(|p| !matches!(p.target, vigil_shared::policy::target::Target::All))
            .count();
        assert_eq!(states, 6, "the state, process and TCP checks");
    }
}
