//! `cargo run -p xtask -- docs --out DIR`: man pages and bash, zsh and fish completions for
//! `vigil-agent`, `vigil-coordinator` and `vigilctl`, generated from their clap definitions
//! (so they never disagree with `--help`). scripts/dist gzips the man pages and ships
//! everything in the `.deb` packages:
//!
//! ```text
//! DIR/man/PROGRAM.1            (one page per program, subcommands included)
//! DIR/bash/PROGRAM.bash        → /usr/share/bash-completion/completions/PROGRAM
//! DIR/zsh/_PROGRAM             → /usr/share/zsh/vendor-completions/
//! DIR/fish/PROGRAM.fish        → /usr/share/fish/vendor_completions.d/
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};
use clap_complete::Shell;

/// Vigil's build-time tasks.
#[derive(Debug, Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Write man pages and shell completions of every program into --out.
    Docs {
        /// The directory to write into (created).
        #[arg(long)]
        out: PathBuf,
    },
}

/// Every shipped program's command line.
fn programs() -> Vec<clap::Command> {
    vec![
        vigil_agent::cli::command(),
        vigil_coordinator::cli::Cli::command(),
        vigilctl::cli::Cli::command(),
    ]
}

fn main() -> ExitCode {
    let Task::Docs { out } = Cli::parse().task;
    match docs(&out) {
        Ok(written) => {
            for path in written {
                println!("{}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xtask docs: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes the pages and completions of [`programs`] under `out`; the files written.
fn docs(out: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for mut command in programs() {
        command.build();
        let name = command.get_name().to_string();

        let page = out.join("man").join(format!("{name}.1"));
        let mut roff = Vec::new();
        clap_mangen::Man::new(command.clone()).render(&mut roff)?;
        // Every subcommand's section too: one page per program, as `man PROGRAM` finds it.
        for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
            let title = format!("{name} {}", sub.get_name());
            let man = clap_mangen::Man::new(sub.clone().bin_name(title.clone()));
            roff.extend_from_slice(format!(".SH \"{}\"\n", title.to_uppercase()).as_bytes());
            man.render_description_section(&mut roff)?;
            man.render_synopsis_section(&mut roff)?;
            man.render_options_section(&mut roff)?;
        }
        write(&page, &roff)?;
        written.push(page);

        for (shell, dir, file) in [
            (Shell::Bash, "bash", format!("{name}.bash")),
            (Shell::Zsh, "zsh", format!("_{name}")),
            (Shell::Fish, "fish", format!("{name}.fish")),
        ] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, &name, &mut script);
            let path = out.join(dir).join(file);
            write(&path, &script)?;
            written.push(path);
        }
    }
    Ok(written)
}

fn write(path: &Path, content: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_program_gets_a_page_and_three_completions() {
        let dir = std::env::temp_dir().join(format!("vigil-xtask-{}", std::process::id()));
        let written = docs(&dir).expect("docs");
        assert_eq!(written.len(), 3 * 4, "{written:?}");
        let page = std::fs::read_to_string(dir.join("man/vigil-agent.1")).unwrap();
        assert!(page.contains(".SH NAME"), "{page}");
        assert!(page.contains("vigil\\-agent"), "{page}");
        assert!(
            page.contains("VIGIL\\-AGENT INSTALL") || page.contains("VIGIL-AGENT INSTALL"),
            "{page}"
        );
        let bash = std::fs::read_to_string(dir.join("bash/vigilctl.bash")).unwrap();
        assert!(bash.contains("complete -F _vigilctl"), "{bash}");
        assert!(bash.contains("--follow"), "{bash}");
        let zsh = std::fs::read_to_string(dir.join("zsh/_vigil-coordinator")).unwrap();
        assert!(zsh.starts_with("#compdef vigil-coordinator"), "{zsh}");
        let fish = std::fs::read_to_string(dir.join("fish/vigil-agent.fish")).unwrap();
        assert!(fish.contains("complete -c vigil-agent"), "{fish}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
