//! The benchmark command still runs end to end: `vigil-sim bench --quick` (small sizes,
//! short runs, debug binaries) measures every part against real processes and prints
//! each figure with its same-run baseline. The figures themselves are not asserted
//! (machines here are noisy); the README's come from a release build. The footprint part
//! measures the agent next to Debian's Monit when `monit` is installed (CI installs it),
//! and says it skipped that comparison otherwise; the restart part needs a Docker engine
//! (CI has one) and says it skipped otherwise.

use std::process::Command;

use vigil_tests::{bin, TestDir};

#[test]
fn every_benchmark_part_runs_and_prints_its_figures() {
    let dir = TestDir::new();
    let output = Command::new(bin("vigil-sim"))
        .args(["bench", "--quick", "--work-dir"])
        .arg(dir.path())
        .output()
        .expect("vigil-sim runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    for figure in [
        "ingest burst, 100 agents",
        "ingest burst, 1000 agents",
        "ingest sustained, 300 agents",
        "sample → queryable over REST, p50",
        "sample → queryable over REST, p99",
        "agent resident memory",
        "agent CPU",
        "audit query p50",
        "audit query p99",
        "audit retention shortened to",
        "store growth under steady action load",
        "bundle fan-out to 300 agents",
        "300 agents on the embedded broker",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(figure))
            .unwrap_or_else(|| panic!("no `{figure}` figure in:\n{stdout}"));
        assert!(line.contains("baseline"), "{line}");
    }
    let goal = stdout
        .lines()
        .find(|l| l.starts_with("agent footprint goal"))
        .unwrap_or_else(|| panic!("no goal verdict in:\n{stdout}"));
    assert!(goal.contains("memory") && goal.contains("CPU"), "{goal}");
    assert!(
        stdout.contains("agent footprint, side by side"),
        "no side-by-side table in:\n{stdout}"
    );
    let monit_installed = ["/usr/bin/monit", "/usr/sbin/monit"]
        .iter()
        .any(|p| std::path::Path::new(p).is_file());
    if monit_installed {
        for figure in ["agent vs monit: resident memory", "agent vs monit: CPU"] {
            let line = stdout
                .lines()
                .find(|l| l.starts_with(figure))
                .unwrap_or_else(|| panic!("no `{figure}` figure in:\n{stdout}"));
            assert!(line.contains("baseline monit"), "{line}");
        }
        assert!(
            stdout.contains("  monit, 1 process check"),
            "no monit row in the table:\n{stdout}"
        );
    } else {
        assert!(
            stdout.contains("agent vs monit: skipped"),
            "no monit, and no word of skipping it:\n{stdout}"
        );
    }
    let docker_answers = std::process::Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if docker_answers {
        for figure in [
            "killed container → running, Vigil agent, median",
            "killed container → running, Vigil agent, max",
        ] {
            let line = stdout
                .lines()
                .find(|l| l.starts_with(figure))
                .unwrap_or_else(|| panic!("no `{figure}` figure in:\n{stdout}"));
            assert!(line.contains("baseline Docker --restart=always"), "{line}");
            let value: f64 = line[figure.len()..]
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no value in `{line}`"));
            assert!(value > 0.0 && value < 30_000.0, "{line}");
        }
        for timeline in [
            "restart timeline, Vigil's median round",
            "restart timeline, Vigil's worst round",
        ] {
            assert!(stdout.contains(timeline), "no `{timeline}` in:\n{stdout}");
        }
        assert!(
            stdout
                .lines()
                .any(|l| l.contains("Docker's start API call returned") && !l.contains("not seen")),
            "the timeline lacks the agent's own steps:\n{stdout}"
        );
    } else {
        assert!(
            stdout.contains("restart vs docker: skipped"),
            "no Docker, and no word of skipping the restart part:\n{stdout}"
        );
    }
}
