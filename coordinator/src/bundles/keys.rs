//! The coordinator's bundle signing key: `--bundle-key FILE` (64 hex characters), by
//! default `<data-dir>/bundle-signing.key`, generated on first start with mode 0600. The
//! public key is written next to it as `bundle-signing.pub` (for agents and `vigil up`).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use thiserror::Error;
use vigil_shared::bundle::{BundleError, BundleKeys};

/// The default key file name inside the data directory.
pub const DEFAULT_KEY_FILE: &str = "bundle-signing.key";

/// Why the signing key could not be loaded or created.
#[derive(Debug, Error)]
pub enum KeyError {
    /// The key file exists but is not a key.
    #[error("bundle signing key: {0}")]
    Invalid(#[from] BundleError),
    /// The key (or its public half) could not be written.
    #[error("cannot write bundle key file {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The public key file that belongs to a private key file (`x.key` → `x.pub`).
pub fn public_path(private: &Path) -> PathBuf {
    private.with_extension("pub")
}

/// Loads the key at `path`, or generates one there (0600) if there is no file. Either
/// way, (re)writes the public key next to it. Returns the keys and whether they are new.
pub fn load_or_generate(path: &Path) -> Result<(BundleKeys, bool), KeyError> {
    let (keys, created) = if path.exists() {
        (BundleKeys::load(path)?, false)
    } else {
        let keys = BundleKeys::generate();
        write_private(path, &keys)?;
        (keys, true)
    };
    write_public(path, &keys)?;
    Ok((keys, created))
}

/// Writes a new private key file (mode 0600; refuses to overwrite) and its `.pub`.
pub fn write_new(path: &Path, keys: &BundleKeys) -> Result<(), KeyError> {
    write_private(path, keys)?;
    write_public(path, keys)
}

fn write_private(path: &Path, keys: &BundleKeys) -> Result<(), KeyError> {
    let err = |source| KeyError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(err)?;
    file.write_all(format!("{}\n", keys.private_hex()).as_bytes())
        .map_err(err)
}

fn write_public(path: &Path, keys: &BundleKeys) -> Result<(), KeyError> {
    let public = public_path(path);
    std::fs::write(&public, format!("{}\n", keys.public_hex())).map_err(|source| KeyError::Write {
        path: public,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_generated_once_private_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data").join(DEFAULT_KEY_FILE);
        let (first, created) = load_or_generate(&path).unwrap();
        assert!(created);
        let (again, created) = load_or_generate(&path).unwrap();
        assert!(!created);
        assert_eq!(first.public_hex(), again.public_hex());
        let public = std::fs::read_to_string(public_path(&path)).unwrap();
        assert_eq!(public.trim(), first.public_hex());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(
            write_new(&path, &BundleKeys::generate()).is_err(),
            "no overwrite"
        );
    }
}
