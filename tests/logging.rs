//! Where the real `vigil-coordinator` binary (its logger is the agent's too:
//! `vigil_service::logging`) logs: text on stderr, unless `JOURNAL_STREAM`
//! names its stderr's own device and inode (as systemd sets it for a service whose stderr
//! is the journal). Here stderr is a file: a `JOURNAL_STREAM` naming another file leaves
//! the text alone; one naming this very file makes it turn to the journal — which,
//! outside systemd, has no socket, so it says so once and logs text.

use std::os::unix::fs::MetadataExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vigil_tests::{bin, free_port, TestDir};

/// Runs the coordinator until it logged (at most 30 s) with stderr to `name` in `dir` and `JOURNAL_STREAM` from
/// `stream` (given the file's `dev:inode`); returns what it wrote.
fn run_agent(dir: &TestDir, name: &str, stream: impl Fn(&str) -> String) -> String {
    let path = dir.path().join(name);
    let file = std::fs::File::create(&path).expect("stderr file");
    let meta = file.metadata().expect("metadata");
    let own = format!("{}:{}", meta.dev(), meta.ino());
    let mut child = Command::new(bin("vigil-coordinator"))
        .args(["serve", "--data-dir"])
        .arg(dir.path().join(format!("data-{name}")))
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--mqtt-listen", &format!("127.0.0.1:{}", free_port())])
        .env("JOURNAL_STREAM", stream(&own))
        .env("VIGIL_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("vigil-coordinator starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline
        && !std::fs::read_to_string(&path).is_ok_and(|t| t.contains(" INFO "))
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    std::fs::read_to_string(&path).expect("read stderr")
}

#[test]
fn logs_go_to_the_journal_only_when_its_stderr_is_the_journal_stream() {
    let dir = TestDir::new();
    let socket = std::path::Path::new("/run/systemd/journal/socket");

    let elsewhere = run_agent(&dir, "elsewhere.log", |own| {
        let (dev, ino) = own.split_once(':').unwrap_or_default();
        format!("{dev}:{}", ino.parse::<u64>().unwrap_or(0) + 1)
    });
    assert!(
        !elsewhere.contains("journal"),
        "a stream that is not stderr was taken for the journal:\n{elsewhere}"
    );
    assert!(elsewhere.contains(" INFO "), "no text log:\n{elsewhere}");

    let own = run_agent(&dir, "own.log", |own| own.to_string());
    if socket.exists() {
        // A journal listens here: the agent logs there, not to the file.
        assert!(
            !own.contains(" INFO "),
            "stderr is the journal stream, but it logged text:\n{own}"
        );
    } else {
        assert!(
            own.contains("vigil-coordinator: the journal's socket does not answer"),
            "stderr is the journal stream, but it did not try the journal:\n{own}"
        );
        assert!(own.contains(" INFO "), "no text log after:\n{own}");
    }
}
