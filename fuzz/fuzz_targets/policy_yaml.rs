//! The policy loader (YAML or JSON policy files, and the policy files of a bundle).
//!
//! Loading never panics. A file that loads is written back (as YAML, the way policy
//! files are, and as JSON, the way the coordinator stores REST-created policies) and
//! read again into the same policies: what was accepted once is accepted after a
//! restart.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_shared::policy::load;
use vigil_shared::policy::PolicySpec;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(policies) = load::load_text(text, "fuzz.yaml") {
        let specs = load::parse_specs(text, "fuzz.yaml").expect("it parsed a moment ago");
        let yaml = serde_yaml_ng::to_string(&specs).expect("specs serialize");
        let again = load::load_text(&yaml, "again.yaml")
            .unwrap_or_else(|e| panic!("written back as\n{yaml}\nit no longer loads: {e}"));
        assert_eq!(again, policies, "YAML round trip, written as\n{yaml}");
        for (spec, policy) in specs.iter().zip(&policies) {
            let json = serde_json::to_vec(spec).expect("a spec serializes");
            let stored: PolicySpec = serde_json::from_slice(&json).unwrap_or_else(|e| {
                panic!(
                    "stored as {}, it no longer reads: {e}",
                    String::from_utf8_lossy(&json)
                )
            });
            let checked = stored.check().expect("a stored spec checks as before");
            assert_eq!(&checked, policy, "JSON round trip");
        }
    }
});
