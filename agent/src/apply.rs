//! Applying etcd's objects to polluxd through its control socket: a whole state at a
//! resynchronisation, one object method per change afterwards, each with
//! `expect_generation` so that a change made behind the agent's back (another client on
//! the socket, a rollback) is noticed and repaired by a resynchronisation.

use std::collections::BTreeSet;
use std::path::PathBuf;

use pollux_control::client::{CallError, Client};
use serde_json::{json, Value};

use crate::keys::{self, ObjectKey};
use crate::log;

/// Invalid configuration, not supported, ports that could not be bound: polluxd refused
/// the object itself, so resynchronising would not help.
const REFUSALS: [i64; 3] = [-32001, -32006, -32003];
/// `expect_generation` was stale.
const GENERATION_MISMATCH: i64 = -32002;
/// A delete of an object polluxd does not hold.
const UNKNOWN_OBJECT: i64 = -32007;
/// Most rounds of leaving out refused objects at a resynchronisation.
const MAX_RESYNC_ROUNDS: usize = 16;

/// The agent's side of the socket and the generation it last saw.
#[derive(Debug)]
pub struct Applier {
    socket: PathBuf,
    generation: Option<u64>,
    /// The ports polluxd holds from etcd, as far as the agent's calls tell: what it
    /// reports as ACTIVE.
    ports: BTreeSet<String>,
}

impl Applier {
    pub fn new(socket: PathBuf) -> Applier {
        Applier {
            socket,
            generation: None,
            ports: BTreeSet::new(),
        }
    }

    /// The ports polluxd holds from etcd.
    pub fn ports(&self) -> &BTreeSet<String> {
        &self.ports
    }

    fn held(&mut self, key: &ObjectKey, held: bool) {
        if key.collection == "ports" {
            if held {
                self.ports.insert(key.id.clone());
            } else {
                self.ports.remove(&key.id);
            }
        }
    }

    fn call(&mut self, method: &str, params: Value) -> Result<Value, CallError> {
        let mut client = Client::connect(&self.socket)?;
        let result = client.call(method, params)?;
        if let Some(g) = result.get("generation").and_then(Value::as_u64) {
            self.generation = Some(g);
        }
        Ok(result)
    }

    /// Applies exactly `objects` for every collection Neutron owns, keeping polluxd's
    /// own settings (uplinks, limits). An object polluxd refuses is logged and left out,
    /// and the rest applied. Err: polluxd is unreachable or the state could not be
    /// applied at all.
    pub fn resync(&mut self, objects: &[(ObjectKey, Value)]) -> Result<(), String> {
        let mut objects = objects.to_vec();
        for _ in 0..MAX_RESYNC_ROUNDS {
            let current = self
                .call("config.get", json!({}))
                .map_err(|e| format!("config.get: {e}"))?;
            let generation = current["generation"].as_u64();
            let state = keys::merge_state(&current["state"], &objects);
            let mut params = json!({ "state": state });
            if let Some(g) = generation {
                params["expect_generation"] = json!(g);
            }
            match self.call("config.apply", params) {
                Ok(r) => {
                    log(format!(
                        "applied the whole state: generation {} (changed: {})",
                        r["generation"], r["changed"]
                    ));
                    self.ports = objects
                        .iter()
                        .filter(|(k, _)| k.collection == "ports")
                        .map(|(k, _)| k.id.clone())
                        .collect();
                    return Ok(());
                }
                Err(CallError::Rpc { code, .. }) if code == GENERATION_MISMATCH => continue,
                Err(CallError::Rpc {
                    code,
                    message,
                    data,
                }) if REFUSALS.contains(&code) => {
                    let data = data.unwrap_or(Value::Null);
                    let refused = keys::refused_items(&state, &data);
                    if refused.is_empty() {
                        return Err(format!("config.apply refused: {message}: {data}"));
                    }
                    for (collection, id) in &refused {
                        log(format!(
                            "polluxd refuses {collection}/{id}, left out: {message}: {data}"
                        ));
                    }
                    objects.retain(|(k, _)| {
                        !refused
                            .iter()
                            .any(|(c, id)| c == k.collection && *id == k.id)
                    });
                }
                Err(e) => return Err(format!("config.apply: {e}")),
            }
        }
        Err("too many refused objects to resynchronise".into())
    }

    /// One object put (`<collection>.put`). An object polluxd refuses is logged and
    /// removed from polluxd (an older version of it must not go on forwarding as if
    /// Neutron's change had been made). Err: resynchronise.
    pub fn put(&mut self, key: &ObjectKey, object: Value) -> Result<(), String> {
        let mut params = json!({ keys::singular(key.collection): object });
        self.expect(&mut params);
        let method = format!("{}.put", key.collection);
        match self.call(&method, params) {
            Ok(r) => {
                log(format!(
                    "{method} {}: generation {} (changed: {})",
                    key.id, r["generation"], r["changed"]
                ));
                self.held(key, true);
                Ok(())
            }
            Err(CallError::Rpc {
                code,
                message,
                data,
            }) if REFUSALS.contains(&code) => {
                log(format!(
                    "polluxd refuses {}/{}: {message}: {}",
                    key.collection,
                    key.id,
                    data.unwrap_or(Value::Null)
                ));
                self.delete(key)
            }
            Err(e) => Err(format!("{method} {}: {e}", key.id)),
        }
    }

    /// One object delete (`<collection>.delete`); one polluxd does not hold is fine.
    pub fn delete(&mut self, key: &ObjectKey) -> Result<(), String> {
        let mut params = json!({ "id": key.id });
        self.expect(&mut params);
        let method = format!("{}.delete", key.collection);
        match self.call(&method, params) {
            Ok(r) => {
                log(format!(
                    "{method} {}: generation {}",
                    key.id, r["generation"]
                ));
                self.held(key, false);
                Ok(())
            }
            Err(CallError::Rpc { code, .. }) if code == UNKNOWN_OBJECT => {
                self.held(key, false);
                Ok(())
            }
            Err(e) => Err(format!("{method} {}: {e}", key.id)),
        }
    }

    fn expect(&self, params: &mut Value) {
        if let Some(g) = self.generation {
            params["expect_generation"] = json!(g);
        }
    }
}
