//! Sockets and logins on the real coordinator: a flood of slow connections under a 1024
//! file-descriptor limit, client ids that would take over another host's broker session,
//! and integrations (a viewer's token) that try to write to the embedded broker.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, MqttOptions, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use vigil_shared::topics::{self, AgentChannel};
use vigil_tests::{
    bin, broker_port, host_entry, login, metric, start_agent, start_coordinator,
    start_coordinator_limited, subscriber, wait_for, RawAgent, TestDir,
};

const WAIT: Duration = Duration::from_secs(30);

/// A client connection: `Ok` with the client and a count of the errors its event loop
/// has seen since (a session pushed off the broker shows up there), or the refusal.
async fn connect(options: MqttOptions) -> Result<(AsyncClient, Arc<AtomicUsize>), String> {
    let (client, mut eventloop) = login(options).await.map_err(|e| e.to_string())?;
    let errors = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&errors);
    tokio::spawn(async move {
        loop {
            if eventloop.poll().await.is_err() {
                seen.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    Ok((client, errors))
}

async fn counter_reaches(http: &str, series: &str, at_least: f64) {
    wait_for(series, WAIT, || async {
        (metric(http, series).await >= at_least).then_some(())
    })
    .await;
}

/// Lifts this test process's own soft open-file limit: it holds over a thousand sockets.
fn raise_own_open_files(wanted: u64) {
    // SAFETY: getrlimit/setrlimit with a valid, initialised struct.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < wanted {
            limit.rlim_cur = wanted.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// A connection from `source` (a loopback address) to `target`.
async fn connect_from(source: Ipv4Addr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    socket.connect(target).await
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_sockets_leave_health_and_agents_working_under_a_1024_fd_limit() {
    raise_own_open_files(8192);
    let dir = TestDir::new();
    let c = start_coordinator_limited(
        &dir,
        None,
        &["--mqtt-max-pending-per-address", "64"],
        Some(1024),
    )
    .await;
    assert!(
        metric(&c.http, "vigil_open_files_limit").await > 1024.0,
        "the coordinator did not raise its open-file limit"
    );
    let _agent = start_agent("slow-real", &c.broker, &[], dir.path());
    let online = || async {
        host_entry(&c.http, "slow-real")
            .await
            .filter(|h| h["online"] == true)
    };
    let first_seen = wait_for("the real agent online", WAIT, online).await["last_seen"].clone();

    let http_addr: SocketAddr = c.http.trim_start_matches("http://").parse().expect("addr");
    let mqtt_addr = SocketAddr::from(([127, 0, 0, 1], broker_port(&c.broker)));
    // 1,100 slow clients from 40 addresses: half send an enrollment request whose body
    // never finishes, half an MQTT CONNECT one byte at a time. Another 200 come from one
    // address, to the broker.
    let mut slow = Vec::new();
    for i in 0..1100u32 {
        let source = Ipv4Addr::new(127, 0, 1, 1 + (i % 40) as u8);
        let (target, opening): (_, &[u8]) = if i % 2 == 0 {
            (
                http_addr,
                b"POST /api/v1/agents/enroll HTTP/1.1\r\nHost: vigil\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
            )
        } else {
            (mqtt_addr, &[0x10])
        };
        let mut stream = connect_from(source, target).await.expect("slow connect");
        stream.write_all(opening).await.expect("first byte");
        slow.push(stream);
    }
    for _ in 0..200 {
        if let Ok(mut stream) = connect_from(Ipv4Addr::new(127, 0, 2, 1), mqtt_addr).await {
            let _ = stream.write_all(&[0x10]).await;
            slow.push(stream);
        }
    }
    let trickle = tokio::spawn(async move {
        // Two more bytes each, then silence (the REST API answers the bodies 408 at 30 s).
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_secs(12)).await;
            for stream in &mut slow {
                let _ = stream.write_all(b" ").await;
            }
        }
        slow
    });

    // While they hang on: /health answers within a second, every time; a new agent
    // login works; the real agent keeps reporting.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .expect("client");
    let newcomer = RawAgent::enroll(dir.path(), "slow-newcomer", &c.broker);
    let started = Instant::now();
    let mut probes = 0;
    while started.elapsed() < Duration::from_secs(35) {
        let response = http
            .get(format!("{}/health", c.http))
            .send()
            .await
            .unwrap_or_else(|e| panic!("/health did not answer within 1 s: {e}"));
        assert!(
            response.status().is_success(),
            "/health: {}",
            response.status()
        );
        probes += 1;
        if probes == 10 {
            connect(newcomer.options.clone())
                .await
                .expect("a new MQTT login during the flood");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let now = wait_for("the real agent still online", WAIT, online).await;
    assert_ne!(
        now["last_seen"], first_seen,
        "the real agent stopped reporting"
    );

    // The broker closed the slow logins (10 s to send a CONNECT) and refused the
    // single address's surplus; the enrollment bodies that never finished got 408.
    counter_reaches(
        &c.http,
        r#"vigil_mqtt_acl_refusals_total{reason="connect_timeout",role="none"}"#,
        500.0,
    )
    .await;
    counter_reaches(
        &c.http,
        r#"vigil_connections_refused_total{listener="mqtt",reason="max_pending"}"#,
        100.0,
    )
    .await;
    let mut slow = trickle.await.expect("trickle task");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), slow[0].read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "a body trickled for 35 s was answered: {answer}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_cannot_log_in_under_another_hosts_client_id() {
    let dir = TestDir::new();
    let c = start_coordinator(&dir, None, &[]).await;
    let web01 = RawAgent::enroll(dir.path(), "web-01", &c.broker);
    let web = RawAgent::enroll(dir.path(), "web", &c.broker);
    let mut persistent = web01.options.clone();
    persistent.set_clean_session(false);
    let (client, errors) = connect(persistent).await.expect("web-01 logs in");
    client
        .subscribe(
            topics::agent("web-01", AgentChannel::Commands),
            QoS::AtLeastOnce,
        )
        .await
        .expect("subscribe");

    // `web`'s own, valid login, with web-01's ids or ids that start like them.
    for id in [
        "vigil-agent-web-01",
        "vigil-outbox-web-01",
        "vigil-agent-web-outbox",
        "vigil-agent-web-x",
    ] {
        let mut options = web.options.clone();
        options.set_client_id(id.into());
        let refused = connect(options).await.err().unwrap_or_default();
        assert!(
            refused.contains("NotAuthorized"),
            "`web` logged in as {id}: {refused}"
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        errors.load(Ordering::SeqCst),
        0,
        "web-01's session was pushed off the broker"
    );
    assert!(
        metric(
            &c.http,
            r#"vigil_mqtt_auth_failures_total{reason="client_id"}"#
        )
        .await
            >= 4.0
    );
    // `web`'s own two ids are its own.
    for id in ["vigil-agent-web", "vigil-outbox-web"] {
        let mut options = web.options.clone();
        options.set_client_id(id.into());
        connect(options)
            .await
            .unwrap_or_else(|e| panic!("`web` as {id} refused: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn integrations_only_read_and_agents_write_only_their_own_topics() {
    let dir = TestDir::new();
    let c = start_coordinator(&dir, None, &[]).await;
    let data = dir.path().join("data");
    let output = std::process::Command::new(bin("vigil-coordinator"))
        .args([
            "token",
            "create",
            "--role",
            "viewer",
            "--name",
            "mirror-reader",
        ])
        .arg("--data-dir")
        .arg(&data)
        .output()
        .expect("token create");
    assert!(output.status.success(), "{output:?}");
    let viewer = String::from_utf8_lossy(&output.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    let viewer_options = |id: &str| {
        let mut options = MqttOptions::new(id, "127.0.0.1", broker_port(&c.broker));
        options.set_credentials("api", viewer.clone());
        options.set_max_packet_size(2 << 20, 2 << 20);
        options
    };

    // A viewer's forged host entry, retained, 1 MiB: the connection is closed and
    // nothing is kept.
    let (forger, errors) = connect(viewer_options("forger"))
        .await
        .expect("viewer reads");
    forger
        .publish(
            topics::json("hosts", "forged"),
            QoS::AtLeastOnce,
            true,
            vec![b'x'; 1 << 20],
        )
        .await
        .expect("queued");
    counter_reaches(
        &c.http,
        r#"vigil_mqtt_acl_refusals_total{reason="read_only",role="integration"}"#,
        1.0,
    )
    .await;
    wait_for("the forger disconnected", WAIT, || async {
        (errors.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    // A viewer subscribing to everything, `$SYS` included, is closed too.
    let (greedy, _) = connect(viewer_options("greedy"))
        .await
        .expect("viewer reads");
    greedy
        .subscribe("#", QoS::AtMostOnce)
        .await
        .expect("queued");
    counter_reaches(
        &c.http,
        r#"vigil_mqtt_acl_refusals_total{reason="foreign_filter",role="integration"}"#,
        1.0,
    )
    .await;

    // An agent: no retained metrics, no oversized retained status, no other host's topic.
    let agent = RawAgent::enroll(dir.path(), "acl-agent", &c.broker);
    for (topic, retain, size, reason) in [
        (
            topics::agent("acl-agent", AgentChannel::Metrics),
            true,
            10,
            "retain",
        ),
        (
            topics::agent("acl-agent", AgentChannel::Status),
            true,
            100 * 1024,
            "retained_too_large",
        ),
        (
            topics::json("hosts", "acl-agent"),
            false,
            10,
            "foreign_topic",
        ),
    ] {
        let (client, _) = connect(agent.options.clone()).await.expect("agent login");
        client
            .publish(topic, QoS::AtLeastOnce, retain, vec![0u8; size])
            .await
            .expect("queued");
        counter_reaches(
            &c.http,
            &format!(r#"vigil_mqtt_acl_refusals_total{{reason="{reason}",role="agent"}}"#),
            1.0,
        )
        .await;
    }

    // A reader that joins now sees no retained message from any of them.
    let (_reader, mut seen) = subscriber(
        viewer_options("late-reader"),
        &format!("{}/#", topics::ROOT),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    while let Ok((topic, payload)) = seen.try_recv() {
        assert!(
            !topic.ends_with("/forged") && !topic.contains("acl-agent"),
            "retained {topic} ({} bytes) was kept",
            payload.len()
        );
    }
}
