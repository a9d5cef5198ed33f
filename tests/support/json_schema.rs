//! The JSON Schemas of the MQTT JSON topics (`schemas/json/`), checked with Debian's
//! python3-jsonschema: which schema a topic's messages follow, and a validator for many
//! messages at once.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The schema file for a `vigil/v1/json/{stream}/{host}` topic.
pub fn schema_for(topic: &str) -> PathBuf {
    let stream = topic.split('/').nth(3).unwrap_or("?");
    let name = match stream {
        "metrics" => "metrics",
        "violations" => "violation",
        "actions" => "action",
        "hosts" => "host",
        "bundles" => "bundle",
        "drift" => "drift",
        other => panic!("unexpected JSON stream `{other}` in {topic}"),
    };
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../schemas/json")
        .join(format!("{name}.schema.json"))
}

/// Validates every `(topic, message)` against its schema with Debian's python3-jsonschema
/// (one run for all): the validator's words on the first failure.
pub fn validate_all(dir: &Path, messages: &[(String, String)]) -> Result<String, String> {
    let cases: Vec<Value> = messages
        .iter()
        .map(|(topic, payload)| {
            serde_json::json!({
                "topic": topic,
                "schema": schema_for(topic).display().to_string(),
                "message": serde_json::from_str::<Value>(payload)
                    .unwrap_or_else(|e| panic!("{topic}: not JSON ({e}): {payload}")),
            })
        })
        .collect();
    let file = dir.join("json-cases.json");
    std::fs::write(&file, serde_json::to_vec(&cases).expect("encode")).expect("write cases");
    let script = r#"
import json, sys
import jsonschema
cases = json.load(open(sys.argv[1]))
schemas = {}
for case in cases:
    path = case["schema"]
    if path not in schemas:
        schema = json.load(open(path))
        jsonschema.Draft7Validator.check_schema(schema)
        schemas[path] = jsonschema.Draft7Validator(schema)
    errors = list(schemas[path].iter_errors(case["message"]))
    if errors:
        print(case["topic"], "does not match", path, ":", errors[0].message, "at", list(errors[0].path))
        sys.exit(1)
print("validated", len(cases), "messages against", len(schemas), "schemas")
"#;
    let output = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .arg(&file)
        .output()
        .expect("run /usr/bin/python3 (Debian's python3-jsonschema)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        Ok(said)
    } else {
        Err(said)
    }
}
