//! Benchmark part: the agent's footprint: resident memory and CPU share of a
//! real agent with 50 policies at a 1 s interval, against one with none.
//!
//! One real coordinator (embedded broker) and two real `vigil-agent` processes (enrolled
//! at start-up with a join token, sealing what they send) reporting to it every second:
//! one with 50 policies loaded from 50 YAML files (host-health thresholds with `for`
//! holds and actions, none of which fires on a healthy host), and
//! one with no policies, the same-run baseline. Both are sampled once a second from
//! `/proc/<pid>/status` (VmRSS, VmHWM) and `/proc/<pid>/stat` (utime + stime). Before the
//! figures are believed, the coordinator's REST API must show both agents online and
//! reporting, the first with its 50 policies loaded and evaluated, the second with none.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::stack::{self, join_token};
use super::{Baseline, BenchEnv, BenchError, Figure};
use vigil_testkit::{KitError, Launcher, Proc};

/// Policies the measured agent loads.
const POLICIES: usize = 50;
/// Host name of the agent with policies.
const HOST_POLICIES: &str = "footprint-50-policies";
/// Host name of the baseline agent.
const HOST_BASELINE: &str = "footprint-no-policies";

/// Measures this part's figures.
pub async fn run(env: &BenchEnv) -> Result<Vec<Figure>, BenchError> {
    let dir = fresh_dir(&env.work_dir)?;
    let (measure_for, warm_up) = if env.quick {
        (Duration::from_secs(10), Duration::from_secs(3))
    } else {
        (Duration::from_secs(60), Duration::from_secs(5))
    };

    let policy_dir = dir.join("policies");
    write_policies(&policy_dir, POLICIES)?;

    let coordinator = stack::start_coordinator(&dir).await?;
    let agent_program = Launcher::Simulator.program("vigil-agent")?;
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

    let client = reqwest::Client::new();
    // Start-up: both agents connected and their samples stored.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        check_alive(&mut measured)?;
        check_alive(&mut baseline)?;
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

    // The measurement window: one reading of each agent a second.
    let clk_tck = clock_ticks_per_second()?;
    let pids = [measured.pid(), baseline.pid()];
    let mut first: [Option<Reading>; 2] = [None, None];
    let mut last: [Option<Reading>; 2] = [None, None];
    let mut rss_peak = [0u64; 2];
    let mut rss_sum = [0u64; 2];
    let mut readings = 0u64;
    let window_start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for (i, pid) in pids.iter().enumerate() {
            let reading = read_proc(*pid).map_err(|e| {
                BenchError::Failed(format!(
                    "footprint: cannot read /proc/{pid} (did the agent exit? see the logs in \
                     {}): {e}",
                    dir.display()
                ))
            })?;
            rss_peak[i] = rss_peak[i].max(reading.rss_kib);
            rss_sum[i] += reading.rss_kib;
            first[i].get_or_insert(reading);
            last[i] = Some(reading);
        }
        readings += 1;
        if window_start.elapsed() >= measure_for {
            break;
        }
    }
    check_alive(&mut measured)?;
    check_alive(&mut baseline)?;

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

    stack::stop(measured);
    stack::stop(baseline);
    stack::stop(coordinator.proc);

    let (Some(f0), Some(l0), Some(f1), Some(l1)) = (first[0], last[0], first[1], last[1]) else {
        return Err(BenchError::Failed("footprint: no /proc readings".into()));
    };
    let cpu = |f: Reading, l: Reading| {
        let secs = l.at.duration_since(f.at).as_secs_f64();
        if secs <= 0.0 {
            return 0.0;
        }
        (l.cpu_ticks.saturating_sub(f.cpu_ticks)) as f64 / clk_tck / secs * 100.0
    };
    let window = l0.at.duration_since(f0.at).as_secs_f64();
    let mib = |kib: u64| kib as f64 / 1024.0;
    let hwm = [l0.hwm_kib, l1.hwm_kib];
    let mean = |i: usize| mib(rss_sum[i] / readings.max(1));

    let mut mem_note = format!(
        "VmHWM (the kernel's resident high-water mark, start-up included) at the end of the \
         run; sampled VmRSS over {window:.0} s: peak {:.1} MiB, mean {:.1} MiB (baseline: \
         peak {:.1}, mean {:.1}); of the last VmRSS, {:.1} MiB ({:.1} for the baseline) is \
         RssFile, mapped files, mostly the agent binary's code, counted in full for each agent \
         though shared. {POLICIES} policies in {POLICIES} YAML files, written not \
         to fire ({fired} policy events recorded), {evaluations} policy x target \
         evaluations by the last status; both agents online {:.1} s after start. The \
         policies are host-metric thresholds only, so neither agent starts its Docker or \
         systemd watcher or a probe.",
        mib(rss_peak[0]),
        mean(0),
        mib(rss_peak[1]),
        mean(1),
        mib(l0.file_kib),
        mib(l1.file_kib),
        online_after.as_secs_f64(),
    );
    if fired > 0 {
        let _ = write!(
            mem_note,
            " WARNING: {fired} policy events were recorded, so the agent did more than \
             evaluate."
        );
    }
    let (cpu_measured, cpu_baseline) = (cpu(f0, l0), cpu(f1, l1));
    let host_processes = count_processes();
    let cpu_note = format!(
        "{cpu_measured:.2}% vs {cpu_baseline:.2}%: utime + stime from /proc/<pid>/stat over \
         {window:.0} s after {:.0} s of warm-up once both agents were online ({clk_tck} \
         ticks/s: resolution {:.3} points); includes sampling, evaluation, MQTT publishing \
         and the outbox, on a host with {host_processes} processes (the agent lists /proc \
         every sample). Cores shared with other work: the figure is noisy, compare it to \
         the same-run baseline.",
        warm_up.as_secs_f64(),
        100.0 / clk_tck / window.max(1.0),
    );
    Ok(vec![
        Figure {
            name: format!("agent resident memory (peak), {POLICIES} policies, 1 s interval"),
            value: mib(hwm[0]),
            unit: "MiB",
            baseline: Some(Baseline {
                name: "agent without policies".into(),
                value: mib(hwm[1]),
            }),
            note: mem_note,
        },
        Figure {
            name: format!("agent CPU, {POLICIES} policies, 1 s interval"),
            value: cpu_measured,
            unit: "% of one core",
            baseline: Some(Baseline {
                name: "agent without policies".into(),
                value: cpu_baseline,
            }),
            note: cpu_note,
        },
    ])
}

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
struct Reading {
    at: Instant,
    rss_kib: u64,
    hwm_kib: u64,
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
    let file_kib = status_kib(&status, "RssFile").unwrap_or(0);
    let cpu_ticks = parse_stat_cpu_ticks(&stat).ok_or("unreadable stat")?;
    Ok(Reading {
        at,
        rss_kib,
        hwm_kib,
        file_kib,
        cpu_ticks,
    })
}

/// `(VmRSS, VmHWM)` in KiB from the text of `/proc/<pid>/status`.
fn parse_status(text: &str) -> Option<(u64, u64)> {
    Some((status_kib(text, "VmRSS")?, status_kib(text, "VmHWM")?))
}

/// One `Name:   123 kB` field of `/proc/<pid>/status`, in KiB.
fn status_kib(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
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

fn check_alive(proc: &mut Proc) -> Result<(), BenchError> {
    match proc.child.try_wait() {
        Ok(None) => Ok(()),
        Ok(Some(status)) => Err(BenchError::Failed(format!(
            "footprint: {} exited ({status}); see {}",
            proc.name,
            proc.log.display()
        ))),
        Err(e) => Err(BenchError::Failed(format!(
            "footprint: cannot check on {}: {e}",
            proc.name
        ))),
    }
}

async fn get_json(
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

fn host_entry<'a>(hosts: &'a Value, host: &str) -> Option<&'a Value> {
    hosts["hosts"]
        .as_array()?
        .iter()
        .find(|h| h["host"] == host)
}

fn create_dir(path: &Path) -> Result<(), BenchError> {
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
/// (notify, webhook, escalation chains, dry-run), set so that none fires on a healthy host.
fn write_policies(dir: &Path, n: usize) -> Result<(), BenchError> {
    create_dir(dir)?;
    for i in 0..n {
        let (name, yaml) = policy_yaml(i);
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
fn policy_yaml(i: usize) -> (String, String) {
    let hook = "{action: webhook, params: {url: \"http://127.0.0.1:9/vigil-hook\"}}";
    let round = i / 10; // thresholds and holds vary between the five rounds
    let k = round as f64;
    let (kind, fields): (&str, Vec<String>) = match i % 10 {
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
         description: footprint benchmark policy {i}\n    target: all\n"
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
    fn generated_policies_are_valid_and_distinct() {
        let dir = tempfile::tempdir().unwrap();
        write_policies(dir.path(), POLICIES).unwrap();
        let policies = vigil_shared::policy::load::load_dir(dir.path()).unwrap();
        assert_eq!(policies.len(), POLICIES);
    }
}
