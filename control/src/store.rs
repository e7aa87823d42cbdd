//! The persisted, versioned desired state of `polluxd` (the role OVS's `conf.db` plays).
//!
//! The state directory holds one file per retained generation,
//! `gen-<20-digit zero-padded generation>.json`, each holding
//!
//! ```json
//! {"generation": 7, "applied_at_unix": 1790000000, "state": { ... }}   (compact, one line)
//! ```
//!
//! The state is kept as a [`serde_json::Value`] so this module does not depend on the
//! model; the caller passes the desired state serialised.
//!
//! A commit writes a temp file (`gen-<N>.json.tmp`) in the same directory, fsyncs it,
//! renames it into place and fsyncs the directory, in that order; only then does it prune
//! the generations beyond the newest `history`. Once [`Store::commit`] has returned `Ok`,
//! a crash at any later point leaves the new generation readable.
//!
//! Corruption is never papered over: if the newest generation file is unreadable, is not
//! JSON, or names a different generation inside than in its file name, [`Store::open`]
//! fails with [`StoreError::Corrupt`] naming the file, and the file is left untouched for
//! inspection (the store never falls back to an older generation or to empty). A corrupt
//! older generation does not prevent opening: it is left out of [`Store::history`] and
//! [`Store::get`] reports it as corrupt. Temp files left over by a crash mid-write are
//! removed on open; any other file in the directory is ignored.
//!
//! The directory and its files are private to polluxd (see [`pollux_services::private_fs`]): mode
//! 0700 and 0600, no symbolic link followed, a directory open to others tightened with a
//! warning.
//!
//! A state directory has a single owner: [`Store::open`] takes an exclusive `flock` on
//! `polluxd.lock` in it, held as long as the `Store` lives (the kernel drops it when the
//! process dies, so a crash leaves nothing to clean up), and a second opener gets
//! [`StoreError::Locked`] instead of two daemons overwriting each other's generations.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use pollux_services::private_fs;

/// How many generations are retained when the caller has no opinion.
pub const DEFAULT_HISTORY: usize = 16;

const PREFIX: &str = "gen-";
const SUFFIX: &str = ".json";
const TMP_SUFFIX: &str = ".json.tmp";
const DIGITS: usize = 20;
const LOCK_FILE: &str = "polluxd.lock";

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

/// Takes the directory's lock without waiting.
fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let file = private_fs::open_or_create(&path).map_err(io_err("open lock file", &path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(StoreError::Locked { path }),
        Err(fs::TryLockError::Error(source)) => Err(StoreError::Io {
            op: "lock",
            path,
            source,
        }),
    }
}

/// One generation as read back from its file.
#[derive(Debug)]
struct Record {
    applied_at: u64,
    state: Value,
}

/// The persisted desired state: the newest committed generation and a bounded history.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    history: usize,
    /// The newest committed generation and its state.
    current: Option<(u64, Value)>,
    /// Every generation file present: generation → its `applied_at_unix`, or `None` when
    /// the file (an older one) is corrupt.
    index: BTreeMap<u64, Option<u64>>,
    /// Holds the directory's lock for as long as the store lives.
    _lock: File,
}

impl Store {
    /// Opens the state directory `dir`, creating it (mode 0700) if missing, and keeps the
    /// newest `history` generations on each commit (`history` 0 is taken as 1: the current
    /// generation is always kept). See [`DEFAULT_HISTORY`].
    ///
    /// Fails with [`StoreError::Corrupt`] naming the file when the newest generation
    /// cannot be read; leftover temp files are removed.
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
        let mut removed_tmp = false;
        for entry in fs::read_dir(dir).map_err(io_err("list state directory", dir))? {
            let entry = entry.map_err(io_err("list state directory", dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(generation) = parse_name(name, SUFFIX) {
                generations.push(generation);
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
            _lock: lock,
        };
        if let Some((&newest, older)) = generations.split_last() {
            for &generation in older {
                let applied_at = store.read(generation).ok().map(|r| r.applied_at);
                store.index.insert(generation, applied_at);
            }
            let record = store.read(newest)?;
            store.index.insert(newest, Some(record.applied_at));
            store.current = Some((newest, record.state));
        }
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
        if let Some(current) = self.current_generation() {
            if generation <= current {
                return Err(StoreError::StaleGeneration {
                    generation,
                    current,
                });
            }
        }
        let applied_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
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
            state: &state,
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
        self.index.insert(generation, Some(applied_at));
        self.current = Some((generation, state));

        self.prune();
        Ok(())
    }

    /// The retained generations and the Unix time each was applied, newest first.
    /// Corrupt older generations are left out (see [`Store::get`]).
    pub fn history(&self) -> Vec<(u64, u64)> {
        self.index
            .iter()
            .rev()
            .filter_map(|(&g, at)| at.map(|at| (g, at)))
            .collect()
    }

    /// The state of a retained generation (for rollback), read from its file;
    /// `Ok(None)` when that generation is not retained.
    pub fn get(&self, generation: u64) -> Result<Option<Value>, StoreError> {
        if let Some((current, state)) = &self.current {
            if *current == generation {
                return Ok(Some(state.clone()));
            }
        }
        if !self.index.contains_key(&generation) {
            return Ok(None);
        }
        self.read(generation).map(|record| Some(record.state))
    }

    /// The file generation `generation` is (or would be) stored in.
    pub fn file(&self, generation: u64) -> PathBuf {
        self.dir.join(file_name(generation, SUFFIX))
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

    /// Removes the generation files beyond the newest `history`; failures are retried on
    /// the next commit.
    fn prune(&mut self) {
        let excess = self.index.len().saturating_sub(self.history);
        let victims: Vec<u64> = self.index.keys().take(excess).copied().collect();
        let mut removed = false;
        for generation in victims {
            match fs::remove_file(self.file(generation)) {
                Ok(()) => removed = true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(_) => continue,
            }
            self.index.remove(&generation);
        }
        if removed {
            // Not needed for correctness: a pruned file that reappears after a crash is
            // only an older generation, pruned again on the next commit.
            let _ = sync_dir(&self.dir);
        }
    }
}

fn file_name(generation: u64, suffix: &str) -> String {
    format!("{PREFIX}{generation:0DIGITS$}{suffix}")
}

/// The generation named by `gen-<20 digits><suffix>`, or `None` for any other name.
fn parse_name(name: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(suffix)?;
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

/// An injected failure of `step` (tests only; always `Ok` in a build).
#[cfg(test)]
fn fault(step: &'static str) -> io::Result<()> {
    if FAIL_NEXT.with(|f| f.get()) == Some(step) {
        FAIL_NEXT.with(|f| f.set(None));
        return Err(io::Error::other(format!("injected failure of {step}")));
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
    }
}
