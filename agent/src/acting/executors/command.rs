//! The `exec` executor: runs one command from the allowlist (`remediation.commands`), by
//! the name a policy gives in `params.command`. The argv comes from the agent's config
//! only: a policy can neither supply nor extend it.
//!
//! No shell is involved. The command runs in a process group of its own, with stdin
//! closed and a minimal environment — `PATH`, plus `VIGIL_ACTION_ID`, `VIGIL_ACTION` and
//! `VIGIL_TARGET` — never the agent's own (which may hold credentials). Exit 0 is success;
//! the outcome carries the exit status and the last line of output (stdout or stderr,
//! whichever came last), cut to 200 characters. If the attempt is abandoned (its timeout
//! passes), the whole process group is killed. Neither the environment nor the output is
//! logged.

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::attempt::{ExecError, ExecOutcome, ExecRequest};

/// The executor's name.
const EXECUTOR: &str = "exec";
/// The `PATH` a command runs with.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How much of the last output line is kept.
const LAST_LINE_CHARS: usize = 200;
/// How many bytes of one output line are looked at (the rest of a longer line is skipped).
const LINE_BYTES: usize = 4096;
/// How long output is still read after the command exits (a process it left behind may
/// hold its output open).
const OUTPUT_GRACE: Duration = Duration::from_millis(100);
/// SIGKILL.
const SIGKILL: i32 = 9;

extern "C" {
    /// kill(2) from the C library (linked by std already), so that a whole process group
    /// can be killed without adding a crate to the agent.
    fn kill(pid: i32, signal: i32) -> i32;
}

/// Runs the allowlisted command `name` (argv `argv`) for `request`. The dispatcher has
/// checked the allowlist; the caller bounds the time (dropping this future kills the
/// command's process group).
pub async fn run(
    name: &str,
    argv: &[String],
    request: &ExecRequest,
) -> Result<ExecOutcome, ExecError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(ExecError::Invalid(format!(
            "command `{name}` has an empty argv"
        )));
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", PATH)
        .env("VIGIL_ACTION_ID", &request.action_id)
        .env("VIGIL_ACTION", request.kind.as_str())
        .env("VIGIL_TARGET", &request.target)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| ExecError::Failed {
            executor: EXECUTOR,
            message: format!("cannot run command `{name}` ({program}): {e}"),
        })?;
    let mut group = GroupGuard(child.id().and_then(|pid| i32::try_from(pid).ok()));
    let last = Mutex::new(String::new());
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let output = async {
        tokio::join!(keep_last_line(stdout, &last), keep_last_line(stderr, &last));
    };
    let mut output = std::pin::pin!(output);
    let mut output_done = false;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            () = &mut output, if !output_done => output_done = true,
        }
    };
    if !output_done {
        let _ = tokio::time::timeout(OUTPUT_GRACE, output).await;
    }
    // It exited by itself: whatever it left running in its group is its business.
    group.0 = None;
    let status = status.map_err(|e| ExecError::Failed {
        executor: EXECUTOR,
        message: format!("waiting for command `{name}` failed: {e}"),
    })?;
    let last = last.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let detail = with_output(describe(status), &last);
    if status.success() {
        Ok(ExecOutcome {
            executor: EXECUTOR,
            detail,
        })
    } else {
        Err(ExecError::Failed {
            executor: EXECUTOR,
            message: format!("command `{name}`: {detail}"),
        })
    }
}

/// Kills a process group when dropped, unless disarmed (`None`).
struct GroupGuard(Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.filter(|p| *p > 0) {
            // SAFETY: kill(2) has no memory effects; `-pgid` names the process group our
            // child leads (it is not reaped yet, so the id cannot have been reused).
            unsafe {
                kill(-pgid, SIGKILL);
            }
        }
    }
}

/// `exit 0`, `exit 3`, `killed by signal 9`.
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => format!("ended with {status}"),
    }
}

/// The status with the last output line, if there was one.
fn with_output(status: String, last: &str) -> String {
    if last.is_empty() {
        status
    } else {
        format!("{status}: {last}")
    }
}

/// Reads a stream to its end, recording each complete non-blank line in `last` (cut to
/// [`LAST_LINE_CHARS`]).
async fn keep_last_line(stream: Option<impl AsyncRead + Unpin>, last: &Mutex<String>) {
    let Some(mut stream) = stream else { return };
    let mut line: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    let record = |line: &[u8]| {
        let text = String::from_utf8_lossy(line);
        let text = text.trim();
        if !text.is_empty() {
            let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
            *last = text.chars().take(LAST_LINE_CHARS).collect();
        }
    };
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for piece in chunk[..n].split_inclusive(|b| *b == b'\n') {
            let room = LINE_BYTES.saturating_sub(line.len());
            let (body, ends) = match piece.strip_suffix(b"\n") {
                Some(body) => (body, true),
                None => (piece, false),
            };
            line.extend_from_slice(&body[..body.len().min(room)]);
            if ends {
                record(&line);
                line.clear();
            }
        }
    }
    record(&line);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Instant;

    use vigil_shared::policy::ActionKind;

    use super::*;
    use crate::acting::executors::{ExecutorConfig, Executors};

    fn executors(commands: &[(&str, &[&str])]) -> Executors {
        Executors::new(ExecutorConfig {
            commands: commands
                .iter()
                .map(|(name, argv)| {
                    (
                        name.to_string(),
                        argv.iter().map(|a| a.to_string()).collect(),
                    )
                })
                .collect(),
            ..ExecutorConfig::default()
        })
    }

    fn exec(command: &str, timeout: Duration) -> ExecRequest {
        ExecRequest {
            decided_at_ms: None,
            action_id: "01EXEC".into(),
            kind: ActionKind::Exec,
            target: "web-1".into(),
            params: BTreeMap::from([("command".to_string(), serde_json::json!(command))]),
            timeout,
        }
    }

    #[tokio::test]
    async fn an_allowlisted_command_succeeds_with_its_last_line() {
        let executors = executors(&[(
            "greet",
            &[
                "/bin/sh",
                "-c",
                "echo first; echo; echo \"$VIGIL_ACTION on $VIGIL_TARGET, HOME=${HOME:-unset}\"",
            ],
        )]);
        let outcome = executors
            .run(&exec("greet", Duration::from_secs(5)))
            .await
            .unwrap();
        assert_eq!(outcome.executor, "exec");
        assert_eq!(outcome.detail, "exit 0: exec on web-1, HOME=unset");
    }

    #[tokio::test]
    async fn a_non_zero_exit_fails_with_its_status_and_output() {
        let long = "x".repeat(300);
        let script = format!("echo {long} >&2; exit 3");
        let executors = executors(&[("fail", &["/bin/sh", "-c", &script])]);
        let error = executors
            .run(&exec("fail", Duration::from_secs(5)))
            .await
            .unwrap_err();
        let expected = format!("command `fail`: exit 3: {}", "x".repeat(200));
        assert_eq!(
            error,
            ExecError::Failed {
                executor: "exec",
                message: expected
            }
        );
        assert!(error.retryable());
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        // The shell starts a grandchild in its group and waits: both must die.
        let script = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
        let executors = executors(&[("hang", &["/bin/sh", "-c", &script])]);
        let started = Instant::now();
        let error = executors
            .run(&exec("hang", Duration::from_millis(300)))
            .await
            .unwrap_err();
        assert_eq!(
            error,
            ExecError::Timeout {
                executor: "exec",
                after: Duration::from_millis(300)
            }
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let stat = format!("/proc/{}/stat", pid.trim());
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            // Gone, or a zombie waiting for its (new) parent to reap it.
            let alive = std::fs::read_to_string(&stat)
                .ok()
                .and_then(|s| s.rsplit(')').next().map(|r| r.trim().to_string()))
                .is_some_and(|rest| !rest.starts_with('Z'));
            if !alive {
                break;
            }
            assert!(Instant::now() < deadline, "the grandchild survived");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn an_unknown_command_is_not_allowed() {
        let executors = executors(&[("greet", &["/bin/true"])]);
        let error = executors
            .run(&exec("rm-everything", Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert!(
            matches!(&error, ExecError::NotAllowed(why) if why.contains("rm-everything")),
            "{error:?}"
        );
        assert!(!error.retryable());
    }

    #[tokio::test]
    async fn a_missing_program_fails_clearly() {
        let executors = executors(&[("ghost", &["/nonexistent/vigil-ghost"])]);
        let error = executors
            .run(&exec("ghost", Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert!(
            matches!(&error, ExecError::Failed { message, .. } if message.contains("/nonexistent/vigil-ghost")),
            "{error:?}"
        );
    }
}
