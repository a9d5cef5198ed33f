//! `vigil-coordinator agent list|revoke`: enrolled agents, managed on the coordinator's
//! machine (like `token`, it opens the data dir's store directly). A revocation applies
//! to the running coordinator's ingest within a second and to broker logins at once.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use vigil_shared::time::{now_ms, to_rfc3339};

use crate::config::DEFAULT_DATA_DIR;
use crate::security::agents;

/// `agent` arguments.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The coordinator's data dir.
    #[arg(long, env = "VIGIL_DATA_DIR", default_value = DEFAULT_DATA_DIR, global = true)]
    pub data_dir: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: AgentCommand,
}

/// The agent subcommands.
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// List enrolled agents (host, labels, when enrolled and revoked).
    List,
    /// Enroll HOST without a join token and write its identity file (mode 0600) into
    /// --identity-dir, for provisioning tools to copy to the host's data dir
    /// (/var/lib/vigil). Keeps an identity there that is still valid.
    Add {
        /// The host name.
        host: String,
        /// Where to write `identity.json`.
        #[arg(long)]
        identity_dir: PathBuf,
    },
    /// Revoke a host's identity: its messages and MQTT logins are refused from now on
    /// (it may enroll again with a new join token).
    Revoke {
        /// The host name.
        host: String,
    },
}

/// Runs an `agent` subcommand.
pub fn run(args: AgentArgs) -> Result<(), String> {
    match args.command {
        AgentCommand::Add { host, identity_dir } => {
            // Provisioning may come before the coordinator's first start: create the store.
            let store = crate::cli::tokens::open_or_create(&args.data_dir)?;
            let key_file = crate::bundles::keys::public_path(
                &args.data_dir.join(crate::bundles::keys::DEFAULT_KEY_FILE),
            );
            let coordinator_key = std::fs::read_to_string(&key_file).ok();
            crate::security::local_agent::ensure_identity(
                &store,
                &identity_dir,
                &host,
                coordinator_key.as_deref().map(str::trim),
            )?;
            println!(
                "`{host}` is enrolled; its identity is {}",
                vigil_shared::enrollment::Identity::path(&identity_dir).display()
            );
            Ok(())
        }
        AgentCommand::List => {
            let store = crate::cli::tokens::open(&args.data_dir)?;
            println!(
                "{:<28} {:<28} {:<28} {:<10} labels",
                "host", "enrolled", "revoked", "via"
            );
            for r in store.agents().map_err(|e| e.to_string())? {
                let labels: Vec<String> =
                    r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!(
                    "{:<28} {:<28} {:<28} {:<10} {}",
                    r.host,
                    to_rfc3339(r.enrolled_ms),
                    r.revoked_ms.map(to_rfc3339).unwrap_or_else(|| "-".into()),
                    r.join_token,
                    labels.join(",")
                );
            }
            Ok(())
        }
        AgentCommand::Revoke { host } => {
            let store = crate::cli::tokens::open(&args.data_dir)?;
            let record = agents::revoke(&store, &host, now_ms()).map_err(|e| e.to_string())?;
            println!(
                "revoked `{}` (at {})",
                record.host,
                record.revoked_ms.map(to_rfc3339).unwrap_or_default()
            );
            Ok(())
        }
    }
}
