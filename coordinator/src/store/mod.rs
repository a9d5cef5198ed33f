//! The coordinator's LMDB store (via heed): hosts, the latest value of every series, and
//! metric history with a retention window.
//!
//! Layout (all keys and values are bytes; values are versioned postcard, see [`codec`]):
//!
//! | database | key | value |
//! | --- | --- | --- |
//! | `hosts` | host name | [`HostRecord`] |
//! | `series` | `host \0 metric-name` | series id (u64, big-endian) |
//! | `history` | series id · time · tag hash (8 bytes each, big-endian) | [`records::StoredPoint`] |
//! | `latest` | series id · tag hash | [`records::LatestPoint`] |
//! | `meta` | name | counters |
//! | `policies` | policy name | policy spec (JSON), created over REST |
//! | `events` | time · event id | [`vigil_shared::wire::PolicyEvent`] (audit history) |
//! | `event_ids` | event id | `events` key (makes redelivery idempotent) |
//! | `actions` | action id | [`actions::ActionRecord`] (action audit trail, transitions appended) |
//! | `action_index` | `tag · len · value · created time · id` (by time, host, target, policy, status) | empty (see [`actions`]) |
//! | `feed` | sequence number (u64, big-endian) | [`crate::store::feed::FeedEntry`] (the event stream, for resuming clients) |
//! | `deliveries` | `host \0 stream` | [`vigil_shared::delivery::Window`]: what is stored of each agent queue |
//! | `bundles` | group name | `BundleRecord` (kept by the bundles module) (last published bundle version per host group) |
//!
//! A series is one metric of one host; samples of it that differ in tags (`mount=/` and
//! `mount=/var`) are told apart by the tag hash. Keys sort by time within a series, so a
//! history query is one range scan and retention is one range delete per series.
//!
//! Metric history is kept for `--retention`; actions, policy events and the feed for
//! `--audit-retention` ([`audit`]).
//!
//! All writes go through one writer thread ([`writer`]) that batches them into few
//! transactions. Reads run on the caller's thread. When LMDB's map fills up, the writer
//! grows it up to the configured ceiling, and past that rejects writes with
//! [`StoreError::Full`] — the coordinator keeps running and serving reads.

pub mod actions;
pub mod agents;
pub mod audit;
pub mod codec;
pub mod feed;
pub mod keys;
pub mod points;
pub mod policies;
pub mod reader;
pub mod records;
pub mod timeline;
pub mod tokens;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use heed::types::Bytes;
use heed::{Database, Env, EnvOpenOptions};
use thiserror::Error;

/// LMDB reader slots. A thread that reads keeps its slot for as long as it lives, and
/// the runtime's blocking pool alone may grow to 512 threads; LMDB's default, 126, ran
/// out with 10,000 agents logging in at once (`MDB_READERS_FULL`, logins refused as a
/// store error).
const MAX_READERS: u32 = 1024;

pub use points::Points;
pub use records::{HostRecord, LatestPoint, Point, Source};
pub use writer::{StoreWriter, Write};

/// Why a store operation failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// LMDB could not open or create the data directory.
    #[error("cannot open the store in {path}: {source}")]
    Open {
        /// The data directory.
        path: PathBuf,
        /// What LMDB or the file system said.
        source: heed::Error,
    },
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The map is at its ceiling: nothing more can be written until data expires.
    #[error(
        "store is full: LMDB map reached its ceiling of {max_bytes} bytes; raise --db-max-size \
         or shorten --retention"
    )]
    Full {
        /// The ceiling.
        max_bytes: usize,
    },
    /// Any other LMDB error (including I/O errors such as a full disk: see
    /// [`StoreError::is_out_of_space`]).
    #[error("store error: {0}")]
    Lmdb(#[from] heed::Error),
    /// A stored record could not be decoded.
    #[error("corrupt record in `{db}`: {reason}")]
    Corrupt {
        /// The database.
        db: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// The writer thread is gone (the coordinator is shutting down).
    #[error("store writer has stopped")]
    WriterGone,
}

impl StoreError {
    /// A short label for the `vigil_store_errors_total` counter.
    pub fn reason(&self) -> &'static str {
        if self.is_out_of_space() && !matches!(self, StoreError::Full { .. }) {
            return "disk_full";
        }
        match self {
            StoreError::Full { .. } => "map_full",
            StoreError::Lmdb(heed::Error::Io(_)) => "io",
            StoreError::Corrupt { .. } => "corrupt",
            StoreError::WriterGone => "writer_gone",
            _ => "lmdb",
        }
    }

    /// Whether nothing more can be written for want of space: the map is at its ceiling
    /// ([`StoreError::Full`]), or the file system under the data directory is full or over
    /// its quota (`ENOSPC`, `EDQUOT`). Reads still work then.
    pub fn is_out_of_space(&self) -> bool {
        let kind = match self {
            StoreError::Full { .. } => return true,
            // heed turns an OS error code from LMDB into `Io`; `Mdb(Other)` is the same
            // code when it comes unconverted.
            StoreError::Lmdb(heed::Error::Io(e))
            | StoreError::Open {
                source: heed::Error::Io(e),
                ..
            }
            | StoreError::CreateDir { source: e, .. } => e.kind(),
            StoreError::Lmdb(heed::Error::Mdb(heed::MdbError::Other(code)))
            | StoreError::Open {
                source: heed::Error::Mdb(heed::MdbError::Other(code)),
                ..
            } => std::io::Error::from_raw_os_error(*code).kind(),
            _ => return false,
        };
        matches!(
            kind,
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        )
    }

    /// Whether LMDB could not write its pages: out of space ([`Self::is_out_of_space`]),
    /// or an I/O error (`EIO`), which is how LMDB reports a write the file system cut
    /// short — what a full disk does to a write that only partly fits.
    pub fn is_write_refused(&self) -> bool {
        /// `EIO` (5 on every Unix the coordinator is built for).
        const EIO: i32 = 5;
        self.is_out_of_space()
            || matches!(self, StoreError::Lmdb(heed::Error::Io(e)) if e.raw_os_error() == Some(EIO))
            || matches!(
                self,
                StoreError::Lmdb(heed::Error::Mdb(heed::MdbError::Other(EIO)))
            )
    }
}

/// Size settings for the LMDB map.
#[derive(Debug, Clone, Copy)]
pub struct MapSize {
    /// The map size to open with.
    pub initial: usize,
    /// How far the writer may grow it when it fills up.
    pub max: usize,
}

/// The databases inside the environment.
#[derive(Clone, Copy)]
pub(crate) struct Dbs {
    pub hosts: Database<Bytes, Bytes>,
    pub series: Database<Bytes, Bytes>,
    pub history: Database<Bytes, Bytes>,
    pub latest: Database<Bytes, Bytes>,
    pub meta: Database<Bytes, Bytes>,
    pub policies: Database<Bytes, Bytes>,
    pub events: Database<Bytes, Bytes>,
    pub event_ids: Database<Bytes, Bytes>,
    pub actions: Database<Bytes, Bytes>,
    pub action_index: Database<Bytes, Bytes>,
    pub bundles: Database<Bytes, Bytes>,
    pub tokens: Database<Bytes, Bytes>,
    pub agents: Database<Bytes, Bytes>,
    pub join_tokens: Database<Bytes, Bytes>,
    pub feed: Database<Bytes, Bytes>,
    pub deliveries: Database<Bytes, Bytes>,
}

impl Dbs {
    /// Every database.
    fn all(&self) -> [&Database<Bytes, Bytes>; 16] {
        [
            &self.hosts,
            &self.series,
            &self.history,
            &self.latest,
            &self.meta,
            &self.policies,
            &self.events,
            &self.event_ids,
            &self.actions,
            &self.action_index,
            &self.bundles,
            &self.tokens,
            &self.agents,
            &self.join_tokens,
            &self.feed,
            &self.deliveries,
        ]
    }
}

/// How much of the data file is in use ([`Store::space`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreSpace {
    /// The data file's size up to its highest page in use.
    pub file_bytes: u64,
    /// The bytes of it holding data.
    pub used_bytes: u64,
}

/// An open store. Cheap to clone; all clones share one environment.
#[derive(Clone)]
pub struct Store {
    pub(crate) env: Env,
    pub(crate) dbs: Dbs,
    /// Held for reading by every transaction and for writing while the map is resized
    /// (LMDB requires that no transaction is open during a resize).
    pub(crate) resize_lock: Arc<RwLock<()>>,
    pub(crate) map_size: MapSize,
    pub(crate) feed: crate::store::feed::Feed,
}

impl Store {
    /// Opens (creating if needed) the store under `dir`.
    pub fn open(dir: &Path, map_size: MapSize) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let open_err = |source| StoreError::Open {
            path: dir.to_path_buf(),
            source,
        };
        // SAFETY: the environment is opened once per process for this directory (the
        // coordinator owns its data dir), and the memory map is only accessed through heed.
        let env = unsafe {
            EnvOpenOptions::new()
                .map_size(map_size.initial)
                .max_dbs(32)
                .max_readers(MAX_READERS)
                .open(dir)
        }
        .map_err(open_err)?;
        // A map file from an earlier run may be larger than `initial`: LMDB keeps the larger.
        let mut wtxn = env.write_txn().map_err(open_err)?;
        let mut create = |name: &str| env.create_database::<Bytes, Bytes>(&mut wtxn, Some(name));
        let dbs = Dbs {
            hosts: create("hosts").map_err(open_err)?,
            series: create("series").map_err(open_err)?,
            history: create("history").map_err(open_err)?,
            latest: create("latest").map_err(open_err)?,
            meta: create("meta").map_err(open_err)?,
            policies: create("policies").map_err(open_err)?,
            events: create("events").map_err(open_err)?,
            event_ids: create("event_ids").map_err(open_err)?,
            actions: create("actions").map_err(open_err)?,
            action_index: create("action_index").map_err(open_err)?,
            bundles: create("bundles").map_err(open_err)?,
            tokens: create("tokens").map_err(open_err)?,
            agents: create("agents").map_err(open_err)?,
            join_tokens: create("join_tokens").map_err(open_err)?,
            feed: create("feed").map_err(open_err)?,
            deliveries: create("deliveries").map_err(open_err)?,
        };
        wtxn.commit().map_err(open_err)?;
        let mut store = Store {
            env,
            dbs,
            feed: crate::store::feed::Feed::new(0),
            resize_lock: Arc::new(RwLock::new(())),
            map_size,
        };
        store.feed = crate::store::feed::Feed::new(store.feed_last_seq()?);
        Ok(store)
    }

    /// A small store in a new temporary directory (removed when the `TempDir` is dropped),
    /// for tests.
    #[cfg(test)]
    pub(crate) fn temporary() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temporary directory: {e}"));
        let store = Store::open(
            dir.path(),
            MapSize {
                initial: 1 << 20,
                max: 1 << 22,
            },
        )
        .unwrap_or_else(|e| panic!("temporary store: {e}"));
        (dir, store)
    }

    /// The live event feed (entries as the writer commits them).
    pub fn feed(&self) -> &crate::store::feed::Feed {
        &self.feed
    }

    /// The current size of the memory map, in bytes.
    pub fn current_map_size(&self) -> usize {
        self.env.info().map_size
    }

    /// How much of the data file is in use: `(file, used)` in bytes. `file` runs up to the
    /// highest page LMDB has written; `used` counts the pages of every database (and the
    /// environment's own) holding data. The difference is free pages, which LMDB reuses
    /// before it grows the file: removing records never shrinks the file, it stops it
    /// growing.
    pub fn space(&self) -> Result<StoreSpace, StoreError> {
        let _guard = self
            .resize_lock
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let info = self.env.info();
        // The environment's main database (the names of the others).
        let main = self.env.stat();
        let page = u64::from(main.page_size);
        let txn = self.env.read_txn()?;
        let mut used = 0u64;
        for db in self.dbs.all() {
            let stat = db.stat(&txn)?;
            used += (stat.branch_pages + stat.leaf_pages + stat.overflow_pages) as u64
                * u64::from(stat.page_size);
        }
        // The main database and the environment's two meta pages.
        used += (main.branch_pages + main.leaf_pages + main.overflow_pages + 2) as u64 * page;
        Ok(StoreSpace {
            file_bytes: (info.last_page_number as u64 + 1) * page,
            used_bytes: used,
        })
    }
}
