//! The seed corpora: valid encodings made by Vigil's own encoders (the values are those of
//! the unit tests), one list per target. `make_seeds` writes them to `corpus/<target>/`.

use std::collections::BTreeMap;

use vigil_agent::job::{Job, Origin};
use vigil_agent::store::{encode_outbox_value, Counters};
use vigil_coordinator::fuzzing::BundleRecord;
use vigil_coordinator::store::actions::{ActionRecord, ActionSource, Transition};
use vigil_coordinator::store::agents::{AgentRecord, JoinTokenRecord};
use vigil_coordinator::store::feed::{FeedEntry, FeedEvent};
use vigil_coordinator::store::records::{HostRecord, LatestPoint, Source, StoredPoint};
use vigil_coordinator::store::tokens::{Role, TokenRecord};
use vigil_coordinator::store::{codec, keys};
use vigil_shared::agent_auth::{open, AgentKey, Seal, SealedMessage, Sealer};
use vigil_shared::bundle::{Bundle, BundleFile};
use vigil_shared::command_auth;
use vigil_shared::policy::{ActionKind, PolicySpec};
use vigil_shared::topics::AgentChannel;
use vigil_shared::wire::{
    decode, encode, ActionEvent, ActionState, AgentState, AgentStatus, AppliedBundle, Command,
    CommandKind, MetricBatch, PolicyEvent, PolicyRunnerStatus, QueueStatus, Sample,
};

use crate::{AGENT, COORDINATOR, HOST, NOW_MS};

/// One seed: the target it is for and its bytes.
pub type Seed = (&'static str, Vec<u8>);

/// The policy files shipped in `policies/`, as seeds for the loader.
const POLICY_FILES: [&str; 3] = [
    include_str!("../../policies/examples/original-format.yaml"),
    include_str!("../../policies/examples/extensions.yaml"),
    include_str!("../../policies/local/host.yaml"),
];

fn batch() -> MetricBatch {
    MetricBatch {
        host: HOST.into(),
        seq: 7,
        sent_at_ms: NOW_MS,
        labels: vec![("role".into(), "web".into())],
        samples: vec![
            Sample {
                name: "cpu_percent".into(),
                value: 42.5,
                ts_ms: NOW_MS,
                tags: vec![],
            },
            Sample {
                name: "disk_free_percent".into(),
                value: 71.0,
                ts_ms: NOW_MS,
                tags: vec![("mount".into(), "/".into())],
            },
        ],
    }
}

fn status() -> AgentStatus {
    AgentStatus {
        host: HOST.into(),
        state: AgentState::Online,
        agent_version: "0.1.0".into(),
        started_at_ms: NOW_MS - 60_000,
        sent_at_ms: NOW_MS,
        interval_ms: 5000,
        labels: vec![("role".into(), "web".into())],
        bundles: vec![AppliedBundle {
            group: "web".into(),
            version: 3,
            hash: "ab".into(),
        }],
        bundle_error: Some("bad signature".into()),
        remediation_paused: false,
        detail: None,
        policies: PolicyRunnerStatus {
            loaded: 2,
            enabled: 1,
            interval_ms: 5000,
            last_evaluation_ms: Some(NOW_MS),
            evaluations: 10,
            source: Some("bundle web v3".into()),
            load_error: None,
            load_errors: 0,
        },
        queue: QueueStatus {
            pending: 1,
            last_processed: Some(("01J".into(), "nginx.service".into(), NOW_MS)),
            open_circuits: vec!["docker".into()],
            ..QueueStatus::default()
        },
        delivery: Some(vigil_shared::wire::DeliveryStatus {
            outbox_pending: 3,
            metrics_buffered: 120,
            clock_skew_ms: Some(360_000),
            storage_error: Some("No space left on device".into()),
            ..Default::default()
        }),
    }
}

fn policy_event() -> PolicyEvent {
    PolicyEvent {
        id: "01JAAAAAAAAAAAAAAAAAAAAAAA".into(),
        host: HOST.into(),
        policy: "high-cpu".into(),
        target: HOST.into(),
        severity: "critical".into(),
        kind: "act".into(),
        summary: "cpu_percent > 80 (observed 93.5)".into(),
        explanation: Some(r#"{"leaf":"cpu_percent > 80","observed":93.5}"#.into()),
        action: Some("restart".into()),
        step: Some(0),
        action_requested: true,
        dry_run: false,
        detail: Some("flap".into()),
        at_ms: NOW_MS,
    }
}

fn action_event() -> ActionEvent {
    ActionEvent {
        id: "01HZXAAAAAAAAAAAAAAAAAAAAA".into(),
        host: HOST.into(),
        policy: Some("high-cpu".into()),
        target: "nginx.service".into(),
        action: "restart".into(),
        state: ActionState::Running,
        attempt: 1,
        dry_run: false,
        detail: Some("restarting".into()),
        created_at_ms: NOW_MS - 1000,
        at_ms: NOW_MS,
        max_attempts: 3,
        executor: Some("systemd".into()),
        step: Some(0),
        params: Some(r#"{"timeout":30}"#.into()),
    }
}

fn commands() -> Vec<Command> {
    let command = |id: &str, kind| Command {
        id: id.into(),
        host: HOST.into(),
        issued_at_ms: NOW_MS - 1000,
        expires_at_ms: NOW_MS + 300_000,
        kind,
    };
    vec![
        command("c1", CommandKind::PauseRemediation(true)),
        command("c2", CommandKind::Resync),
        command(
            "c3",
            CommandKind::RunAction {
                action_id: "01HZX".into(),
                target: "nginx.service".into(),
                action: "restart".into(),
                params: vec![("timeout".into(), "30".into())],
                dry_run: false,
            },
        ),
    ]
}

fn bundle(version: u64) -> Bundle {
    Bundle {
        group: "web".into(),
        selector: vec![("role".into(), "web".into())],
        version,
        created_at_ms: NOW_MS,
        files: vec![
            BundleFile {
                name: "manifest.yaml".into(),
                text: "units:\n  - name: nginx.service\n".into(),
            },
            BundleFile {
                name: "p.yaml".into(),
                text: POLICY_FILES[0].into(),
            },
        ],
        budget: None,
    }
}

/// Payloads the agent seals, one per channel, and its last will.
fn sealed_payloads() -> Vec<(AgentChannel, Vec<u8>)> {
    let key = AgentKey::from_hex(&AGENT.key.private_hex()).expect("the same key");
    let sealer = Sealer::new(HOST, key);
    let will = AgentStatus {
        state: AgentState::Offline,
        ..status()
    };
    vec![
        (AgentChannel::Status, sealer.seal_will(encode(&will))),
        (
            AgentChannel::Metrics,
            sealer.seal(AgentChannel::Metrics, encode(&batch())),
        ),
        (
            AgentChannel::Status,
            sealer.seal(AgentChannel::Status, encode(&status())),
        ),
        (
            AgentChannel::Actions,
            sealer.seal(AgentChannel::Actions, encode(&action_event())),
        ),
        (
            AgentChannel::Events,
            sealer.seal(AgentChannel::Events, encode(&policy_event())),
        ),
        (
            AgentChannel::Metrics,
            sealer.seal(AgentChannel::Metrics, encode(&batch())),
        ),
    ]
}

fn channel_slot(channel: AgentChannel) -> u8 {
    match channel {
        AgentChannel::Metrics => 0,
        AgentChannel::Status => 1,
        AgentChannel::Actions => 2,
        _ => 3,
    }
}

fn wire_decode() -> Vec<Vec<u8>> {
    let mut out = vec![
        encode(&batch()),
        encode(&status()),
        encode(&policy_event()),
        encode(&action_event()),
    ];
    out.extend(commands().iter().map(encode));
    out.extend(
        commands()
            .iter()
            .map(|c| encode(&command_auth::sign(&COORDINATOR.keys, c))),
    );
    out.push(encode(&COORDINATOR.keys.sign(&bundle(3))));
    out.extend(sealed_payloads().into_iter().map(|(_, p)| p));
    out.push(b"vigil/v1/agents/web-01/metrics".to_vec());
    out
}

fn sealed_open() -> Vec<Vec<u8>> {
    let payloads = sealed_payloads();
    let mut out: Vec<Vec<u8>> = payloads
        .iter()
        .map(|(channel, payload)| {
            let mut seed = vec![channel_slot(*channel) << 1];
            seed.extend_from_slice(payload);
            seed
        })
        .collect();
    let seals: Vec<(AgentChannel, Seal)> = payloads
        .iter()
        .map(|(channel, payload)| {
            let sealed = decode::<SealedMessage>(payload).expect("a sealed payload");
            (
                *channel,
                open(&sealed, &AGENT.public, HOST, *channel).expect("opens"),
            )
        })
        .collect();
    // A run of steps: each seal as sent, then a retained replay an hour later, then the
    // will (armed by the status that followed it).
    for selector in [1u8, 3] {
        let mut seed = vec![selector];
        for (retained, delay) in [(false, 0), (true, 3_600_000)] {
            for (channel, seal) in &seals {
                let step = (
                    seal,
                    channel_slot(*channel),
                    retained,
                    seal.sealed_at_ms + delay,
                );
                seed.extend(postcard::to_stdvec(&step).expect("a step encodes"));
            }
        }
        out.push(seed);
    }
    out
}

fn command_verify() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for command in commands() {
        let mut seed = vec![0];
        seed.extend(encode(&command_auth::sign(&COORDINATOR.keys, &command)));
        out.push(seed);
        let mut seed = vec![1];
        seed.extend(postcard::to_stdvec(&(&command, NOW_MS, NOW_MS - 3_600_000)).expect("encodes"));
        out.push(seed);
    }
    out
}

fn bundle_verify() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (selector, version) in [(0u8, 3), (2, 2), (2, 1)] {
        let mut seed = vec![selector];
        seed.extend(encode(&COORDINATOR.keys.sign(&bundle(version))));
        out.push(seed);
    }
    for applied in [None, Some((2u64, "00".to_string())), Some((3, "ff".into()))] {
        let mut seed = vec![1];
        seed.extend(postcard::to_stdvec(&(bundle(3), applied)).expect("encodes"));
        out.push(seed);
    }
    out
}

fn policy_yaml() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = POLICY_FILES.iter().map(|t| t.as_bytes().to_vec()).collect();
    out.push(
        br#"[{"name":"p","condition":{"type":"all","conditions":[{"type":"metric_exceeds","metric":"cpu_percent","threshold":80},{"type":"unit_state","expect":["active"]}]},"for":"3 attempts","actions":["restart",{"action":"webhook","params":{"url":"http://pager/hook"}}]}]"#
            .to_vec(),
    );
    out
}

fn bundle_manifest() -> Vec<Vec<u8>> {
    vec![
        b"units:\n  - name: nginx.service\ncontainers:\n  - name: web-1\n    remediation: start\n"
            .to_vec(),
        b"units:\n  - name: sshd.service\n    remediation: restart\n".to_vec(),
        Vec::new(),
    ]
}

fn policy_expr() -> Vec<Vec<u8>> {
    [
        "cpu_usage > 80% for 5m",
        "disk_free_percent <= 10",
        "health_check_failed for 3 attempts",
        "memory_usage increasing for 30m",
        "memory_percent increasing by more than 10 over 30m",
        "1h 30m",
        "250ms",
        "2026-01-20T12:34:56.789Z",
        "1700000000000",
    ]
    .iter()
    .map(|t| t.as_bytes().to_vec())
    .collect()
}

fn rest_bodies() -> Vec<Vec<u8>> {
    [
        r#"{"name":"cpu_usage","value":85.5,"tags":{"host":"web-server-01","region":"us-east-1"},"timestamp":"2026-01-20T12:34:56Z"}"#,
        r#"{"name":"cpu_usage","value":85.5,"timestamp":1700000000000}"#,
        r#"{"target":"nginx.service","action":"restart","host":"web-01","status":"pending","details":"by hand","params":{"timeout":30},"dry_run":true}"#,
        r#"{"join_token":"vigil_join_0123","host":"web-01","public_key":"ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c"}"#,
        r#"{"name":"ci","labels":{"role":"web"},"host":"web-01","uses":3,"ttl":"24h"}"#,
        r#"{"name":"high-cpu","description":"CPU","severity":"critical","target":"web-*","enabled":true,"condition":{"type":"metric_exceeds","metric":"cpu_percent","threshold":80},"for":"5m","cooldown":"1m","verify":"30s","flap":{"max_actions":3,"within":"10m","reset_after":"10m"},"actions":["restart",{"action":"webhook","params":{"url":"http://pager/hook"}}],"dry_run":false}"#,
        r#"{"condition":"cpu_percent > 90 for 1m","action":"restart","actions":null}"#,
        "name=cpu_percent&host=web-01&from=2026-01-20T12:00:00Z&to=1700000000000&limit=10",
        "host=web-01&policy=high-cpu&kind=act&since=2026-01-20T12:00:00Z&limit=5&status=dead_letter",
        "kind=violation,action&host=web-01,db-01&path_status=pending",
    ]
    .iter()
    .map(|t| t.as_bytes().to_vec())
    .collect()
}

fn coordinator_records() -> Vec<Vec<u8>> {
    let host = HostRecord {
        host: HOST.into(),
        first_seen_ms: NOW_MS - 86_400_000,
        last_seen_ms: NOW_MS,
        source: Source::Mqtt,
        status: Some(status()),
        clock_skew_ms: Some(-42),
        status_order: Some((3, 17)),
        silent_since_ms: Some(NOW_MS - 5),
        running_policies: None,
    };
    let http_host = HostRecord {
        source: Source::Http,
        status: None,
        ..host.clone()
    };
    let latest = LatestPoint {
        name: "cpu_percent".into(),
        value: 42.5,
        ts_ms: NOW_MS,
        tags: vec![("mount".into(), "/".into())],
    };
    let stored = StoredPoint {
        value: 71.0,
        tags: vec![("mount".into(), "/".into())],
    };
    let feed = |seq, event| FeedEntry {
        seq,
        stored_ms: NOW_MS,
        at_ms: NOW_MS - 10,
        event,
    };
    let action = ActionRecord {
        id: "01HZXAAAAAAAAAAAAAAAAAAAAA".into(),
        host: HOST.into(),
        policy: Some("high-cpu".into()),
        target: "nginx.service".into(),
        action: "restart".into(),
        status: ActionState::Completed,
        attempts: 1,
        max_attempts: 3,
        dry_run: false,
        executor: Some("systemd".into()),
        step: Some(0),
        params: Some(r#"{"timeout":30}"#.into()),
        source: ActionSource::Agent,
        created_at_ms: NOW_MS - 1000,
        started_at_ms: Some(NOW_MS - 900),
        finished_at_ms: Some(NOW_MS),
        outcome: Some(ActionState::Resolved),
        transitions: vec![
            Transition {
                state: ActionState::Running,
                attempt: 1,
                at_ms: NOW_MS - 900,
                detail: None,
            },
            Transition {
                state: ActionState::Completed,
                attempt: 1,
                at_ms: NOW_MS,
                detail: Some("restarted".into()),
            },
        ],
    };
    let b = bundle(3);
    let bundle_record = BundleRecord {
        group: b.group.clone(),
        version: b.version,
        hash: "ab".into(),
        created_at_ms: b.created_at_ms,
        selector: b.selector.clone(),
        files: b.files.clone(),
        removed: false,
        budget: None,
    };
    let labels: BTreeMap<String, String> = [("role".to_string(), "web".to_string())].into();
    let json = |v: &dyn erased::Json| v.json();
    let mut out = vec![
        codec::encode(&host),
        codec::encode(&http_host),
        codec::encode(&latest),
        codec::encode(&stored),
        codec::encode(&policy_event()),
        codec::encode(&feed(1, FeedEvent::Violation(policy_event()))),
        codec::encode(&feed(2, FeedEvent::Action(action_event()))),
        codec::encode(&feed(
            3,
            FeedEvent::Host {
                host: HOST.into(),
                online: true,
                agent_version: "0.1.0".into(),
                labels: vec![("role".into(), "web".into())],
            },
        )),
        codec::encode(&feed(
            3,
            FeedEvent::Offline {
                host: HOST.into(),
                connection_lost: true,
                agent_version: "0.1.0".into(),
                labels: vec![("role".into(), "web".into())],
            },
        )),
        codec::encode(&feed(
            3,
            FeedEvent::Silence {
                host: HOST.into(),
                silent: true,
                last_seen_ms: NOW_MS - 3000,
                agent_version: "0.1.0".into(),
                labels: vec![("role".into(), "web".into())],
            },
        )),
        codec::encode(&feed(
            4,
            FeedEvent::Bundle {
                host: HOST.into(),
                group: "web".into(),
                version: 3,
                hash: "ab".into(),
            },
        )),
        codec::encode(&feed(
            5,
            FeedEvent::Drift {
                host: HOST.into(),
                group: "web".into(),
                desired_version: Some(3),
                applied_version: None,
                in_sync: false,
            },
        )),
        codec::encode(&action),
        codec::encode(&bundle_record),
        json(&TokenRecord {
            id: "0a1b2c3d".into(),
            name: "ci".into(),
            role: Role::Operator,
            created_ms: NOW_MS,
            revoked_ms: Some(NOW_MS + 1),
        }),
        json(&AgentRecord {
            host: HOST.into(),
            public_key: AGENT.key.public_hex(),
            mqtt_password_sha256: "00".repeat(32),
            labels: labels.clone(),
            join_token: "0a1b2c3d".into(),
            enrolled_ms: NOW_MS,
            revoked_ms: None,
        }),
        json(&JoinTokenRecord {
            id: "0a1b2c3d".into(),
            name: "rack-1".into(),
            labels,
            host: Some(HOST.into()),
            uses_left: 3,
            created_ms: NOW_MS,
            expires_ms: NOW_MS + 86_400_000,
            revoked_ms: None,
        }),
        keys::series(HOST, "cpu_percent"),
        keys::history(1, NOW_MS, 7).to_vec(),
    ];
    let specs: Vec<PolicySpec> =
        vigil_shared::policy::load::parse_specs(POLICY_FILES[1], "x").expect("example loads");
    out.extend(specs.iter().map(|s| json(s)));
    out
}

fn job(id: &str, state: ActionState) -> Job {
    Job {
        id: id.into(),
        host: HOST.into(),
        origin: Origin::Policy {
            name: "high-cpu".into(),
            step: 0,
        },
        target: "nginx.service".into(),
        kind: ActionKind::Restart,
        written: "restart-service".into(),
        params: [("timeout".to_string(), serde_json::json!(30))].into(),
        dry_run: false,
        state,
        attempt: 1,
        max_attempts: 3,
        created_at_ms: NOW_MS - 1000,
        not_before_ms: NOW_MS,
        executor: Some("systemd".into()),
        detail: Some("restarting".into()),
        seq: 4,
        early_verification: Some(true),
        budget: None,
        deferred_attempt: None,
    }
}

fn agent_records() -> Vec<Vec<u8>> {
    let json = |v: &dyn erased::Json| v.json();
    let manual = Job {
        origin: Origin::Manual,
        ..job("01J2", ActionState::Pending)
    };
    let mut outbox = 5u64.to_be_bytes().to_vec();
    outbox.extend(encode_outbox_value(
        "vigil/v1/agents/web-01/actions",
        &encode(&action_event()),
    ));
    vec![
        json(&job("01J1", ActionState::Running)),
        json(&manual),
        json(&vec![job("01J3", ActionState::Completed), manual.clone()]),
        json(&Counters {
            enqueued_total: 3,
            dequeued_total: 2,
            completed_total: 1,
            failed_total: 1,
            last_processed: Some(("01J3".into(), "nginx.service".into(), NOW_MS)),
            paused: true,
        }),
        outbox,
        encode(&COORDINATOR.keys.sign(&bundle(3))),
    ]
}

/// JSON encoding through a trait object, so one closure serves every record type.
mod erased {
    pub trait Json {
        fn json(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> Vec<u8> {
            serde_json::to_vec(self).expect("a record serializes")
        }
    }
}

/// Every seed of every target.
/// An MQTT packet: the fixed header's first byte, the remaining length, the body.
fn mqtt_packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        out.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// An MQTT string: its length (2 bytes, big-endian), then its bytes.
fn mqtt_string(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

/// What an agent and an integration send the front: an agent's CONNECT (with a retained
/// will on its status), its publishes and subscriptions, an integration's subscription,
/// acknowledgements, pings, DISCONNECT, a publish on another host's topic, and all the
/// agent's packets in one buffer.
fn mqtt_front() -> Vec<Vec<u8>> {
    let mut connect = b"\0\x04MQTT\x04\xEC\0\x1E".to_vec();
    for field in [
        b"vigil-agent-web-01".as_slice(),
        b"vigil/v1/agents/web-01/status",
        b"offline",
        b"web-01",
        b"password",
    ] {
        connect.extend(mqtt_string(field));
    }
    let publish = |topic: &[u8]| {
        let mut body = mqtt_string(topic);
        body.extend_from_slice(&[0, 7]);
        body.extend(encode(&batch()));
        mqtt_packet(0x32, &body)
    };
    let subscribe = |filters: &[&[u8]]| {
        let mut body = vec![0, 8];
        for filter in filters {
            body.extend(mqtt_string(filter));
            body.push(1);
        }
        mqtt_packet(0x82, &body)
    };
    let agent = vec![
        mqtt_packet(0x10, &connect),
        publish(b"vigil/v1/agents/web-01/metrics"),
        subscribe(&[b"vigil/v1/agents/web-01/commands", b"vigil/v1/bundles/+"]),
        mqtt_packet(0x40, &[0, 9]),
        mqtt_packet(0xC0, &[]),
        mqtt_packet(0xE0, &[]),
    ];
    let mut out = agent.clone();
    out.push(subscribe(&[b"vigil/v1/json/#"]));
    out.push(publish(b"vigil/v1/agents/db-02/metrics"));
    out.push(agent[1..].concat());
    out
}

pub fn all() -> Vec<Seed> {
    let mut out = Vec::new();
    for (target, seeds) in [
        ("wire_decode", wire_decode()),
        ("sealed_open", sealed_open()),
        ("command_verify", command_verify()),
        ("bundle_verify", bundle_verify()),
        ("policy_yaml", policy_yaml()),
        ("bundle_manifest", bundle_manifest()),
        ("policy_expr", policy_expr()),
        ("rest_bodies", rest_bodies()),
        ("coordinator_records", coordinator_records()),
        ("agent_records", agent_records()),
        ("mqtt_front", mqtt_front()),
    ] {
        out.extend(seeds.into_iter().map(|s| (target, s)));
    }
    out
}
