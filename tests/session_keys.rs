//! Session keys end to end, through the embedded broker and through Mosquitto: agents
//! handshake (a signed Hello, a signed Welcome) and then MAC their messages; the
//! coordinator refuses, and counts under its reason, a forged MAC (`bad_signature`), a
//! replayed or reordered-too-far message (`replayed`), one moved to another channel
//! (`host_mismatch`), one under a key it never made (`unknown_session`), one under the
//! key before a rekey once the grace is over (`rekeyed`), a revoked agent's next
//! message (`revoked`; the embedded broker then ends its connection), and a Hello replayed from an earlier session or repeated
//! (`replayed_handshake`, also in `vigil_agent_handshakes_total`). No timing is
//! asserted: every check waits for a counter.

use std::time::Duration;

use rumqttc::QoS;
use vigil_shared::agent_auth::{Authenticator, KeyId, Seal, SealedMessage, Sealer, SignedHello};
use vigil_shared::time::now_ms;
use vigil_shared::topics::{self, AgentChannel};
use vigil_shared::wire::{self, AgentState, AgentStatus, MetricBatch, PolicyRunnerStatus, Sample};
use vigil_tests::{
    bin, get_json, login, metric, start_agent, start_coordinator, start_mosquitto, wait_for,
    KeyedAgent, RawAgent, TestDir,
};

const WAIT: Duration = Duration::from_secs(30);

/// How long the coordinator keeps accepting the key before a rekey (its `GRACE`), and a
/// margin.
const PAST_GRACE: Duration = Duration::from_millis(6500);

fn rejected(channel: &str, reason: &str) -> String {
    format!("vigil_mqtt_messages_rejected_total{{channel=\"{channel}\",reason=\"{reason}\"}}")
}

fn handshakes(outcome: &str) -> String {
    format!("vigil_agent_handshakes_total{{outcome=\"{outcome}\"}}")
}

/// Batch `seq` of `host`: one sample, at a time of its own (one point per batch).
fn batch(host: &str, seq: u64) -> MetricBatch {
    static BASE: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(|| now_ms() - 60_000);
    MetricBatch {
        host: host.into(),
        seq,
        sent_at_ms: now_ms(),
        labels: vec![],
        samples: vec![Sample {
            name: "cpu_percent".into(),
            value: seq as f64,
            ts_ms: base + seq as i64,
            tags: vec![],
        }],
    }
}

fn status(host: &str) -> AgentStatus {
    AgentStatus {
        host: host.into(),
        state: AgentState::Online,
        agent_version: "session-keys-test".into(),
        started_at_ms: now_ms(),
        sent_at_ms: now_ms(),
        interval_ms: 1000,
        labels: vec![],
        bundles: vec![],
        bundle_error: None,
        remediation_paused: false,
        detail: None,
        queue: Default::default(),
        policies: PolicyRunnerStatus::default(),
        delivery: None,
    }
}

/// Waits until `series` on `http` reaches `at_least`.
async fn counter_reaches(http: &str, series: &str, at_least: f64) {
    wait_for(&format!("{series} >= {at_least}"), WAIT, || async {
        (metric(http, series).await >= at_least).then_some(())
    })
    .await;
}

/// Waits until `host` has stored at least `count` samples of `cpu_percent`.
async fn stored(http: &str, host: &str, count: u64) {
    let url = format!("{http}/api/v1/metrics/query?name=cpu_percent&host={host}&limit=10000");
    wait_for(&format!("{count} samples of {host}"), WAIT, || async {
        let (_, body) = get_json(&url).await;
        (body["count"].as_u64() >= Some(count)).then_some(())
    })
    .await;
}

fn is_mac(payload: &[u8]) -> bool {
    matches!(
        wire::decode::<SealedMessage>(payload).expect("sealed").auth,
        Authenticator::Mac(_)
    )
}

/// A MAC'd payload with one byte of its MAC flipped.
fn forge(payload: &[u8]) -> Vec<u8> {
    let mut sealed = wire::decode::<SealedMessage>(payload).expect("sealed");
    match &mut sealed.auth {
        Authenticator::Mac(mac) => mac[7] ^= 0x40,
        Authenticator::Signature(_) => panic!("not MAC'd"),
    }
    wire::encode(&sealed)
}

/// A payload naming session key `rekey` (never made), with any MAC.
fn under_unknown_key(payload: &[u8], rekey: u32) -> Vec<u8> {
    let mut sealed = wire::decode::<SealedMessage>(payload).expect("sealed");
    let mut seal: Seal = postcard::from_bytes(&sealed.signed).expect("seal");
    seal.rekey = rekey;
    seal.seq += 10_000;
    sealed.signed = postcard::to_stdvec(&seal).expect("encode");
    sealed.auth = Authenticator::Mac([7; 32]);
    wire::encode(&sealed)
}

async fn refusals_are_counted(via_mosquitto: bool) {
    let dir = TestDir::new();
    let mosquitto = via_mosquitto.then(|| start_mosquitto(dir.path()));
    let mut c = start_coordinator(&dir, mosquitto.as_ref().map(|m| m.url.as_str()), &[]).await;
    let host = "sk-raw";
    let agent = KeyedAgent::connect(RawAgent::enroll_with_session_keys(
        dir.path(),
        host,
        &c.broker,
    ))
    .await;
    // Before any handshake: signed, and accepted.
    let signed = agent.agent.seal(AgentChannel::Metrics, &batch(host, 1));
    assert!(!is_mac(&signed));
    agent.publish(AgentChannel::Metrics, signed).await;
    stored(&c.http, host, 1).await;

    // The handshake; from now on every message is MAC'd.
    let first_hello = agent.hello();
    agent.publish_hello(first_hello.clone()).await;
    wait_for("the first Welcome", WAIT, || async {
        agent.agent.sealer.session_key()
    })
    .await;
    let first_key = agent.agent.sealer.session_key().expect("a session key");
    counter_reaches(&c.http, &handshakes("accepted"), 1.0).await;
    let good = agent.agent.seal(AgentChannel::Metrics, &batch(host, 2));
    assert!(is_mac(&good));
    agent.publish(AgentChannel::Metrics, good.clone()).await;
    agent
        .publish(
            AgentChannel::Status,
            agent.agent.seal(AgentChannel::Status, &status(host)),
        )
        .await;
    stored(&c.http, host, 2).await;

    // A forged MAC.
    let forged = forge(&agent.agent.seal(AgentChannel::Metrics, &batch(host, 3)));
    agent.publish(AgentChannel::Metrics, forged).await;
    counter_reaches(&c.http, &rejected("metrics", "bad_signature"), 1.0).await;

    // Moved to another channel's topic.
    let moved = agent.agent.seal(AgentChannel::Metrics, &batch(host, 4));
    agent.publish(AgentChannel::Events, moved).await;
    counter_reaches(&c.http, &rejected("events", "host_mismatch"), 1.0).await;

    // A key never made.
    let unknown = under_unknown_key(
        &agent.agent.seal(AgentChannel::Metrics, &batch(host, 5)),
        99,
    );
    agent.publish(AgentChannel::Metrics, unknown).await;
    counter_reaches(&c.http, &rejected("metrics", "unknown_session"), 1.0).await;

    // Held back while more than the replay window of newer messages went out, then sent
    // (reordered too far), and the accepted `good` sent again: both replays.
    let held = agent.agent.seal(AgentChannel::Metrics, &batch(host, 6));
    for seq in 7..7 + 140 {
        let payload = agent.agent.seal(AgentChannel::Metrics, &batch(host, seq));
        agent.publish(AgentChannel::Metrics, payload).await;
    }
    stored(&c.http, host, 2 + 140).await;
    agent.publish(AgentChannel::Metrics, held).await;
    counter_reaches(&c.http, &rejected("metrics", "replayed"), 1.0).await;
    agent.publish(AgentChannel::Metrics, good).await;
    counter_reaches(&c.http, &rejected("metrics", "replayed"), 2.0).await;

    // A rekey: messages sealed under the first key are accepted until the grace after
    // the first message under the new key, then refused as `rekeyed`.
    let old_soon = agent.agent.seal(AgentChannel::Metrics, &batch(host, 200));
    let old_late = agent.agent.seal(AgentChannel::Metrics, &batch(host, 201));
    let second_key = agent.handshake().await;
    assert!(second_key > first_key);
    let new = agent.agent.seal(AgentChannel::Metrics, &batch(host, 202));
    agent.publish(AgentChannel::Metrics, new).await;
    agent.publish(AgentChannel::Metrics, old_soon).await;
    stored(&c.http, host, 2 + 140 + 2).await;
    tokio::time::sleep(PAST_GRACE).await;
    agent.publish(AgentChannel::Metrics, old_late).await;
    counter_reaches(&c.http, &rejected("metrics", "rekeyed"), 1.0).await;

    // The first Hello again: a repeated handshake.
    agent.publish_hello(first_hello.clone()).await;
    counter_reaches(&c.http, &rejected("session", "replayed_handshake"), 1.0).await;
    counter_reaches(&c.http, &handshakes("replayed_handshake"), 1.0).await;

    // The agent restarts (a later session) and reports its status: a Hello of the
    // earlier session is refused, also by a coordinator that restarted since (it knows
    // the stored status's session).
    let identity =
        vigil_shared::enrollment::Identity::load(&dir.path().join(format!("raw-identity-{host}")))
            .expect("identity")
            .expect("identity written");
    let restarted = Sealer::with_session(
        host,
        identity.key().expect("key"),
        agent.agent.sealer.session() + 1000,
    );
    agent
        .publish(
            AgentChannel::Status,
            restarted.seal(AgentChannel::Status, wire::encode(&status(host))),
        )
        .await;
    wait_for("the later session's status", WAIT, || async {
        let (_, body) = get_json(&format!("{}/api/v1/hosts/{host}", c.http)).await;
        (body["agent_version"] == "session-keys-test").then_some(())
    })
    .await;
    // An earlier session's Hello that was never sent: not a repeat, but behind.
    let earlier = agent.hello();
    let earlier_id = {
        let hello = wire::decode::<SignedHello>(&earlier).expect("hello");
        let hello: vigil_shared::agent_auth::Hello =
            postcard::from_bytes(&hello.signed).expect("hello");
        hello.key_id()
    };
    assert!(
        earlier_id
            < KeyId {
                session: restarted.session(),
                rekey: 1
            }
    );
    // Let the status reach the store before the Hello is checked against it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    agent.publish_hello(earlier).await;
    counter_reaches(&c.http, &rejected("session", "replayed_handshake"), 2.0).await;

    if via_mosquitto {
        // The broker stays up while the coordinator restarts: nothing is in memory.
        c.proc.stop();
        c = start_coordinator(&dir, mosquitto.as_ref().map(|m| m.url.as_str()), &[]).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        agent.publish_hello(first_hello).await;
        counter_reaches(&c.http, &rejected("session", "replayed_handshake"), 1.0).await;
        // A MAC'd message under a key from before the restart: unknown, and the agent
        // is asked to handshake again (the Welcome notice makes its sealer send no key
        // by itself; the test handshakes).
        let stale = agent.agent.seal(AgentChannel::Metrics, &batch(host, 300));
        agent.publish(AgentChannel::Metrics, stale).await;
        counter_reaches(&c.http, &rejected("metrics", "unknown_session"), 1.0).await;
    }
    c.proc.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_are_counted_through_the_embedded_broker() {
    refusals_are_counted(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_are_counted_through_mosquitto() {
    refusals_are_counted(true).await;
}

async fn a_revoked_agents_session_dies(via_mosquitto: bool) {
    let dir = TestDir::new();
    let mosquitto = via_mosquitto.then(|| start_mosquitto(dir.path()));
    let c = start_coordinator(&dir, mosquitto.as_ref().map(|m| m.url.as_str()), &[]).await;
    let host = "sk-revoked";
    let agent = KeyedAgent::connect(RawAgent::enroll_with_session_keys(
        dir.path(),
        host,
        &c.broker,
    ))
    .await;
    agent.handshake().await;
    let publisher = {
        let client = agent.client.clone();
        let sealer = agent.agent.clone();
        tokio::spawn(async move {
            for seq in 1.. {
                let payload = sealer.seal(AgentChannel::Metrics, &batch(host, seq));
                assert!(is_mac(&payload));
                if client
                    .publish(
                        topics::agent(host, AgentChannel::Metrics),
                        QoS::AtLeastOnce,
                        false,
                        payload,
                    )
                    .await
                    .is_err()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    stored(&c.http, host, 3).await;
    let output = std::process::Command::new(bin("vigil-coordinator"))
        .args(["agent", "revoke", host, "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .expect("agent revoke");
    assert!(output.status.success(), "{output:?}");
    counter_reaches(&c.http, &rejected("metrics", "revoked"), 1.0).await;
    if via_mosquitto {
        // Its keys are gone: a new handshake is refused too.
        agent.publish_hello(agent.hello()).await;
        counter_reaches(&c.http, &handshakes("revoked"), 1.0).await;
        publisher.abort();
    } else {
        // The embedded broker ends its connection (so its publishing stops), and it
        // may not log in again.
        tokio::time::timeout(WAIT, publisher)
            .await
            .expect("the revoked agent's connection ends")
            .expect("publisher");
        match login(agent.agent.options.clone()).await {
            Ok(_) => panic!("a revoked agent logged in again"),
            Err(e) => assert!(e.to_string().contains("NotAuthorized"), "{e}"),
        }
    }
    c.proc.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_agents_session_dies_through_the_embedded_broker() {
    a_revoked_agents_session_dies(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_agents_session_dies_through_mosquitto() {
    a_revoked_agents_session_dies(true).await;
}

/// The real agent (it has the coordinator's key, as every test agent does) handshakes
/// on connecting and its data flows with nothing refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_real_agent_moves_to_session_keys() {
    let dir = TestDir::new();
    let c = start_coordinator(&dir, None, &[]).await;
    let _agent = start_agent("sk-real", &c.broker, &[], dir.path());
    counter_reaches(&c.http, &handshakes("accepted"), 1.0).await;
    wait_for("sk-real reporting", WAIT, || async {
        let (_, body) = get_json(&format!("{}/api/v1/hosts/sk-real", c.http)).await;
        (body["online"] == true && body["metric_count"].as_u64() > Some(0)).then_some(())
    })
    .await;
    // A few more batches, MAC'd now.
    let before = metric(&c.http, "vigil_mqtt_messages_total{channel=\"metrics\"}").await;
    counter_reaches(
        &c.http,
        "vigil_mqtt_messages_total{channel=\"metrics\"}",
        before + 2.0,
    )
    .await;
    assert_eq!(
        metric(&c.http, "vigil_mqtt_messages_rejected_total").await,
        0.0
    );
    c.proc.stop();
}
