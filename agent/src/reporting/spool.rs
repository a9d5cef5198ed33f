//! The metric spool: a bounded, checksummed buffer on disk for the metric batches the agent
//! has not delivered yet, so that hours without the coordinator lose nothing but what
//! does not fit.
//!
//! Every record gets a sequence number: 1, 2, …, continuing across restarts. Records stay
//! until the receiver acknowledges that it stored them ("everything up to seq N", see
//! [`Spool::ack`]) and are read back in order for delivery ([`Spool::read_from`]). The
//! spool holds at most `max_bytes` on disk (plus the segment being written): when full,
//! whole oldest segments go first, acknowledged or not, and their records are counted as
//! dropped. When the disk cannot be written (full, failing, read-only), records wait in a
//! bounded memory tail and reach the disk, in order, as soon as it can be written again.
//!
//! On disk, the spool's directory holds:
//! - `epoch`: a random number chosen when the directory was created, so that the receiver
//!   can tell a new stream (the directory was wiped) from the old one;
//! - `acked`: the acknowledged position, replaced atomically (temporary file + rename);
//! - segments `<first seq, 20 digits>.seg`: a header (`VGLSPOOL` and a version byte), then
//!   records `u32 LE payload length | u32 LE CRC-32 of (seq LE bytes + payload) | u64 LE
//!   seq | payload`. A segment is closed at `segment_bytes` (`max_bytes / 16`, within
//!   64 KiB..=4 MiB) and the next one started; the sequence numbers in a segment are
//!   consecutive;
//! - `*.seg.corrupt`: damaged segments set aside when opening (the newest 8 are kept).
//!
//! Opening never fails over damaged data. The newest segment's tail after its last intact
//! record (an append cut short by a kill or a power loss) is cut off; an incomplete tail
//! of an older segment (a write that failed half-way) is cut off too. Any other damage
//! (a bad header, a bad checksum, a sequence number that does not increase, a length over
//! 16 MiB) sets the whole segment aside and counts it.
//!
//! Appends are not synced one by one: [`Spool::sync`] syncs the segment being written (if
//! anything was appended since), and a segment is synced when the next one is started.
//! An acknowledged segment is deleted once a newer one exists: the segment being written
//! takes the next records even when all of it is acknowledged, so a receiver that keeps
//! up costs no file per record.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

/// The first bytes of every segment.
const MAGIC: &[u8; 8] = b"VGLSPOOL";
/// The segment format's version, the byte after [`MAGIC`].
const VERSION: u8 = 1;
/// [`MAGIC`] and [`VERSION`].
const SEGMENT_HEADER_LEN: u64 = 9;
/// Length, checksum and sequence number before each payload.
pub const RECORD_HEADER_LEN: u64 = 16;
/// The largest payload a record may have; longer ones are dropped by [`Spool::push`].
pub const MAX_RECORD_BYTES: usize = 16 << 20;
/// How many set-aside segments the directory keeps.
const MAX_QUARANTINED: usize = 8;
/// Bounds of the segment size.
const MIN_SEGMENT_BYTES: u64 = 64 << 10;
const MAX_SEGMENT_BYTES: u64 = 4 << 20;
/// Most payload bytes the memory tail holds (less if `max_bytes / 8` is smaller).
const MAX_MEMORY_BYTES: u64 = 8 << 20;

const EPOCH_FILE: &str = "epoch";
const ACK_FILE: &str = "acked";
const SEGMENT_SUFFIX: &str = ".seg";
const CORRUPT_SUFFIX: &str = ".corrupt";
const TMP_SUFFIX: &str = ".tmp";

/// What can go wrong with the spool's files.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The spool directory does not exist and cannot be created.
    #[error("cannot create the spool directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    /// The spool directory cannot be listed.
    #[error("cannot list the spool directory {path}: {source}")]
    ListDir { path: PathBuf, source: io::Error },
    /// A segment cannot be read.
    #[error("cannot read the spool segment {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    /// The segment being written cannot be synced to the disk.
    #[error("cannot sync the spool segment {path}: {source}")]
    Sync { path: PathBuf, source: io::Error },
    /// A segment cannot be created or written.
    #[error("cannot write the spool segment {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// A spool just opened, with what opening it had to set aside.
pub struct SpoolOpened {
    pub spool: Spool,
    /// Damaged segments renamed to `*.corrupt`.
    pub quarantined_segments: u64,
    /// Their size.
    pub quarantined_bytes: u64,
}

/// Counters for the status file and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Records held (on disk or in memory) and not acknowledged.
    pub records: u64,
    /// Bytes on disk in segments.
    pub bytes: u64,
    /// Records dropped unacknowledged to stay within the bounds, since opening.
    pub dropped_total: u64,
    /// Segments set aside as damaged when opening.
    pub quarantined_total: u64,
    /// Records in the memory tail, waiting for the disk.
    pub memory_records: u64,
}

/// One segment file, as indexed in memory.
#[derive(Debug)]
struct Segment {
    /// File size (up to the end of its last intact record).
    bytes: u64,
    first: u64,
    last: u64,
    path: PathBuf,
    records: u64,
    /// Nothing more is appended to it (a write to it failed).
    sealed: bool,
}

impl Segment {
    /// How many of its records are above `acked`.
    fn held(&self, acked: u64) -> u64 {
        if self.first > acked {
            self.records
        } else if self.last <= acked {
            0
        } else {
            self.records.min(self.last - acked)
        }
    }
}

/// Where the last read stopped, so that the next read going on from there does not scan
/// the segment from its start.
struct ReadCursor {
    file: File,
    /// The segment's first seq (its name).
    first: u64,
    /// The record at `offset` has a seq at least this.
    next_seq: u64,
    offset: u64,
}

/// The spool; see the module's doc.
pub struct Spool {
    /// The acknowledged position (everything up to it may be forgotten).
    acked: u64,
    /// The acknowledged position as written in the `acked` file.
    acked_on_disk: u64,
    /// Whether records were appended to the segment being written since its last sync.
    unsynced: bool,
    degraded: Option<String>,
    dir: PathBuf,
    disk_bytes: u64,
    dropped_total: u64,
    epoch: u64,
    /// The encoding buffer, reused by every append.
    frame: Vec<u8>,
    /// Whether dropping for room was logged since the last acknowledgement.
    full_logged: bool,
    max_bytes: u64,
    /// Records the disk could not take, oldest first; all newer than the disk's.
    memory: VecDeque<(u64, Vec<u8>)>,
    memory_bytes: u64,
    memory_cap: u64,
    next_seq: u64,
    quarantined_total: u64,
    reader: Mutex<Option<ReadCursor>>,
    segment_bytes: u64,
    /// Oldest first; each holds at least one record, and later segments hold later seqs.
    segments: VecDeque<Segment>,
    /// Appends to the last segment, once opened.
    writer: Option<File>,
    /// Makes every segment opened for writing this file instead (`/dev/full` in tests).
    #[cfg(test)]
    write_through: Option<PathBuf>,
}

impl Spool {
    /// Opens (creating) the spool in `dir`, holding at most `max_bytes` on disk.
    ///
    /// Fails only when the directory cannot be created or listed: damaged segments are set
    /// aside (and counted), damaged `epoch` and `acked` files replaced.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<SpoolOpened, SpoolError> {
        fs::create_dir_all(dir).map_err(|source| SpoolError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let list_error = |source| SpoolError::ListDir {
            path: dir.to_path_buf(),
            source,
        };
        let mut files = Vec::new();
        for entry in fs::read_dir(dir).map_err(list_error)? {
            let entry = entry.map_err(list_error)?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(stem) = name.strip_suffix(SEGMENT_SUFFIX) {
                match parse_segment_name(stem) {
                    Some(first) => files.push((first, entry.path())),
                    None => tracing::warn!(
                        path = %entry.path().display(),
                        "spool: ignoring a segment file whose name is not a sequence number"
                    ),
                }
            } else if name.ends_with(TMP_SUFFIX) {
                // A replacement of `epoch` or `acked` cut short.
                let _ = fs::remove_file(entry.path());
            }
        }
        files.sort();

        let mut segments = VecDeque::new();
        let mut quarantined_segments = 0;
        let mut quarantined_bytes = 0;
        let count = files.len();
        for (index, (named, path)) in files.into_iter().enumerate() {
            let newest = index + 1 == count;
            let previous = segments.back().map_or(0, |s: &Segment| s.last);
            match load_segment(&path, named, newest, previous) {
                Loaded::Segment(segment) => segments.push_back(segment),
                Loaded::Empty => {}
                Loaded::Quarantined(bytes) => {
                    quarantined_segments += 1;
                    quarantined_bytes += bytes;
                }
            }
        }
        if quarantined_segments > 0 {
            prune_quarantine(dir);
        }

        let ack_path = dir.join(ACK_FILE);
        let (acked, ack_known) = match fs::read_to_string(&ack_path) {
            Ok(text) => match text.trim().parse::<u64>() {
                Ok(acked) => (acked, true),
                Err(_) => {
                    tracing::warn!(
                        path = %ack_path.display(),
                        "spool: the acknowledged position is unreadable; everything held will be sent again"
                    );
                    (0, false)
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => (0, true),
            Err(e) => {
                tracing::warn!(
                    path = %ack_path.display(),
                    "spool: cannot read the acknowledged position ({e}); everything held will be sent again"
                );
                (0, false)
            }
        };
        if !ack_known {
            // Starting from nothing acknowledged, as when there is no such file.
            let _ = fs::remove_file(&ack_path);
        }
        // Without segments and without the acknowledged position, where the sequence
        // stopped is unknown: starting again at 1 under the old epoch would look like old
        // records to the receiver, so a new epoch starts a new stream.
        let epoch = load_epoch(dir, !segments.is_empty(), !ack_known && segments.is_empty());

        let mut disk_bytes: u64 = segments.iter().map(|s| s.bytes).sum();
        while segments.front().is_some_and(|s| s.last <= acked) {
            let segment = segments.pop_front().expect("checked above");
            match fs::remove_file(&segment.path) {
                Ok(()) => disk_bytes -= segment.bytes,
                Err(e) if e.kind() == io::ErrorKind::NotFound => disk_bytes -= segment.bytes,
                Err(e) => {
                    tracing::warn!(
                        path = %segment.path.display(),
                        "spool: cannot delete an acknowledged segment: {e}"
                    );
                    segments.push_front(segment);
                    break;
                }
            }
        }
        let next_seq = segments
            .back()
            .map_or(0, |s| s.last)
            .max(acked)
            .saturating_add(1);
        let segment_bytes = (max_bytes / 16).clamp(MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES);
        let spool = Spool {
            acked,
            acked_on_disk: acked,
            unsynced: false,
            degraded: None,
            dir: dir.to_path_buf(),
            disk_bytes,
            dropped_total: 0,
            epoch,
            frame: Vec::new(),
            full_logged: false,
            max_bytes,
            memory: VecDeque::new(),
            memory_bytes: 0,
            memory_cap: (max_bytes / 8).min(MAX_MEMORY_BYTES),
            next_seq,
            quarantined_total: quarantined_segments,
            reader: Mutex::new(None),
            segment_bytes,
            segments,
            writer: None,
            #[cfg(test)]
            write_through: None,
        };
        tracing::debug!(
            dir = %dir.display(),
            epoch,
            floor = spool.floor(),
            next_seq,
            segments = spool.segments.len(),
            "spool opened"
        );
        Ok(SpoolOpened {
            spool,
            quarantined_segments,
            quarantined_bytes,
        })
    }

    /// The random number chosen when the spool's directory was created (kept in its
    /// `epoch` file): a wiped directory starts a new epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Appends one record and returns its sequence number.
    ///
    /// To stay within `max_bytes`, whole oldest segments are deleted first, acknowledged
    /// or not (their unacknowledged records count as dropped). When the disk cannot be
    /// written the record goes to the memory tail (bounded too: its oldest records are
    /// dropped and counted) and [`Spool::degraded`] says why; every later push tries the
    /// disk again, writing the memory tail out first. A record over
    /// [`MAX_RECORD_BYTES`] is dropped (and counted) but still takes a sequence number.
    pub fn push(&mut self, record: &[u8]) -> u64 {
        let seq = self.next_seq;
        self.next_seq = seq.saturating_add(1);
        if record.len() > MAX_RECORD_BYTES {
            tracing::warn!(
                seq,
                bytes = record.len(),
                "spool: dropping a record over {MAX_RECORD_BYTES} bytes"
            );
            self.dropped_total += 1;
            return seq;
        }
        if !self.memory.is_empty() {
            self.write_memory_out();
        }
        if !self.memory.is_empty() {
            self.keep_in_memory(seq, record.to_vec());
            return seq;
        }
        match self.write_record(seq, record) {
            Ok(()) => self.recovered(),
            Err(e) => {
                self.set_degraded(e);
                self.keep_in_memory(seq, record.to_vec());
            }
        }
        seq
    }

    /// Up to `max` records with seq at least `from` (and above the acknowledged position),
    /// in order: from the disk, then from the memory tail.
    ///
    /// A record found damaged ends the read of its segment (it and the rest of the segment
    /// are skipped, with a warning); an I/O error is returned.
    pub fn read_from(&self, from: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, SpoolError> {
        let from = from.max(self.floor());
        let mut out = Vec::new();
        let start = self.segments.partition_point(|s| s.last < from);
        for segment in self.segments.range(start..) {
            if out.len() >= max {
                return Ok(out);
            }
            self.read_segment(segment, from, max, &mut out)?;
        }
        for (seq, record) in &self.memory {
            if out.len() >= max {
                break;
            }
            if *seq >= from {
                out.push((*seq, record.clone()));
            }
        }
        Ok(out)
    }

    /// The receiver stored everything up to and including `upto`: forgets those records.
    ///
    /// The position is written to the `acked` file first (atomically); only segments it
    /// covers are deleted, so that after a restart the sequence goes on past them. A
    /// position beyond the last seq given out means the receiver stored records this
    /// spool lost (an unsynced tail, after a power loss): the sequence goes on after it,
    /// so that new records are not taken for those.
    pub fn ack(&mut self, upto: u64) {
        let last = self.next_seq - 1;
        if upto > last {
            tracing::warn!(
                upto,
                last,
                "spool: the receiver holds records past the last one here (lost before \
                 they reached the disk); numbering goes on after them"
            );
            self.next_seq = upto.saturating_add(1);
        }
        if upto > self.acked {
            self.acked = upto;
            self.full_logged = false;
            while self.memory.front().is_some_and(|(seq, _)| *seq <= upto) {
                let (_, record) = self.memory.pop_front().expect("checked above");
                self.memory_bytes -= record.len() as u64;
            }
        }
        self.write_ack();
        self.forget_acknowledged();
    }

    /// Whether the oldest segment is covered by `position` and may be deleted: any but
    /// the one still being written, which takes the next records (deleting it would
    /// create, sync and delete a file per record when the receiver keeps up).
    fn deletable(&self, position: u64) -> bool {
        self.segments.front().is_some_and(|s| {
            s.last <= position && !(self.segments.len() == 1 && self.writer.is_some() && !s.sealed)
        })
    }

    /// Writes the acknowledged position to the `acked` file, if it moved.
    fn write_ack(&mut self) {
        if self.acked_on_disk >= self.acked {
            return;
        }
        let path = self.dir.join(ACK_FILE);
        match write_atomically(&path, format!("{}\n", self.acked).as_bytes()) {
            Ok(()) => self.acked_on_disk = self.acked,
            Err(e) if self.degraded.is_some() => {
                tracing::debug!(path = %path.display(), "spool: cannot write the acknowledged position: {e}")
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), "spool: cannot write the acknowledged position: {e}")
            }
        }
    }

    /// Deletes the segments the `acked` file covers (see [`Spool::deletable`]).
    fn forget_acknowledged(&mut self) {
        while self.deletable(self.acked_on_disk) {
            let front = self.segments.front().expect("checked above");
            if let Err(e) = fs::remove_file(&front.path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %front.path.display(), "spool: cannot delete an acknowledged segment: {e}");
                    break;
                }
            }
            let segment = self.segments.pop_front().expect("checked above");
            self.disk_bytes -= segment.bytes;
            if self.segments.is_empty() {
                self.writer = None;
            }
        }
    }

    /// The lowest seq still held, or [`Spool::next_seq`] if none is. Everything below it
    /// was acknowledged or dropped.
    pub fn floor(&self) -> u64 {
        self.segments
            .iter()
            .find(|s| s.last > self.acked)
            .map(|s| s.first.max(self.acked + 1))
            .or_else(|| self.memory.front().map(|(seq, _)| *seq))
            .unwrap_or(self.next_seq)
    }

    /// The seq the next [`Spool::push`] returns.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn stats(&self) -> SpoolStats {
        let on_disk: u64 = self.segments.iter().map(|s| s.held(self.acked)).sum();
        SpoolStats {
            records: on_disk + self.memory.len() as u64,
            bytes: self.disk_bytes,
            dropped_total: self.dropped_total,
            quarantined_total: self.quarantined_total,
            memory_records: self.memory.len() as u64,
        }
    }

    /// Why the disk cannot be written right now, if it cannot.
    pub fn degraded(&self) -> Option<String> {
        self.degraded.clone()
    }

    /// Syncs the segment being written to the disk (its data, `fdatasync`) if records were
    /// appended since the last sync, and writes the acknowledged position if an earlier
    /// write of it failed.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        self.write_ack();
        self.forget_acknowledged();
        if !self.unsynced {
            return Ok(());
        }
        if let (Some(writer), Some(segment)) = (self.writer.as_mut(), self.segments.back()) {
            writer.sync_data().map_err(|source| SpoolError::Sync {
                path: segment.path.clone(),
                source,
            })?;
        }
        self.unsynced = false;
        Ok(())
    }

    /// Whether [`Spool::sync`] has something to do.
    pub fn needs_sync(&self) -> bool {
        self.unsynced || self.acked_on_disk < self.acked
    }

    /// Writes one record to the disk: appended to the last segment if it has room (and
    /// the record's seq follows its last), else in a new segment.
    fn write_record(&mut self, seq: u64, payload: &[u8]) -> Result<(), SpoolError> {
        let frame_len = RECORD_HEADER_LEN + payload.len() as u64;
        let append = self.segments.back().is_some_and(|s| {
            !s.sealed
                && s.last.checked_add(1) == Some(seq)
                && s.bytes + frame_len <= self.segment_bytes
        });
        let header_len = if append { 0 } else { SEGMENT_HEADER_LEN };
        self.make_room(frame_len + header_len, append);
        self.frame.clear();
        if append {
            let segment = self.segments.back_mut().expect("append needs a segment");
            if self.writer.is_none() {
                #[cfg(test)]
                let through = self.write_through.as_deref();
                #[cfg(not(test))]
                let through = None;
                match open_for_writing(&segment.path, false, through) {
                    Ok(file) => self.writer = Some(file),
                    Err(source) => {
                        segment.sealed = true;
                        return Err(SpoolError::Write {
                            path: segment.path.clone(),
                            source,
                        });
                    }
                }
            }
            let writer = self.writer.as_mut().expect("opened above");
            encode_record(&mut self.frame, seq, payload);
            if let Err(source) = writer.write_all(&self.frame) {
                // Cut off what part of the record was written; appends go to a new
                // segment from now on.
                let _ = writer.set_len(segment.bytes);
                segment.sealed = true;
                self.writer = None;
                return Err(SpoolError::Write {
                    path: segment.path.clone(),
                    source,
                });
            }
            segment.bytes += frame_len;
            segment.last = seq;
            segment.records += 1;
        } else {
            if let Some(previous) = self.writer.take() {
                // Older segments are complete on the disk before a newer one exists.
                if let Err(e) = previous.sync_data() {
                    tracing::debug!("spool: cannot sync a finished segment: {e}");
                }
            }
            let path = self.dir.join(segment_name(seq));
            self.frame.extend_from_slice(MAGIC);
            self.frame.push(VERSION);
            encode_record(&mut self.frame, seq, payload);
            #[cfg(test)]
            let through = self.write_through.as_deref();
            #[cfg(not(test))]
            let through = None;
            let mut file =
                open_for_writing(&path, true, through).map_err(|source| SpoolError::Write {
                    path: path.clone(),
                    source,
                })?;
            if let Err(source) = file.write_all(&self.frame) {
                drop(file);
                let _ = fs::remove_file(&path);
                return Err(SpoolError::Write { path, source });
            }
            // The new file's name on the disk too, so that a power loss does not lose it.
            if let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all()) {
                tracing::debug!(dir = %self.dir.display(), "spool: cannot sync the directory: {e}");
            }
            self.segments.push_back(Segment {
                bytes: header_len + frame_len,
                first: seq,
                last: seq,
                path,
                records: 1,
                sealed: false,
            });
            self.writer = Some(file);
        }
        self.unsynced = true;
        self.disk_bytes += frame_len + header_len;
        Ok(())
    }

    /// Deletes oldest segments until `needed` more bytes fit within `max_bytes`, keeping
    /// the last segment if `keep_last` (it is appended to).
    fn make_room(&mut self, needed: u64, keep_last: bool) {
        while self.disk_bytes + needed > self.max_bytes {
            let keep = usize::from(keep_last);
            if self.segments.len() <= keep {
                return;
            }
            let front = self.segments.front().expect("checked above");
            if let Err(e) = fs::remove_file(&front.path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %front.path.display(), "spool: cannot delete the oldest segment to make room: {e}");
                    return;
                }
            }
            let segment = self.segments.pop_front().expect("checked above");
            self.disk_bytes -= segment.bytes;
            let dropped = segment.held(self.acked);
            self.dropped_total += dropped;
            if self.segments.is_empty() {
                self.writer = None;
            }
            if dropped > 0 {
                if self.full_logged {
                    tracing::debug!(
                        first = segment.first,
                        last = segment.last,
                        "spool full: dropped {dropped} unacknowledged records"
                    );
                } else {
                    tracing::warn!(
                        first = segment.first,
                        last = segment.last,
                        max_bytes = self.max_bytes,
                        "spool full: dropped {dropped} unacknowledged records (the oldest)"
                    );
                    self.full_logged = true;
                }
            }
        }
    }

    /// Adds a record to the memory tail, dropping its oldest records beyond its bound
    /// (always keeping the newest).
    fn keep_in_memory(&mut self, seq: u64, record: Vec<u8>) {
        self.memory_bytes += record.len() as u64;
        self.memory.push_back((seq, record));
        while self.memory_bytes > self.memory_cap && self.memory.len() > 1 {
            let (_, dropped) = self.memory.pop_front().expect("more than one");
            self.memory_bytes -= dropped.len() as u64;
            self.dropped_total += 1;
        }
    }

    /// Writes the memory tail to the disk, oldest first, until it is empty or a write fails.
    fn write_memory_out(&mut self) {
        while let Some((seq, record)) = self.memory.pop_front() {
            match self.write_record(seq, &record) {
                Ok(()) => self.memory_bytes -= record.len() as u64,
                Err(e) => {
                    self.memory.push_front((seq, record));
                    self.set_degraded(e);
                    return;
                }
            }
        }
        self.recovered();
    }

    fn set_degraded(&mut self, error: SpoolError) {
        let text = error.to_string();
        if self.degraded.is_none() {
            tracing::warn!("spool: {text}; keeping new records in memory until the disk works");
        }
        self.degraded = Some(text);
    }

    fn recovered(&mut self) {
        if self.degraded.take().is_some() {
            tracing::info!(
                "spool: the disk can be written again; records kept in memory are on it"
            );
        }
    }

    /// Reads records of `segment` with seq at least `from` into `out`, up to `max` in all.
    fn read_segment(
        &self,
        segment: &Segment,
        from: u64,
        max: usize,
        out: &mut Vec<(u64, Vec<u8>)>,
    ) -> Result<(), SpoolError> {
        let read_error = |source| SpoolError::Read {
            path: segment.path.clone(),
            source,
        };
        let mut cursor = self.reader.lock().unwrap_or_else(PoisonError::into_inner);
        let (file, mut offset, mut next_seq) = match cursor.take() {
            Some(c) if c.first == segment.first && c.next_seq <= from => {
                (c.file, c.offset, c.next_seq)
            }
            _ => (
                File::open(&segment.path).map_err(read_error)?,
                SEGMENT_HEADER_LEN,
                segment.first,
            ),
        };
        let mut reader = BufReader::with_capacity(64 << 10, file);
        reader.seek(SeekFrom::Start(offset)).map_err(read_error)?;
        let mut header = [0u8; RECORD_HEADER_LEN as usize];
        while out.len() < max && offset + RECORD_HEADER_LEN <= segment.bytes {
            reader.read_exact(&mut header).map_err(read_error)?;
            let (len, crc, seq) = decode_header(&header);
            let end = offset + RECORD_HEADER_LEN + len as u64;
            if len > MAX_RECORD_BYTES || end > segment.bytes || seq < next_seq || seq > segment.last
            {
                tracing::warn!(path = %segment.path.display(), offset, "spool: damaged record; skipping the rest of the segment");
                return Ok(());
            }
            if seq < from {
                reader.seek_relative(len as i64).map_err(read_error)?;
            } else {
                let mut payload = vec![0; len];
                reader.read_exact(&mut payload).map_err(read_error)?;
                if checksum(seq, &payload) != crc {
                    tracing::warn!(path = %segment.path.display(), offset, seq, "spool: record with a bad checksum; skipping the rest of the segment");
                    return Ok(());
                }
                out.push((seq, payload));
            }
            offset = end;
            next_seq = seq + 1;
        }
        *cursor = Some(ReadCursor {
            file: reader.into_inner(),
            first: segment.first,
            next_seq,
            offset,
        });
        Ok(())
    }

    /// Makes every segment opened for writing from now on `target` instead (`/dev/full`
    /// gives real write errors), or the real file again with `None`.
    #[cfg(test)]
    fn write_through(&mut self, target: Option<PathBuf>) {
        self.write_through = target;
        self.writer = None;
    }
}

/// What opening found in one segment file.
enum Loaded {
    Segment(Segment),
    /// No intact record; the file is deleted.
    Empty,
    /// Set aside, with its size.
    Quarantined(u64),
}

/// Checks one segment file record by record. `named`: the first seq its name says;
/// `newest`: it is the last segment, whose tail may be an append cut short; `previous`:
/// the last seq of the segments before.
fn load_segment(path: &Path, named: u64, newest: bool, previous: u64) -> Loaded {
    let data = match fs::read(path) {
        Ok(data) => data,
        Err(e) => {
            tracing::warn!(path = %path.display(), "spool: cannot read a segment ({e}); setting it aside");
            return Loaded::Quarantined(quarantine(path));
        }
    };
    let scan = scan_segment(&data, previous);
    let cut = match scan.damage {
        None => false,
        Some(Damage::BadHeader) => {
            tracing::warn!(path = %path.display(), "spool: not a spool segment (bad header); setting it aside");
            return Loaded::Quarantined(quarantine(path));
        }
        Some(Damage::Record(what)) if !newest => {
            tracing::warn!(path = %path.display(), offset = scan.good_len, "spool: damaged segment ({what}); setting it aside");
            return Loaded::Quarantined(quarantine(path));
        }
        Some(Damage::Record(what)) => {
            tracing::warn!(
                path = %path.display(),
                offset = scan.good_len,
                "spool: cutting off {} bytes after the newest segment's last intact record ({what})",
                data.len() as u64 - scan.good_len
            );
            true
        }
        Some(Damage::Torn) => {
            let bytes = data.len() as u64 - scan.good_len;
            if newest {
                tracing::info!(path = %path.display(), "spool: cutting off an incomplete last record ({bytes} bytes)");
            } else {
                tracing::warn!(path = %path.display(), "spool: cutting off an incomplete last record ({bytes} bytes) of an older segment");
            }
            true
        }
    };
    if scan.records > 0 && scan.first != named {
        // New segments are named by their first seq: a misnamed one could be overwritten.
        tracing::warn!(path = %path.display(), first = scan.first, "spool: a segment not named by its first record; setting it aside");
        return Loaded::Quarantined(quarantine(path));
    }
    if scan.records == 0 {
        if let Err(e) = fs::remove_file(path) {
            tracing::warn!(path = %path.display(), "spool: cannot delete an empty segment: {e}");
        }
        return Loaded::Empty;
    }
    let mut sealed = false;
    if cut {
        let truncated = OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| f.set_len(scan.good_len));
        if let Err(e) = truncated {
            // Reads stop at the last intact record anyway; appends go to a new segment.
            tracing::warn!(path = %path.display(), "spool: cannot cut off the damaged tail: {e}");
            sealed = true;
        }
    }
    Loaded::Segment(Segment {
        bytes: scan.good_len,
        first: scan.first,
        last: scan.last,
        path: path.to_path_buf(),
        records: scan.records,
        sealed,
    })
}

enum Damage {
    /// The file ends inside the header or a record, or is zeros from there on.
    Torn,
    /// The file does not start with the segment header.
    BadHeader,
    /// A record is damaged.
    Record(&'static str),
}

struct Scan {
    damage: Option<Damage>,
    first: u64,
    /// Where the intact records end.
    good_len: u64,
    last: u64,
    records: u64,
}

fn scan_segment(data: &[u8], previous: u64) -> Scan {
    let mut scan = Scan {
        damage: None,
        first: 0,
        good_len: 0,
        last: 0,
        records: 0,
    };
    let header_len = SEGMENT_HEADER_LEN as usize;
    let header_ok = data.len() >= header_len && data[..8] == *MAGIC && data[8] == VERSION;
    if !header_ok {
        let mut header = [0u8; 9];
        header[..8].copy_from_slice(MAGIC);
        header[8] = VERSION;
        let prefix = data.len() < header_len && data == &header[..data.len()];
        scan.damage = Some(if prefix || all_zero(data) {
            Damage::Torn
        } else {
            Damage::BadHeader
        });
        return scan;
    }
    let mut offset = header_len;
    let mut previous = previous;
    while offset < data.len() {
        let rest = &data[offset..];
        let damage = if rest.len() < RECORD_HEADER_LEN as usize {
            Some(Damage::Torn)
        } else {
            let (len, crc, seq) = decode_header(rest[..16].try_into().expect("16 bytes"));
            if len > MAX_RECORD_BYTES {
                Some(Damage::Record("record length over 16 MiB"))
            } else if rest.len() < 16 + len {
                Some(Damage::Torn)
            } else if checksum(seq, &rest[16..16 + len]) != crc {
                Some(Damage::Record("bad checksum"))
            } else if seq <= previous {
                Some(Damage::Record("sequence number not increasing"))
            } else {
                if scan.records == 0 {
                    scan.first = seq;
                }
                scan.last = seq;
                scan.records += 1;
                previous = seq;
                offset += 16 + len;
                None
            }
        };
        if let Some(damage) = damage {
            scan.damage = Some(if all_zero(rest) { Damage::Torn } else { damage });
            break;
        }
    }
    scan.good_len = offset as u64;
    scan
}

fn all_zero(data: &[u8]) -> bool {
    data.iter().all(|b| *b == 0)
}

fn decode_header(header: &[u8; 16]) -> (usize, u32, u64) {
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    let seq = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    (len as usize, crc, seq)
}

fn encode_record(buffer: &mut Vec<u8>, seq: u64, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("records are at most 16 MiB");
    buffer.extend_from_slice(&len.to_le_bytes());
    buffer.extend_from_slice(&checksum(seq, payload).to_le_bytes());
    buffer.extend_from_slice(&seq.to_le_bytes());
    buffer.extend_from_slice(payload);
}

fn checksum(seq: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

fn segment_name(first: u64) -> String {
    format!("{first:020}{SEGMENT_SUFFIX}")
}

fn parse_segment_name(stem: &str) -> Option<u64> {
    if stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()) {
        stem.parse().ok()
    } else {
        None
    }
}

/// Opens a segment for appending (`create`: a new one, emptied), or `through` instead.
fn open_for_writing(path: &Path, create: bool, through: Option<&Path>) -> io::Result<File> {
    if let Some(target) = through {
        return OpenOptions::new().write(true).open(target);
    }
    if create {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
    } else {
        OpenOptions::new().append(true).open(path)
    }
}

/// Renames a damaged segment to `<name>.corrupt` (dated now, for [`prune_quarantine`]) and
/// returns its size.
fn quarantine(path: &Path) -> u64 {
    let bytes = fs::metadata(path).map_or(0, |m| m.len());
    let mut aside = OsString::from(path.as_os_str());
    aside.push(CORRUPT_SUFFIX);
    let aside = PathBuf::from(aside);
    match fs::rename(path, &aside) {
        Ok(()) => {
            if let Ok(file) = OpenOptions::new().write(true).open(&aside) {
                let _ = file.set_modified(SystemTime::now());
            }
            tracing::warn!(path = %aside.display(), "spool: damaged segment set aside");
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), "spool: cannot set a damaged segment aside: {e}")
        }
    }
    bytes
}

/// Deletes the oldest `*.corrupt` files beyond [`MAX_QUARANTINED`].
fn prune_quarantine(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut aside: Vec<(SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.ends_with(CORRUPT_SUFFIX))
        })
        .map(|e| {
            let modified = e
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            (modified, e.path())
        })
        .collect();
    if aside.len() <= MAX_QUARANTINED {
        return;
    }
    aside.sort();
    let excess = aside.len() - MAX_QUARANTINED;
    for (_, path) in aside.into_iter().take(excess) {
        match fs::remove_file(&path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "spool: deleted an old damaged segment")
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), "spool: cannot delete an old damaged segment: {e}")
            }
        }
    }
}

/// Reads the epoch, or chooses and writes a new one: when there is none (a new directory),
/// when it is unreadable, or when `renew`.
fn load_epoch(dir: &Path, has_segments: bool, renew: bool) -> u64 {
    let path = dir.join(EPOCH_FILE);
    let found = fs::read_to_string(&path);
    if !renew {
        match &found {
            Ok(text) => match u64::from_str_radix(text.trim(), 16) {
                Ok(epoch) => return epoch,
                Err(_) => {
                    tracing::warn!(path = %path.display(), "spool: the epoch file is unreadable; starting a new epoch")
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if has_segments {
                    tracing::warn!(path = %path.display(), "spool: segments but no epoch file; starting a new epoch");
                }
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), "spool: cannot read the epoch file ({e}); starting a new epoch")
            }
        }
    } else {
        tracing::warn!(path = %path.display(), "spool: where the sequence stopped is unknown; starting a new epoch");
    }
    let epoch: u64 = rand::random();
    if let Err(e) = write_atomically(&path, format!("{epoch:016x}\n").as_bytes()) {
        tracing::warn!(path = %path.display(), "spool: cannot write the epoch file: {e}");
    }
    epoch
}

/// Replaces `path` with `contents`: a synced temporary file renamed over it.
fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut temporary = OsString::from(path.as_os_str());
    temporary.push(TMP_SUFFIX);
    let temporary = PathBuf::from(temporary);
    let mut file = File::create(&temporary)?;
    file.write_all(contents)?;
    file.sync_data()?;
    drop(file);
    fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record whose content tells its seq, `len` bytes long.
    fn record(seq: u64, len: usize) -> Vec<u8> {
        let tag = format!("batch {seq};");
        tag.bytes().cycle().take(len.max(tag.len())).collect()
    }

    fn open(dir: &Path, max_bytes: u64) -> Spool {
        let opened = Spool::open(dir, max_bytes).unwrap();
        assert_eq!(opened.quarantined_segments, 0);
        opened.spool
    }

    fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_str().unwrap().ends_with(suffix))
            .collect();
        files.sort();
        files
    }

    fn disk_bytes(dir: &Path) -> u64 {
        files_ending(dir, SEGMENT_SUFFIX)
            .iter()
            .map(|p| fs::metadata(p).unwrap().len())
            .sum()
    }

    fn seqs(records: &[(u64, Vec<u8>)]) -> Vec<u64> {
        records.iter().map(|(seq, _)| *seq).collect()
    }

    /// Reads everything held and checks that every record has the content its seq gave it.
    fn read_all(spool: &Spool, len: usize) -> Vec<u64> {
        let records = spool.read_from(0, usize::MAX).unwrap();
        for (seq, bytes) in &records {
            assert_eq!(bytes, &record(*seq, len), "seq {seq}");
        }
        seqs(&records)
    }

    #[test]
    fn records_round_trip_and_acks_and_seqs_survive_reopening() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("metrics-spool");
        let mut spool = open(&dir, 1 << 20);
        let epoch = spool.epoch();
        assert_eq!((spool.floor(), spool.next_seq()), (1, 1));
        assert!(spool.read_from(1, 10).unwrap().is_empty());
        for seq in 1..=200 {
            assert_eq!(spool.push(&record(seq, 1000)), seq);
        }
        assert_eq!(read_all(&spool, 1000), (1..=200).collect::<Vec<_>>());
        assert_eq!(seqs(&spool.read_from(4, 3).unwrap()), [4, 5, 6]);
        assert_eq!(seqs(&spool.read_from(199, 10).unwrap()), [199, 200]);
        assert!(spool.read_from(201, 10).unwrap().is_empty());
        // 64 KiB segments of 64 records.
        let segments = files_ending(&dir, SEGMENT_SUFFIX);
        assert_eq!(segments.len(), 4);
        assert!(segments[1].ends_with("00000000000000000065.seg"));
        assert_eq!(spool.stats().bytes, disk_bytes(&dir));

        spool.ack(100);
        assert_eq!((spool.floor(), spool.next_seq()), (101, 201));
        assert_eq!(spool.stats().records, 100);
        assert_eq!(read_all(&spool, 1000), (101..=200).collect::<Vec<_>>());
        assert_eq!(seqs(&spool.read_from(1, 2).unwrap()), [101, 102]);
        // The segment of 1..=64 is gone; 65..=128 still holds 101..=128.
        let segments = files_ending(&dir, SEGMENT_SUFFIX);
        assert_eq!(segments.len(), 3);
        assert!(segments[0].ends_with("00000000000000000065.seg"));
        assert_eq!(spool.stats().bytes, disk_bytes(&dir));
        spool.sync().unwrap();
        drop(spool);

        let mut spool = open(&dir, 1 << 20);
        assert_eq!(spool.epoch(), epoch);
        assert_eq!((spool.floor(), spool.next_seq()), (101, 201));
        assert_eq!(spool.stats().records, 100);
        assert_eq!(read_all(&spool, 1000), (101..=200).collect::<Vec<_>>());
        assert_eq!(spool.push(&record(201, 1000)), 201);

        spool.ack(201);
        assert_eq!((spool.floor(), spool.next_seq()), (202, 202));
        // The segment being written stays for the next records; the older ones are gone.
        let segments = files_ending(&dir, SEGMENT_SUFFIX);
        assert_eq!(segments.len(), 1, "{segments:?}");
        assert_eq!(spool.stats().records, 0);
        assert_eq!(spool.stats().bytes, disk_bytes(&dir));
        assert!(read_all(&spool, 1000).is_empty());
        drop(spool);

        let mut spool = open(&dir, 1 << 20);
        assert_eq!((spool.floor(), spool.next_seq()), (202, 202));
        assert_eq!(spool.push(&record(202, 1000)), 202);
        assert_eq!(read_all(&spool, 1000), [202]);
        // An old or repeated acknowledgement changes nothing.
        spool.ack(5);
        assert_eq!((spool.floor(), spool.stats().records), (202, 1));
    }

    #[test]
    fn a_sync_with_nothing_appended_has_nothing_to_do() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        let mut spool = open(dir, 1 << 20);
        assert!(!spool.needs_sync());
        spool.push(&record(1, 100));
        assert!(spool.needs_sync());
        spool.sync().unwrap();
        assert!(!spool.needs_sync());
        spool.ack(1);
        assert!(
            !spool.needs_sync(),
            "the acknowledged position is written at once"
        );
        assert_eq!(
            fs::read_to_string(dir.join(ACK_FILE)).unwrap(),
            "1\n",
            "on the disk"
        );
    }

    #[test]
    fn a_receiver_that_keeps_up_leaves_one_segment_that_takes_the_next_records() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        let mut spool = open(dir, 1 << 20);
        for seq in 1..=10 {
            assert_eq!(spool.push(&record(seq, 100)), seq);
            spool.ack(seq);
        }
        let segments = files_ending(dir, SEGMENT_SUFFIX);
        assert_eq!(segments.len(), 1, "{segments:?}");
        assert!(segments[0].ends_with("00000000000000000001.seg"));
        assert_eq!((spool.floor(), spool.stats().records), (11, 0));
        drop(spool);
        let mut spool = open(dir, 1 << 20);
        assert_eq!((spool.floor(), spool.next_seq()), (11, 11));
        assert_eq!(spool.push(&record(11, 100)), 11);
        assert_eq!(read_all(&spool, 100), [11]);
    }

    #[test]
    fn a_full_spool_drops_its_oldest_segments_and_counts_them() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        let max_bytes = 256 << 10;
        let segment_bytes = 64 << 10;
        let mut spool = open(dir, max_bytes);
        for seq in 1..=1000 {
            assert_eq!(spool.push(&record(seq, 1000)), seq);
            assert!(disk_bytes(dir) <= max_bytes + segment_bytes);
        }
        let stats = spool.stats();
        assert_eq!(stats.bytes, disk_bytes(dir));
        assert!(stats.bytes <= max_bytes);
        let floor = spool.floor();
        assert!(floor > 1);
        assert_eq!(stats.dropped_total, floor - 1);
        assert_eq!(stats.records, 1001 - floor);
        assert_eq!(read_all(&spool, 1000), (floor..=1000).collect::<Vec<_>>());
        let first = files_ending(dir, SEGMENT_SUFFIX)[0].clone();
        assert!(first.ends_with(segment_name(floor)));

        // Acknowledged records are not counted when their segment is dropped.
        let acked = floor + 10;
        spool.ack(acked);
        let dropped_before = spool.stats().dropped_total;
        for seq in 1001..=1300 {
            assert_eq!(spool.push(&record(seq, 1000)), seq);
        }
        let floor = spool.floor();
        assert!(floor > acked);
        assert_eq!(
            spool.stats().dropped_total - dropped_before,
            floor - 1 - acked
        );
        assert_eq!(read_all(&spool, 1000), (floor..=1300).collect::<Vec<_>>());
        assert!(disk_bytes(dir) <= max_bytes + segment_bytes);
        drop(spool);

        let spool = open(dir, max_bytes);
        assert_eq!((spool.floor(), spool.next_seq()), (floor, 1301));
    }

    #[test]
    fn a_torn_tail_of_the_newest_segment_is_cut_off_silently() {
        let frame = RECORD_HEADER_LEN + 100;
        let mut bad_checksum = Vec::new();
        encode_record(&mut bad_checksum, 11, b"abcd");
        bad_checksum[4] ^= 0xff;
        let mut noise = Vec::new();
        let mut x: u32 = 12345;
        for _ in 0..777 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            noise.push((x >> 16) as u8);
        }
        type Tear = Box<dyn Fn(&Path)>;
        let cases: Vec<(&str, Tear, u64)> = vec![
            (
                "last record cut in half",
                Box::new(move |p| {
                    let len = fs::metadata(p).unwrap().len();
                    let file = OpenOptions::new().write(true).open(p).unwrap();
                    file.set_len(len - frame / 2).unwrap();
                }),
                9,
            ),
            (
                "cut inside the last record's header",
                Box::new(move |p| {
                    let len = fs::metadata(p).unwrap().len();
                    let file = OpenOptions::new().write(true).open(p).unwrap();
                    file.set_len(len - frame + 5).unwrap();
                }),
                9,
            ),
            ("noise appended", Box::new(move |p| append(p, &noise)), 10),
            (
                "a record with a bad checksum appended",
                Box::new(move |p| append(p, &bad_checksum)),
                10,
            ),
            ("zeros appended", Box::new(|p| append(p, &[0; 4096])), 10),
        ];
        for (what, tear, intact) in cases {
            let root = tempfile::tempdir().unwrap();
            let dir = root.path();
            let mut spool = open(dir, 1 << 20);
            for seq in 1..=10 {
                spool.push(&record(seq, 100));
            }
            drop(spool);
            let segment = dir.join(segment_name(1));
            tear(&segment);

            let opened = Spool::open(dir, 1 << 20).unwrap();
            assert_eq!(opened.quarantined_segments, 0, "{what}");
            let mut spool = opened.spool;
            assert_eq!(
                read_all(&spool, 100),
                (1..=intact).collect::<Vec<_>>(),
                "{what}"
            );
            assert_eq!(
                fs::metadata(&segment).unwrap().len(),
                SEGMENT_HEADER_LEN + intact * frame,
                "{what}"
            );
            assert!(files_ending(dir, CORRUPT_SUFFIX).is_empty(), "{what}");
            assert_eq!(spool.push(&record(intact + 1, 100)), intact + 1, "{what}");
            drop(spool);
            let spool = open(dir, 1 << 20);
            assert_eq!(
                read_all(&spool, 100),
                (1..=intact + 1).collect::<Vec<_>>(),
                "{what}"
            );
            assert_eq!(spool.stats().quarantined_total, 0);
        }
    }

    fn append(path: &Path, bytes: &[u8]) {
        let mut file = OpenOptions::new().append(true).open(path).unwrap();
        file.write_all(bytes).unwrap();
    }

    fn patch(path: &Path, offset: u64, bytes: &[u8]) {
        let mut file = OpenOptions::new().write(true).open(path).unwrap();
        file.seek(SeekFrom::Start(offset)).unwrap();
        file.write_all(bytes).unwrap();
    }

    /// 200 records of 1000 bytes in 64 KiB segments: 1..=64, 65..=128, 129..=192, 193..=200.
    fn four_segments(dir: &Path) {
        let mut spool = open(dir, 1 << 20);
        for seq in 1..=200 {
            spool.push(&record(seq, 1000));
        }
        assert_eq!(files_ending(dir, SEGMENT_SUFFIX).len(), 4);
    }

    #[test]
    fn a_damaged_older_segment_is_set_aside_and_the_rest_stays_readable() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        four_segments(dir);
        let second = dir.join(segment_name(65));
        let size = fs::metadata(&second).unwrap().len();
        let byte = fs::read(&second).unwrap()[size as usize / 2];
        patch(&second, size / 2, &[byte ^ 0x10]);

        let opened = Spool::open(dir, 1 << 20).unwrap();
        assert_eq!(opened.quarantined_segments, 1);
        assert_eq!(opened.quarantined_bytes, size);
        let mut spool = opened.spool;
        assert_eq!(spool.stats().quarantined_total, 1);
        assert!(!second.exists());
        assert_eq!(
            files_ending(dir, CORRUPT_SUFFIX),
            [dir.join("00000000000000000065.seg.corrupt")]
        );
        let expected: Vec<u64> = (1..=64).chain(129..=200).collect();
        assert_eq!(read_all(&spool, 1000), expected);
        assert_eq!(spool.stats().records, 136);
        assert_eq!(spool.next_seq(), 201);
        assert_eq!(spool.push(&record(201, 1000)), 201);
        assert_eq!(
            seqs(&spool.read_from(60, 6).unwrap()),
            [60, 61, 62, 63, 64, 129]
        );
        drop(spool);

        let spool = open(dir, 1 << 20);
        let expected: Vec<u64> = (1..=64).chain(129..=201).collect();
        assert_eq!(read_all(&spool, 1000), expected);
    }

    #[test]
    fn every_kind_of_damage_to_an_older_segment_sets_it_aside() {
        // The second record of the segment 65..=128 starts here.
        let second_record = SEGMENT_HEADER_LEN + RECORD_HEADER_LEN + 1000;
        type Damage = Box<dyn Fn(&Path)>;
        let cases: Vec<(&str, Damage)> = vec![
            ("bad magic", Box::new(|p| patch(p, 0, b"X"))),
            ("bad version", Box::new(|p| patch(p, 8, &[VERSION + 1]))),
            (
                "length over 16 MiB",
                Box::new(move |p| patch(p, second_record, &(17u32 << 20).to_le_bytes())),
            ),
            (
                "seq not increasing",
                Box::new(move |p| {
                    // A well-formed record whose seq repeats the first one's.
                    let mut frame = Vec::new();
                    encode_record(&mut frame, 65, &record(66, 1000));
                    patch(p, second_record, &frame);
                }),
            ),
            (
                "not named by its first record",
                Box::new(|p| fs::rename(p, p.with_file_name(segment_name(66))).unwrap()),
            ),
            (
                "seq not above the previous segment's",
                Box::new(|p| {
                    let mut frame = Vec::new();
                    encode_record(&mut frame, 64, &record(65, 1000));
                    patch(p, SEGMENT_HEADER_LEN, &frame);
                }),
            ),
        ];
        for (what, damage) in cases {
            let root = tempfile::tempdir().unwrap();
            let dir = root.path();
            four_segments(dir);
            damage(&dir.join(segment_name(65)));
            let opened = Spool::open(dir, 1 << 20).unwrap();
            assert_eq!(opened.quarantined_segments, 1, "{what}");
            let expected: Vec<u64> = (1..=64).chain(129..=200).collect();
            assert_eq!(read_all(&opened.spool, 1000), expected, "{what}");
            assert_eq!(files_ending(dir, CORRUPT_SUFFIX).len(), 1, "{what}");
        }
    }

    #[test]
    fn an_incomplete_tail_of_an_older_segment_is_cut_off_without_setting_it_aside() {
        // What a write that failed half-way and could not be undone leaves.
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        four_segments(dir);
        let second = dir.join(segment_name(65));
        let size = fs::metadata(&second).unwrap().len();
        let file = OpenOptions::new().write(true).open(&second).unwrap();
        file.set_len(size - 300).unwrap();
        let opened = Spool::open(dir, 1 << 20).unwrap();
        assert_eq!(opened.quarantined_segments, 0);
        let expected: Vec<u64> = (1..=127).chain(129..=200).collect();
        assert_eq!(read_all(&opened.spool, 1000), expected);
        assert_eq!(fs::metadata(&second).unwrap().len(), size - 1016);
        assert_eq!(opened.spool.stats().records, 199);
    }

    #[test]
    fn at_most_eight_damaged_segments_are_kept() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        four_segments(dir);
        for n in 1..=10u64 {
            let path = dir.join(format!("{:020}.seg.corrupt", 1000 + n));
            fs::write(&path, b"old damage").unwrap();
            let file = OpenOptions::new().write(true).open(&path).unwrap();
            file.set_modified(
                SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000 + n),
            )
            .unwrap();
        }
        patch(&dir.join(segment_name(1)), 100, b"damage");
        let opened = Spool::open(dir, 1 << 20).unwrap();
        assert_eq!(opened.quarantined_segments, 1);
        let aside = files_ending(dir, CORRUPT_SUFFIX);
        assert_eq!(aside.len(), 8);
        assert!(aside.contains(&dir.join("00000000000000000001.seg.corrupt")));
        for n in 1..=3u64 {
            assert!(!aside.contains(&dir.join(format!("{:020}.seg.corrupt", 1000 + n))));
        }
        assert_eq!(
            read_all(&opened.spool, 1000),
            (65..=200).collect::<Vec<_>>()
        );
    }

    #[test]
    fn records_wait_in_memory_while_the_disk_fails_and_reach_it_in_order() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        let mut spool = open(dir, 1 << 20);
        for seq in 1..=5 {
            spool.push(&record(seq, 500));
        }
        assert!(spool.degraded().is_none());
        // Every write now goes to /dev/full: ENOSPC.
        spool.write_through(Some(PathBuf::from("/dev/full")));
        for seq in 6..=20 {
            assert_eq!(spool.push(&record(seq, 500)), seq);
        }
        let why = spool.degraded().expect("degraded");
        assert!(why.contains("No space left on device"), "{why}");
        assert_eq!(spool.stats().memory_records, 15);
        assert_eq!(spool.stats().records, 20);
        assert_eq!(read_all(&spool, 500), (1..=20).collect::<Vec<_>>());
        assert_eq!(seqs(&spool.read_from(4, 4).unwrap()), [4, 5, 6, 7]);
        assert_eq!(seqs(&spool.read_from(10, 3).unwrap()), [10, 11, 12]);
        spool.ack(7);
        assert_eq!(spool.floor(), 8);
        assert_eq!(spool.stats().memory_records, 13);
        assert!(files_ending(dir, SEGMENT_SUFFIX).is_empty());
        assert!(spool.sync().is_ok());

        spool.write_through(None);
        assert_eq!(spool.push(&record(21, 500)), 21);
        assert!(spool.degraded().is_none());
        assert_eq!(spool.stats().memory_records, 0);
        assert_eq!(spool.stats().records, 14);
        assert_eq!(read_all(&spool, 500), (8..=21).collect::<Vec<_>>());
        assert_eq!(spool.stats().bytes, disk_bytes(dir));
        drop(spool);

        let spool = open(dir, 1 << 20);
        assert_eq!(read_all(&spool, 500), (8..=21).collect::<Vec<_>>());
        assert_eq!(spool.next_seq(), 22);
    }

    #[test]
    fn the_memory_tail_is_bounded_too() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        // Memory holds max_bytes / 8 = 32 KiB: 32 records of 1000 bytes.
        let mut spool = open(dir, 256 << 10);
        spool.push(&record(1, 1000));
        spool.write_through(Some(PathBuf::from("/dev/full")));
        for seq in 2..=100 {
            assert_eq!(spool.push(&record(seq, 1000)), seq);
        }
        let stats = spool.stats();
        assert_eq!(stats.memory_records, 32);
        assert_eq!(stats.dropped_total, 99 - 32);
        let expected: Vec<u64> = std::iter::once(1).chain(69..=100).collect();
        assert_eq!(read_all(&spool, 1000), expected);

        spool.write_through(None);
        spool.push(&record(101, 1000));
        assert!(spool.degraded().is_none());
        let expected: Vec<u64> = std::iter::once(1).chain(69..=101).collect();
        assert_eq!(read_all(&spool, 1000), expected);
        drop(spool);
        let spool = open(dir, 256 << 10);
        assert_eq!(read_all(&spool, 1000), expected);
        assert_eq!(spool.next_seq(), 102);
    }

    #[test]
    fn a_directory_replaced_by_a_file_degrades_then_recovers() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("metrics-spool");
        let mut spool = open(&dir, 1 << 20);
        fs::remove_dir_all(&dir).unwrap();
        fs::write(&dir, b"not a directory").unwrap();
        for seq in 1..=3 {
            assert_eq!(spool.push(&record(seq, 300)), seq);
        }
        assert!(spool.degraded().is_some());
        assert_eq!(read_all(&spool, 300), [1, 2, 3]);

        fs::remove_file(&dir).unwrap();
        fs::create_dir(&dir).unwrap();
        assert_eq!(spool.push(&record(4, 300)), 4);
        assert!(spool.degraded().is_none());
        assert_eq!(spool.stats().memory_records, 0);
        drop(spool);
        let spool = open(&dir, 1 << 20);
        assert_eq!(read_all(&spool, 300), [1, 2, 3, 4]);
    }

    #[test]
    fn odd_directories_open_and_work() {
        // Only an epoch file.
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        fs::write(dir.join(EPOCH_FILE), "00000000000000ab\n").unwrap();
        let mut spool = open(dir, 1 << 20);
        assert_eq!(spool.epoch(), 0xab);
        assert_eq!((spool.floor(), spool.next_seq()), (1, 1));
        for seq in 1..=10 {
            spool.push(&record(seq, 100));
        }
        spool.ack(4);
        drop(spool);

        // No acknowledged position: everything held is sent again, the seqs go on.
        fs::remove_file(dir.join(ACK_FILE)).unwrap();
        let mut spool = open(dir, 1 << 20);
        assert_eq!(spool.epoch(), 0xab);
        assert_eq!((spool.floor(), spool.next_seq()), (1, 11));
        spool.ack(4);
        drop(spool);

        // An unreadable one: the same.
        fs::write(dir.join(ACK_FILE), "\u{0}garbage").unwrap();
        let mut spool = open(dir, 1 << 20);
        assert_eq!(spool.epoch(), 0xab);
        assert_eq!((spool.floor(), spool.next_seq()), (1, 11));
        assert_eq!(read_all(&spool, 100), (1..=10).collect::<Vec<_>>());
        spool.ack(10);
        assert!(files_ending(dir, SEGMENT_SUFFIX).is_empty());
        drop(spool);
        let spool = open(dir, 1 << 20);
        assert_eq!(
            (spool.floor(), spool.next_seq(), spool.epoch()),
            (11, 11, 0xab)
        );
        drop(spool);

        // Nothing held and the position unreadable: a new stream.
        fs::write(dir.join(ACK_FILE), "eleven").unwrap();
        let spool = open(dir, 1 << 20);
        assert_ne!(spool.epoch(), 0xab);
        assert_eq!((spool.floor(), spool.next_seq()), (1, 1));
        let epoch = spool.epoch();
        drop(spool);
        let mut spool = open(dir, 1 << 20);
        assert_eq!((spool.epoch(), spool.next_seq()), (epoch, 1));
        spool.push(&record(1, 100));
        drop(spool);
        let spool = open(dir, 1 << 20);
        assert_eq!((spool.epoch(), spool.next_seq()), (epoch, 2));
        drop(spool);

        // An unreadable epoch: a new one. A wiped directory: a new one.
        fs::write(dir.join(EPOCH_FILE), "not hex").unwrap();
        let spool = open(dir, 1 << 20);
        assert_ne!(spool.epoch(), epoch);
        assert_eq!(spool.next_seq(), 2);
        let epoch = spool.epoch();
        drop(spool);
        fs::remove_dir_all(dir).unwrap();
        let spool = open(dir, 1 << 20);
        assert_ne!(spool.epoch(), epoch);
        assert_eq!(spool.next_seq(), 1);

        // Leftovers: a temporary file and a header-only segment.
        fs::write(dir.join("acked.tmp"), "3").unwrap();
        fs::write(dir.join(segment_name(7)), [&MAGIC[..], &[VERSION]].concat()).unwrap();
        let spool = open(dir, 1 << 20);
        assert_eq!(spool.next_seq(), 1);
        assert!(!dir.join("acked.tmp").exists());
        assert!(files_ending(dir, SEGMENT_SUFFIX).is_empty());
    }

    #[test]
    fn reads_in_batches_see_every_record_once_while_pushing() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        let mut spool = open(dir, 1 << 20);
        let mut seen = Vec::new();
        let mut from = 1;
        for seq in 1..=400 {
            spool.push(&record(seq, 700));
            if seq % 3 == 0 {
                let batch = spool.read_from(from, 5).unwrap();
                if let Some((last, _)) = batch.last() {
                    from = last + 1;
                }
                seen.extend(seqs(&batch));
            }
        }
        loop {
            let batch = spool.read_from(from, 7).unwrap();
            let Some((last, _)) = batch.last() else { break };
            from = last + 1;
            seen.extend(seqs(&batch));
        }
        assert_eq!(seen, (1..=400).collect::<Vec<_>>());
        // Going back works as well.
        assert_eq!(seqs(&spool.read_from(2, 2).unwrap()), [2, 3]);
        assert_eq!(seqs(&spool.read_from(300, 2).unwrap()), [300, 301]);
        assert_eq!(seqs(&spool.read_from(100, 1).unwrap()), [100]);
        assert!(spool.read_from(5, 0).unwrap().is_empty());
    }

    /// `cargo test -p vigil-agent spool_throughput -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, not a check"]
    fn spool_throughput() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        let count = 200_000u64;
        let mut spool = open(dir, 1 << 30);
        let payload = vec![0x5a; 1024];
        let started = std::time::Instant::now();
        for _ in 0..count {
            spool.push(&payload);
        }
        spool.sync().unwrap();
        let pushed = started.elapsed();
        let stats = spool.stats();
        let started = std::time::Instant::now();
        let mut from = 1;
        let mut read = 0;
        loop {
            let batch = spool.read_from(from, 100).unwrap();
            let Some((last, _)) = batch.last() else { break };
            from = last + 1;
            read += batch.len();
        }
        let reading = started.elapsed();
        assert_eq!(read as u64, count);
        println!(
            "push: {:.0} records/s of 1 KiB; read in batches of 100: {:.0} records/s; \
             {} bytes on disk for {} records: {:.2} bytes of overhead per record",
            count as f64 / pushed.as_secs_f64(),
            count as f64 / reading.as_secs_f64(),
            stats.bytes,
            count,
            (stats.bytes - count * 1024) as f64 / count as f64
        );
    }
}
