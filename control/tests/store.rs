//! The persisted desired state: round trips, pruning, stale generations, reopening, crash
//! leftovers, corruption (named, never papered over), and a property test over random
//! sequences of commits and reopens.

use pollux_testkit::TempDir;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use pollux_control::store::{Store, StoreError, DEFAULT_HISTORY};
use proptest::prelude::*;
use serde_json::{json, Value};

fn gen_file(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("gen-{generation:020}.json"))
}

/// The directory's files but the store's lock file, which is always there.
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("list dir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .filter(|name| name != "polluxd.lock")
        .collect();
    names.sort();
    names
}

fn state(n: u64) -> Value {
    json!({"networks": [{"id": format!("net-{n}"), "mtu": 1500 + n}], "ports": []})
}

fn expect_corrupt(result: Result<Store, StoreError>, file: &Path) -> String {
    match result {
        Err(e @ StoreError::Corrupt { .. }) => {
            let StoreError::Corrupt { path, .. } = &e else {
                unreachable!()
            };
            assert_eq!(path, file);
            let message = e.to_string();
            assert!(
                message.contains(&file.display().to_string()),
                "message does not name the file: {message}"
            );
            message
        }
        Err(e) => panic!("expected Corrupt for {}, got {e}", file.display()),
        Ok(store) => panic!("expected Corrupt, opened at {:?}", store.current()),
    }
}

#[test]
fn empty_directory_is_created_0700_and_has_no_current() {
    let tmp = TempDir::new();
    let dir = tmp.join("state").join("nested");
    let store = Store::open(&dir, DEFAULT_HISTORY).expect("open");
    assert!(store.current().is_none());
    assert!(store.history().is_empty());
    assert_eq!(store.get(1).expect("get"), None);
    let mode = fs::metadata(&dir).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    assert!(files(&dir).is_empty());
}

#[test]
fn commit_current_history_get_round_trip() {
    let tmp = TempDir::new();
    let dir = tmp.join("state");
    let mut store = Store::open(&dir, DEFAULT_HISTORY).expect("open");
    store.commit(1, &state(1)).expect("commit 1");
    store.commit(2, &state(2)).expect("commit 2");
    store.commit(5, &state(5)).expect("commit 5");

    assert_eq!(store.current(), Some((5, &state(5))));
    let history = store.history();
    assert_eq!(
        history.iter().map(|(g, _)| *g).collect::<Vec<_>>(),
        [5, 2, 1]
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for (_, applied_at) in &history {
        assert!(*applied_at <= now && *applied_at + 600 > now);
    }
    for g in [1, 2, 5] {
        assert_eq!(store.get(g).expect("get"), Some(state(g)));
    }
    assert_eq!(store.get(3).expect("get"), None);
    assert_eq!(
        files(&dir),
        [
            "gen-00000000000000000001.json",
            "gen-00000000000000000002.json",
            "gen-00000000000000000005.json"
        ]
    );

    // The file format is the documented one.
    let doc: Value =
        serde_json::from_slice(&fs::read(gen_file(&dir, 5)).expect("read")).expect("json");
    assert_eq!(doc["generation"], json!(5));
    assert_eq!(doc["state"], state(5));
    assert_eq!(doc["applied_at_unix"], json!(history[0].1));
    let mode = fs::metadata(gen_file(&dir, 5))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn history_pruning_keeps_exactly_n() {
    let tmp = TempDir::new();
    let dir = tmp.join("state");
    let mut store = Store::open(&dir, 3).expect("open");
    for g in 1..=10 {
        store.commit(g * 10, &state(g)).expect("commit");
        let kept = usize::try_from(g.min(3)).unwrap();
        assert_eq!(store.history().len(), kept);
        assert_eq!(files(&dir).len(), kept);
    }
    assert_eq!(
        store.history().iter().map(|(g, _)| *g).collect::<Vec<_>>(),
        [100, 90, 80]
    );
    assert_eq!(store.get(70).expect("get"), None);
    assert_eq!(store.get(80).expect("get"), Some(state(8)));
    assert!(!gen_file(&dir, 70).exists());

    // Reopening with a smaller history lists that many; the files go on the next commit.
    drop(store);
    let mut store = Store::open(&dir, 1).expect("reopen");
    assert_eq!(store.history().len(), 1);
    assert_eq!(files(&dir).len(), 3);
    store.commit(101, &state(11)).expect("commit");
    assert_eq!(files(&dir), ["gen-00000000000000000101.json"]);
    assert_eq!(store.history().len(), 1);
}

#[test]
fn history_zero_still_keeps_the_current_generation() {
    let tmp = TempDir::new();
    let dir = tmp.join("state");
    let mut store = Store::open(&dir, 0).expect("open");
    store.commit(1, &state(1)).expect("commit");
    store.commit(2, &state(2)).expect("commit");
    assert_eq!(files(&dir), ["gen-00000000000000000002.json"]);
    drop(store);
    let store = Store::open(&dir, 0).expect("reopen");
    assert_eq!(store.current(), Some((2, &state(2))));
}

#[test]
fn stale_generation_is_refused() {
    let tmp = TempDir::new();
    let dir = tmp.join("state");
    let mut store = Store::open(&dir, DEFAULT_HISTORY).expect("open");
    store.commit(4, &state(4)).expect("commit");
    for stale in [4, 3, 0] {
        let err = store.commit(stale, &state(99)).expect_err("stale");
        assert!(
            matches!(
                err,
                StoreError::StaleGeneration { generation, current: 4 } if generation == stale
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("not newer"), "{err}");
    }
    assert_eq!(store.current(), Some((4, &state(4))));
    assert_eq!(files(&dir), ["gen-00000000000000000004.json"]);
    // Generation 0 is fine as the first one.
    let tmp2 = TempDir::new();
    let mut empty = Store::open(&tmp2.join("state"), DEFAULT_HISTORY).expect("open");
    empty
        .commit(0, &state(0))
        .expect("generation 0 into an empty store");
}

#[test]
fn reopen_after_commit_returns_the_same() {
    let tmp = TempDir::new();
    let dir = tmp.join("state");
    let mut store = Store::open(&dir, DEFAULT_HISTORY).expect("open");
    store.commit(7, &state(7)).expect("commit");
    store.commit(9, &state(9)).expect("commit");
    let history = store.history();
    drop(store);

    let store = Store::open(&dir, DEFAULT_HISTORY).expect("reopen");
    assert_eq!(store.current(), Some((9, &state(9))));
    assert_eq!(store.history(), history);
    assert_eq!(store.get(7).expect("get"), Some(state(7)));
    let mut store = store;
    assert!(matches!(
        store.commit(9, &state(9)),
        Err(StoreError::StaleGeneration { .. })
    ));
    store.commit(10, &state(10)).expect("commit after reopen");
}

#[test]
fn a_second_store_on_the_same_directory_is_refused_until_the_first_is_gone() {
    let tmp = TempDir::new();
    let dir = tmp.join("state");
    let mut first = Store::open(&dir, DEFAULT_HISTORY).expect("open");
    first.commit(1, &state(1)).expect("commit");
    // A temp file of a commit in flight must survive the refused open.
    let in_flight = dir.join("gen-00000000000000000002.json.tmp");
    fs::write(&in_flight, b"{").unwrap();

    let err = Store::open(&dir, DEFAULT_HISTORY).expect_err("a second owner");
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("polluxd.lock") && message.contains("another polluxd"),
        "{message}"
    );
    assert!(in_flight.exists(), "the refused open touched the directory");

    drop(first);
    // Another test of this process may be starting a command (mount, umount) right now:
    // between its fork and its exec, the child holds a copy of every descriptor, the
    // lock file's included (close-on-exec closes it only at the exec), so the lock can
    // outlive `first` by that moment. Retry for a bounded while.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let second = loop {
        match Store::open(&dir, DEFAULT_HISTORY) {
            Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => break other.expect("open once the first is gone"),
        }
    };
    assert_eq!(second.current(), Some((1, &state(1))));
}

#[test]
fn leftover_temp_file_is_removed_and_unknown_files_ignored() {
    let tmp = TempDir::new();
    let dir = tmp.join("state");
    let mut store = Store::open(&dir, DEFAULT_HISTORY).expect("open");
    store.commit(1, &state(1)).expect("commit");
    drop(store);

    // A crash mid-write of generation 2 (half a file), plus files that are not ours.
    let leftover = dir.join("gen-00000000000000000002.json.tmp");
    fs::write(&leftover, b"{\"generation\": 2, \"appl").unwrap();
    fs::write(dir.join("README"), b"hello").unwrap();
    fs::write(dir.join("gen-2.json"), b"not ours").unwrap();
    fs::write(dir.join("gen-00000000000000000003.json.bak"), b"{").unwrap();

    let mut store = Store::open(&dir, DEFAULT_HISTORY).expect("open");
    assert!(!leftover.exists(), "temp file left behind");
    assert_eq!(store.current(), Some((1, &state(1))));
    assert_eq!(store.history().len(), 1);
    store
        .commit(2, &state(2))
        .expect("commit over the crashed generation");
    assert_eq!(
        files(&dir),
        [
            "README",
            "gen-00000000000000000001.json",
            "gen-00000000000000000002.json",
            "gen-00000000000000000003.json.bak",
            "gen-2.json"
        ]
    );
    drop(store);
    let store = Store::open(&dir, DEFAULT_HISTORY).expect("reopen");
    assert_eq!(store.current(), Some((2, &state(2))));
}

#[test]
fn truncated_newest_file_is_corrupt_named_and_untouched() {
    let tmp = TempDir::new();
    let dir = tmp.join("state");
    let mut store = Store::open(&dir, DEFAULT_HISTORY).expect("open");
    store.commit(1, &state(1)).expect("commit");
    store.commit(2, &state(2)).expect("commit");
    drop(store);

    let newest = gen_file(&dir, 2);
    let full = fs::read(&newest).unwrap();
    let truncated = &full[..full.len() / 2];
    fs::write(&newest, truncated).unwrap();

    let message = expect_corrupt(Store::open(&dir, DEFAULT_HISTORY), &newest);
    assert!(message.contains("not valid JSON"), "{message}");
    // Still there, byte for byte, and opening again gives the same answer (no fallback).
    assert_eq!(fs::read(&newest).unwrap(), truncated);
    expect_corrupt(Store::open(&dir, DEFAULT_HISTORY), &newest);
    assert_eq!(fs::read(&newest).unwrap(), truncated);
    assert!(gen_file(&dir, 1).exists());

    // Empty is corrupt too, and so is a file that is JSON but not a generation.
    fs::write(&newest, b"").unwrap();
    expect_corrupt(Store::open(&dir, DEFAULT_HISTORY), &newest);
    fs::write(&newest, b"{\"generation\": 2, \"applied_at_unix\": 5}").unwrap();
    let message = expect_corrupt(Store::open(&dir, DEFAULT_HISTORY), &newest);
    assert!(message.contains("\"state\""), "{message}");
    fs::write(&newest, b"[1, 2]").unwrap();
    expect_corrupt(Store::open(&dir, DEFAULT_HISTORY), &newest);
}

#[test]
fn unreadable_newest_file_is_corrupt() {
    let tmp = TempDir::new();
    let dir = tmp.join("state");
    let mut store = Store::open(&dir, DEFAULT_HISTORY).expect("open");
    store.commit(1, &state(1)).expect("commit");
    drop(store);
    // A directory under a generation's name cannot be read as a file (whatever our uid).
    let newest = gen_file(&dir, 2);
    fs::create_dir(&newest).unwrap();
    let message = expect_corrupt(Store::open(&dir, DEFAULT_HISTORY), &newest);
    assert!(message.contains("cannot read"), "{message}");
    assert!(newest.is_dir());
}

#[test]
fn inner_generation_mismatch_is_corrupt() {
    let tmp = TempDir::new();
    let dir = tmp.join("state");
    let mut store = Store::open(&dir, DEFAULT_HISTORY).expect("open");
    store.commit(3, &state(3)).expect("commit");
    drop(store);

    // A copy of generation 3 under generation 4's name.
    let bytes = fs::read(gen_file(&dir, 3)).unwrap();
    let newest = gen_file(&dir, 4);
    fs::write(&newest, &bytes).unwrap();
    let message = expect_corrupt(Store::open(&dir, DEFAULT_HISTORY), &newest);
    assert!(message.contains("generation 3"), "{message}");
    assert_eq!(fs::read(&newest).unwrap(), bytes);
}

#[test]
fn corrupt_older_generation_does_not_block_open_but_get_names_it() {
    let tmp = TempDir::new();
    let dir = tmp.join("state");
    let mut store = Store::open(&dir, DEFAULT_HISTORY).expect("open");
    for g in 1..=3 {
        store.commit(g, &state(g)).expect("commit");
    }
    drop(store);
    let older = gen_file(&dir, 2);
    fs::write(&older, b"{\"generation\": 2,").unwrap();

    let store = Store::open(&dir, DEFAULT_HISTORY).expect("open");
    assert_eq!(store.current(), Some((3, &state(3))));
    assert_eq!(
        store.history().iter().map(|(g, _)| *g).collect::<Vec<_>>(),
        [3, 1]
    );
    match store.get(2) {
        Err(StoreError::Corrupt { path, .. }) => assert_eq!(path, older),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(store.get(1).expect("get"), Some(state(1)));
    assert_eq!(fs::read(&older).unwrap(), b"{\"generation\": 2,");
}

#[test]
fn errors_are_fit_for_a_log() {
    let tmp = TempDir::new();
    // The "directory" is a file.
    let file = tmp.join("plain-file");
    fs::write(&file, b"x").unwrap();
    let err = Store::open(&file, DEFAULT_HISTORY).expect_err("not a directory");
    let message = err.to_string();
    assert!(message.starts_with("state store: "), "{message}");
    assert!(message.contains(&file.display().to_string()), "{message}");
    assert!(std::error::Error::source(&err).is_some());
}

#[derive(Clone, Debug)]
enum Op {
    /// Commit `current + step` (step 0 is a stale attempt) with this state.
    Commit {
        step: u64,
        state: Value,
    },
    Reopen,
}

fn arb_state() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        "[a-z0-9 .:/\"\\\\\u{e9}]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u64..4, arb_state()).prop_map(|(step, state)| Op::Commit { step, state }),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn commits_and_reopens_return_the_last_commit(
        history in 1usize..5,
        ops in prop::collection::vec(arb_op(), 1..12),
    ) {
        let tmp = TempDir::new();
        let dir = tmp.join("state");
        let mut store = Store::open(&dir, history).expect("open");
        // Model: every committed generation with its state, oldest first.
        let mut committed: Vec<(u64, Value)> = Vec::new();
        for op in ops {
            match op {
                Op::Commit { step, state } => {
                    let current = committed.last().map(|(g, _)| *g);
                    let generation = current.map_or(step, |c| c + step);
                    let result = store.commit(generation, &state);
                    if current.is_some() && step == 0 {
                        let stale = matches!(result, Err(StoreError::StaleGeneration { .. }));
                        prop_assert!(stale);
                    } else {
                        prop_assert!(result.is_ok(), "{:?}", result);
                        committed.push((generation, state));
                    }
                }
                Op::Reopen => {
                    drop(store);
                    store = Store::open(&dir, history).expect("reopen");
                }
            }
            let expected = committed.last().map(|(g, v)| (*g, v));
            prop_assert_eq!(store.current(), expected);
            let retained: Vec<u64> =
                committed.iter().rev().take(history).map(|(g, _)| *g).collect();
            let listed: Vec<u64> = store.history().iter().map(|(g, _)| *g).collect();
            prop_assert_eq!(listed, retained.clone());
            for (g, v) in committed.iter().rev().take(history) {
                prop_assert_eq!(store.get(*g).expect("get"), Some(v.clone()));
            }
            prop_assert_eq!(files(&dir).len(), retained.len());
        }
    }
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted and removed on drop.
struct SmallTmpfs(TempDir);

impl SmallTmpfs {
    fn mount(size: &str) -> SmallTmpfs {
        assert!(
            euid_is_root(),
            "this test mounts a tmpfs to fill it up: run it as root (CI does)"
        );
        let dir = TempDir::new();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("pollux-test")
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mount tmpfs on {}", dir.display());
        SmallTmpfs(dir)
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

fn euid_is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A full disk fails the commit cleanly: the store keeps the old generation (also after a
/// reopen), no temp file is left, and once there is room the same generation commits.
#[test]
#[ignore = "needs root: mounts a tmpfs (run with --include-ignored as root)"]
fn a_full_disk_fails_the_commit_without_leaving_anything_behind() {
    let fs = SmallTmpfs::mount("64k");
    let dir = fs.0.join("state");
    let mut store = Store::open(&dir, DEFAULT_HISTORY).expect("open");
    store.commit(1, &state(1)).expect("a small commit fits");
    let before = files(&dir);

    let big = json!({"networks": [], "blob": "x".repeat(256 * 1024)});
    let err = store.commit(2, &big).expect_err("the disk is full");
    let message = err.to_string();
    assert!(
        message.contains("No space left on device"),
        "not a full disk: {message}"
    );
    assert_eq!(store.current_generation(), Some(1));
    assert_eq!(
        files(&dir),
        before,
        "a temp file or the refused generation is left"
    );
    drop(store);

    let mut store = Store::open(&dir, DEFAULT_HISTORY).expect("reopen");
    assert_eq!(store.current_generation(), Some(1));
    store.commit(2, &state(2)).expect("a later commit succeeds");
    assert_eq!(store.current(), Some((2, &state(2))));
}

/// The store's files are private: a loose directory is tightened to 0700, generation and
/// lock files are 0600, and a symbolic link planted at the temp file's name is replaced,
/// not followed (the file it points at is untouched).
#[test]
fn files_are_private_and_links_are_not_followed() {
    let tmp = TempDir::new();
    let dir = tmp.join("state");
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    let mut store = Store::open(&dir, DEFAULT_HISTORY).expect("open");
    let mode = |p: &Path| fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "the loose directory was not tightened");

    let victim = tmp.join("victim");
    fs::write(&victim, b"precious").unwrap();
    let planted = dir.join("gen-00000000000000000001.json.tmp");
    std::os::unix::fs::symlink(&victim, &planted).unwrap();
    store
        .commit(1, &state(1))
        .expect("commit past a planted link");
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    assert_eq!(mode(&gen_file(&dir, 1)), 0o600);
    assert_eq!(mode(&dir.join("polluxd.lock")), 0o600);
    drop(store);

    // A generation file that is a link is not read through.
    fs::remove_file(gen_file(&dir, 1)).unwrap();
    std::os::unix::fs::symlink(&victim, gen_file(&dir, 1)).unwrap();
    let e = Store::open(&dir, DEFAULT_HISTORY).expect_err("a linked generation file");
    assert!(e.to_string().contains("cannot read it"), "{e}");
}
