//! A coordinator whose data directory's file system fills up: writes are answered with
//! 507 Insufficient Storage (never 500, never 201), reads go on, and once space is free
//! again writes are taken. The data directory is a real 4 MiB tmpfs (mounting needs
//! root; without it the test says so and passes without running).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use vigil_tests::{get_json, metric, post_raw, start_coordinator, TestDir};

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it) on `path`; `None` (with the
    /// reason on stderr) where mounting is not permitted.
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output();
        match out {
            Ok(out) if out.status.success() => Some(Tmpfs {
                path: path.to_path_buf(),
            }),
            Ok(out) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs on {} (needs root): {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: a process that still has the directory open does not keep it mounted.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Writes `path` until the file system is full; returns how many bytes fit.
fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).expect("filler file");
    let chunk = vec![0x5a_u8; 4096];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    let _ = file.sync_all();
    written
}

fn sample(host: &str, i: usize) -> String {
    // Long tag values make every sample a new series with sizeable keys, so the store
    // needs new pages (not only ones it freed earlier) after a few writes.
    format!(
        r#"{{"name":"disk_probe_{i}","value":{i},"tags":{{"host":"{host}","pad":"{}"}}}}"#,
        "x".repeat(200)
    )
}

#[tokio::test]
async fn a_full_data_directory_answers_507_and_recovers() {
    let dir = TestDir::new();
    let Some(tmpfs) = Tmpfs::mount(&dir.path().join("data"), "4m") else {
        return;
    };
    let coordinator = start_coordinator(&dir, None, &[]).await;
    let http = &coordinator.http;
    let ingest = format!("{http}/api/v1/ingest");

    let (status, reply) = post_raw(&ingest, &sample("disk-ok", 0)).await;
    assert_eq!(status, 201, "{reply}");

    let filler = tmpfs.path.join("filler");
    let filled = fill(&filler);
    eprintln!("filled the tmpfs with {filled} bytes");

    // Writes may still land in pages the store freed earlier; once they need new ones the
    // answer must be 507, and nothing else but 201 before that.
    let mut refused = None;
    for i in 1..=500 {
        let (status, reply) = post_raw(&ingest, &sample("disk-full", i)).await;
        match status {
            201 => continue,
            507 => {
                refused = Some((i, reply));
                break;
            }
            other => panic!("write {i} on a full disk answered {other}: {reply}"),
        }
    }
    let (taken, reply) = refused.expect("a full file system never refused a write");
    eprintln!("write {taken} refused: {reply}");
    assert_eq!(reply["ok"], false, "{reply}");
    let error = reply["error"].as_str().unwrap_or_default();
    assert!(error.contains("full"), "{error}");
    // Still full: refused again.
    let (status, reply) = post_raw(&ingest, &sample("disk-full", 1000)).await;
    assert_eq!(status, 507, "{reply}");

    // Reads go on.
    let (status, body) = get_json(&format!("{http}/api/v1/hosts")).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["hosts"]
            .as_array()
            .is_some_and(|h| h.iter().any(|h| h["host"] == "disk-ok")),
        "{body}"
    );
    let (status, body) = get_json(&format!("{http}/health")).await;
    assert_eq!(status, 200, "{body}");
    let counted = metric(http, r#"vigil_store_errors_total{reason="disk_full"}"#).await;
    assert!(counted >= 2.0, "disk_full errors counted: {counted}");

    // Space again: writes are taken.
    std::fs::remove_file(&filler).expect("remove the filler");
    let (status, reply) = post_raw(&ingest, &sample("disk-freed", 0)).await;
    assert_eq!(status, 201, "{reply}");
    let (status, body) = get_json(&format!("{http}/api/v1/hosts")).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["hosts"]
            .as_array()
            .is_some_and(|h| h.iter().any(|h| h["host"] == "disk-freed")),
        "{body}"
    );

    coordinator.proc.stop();
    drop(tmpfs);
}
