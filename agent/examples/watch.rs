//! Runs one watcher and prints every state update as one JSON line on stdout, for trying
//! the watchers out by hand and for the end-to-end tests (which run it inside a container
//! with systemd as PID 1).
//!
//! ```text
//! watch docker [--socket PATH] NAME...   # container names or globs (web-*)
//! watch systemd UNIT...                  # unit names (nginx.service) or globs
//! ```
//!
//! Each line looks like
//! `{"kind":"container","name":"web-1","state":"exited","health":null,"detail":"exit code 137","at_ms":1763920000000}`.
//! Logs go to stderr; `VIGIL_LOG` sets the level (default `info`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use tokio::sync::{mpsc, watch};
use tracing_subscriber::EnvFilter;
use vigil_agent::watch::{docker, systemd, StateUpdate};

/// How to use this program.
const USAGE: &str = "usage: watch docker [--socket PATH] NAME... | watch systemd UNIT...";

/// Which watcher to run, and on what.
enum Watcher {
    /// Docker containers, over `socket` (or the default).
    Docker {
        socket: Option<PathBuf>,
        names: Vec<String>,
    },
    /// systemd units.
    Systemd { names: Vec<String> },
}

/// Reads the command line.
fn parse(mut args: impl Iterator<Item = String>) -> Result<Watcher, String> {
    let kind = args.next().ok_or("which watcher: docker or systemd")?;
    let mut socket = None;
    let mut names = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--socket" if kind == "docker" => {
                socket = Some(PathBuf::from(args.next().ok_or("--socket needs a path")?));
            }
            "-h" | "--help" => return Err(String::new()),
            _ => names.push(arg),
        }
    }
    if names.is_empty() {
        return Err("name at least one thing to watch".into());
    }
    match kind.as_str() {
        "docker" => Ok(Watcher::Docker { socket, names }),
        "systemd" => Ok(Watcher::Systemd { names }),
        other => Err(format!("unknown watcher `{other}`")),
    }
}

/// One update as a JSON line.
fn json_line(update: &StateUpdate) -> String {
    serde_json::json!({
        "kind": update.kind.as_str(),
        "name": update.name,
        "state": update.reading.state,
        "health": update.reading.health,
        "detail": update.reading.detail,
        "at_ms": update.reading.at_ms,
    })
    .to_string()
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_env("VIGIL_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let watcher = match parse(std::env::args().skip(1)) {
        Ok(w) => w,
        Err(why) => {
            if !why.is_empty() {
                eprintln!("watch: {why}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let (updates, mut received) = mpsc::channel(256);
    let names = match &watcher {
        Watcher::Docker { names, .. } | Watcher::Systemd { names } => names.clone(),
    };
    // Kept alive for as long as we run: a dropped sender stops the watcher.
    let (_names_tx, names_rx) = watch::channel(names);
    let task = match watcher {
        Watcher::Docker { socket, .. } => tokio::spawn(docker::run(names_rx, updates, socket)),
        Watcher::Systemd { .. } => tokio::spawn(systemd::run(names_rx, updates)),
    };
    let mut stdout = std::io::stdout();
    loop {
        tokio::select! {
            update = received.recv() => {
                let Some(update) = update else { break };
                // Flushed per line: a reader on a pipe sees each update at once.
                if writeln!(stdout, "{}", json_line(&update)).and_then(|()| stdout.flush()).is_err() {
                    break; // stdout closed
                }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    task.abort();
    ExitCode::SUCCESS
}
