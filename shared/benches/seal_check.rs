//! What the coordinator spends authenticating one agent message: a MAC check under a
//! session key against an ed25519 signature check, for sealed metric batches of 10, 100
//! and 1,000 samples (the bench's batches hold 100), on one core.
//!
//! Run: `cargo bench -p vigil-shared --bench seal_check`
//!
//! Each figure is the authentication step alone, as the coordinator's ingest runs it per
//! message once the payload is decoded: for the MAC, reading the seal to find its key id
//! ([`agent_auth::peek`]) and checking the MAC ([`agent_auth::open_mac`]); for the
//! signature, [`agent_auth::open`] (signature check, then reading the seal); the MAC
//! path's two parts are also shown alone. Rounds are
//! interleaved and the median is reported, because machines here are noisy.

use std::hint::black_box;
use std::time::{Duration, Instant};

use vigil_shared::agent_auth::{
    self, AgentKey, AgentPublicKey, Authenticator, SealedMessage, Sealer, SignedHello,
};
use vigil_shared::bundle::{BundleKeys, PublicKey};
use vigil_shared::topics::AgentChannel;
use vigil_shared::wire::{self, MetricBatch, Sample};

const ROUND: Duration = Duration::from_millis(300);
const ROUNDS: usize = 7;

fn batch(samples: usize) -> MetricBatch {
    MetricBatch {
        host: "web-01".into(),
        seq: 1,
        sent_at_ms: 1_700_000_000_000,
        labels: vec![("role".into(), "web".into())],
        samples: (0..samples)
            .map(|i| Sample {
                name: format!("metric_{}", i % 10),
                value: i as f64 * 1.5,
                ts_ms: 1_700_000_000_000 + i as i64,
                tags: vec![("core".into(), (i / 10).to_string())],
            })
            .collect(),
    }
}

/// Runs `check` for [`ROUND`]; returns µs per call.
fn round(mut check: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < ROUND {
        for _ in 0..64 {
            check();
        }
        n += 64;
    }
    start.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let coordinator = BundleKeys::generate();
    let key = AgentKey::generate();
    let public = AgentPublicKey::from_hex(&key.public_hex()).expect("public key");
    let sealer = Sealer::new("web-01", key).with_coordinator_key(Some(
        PublicKey::from_hex(&coordinator.public_hex()).expect("coordinator key"),
    ));
    let hello = wire::decode::<SignedHello>(&sealer.hello().expect("hello")).expect("hello");
    let opened = agent_auth::open_hello(&hello, &public, "web-01").expect("hello opens");
    let (answer, session_key) =
        agent_auth::welcome(&coordinator, &opened, &hello.signed).expect("welcome");
    sealer.accept_welcome(&answer).expect("welcome taken");

    println!("per-message authentication at the coordinator (median of {ROUNDS} rounds):");
    for samples in [10usize, 100, 1000] {
        let body = wire::encode(&batch(samples));
        let maced: SealedMessage =
            wire::decode(&sealer.seal(AgentChannel::Metrics, body.clone())).expect("sealed");
        let signed: SealedMessage =
            wire::decode(&sealer.seal_signed(AgentChannel::Metrics, body)).expect("sealed");
        let (mut mac, mut sig, mut mac_only, mut decode_only) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let Authenticator::Mac(tag) = maced.auth else {
            unreachable!("sealed with the session key")
        };
        for _ in 0..ROUNDS {
            mac_only.push(round(|| {
                black_box(session_key.verifies(black_box(&maced.signed), &tag));
            }));
            decode_only.push(round(|| {
                black_box(agent_auth::peek(black_box(&maced)).expect("peek"));
            }));
            mac.push(round(|| {
                let seal = agent_auth::peek(black_box(&maced)).expect("peek");
                black_box(
                    agent_auth::open_mac(
                        &maced,
                        seal,
                        &session_key,
                        "web-01",
                        AgentChannel::Metrics,
                    )
                    .expect("MAC checks"),
                );
            }));
            sig.push(round(|| {
                black_box(
                    agent_auth::open(black_box(&signed), &public, "web-01", AgentChannel::Metrics)
                        .expect("signature checks"),
                );
            }));
        }
        let (mac, sig) = (median(mac), median(sig));
        println!(
            "  batch of {samples:>4} samples ({:>6} signed bytes): MAC path {mac:>7.2} µs \
             (BLAKE3 check alone {:>5.2} µs, reading the seal {:>5.2} µs), ed25519 path \
             {sig:>7.2} µs; ratio {:.1}×",
            maced.signed.len(),
            median(mac_only),
            median(decode_only),
            sig / mac
        );
    }
}
