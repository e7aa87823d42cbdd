//! The persisted, versioned desired state of `polluxd` (the role OVS's `conf.db` plays).
//!
//! The state directory holds generation files, `gen-<20-digit zero-padded
//! generation>.json`, each holding one whole state
//!
//! ```json
//! {"generation": 7, "applied_at_unix": 1790000000, "state": { ... }}   (compact, one line)
//! ```
//!
//! and beside the newest (and older ones still in the history) a journal,
//! `journal-<its generation>.log`, of the generations made after it as changes to single
//! objects, one line each (see the `journal` module). A whole-state apply writes a
//! generation file; a change to a few objects (`ports.put`, `config.patch`) appends a
//! line, which costs what the change is, not what the state is. On a cadence
//! ([`Store::compaction_due`]) the caller folds the journal into a generation file of the
//! current generation ([`Store::compact`]), so that a restart replays a bounded journal.
//!
//! The state is kept as a [`serde_json::Value`] so this module does not depend on the
//! model; the caller passes the desired state serialised.
//!
//! A generation file is written as a temp file (`gen-<N>.json.tmp`) in the same
//! directory, fsynced, renamed into place and the directory fsynced, in that order; a
//! journal record is written and fdatasynced (a failed one is cut off again). Only then
//! are the generations beyond the newest `history` pruned. Once [`Store::commit`] or
//! [`Store::append`] has returned `Ok`, a crash at any later point leaves the new
//! generation readable; one that returned an error leaves the store as it was.
//!
//! Corruption is never papered over: if the newest generation file is unreadable, is not
//! JSON, or names a different generation inside than in its file name, or its journal has
//! a bad line before the last or a change that does not apply, [`Store::open`]
//! fails with [`StoreError::Corrupt`] naming the file, and the file is left untouched for
//! inspection (the store never falls back to an older generation or to empty). A corrupt
//! older generation does not prevent opening: it is left out of [`Store::history`] and
//! [`Store::get`] reports it as corrupt. Temp files left over by a crash mid-write, and
//! the torn last line of a journal append that was never acknowledged, are removed on
//! open; any other file in the directory is ignored.
//!
//! The directory and its files are private to polluxd (see [`pollux_services::private_fs`]): mode
//! 0700 and 0600, no symbolic link followed, a directory open to others tightened with a
//! warning.
//!
//! A state directory has a single owner: [`Store::open`] takes an exclusive `flock` on
//! `polluxd.lock` in it, held as long as the `Store` lives (the kernel drops it when the
//! process dies, so a crash leaves nothing to clean up), and a second opener gets
//! [`StoreError::Locked`] instead of two daemons overwriting each other's generations.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use pollux_services::private_fs;

/// How many generations are retained when the caller has no opinion.
pub const DEFAULT_HISTORY: usize = 16;

const PREFIX: &str = "gen-";
const SUFFIX: &str = ".json";
const TMP_SUFFIX: &str = ".json.tmp";
const DIGITS: usize = 20;
const LOCK_FILE: &str = "polluxd.lock";
const JOURNAL_PREFIX: &str = "journal-";
const JOURNAL_SUFFIX: &str = ".log";

/// Journal records after which [`Store::compaction_due`] says yes whether or not changes
/// keep coming: bounds what a restart replays and a rollback reads.
pub const COMPACT_AFTER_RECORDS: usize = 1000;
/// Quiet time after the last change after which a journal of any length is folded.
pub const COMPACT_WHEN_QUIET_FOR: Duration = Duration::from_secs(30);

mod journal;

/// Why the store could not do what was asked.
#[derive(Debug)]
pub enum StoreError {
    /// A file-system operation failed.
    Io {
        /// What the store was doing (`"create state directory"`, `"fsync"`, ...).
        op: &'static str,
        /// The file or directory it was doing it to.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A generation file exists but cannot be used. The file is left as it is.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Another `Store` (another polluxd) holds the directory.
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A commit's generation is not newer than the committed one.
    StaleGeneration {
        /// The generation offered.
        generation: u64,
        /// The newest committed generation.
        current: u64,
    },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io { op, path, source } => {
                write!(f, "state store: cannot {op} {}: {source}", path.display())
            }
            StoreError::Corrupt { path, reason } => write!(
                f,
                "state store: {} is corrupt: {reason} (the file is left in place for inspection)",
                path.display()
            ),
            StoreError::Locked { path } => write!(
                f,
                "state store: {} is locked: another polluxd uses this state directory",
                path.display()
            ),
            StoreError::StaleGeneration {
                generation,
                current,
            } => write!(
                f,
                "state store: generation {generation} is not newer than the committed \
                 generation {current}"
            ),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// How long a held lock is retried before the directory is reported as in use. A lock is
/// also held, briefly, by a process that another thread of the same program is starting:
/// the child has a copy of every descriptor from its fork until its exec closes them, and
/// a `flock` lasts while any copy is open. Likewise a daemon that is exiting releases its
/// lock as its descriptors close. A second daemon holds it for good.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_millis(500);

/// Takes the directory's lock, retrying for at most [`LOCK_PATIENCE`].
fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let file = private_fs::open_or_create(&path).map_err(io_err("open lock file", &path))?;
    let deadline = std::time::Instant::now() + LOCK_PATIENCE;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(fs::TryLockError::WouldBlock) => return Err(StoreError::Locked { path }),
            Err(fs::TryLockError::Error(source)) => {
                return Err(StoreError::Io {
                    op: "lock",
                    path,
                    source,
                })
            }
        }
    }
}

/// One generation as read back from its file.
#[derive(Debug)]
struct Record {
    applied_at: u64,
    state: Value,
}

/// Where a retained generation is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    /// Its `applied_at_unix`, or `None` when its file (an older one) is corrupt.
    applied_at: Option<u64>,
    /// The generation file it is read from: itself, or the one whose journal holds it.
    base: u64,
}

/// The journal changes are appended to: that of the newest generation file.
#[derive(Debug)]
struct OpenJournal {
    base: u64,
    file: File,
    len: u64,
}

/// The persisted desired state: the newest committed generation and a bounded history.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    history: usize,
    /// The newest committed generation and its state.
    current: Option<(u64, Value)>,
    /// Every retained generation.
    index: BTreeMap<u64, Entry>,
    /// The journal files present, by base generation.
    journals: BTreeSet<u64>,
    /// The journal of the newest generation file, once a change has been appended to it.
    journal: Option<OpenJournal>,
    /// Records in the newest generation file's journal.
    journal_records: usize,
    /// A failed append could not be cut back off the journal, which may therefore end
    /// with a refused record: no more appends to it.
    journal_poisoned: bool,
    /// When the last record was appended.
    last_append: Option<Instant>,
    /// When the last compaction failed: the next waits [`COMPACT_WHEN_QUIET_FOR`].
    compact_failed: Option<Instant>,
    /// Holds the directory's lock for as long as the store lives.
    _lock: File,
}

impl Store {
    /// Opens the state directory `dir`, creating it (mode 0700) if missing, and keeps the
    /// newest `history` generations on each commit (`history` 0 is taken as 1: the current
    /// generation is always kept). See [`DEFAULT_HISTORY`].
    ///
    /// The newest generation file is read and its journal replayed. Fails with
    /// [`StoreError::Corrupt`] naming the file when either cannot be read; leftover temp
    /// files and a torn last journal line are removed.
    pub fn open(dir: &Path, history: usize) -> Result<Store, StoreError> {
        let created = !dir.exists();
        if let Some(note) =
            private_fs::ensure_dir(dir).map_err(io_err("use as state directory", dir))?
        {
            pollux_services::warn!("state store: {note}");
        }
        // Before anything else touches the directory: a temp file may be another
        // daemon's commit in flight.
        let lock = lock_dir(dir)?;
        if created {
            // Make the new directory's own entry durable too (best effort: the parent may
            // not be ours to open).
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                let _ = File::open(parent).and_then(|d| d.sync_all());
            }
        }

        let mut generations = Vec::new();
        let mut journals = BTreeSet::new();
        let mut removed_tmp = false;
        for entry in fs::read_dir(dir).map_err(io_err("list state directory", dir))? {
            let entry = entry.map_err(io_err("list state directory", dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(generation) = parse_name(name, SUFFIX) {
                generations.push(generation);
            } else if let Some(base) = parse_journal_name(name) {
                journals.insert(base);
            } else if parse_name(name, TMP_SUFFIX).is_some() {
                // A commit that crashed before its rename: never committed.
                if fs::remove_file(entry.path()).is_ok() {
                    removed_tmp = true;
                }
            }
        }
        if removed_tmp {
            sync_dir(dir)?;
        }
        generations.sort_unstable();

        let mut store = Store {
            dir: dir.to_path_buf(),
            history: history.max(1),
            current: None,
            index: BTreeMap::new(),
            journals,
            journal: None,
            journal_records: 0,
            journal_poisoned: false,
            last_append: None,
            compact_failed: None,
            _lock: lock,
        };
        let Some((&newest, older)) = generations.split_last() else {
            return Ok(store);
        };
        for (k, &generation) in older.iter().enumerate() {
            let applied_at = store.read(generation).ok().map(|r| r.applied_at);
            store.index.insert(
                generation,
                Entry {
                    applied_at,
                    base: generation,
                },
            );
            // An older journal only adds to the history: what does not read is left out.
            if store.journals.contains(&generation) {
                let next_base = generations[k + 1];
                if let Ok(journal) = journal::read(&store.journal_file(generation)) {
                    for r in journal.records {
                        if r.generation <= generation || r.generation >= next_base {
                            break;
                        }
                        store.index.insert(
                            r.generation,
                            Entry {
                                applied_at: Some(r.applied_at),
                                base: generation,
                            },
                        );
                    }
                }
            }
        }
        let record = store.read(newest)?;
        store.index.insert(
            newest,
            Entry {
                applied_at: Some(record.applied_at),
                base: newest,
            },
        );
        let mut state = record.state;
        let mut generation = newest;
        if store.journals.contains(&newest) {
            let path = store.journal_file(newest);
            let read = journal::read(&path).map_err(|e| StoreError::Corrupt {
                path: path.clone(),
                reason: format!("cannot read it: {e}"),
            })?;
            let corrupt = |reason: String| StoreError::Corrupt {
                path: path.clone(),
                reason,
            };
            if let Some((line, reason)) = read.corrupt {
                return Err(corrupt(format!("line {line}: {reason}")));
            }
            for (k, r) in read.records.iter().enumerate() {
                if r.generation != generation + 1 {
                    return Err(corrupt(format!(
                        "line {}: generation {} follows generation {generation}",
                        k + 1,
                        r.generation
                    )));
                }
                journal::make(&mut state, &r.changes)
                    .map_err(|e| corrupt(format!("line {}: {e}", k + 1)))?;
                generation = r.generation;
                store.index.insert(
                    generation,
                    Entry {
                        applied_at: Some(r.applied_at),
                        base: newest,
                    },
                );
            }
            store.journal_records = read.records.len();
            if read.good_len < read.file_len {
                // The torn tail of an append that was never acknowledged.
                let file = private_fs::open_or_create(&path).map_err(io_err("open", &path))?;
                file.set_len(read.good_len)
                    .and_then(|()| file.sync_data())
                    .map_err(io_err("cut the torn last line of", &path))?;
            }
        }
        store.current = Some((generation, state));
        // A generation file kept only as the base of a journal may hold a generation that
        // has left the history, as may the files of a larger earlier `history`: listed no
        // more, removed at the next commit.
        store.forget_beyond_history();
        Ok(store)
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The newest committed generation and its state, or `None` for an empty store.
    pub fn current(&self) -> Option<(u64, &Value)> {
        self.current.as_ref().map(|(g, v)| (*g, v))
    }

    /// The number of the newest committed generation, if any.
    pub fn current_generation(&self) -> Option<u64> {
        self.current.as_ref().map(|(g, _)| *g)
    }

    fn check_newer(&self, generation: u64) -> Result<(), StoreError> {
        match self.current_generation() {
            Some(current) if generation <= current => Err(StoreError::StaleGeneration {
                generation,
                current,
            }),
            _ => Ok(()),
        }
    }

    /// Persists `state` as `generation`, which must be newer than the current one.
    ///
    /// Temp file, fsync, rename, fsync of the directory, then pruning to the newest
    /// `history` generations. When this returns `Ok` the generation survives a crash.
    /// Pruning is best effort: a file that cannot be removed now is retried on the next
    /// commit, and never fails the commit.
    pub fn commit(&mut self, generation: u64, state: &Value) -> Result<(), StoreError> {
        self.commit_owned(generation, state.clone())
    }

    /// [`Store::commit`] taking the state by value, which saves a copy of a large state.
    pub fn commit_owned(&mut self, generation: u64, state: Value) -> Result<(), StoreError> {
        self.check_newer(generation)?;
        let applied_at = now_unix();
        self.write_generation_file(generation, applied_at, &state)?;
        self.index.insert(
            generation,
            Entry {
                applied_at: Some(applied_at),
                base: generation,
            },
        );
        self.current = Some((generation, state));
        self.journal = None;
        self.journal_records = 0;
        self.journal_poisoned = false;
        self.prune();
        Ok(())
    }

    /// Persists `generation` as `changes` made to the current state (a JSON array, in the
    /// form the [`journal`] module describes): one record appended to the journal of the
    /// newest generation file and synced, instead of the whole state written. After a
    /// failed append that could not be cut back off the journal, the next change is
    /// written as a whole generation file instead, which supersedes that journal.
    ///
    /// All or nothing, as [`Store::commit`]: on failure the store (in memory, on disk and
    /// for the next open) still holds the current generation. Changes that cannot be made
    /// to the current state (a delete of an id it does not hold) are refused before
    /// anything is written. An empty store has no state to change: commit a whole state
    /// first (see [`Store::can_append`]).
    pub fn append(&mut self, generation: u64, changes: &Value) -> Result<(), StoreError> {
        self.check_newer(generation)?;
        let Some(base) = self.newest_base() else {
            return Err(StoreError::Corrupt {
                path: self.dir.clone(),
                reason: "no generation to append changes to".into(),
            });
        };
        let path = self.journal_file(base);
        let (_, state) = self
            .current
            .as_mut()
            .expect("a base implies a current state");
        let made = journal::make(state, changes).map_err(|reason| StoreError::Corrupt {
            path: path.clone(),
            reason: format!("the changes of generation {generation} do not apply: {reason}"),
        })?;
        let applied_at = now_unix();
        let written = if self.journal_poisoned {
            let state = &self.current.as_ref().expect("checked above").1;
            self.write_generation_file(generation, applied_at, state)
                .map(|()| generation)
        } else {
            let bytes = journal::encode(generation, applied_at, changes);
            self.write_record(base, &bytes).map(|()| base)
        };
        let base = match written {
            Ok(base) => base,
            Err(e) => {
                let (_, state) = self.current.as_mut().expect("checked above");
                made.undo(state);
                return Err(e);
            }
        };
        if let Some((g, _)) = self.current.as_mut() {
            *g = generation;
        }
        self.index.insert(
            generation,
            Entry {
                applied_at: Some(applied_at),
                base,
            },
        );
        if base == generation {
            self.journal = None;
            self.journal_records = 0;
            self.journal_poisoned = false;
        } else {
            self.journal_records += 1;
            self.last_append = Some(Instant::now());
        }
        self.prune();
        Ok(())
    }

    /// Appends one encoded record to the journal of `base`, creating the file (and making
    /// its directory entry durable) on first use.
    fn write_record(&mut self, base: u64, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.journal_file(base);
        if self.journal.as_ref().is_none_or(|j| j.base != base) {
            let file = private_fs::open_or_create(&path).map_err(io_err("open", &path))?;
            let len = file.metadata().map_err(io_err("stat", &path))?.len();
            let created = !self.journals.contains(&base);
            self.journals.insert(base);
            if created {
                sync_dir(&self.dir)?;
            }
            self.journal = Some(OpenJournal { base, file, len });
        }
        let journal = self.journal.as_mut().expect("opened above");
        match journal::append(&journal.file, journal.len, bytes) {
            Ok(()) => {
                journal.len += bytes.len() as u64;
                Ok(())
            }
            Err((source, cut)) => {
                if !cut {
                    // The file may end with the refused record: appending after it would
                    // make that record part of the history. The next change writes a whole
                    // generation file instead, which supersedes this journal.
                    self.journal = None;
                    self.journal_poisoned = true;
                }
                Err(StoreError::Io {
                    op: "append to",
                    path,
                    source,
                })
            }
        }
    }

    /// Whether a change can be appended: there is a state to make it to (an empty store
    /// takes a whole state first).
    pub fn can_append(&self) -> bool {
        self.newest_base().is_some()
    }

    /// Records in the journal of the newest generation file: the changes a restart
    /// replays, and what [`Store::compact`] folds.
    pub fn journal_len(&self) -> usize {
        self.journal_records
    }

    /// Whether [`Store::compact`] should run now: the journal is long, or it has not
    /// grown for [`COMPACT_WHEN_QUIET_FOR`] (a journal found on open counts as quiet).
    /// The caller runs it when it has nothing else to do: it writes the whole state.
    pub fn compaction_due(&self, now: Instant) -> bool {
        let waited = |since: Option<Instant>| {
            since.is_none_or(|t| now.saturating_duration_since(t) >= COMPACT_WHEN_QUIET_FOR)
        };
        if !waited(self.compact_failed) {
            return false;
        }
        self.journal_records >= COMPACT_AFTER_RECORDS
            || (self.journal_records > 0 && waited(self.last_append))
    }

    /// Writes the current generation whole into its own generation file, so that a
    /// restart replays no journal and the older journal can be pruned with its history.
    /// Nothing to do when the current generation is already a file.
    pub fn compact(&mut self) -> Result<(), StoreError> {
        let Some((generation, _)) = self.current else {
            return Ok(());
        };
        let Some(entry) = self.index.get(&generation).copied() else {
            return Ok(());
        };
        if entry.base == generation {
            return Ok(());
        }
        let applied_at = entry.applied_at.unwrap_or_else(now_unix);
        let state = &self.current.as_ref().expect("checked above").1;
        if let Err(e) = self.write_generation_file(generation, applied_at, state) {
            self.compact_failed = Some(Instant::now());
            return Err(e);
        }
        self.compact_failed = None;
        self.index.insert(
            generation,
            Entry {
                applied_at: Some(applied_at),
                base: generation,
            },
        );
        self.journal = None;
        self.journal_records = 0;
        self.journal_poisoned = false;
        self.prune();
        Ok(())
    }

    /// The newest generation file.
    fn newest_base(&self) -> Option<u64> {
        let (g, _) = self.current.as_ref()?;
        self.index.get(g).map(|e| e.base)
    }

    /// Writes `state` as the generation file of `generation`: temp file, fsync, rename,
    /// fsync of the directory; on failure no file of it is left.
    fn write_generation_file(
        &self,
        generation: u64,
        applied_at: u64,
        state: &Value,
    ) -> Result<(), StoreError> {
        // Borrowed, not built with `json!`, which would copy the whole state first.
        #[derive(serde::Serialize)]
        struct Doc<'a> {
            generation: u64,
            applied_at_unix: u64,
            state: &'a Value,
        }
        let doc = Doc {
            generation,
            applied_at_unix: applied_at,
            state,
        };
        // Compact: half the bytes of pretty-printed JSON for a large state, and this is
        // the daemon's record, not a file for people (`polluxctl show config` is).
        let mut bytes = serde_json::to_vec(&doc).map_err(|e| StoreError::Io {
            op: "encode generation for",
            path: self.file(generation),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        })?;
        bytes.push(b'\n');

        let tmp = self.dir.join(file_name(generation, TMP_SUFFIX));
        let path = self.file(generation);
        let write = || -> Result<(), StoreError> {
            let mut file = private_fs::create_new(&tmp).map_err(io_err("create", &tmp))?;
            fault("write")
                .and_then(|()| file.write_all(&bytes))
                .map_err(io_err("write", &tmp))?;
            fault("fsync")
                .and_then(|()| file.sync_all())
                .map_err(io_err("fsync", &tmp))?;
            Ok(())
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        if let Err(source) = fault("rename").and_then(|()| fs::rename(&tmp, &path)) {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::Io {
                op: "rename temp file into place as",
                path,
                source,
            });
        }
        // A commit is all or nothing: when the directory cannot be made durable the
        // generation is taken back, so that the caller, which keeps running the old
        // generation, and the store (in memory, on disk, after a restart) agree on it. If
        // even the removal fails, the file is overwritten by the next commit of that
        // generation number, which is still free here.
        if let Err(e) = sync_dir(&self.dir) {
            let _ = fs::remove_file(&path);
            let _ = sync_dir(&self.dir);
            return Err(e);
        }
        Ok(())
    }

    /// The retained generations and the Unix time each was applied, newest first.
    /// Corrupt older generations are left out (see [`Store::get`]).
    pub fn history(&self) -> Vec<(u64, u64)> {
        self.index
            .iter()
            .rev()
            .filter_map(|(&g, e)| e.applied_at.map(|at| (g, at)))
            .collect()
    }

    /// The state of a retained generation (for rollback), read from its file and its
    /// journal; `Ok(None)` when that generation is not retained.
    pub fn get(&self, generation: u64) -> Result<Option<Value>, StoreError> {
        if let Some((current, state)) = &self.current {
            if *current == generation {
                return Ok(Some(state.clone()));
            }
        }
        let Some(entry) = self.index.get(&generation) else {
            return Ok(None);
        };
        let mut state = self.read(entry.base)?.state;
        if entry.base == generation {
            return Ok(Some(state));
        }
        let path = self.journal_file(entry.base);
        let corrupt = |reason: String| StoreError::Corrupt {
            path: path.clone(),
            reason,
        };
        let read = journal::read(&path).map_err(|e| corrupt(format!("cannot read it: {e}")))?;
        for r in &read.records {
            if r.generation > generation {
                break;
            }
            journal::make(&mut state, &r.changes)
                .map_err(|e| corrupt(format!("generation {}: {e}", r.generation)))?;
            if r.generation == generation {
                return Ok(Some(state));
            }
        }
        Err(corrupt(format!("generation {generation} is not in it")))
    }

    /// The file generation `generation` is (or would be) stored in.
    pub fn file(&self, generation: u64) -> PathBuf {
        self.dir.join(file_name(generation, SUFFIX))
    }

    /// The journal of generation file `base`.
    pub fn journal_file(&self, base: u64) -> PathBuf {
        self.dir.join(journal_name(base))
    }

    /// Reads and checks one generation file.
    fn read(&self, generation: u64) -> Result<Record, StoreError> {
        let path = self.file(generation);
        let corrupt = |reason: String| StoreError::Corrupt {
            path: path.clone(),
            reason,
        };
        let bytes = private_fs::read(&path).map_err(|e| corrupt(format!("cannot read it: {e}")))?;
        let doc: Value =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("not valid JSON: {e}")))?;
        let Value::Object(mut doc) = doc else {
            return Err(corrupt("not a JSON object".to_string()));
        };
        let inner = doc
            .get("generation")
            .and_then(Value::as_u64)
            .ok_or_else(|| corrupt("no unsigned integer \"generation\" field".to_string()))?;
        if inner != generation {
            return Err(corrupt(format!(
                "it holds generation {inner} but its name says {generation}"
            )));
        }
        let applied_at = doc
            .get("applied_at_unix")
            .and_then(Value::as_u64)
            .ok_or_else(|| corrupt("no unsigned integer \"applied_at_unix\" field".to_string()))?;
        let state = doc
            .remove("state")
            .ok_or_else(|| corrupt("no \"state\" field".to_string()))?;
        Ok(Record { applied_at, state })
    }

    fn forget_beyond_history(&mut self) {
        let excess = self.index.len().saturating_sub(self.history);
        let forgotten: Vec<u64> = self.index.keys().take(excess).copied().collect();
        for generation in forgotten {
            self.index.remove(&generation);
        }
    }

    /// Forgets the generations beyond the newest `history` and removes the files that
    /// hold none of the others (a generation file and its journal go together); failures
    /// are retried on the next commit.
    fn prune(&mut self) {
        self.forget_beyond_history();
        let needed: BTreeSet<u64> = self.index.values().map(|e| e.base).collect();
        let mut files: BTreeSet<u64> = self.journals.clone();
        if let Ok(entries) = fs::read_dir(&self.dir) {
            files.extend(
                entries
                    .filter_map(|e| e.ok())
                    .filter_map(|e| parse_name(e.file_name().to_str()?, SUFFIX)),
            );
        }
        let mut removed = false;
        for base in files.difference(&needed) {
            for (path, is_journal) in [(self.file(*base), false), (self.journal_file(*base), true)]
            {
                match fs::remove_file(&path) {
                    Ok(()) => removed = true,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(_) => continue,
                }
                if is_journal {
                    self.journals.remove(base);
                }
            }
        }
        if removed {
            // Not needed for correctness: a pruned file that reappears after a crash is
            // only an older generation, pruned again on the next commit.
            let _ = sync_dir(&self.dir);
        }
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn journal_name(base: u64) -> String {
    numbered(JOURNAL_PREFIX, base, JOURNAL_SUFFIX)
}

/// The base generation named by `journal-<20 digits>.log`.
fn parse_journal_name(name: &str) -> Option<u64> {
    parse_numbered(name, JOURNAL_PREFIX, JOURNAL_SUFFIX)
}

fn file_name(generation: u64, suffix: &str) -> String {
    numbered(PREFIX, generation, suffix)
}

/// The generation named by `gen-<20 digits><suffix>`, or `None` for any other name.
fn parse_name(name: &str, suffix: &str) -> Option<u64> {
    parse_numbered(name, PREFIX, suffix)
}

/// `<prefix><n, zero-padded to 20 digits><suffix>`: the names of the store's files.
fn numbered(prefix: &str, n: u64, suffix: &str) -> String {
    format!("{prefix}{n:0DIGITS$}{suffix}")
}

/// The number of a name [`numbered`] made with `prefix` and `suffix`, or `None` for any
/// other name.
fn parse_numbered(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if digits.len() != DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    fault("fsync state directory")
        .and_then(|()| File::open(dir))
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync state directory", dir))
}

#[cfg(test)]
thread_local! {
    /// The step of this thread's next commit that fails (`"write"`, `"fsync"`,
    /// `"rename"`, `"fsync state directory"`), for the tests of the failure paths.
    pub(crate) static FAIL_NEXT: std::cell::Cell<Option<&'static str>> =
        const { std::cell::Cell::new(None) };
}

#[cfg(test)]
thread_local! {
    /// A second step that fails, for failures of the clean-up after a failure.
    pub(crate) static FAIL_ALSO: std::cell::Cell<Option<&'static str>> =
        const { std::cell::Cell::new(None) };
}

/// An injected failure of `step` (tests only; always `Ok` in a build).
#[cfg(test)]
fn fault(step: &'static str) -> io::Result<()> {
    for cell in [&FAIL_NEXT, &FAIL_ALSO] {
        if cell.with(|f| f.get()) == Some(step) {
            cell.with(|f| f.set(None));
            return Err(io::Error::other(format!("injected failure of {step}")));
        }
    }
    Ok(())
}

#[cfg(not(test))]
#[inline(always)]
fn fault(_step: &'static str) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir = std::env::temp_dir()
                .join(format!("pollux-store-unit-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != LOCK_FILE)
            .collect();
        names.sort();
        names
    }

    /// Whichever step of a commit fails, the store is left as it was (in memory, on disk
    /// and for the next open), no temp file remains, and the same generation commits
    /// afterwards.
    #[test]
    fn a_failed_commit_changes_nothing_at_any_step() {
        for step in ["write", "fsync", "rename", "fsync state directory"] {
            let tmp = TempDir::new(&step.replace(' ', "-"));
            let mut store = Store::open(&tmp.0, 4).unwrap();
            store.commit(1, &serde_json::json!({"n": 1})).unwrap();
            let before = names(&tmp.0);

            FAIL_NEXT.with(|f| f.set(Some(step)));
            let err = store.commit(2, &serde_json::json!({"n": 2})).unwrap_err();
            assert!(
                err.to_string().contains("injected failure"),
                "{step}: {err}"
            );
            assert_eq!(store.current_generation(), Some(1), "{step}");
            assert_eq!(store.history().len(), 1, "{step}");
            assert_eq!(names(&tmp.0), before, "{step}: files left behind");
            drop(store);
            let mut store = Store::open(&tmp.0, 4).unwrap();
            assert_eq!(store.current_generation(), Some(1), "{step}: after reopen");

            store.commit(2, &serde_json::json!({"n": 2})).unwrap();
            assert_eq!(store.current_generation(), Some(2), "{step}");
        }
    }

    /// A journal append that fails at its write or its sync is cut back off: the store
    /// (in memory, on disk, after a reopen) holds the old generation, and the same
    /// generation appends afterwards. When even the cut fails, the next change is written
    /// as a whole generation file, which the refused record cannot precede on open.
    #[test]
    fn a_failed_append_changes_nothing() {
        let put = |v: u64| {
            serde_json::json!([{"op": "put", "collection": "ports", "key": "id",
                                "object": {"id": "a", "v": v}}])
        };
        let base = serde_json::json!({"ports": []});
        for step in ["journal write", "journal fsync"] {
            let tmp = TempDir::new(&step.replace(' ', "-"));
            let mut store = Store::open(&tmp.0, 4).unwrap();
            store.commit(1, &base).unwrap();
            store.append(2, &put(2)).unwrap();
            let journal = fs::read(store.journal_file(1)).unwrap();

            FAIL_NEXT.with(|f| f.set(Some(step)));
            let err = store.append(3, &put(3)).unwrap_err();
            assert!(
                err.to_string().contains("injected failure"),
                "{step}: {err}"
            );
            assert_eq!(store.current_generation(), Some(2), "{step}");
            assert_eq!(store.current().unwrap().1["ports"][0]["v"], 2, "{step}");
            assert_eq!(fs::read(store.journal_file(1)).unwrap(), journal, "{step}");
            store.append(3, &put(3)).unwrap();
            drop(store);
            let store = Store::open(&tmp.0, 4).unwrap();
            assert_eq!(store.current_generation(), Some(3), "{step}");
            assert_eq!(store.current().unwrap().1["ports"][0]["v"], 3, "{step}");
        }

        let tmp = TempDir::new("journal-cut");
        let mut store = Store::open(&tmp.0, 4).unwrap();
        store.commit(1, &base).unwrap();
        FAIL_NEXT.with(|f| f.set(Some("journal fsync")));
        FAIL_ALSO.with(|f| f.set(Some("journal truncate")));
        store.append(2, &put(2)).unwrap_err();
        assert_eq!(store.current_generation(), Some(1));
        store.append(2, &put(7)).unwrap();
        assert!(
            store.file(2).exists(),
            "written whole after an uncut failure"
        );
        store.append(3, &put(8)).unwrap();
        assert!(
            store.journal_file(2).exists(),
            "appends resume on the new file"
        );
        drop(store);
        let store = Store::open(&tmp.0, 4).unwrap();
        assert_eq!(store.current_generation(), Some(3));
        assert_eq!(store.get(2).unwrap().unwrap()["ports"][0]["v"], 7);
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(file_name(7, SUFFIX), "gen-00000000000000000007.json");
        assert_eq!(parse_name(&file_name(7, SUFFIX), SUFFIX), Some(7));
        assert_eq!(
            parse_name(&file_name(u64::MAX, SUFFIX), SUFFIX),
            Some(u64::MAX)
        );
        assert_eq!(parse_name(&file_name(7, TMP_SUFFIX), SUFFIX), None);
        assert_eq!(parse_name(&file_name(7, TMP_SUFFIX), TMP_SUFFIX), Some(7));
        assert_eq!(parse_name("gen-7.json", SUFFIX), None);
        assert_eq!(parse_name("gen-99999999999999999999.json", SUFFIX), None);
        assert_eq!(parse_name("gen-0000000000000000000+.json", SUFFIX), None);
        assert_eq!(journal_name(7), "journal-00000000000000000007.log");
        assert_eq!(parse_journal_name(&journal_name(7)), Some(7));
        assert_eq!(parse_journal_name(&file_name(7, SUFFIX)), None);
    }
}
