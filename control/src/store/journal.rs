//! The journal of one generation file: the changes made since it, one record per
//! generation, so that a change to one object costs a line appended and synced instead
//! of the whole state rewritten (OVSDB keeps its database the same way).
//!
//! `journal-<base>.log` holds, one JSON object per line,
//!
//! ```json
//! {"generation": 8, "applied_at_unix": 1790000000, "changes": [ ... ]}
//! ```
//!
//! for the generations after generation `base`, in order. A change is
//! `{"op": "put", "collection": "ports", "key": "id", "object": {...}}` (replace the object
//! of `collection` whose `key` field equals the object's, in place, or append it) or
//! `{"op": "delete", "collection": "ports", "key": "id", "id": "vm1"}` (remove it, keeping
//! the order of the others): the same edits as `crate::patch` makes on the typed state,
//! made here on its JSON form so that the store needs no model. A change may say where
//! its object is, as the engine found it, which spares a scan of the collection:
//! `"at": 17`, its index (checked against the object's key there; an object not there is
//! looked for by its key), or `"new": true` on a put of an object the collection does not
//! hold (appended; the test builds check that it holds none).
//!
//! A record is written with one `write` and made durable with `fdatasync` before the
//! change is acknowledged. A crash can therefore leave at most the last line torn (no
//! newline, or not JSON); it was never acknowledged and is cut off when the journal is
//! read. Any other bad line is corruption and is reported, never skipped.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde_json::Value;

/// One record of a journal.
#[derive(Debug)]
pub(super) struct JournalRecord {
    pub generation: u64,
    pub applied_at: u64,
    pub changes: Value,
}

/// A journal as read back.
#[derive(Debug, Default)]
pub(super) struct ReadJournal {
    /// The whole records, in file order.
    pub records: Vec<JournalRecord>,
    /// Bytes of the whole records; anything after them is a torn last line.
    pub good_len: u64,
    /// Bytes in the file.
    pub file_len: u64,
    /// The 1-based line and the reason of the first bad line that is not the last one.
    pub corrupt: Option<(usize, String)>,
}

/// Reads a journal file, stopping at the first bad line.
pub(super) fn read(path: &Path) -> io::Result<ReadJournal> {
    let bytes = pollux_services::private_fs::read(path)?;
    let mut out = ReadJournal {
        file_len: bytes.len() as u64,
        ..ReadJournal::default()
    };
    let mut at = 0usize;
    let mut line_no = 0usize;
    while at < bytes.len() {
        line_no += 1;
        let Some(nl) = bytes[at..].iter().position(|&b| b == b'\n') else {
            // No newline: the torn tail of a write that was never acknowledged.
            break;
        };
        let line = &bytes[at..at + nl];
        let is_last = at + nl + 1 == bytes.len();
        match parse_record(line) {
            Ok(record) => {
                out.records.push(record);
                at += nl + 1;
                out.good_len = at as u64;
            }
            // A last line that does not read is a torn write as well: `write` may have
            // put its newline on disk before the middle of the record.
            Err(_) if is_last => break,
            Err(reason) => {
                out.corrupt = Some((line_no, reason));
                break;
            }
        }
    }
    Ok(out)
}

fn parse_record(line: &[u8]) -> Result<JournalRecord, String> {
    let value: Value = serde_json::from_slice(line).map_err(|e| format!("not JSON: {e}"))?;
    let field = |name: &str| {
        value
            .get(name)
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("no unsigned integer {name:?} field"))
    };
    let generation = field("generation")?;
    let applied_at = field("applied_at_unix")?;
    let changes = value
        .get("changes")
        .filter(|c| c.is_array())
        .cloned()
        .ok_or("no \"changes\" array")?;
    Ok(JournalRecord {
        generation,
        applied_at,
        changes,
    })
}

/// The line of one record, newline included.
pub(super) fn encode(generation: u64, applied_at: u64, changes: &Value) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Line<'a> {
        generation: u64,
        applied_at_unix: u64,
        changes: &'a Value,
    }
    let mut bytes = serde_json::to_vec(&Line {
        generation,
        applied_at_unix: applied_at,
        changes,
    })
    .expect("a JSON value serialises");
    bytes.push(b'\n');
    bytes
}

/// Writes `bytes` at `offset` and syncs the data; on failure cuts the file back to
/// `offset`, so that what is on disk is what was acknowledged. The error says whether
/// the cut succeeded: when it did not, the file may hold a record that was refused.
pub(super) fn append(file: &File, offset: u64, bytes: &[u8]) -> Result<(), (io::Error, bool)> {
    let written = super::fault("journal write")
        .and_then(|()| file.write_all_at(bytes, offset))
        .and_then(|()| super::fault("journal fsync"))
        .and_then(|()| file.sync_data());
    written.map_err(|e| {
        let cut = super::fault("journal truncate")
            .and_then(|()| file.set_len(offset))
            .and_then(|()| file.sync_data())
            .is_ok();
        (e, cut)
    })
}

/// Why a change cannot be made to a state's JSON.
pub(super) type ChangeError = String;

/// How to take one change back.
enum Undo {
    Replaced {
        collection: String,
        index: usize,
        old: Value,
    },
    Appended {
        collection: String,
    },
    Removed {
        collection: String,
        index: usize,
        old: Value,
    },
}

fn text<'a>(change: &'a Value, field: &str) -> Result<&'a str, ChangeError> {
    change
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("a change has no string {field:?}"))
}

fn position(items: &[Value], key: &str, id: &str) -> Option<usize> {
    items
        .iter()
        .position(|o| o.get(key).and_then(Value::as_str) == Some(id))
}

/// [`position`], looked at first where the change's `at` says.
fn position_at(change: &Value, items: &[Value], key: &str, id: &str) -> Option<usize> {
    let hint = change.get("at").and_then(Value::as_u64);
    match hint.and_then(|at| items.get(usize::try_from(at).ok()?)) {
        Some(o) if o.get(key).and_then(Value::as_str) == Some(id) => hint.map(|at| at as usize),
        _ => position(items, key, id),
    }
}

fn make_one(state: &mut Value, change: &Value) -> Result<Undo, ChangeError> {
    let collection = text(change, "collection")?;
    let key = text(change, "key")?;
    let state = state
        .as_object_mut()
        .ok_or("the state is not a JSON object")?;
    let items = state
        .entry(collection)
        .or_insert_with(|| Value::Array(Vec::new()))
        .as_array_mut()
        .ok_or_else(|| format!("{collection} is not an array"))?;
    match text(change, "op")? {
        "put" => {
            let object = change.get("object").ok_or("a put has no \"object\"")?;
            let id = object
                .get(key)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("a put's object has no string {key:?}"))?;
            let new = change.get("new").and_then(Value::as_bool) == Some(true);
            debug_assert!(
                !new || position(items, key, id).is_none(),
                "a put of a new object the state already holds"
            );
            let found = if new {
                None
            } else {
                position_at(change, items, key, id)
            };
            match found {
                Some(index) => {
                    let old = std::mem::replace(&mut items[index], object.clone());
                    Ok(Undo::Replaced {
                        collection: collection.to_owned(),
                        index,
                        old,
                    })
                }
                None => {
                    items.push(object.clone());
                    Ok(Undo::Appended {
                        collection: collection.to_owned(),
                    })
                }
            }
        }
        "delete" => {
            let id = text(change, "id")?;
            let index = position_at(change, items, key, id)
                .ok_or_else(|| format!("delete of {id:?}, which {collection} does not hold"))?;
            Ok(Undo::Removed {
                collection: collection.to_owned(),
                index,
                old: items.remove(index),
            })
        }
        other => Err(format!("unknown change {other:?}")),
    }
}

fn undo(state: &mut Value, undo: Undo) {
    fn items<'a>(state: &'a mut Value, c: &str) -> Option<&'a mut Vec<Value>> {
        state.get_mut(c).and_then(Value::as_array_mut)
    }
    match undo {
        Undo::Replaced {
            collection,
            index,
            old,
        } => {
            if let Some(slot) = items(state, &collection).and_then(|i| i.get_mut(index)) {
                *slot = old;
            }
        }
        Undo::Appended { collection } => {
            if let Some(items) = items(state, &collection) {
                items.pop();
            }
        }
        Undo::Removed {
            collection,
            index,
            old,
        } => {
            if let Some(items) = items(state, &collection) {
                items.insert(index, old);
            }
        }
    }
}

/// What [`make`] did, to be taken back if the record cannot be written.
pub(super) struct Made(Vec<Undo>);

impl Made {
    /// Takes every change back, newest first.
    pub(super) fn undo(self, state: &mut Value) {
        for u in self.0.into_iter().rev() {
            undo(state, u);
        }
    }
}

/// Makes `changes` (a JSON array) to `state` in order; all or nothing.
pub(super) fn make(state: &mut Value, changes: &Value) -> Result<Made, ChangeError> {
    let list = changes.as_array().ok_or("the changes are not an array")?;
    let mut made = Made(Vec::with_capacity(list.len()));
    for (k, change) in list.iter().enumerate() {
        match make_one(state, change) {
            Ok(u) => made.0.push(u),
            Err(e) => {
                made.undo(state);
                return Err(format!("changes[{k}]: {e}"));
            }
        }
    }
    Ok(made)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn put(id: &str, v: u64) -> Value {
        json!({"op": "put", "collection": "ports", "key": "id", "object": {"id": id, "v": v}})
    }

    fn delete(id: &str) -> Value {
        json!({"op": "delete", "collection": "ports", "key": "id", "id": id})
    }

    #[test]
    fn changes_edit_in_place_append_remove_and_undo_exactly() {
        let before = json!({"ports": [{"id": "a", "v": 1}, {"id": "b", "v": 2}], "networks": []});
        let mut state = before.clone();
        let changes = json!([put("a", 9), put("c", 3), delete("b")]);
        let made = make(&mut state, &changes).unwrap();
        assert_eq!(
            state,
            json!({"ports": [{"id": "a", "v": 9}, {"id": "c", "v": 3}], "networks": []})
        );
        made.undo(&mut state);
        assert_eq!(state, before);
    }

    #[test]
    fn a_failing_change_leaves_the_state_as_it_was() {
        let before = json!({"ports": [{"id": "a", "v": 1}]});
        let mut state = before.clone();
        let err = make(&mut state, &json!([put("b", 2), delete("a"), delete("a")]))
            .err()
            .unwrap();
        assert!(err.starts_with("changes[2]"), "{err}");
        assert_eq!(state, before);
    }

    #[test]
    fn a_torn_last_line_is_cut_and_a_bad_middle_line_is_corruption() {
        let dir = std::env::temp_dir().join(format!("pollux-journal-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("j.log");
        let one = encode(2, 7, &json!([put("a", 1)]));
        let two = encode(3, 8, &json!([delete("a")]));

        let mut bytes = [one.clone(), two.clone()].concat();
        bytes.extend_from_slice(&two[..two.len() / 2]);
        std::fs::write(&path, &bytes).unwrap();
        let j = read(&path).unwrap();
        assert_eq!(j.records.len(), 2);
        assert_eq!(j.good_len, (one.len() + two.len()) as u64);
        assert!(j.corrupt.is_none());

        // A whole line that does not read, as the last line: torn as well.
        let bytes = [one.clone(), b"{\"generation\": 3,\n".to_vec()].concat();
        std::fs::write(&path, &bytes).unwrap();
        let j = read(&path).unwrap();
        assert_eq!((j.records.len(), j.corrupt.is_none()), (1, true));

        // The same in the middle is corruption.
        let bytes = [one, b"{\"generation\": 3,\n".to_vec(), two].concat();
        std::fs::write(&path, &bytes).unwrap();
        let j = read(&path).unwrap();
        assert_eq!(j.records.len(), 1);
        assert_eq!(j.corrupt.as_ref().map(|c| c.0), Some(2));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
