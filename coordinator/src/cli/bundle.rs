//! `vigil-coordinator bundle …`: bundles offline, for CI pipelines of a policy repository.
//!
//! - `bundle build DIR --out OUT [--key FILE] [--version N] [--data-dir DATA]`: validates
//!   every group and writes `OUT/<group>.bundle` (signed; without `--key` a throwaway key
//!   signs, and only its public half is written, as `OUT/bundle-signing.pub`). With
//!   `--data-dir`, a group whose `group.yaml` has a backtest gate is backtested against
//!   that coordinator store ([`crate::bundles::gate`]) and refused past its
//!   `max_actions`. Exit 1 naming group, file, policy and field (or the gate's count) on
//!   any error; nothing is written then.
//! - `bundle verify FILE --public-key HEX|FILE`: exit 0 if the signature, hash and every
//!   policy check out, 1 (saying why) if not.
//! - `bundle diff OLD NEW`: two bundle files, or two directories (of `*.bundle` files or
//!   source group folders): the policies added, removed and changed per group.
//! - `bundle keygen --out FILE`: a new private key (mode 0600) and `FILE.pub` (the
//!   extension replaced by `.pub`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use vigil_shared::bundle::{verify, Bundle, BundleKeys, BundleKind, PublicKey, SignedBundle};
use vigil_shared::time::now_ms;

use crate::bundles::keys;
use crate::bundles::layout::{self, read_groups, GroupSource};

/// `bundle` and its subcommands.
#[derive(Debug, Args)]
pub struct BundleArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: BundleCommand,
}

/// The `bundle` subcommands.
#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Validate a bundle directory and write one signed `<group>.bundle` per group.
    Build {
        /// The bundle directory (one folder per group).
        dir: PathBuf,
        /// Where to write the bundles.
        #[arg(long)]
        out: PathBuf,
        /// Private key file (64 hex characters) [default: a throwaway key]
        #[arg(long)]
        key: Option<PathBuf>,
        /// Version number to give every bundle.
        #[arg(long, default_value_t = 1)]
        version: u64,
        /// A coordinator's data dir whose metric history runs the groups' backtest gates
        /// [default: none, gates are not checked]
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Check a bundle file's signature, hash and policies.
    Verify {
        /// The `.bundle` file.
        file: PathBuf,
        /// The public key, as 64 hex characters or a file holding them.
        #[arg(long)]
        public_key: String,
    },
    /// Show which policies were added, removed or changed per group.
    Diff {
        /// Old bundle file or directory.
        old: PathBuf,
        /// New bundle file or directory.
        new: PathBuf,
    },
    /// Generate a signing key pair.
    Keygen {
        /// The private key file to create (the public key goes next to it, `.pub`).
        #[arg(long)]
        out: PathBuf,
    },
}

/// Runs a `bundle` subcommand; `Err` is printed and exits 1.
pub fn run(args: BundleArgs) -> Result<(), String> {
    match args.command {
        BundleCommand::Build {
            dir,
            out,
            key,
            version,
            data_dir,
        } => build(&dir, &out, key.as_deref(), version, data_dir.as_deref()),
        BundleCommand::Verify { file, public_key } => verify_file(&file, &public_key),
        BundleCommand::Diff { old, new } => diff(&old, &new),
        BundleCommand::Keygen { out } => {
            let keys = BundleKeys::generate();
            keys::write_new(&out, &keys).map_err(|e| e.to_string())?;
            println!(
                "private key: {}\npublic key:  {} ({})",
                out.display(),
                keys::public_path(&out).display(),
                keys.public_hex()
            );
            Ok(())
        }
    }
}

fn build(
    dir: &Path,
    out: &Path,
    key: Option<&Path>,
    version: u64,
    data_dir: Option<&Path>,
) -> Result<(), String> {
    let groups = read_groups(dir).map_err(|e| e.to_string())?;
    let mut good = Vec::new();
    let mut bad = 0;
    for (_, result) in groups {
        match result {
            Ok(source) => good.push(source),
            Err(e) => {
                eprintln!("error: {e}");
                bad += 1;
            }
        }
    }
    let gated: Vec<&GroupSource> = good.iter().filter(|s| s.gate.is_some()).collect();
    match (data_dir, gated.is_empty()) {
        (_, true) => {}
        (None, false) => {
            for source in &gated {
                println!(
                    "note: group `{}` has a backtest gate, not checked (give --data-dir)",
                    source.group
                );
            }
        }
        (Some(data_dir), false) => {
            let store = crate::cli::tokens::open(data_dir)?;
            let now = now_ms();
            let bar = crate::cli::progress::bar(gated.len(), "groups");
            for source in gated {
                let Some(gate) = &source.gate else { continue };
                bar.set_message(format!("backtest gate of `{}`", source.group));
                let result = crate::bundles::gate::check(&store, source, gate, now);
                bar.inc(1);
                // Lines go above the bar.
                bar.suspend(|| {
                    if result.passed {
                        println!(
                            "group `{}`: backtest gate passed ({} actions, max {})",
                            source.group,
                            result.actions.unwrap_or(0),
                            result.max_actions
                        );
                    } else {
                        eprintln!(
                            "error: group `{}`: {}",
                            source.group,
                            result.reason.as_deref().unwrap_or_default()
                        );
                    }
                });
                bad += usize::from(!result.passed);
            }
            bar.finish_and_clear();
        }
    }
    if bad > 0 {
        return Err(format!(
            "{bad} group(s) invalid or refused; nothing written"
        ));
    }
    let keys = match key {
        Some(path) => BundleKeys::load(path).map_err(|e| e.to_string())?,
        None => BundleKeys::generate(),
    };
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    if key.is_none() {
        let public = out.join("bundle-signing.pub");
        std::fs::write(&public, format!("{}\n", keys.public_hex()))
            .map_err(|e| format!("{}: {e}", public.display()))?;
        println!(
            "signed with a throwaway key; public key in {}",
            public.display()
        );
    }
    let created_at_ms = now_ms();
    for source in &good {
        let bundle = Bundle {
            group: source.group.clone(),
            selector: source.selector.clone(),
            version,
            created_at_ms,
            files: source.files.clone(),
            budget: source.budget.clone(),
        };
        let signed = keys.sign(&bundle);
        let path = out.join(format!("{}.bundle", source.group));
        std::fs::write(&path, vigil_shared::wire::encode(&signed))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        println!(
            "{}: version {version}, {} policies, {} files, hash {}",
            path.display(),
            source.policies.len(),
            source.files.len(),
            signed.hash
        );
    }
    Ok(())
}

fn read_signed(file: &Path) -> Result<SignedBundle, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    vigil_shared::wire::decode::<SignedBundle>(&bytes)
        .map_err(|e| format!("{}: not a bundle: {e}", file.display()))
}

fn verify_file(file: &Path, public_key: &str) -> Result<(), String> {
    let signed = read_signed(file)?;
    let key = PublicKey::load(public_key).map_err(|e| e.to_string())?;
    let bundle =
        verify(&signed, &key, None).map_err(|e| format!("refused: {}: {e}", file.display()))?;
    let source = layout::validate(
        &bundle.group,
        bundle.selector.clone(),
        bundle.budget.clone(),
        bundle.files.clone(),
    )
    .map_err(|e| format!("refused: {}: {e}", file.display()))?;
    println!(
        "ok: {}: group `{}` version {}, {} policies, hash {}",
        file.display(),
        bundle.group,
        bundle.version,
        source.policies.len(),
        signed.hash
    );
    Ok(())
}

/// Policies per group: name → the spec as JSON.
type Side = BTreeMap<String, BTreeMap<String, serde_json::Value>>;

fn policies_of(source: &GroupSource) -> BTreeMap<String, serde_json::Value> {
    source
        .policies
        .iter()
        .map(|spec| {
            (
                spec.name.clone(),
                serde_json::to_value(spec).unwrap_or(serde_json::Value::Null),
            )
        })
        .collect()
}

fn side_of_bundle(file: &Path) -> Result<(String, BTreeMap<String, serde_json::Value>), String> {
    let signed = read_signed(file)?;
    if signed.kind != BundleKind::Bundle {
        return Err(format!(
            "{}: a {:?} of group `{}`, not a bundle",
            file.display(),
            signed.kind,
            signed.group
        ));
    }
    let bundle: Bundle = vigil_shared::bundle::decode_bundle(&signed.content)
        .map_err(|e| format!("{}: content does not decode: {e}", file.display()))?;
    let source = layout::validate(&bundle.group, bundle.selector, bundle.budget, bundle.files)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    Ok((bundle.group, policies_of(&source)))
}

fn side(path: &Path) -> Result<Side, String> {
    let mut out = Side::new();
    if path.is_file() {
        let (group, policies) = side_of_bundle(path)?;
        out.insert(group, policies);
        return Ok(out);
    }
    let entries = std::fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut bundle_files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "bundle"))
        .collect();
    bundle_files.sort();
    if !bundle_files.is_empty() {
        for file in bundle_files {
            let (group, policies) = side_of_bundle(&file)?;
            out.insert(group, policies);
        }
        return Ok(out);
    }
    for (_, result) in read_groups(path).map_err(|e| e.to_string())? {
        let source = result.map_err(|e| e.to_string())?;
        out.insert(source.group.clone(), policies_of(&source));
    }
    Ok(out)
}

/// The differences between two sides, one line each (empty: none).
fn differences(old: &Side, new: &Side) -> Vec<String> {
    let mut lines = Vec::new();
    let groups: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let empty = BTreeMap::new();
    for group in groups {
        match (old.get(group), new.get(group)) {
            (None, Some(p)) => lines.push(format!("group {group}: added ({} policies)", p.len())),
            (Some(_), None) => lines.push(format!("group {group}: removed")),
            _ => {}
        }
        let before = old.get(group).unwrap_or(&empty);
        let after = new.get(group).unwrap_or(&empty);
        for (name, spec) in after {
            match before.get(name) {
                None => lines.push(format!("group {group}: + {name}")),
                Some(old_spec) if old_spec != spec => {
                    lines.push(format!("group {group}: ~ {name}"))
                }
                Some(_) => {}
            }
        }
        for name in before.keys() {
            if !after.contains_key(name) {
                lines.push(format!("group {group}: - {name}"));
            }
        }
    }
    lines
}

fn diff(old: &Path, new: &Path) -> Result<(), String> {
    let lines = differences(&side(old)?, &side(new)?);
    if lines.is_empty() {
        println!("no policy differences");
    }
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_list_added_removed_and_changed_policies() {
        let v = |n: i64| serde_json::json!({"threshold": n});
        let old: Side = BTreeMap::from([
            (
                "web".to_string(),
                BTreeMap::from([("a".to_string(), v(1)), ("b".to_string(), v(1))]),
            ),
            ("gone".to_string(), BTreeMap::new()),
        ]);
        let new: Side = BTreeMap::from([(
            "web".to_string(),
            BTreeMap::from([("a".to_string(), v(2)), ("c".to_string(), v(1))]),
        )]);
        assert_eq!(
            differences(&old, &new),
            vec![
                "group gone: removed",
                "group web: ~ a",
                "group web: + c",
                "group web: - b"
            ]
        );
    }
}
