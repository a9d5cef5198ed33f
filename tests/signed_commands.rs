//! Commands to agents are signed: a real agent acts on the coordinator's
//! signed commands, and refuses — saying why in its status — a captured command
//! replayed, one past its expiry, one signed by another key, and an unsigned one.

use std::time::Duration;

use rumqttc::QoS;
use serde_json::Value;
use vigil_shared::bundle::BundleKeys;
use vigil_shared::command_auth;
use vigil_shared::time::now_ms;
use vigil_shared::topics::{self, AgentChannel};
use vigil_shared::wire::{self, Command, CommandKind};
use vigil_tests::{
    bundle_subscriber, host_entry, post_raw, start_agent, start_coordinator, wait_for, TestDir,
};

const HOST: &str = "e2e-signed";
const WAIT: Duration = Duration::from_secs(20);

/// Waits until the host's entry in `/api/v1/hosts` satisfies `check`.
async fn host_until(http: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    wait_for(what, WAIT, || async {
        host_entry(http, HOST).await.filter(|h| check(h))
    })
    .await
}

fn detail(host: &Value) -> String {
    host["detail"].as_str().unwrap_or_default().to_string()
}

fn pause(issued_at_ms: i64, expires_at_ms: i64) -> Command {
    Command {
        id: ulid::Ulid::generate().to_string(),
        host: HOST.into(),
        issued_at_ms,
        expires_at_ms,
        kind: CommandKind::PauseRemediation(true),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_act_on_signed_commands_and_refuse_replayed_expired_and_foreign_ones() {
    let dir = TestDir::new();
    // A Mosquitto without an ACL, where anyone may publish on the agent's command topic
    // (the embedded broker lets nobody but the coordinator): the agent's own checks are
    // all that stands between an attacker on such a broker and its services.
    let mosquitto = vigil_tests::start_mosquitto(dir.path());
    let c = start_coordinator(&dir, Some(&mosquitto.url), &[]).await;
    let agent = start_agent(HOST, &c.broker, &[], dir.path());
    host_until(&c.http, "agent online", |h| {
        h["online"] == true && h["agent_version"].is_string()
    })
    .await;

    // Listen on the agent's command topic, as an attacker on the broker could.
    let topic = topics::agent(HOST, AgentChannel::Commands);
    let (sniffer, mut captured) = bundle_subscriber(&c.broker, "e2e-sniffer", &topic).await;

    // The real path: pause over REST, the agent pauses.
    let api = format!("{}/api/v1/hosts/{HOST}/remediation", c.http);
    let (code, body) = post_raw(&format!("{api}/pause"), "").await;
    assert!((200..300).contains(&code), "{code} {body}");
    host_until(&c.http, "paused", |h| h["remediation_paused"] == true).await;
    let (_, pause_payload) = tokio::time::timeout(WAIT, captured.recv())
        .await
        .expect("the pause command was seen on the topic")
        .expect("sniffer alive");
    let (code, body) = post_raw(&format!("{api}/resume"), "").await;
    assert!((200..300).contains(&code), "{code} {body}");
    host_until(&c.http, "resumed", |h| h["remediation_paused"] == false).await;

    let inject = |payload: Vec<u8>| {
        let sniffer = sniffer.clone();
        let topic = topic.clone();
        async move {
            sniffer
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .expect("publish");
        }
    };

    // 1. The captured pause, replayed.
    inject(pause_payload).await;
    let host = host_until(&c.http, "replay refused", |h| {
        detail(h).contains("replayed")
    })
    .await;
    assert_eq!(host["remediation_paused"], false, "{host}");

    // 2. Signed with the coordinator's own key, but past its expiry.
    let key_file = dir.path().join("data/bundle-signing.key");
    let coordinator_key = BundleKeys::load(&key_file).expect("coordinator key");
    let now = now_ms();
    let expired = pause(now - 600_000, now - 300_000);
    inject(wire::encode(&command_auth::sign(
        &coordinator_key,
        &expired,
    )))
    .await;
    let host = host_until(&c.http, "expired refused", |h| {
        detail(h).contains("expired")
    })
    .await;
    assert!(detail(&host).contains(&expired.id), "{host}");
    assert_eq!(host["remediation_paused"], false, "{host}");

    // 3. Fresh, but signed by another key.
    let stranger = BundleKeys::generate();
    let now = now_ms();
    inject(wire::encode(&command_auth::sign(
        &stranger,
        &pause(now + 1000, now + 60_000),
    )))
    .await;
    let host = host_until(&c.http, "foreign signature refused", |h| {
        detail(h).contains("bad signature")
    })
    .await;
    assert_eq!(host["remediation_paused"], false, "{host}");

    // 4. Not signed at all (the old, bare command).
    let now = now_ms();
    inject(wire::encode(&pause(now + 2000, now + 60_000))).await;
    let host = host_until(&c.http, "unsigned refused", |h| {
        detail(h).contains("not a signed command")
    })
    .await;
    assert_eq!(host["remediation_paused"], false, "{host}");

    // The coordinator's next real command still works.
    let (code, body) = post_raw(&format!("{api}/pause"), "").await;
    assert!((200..300).contains(&code), "{code} {body}");
    host_until(&c.http, "paused again", |h| h["remediation_paused"] == true).await;
    agent.stop();
    c.proc.stop();
}
