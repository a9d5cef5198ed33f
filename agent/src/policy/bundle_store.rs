//! The agent's copy of the last good policy bundle of every host group it is in:
//! `<data_dir>/bundles/<group>.bundle`, each the wire encoding of the [`SignedBundle`] as
//! received (so it is verified again, signature and all, when the agent starts).
//!
//! Next to them, every group's version floor: `<group>.floor`, the highest version the
//! agent ever accepted for the group (a bundle, or the tombstone of a removed group) and
//! the content hash of what carried it, as the text `<version> <hash>`. A floor outlives
//! the group's bundle: it stays when the host leaves the group or the group is removed,
//! so an older bundle replayed later is refused.
//!
//! Writes are atomic: the bytes go to a temporary file in the same directory, which is
//! synced and then renamed over the old file, and the directory is synced; a crash leaves
//! either the old bundle or the new one, never half of one.

use std::io::Write;
use std::path::{Path, PathBuf};

use thiserror::Error;
use vigil_shared::bundle::SignedBundle;
use vigil_shared::wire;

/// The extension of a stored bundle.
const EXTENSION: &str = "bundle";
/// The extension of a stored version floor.
const FLOOR_EXTENSION: &str = "floor";

/// A group's version floor: the highest version accepted for it, and the content hash of
/// the bundle or tombstone that carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Floor {
    /// The version.
    pub version: u64,
    /// The content hash (hex).
    pub hash: String,
}

/// Why the bundle store could not read or write.
#[derive(Debug, Error)]
pub enum StoreError {
    /// A file or the directory could not be read or written.
    #[error("bundle store {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A stored floor file is not `<version> <hash>`.
    #[error("bundle store {path}: not a version floor (`<version> <hash>`): {text:?}")]
    BadFloor {
        /// The file.
        path: String,
        /// What it holds (at most 100 characters of it).
        text: String,
    },
    /// A stored file does not decode as a signed bundle.
    #[error("bundle store {path}: does not decode: {source}")]
    Decode {
        /// The file.
        path: String,
        /// The decoding error.
        source: wire::DecodeError,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The directory of stored bundles.
#[derive(Debug, Clone)]
pub struct BundleStore {
    dir: PathBuf,
}

impl BundleStore {
    /// The store in `dir` (created on the first save).
    pub fn new(dir: PathBuf) -> BundleStore {
        BundleStore { dir }
    }

    /// The directory.
    #[cfg(test)]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where `group`'s bundle is kept. Group names cannot hold `/` (they are topic levels
    /// checked by [`SignedBundle`]'s validation).
    pub fn path(&self, group: &str) -> PathBuf {
        self.dir.join(format!("{group}.{EXTENSION}"))
    }

    /// Where `group`'s version floor is kept.
    #[cfg(test)]
    pub fn floor_path(&self, group: &str) -> PathBuf {
        self.dir.join(format!("{group}.{FLOOR_EXTENSION}"))
    }

    /// The files with extension `ext`, sorted; a missing directory holds none.
    fn files(&self, ext: &str) -> Result<Vec<PathBuf>, StoreError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&self.dir)(e)),
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .collect();
        paths.sort();
        Ok(paths)
    }

    /// Every stored bundle, sorted by file name; a file that cannot be read or decoded is
    /// returned as an error in its place. A missing directory holds none.
    pub fn load_all(&self) -> Vec<Result<SignedBundle, StoreError>> {
        let paths = match self.files(EXTENSION) {
            Ok(paths) => paths,
            Err(e) => return vec![Err(e)],
        };
        paths
            .into_iter()
            .map(|path| {
                let bytes = std::fs::read(&path).map_err(io(&path))?;
                wire::decode::<SignedBundle>(&bytes).map_err(|source| StoreError::Decode {
                    path: path.display().to_string(),
                    source,
                })
            })
            .collect()
    }

    /// Every stored version floor by group; a file that cannot be read or parsed is
    /// returned as an error in its place.
    pub fn load_floors(&self) -> Vec<Result<(String, Floor), StoreError>> {
        let paths = match self.files(FLOOR_EXTENSION) {
            Ok(paths) => paths,
            Err(e) => return vec![Err(e)],
        };
        paths
            .into_iter()
            .map(|path| {
                let text = std::fs::read_to_string(&path).map_err(io(&path))?;
                let bad = || StoreError::BadFloor {
                    path: path.display().to_string(),
                    text: text.chars().take(100).collect(),
                };
                let group = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .ok_or_else(bad)?
                    .to_string();
                let mut words = text.split_whitespace();
                let version = words.next().and_then(|v| v.parse::<u64>().ok());
                let hash = words.next().filter(|h| h.len() == 64 && hex_only(h));
                match (version, hash, words.next()) {
                    (Some(version), Some(hash), None) => Ok((
                        group,
                        Floor {
                            version,
                            hash: hash.to_string(),
                        },
                    )),
                    _ => Err(bad()),
                }
            })
            .collect()
    }

    /// Stores `signed` as its group's bundle, atomically.
    pub fn save(&self, signed: &SignedBundle) -> Result<(), StoreError> {
        self.write_atomic(&signed.group, EXTENSION, &wire::encode(signed))
    }

    /// Stores `group`'s version floor, atomically.
    pub fn save_floor(&self, group: &str, floor: &Floor) -> Result<(), StoreError> {
        let text = format!("{} {}\n", floor.version, floor.hash);
        self.write_atomic(group, FLOOR_EXTENSION, text.as_bytes())
    }

    /// Writes `<group>.<ext>` through a synced temporary file and a rename.
    fn write_atomic(&self, group: &str, ext: &str, bytes: &[u8]) -> Result<(), StoreError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let path = self.dir.join(format!("{group}.{ext}"));
        let temp = self.dir.join(format!(".{group}.{ext}.tmp"));
        {
            let mut file = std::fs::File::create(&temp).map_err(io(&temp))?;
            file.write_all(bytes).map_err(io(&temp))?;
            file.sync_all().map_err(io(&temp))?;
        }
        std::fs::rename(&temp, &path).map_err(io(&path))?;
        sync_dir(&self.dir)
    }

    /// Forgets `group`'s bundle (the host left the group, or the group was removed); its
    /// floor stays. Missing is fine.
    pub fn remove(&self, group: &str) -> Result<(), StoreError> {
        let path = self.path(group);
        match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }
}

fn hex_only(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Makes a rename or removal in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_shared::bundle::{Bundle, BundleKeys};

    fn signed(keys: &BundleKeys, group: &str, version: u64) -> SignedBundle {
        keys.sign(&Bundle {
            group: group.into(),
            selector: vec![],
            version,
            created_at_ms: 1,
            files: vec![],
            budget: None,
        })
    }

    #[test]
    fn saves_atomically_reloads_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let store = BundleStore::new(dir.path().join("bundles"));
        assert!(store.load_all().is_empty(), "no directory yet");
        let keys = BundleKeys::generate();
        store.save(&signed(&keys, "web", 1)).unwrap();
        store.save(&signed(&keys, "web", 2)).unwrap();
        store.save(&signed(&keys, "db", 1)).unwrap();
        let loaded: Vec<SignedBundle> = store.load_all().into_iter().map(Result::unwrap).collect();
        assert_eq!(
            loaded,
            vec![signed(&keys, "db", 1), signed(&keys, "web", 2)]
        );
        let names: Vec<String> = std::fs::read_dir(store.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");

        store.remove("web").unwrap();
        store.remove("web").unwrap();
        assert_eq!(store.load_all().len(), 1);

        std::fs::write(store.path("junk"), b"\x01garbage").unwrap();
        let err = store.load_all().into_iter().find_map(Result::err).unwrap();
        assert!(err.to_string().contains("junk.bundle"), "{err}");
    }

    #[test]
    fn floors_are_kept_apart_from_bundles_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = BundleStore::new(dir.path().join("bundles"));
        assert!(store.load_floors().is_empty());
        let floor = |version| Floor {
            version,
            hash: "ab".repeat(32),
        };
        store.save_floor("web", &floor(2)).unwrap();
        store.save_floor("web", &floor(3)).unwrap();
        store.save_floor("db", &floor(1)).unwrap();
        store.remove("web").unwrap();
        let floors: Vec<(String, Floor)> = store
            .load_floors()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            floors,
            vec![("db".into(), floor(1)), ("web".into(), floor(3))]
        );
        assert!(store.load_all().is_empty(), "floors are not bundles");

        std::fs::write(store.floor_path("bad"), "three abc").unwrap();
        let err = store
            .load_floors()
            .into_iter()
            .find_map(Result::err)
            .unwrap();
        assert!(err.to_string().contains("bad.floor"), "{err}");
    }
}
