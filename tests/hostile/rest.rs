//! Hostile REST callers and local users, against the real binaries:
//! - many failed authentications from one address (everyone behind one NAT or proxy)
//!   must not lock out the valid tokens that come from it;
//! - an agent config file any local user may write is refused at start, naming the file,
//!   its mode and its owner, since it decides what the (root) agent may run.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::time::Duration;

use vigil_tests::{bin, create_token, metric, start_coordinator, TestDir};

/// GETs `url` with `Authorization: Bearer <token>` (none without a token); the status.
async fn get_status(client: &reqwest::Client, url: &str, token: Option<&str>) -> u16 {
    let mut request = client.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("request").status().as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_authentications_from_one_address_do_not_lock_out_its_valid_tokens() {
    let dir = TestDir::new();
    // The default limit (30 failures a minute per address).
    let c = start_coordinator(&dir, None, &[]).await;
    let admin = c
        .token
        .clone()
        .expect("the coordinator wrote an admin token");
    let viewer = create_token(&dir.path().join("data"), "viewer", "behind-nat");
    let hosts = format!("{}/api/v1/hosts", c.http);
    let client = reqwest::Client::new();

    // Someone on the same address (127.0.0.1) guesses: 30 are 401s, then 429s.
    let mut answers = Vec::new();
    for i in 0..40 {
        let guess = format!("vigil_{i:064x}");
        answers.push(get_status(&client, &hosts, Some(&guess)).await);
    }
    assert!(answers[..30].iter().all(|s| *s == 401), "{answers:?}");
    assert!(answers[30..].iter().all(|s| *s == 429), "{answers:?}");
    assert_eq!(get_status(&client, &hosts, None).await, 429);

    // Everyone with a valid token on that address is still served, again and again.
    for _ in 0..20 {
        assert_eq!(get_status(&client, &hosts, Some(&admin)).await, 200);
        assert_eq!(get_status(&client, &hosts, Some(&viewer)).await, 200);
    }
    // A valid token with too low a role gets its 403, not a 429.
    assert_eq!(
        get_status(&client, &format!("{}/api/v1/agents", c.http), Some(&viewer)).await,
        403
    );
    // The guesser is still limited; the successes did not reset or feed the count.
    assert_eq!(
        get_status(&client, &hosts, Some("vigil_still_guessing")).await,
        429
    );
    let counted = |reason: &str| {
        let series = format!("vigil_http_auth_failures_total{{reason=\"{reason}\"}}");
        let http = c.http.clone();
        async move { metric(&http, &series).await }
    };
    assert_eq!(counted("unknown").await, 30.0);
    assert_eq!(counted("rate_limited").await, 12.0);
    c.proc.stop();
}

/// Runs `vigil-agent ARGS` to completion (it must stop on its own within 30 s): exit
/// code and stderr.
fn run_agent(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(bin("vigil-agent"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("vigil-agent starts");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("vigil-agent {args:?} did not stop on its own");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("output");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn an_agent_config_others_may_write_is_refused_naming_file_mode_and_owner() {
    let dir = TestDir::new();
    let config = dir.path().join("agent.toml");
    // No secret in it (so the secret-file rule does not apply), but an `exec` allowlist
    // entry any local user could have added: a root shell for whoever writes a policy.
    std::fs::write(
        &config,
        format!(
            "host = \"hostile-config\"\ndata_dir = {:?}\n\n[allow]\ncommands = {{ sh = [\"/bin/sh\", \"-c\", \"id\"] }}\n",
            dir.path().join("agent-data").display().to_string()
        ),
    )
    .expect("write config");
    let config_arg = config.display().to_string();
    let owner = std::fs::metadata(&config).expect("stat").uid();

    for mode in [0o666, 0o646, 0o664] {
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let (code, stderr) = run_agent(&["--config", &config_arg]);
        println!("mode {mode:04o}: exit {code:?}: {}", stderr.trim());
        assert_eq!(code, Some(2), "{stderr}");
        assert!(
            stderr.contains(&config_arg)
                && stderr.contains(&format!("mode {mode:04o}"))
                && stderr.contains(&format!("owned by uid {owner}"))
                && stderr.contains("writable by no one else"),
            "{stderr}"
        );
    }

    // The same file, writable by its owner only, is read: the agent gets past its
    // config (its data_dir is the file's) and stops only because it has no identity.
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (code, stderr) = run_agent(&["--config", &config_arg]);
    assert_ne!(code, Some(2), "{stderr}");
    assert!(!stderr.contains("writable by no one else"), "{stderr}");
    let identity = dir.path().join("agent-data").join("identity.json");
    assert!(
        stderr.contains(&identity.display().to_string()) && stderr.contains("no identity"),
        "{stderr}"
    );
}
