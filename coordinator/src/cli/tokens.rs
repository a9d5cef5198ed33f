//! `vigil-coordinator token create|list|revoke`: REST API tokens and agent join tokens
//! (`--join`, see [`crate::security::agents`]), managed on the
//! coordinator's machine (it opens the data dir's LMDB store directly; safe while the
//! coordinator runs — LMDB serialises writers across processes, and a revocation applies
//! to the running coordinator's next request).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use vigil_shared::time::{now_ms, to_rfc3339};

use crate::config::{self, DEFAULT_DATA_DIR};
use crate::security::agents;
use crate::security::tokens::{self, Role};
use crate::store::{MapSize, Store};

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
        /// What it may do: viewer, operator or admin (REST tokens).
        #[arg(long, required_unless_present = "join")]
        role: Option<Role>,
        /// Make an agent join token instead: agents enroll with it once
        /// (`vigil-agent --join-token …`).
        #[arg(long, conflicts_with = "role")]
        join: bool,
        /// Who or what it is for [default for join tokens: join]
        #[arg(long)]
        name: Option<String>,
        /// Join tokens: a label every agent enrolling with it gets, key=value; repeat.
        #[arg(long = "label", value_name = "KEY=VALUE", requires = "join")]
        labels: Vec<String>,
        /// Join tokens: the only host name it may enroll.
        #[arg(long, requires = "join")]
        host: Option<String>,
        /// Join tokens: how many agents may enroll with it.
        #[arg(long, default_value_t = 1, requires = "join")]
        uses: u32,
        /// Join tokens: how long it is valid (at most ten years).
        #[arg(long, default_value = "24h", requires = "join")]
        ttl: String,
    },
    /// List tokens (ids, names, roles; never the tokens themselves), then join tokens.
    List,
    /// Revoke every token (REST or join) with this id or name; applies at once.
    Revoke {
        /// The token's id (from `list`) or name.
        which: String,
    },
}

/// Runs a `token` subcommand.
pub fn run(args: TokenArgs) -> Result<(), String> {
    let store = open(&args.data_dir)?;
    match args.command {
        TokenCommand::Create {
            role: _,
            join: true,
            name,
            labels,
            host,
            uses,
            ttl,
        } => {
            let ttl = humantime::parse_duration(&ttl)
                .map_err(|e| format!("--ttl `{ttl}` is not a duration like 24h: {e}"))?;
            let ttl_ms = vigil_shared::validate::ttl("--ttl", ttl).map_err(|e| e.to_string())?;
            let labels = labels
                .iter()
                .map(|pair| {
                    pair.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .ok_or_else(|| format!("--label `{pair}` is not key=value"))
                })
                .collect::<Result<_, _>>()?;
            let spec = agents::JoinTokenSpec {
                name: name.unwrap_or_else(|| "join".into()),
                labels,
                host,
                uses,
                ttl_ms,
            };
            let (token, record) =
                agents::create_join_token(&store, &spec, now_ms()).map_err(|e| e.to_string())?;
            eprintln!(
                "created join token {} `{}` ({} use(s), expires {}); it is not shown again:",
                record.id,
                record.name,
                record.uses_left,
                to_rfc3339(record.expires_ms)
            );
            println!("{token}");
            Ok(())
        }
        TokenCommand::Create { role, name, .. } => {
            let role = role.ok_or("--role is required (or --join for an agent join token)")?;
            let name = name.ok_or("--name is required")?;
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
            let joins = store.join_tokens().map_err(|e| e.to_string())?;
            if !joins.is_empty() {
                println!(
                    "\n{:<10} {:<9} {:<28} {:<28} name (join tokens; labels)",
                    "id", "uses left", "expires", "revoked"
                );
            }
            for r in joins {
                let labels: Vec<String> =
                    r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!(
                    "{:<10} {:<9} {:<28} {:<28} {} {}",
                    r.id,
                    r.uses_left,
                    to_rfc3339(r.expires_ms),
                    r.revoked_ms.map(to_rfc3339).unwrap_or_else(|| "-".into()),
                    r.name,
                    labels.join(",")
                );
            }
            Ok(())
        }
        TokenCommand::Revoke { which } => {
            let revoked = store
                .revoke_tokens(&which, now_ms())
                .map_err(|e| e.to_string())?;
            let joins = store
                .revoke_join_tokens(&which, now_ms())
                .map_err(|e| e.to_string())?;
            if revoked.is_empty() && joins.is_empty() {
                return Err(format!("no active token has id or name `{which}`"));
            }
            for r in revoked {
                println!("revoked {} `{}` ({})", r.id, r.name, r.role);
            }
            for r in joins {
                println!("revoked join token {} `{}`", r.id, r.name);
            }
            Ok(())
        }
    }
}

/// Opens the coordinator's store in `data_dir` (which must exist).
pub fn open(data_dir: &std::path::Path) -> Result<Store, String> {
    if !data_dir.join("lmdb").is_dir() {
        return Err(format!(
            "{} holds no coordinator store (start the coordinator once, or pass --data-dir)",
            data_dir.display()
        ));
    }
    open_or_create(data_dir)
}

/// Opens the coordinator's store in `data_dir`, creating it if there is none.
pub fn open_or_create(data_dir: &std::path::Path) -> Result<Store, String> {
    let lmdb = data_dir.join("lmdb");
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
