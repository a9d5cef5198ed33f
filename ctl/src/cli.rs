//! `vigilctl`'s command line (clap): where the coordinator is and how to log in (global
//! flags, each also a `VIGIL_…` variable), and one subcommand per thing to look at or do.
//! The man page and the shell completions are generated from these definitions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The coordinator's REST address when neither `--url` nor `VIGIL_URL` names one (the
/// coordinator's default `--listen`).
pub const DEFAULT_URL: &str = "http://127.0.0.1:8000";

/// Vigil command-line client: lists hosts, actions, violations and drift from a running
/// coordinator's REST API, follows new actions live, creates manual actions and pauses or
/// resumes a host's remediation. Tables for people; `--json` prints the API's JSON.
#[derive(Debug, Parser)]
#[command(name = "vigilctl", version, about)]
pub struct Cli {
    /// Where and how to reach the coordinator.
    #[command(flatten)]
    pub connection: Connection,

    /// Print the JSON the API returns instead of a table (one document per line).
    #[arg(long, global = true)]
    pub json: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Where the coordinator is and how to log in.
#[derive(Debug, Args)]
pub struct Connection {
    /// The coordinator's REST API, `http://HOST:PORT` or `https://HOST:PORT`.
    #[arg(long, env = "VIGIL_URL", default_value = DEFAULT_URL, global = true)]
    pub url: String,

    /// A file holding the REST API token (e.g. the coordinator's `admin.token`); used
    /// when `VIGIL_TOKEN` is unset.
    #[arg(long, env = "VIGIL_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,

    /// The CA certificate (PEM) to trust for an `https://` coordinator (e.g. the
    /// `tls/ca.pem` of `vigil-coordinator certs init`); without it, the public roots.
    #[arg(long, env = "VIGIL_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,

    /// Give up on a request after this many seconds (not on `--follow`'s stream).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600), global = true)]
    pub timeout: u64,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every host: state, agent version, last contact, labels, bundles.
    Hosts,
    /// The action audit trail, newest first; with --follow, then new action transitions
    /// live from the event stream until interrupted.
    Actions(ActionsArgs),
    /// The policy audit trail (fired, act, verified, deferred, escalated, resolved),
    /// newest first.
    Violations(ViolationsArgs),
    /// Per host and bundle group: the applied and the published bundle version.
    Drift,
    /// Create a manual action, sent to the host's agent (which applies its own allowlist).
    Action(NewActionArgs),
    /// Pause a host's remediation (the kill switch): its agent runs no action until
    /// resumed.
    Pause(HostArg),
    /// Resume a paused host's remediation.
    Resume(HostArg),
}

/// `actions` filters, as the API has them.
#[derive(Debug, Args)]
pub struct ActionsArgs {
    /// Only this host's actions.
    #[arg(long)]
    pub host: Option<String>,
    /// Only actions in this status (pending, running, completed, failed, …).
    #[arg(long)]
    pub status: Option<String>,
    /// Only actions of this policy.
    #[arg(long)]
    pub policy: Option<String>,
    /// Only actions on this target.
    #[arg(long)]
    pub target: Option<String>,
    /// Only actions since this time (RFC 3339 or epoch milliseconds).
    #[arg(long)]
    pub since: Option<String>,
    /// At most this many actions (the API's default without it).
    #[arg(long)]
    pub limit: Option<u32>,
    /// After the listing, print new action transitions as they happen (Ctrl-C stops).
    #[arg(long, short = 'f')]
    pub follow: bool,
}

/// `violations` filters, as the API has them.
#[derive(Debug, Args)]
pub struct ViolationsArgs {
    /// Only this host's decisions.
    #[arg(long)]
    pub host: Option<String>,
    /// Only this policy's decisions.
    #[arg(long)]
    pub policy: Option<String>,
    /// Only decisions on this target.
    #[arg(long)]
    pub target: Option<String>,
    /// Only this kind (fired, act, verified, deferred, escalated, resolved).
    #[arg(long)]
    pub kind: Option<String>,
    /// Only decisions since this time (RFC 3339 or epoch milliseconds).
    #[arg(long)]
    pub since: Option<String>,
    /// At most this many (1–1000; 100 without it).
    #[arg(long)]
    pub limit: Option<u32>,
}

/// A manual action.
#[derive(Debug, Args)]
pub struct NewActionArgs {
    /// The host whose agent runs it.
    #[arg(long)]
    pub host: String,
    /// What it acts on (a unit, a container, …).
    #[arg(long)]
    pub target: String,
    /// What to do (restart, start, stop, exec, notify, …).
    #[arg(long)]
    pub action: String,
    /// An executor parameter `NAME=VALUE` (repeatable; VALUE is read as JSON when it is
    /// JSON, e.g. `timeout_seconds=30`, else taken as a string).
    #[arg(long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// Words for the audit trail.
    #[arg(long)]
    pub details: Option<String>,
    /// Record the action without running it.
    #[arg(long)]
    pub dry_run: bool,
}

/// A host name.
#[derive(Debug, Args)]
pub struct HostArg {
    /// The host.
    pub host: String,
}
