//! How records are written to LMDB: one format-version byte, then postcard.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::StoreError;

/// The record format this build writes.
const FORMAT: u8 = 1;

/// Encodes a record.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    match postcard::to_extend(value, vec![FORMAT]) {
        Ok(bytes) => bytes,
        Err(e) => unreachable!("postcard cannot fail to encode a store record: {e}"),
    }
}

/// Decodes a record read from database `db`.
pub fn decode<T: DeserializeOwned>(db: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&FORMAT, body)) => postcard::from_bytes(body).map_err(|e| StoreError::Corrupt {
            db,
            reason: e.to_string(),
        }),
        Some((version, _)) => Err(StoreError::Corrupt {
            db,
            reason: format!("unknown record format {version}"),
        }),
        None => Err(StoreError::Corrupt {
            db,
            reason: "empty record".into(),
        }),
    }
}
