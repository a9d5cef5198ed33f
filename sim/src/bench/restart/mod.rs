//! Benchmark part: a killed container, running again — through a real `vigil-agent`
//! against Docker's own `--restart=always`, on the same engine in the same run.
//!
//! One coordinator (embedded broker) and one real agent (the `vigil-agent` beside
//! `vigil-sim`, or `--agent PATH`), enrolled with a join token, with one policy: restart
//! container A when it is not `running` (a `container_state` check, fed by the agent's
//! Docker watcher from the engine's event stream; flap limits set out of the way).
//! Container A has no restart policy and is the only one the agent may touch; container B
//! runs with `--restart=always` and is not in the agent's allowlist. Both run the same
//! image (static busybox, built locally) and command (`sleep 3600`).
//!
//! The rounds alternate A, B, A, B, …: each SIGKILLs one container's main process from
//! the host (as a crash would: `docker kill` counts as a manual stop, after which Docker
//! skips the restart policy) once it has been running for [`UPTIME`] (Docker doubles its
//! restart back-off for a container that ran less than 10 s) and at least half that
//! since the other came back, and measures from the kill to the container's new
//! `State.StartedAt`. Nothing polls the engine meanwhile: the bench follows `docker
//! events`. For Vigil's rounds the timeline comes from the agent's own timestamps (its
//! `vigil_agent::timeline` debug events), the engine's events and the action's audit
//! transitions (`GET /api/v1/actions/{id}`); the median and the worst round's are printed.

mod engine;
mod timeline;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::footprint::{create_dir, get_json, host_entry};
use super::stack::{self, join_token};
use super::{Baseline, BenchEnv, BenchError, Figure};
use engine::{Container, Events};
use timeline::{first_of, of_action, Mark, Timeline};
use vigil_testkit::{Launcher, Proc};

/// How long a container runs before it is killed (Docker resets its back-off to 100 ms
/// only for a container that ran 10 s or more).
pub const UPTIME: Duration = Duration::from_secs(11);
/// Rounds of the full run (half Vigil's, half Docker's).
const ROUNDS: usize = 20;
/// Rounds and uptime of `--quick` (Docker's back-off then doubles: not a fair figure).
const QUICK: (usize, Duration) = (4, Duration::from_secs(2));
/// The agent's host name.
const HOST: &str = "restart-bench";
/// The agent's log filter: warnings, and its timeline events.
const AGENT_LOG: &str = "warn,vigil_agent::timeline=debug";
/// How long a killed container may take to run again before the round fails.
const ROUND_TIMEOUT: Duration = Duration::from_secs(30);

/// Who brought a container back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Vigil,
    Docker,
}

/// One measured round.
struct Round {
    who: Who,
    /// SIGKILL → the new `State.StartedAt`, ms.
    running_ms: f64,
    timeline: Timeline,
}

/// Measures this part's figures.
pub async fn run(env: &BenchEnv) -> Result<Vec<Figure>, BenchError> {
    let engine_version = match engine::version() {
        Ok(v) => v,
        Err(e) => {
            println!("restart vs docker: skipped: no Docker engine answers: {e}");
            return Ok(Vec::new());
        }
    };
    let (rounds, uptime) = if env.quick { QUICK } else { (ROUNDS, UPTIME) };
    let fail = |e: String| BenchError::Failed(format!("restart: {e}"));
    engine::prepare().map_err(fail)?;
    let dir = env
        .work_dir
        .join(format!("restart-{}", ulid::Ulid::generate()));
    create_dir(&dir)?;

    let run_id = ulid::Ulid::generate().to_string().to_lowercase();
    let vigil_name = format!("vigil-bench-{run_id}-vigil");
    let docker_name = format!("vigil-bench-{run_id}-docker");
    let policy_dir = dir.join("policies");
    create_dir(&policy_dir)?;
    write_file(&policy_dir.join("restart.yaml"), &policy_yaml(&vigil_name))?;

    let coordinator = stack::start_coordinator(&dir).await?;
    let token = join_token(&coordinator, 1).await.map_err(fail)?;
    let agent_program = match &env.agent {
        Some(path) => path.clone(),
        None => Launcher::Simulator.program("vigil-agent")?,
    };
    let data_dir = dir.join(HOST);
    create_dir(&data_dir)?;
    let args: Vec<String> = vec![
        "--host".into(),
        HOST.into(),
        "--broker".into(),
        coordinator.broker.clone(),
        "--interval".into(),
        "1s".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--coordinator".into(),
        coordinator.http.clone(),
        "--join-token".into(),
        token,
        "--policies".into(),
        policy_dir.display().to_string(),
        "--allow-container".into(),
        vigil_name.clone(),
    ];
    // The containers exist before the agent watches them, as on a host in steady state.
    let events = Events::follow(&[&vigil_name, &docker_name]).map_err(fail)?;
    let ours = engine::run(&vigil_name, &[]).map_err(fail)?;
    let theirs = engine::run(&docker_name, &["--restart=always"]).map_err(fail)?;
    let mut agent =
        Launcher::Simulator.start_logging(HOST, &agent_program, &args, &dir, Some(AGENT_LOG))?;

    let client = reqwest::Client::new();
    let api = Api {
        client: &client,
        http: &coordinator.http,
        token: coordinator.token.as_deref(),
    };
    api.wait_ready(&mut agent, &dir).await?;

    let mut measured = Vec::with_capacity(rounds);
    let mut back_at_us = engine::now_us();
    let started = Instant::now();
    for round in 0..rounds {
        let (who, container) = if round % 2 == 0 {
            (Who::Vigil, &ours)
        } else {
            (Who::Docker, &theirs)
        };
        // Up for `uptime`, and the engine left alone for half of it since the last round.
        let up_since = engine::started_at_us(container).map_err(fail)?;
        let due = (up_since + micros(uptime)).max(back_at_us + micros(uptime) / 2);
        let wait = due - engine::now_us();
        if wait > 0 {
            tokio::time::sleep(Duration::from_micros(wait.unsigned_abs())).await;
        }
        stack::check_alive("restart", &mut agent)?;
        let result = kill_and_wait(container, &events, who, &agent.log, &api).await;
        let measured_round = result.map_err(|e| fail(format!("round {}: {e}", round + 1)))?;
        back_at_us = engine::now_us();
        println!(
            "  restart round {:>2}/{rounds}: {:<6} {:>7.1} ms",
            round + 1,
            match who {
                Who::Vigil => "Vigil",
                Who::Docker => "Docker",
            },
            measured_round.running_ms
        );
        measured.push(measured_round);
    }
    let took = started.elapsed();
    stack::check_alive("restart", &mut agent)?;
    // Every action the policy took: one per kill of A, or the agent acted on its own doing.
    let log = std::fs::read_to_string(&agent.log).unwrap_or_default();
    let actions = Mark::all(&log)
        .iter()
        .filter(|m| m.step == "policy_fired" && m.subject == vigil_name)
        .count();
    stack::stop(agent);
    drop(events);
    drop((ours, theirs));
    stack::stop(coordinator.proc);

    let run = Run {
        uptime,
        took,
        engine_version,
        agent_program,
        actions,
    };
    run.figures(&measured)
}

/// What the figures' notes say about the run besides its rounds.
struct Run {
    uptime: Duration,
    took: Duration,
    engine_version: String,
    agent_program: PathBuf,
    /// Actions the policy took on A over the run.
    actions: usize,
}

/// Kills `container`, waits until it runs again, and reads the round's timeline.
async fn kill_and_wait(
    container: &Container,
    events: &Events,
    who: Who,
    agent_log: &Path,
    api: &Api<'_>,
) -> Result<Round, String> {
    let name = container.name.as_str();
    let kill_us = engine::crash(container)?;
    let start_event = events
        .wait_for(name, "start", kill_us, ROUND_TIMEOUT)
        .await
        .ok_or_else(|| format!("{name} was not started again within {ROUND_TIMEOUT:?}"))?;
    let started_us = engine::started_at_us(container)?;
    if started_us < kill_us {
        return Err(format!("{name}'s StartedAt is before its kill"));
    }
    let die_us = events.first(name, "die", kill_us);
    let mut timeline = Timeline::new(kill_us);
    timeline.add("SIGKILL sent to the container's process", Some(kill_us));
    timeline.add("die (engine's `die` event)", die_us);
    if who == Who::Vigil {
        agent_steps(&mut timeline, name, kill_us, agent_log, api).await?;
    }
    timeline.add(
        "container running (Docker's State.StartedAt)",
        Some(started_us),
    );
    timeline.add("engine's `start` event", Some(start_event));
    Ok(Round {
        who,
        running_ms: (started_us - kill_us) as f64 / 1000.0,
        timeline,
    })
}

/// Adds the agent's steps of the restart after the kill at `kill_us`: from its log, and
/// the action's audit transitions from the coordinator (waiting until the action has
/// completed and its transitions are stored).
async fn agent_steps(
    timeline: &mut Timeline,
    name: &str,
    kill_us: i64,
    agent_log: &Path,
    api: &Api<'_>,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let (marks, id) = loop {
        let log = std::fs::read_to_string(agent_log)
            .map_err(|e| format!("reading {}: {e}", agent_log.display()))?;
        let marks = Mark::all(&log);
        let fired = marks
            .iter()
            .filter(|m| m.step == "policy_fired" && m.subject == name && m.at_us >= kill_us)
            .find_map(|m| m.action.clone());
        if let Some(id) = fired {
            if of_action(&marks, "executor_returned", &id).is_some() {
                break (marks, id);
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the agent's log shows no finished action on {name} after the kill (see {})",
                agent_log.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let die_seen = first_of(&marks, "die_seen", name, kill_us);
    timeline.add("die seen by the agent (Docker watcher)", die_seen);
    timeline.add(
        "state update taken by the agent's main loop",
        die_seen.and_then(|t| first_of(&marks, "state_received", name, t)),
    );
    for (step, what) in [
        ("policy_fired", "policy fired (evaluated)"),
        ("queued", "action queued (stored: pending)"),
        (
            "dispatched",
            "action handed to the executor (stored: running)",
        ),
        ("executor_called", "executor called (its task runs)"),
        ("inspected", "container inspected by the executor"),
        ("start_returned", "Docker's start API call returned"),
        (
            "executor_returned",
            "executor returned (after its settle check)",
        ),
    ] {
        timeline.add(what, of_action(&marks, step, &id));
    }
    let completed = api.completed_at_us(&id).await?;
    timeline.add("completed, in the audit trail (REST, ms)", completed);
    Ok(())
}

/// The coordinator's REST API.
struct Api<'a> {
    client: &'a reqwest::Client,
    http: &'a str,
    token: Option<&'a str>,
}

impl Api<'_> {
    /// Waits until the agent is online with its one policy loaded.
    async fn wait_ready(&self, agent: &mut Proc, dir: &Path) -> Result<(), BenchError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            stack::check_alive("restart", agent)?;
            let hosts = get_json(
                self.client,
                self.token,
                &format!("{}/api/v1/hosts", self.http),
            )
            .await;
            let runner = get_json(
                self.client,
                self.token,
                &format!("{}/api/v1/policies/runner/status", self.http),
            )
            .await;
            let online = hosts
                .as_ref()
                .is_ok_and(|h| host_entry(h, HOST).is_some_and(|e| e["online"] == true));
            let loaded = runner.as_ref().is_ok_and(|r| {
                r["runner"]["agents"].as_array().is_some_and(|a| {
                    a.iter()
                        .any(|e| e["host"] == HOST && e["policies_loaded"].as_u64() == Some(1))
                })
            });
            if online && loaded {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BenchError::Failed(format!(
                    "restart: the agent was not online with its policy loaded 30 s after \
                     starting (hosts: {}; runner: {}); see the logs in {}",
                    hosts.map_or_else(|e| e, |v| v.to_string()),
                    runner.map_or_else(|e| e, |v| v.to_string()),
                    dir.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// When action `id` completed, by its audit transitions (`None` if it has not yet,
    /// after 10 s of asking).
    async fn completed_at_us(&self, id: &str) -> Result<Option<i64>, String> {
        let url = format!("{}/api/v1/actions/{id}", self.http);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(action) = get_json(self.client, self.token, &url).await {
                if let Some(at) = completed_at(&action) {
                    return Ok(Some(at));
                }
                if matches!(action["status"].as_str(), Some("failed" | "dead_letter")) {
                    return Err(format!("action {id} failed: {action}"));
                }
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The time of an action's `completed` transition, µs.
fn completed_at(action: &Value) -> Option<i64> {
    action["transitions"]
        .as_array()?
        .iter()
        .find(|t| t["state"] == "completed")
        .and_then(|t| t["at"].as_str())
        .and_then(engine::rfc3339_us)
}

impl Run {
    /// The figures and the printed timelines.
    fn figures(&self, rounds: &[Round]) -> Result<Vec<Figure>, BenchError> {
        let Run {
            uptime,
            took,
            engine_version,
            agent_program,
            actions,
        } = self;
        let of = |who| -> Vec<&Round> {
            let mut r: Vec<&Round> = rounds.iter().filter(|r| r.who == who).collect();
            r.sort_by(|a, b| a.running_ms.total_cmp(&b.running_ms));
            r
        };
        let (vigil, docker) = (of(Who::Vigil), of(Who::Docker));
        let (Some(v_med), Some(v_max), Some(d_med), Some(d_max)) =
            (median(&vigil), vigil.last(), median(&docker), docker.last())
        else {
            return Err(BenchError::Failed("restart: no rounds measured".into()));
        };
        let values = |r: &[&Round]| {
            r.iter()
                .map(|r| format!("{:.0}", r.running_ms))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let note = format!(
            "{} alternating rounds in {:.0} s ({} each), each container up {} s before its \
         SIGKILL (kill(2) on its main process from the host); ms from the kill to the new \
         State.StartedAt; Docker {engine_version}; agent {}. Sorted, Vigil: {}; Docker: {}.",
            rounds.len(),
            took.as_secs_f64(),
            vigil.len(),
            uptime.as_secs(),
            agent_program.display(),
            values(&vigil),
            values(&docker),
        );
        let mut note = note;
        if *actions != vigil.len() {
            let _ = write!(
                note,
                " WARNING: the policy took {actions} actions for {} kills of its container.",
                vigil.len()
            );
        }
        let figures = vec![
            Figure {
                name: "killed container → running, Vigil agent, median".into(),
                value: v_med.running_ms,
                unit: "ms",
                baseline: Some(Baseline {
                    name: "Docker --restart=always, median".into(),
                    value: d_med.running_ms,
                }),
                note: note.clone(),
            },
            Figure {
                name: "killed container → running, Vigil agent, max".into(),
                value: v_max.running_ms,
                unit: "ms",
                baseline: Some(Baseline {
                    name: "Docker --restart=always, max".into(),
                    value: d_max.running_ms,
                }),
                note: String::new(),
            },
        ];
        let mut out = String::new();
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
        let (med_ratio, max_ratio) = (
            ratio(v_med.running_ms, d_med.running_ms),
            ratio(v_max.running_ms, d_max.running_ms),
        );
        let verdict = |r: f64, goal: f64| if r <= goal { "met" } else { "NOT met" };
        let _ = writeln!(
            out,
            "restart goal: median {med_ratio:.2}x of Docker's (goal ≤ 0.9x: {}), max \
         {max_ratio:.2}x (goal ≤ 1.0x: {})",
            verdict(med_ratio, 0.9),
            verdict(max_ratio, 1.0)
        );
        for (label, round) in [
            ("Vigil's median round", v_med),
            ("Vigil's worst round", v_max),
            ("Docker's median round", d_med),
            ("Docker's worst round", d_max),
        ] {
            let _ = writeln!(
                out,
                "restart timeline, {label} ({:.1} ms), ms after the kill (+ms since the line \
             before):",
                round.running_ms
            );
            out.push_str(&round.timeline.render("    "));
        }
        print!("{out}");
        Ok(figures)
    }
}

/// The middle round (the upper one of an even count).
fn median<'a>(sorted: &[&'a Round]) -> Option<&'a Round> {
    sorted.get(sorted.len() / 2).copied()
}

/// The policy the agent runs: restart container `name` whenever it is not running.
fn policy_yaml(name: &str) -> String {
    format!(
        "# Generated by `vigil-sim bench --part restart`.\n\
         policies:\n  \
         - name: restart-when-not-running\n    \
           description: restart the benchmark's container as soon as it is not running\n    \
           target: \"{name}\"\n    \
           severity: critical\n    \
           condition: {{type: container_state, expect: running}}\n    \
           auto_remediate: true\n    \
           action: restart\n    \
           flap: {{max_actions: 1000, within: 1m, reset_after: 1s}}\n"
    )
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn write_file(path: &PathBuf, text: &str) -> Result<(), BenchError> {
    std::fs::write(path, text).map_err(|source| {
        BenchError::Proc(vigil_testkit::KitError::Write {
            path: path.clone(),
            source,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_is_valid_and_restarts_the_one_container() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("p.yaml"),
            policy_yaml("vigil-bench-x-vigil"),
        )
        .unwrap();
        let policies = vigil_shared::policy::load::load_dir(dir.path()).unwrap();
        assert_eq!(policies.len(), 1);
        let p = &policies[0];
        assert!(p.auto_remediate && p.target.matches("vigil-bench-x-vigil"));
        assert!(!p.target.matches("vigil-bench-x-docker"));
        assert_eq!(p.flap.max_actions, 1000);
        assert_eq!(p.cooldown, Duration::ZERO);
    }

    #[test]
    fn an_actions_completed_transition_is_found() {
        let action = serde_json::json!({"transitions": [
            {"state": "pending", "at": "2026-12-03T21:47:50.100Z"},
            {"state": "completed", "at": "2026-12-03T21:47:50.600Z"},
        ]});
        let pending = engine::rfc3339_us("2026-12-03T21:47:50.100Z").unwrap();
        assert_eq!(completed_at(&action), Some(pending + 500_000));
        assert_eq!(completed_at(&serde_json::json!({"transitions": 3})), None);
    }
}
