//! `vigil-coordinator token create|list|revoke`: REST API tokens, managed on the
//! coordinator's machine (it opens the data dir's LMDB store directly; safe while the
//! coordinator runs — LMDB serialises writers across processes, and a revocation applies
//! to the running coordinator's next request).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use vigil_shared::time::{now_ms, to_rfc3339};

use crate::config::{self, DEFAULT_DATA_DIR};
use crate::store::{MapSize, Store};
use crate::tokens::{self, Role};

/// `token` arguments.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The coordinator's data dir.
    #[arg(long, env = "VIGIL_DATA_DIR", default_value = DEFAULT_DATA_DIR, global = true)]
    pub data_dir: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: TokenCommand,
}

/// The token subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token and print it (it is shown only this once).
    Create {
        /// What it may do: viewer, operator or admin.
        #[arg(long)]
        role: Role,
        /// Who or what it is for.
        #[arg(long)]
        name: String,
    },
    /// List tokens (ids, names, roles; never the tokens themselves).
    List,
    /// Revoke every token with this id or name; applies at once.
    Revoke {
        /// The token's id (from `list`) or name.
        which: String,
    },
}

/// Runs a `token` subcommand.
pub fn run(args: TokenArgs) -> Result<(), String> {
    let store = open(&args.data_dir)?;
    match args.command {
        TokenCommand::Create { role, name } => {
            if name.trim().is_empty() {
                return Err("--name must not be empty".into());
            }
            let token = tokens::generate();
            let digest = tokens::hash(&token);
            let record = tokens::record(&digest, &name, role, now_ms());
            store
                .put_token(&digest, &record)
                .map_err(|e| e.to_string())?;
            eprintln!(
                "created token {} `{}` ({role}); it is not shown again:",
                record.id, name
            );
            println!("{token}");
            Ok(())
        }
        TokenCommand::List => {
            println!(
                "{:<10} {:<9} {:<28} {:<28} name",
                "id", "role", "created", "revoked"
            );
            for r in store.tokens().map_err(|e| e.to_string())? {
                println!(
                    "{:<10} {:<9} {:<28} {:<28} {}",
                    r.id,
                    r.role,
                    to_rfc3339(r.created_ms),
                    r.revoked_ms.map(to_rfc3339).unwrap_or_else(|| "-".into()),
                    r.name
                );
            }
            Ok(())
        }
        TokenCommand::Revoke { which } => {
            let revoked = store
                .revoke_tokens(&which, now_ms())
                .map_err(|e| e.to_string())?;
            if revoked.is_empty() {
                return Err(format!("no active token has id or name `{which}`"));
            }
            for r in revoked {
                println!("revoked {} `{}` ({})", r.id, r.name, r.role);
            }
            Ok(())
        }
    }
}

fn open(data_dir: &std::path::Path) -> Result<Store, String> {
    let lmdb = data_dir.join("lmdb");
    if !lmdb.is_dir() {
        return Err(format!(
            "{} holds no coordinator store (start the coordinator once, or pass --data-dir)",
            data_dir.display()
        ));
    }
    let size = |text: &str| config::parse_size(text).unwrap_or(1 << 30);
    Store::open(
        &lmdb,
        MapSize {
            initial: size(config::DEFAULT_DB_MAP_SIZE),
            max: size(config::DEFAULT_DB_MAX_SIZE),
        },
    )
    .map_err(|e| format!("cannot open the store in {}: {e}", lmdb.display()))
}
