//! `POST /api/v1/ingest` and its alias `POST /api/v1/ingest/agent/metrics`: one metric in
//! the original JSON shape, for things that cannot speak MQTT.
//!
//! ```json
//! {"name": "cpu_usage", "value": 85.5, "tags": {"host": "web-server-01", "region": "us-east-1"}}
//! ```
//!
//! `name` is 1–255 characters, `value` a finite number, `tags` an optional object of string
//! values; the `host` tag picks the host (`unknown` without one). An optional `timestamp`
//! (RFC 3339 or epoch ms, between 2000 and 2200: [`validate::timestamp`]) backdates the
//! sample, which is stored exactly like one that arrived over MQTT; the reply (201) comes
//! once it is committed to LMDB. A refused body is a 4xx naming the field, counted in
//! `vigil_http_ingest_rejected_total{field}` and `vigil_http_requests_rejected_total`.

use std::sync::Arc;

use serde_json::{Map, Value};
use vigil_shared::validate;
use vigil_shared::wire::{Sample, Tag};
use warp::http::StatusCode;
use warp::reply::Response;

use crate::http::error::{respond, ApiError};
use crate::http::Api;
use crate::policies::json::kind;
use crate::store::{Points, Source, Write};

/// Host name used for samples that carry no `host` tag.
pub const DEFAULT_HOST: &str = "unknown";

/// A sample read from a request body, with its host.
#[derive(Debug, PartialEq)]
pub struct HttpSample {
    /// The host (`tags.host`).
    pub host: String,
    /// The sample (tags without `host`).
    pub sample: Sample,
}

/// Handles one ingest request; refusals are counted under `route`.
pub async fn ingest(api: Arc<Api>, route: &'static str, body: bytes::Bytes) -> Response {
    let result = async {
        let parsed = parse(&body, vigil_shared::time::now_ms())
            .inspect_err(|e| {
                // Tag keys are the client's: counted as `tags`, so the label stays small.
                let field = crate::http::error::field_label(e.field.as_deref());
                api.telemetry
                    .http_ingest_rejected
                    .with_label_values(&[field])
                    .inc();
            })
            .map_err(|e| crate::http::error::counted(&api.telemetry, route, e))?;
        let metric_id = api
            .writer
            .send_and_wait(|reply| Write::Samples {
                points: Points::new(&parsed.host, &[], &[parsed.sample]),
                host: parsed.host,
                source: Source::Http,
                received_ms: vigil_shared::time::now_ms(),
                reply: Some(reply),
            })
            .await
            .map_err(|e| ApiError::from(e.as_ref()))?;
        Ok(warp::reply::with_status(
            warp::reply::json(&Stored {
                message: "Metric ingested successfully",
                metric_id,
                ok: true,
            }),
            StatusCode::CREATED,
        ))
    }
    .await;
    respond(result)
}

/// The 201 answer: `{"message","metric_id","ok"}`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Stored {
    /// Words.
    pub message: &'static str,
    /// The stored metric's id.
    pub metric_id: u64,
    /// Always true.
    pub ok: bool,
}

/// Reads and checks a request body, naming the first field at fault.
pub fn parse(body: &[u8], now_ms: i64) -> Result<HttpSample, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "body is not valid JSON ({e}); NaN and Infinity are not JSON numbers"
        ))
    })?;
    let Value::Object(object) = value else {
        return Err(ApiError::bad_request(
            "body must be a JSON object like {\"name\": \"cpu_usage\", \"value\": 85.5}",
        ));
    };
    let field = |e: validate::FieldError| ApiError::invalid_field(e.field.clone(), e.to_string());

    let name = match object.get("name") {
        Some(Value::String(name)) => name.clone(),
        Some(other) => {
            return Err(ApiError::invalid_field(
                "name",
                format!("field `name` must be a string, got {}", kind(other)),
            ))
        }
        None => return Err(ApiError::invalid_field("name", "field `name` is required")),
    };
    validate::metric_name(&name).map_err(field)?;

    let value = match object.get("value") {
        Some(Value::Number(n)) => n.as_f64().ok_or_else(|| {
            ApiError::invalid_field("value", "field `value` is not representable as a number")
        })?,
        Some(other) => {
            return Err(ApiError::invalid_field(
                "value",
                format!("field `value` must be a number, got {}", kind(other)),
            ))
        }
        None => {
            return Err(ApiError::invalid_field(
                "value",
                "field `value` is required",
            ))
        }
    };
    validate::metric_value(value).map_err(field)?;

    let tags = match object.get("tags") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(tags)) => string_tags(tags)?,
        Some(other) => {
            return Err(ApiError::invalid_field(
                "tags",
                format!(
                    "field `tags` must be an object of strings, got {}",
                    kind(other)
                ),
            ))
        }
    };
    validate::tags(tags.iter().map(|(k, v)| (k.as_str(), v.as_str()))).map_err(field)?;

    let ts_ms = match object.get("timestamp") {
        // The coordinator's own clock: not checked.
        None | Some(Value::Null) => now_ms,
        Some(Value::Number(n)) => {
            crate::http::handlers::agents::whole_number(n).ok_or_else(|| {
                ApiError::invalid_field(
                    "timestamp",
                    "field `timestamp` must be whole epoch milliseconds",
                )
            })?
        }
        Some(Value::String(text)) => vigil_shared::time::parse_time(text)
            .map_err(|e| ApiError::invalid_field("timestamp", format!("field `timestamp`: {e}")))?,
        Some(other) => {
            return Err(ApiError::invalid_field(
                "timestamp",
                format!(
                    "field `timestamp` must be RFC 3339 or epoch ms, got {}",
                    kind(other)
                ),
            ))
        }
    };
    if object.get("timestamp").is_some_and(|t| !t.is_null()) {
        validate::timestamp("timestamp", ts_ms).map_err(field)?;
    }

    let host = tags
        .iter()
        .find(|(k, _)| k == "host")
        .map_or(DEFAULT_HOST.to_string(), |(_, v)| v.clone());
    validate::host_name(&host).map_err(|e| {
        ApiError::invalid_field("tags.host", format!("field `tags.host`: {}", e.problem))
    })?;
    let tags = tags.into_iter().filter(|(k, _)| k != "host").collect();
    Ok(HttpSample {
        host,
        sample: Sample {
            name,
            value,
            ts_ms,
            tags,
        },
    })
}

fn string_tags(tags: &Map<String, Value>) -> Result<Vec<Tag>, ApiError> {
    tags.iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            other => Err(ApiError::invalid_field(
                format!("tags.{k}"),
                format!("tag `{k}` must be a string, got {}", kind(other)),
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(body: &str) -> Option<String> {
        parse(body.as_bytes(), 0).unwrap_err().field
    }

    #[test]
    fn the_seed_example_parses() {
        let parsed = parse(
            br#"{"name":"cpu_usage","value":85.5,"tags":{"host":"web-server-01","region":"us-east-1"}}"#,
            7,
        )
        .unwrap();
        assert_eq!(parsed.host, "web-server-01");
        assert_eq!(parsed.sample.name, "cpu_usage");
        assert_eq!(parsed.sample.value, 85.5);
        assert_eq!(parsed.sample.ts_ms, 7);
        assert_eq!(
            parsed.sample.tags,
            vec![("region".to_string(), "us-east-1".to_string())]
        );
    }

    #[test]
    fn without_a_host_tag_the_host_is_unknown() {
        assert_eq!(
            parse(br#"{"name":"x","value":1}"#, 0).unwrap().host,
            DEFAULT_HOST
        );
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(field_of(r#"{"value":1}"#).as_deref(), Some("name"));
        assert_eq!(
            field_of(&format!(r#"{{"name":"{}","value":1}}"#, "n".repeat(300))).as_deref(),
            Some("name")
        );
        assert_eq!(
            field_of(r#"{"name":"","value":1}"#).as_deref(),
            Some("name")
        );
        assert_eq!(
            field_of(r#"{"name":"x","value":"12"}"#).as_deref(),
            Some("value")
        );
        assert_eq!(field_of(r#"{"name":"x"}"#).as_deref(), Some("value"));
        assert_eq!(
            field_of(r#"{"name":"x","value":1,"tags":{"a":1}}"#).as_deref(),
            Some("tags.a")
        );
        assert_eq!(
            field_of(r#"{"name":"x","value":1,"tags":{"host":"a/b"}}"#).as_deref(),
            Some("tags.host")
        );
        assert_eq!(
            field_of(r#"{"name":"x","value":1,"timestamp":"soon"}"#).as_deref(),
            Some("timestamp")
        );
        for implausible in [
            "253402300800000",
            "-1",
            "0",
            "\"1969-12-31T00:00:00Z\"",
            "\"2300-01-01T00:00:00Z\"",
        ] {
            assert_eq!(
                field_of(&format!(
                    r#"{{"name":"x","value":1,"timestamp":{implausible}}}"#
                ))
                .as_deref(),
                Some("timestamp"),
                "{implausible}"
            );
        }
        assert!(parse(
            br#"{"name":"x","value":1,"timestamp":"2026-01-20T12:34:56Z"}"#,
            0
        )
        .is_ok());
    }

    #[test]
    fn nan_and_garbage_are_bad_requests() {
        for body in [r#"{"name":"x","value":NaN}"#, "not json", "[1,2]"] {
            let e = parse(body.as_bytes(), 0).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
            assert!(e.field.is_none());
        }
        let e = parse(br#"{"name":"x","value":1e999}"#, 0).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }
}
