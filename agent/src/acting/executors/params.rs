//! What several executors share about one attempt: the parameters they read
//! (`params.settle`, durations such as `params.stop_timeout`, given as `"500ms"` or a
//! number of seconds) and how often they look at a target while waiting for it.

use std::time::Duration;

use vigil_shared::time::parse_duration;

use super::{ExecError, ExecRequest};

/// How long a started container, or a started `simple` service, must stay up to count
/// as up, unless `params.settle` says otherwise: a target that dies at once fails the
/// attempt instead of passing it.
pub(crate) const DEFAULT_SETTLE: Duration = Duration::from_millis(250);

/// How often an executor looks at its target again while waiting for it to come up.
pub(crate) const POLL: Duration = Duration::from_millis(20);

/// An optional duration parameter: a string such as `"500ms"`, or a number of seconds.
pub(crate) fn duration_param(
    request: &ExecRequest,
    key: &str,
) -> Result<Option<Duration>, ExecError> {
    let invalid = |why: String| ExecError::Invalid(format!("params.{key}: {why}"));
    match request.params.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(text)) => parse_duration(text).map(Some).map_err(invalid),
        Some(serde_json::Value::Number(n)) => n
            .as_f64()
            .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
            .map(Some)
            .ok_or_else(|| invalid(format!("{n} is not a number of seconds"))),
        Some(other) => Err(invalid(format!("{other} is not a duration"))),
    }
}

/// `params.settle`, or [`DEFAULT_SETTLE`].
pub(crate) fn settle(request: &ExecRequest) -> Result<Duration, ExecError> {
    Ok(duration_param(request, "settle")?.unwrap_or(DEFAULT_SETTLE))
}
