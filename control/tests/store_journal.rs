//! The store's journal: changes appended as records, replayed on open, folded by
//! compaction, pruned with the history, a torn last line cut, a bad one reported; and a
//! property test over random sequences of whole commits, appends, compactions, torn
//! writes and reopens against a model.

use pollux_testkit::TempDir;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pollux_control::store::{Store, StoreError, COMPACT_AFTER_RECORDS, COMPACT_WHEN_QUIET_FOR};
use proptest::prelude::*;
use serde_json::{json, Value};

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("list dir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .filter(|name| name != "polluxd.lock")
        .collect();
    names.sort();
    names
}

fn journal_file(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("journal-{base:020}.log"))
}

fn put(id: &str, v: u64) -> Value {
    json!({"op": "put", "collection": "ports", "key": "id", "object": {"id": id, "v": v}})
}

fn delete(id: &str) -> Value {
    json!({"op": "delete", "collection": "ports", "key": "id", "id": id})
}

fn base_state() -> Value {
    json!({"networks": [{"id": "n"}], "ports": [{"id": "a", "v": 0}]})
}

#[test]
fn appends_are_journal_lines_replayed_on_open() {
    let tmp = TempDir::new();
    let dir = tmp.join("state");
    let mut store = Store::open(&dir, 16).expect("open");
    assert!(!store.can_append(), "an empty store has nothing to change");
    store.commit(1, &base_state()).expect("commit");
    store.append(2, &json!([put("b", 1)])).expect("append 2");
    store
        .append(3, &json!([put("a", 5), delete("b")]))
        .expect("append 3");
    let expected = json!({"networks": [{"id": "n"}], "ports": [{"id": "a", "v": 5}]});
    assert_eq!(store.current(), Some((3, &expected)));
    assert_eq!(store.journal_len(), 2);
    assert_eq!(
        files(&dir),
        [
            "gen-00000000000000000001.json",
            "journal-00000000000000000001.log"
        ]
    );
    let text = fs::read_to_string(journal_file(&dir, 1)).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    let history = store.history();
    drop(store);

    let store = Store::open(&dir, 16).expect("reopen");
    assert_eq!(store.current(), Some((3, &expected)));
    assert_eq!(store.history(), history);
    assert_eq!(
        store.get(2).unwrap(),
        Some(
            json!({"networks": [{"id": "n"}], "ports": [{"id": "a", "v": 0}, {"id": "b", "v": 1}]})
        )
    );
    assert_eq!(store.get(1).unwrap(), Some(base_state()));
}

#[test]
fn changes_that_do_not_apply_are_refused_and_change_nothing() {
    let tmp = TempDir::new();
    let dir = tmp.join("state");
    let mut store = Store::open(&dir, 16).expect("open");
    store.commit(1, &base_state()).expect("commit");
    let err = store
        .append(2, &json!([put("b", 1), delete("zz")]))
        .expect_err("unknown id");
    assert!(err.to_string().contains("zz"), "{err}");
    assert_eq!(store.current(), Some((1, &base_state())));
    assert!(!journal_file(&dir, 1).exists());
    assert!(matches!(
        store.append(1, &json!([])),
        Err(StoreError::StaleGeneration { .. })
    ));
}

#[test]
fn compaction_folds_the_journal_and_pruning_takes_it_with_its_history() {
    let tmp = TempDir::new();
    let dir = tmp.join("state");
    let mut store = Store::open(&dir, 3).expect("open");
    store.commit(1, &base_state()).expect("commit");
    for g in 2..=4 {
        store.append(g, &json!([put("a", g)])).expect("append");
    }
    assert!(
        !store.compaction_due(Instant::now()),
        "a young, short journal"
    );
    assert!(store.compaction_due(Instant::now() + COMPACT_WHEN_QUIET_FOR + Duration::from_secs(1)));
    store.compact().expect("compact");
    assert_eq!(store.journal_len(), 0);
    assert!(!store.compaction_due(Instant::now() + COMPACT_WHEN_QUIET_FOR * 2));
    // Generations 2..4 are retained (history 3): 2 and 3 are still read from journal 1.
    assert_eq!(
        files(&dir),
        [
            "gen-00000000000000000001.json",
            "gen-00000000000000000004.json",
            "journal-00000000000000000001.log"
        ]
    );
    assert_eq!(store.get(2).unwrap().unwrap()["ports"][0]["v"], json!(2));
    // Two more generations push 2 and 3 out of the history: the old file and its
    // journal go.
    store.append(5, &json!([put("a", 5)])).expect("append");
    store.append(6, &json!([put("a", 6)])).expect("append");
    assert_eq!(
        files(&dir),
        [
            "gen-00000000000000000004.json",
            "journal-00000000000000000004.log"
        ]
    );
    assert_eq!(
        store.history().iter().map(|(g, _)| *g).collect::<Vec<_>>(),
        [6, 5, 4]
    );
    drop(store);
    let store = Store::open(&dir, 3).expect("reopen");
    assert_eq!(store.current().unwrap().1["ports"][0]["v"], json!(6));
    // A journal found on open counts as quiet.
    assert!(store.compaction_due(Instant::now()));
}

#[test]
fn a_long_journal_is_due_for_compaction_at_once() {
    let tmp = TempDir::new();
    let dir = tmp.join("state");
    let mut store = Store::open(&dir, 4).expect("open");
    store.commit(1, &base_state()).expect("commit");
    for g in 2..=(COMPACT_AFTER_RECORDS as u64 + 1) {
        store.append(g, &json!([put("a", g)])).expect("append");
    }
    assert!(store.compaction_due(Instant::now()));
}

#[test]
fn a_torn_last_line_is_cut_on_open_and_a_bad_middle_line_is_corruption() {
    let tmp = TempDir::new();
    let dir = tmp.join("state");
    let mut store = Store::open(&dir, 16).expect("open");
    store.commit(1, &base_state()).expect("commit");
    store.append(2, &json!([put("b", 2)])).expect("append");
    drop(store);
    let path = journal_file(&dir, 1);
    let good = fs::read(&path).unwrap();
    let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(br#"{"generation": 3, "applied_at_unix": 1, "chan"#)
        .unwrap();
    drop(f);

    let mut store = Store::open(&dir, 16).expect("a torn tail is not corruption");
    assert_eq!(store.current_generation(), Some(2));
    assert_eq!(fs::read(&path).unwrap(), good, "the torn tail was cut");
    store
        .append(3, &json!([put("c", 3)]))
        .expect("append after the cut");
    drop(store);
    let store = Store::open(&dir, 16).expect("reopen");
    assert_eq!(store.current_generation(), Some(3));
    drop(store);

    // A bad line before the last: reported, the file left alone.
    let text = fs::read_to_string(&path).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.insert(1, "{not json");
    let bad = lines.join("\n") + "\n";
    fs::write(&path, &bad).unwrap();
    match Store::open(&dir, 16) {
        Err(e @ StoreError::Corrupt { .. }) => {
            let message = e.to_string();
            assert!(
                message.contains("journal-00000000000000000001.log"),
                "{message}"
            );
            assert!(message.contains("line 2"), "{message}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(fs::read_to_string(&path).unwrap(), bad);
}

#[test]
fn a_gap_in_the_journal_is_corruption() {
    let tmp = TempDir::new();
    let dir = tmp.join("state");
    let mut store = Store::open(&dir, 16).expect("open");
    store.commit(1, &base_state()).expect("commit");
    store.append(2, &json!([put("b", 2)])).expect("append");
    drop(store);
    let path = journal_file(&dir, 1);
    let text = fs::read_to_string(&path)
        .unwrap()
        .replace("\"generation\":2", "\"generation\":3");
    fs::write(&path, text).unwrap();
    let e = Store::open(&dir, 16).expect_err("a gap");
    assert!(e.to_string().contains("follows generation 1"), "{e}");
}

#[derive(Clone, Debug)]
enum Op {
    /// A whole state (ports `0..n` with value `v`) as the next generation.
    Commit {
        n: u8,
        v: u64,
    },
    /// Changes to ports by small ids: put (`Some(v)`) or delete (`None`).
    Append(Vec<(u8, Option<u64>)>),
    Compact,
    /// A record half written by a crash before it was acknowledged, then a reopen.
    TornAppend,
    Reopen,
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0u8..4, 0u64..100).prop_map(|(n, v)| Op::Commit { n, v }),
        5 => prop::collection::vec((0u8..6, prop::option::of(0u64..100)), 1..4).prop_map(Op::Append),
        1 => Just(Op::Compact),
        1 => Just(Op::TornAppend),
        1 => Just(Op::Reopen),
    ]
}

fn whole(n: u8, v: u64) -> Value {
    let ports: Vec<Value> = (0..n)
        .map(|i| json!({"id": format!("p{i}"), "v": v}))
        .collect();
    json!({"networks": [], "ports": ports})
}

/// Makes the changes of `op` to `state` as the store must: `None` when a delete names a
/// port the state (at that point) does not hold.
fn model_changes(state: &Value, changes: &[(u8, Option<u64>)]) -> Option<(Value, Value)> {
    let mut next = state.clone();
    let mut records = Vec::new();
    for (id, v) in changes {
        let id = format!("p{id}");
        let ports = next["ports"].as_array_mut().unwrap();
        let at = ports.iter().position(|p| p["id"] == json!(id));
        match (v, at) {
            (Some(v), Some(i)) => ports[i] = json!({"id": id, "v": v}),
            (Some(v), None) => ports.push(json!({"id": id, "v": v})),
            (None, Some(i)) => {
                ports.remove(i);
            }
            (None, None) => return None,
        }
        records.push(match v {
            Some(v) => put(&id, *v),
            None => delete(&id),
        });
    }
    Some((next, Value::Array(records)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_sequence_reads_back_as_the_model(
        history in 1usize..5,
        ops in prop::collection::vec(arb_op(), 1..16),
    ) {
        let tmp = TempDir::new();
        let dir = tmp.join("state");
        let mut store = Store::open(&dir, history).expect("open");
        let mut committed: Vec<(u64, Value)> = Vec::new();
        for op in ops {
            let next = committed.last().map_or(1, |(g, _)| g + 1);
            match op {
                Op::Commit { n, v } => {
                    let state = whole(n, v);
                    store.commit(next, &state).expect("commit");
                    committed.push((next, state));
                }
                Op::Append(changes) => {
                    let Some((_, state)) = committed.last() else {
                        prop_assert!(!store.can_append());
                        continue;
                    };
                    match model_changes(state, &changes) {
                        Some((after, records)) => {
                            store.append(next, &records).expect("append");
                            committed.push((next, after));
                        }
                        None => {
                            // A delete of a port that is not there: refused, nothing changes.
                            let records: Vec<Value> = changes
                                .iter()
                                .map(|(id, v)| match v {
                                    Some(v) => put(&format!("p{id}"), *v),
                                    None => delete(&format!("p{id}")),
                                })
                                .collect();
                            prop_assert!(store.append(next, &Value::Array(records)).is_err());
                        }
                    }
                }
                Op::Compact => store.compact().expect("compact"),
                Op::TornAppend => {
                    if let Some(&(g, _)) = committed.last() {
                        drop(store);
                        // The newest journal, or that of the newest generation file.
                        let base = (1..=g).rev().find(|b| dir.join(format!("gen-{b:020}.json")).exists()).unwrap();
                        let mut f = fs::OpenOptions::new().create(true).append(true)
                            .open(journal_file(&dir, base)).unwrap();
                        f.write_all(format!("{{\"generation\":{},\"appl", g + 1).as_bytes()).unwrap();
                        drop(f);
                        store = Store::open(&dir, history).expect("reopen after a torn append");
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
            prop_assert_eq!(listed, retained);
            for (g, v) in committed.iter().rev().take(history) {
                prop_assert_eq!(store.get(*g).expect("get"), Some(v.clone()));
            }
            // Files: generation files and journals only, no more of them than the history
            // needs (each retained generation needs at most its file and its journal).
            let names = files(&dir);
            prop_assert!(names.iter().all(|n| n.starts_with("gen-") || n.starts_with("journal-")), "{:?}", names);
            prop_assert!(names.len() <= 2 * history.min(committed.len()), "{:?}", names);
        }
    }
}
