//! A bundle's desired-state manifest (`manifest.yaml`): parsing never panics, and the
//! policies made from a manifest that parses are valid policies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_shared::bundle_manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(specs) = bundle_manifest::manifest_policies("web", text) {
        for spec in &specs {
            spec.check().expect("a manifest's policies are valid");
        }
    }
});
