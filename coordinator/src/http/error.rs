//! Errors as the REST API returns them: a status code and a JSON body naming the problem,
//! `{"ok": false, "error": "...", "field": "..."}` (`field` only where one field is at fault).

use serde_json::json;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use vigil_shared::validate::FieldError;

use crate::store::StoreError;
use crate::telemetry::Telemetry;

/// The field names `vigil_http_requests_rejected_total` counts by name; any other field
/// (some are chosen by clients, e.g. tag keys) is counted as `other`, so the label has
/// few values.
const COUNTED_FIELDS: [&str; 10] = [
    "from",
    "to",
    "since",
    "timestamp",
    "ttl",
    "limit",
    "name",
    "value",
    "tags",
    "tags.host",
];

/// The label under which a refusal of `field` is counted (see `COUNTED_FIELDS`).
pub fn field_label(field: Option<&str>) -> &'static str {
    let Some(field) = field else {
        return "body";
    };
    if let Some(known) = COUNTED_FIELDS.iter().find(|f| **f == field) {
        return known;
    }
    if field.starts_with("tags.") {
        return "tags";
    }
    // Alertmanager's payload (`alerts[3].startsAt`, `version`).
    if field.starts_with("alerts") {
        return "alerts";
    }
    "other"
}

/// Counts a refused request in `vigil_http_requests_rejected_total{field,route}` (only
/// client errors: 4xx) and passes the error on.
pub fn counted(telemetry: &Telemetry, route: &'static str, error: ApiError) -> ApiError {
    if error.status.is_client_error() {
        telemetry
            .http_rejected
            .with_label_values(&[field_label(error.field.as_deref()), route])
            .inc();
    }
    error
}

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, in words.
    pub message: String,
    /// The offending field, if one is.
    pub field: Option<String>,
}

impl ApiError {
    /// 400: the request cannot be read at all.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 422: the request was read, but a field is unacceptable.
    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            field: Some(field.into()),
            ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
        }
    }

    /// 422 for a [`FieldError`] (from [`vigil_shared::validate`]), naming its field.
    pub fn from_field(error: FieldError) -> Self {
        Self::invalid_field(error.field.clone(), error.to_string())
    }

    /// 404: the thing asked for does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// Any status.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            field: None,
        }
    }
}

impl From<&StoreError> for ApiError {
    fn from(e: &StoreError) -> Self {
        if e.is_write_refused() {
            let message = match e {
                StoreError::Full { .. } => e.to_string(),
                _ if e.is_out_of_space() => format!(
                    "insufficient storage: the coordinator's data directory is full ({e}); \
                     free disk space there, reads still work"
                ),
                _ => format!(
                    "insufficient storage: the coordinator cannot write its data directory \
                     ({e}; a full disk cuts writes short like this); check its space and \
                     disk, reads still work"
                ),
            };
            return ApiError::new(StatusCode::INSUFFICIENT_STORAGE, message);
        }
        let status = match e {
            StoreError::WriterGone => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::from(&e)
    }
}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "ok": false, "error": self.message });
        if let Some(field) = self.field {
            body["field"] = json!(field);
        }
        warp::reply::with_status(warp::reply::json(&body), self.status).into_response()
    }
}

/// Turns a handler's result into a response.
pub fn respond<T: Reply>(result: Result<T, ApiError>) -> Response {
    match result {
        Ok(reply) => reply.into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod store_error_tests {
    use super::ApiError;
    use crate::store::StoreError;

    fn io(code: i32) -> StoreError {
        StoreError::Lmdb(heed::Error::Io(std::io::Error::from_raw_os_error(code)))
    }

    #[test]
    fn a_full_or_over_quota_disk_is_out_of_space_and_answers_507() {
        let unconverted = StoreError::Lmdb(heed::Error::Mdb(heed::MdbError::Other(122)));
        for e in [io(28), io(122), unconverted] {
            assert!(e.is_out_of_space(), "{e}");
            assert_eq!(e.reason(), "disk_full", "{e}");
            assert_eq!(ApiError::from(&e).status.as_u16(), 507, "{e}");
        }
        let full = StoreError::Full { max_bytes: 1 };
        assert!(full.is_out_of_space());
        assert_eq!(full.reason(), "map_full");
        assert_eq!(ApiError::from(&full).status.as_u16(), 507);
    }

    #[test]
    fn a_short_write_answers_507_but_other_errors_do_not() {
        // LMDB reports a write the file system cut short as EIO.
        let short = io(5);
        assert!(!short.is_out_of_space());
        assert!(short.is_write_refused());
        assert_eq!(short.reason(), "io");
        assert_eq!(ApiError::from(&short).status.as_u16(), 507);
        for e in [
            io(13),
            StoreError::Corrupt {
                db: "hosts",
                reason: "bad".into(),
            },
            StoreError::Lmdb(heed::Error::Mdb(heed::MdbError::Corrupted)),
        ] {
            assert!(!e.is_write_refused(), "{e}");
            assert_eq!(ApiError::from(&e).status.as_u16(), 500, "{e}");
        }
    }
}
