//! Where the agent's and the coordinator's logs go: the systemd journal, with structured
//! fields, when the process runs under systemd with its stderr connected to the journal;
//! plain text on stderr otherwise.
//!
//! systemd sets `JOURNAL_STREAM=DEV:INODE` for a service whose stdout or stderr goes to
//! the journal; stderr is the journal's stream when its own device and inode are those
//! (the check `sd_journal_stream_fd(3)` and systemd.exec(5) document: a child process,
//! or a stderr redirected elsewhere, inherits the variable but not the stream). Then every
//! event goes to journald with its fields, and those of its spans, as journal fields
//! prefixed `VIGIL_` (`host` → `VIGIL_HOST`, `policy` → `VIGIL_POLICY`, `action_id` →
//! `VIGIL_ACTION_ID`), and its level as the syslog priority of the same name (`ERROR` 3,
//! `WARN` 4, `INFO` 6, `DEBUG` and `TRACE` 7; [`PRIORITIES`]): `journalctl -o json`,
//! `journalctl -p warning` or `journalctl VIGIL_HOST=web-01` reads them back. Nothing
//! is written to stderr then, so no line reaches the journal twice.

use std::os::fd::AsFd;

use tracing::Subscriber;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer;

/// The prefix of every field Vigil writes to the journal.
pub const JOURNAL_FIELD_PREFIX: &str = "VIGIL";

/// The journal priority of each level: syslog's of the same name (`tracing-journald`'s
/// default would make every `INFO` line a `notice`, 5, above informational).
pub const PRIORITIES: [(tracing::Level, u8); 5] = [
    (tracing::Level::ERROR, 3),
    (tracing::Level::WARN, 4),
    (tracing::Level::INFO, 6),
    (tracing::Level::DEBUG, 7),
    (tracing::Level::TRACE, 7),
];

/// [`PRIORITIES`] as `tracing-journald` takes them.
fn priority_mappings() -> tracing_journald::PriorityMappings {
    use tracing_journald::Priority;
    tracing_journald::PriorityMappings {
        error: Priority::Error,
        warn: Priority::Warning,
        info: Priority::Informational,
        debug: Priority::Debug,
        trace: Priority::Debug,
    }
}

/// Whether `journal_stream` (the value of `JOURNAL_STREAM`) names the stream whose
/// device and inode are `device` and `inode`.
pub fn names_stream(journal_stream: &str, device: u64, inode: u64) -> bool {
    let Some((dev, ino)) = journal_stream.trim().split_once(':') else {
        return false;
    };
    dev.parse::<u64>() == Ok(device) && ino.parse::<u64>() == Ok(inode)
}

/// Whether this process's stderr is the journal stream systemd connected it to.
pub fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some(stream) = stream.to_str() else {
        return false;
    };
    match rustix::fs::fstat(std::io::stderr().as_fd()) {
        Ok(stat) => names_stream(stream, stat.st_dev, stat.st_ino),
        Err(_) => false,
    }
}

/// The journald layer, when stderr is the journal and the journal's socket answers.
fn journal_layer(identifier: &str) -> Option<tracing_journald::Layer> {
    if !stderr_is_journal() {
        return None;
    }
    match tracing_journald::layer() {
        Ok(layer) => Some(
            layer
                .with_field_prefix(Some(JOURNAL_FIELD_PREFIX.to_string()))
                .with_priority_mappings(priority_mappings())
                .with_syslog_identifier(identifier.to_string()),
        ),
        Err(e) => {
            eprintln!(
                "{identifier}: the journal's socket does not answer ({e}): logging to stderr"
            );
            None
        }
    }
}

/// Installs the process's logger, filtered by `filter`: journald (see the module
/// documentation) or text on stderr. `identifier` is the journal's `SYSLOG_IDENTIFIER`.
pub fn init<F>(identifier: &str, filter: F)
where
    F: Layer<tracing_subscriber::Registry> + Send + Sync + 'static,
{
    let registry = tracing_subscriber::registry().with(filter);
    match journal_layer(identifier) {
        Some(journal) => registry.with(journal).init(),
        None => registry.with(text_layer()).init(),
    }
}

/// Text on stderr, as `tracing_subscriber::fmt()` writes it (colored on a terminal only).
fn text_layer<S>() -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    #[test]
    fn the_stream_is_named_by_device_and_inode() {
        assert!(names_stream("8:1234", 8, 1234));
        assert!(names_stream("8:1234\n", 8, 1234));
        for other in ["8:1235", "9:1234", "8", "", "a:b", "8:1234:5", ":1234"] {
            assert!(!names_stream(other, 8, 1234), "{other}");
        }
    }

    #[test]
    fn levels_map_to_the_syslog_priorities_of_their_names() {
        let mappings = priority_mappings();
        for (level, priority) in PRIORITIES {
            let mapped = match level {
                tracing::Level::ERROR => mappings.error,
                tracing::Level::WARN => mappings.warn,
                tracing::Level::INFO => mappings.info,
                tracing::Level::DEBUG => mappings.debug,
                _ => mappings.trace,
            };
            assert_eq!(mapped as u8, b'0' + priority, "{level}");
        }
    }

    #[test]
    fn a_real_files_device_and_inode_match_what_fstat_says() {
        let file = tempfile::tempfile().expect("temp file");
        let meta = file.metadata().expect("metadata");
        let stat = rustix::fs::fstat(file.as_fd()).expect("fstat");
        let stream = format!("{}:{}", meta.dev(), meta.ino());
        assert!(names_stream(&stream, stat.st_dev, stat.st_ino));
        assert!(!names_stream(&stream, stat.st_dev, stat.st_ino + 1));
    }
}
