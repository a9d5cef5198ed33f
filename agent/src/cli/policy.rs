//! `vigil-agent policy check` and `vigil-agent policy test`: offline validation and
//! dry-runs of policy files, with exit codes for CI pipelines.

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::json;
use vigil_shared::policy::load::{self, LoadError};
use vigil_shared::policy::{eval, expr, Observations, Policy, StateKind, StateReading};
use vigil_shared::validate;
use vigil_shared::wire::Sample;

/// Exit code: everything valid, nothing fires.
pub const EXIT_OK: u8 = 0;
/// Exit code: a policy file is invalid.
pub const EXIT_INVALID: u8 = 1;
/// Exit code: bad arguments.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: `test` found policies that fire.
pub const EXIT_FIRES: u8 = 3;

/// Loads files and directories as one set (names unique across all of them).
pub fn load_paths(paths: &[PathBuf]) -> Result<Vec<Policy>, LoadError> {
    let mut all: Vec<(Policy, String)> = Vec::new();
    for path in paths {
        let (policies, origin) = if path.is_dir() {
            (load::load_dir(path)?, path.display().to_string())
        } else {
            (load::load_file(path)?, path.display().to_string())
        };
        for policy in policies {
            if let Some((_, other)) = all.iter().find(|(p, _)| p.name == policy.name) {
                return Err(LoadError::Duplicate {
                    file: origin.clone(),
                    name: policy.name.clone(),
                    other: other.clone(),
                });
            }
            all.push((policy, origin.clone()));
        }
    }
    Ok(all.into_iter().map(|(p, _)| p).collect())
}

/// `policy check`. An action that runs only through an agent's mapping (`drain-pod`,
/// `rebalance`, `snapshot`) is a warning, not an error: it loads, and is recorded as not
/// runnable on agents that do not map it.
pub fn check(paths: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    for path in paths {
        match load_paths(std::slice::from_ref(path)) {
            Ok(policies) => {
                println!("ok: {} ({} policies)", path.display(), policies.len());
                for policy in &policies {
                    for warning in policy.unmapped_actions(|_| false) {
                        println!("warning: {}: {warning}", path.display());
                    }
                }
            }
            Err(e) => {
                ok = false;
                eprintln!("invalid: {e}");
            }
        }
    }
    if ok && paths.len() > 1 {
        if let Err(e) = load_paths(paths) {
            eprintln!("invalid: {e}");
            ok = false;
        }
    }
    ExitCode::from(if ok { EXIT_OK } else { EXIT_INVALID })
}

/// `policy test`.
pub fn test(
    paths: &[PathBuf],
    metrics: &[String],
    states: &[String],
    target: Option<&str>,
    as_json: bool,
) -> ExitCode {
    let policies = match load_paths(paths) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("invalid: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let subject = target.unwrap_or("sandbox");
    let now = vigil_shared::time::now_ms();
    let observations = match observations(subject, metrics, states, now) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("vigil-agent policy test: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut fired = 0;
    let mut report = Vec::new();
    for policy in policies
        .iter()
        .filter(|p| p.enabled && p.target.matches(subject))
    {
        let explanation = eval::explain(&policy.condition, &observations, subject, now);
        if explanation.held {
            fired += 1;
        }
        let actions: Vec<String> = policy.actions.iter().map(|a| a.written.clone()).collect();
        if as_json {
            report.push(json!({
                "policy": policy.name,
                "fires": explanation.held,
                "severity": policy.severity.as_str(),
                "for": policy.hold.map(expr::format_hold),
                "actions": actions,
                "auto_remediate": policy.auto_remediate,
                "dry_run": policy.dry_run,
                "explanation": explanation,
            }));
        } else if explanation.held {
            let hold = policy
                .hold
                .map(|h| format!(" once held for {}", expr::format_hold(h)))
                .unwrap_or_default();
            let acting = match (policy.auto_remediate, actions.is_empty()) {
                (true, false) => format!(" -> {}", actions.join(", then ")),
                (false, false) => format!(
                    " (would {}; auto_remediate is off)",
                    actions.join(", then ")
                ),
                _ => String::new(),
            };
            println!(
                "FIRES {} [{}]{hold}: {}{acting}",
                policy.name,
                policy.severity.as_str(),
                explanation.summary()
            );
        } else {
            println!(
                "ok    {}: {} does not hold",
                policy.name, explanation.condition
            );
        }
    }
    if as_json {
        println!("{}", serde_json::Value::Array(report));
    }
    ExitCode::from(if fired > 0 { EXIT_FIRES } else { EXIT_OK })
}

/// Builds observations from `name=value` metrics and `kind:name=state` readings.
fn observations(
    subject: &str,
    metrics: &[String],
    states: &[String],
    now: i64,
) -> Result<Observations, String> {
    let mut obs = Observations::new(now);
    for text in metrics {
        let (name, value) = text
            .split_once('=')
            .ok_or_else(|| format!("--metric `{text}` is not name=value"))?;
        validate::metric_name(name).map_err(|e| format!("--metric `{text}`: {e}"))?;
        let value: f64 = value
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite())
            .ok_or_else(|| format!("--metric `{text}`: `{value}` is not a finite number"))?;
        obs.record(
            subject,
            &Sample {
                name: name.to_string(),
                value,
                ts_ms: now,
                tags: Vec::new(),
            },
        );
    }
    for text in states {
        let (kind, rest) = text
            .split_once(':')
            .ok_or_else(|| format!("--state `{text}` is not kind:name=state"))?;
        let (name, state) = rest
            .rsplit_once('=')
            .ok_or_else(|| format!("--state `{text}` is not kind:name=state"))?;
        let kind = match kind {
            "unit" => StateKind::Unit,
            "container" => StateKind::Container,
            "process" => StateKind::Process,
            "http" => StateKind::Http,
            "tcp" => StateKind::Tcp,
            other => return Err(format!("--state `{text}`: unknown kind `{other}`")),
        };
        let failures = if matches!(kind, StateKind::Http | StateKind::Tcp) {
            state
                .parse::<u32>()
                .map_err(|_| format!("--state `{text}`: give the failures in a row as a number"))?
        } else {
            0
        };
        let (state, health) = match state.split_once('/') {
            Some((s, h)) => (s, Some(h.to_string())),
            None => (state, None),
        };
        obs.record_state(
            kind,
            name,
            StateReading {
                state: state.to_string(),
                health,
                consecutive_failures: failures,
                detail: None,
                at_ms: now,
            },
        );
    }
    Ok(obs)
}
