//! `vigil-agent status`: what the installed agent is doing, read from the status file it
//! rewrites every few seconds ([`crate::reporting::status_file`]).
//!
//! Exit codes follow the LSB's for `status`: 0 the agent is running; 3 it is not (its
//! process is gone or its status file has gone stale); 4 unknown (no status file).

use std::path::Path;
use std::process::ExitCode;

use vigil_shared::time::now_ms;

use crate::reporting::status_file::{self, StatusFileError, StatusSnapshot, WRITE_EVERY};

/// A status file older than this means the agent is not running (or hangs).
const STALE_AFTER_MS: i64 = 3 * WRITE_EVERY.as_millis() as i64;

/// Prints the agent's status for `data_dir`; JSON when `json`.
pub fn status(data_dir: &Path, json: bool) -> ExitCode {
    let snapshot = match status_file::read(data_dir) {
        Ok(snapshot) => snapshot,
        Err(e @ StatusFileError::Missing(_)) => {
            eprintln!("vigil-agent: not running: {e}");
            return ExitCode::from(4);
        }
        Err(e) => {
            eprintln!("vigil-agent: {e}");
            return ExitCode::from(4);
        }
    };
    let now = now_ms();
    let age_ms = now - snapshot.written_at_ms;
    let process_alive = Path::new(&format!("/proc/{}", snapshot.pid)).exists();
    let running = process_alive && age_ms <= STALE_AFTER_MS;
    if json {
        let mut value = serde_json::to_value(&snapshot).unwrap_or_default();
        if let Some(object) = value.as_object_mut() {
            object.insert("running".into(), running.into());
            object.insert("age_ms".into(), age_ms.into());
        }
        println!("{value:#}");
    } else {
        print!("{}", describe(&snapshot, running, process_alive, now));
    }
    if running {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    }
}

/// The human-readable status.
fn describe(s: &StatusSnapshot, running: bool, process_alive: bool, now: i64) -> String {
    let mut out = String::new();
    let state = if running {
        format!(
            "running (pid {}, up {})",
            s.pid,
            span(now - s.started_at_ms)
        )
    } else if process_alive {
        format!(
            "NOT RESPONDING (pid {} exists but its last status is {} old)",
            s.pid,
            span(now - s.written_at_ms)
        )
    } else {
        format!(
            "not running (last seen {} ago, pid {})",
            span(now - s.written_at_ms),
            s.pid
        )
    };
    out.push_str(&format!(
        "vigil-agent {} on {}: {state}\n",
        s.version, s.host
    ));
    let link = match (running, s.connected) {
        (true, true) => "connected",
        (true, false) => "NOT connected (reporting resumes when it is back; nothing is lost)",
        (false, true) => "was connected when last seen",
        (false, false) => "was not connected when last seen",
    };
    out.push_str(&format!("  broker:       {} — {link}\n", s.broker));
    if let Some(at) = s.last_sample_at_ms {
        out.push_str(&format!("  last sample:  {} ago\n", span(now - at)));
    }
    out.push_str(&format!(
        "  policies:     {} loaded, {} enabled\n",
        s.policies_loaded, s.policies_enabled
    ));
    let bundles = if s.bundles.is_empty() {
        "none".to_string()
    } else {
        s.bundles
            .iter()
            .map(|b| format!("{} v{}", b.group, b.version))
            .collect::<Vec<_>>()
            .join(", ")
    };
    out.push_str(&format!("  bundles:      {bundles}\n"));
    if let Some(error) = &s.bundle_error {
        out.push_str(&format!("  bundle error: {error}\n"));
    }
    out.push_str(&format!(
        "  remediation:  {}\n",
        if s.remediation_paused {
            "PAUSED (kill switch)"
        } else {
            "active"
        }
    ));
    let q = &s.queue;
    out.push_str(&format!(
        "  actions:      {} queued, {} running, {} dead-letter; {} completed, {} attempts failed since install\n",
        q.pending, q.running, q.dead_letter, q.completed_total, q.failed_total
    ));
    if !q.open_circuits.is_empty() {
        out.push_str(&format!(
            "  open circuits: {}\n",
            q.open_circuits.join(", ")
        ));
    }
    out.push_str(&format!(
        "  outbox:       {} message(s) not yet stored by the coordinator\n",
        s.outbox_queued
    ));
    if let Some(d) = &s.delivery {
        out.push_str(&format!(
            "  metrics:      {} batch(es) buffered ({} bytes on disk), {} dropped (buffer full)\n",
            d.metrics_buffered, d.metrics_buffer_bytes, d.metrics_dropped_total
        ));
        if d.quarantined_segments_total > 0 {
            out.push_str(&format!(
                "  buffer:       {} damaged segment(s) set aside\n",
                d.quarantined_segments_total
            ));
        }
        if let Some(skew) = d.clock_skew_ms.filter(|s| s.abs() > 5 * 60_000) {
            out.push_str(&format!(
                "  CLOCK:        {} s off the coordinator's clock\n",
                skew / 1000
            ));
        }
        if let Some(error) = &d.storage_error {
            out.push_str(&format!(
                "  STORAGE:      data directory cannot be written ({error}); keeping data in memory\n"
            ));
        }
    }
    if let Some(detail) = &s.detail {
        out.push_str(&format!("  note:         {detail}\n"));
    }
    if !s.recent_actions.is_empty() {
        out.push_str("  recent actions:\n");
        for a in &s.recent_actions {
            out.push_str(&format!(
                "    {} ago  {} {} → {}{}\n",
                span(now - a.created_at_ms),
                a.action,
                a.target,
                a.state,
                a.detail
                    .as_deref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            ));
        }
    }
    out
}

/// `3h 12m`, `45s`: a duration in milliseconds, roughly.
fn span(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reporting::status_file::RecentAction;

    fn snapshot() -> StatusSnapshot {
        StatusSnapshot {
            pid: std::process::id(),
            written_at_ms: 1_000_000,
            host: "web-1".into(),
            version: "0.1.0".into(),
            started_at_ms: 1_000_000 - 3_723_000,
            broker: "mqtt://10.0.0.5:1883".into(),
            connected: false,
            last_sample_at_ms: Some(998_000),
            policies_loaded: 3,
            policies_enabled: 2,
            bundles: Vec::new(),
            bundle_error: None,
            remediation_paused: true,
            queue: Default::default(),
            outbox_queued: 7,
            delivery: Some(vigil_shared::wire::DeliveryStatus {
                metrics_buffered: 120,
                clock_skew_ms: Some(360_000),
                storage_error: Some("No space left on device".into()),
                ..Default::default()
            }),
            recent_actions: vec![RecentAction {
                id: "01J".into(),
                action: "restart-service".into(),
                target: "nginx.service".into(),
                state: "completed".into(),
                created_at_ms: 940_000,
                detail: None,
            }],
            detail: None,
        }
    }

    #[test]
    fn the_text_says_running_connected_paused_queued_and_recent() {
        let text = describe(&snapshot(), true, true, 1_001_000);
        assert!(text.contains("running (pid"), "{text}");
        assert!(text.contains("up 1h 2m"), "{text}");
        assert!(text.contains("NOT connected"), "{text}");
        assert!(text.contains("PAUSED"), "{text}");
        assert!(
            text.contains("7 message(s) not yet stored by the coordinator"),
            "{text}"
        );
        assert!(text.contains("120 batch(es) buffered"), "{text}");
        assert!(text.contains("CLOCK:        360 s off"), "{text}");
        assert!(
            text.contains("STORAGE:      data directory cannot be written"),
            "{text}"
        );
        assert!(
            text.contains("1m 1s ago  restart-service nginx.service → completed"),
            "{text}"
        );
    }

    #[test]
    fn a_stale_status_says_not_running_or_not_responding() {
        let text = describe(&snapshot(), false, false, 1_060_000);
        assert!(text.contains("not running (last seen 1m 0s ago"), "{text}");
        let text = describe(&snapshot(), false, true, 1_060_000);
        assert!(text.contains("NOT RESPONDING"), "{text}");
    }

    #[test]
    fn a_missing_status_file_exits_4_and_a_dead_agent_exits_3() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(status(dir.path(), false), ExitCode::from(4));
        let mut old = snapshot();
        old.written_at_ms = now_ms() - 60_000;
        status_file::write(dir.path(), &old).expect("write");
        assert_eq!(status(dir.path(), true), ExitCode::from(3));
        let mut fresh = snapshot();
        fresh.written_at_ms = now_ms();
        status_file::write(dir.path(), &fresh).expect("write");
        assert_eq!(status(dir.path(), false), ExitCode::SUCCESS);
    }
}
