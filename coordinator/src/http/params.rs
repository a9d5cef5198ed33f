//! Query-string parameters shared by the list routes.

use std::collections::HashMap;

use super::error::ApiError;

/// Reads `limit` (a whole number from 1 to `max`), or `default` when absent; a bad value
/// is a 422 naming `limit`.
pub fn limit(
    params: &HashMap<String, String>,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    match params.get("limit") {
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                ApiError::invalid_field(
                    "limit",
                    format!("query parameter `limit` must be a whole number from 1 to {max}, got `{text}`"),
                )
            }),
        None => Ok(default),
    }
}
