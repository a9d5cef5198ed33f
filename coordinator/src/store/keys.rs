//! Key construction for the store's databases (see the table in [`super`]).

use vigil_shared::delivery::Stream;
use vigil_shared::wire::Tag;

/// `host \0 stream`: the key of a host's delivery window in `deliveries`.
pub fn delivery(host: &str, stream: Stream) -> Vec<u8> {
    let mut key = Vec::with_capacity(host.len() + 2);
    key.extend_from_slice(host.as_bytes());
    key.push(0);
    key.push(match stream {
        Stream::Outbox => 0,
        Stream::Metrics => 1,
    });
    key
}

/// `host \0 name`: the key of a series in the `series` database.
pub fn series(host: &str, name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(host.len() + name.len() + 1);
    series_into(host, name, &mut key);
    key
}

/// [`series`] written into `key` (cleared first), for a loop that reuses one buffer.
pub fn series_into(host: &str, name: &str, key: &mut Vec<u8>) {
    key.clear();
    key.extend_from_slice(host.as_bytes());
    key.push(0);
    key.extend_from_slice(name.as_bytes());
}

/// `host \0`: the prefix of every series of one host.
pub fn series_prefix(host: &str) -> Vec<u8> {
    let mut key = host.as_bytes().to_vec();
    key.push(0);
    key
}

/// Splits a `series` key back into host and metric name.
pub fn split_series(key: &[u8]) -> Option<(&str, &str)> {
    let at = key.iter().position(|&b| b == 0)?;
    let host = std::str::from_utf8(&key[..at]).ok()?;
    let name = std::str::from_utf8(&key[at + 1..]).ok()?;
    Some((host, name))
}

/// Maps an `i64` time onto a `u64` whose big-endian bytes sort in time order.
pub fn time_bytes(ts_ms: i64) -> [u8; 8] {
    ((ts_ms as u64) ^ (1 << 63)).to_be_bytes()
}

/// Inverse of [`time_bytes`].
pub fn time_from_bytes(bytes: [u8; 8]) -> i64 {
    (u64::from_be_bytes(bytes) ^ (1 << 63)) as i64
}

/// `series id · time · tag hash`: one point in `history`.
pub fn history(series_id: u64, ts_ms: i64, tag_hash: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..8].copy_from_slice(&series_id.to_be_bytes());
    key[8..16].copy_from_slice(&time_bytes(ts_ms));
    key[16..].copy_from_slice(&tag_hash.to_be_bytes());
    key
}

/// The time inside a `history` key.
pub fn history_time(key: &[u8]) -> Option<i64> {
    let bytes: [u8; 8] = key.get(8..16)?.try_into().ok()?;
    Some(time_from_bytes(bytes))
}

/// `series id · tag hash`: one tagged variant's latest value in `latest`.
pub fn latest(series_id: u64, tag_hash: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&series_id.to_be_bytes());
    key[8..].copy_from_slice(&tag_hash.to_be_bytes());
    key
}

/// `time · id`: one event in `events`, so events sort by time.
pub fn event(at_ms: i64, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + id.len());
    key.extend_from_slice(&time_bytes(at_ms));
    key.extend_from_slice(id.as_bytes());
    key
}

/// A stable 64-bit FNV-1a hash of sorted tags, telling tagged variants of a series apart.
pub fn tag_hash(tags: &[Tag]) -> u64 {
    tag_hash_of(tags.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

/// [`tag_hash`] of tags given as borrowed pairs, in order.
pub fn tag_hash_of<'a>(tags: impl IntoIterator<Item = (&'a str, &'a str)>) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for (k, v) in tags {
        for byte in k.bytes().chain([0]).chain(v.bytes()).chain([0]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(PRIME);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_bytes_sort_like_times() {
        let times = [-5_000, -1, 0, 1, 1_700_000_000_000];
        for pair in times.windows(2) {
            assert!(time_bytes(pair[0]) < time_bytes(pair[1]));
            assert_eq!(time_from_bytes(time_bytes(pair[0])), pair[0]);
        }
    }

    #[test]
    fn series_keys_split_back() {
        assert_eq!(
            split_series(&series("web-01", "cpu")),
            Some(("web-01", "cpu"))
        );
        assert!(series("web-01", "cpu").starts_with(&series_prefix("web-01")));
        assert!(!series("web-010", "cpu").starts_with(&series_prefix("web-01")));
    }

    #[test]
    fn tag_hash_depends_on_keys_and_values() {
        let a = tag_hash(&[("mount".into(), "/".into())]);
        let b = tag_hash(&[("mount".into(), "/var".into())]);
        let c = tag_hash(&[("mou".into(), "nt/".into())]);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(tag_hash(&[]), tag_hash(&[]));
    }
}
