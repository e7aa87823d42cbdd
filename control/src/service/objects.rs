//! The object methods: `<collection>.put {<object>: {...}}`, `<collection>.delete {id}` and
//! `config.patch {changes}`, each with `dry_run` and `expect_generation` as
//! `config.apply` has them, and the same reply.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{outcome_json, rpc_error};
use crate::engine::{ApplyOptions, Engine};
use crate::patch::{Collection, RawChange};
use crate::rpc::{MethodInfo, RpcError};

/// What an object method does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectMethod {
    /// `<collection>.put`.
    Put(Collection),
    /// `<collection>.delete`.
    Delete(Collection),
}

/// The object method named `method`, if it is one.
pub fn object_method(method: &str) -> Option<ObjectMethod> {
    let (collection, verb) = method.split_once('.')?;
    let collection = Collection::ALL
        .into_iter()
        .find(|c| c.name() == collection)?;
    match verb {
        "put" => Some(ObjectMethod::Put(collection)),
        "delete" => Some(ObjectMethod::Delete(collection)),
        _ => None,
    }
}

/// The usage lines of the object methods, for `rpc.list`.
pub fn methods() -> Vec<MethodInfo> {
    let mut list = vec![MethodInfo::new(
        "config.patch",
        "{changes: [{op: \"put\", collection, object} | {op: \"delete\", collection, id}], \
         dry_run?: bool, expect_generation?: u64} -> as config.apply: make the changes in \
         order, atomically (-32007 for a delete of an unknown id)",
    )];
    for c in Collection::ALL {
        list.push(MethodInfo::new(
            format!("{}.put", c.name()),
            format!(
                "{{{}: {{...}}, dry_run?: bool, expect_generation?: u64}} -> as config.apply: \
                 create or replace the object with this {}",
                c.singular(),
                c.key_field()
            ),
        ));
        list.push(MethodInfo::new(
            format!("{}.delete", c.name()),
            format!(
                "{{id: string, dry_run?: bool, expect_generation?: u64}} -> as config.apply: \
                 remove the object with this {} (-32007 if there is none)",
                c.key_field()
            ),
        ));
    }
    list
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommitOptions {
    #[serde(default)]
    dry_run: bool,
    expect_generation: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteParams {
    id: String,
    #[serde(default)]
    dry_run: bool,
    expect_generation: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchParams {
    changes: Vec<ChangeParams>,
    #[serde(default)]
    dry_run: bool,
    expect_generation: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, tag = "op", rename_all = "lowercase")]
enum ChangeParams {
    Put { collection: String, object: Value },
    Delete { collection: String, id: String },
}

fn collection(name: &str) -> Result<Collection, RpcError> {
    Collection::ALL
        .into_iter()
        .find(|c| c.name() == name)
        .ok_or_else(|| {
            let names: Vec<_> = Collection::ALL.iter().map(|c| c.name()).collect();
            RpcError::invalid_params(format!(
                "unknown collection {name:?}, expected one of {names:?}"
            ))
        })
}

fn object_map(params: Option<Value>) -> Result<Map<String, Value>, RpcError> {
    match params {
        None => Ok(Map::new()),
        Some(Value::Object(map)) => Ok(map),
        Some(_) => Err(RpcError::invalid_params("params must be an object")),
    }
}

/// Calls object method `method` (`config.patch` or one [`object_method`] names).
pub fn call(e: &mut Engine, method: &str, params: Option<Value>) -> Result<Value, RpcError> {
    let (changes, dry_run, expect_generation) = match object_method(method) {
        Some(ObjectMethod::Put(c)) => {
            let mut map = object_map(params)?;
            let object = map.remove(c.singular()).ok_or_else(|| {
                RpcError::invalid_params(format!("missing field `{}`", c.singular()))
            })?;
            if !object.is_object() {
                return Err(RpcError::invalid_params(format!(
                    "`{}` must be an object",
                    c.singular()
                )));
            }
            let o: CommitOptions = serde_json::from_value(Value::Object(map))
                .map_err(|e| RpcError::invalid_params(e.to_string()))?;
            let change = RawChange::Put {
                collection: c,
                object,
            };
            (vec![change], o.dry_run, o.expect_generation)
        }
        Some(ObjectMethod::Delete(c)) => {
            let p: DeleteParams = super::parse(params)?;
            let change = RawChange::Delete {
                collection: c,
                id: p.id,
            };
            (vec![change], p.dry_run, p.expect_generation)
        }
        None => {
            let p: PatchParams = super::parse(params)?;
            let mut changes = Vec::with_capacity(p.changes.len());
            for (k, change) in p.changes.into_iter().enumerate() {
                changes.push(match change {
                    ChangeParams::Put {
                        collection: c,
                        object,
                    } => {
                        if !object.is_object() {
                            return Err(RpcError::invalid_params(format!(
                                "changes[{k}].object must be an object"
                            )));
                        }
                        RawChange::Put {
                            collection: collection(&c)?,
                            object,
                        }
                    }
                    ChangeParams::Delete { collection: c, id } => RawChange::Delete {
                        collection: collection(&c)?,
                        id,
                    },
                });
            }
            (changes, p.dry_run, p.expect_generation)
        }
    };
    let options = ApplyOptions {
        dry_run,
        expect_generation,
    };
    let outcome = e.patch_raw(changes, options).map_err(rpc_error)?;
    Ok(outcome_json(&outcome, dry_run))
}
