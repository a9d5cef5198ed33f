//! How records are written to LMDB: one format-version byte, then postcard; rare,
//! human-inspectable records (agents, tokens, policies) as JSON ([`json_encode`]).

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::StoreError;

/// The record format this build writes.
const FORMAT: u8 = 1;

/// Encodes a record.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = Vec::new();
    encode_into(value, &mut bytes);
    bytes
}

/// Encodes a record into `buf` (cleared first), so that a loop writing many records
/// reuses one allocation.
pub fn encode_into<T: Serialize>(value: &T, buf: &mut Vec<u8>) {
    buf.clear();
    buf.push(FORMAT);
    match postcard::to_extend(value, std::mem::take(buf)) {
        Ok(bytes) => *buf = bytes,
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

/// Reads a JSON record from database `db`.
pub(crate) fn json_decode<T: DeserializeOwned>(
    db: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        db,
        reason: e.to_string(),
    })
}

/// Writes a JSON record for database `db`.
pub(crate) fn json_encode<T: Serialize>(
    db: &'static str,
    record: &T,
) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(record).map_err(|e| StoreError::Corrupt {
        db,
        reason: e.to_string(),
    })
}
