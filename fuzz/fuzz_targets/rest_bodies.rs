//! REST request bodies and query strings, through the same parsing and checks the
//! handlers run: ingest, manual actions, Alertmanager's webhook, enrollment, join tokens,
//! policy create and update (and the JSON the created policy is stored as), and the list
//! routes' query parameters. Nothing panics, and what is accepted obeys the rules it was checked by.
#![no_main]

use std::collections::HashMap;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use vigil_coordinator::fuzzing;
use vigil_coordinator::fuzzing::spec_json;
use vigil_coordinator::fuzzing::{actions, events, ingest, policies, query, violations};
use vigil_fuzz::NOW_MS;
use vigil_shared::policy::PolicySpec;
use vigil_shared::validate;

/// The stored policy a `PUT /api/v1/policies/{name}` patch applies to.
static BASE: LazyLock<PolicySpec> = LazyLock::new(|| {
    serde_json::from_value(serde_json::json!({
        "name": "high-cpu",
        "target": "web-*",
        "condition": "cpu_percent > 80 for 5m",
        "actions": ["restart", {"action": "webhook", "params": {"url": "http://pager/hook"}}],
        "cooldown": "1m",
    }))
    .expect("the base policy reads")
});

/// A policy spec accepted over REST is stored as JSON and read back at every start.
fn stored_and_read_back(spec: &PolicySpec) {
    let Ok(policy) = spec.check() else {
        return;
    };
    let json = serde_json::to_vec(spec).expect("a spec serializes");
    let stored: PolicySpec = serde_json::from_slice(&json).unwrap_or_else(|e| {
        panic!(
            "stored as {}, it no longer reads: {e}",
            String::from_utf8_lossy(&json)
        )
    });
    assert_eq!(
        stored.check().as_ref(),
        Ok(&policy),
        "read back as the same policy"
    );
}

fn bodies(body: &[u8]) {
    if let Ok(sample) = ingest::parse(body, NOW_MS) {
        validate::host_name(&sample.host).expect("an accepted host is valid");
        validate::metric_name(&sample.sample.name).expect("an accepted name is valid");
        validate::metric_value(sample.sample.value).expect("an accepted value is finite");
    }
    let _ = fuzzing::new_action(body);
    if let Ok(alerts) = fuzzing::alertmanager(body) {
        assert!(alerts <= 500, "at most 500 alerts are accepted");
    }
    let _ = fuzzing::enroll(body);
    if let Ok(ttl_ms) = fuzzing::join_token(body) {
        assert!(ttl_ms >= 0, "a join token's lifetime is not negative");
    }
    if let Ok(object) = policies::json_object(body) {
        if let Ok(spec) = spec_json::spec_from_value(&Value::Object(object.clone()), "") {
            stored_and_read_back(&spec);
        }
        if let Ok(spec) = spec_json::merge(&BASE, &object) {
            assert_eq!(spec.name, BASE.name, "an update cannot rename");
            stored_and_read_back(&spec);
        }
    }
}

/// `a=1&b=2`, as warp hands query strings over (without percent-decoding, which only
/// narrows what reaches the parsers).
fn params(text: &str) -> HashMap<String, String> {
    text.split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn queries(text: &str) {
    let params = params(text);
    if let Ok(q) = query::parse(&params, NOW_MS) {
        validate::metric_name(&q.name).expect("an accepted metric name is valid");
    }
    let _ = violations::parse(&params);
    let _ = actions::parse_query(&params, None);
    let _ = actions::parse_query(&params, params.get("path_status").map(String::as_str));
    let _ = events::EventFilter::parse(&params);
    let _ = policies::decode_segment(text);
}

fuzz_target!(|data: &[u8]| {
    bodies(data);
    if let Ok(text) = std::str::from_utf8(data) {
        queries(text);
    }
});
