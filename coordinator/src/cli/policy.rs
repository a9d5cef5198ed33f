//! `vigil-coordinator policy backtest FILE|DIR`: what a policy file (or a directory of
//! them) would have done on the stored metric history, replayed through the agents'
//! engine ([`crate::policies::backtest`]). Offline against a data dir (`--data-dir`,
//! read while the coordinator runs, as `token` does), or through a running coordinator's
//! `POST /api/v1/policies/backtest` (`--api URL`, with a viewer token). Prints a table,
//! or the report as JSON (`--json`, the REST answer).

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use vigil_shared::policy::load::{check_specs, parse_specs};
use vigil_shared::policy::{Policy, PolicySpec};
use vigil_shared::time::now_ms;

use crate::cli::progress;
use crate::config::DEFAULT_DATA_DIR;
use crate::policies::backtest::{self, Backtest, BacktestReport, HostSelector};

/// `policy` arguments.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: PolicyCommand,
}

/// The policy subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Replay stored metric history through the agents' policy engine: when and where
    /// each policy would have fired, acted, been deferred by its budget, or escalated.
    Backtest(BacktestArgs),
}

/// `policy backtest` arguments.
#[derive(Debug, Args)]
pub struct BacktestArgs {
    /// A policy file, or a directory of them (`*.yaml`, `*.yml`).
    pub path: PathBuf,
    /// Which hosts: all, a host name, a glob such as web-*, or labels role=web,env=prod.
    #[arg(long, default_value = "all")]
    pub hosts: String,
    /// How far back from now, at most 31d.
    #[arg(long, default_value = "7d")]
    pub since: String,
    /// How many events to list, at most 1000.
    #[arg(long, default_value_t = backtest::DEFAULT_EVENTS)]
    pub limit: usize,
    /// The coordinator's data dir, read directly (not with --api).
    #[arg(long, env = "VIGIL_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// A running coordinator's URL (http:// or https://) to ask instead of a data dir.
    #[arg(long, env = "VIGIL_API", value_name = "URL")]
    pub api: Option<String>,
    /// A REST token (viewer or above), with --api.
    #[arg(long, env = "VIGIL_TOKEN", hide_env_values = true, requires = "api")]
    pub token: Option<String>,
    /// A CA certificate (PEM) to trust for an https:// --api.
    #[arg(long, value_name = "FILE", requires = "api")]
    pub ca_file: Option<PathBuf>,
    /// Print the report as JSON (the REST answer) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs a `policy` subcommand; `Err` is printed and exits 1.
pub async fn run(args: PolicyArgs) -> Result<(), String> {
    match args.command {
        PolicyCommand::Backtest(args) => {
            let report = match &args.api {
                Some(url) => {
                    let spinner = progress::spinner("backtest running on the coordinator");
                    let report = remote(&args, url).await;
                    spinner.finish_and_clear();
                    report?
                }
                None => {
                    let local = local(&args)?;
                    let data_dir = args.data_dir.clone();
                    tokio::task::spawn_blocking(move || {
                        let store = crate::cli::tokens::open(&data_dir)?;
                        let bar = progress::bar(0, "hosts");
                        bar.set_message("replaying");
                        let report =
                            backtest::run_with_progress(&store, &local, now_ms(), |done, hosts| {
                                bar.set_length(hosts as u64);
                                bar.set_position(done as u64);
                            });
                        bar.finish_and_clear();
                        report.map_err(|e| e.to_string())
                    })
                    .await
                    .map_err(|e| e.to_string())??
                }
            };
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
                );
            } else {
                print!("{}", table(&report));
            }
            Ok(())
        }
    }
}

/// The specs of a policy file or of every policy file of a directory, checked (names
/// unique across files), with the policies they give.
pub fn read_policies(path: &Path) -> Result<(Vec<PolicySpec>, Vec<Policy>), String> {
    if path.is_dir() {
        let loaded = crate::policies::files::load_dir(path).map_err(|e| e.to_string())?;
        return Ok(loaded.into_iter().map(|p| (p.spec, p.policy)).unzip());
    }
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{file}: {e}"))?;
    let specs = parse_specs(&text, &file).map_err(|e| e.to_string())?;
    let policies = check_specs(&specs, &file).map_err(|e| e.to_string())?;
    Ok((specs, policies))
}

fn local(args: &BacktestArgs) -> Result<Backtest, String> {
    let (_, policies) = read_policies(&args.path)?;
    Ok(Backtest {
        policies,
        hosts: HostSelector::parse(&args.hosts).map_err(|e| format!("--hosts: {e}"))?,
        since: backtest::parse_since(&args.since).map_err(|e| format!("--since: {e}"))?,
        events: args.limit,
    })
}

async fn remote(args: &BacktestArgs, url: &str) -> Result<BacktestReport, String> {
    let (specs, _) = read_policies(&args.path)?;
    let mut client = reqwest::Client::builder();
    if let Some(ca) = &args.ca_file {
        let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| format!("{}: not a PEM certificate: {e}", ca.display()))?;
        client = client.add_root_certificate(cert);
    }
    let client = client.build().map_err(|e| e.to_string())?;
    let endpoint = format!("{}/api/v1/policies/backtest", url.trim_end_matches('/'));
    let mut request = client.post(&endpoint).json(&serde_json::json!({
        "policies": specs,
        "hosts": args.hosts,
        "since": args.since,
        "limit": args.limit,
    }));
    if let Some(token) = &args.token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("{endpoint}: {e}"))?;
    let status = response.status();
    let body: serde_json::Value = response
        .json()
        .await
        .map_err(|e| format!("{endpoint}: answer is not JSON: {e}"))?;
    if !status.is_success() {
        let field = body["field"]
            .as_str()
            .map(|f| format!(" (field `{f}`)"))
            .unwrap_or_default();
        return Err(format!(
            "{endpoint}: {status}: {}{field}",
            body["error"].as_str().unwrap_or("no reason given")
        ));
    }
    serde_json::from_value(body).map_err(|e| format!("{endpoint}: unexpected answer: {e}"))
}

/// The report as a table for people.
pub fn table(report: &BacktestReport) -> String {
    let mut out = format!(
        "backtest {} .. {}: {} host(s), {} ticks, {} stored points\n\n",
        report.from,
        report.to,
        report.hosts.len(),
        report.ticks,
        report.points
    );
    let width = report
        .policies
        .iter()
        .map(|p| p.policy.len())
        .max()
        .unwrap_or(6)
        .max(6);
    out.push_str(&format!(
        "{:<width$}  {:>6}  {:>6}  {:>8}  {:>7}  {:>8}  {:>5}  {:>9}\n",
        "policy", "fired", "acted", "deferred", "dry_run", "cooldown", "flap", "escalated"
    ));
    for p in &report.policies {
        out.push_str(&format!(
            "{:<width$}  {:>6}  {:>6}  {:>8}  {:>7}  {:>8}  {:>5}  {:>9}{}\n",
            p.policy,
            p.fired,
            p.acted,
            p.deferred,
            p.dry_run,
            p.cooldown,
            p.flap,
            p.escalated,
            if p.reads_states {
                "  (reads unit/container/process/check states: not in history, never hold here)"
            } else {
                ""
            }
        ));
    }
    out.push_str(&format!(
        "\nactions that would have run: {}\n",
        report.actions
    ));
    if !report.events.is_empty() {
        out.push_str(&format!(
            "\nfirst {} of {} events:\n",
            report.events.len(),
            report.events_total
        ));
        for e in &report.events {
            out.push_str(&format!(
                "{}  {:<9}  {}  {}  {}{}\n",
                e.at,
                e.kind,
                e.host,
                e.subject,
                e.policy,
                e.detail
                    .as_deref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            ));
        }
    }
    out
}
