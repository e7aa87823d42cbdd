//! The etcd key layout the ML2 mechanism driver writes and the agent reads, and the
//! translation of a host's keys into (parts of) a desired state.
//!
//! ```text
//! <prefix>/hosts/<host>/<collection>/<id>   JSON object in polluxd's schema
//! <prefix>/agents/<host>                    held under the agent's lease while it lives
//! <prefix>/status/<host>/ports/<id>         {"status": "ACTIVE"} while polluxd holds
//!                                           the port (written by the agent)
//! ```
//!
//! Only the collections Neutron owns are taken from etcd; a host's uplinks (its
//! `bridge_mappings`) and its `[l2]`/`[dhcp]` limits are local configuration and stay as
//! polluxd has them.

use serde_json::{Map, Value};

/// The collections the driver writes, in the order a whole state lists them (the order
/// matters only to error paths: validation is of the whole state).
pub const COLLECTIONS: [&str; 7] = [
    "networks",
    "subnets",
    "ports",
    "routers",
    "floating_ips",
    "security_groups",
    "address_groups",
];

/// The prefix under which `host`'s objects live, with its trailing `/`.
pub fn host_prefix(prefix: &str, host: &str) -> String {
    format!("{}/hosts/{host}/", prefix.trim_end_matches('/'))
}

/// The key the agent keeps alive under its lease.
pub fn agent_key(prefix: &str, host: &str) -> String {
    format!("{}/agents/{host}", prefix.trim_end_matches('/'))
}

/// The prefix of the status keys the agent writes for `host`'s ports, with its
/// trailing `/`.
pub fn port_status_prefix(prefix: &str, host: &str) -> String {
    format!("{}/status/{host}/ports/", prefix.trim_end_matches('/'))
}

/// What a key under a host's prefix names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectKey {
    /// One of [`COLLECTIONS`].
    pub collection: &'static str,
    /// The object's id (a Neutron UUID).
    pub id: String,
}

/// Parses `key` (which starts with `host_prefix`) into a collection and an id; `None`
/// for a key of no known collection, which the agent logs and leaves alone.
pub fn parse_key(host_prefix: &str, key: &str) -> Option<ObjectKey> {
    let rest = key.strip_prefix(host_prefix)?;
    let (collection, id) = rest.split_once('/')?;
    let collection = COLLECTIONS.iter().find(|c| **c == collection)?;
    if id.is_empty() || id.contains('/') {
        return None;
    }
    Some(ObjectKey {
        collection,
        id: id.to_owned(),
    })
}

/// The name of the object parameter of `<collection>.put` (`ports` → `port`).
pub fn singular(collection: &str) -> &str {
    collection.strip_suffix('s').unwrap_or(collection)
}

/// `current` (polluxd's running state, as `config.get` returns it) with every collection
/// of [`COLLECTIONS`] replaced by `objects` (what etcd holds, in key order): the state a
/// resynchronisation applies.
pub fn merge_state(current: &Value, objects: &[(ObjectKey, Value)]) -> Value {
    let mut state = match current {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    for c in COLLECTIONS {
        let items: Vec<Value> = objects
            .iter()
            .filter(|(k, _)| k.collection == c)
            .map(|(_, v)| v.clone())
            .collect();
        state.insert(c.to_owned(), Value::Array(items));
    }
    Value::Object(state)
}

/// The objects named by a refusal's error paths (`ports[3].security_groups` names the
/// fourth port of the state that was applied), so that a resynchronisation can leave out
/// what polluxd refuses and still apply the rest.
pub fn refused_items(state: &Value, error_data: &Value) -> Vec<(String, String)> {
    let mut paths: Vec<&str> = Vec::new();
    if let Some(errors) = error_data.get("errors").and_then(Value::as_array) {
        paths.extend(
            errors
                .iter()
                .filter_map(|e| e.get("path").and_then(Value::as_str)),
        );
    }
    if let Some(p) = error_data.get("path").and_then(Value::as_str) {
        paths.push(p);
    }
    let mut out = Vec::new();
    // A port its driver could not open (no such interface) is named `port:<id>`.
    if let Some(errors) = error_data.get("errors").and_then(Value::as_array) {
        for id in errors
            .iter()
            .filter_map(|e| e.get("port").and_then(Value::as_str))
            .filter_map(|p| p.strip_prefix("port:"))
        {
            let item = ("ports".to_owned(), id.to_owned());
            if !out.contains(&item) {
                out.push(item);
            }
        }
    }
    for path in paths {
        let Some((collection, rest)) = path.split_once('[') else {
            continue;
        };
        let Some(index) = rest.split(']').next().and_then(|i| i.parse::<usize>().ok()) else {
            continue;
        };
        let id = state
            .get(collection)
            .and_then(|items| items.get(index))
            .and_then(|item| item.get("id"))
            .and_then(Value::as_str);
        if let Some(id) = id {
            let item = (collection.to_owned(), id.to_owned());
            if !out.contains(&item) {
                out.push(item);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_parse_into_collection_and_id() {
        let p = host_prefix("/pollux/", "compute-1");
        assert_eq!(p, "/pollux/hosts/compute-1/");
        assert_eq!(
            agent_key("/pollux", "compute-1"),
            "/pollux/agents/compute-1"
        );
        assert_eq!(
            parse_key(&p, "/pollux/hosts/compute-1/ports/4f1c"),
            Some(ObjectKey {
                collection: "ports",
                id: "4f1c".into()
            })
        );
        assert_eq!(parse_key(&p, "/pollux/hosts/compute-1/uplinks/u0"), None);
        assert_eq!(parse_key(&p, "/pollux/hosts/compute-1/ports/"), None);
        assert_eq!(parse_key(&p, "/pollux/hosts/compute-1/ports/a/b"), None);
        assert_eq!(parse_key(&p, "/pollux/hosts/compute-2/ports/a"), None);
        assert_eq!(singular("ports"), "port");
        assert_eq!(
            port_status_prefix("/pollux/", "compute-1"),
            "/pollux/status/compute-1/ports/"
        );
        assert_eq!(singular("floating_ips"), "floating_ip");
        assert_eq!(singular("security_groups"), "security_group");
        assert_eq!(singular("address_groups"), "address_group");
        assert_eq!(
            parse_key(&p, "/pollux/hosts/compute-1/address_groups/sg-members:4f1c"),
            Some(ObjectKey {
                collection: "address_groups",
                id: "sg-members:4f1c".into()
            })
        );
    }

    #[test]
    fn merge_keeps_the_hosts_own_settings() {
        let current = json!({
            "l2": {"mac_aging_secs": 60},
            "uplinks": [{"name": "u0"}],
            "ports": [{"id": "old"}],
        });
        let objects = vec![(
            ObjectKey {
                collection: "ports",
                id: "p1".into(),
            },
            json!({"id": "p1"}),
        )];
        let merged = merge_state(&current, &objects);
        assert_eq!(merged["l2"], current["l2"]);
        assert_eq!(merged["uplinks"], current["uplinks"]);
        assert_eq!(merged["ports"], json!([{"id": "p1"}]));
        assert_eq!(merged["networks"], json!([]));
    }

    #[test]
    fn refused_items_follow_error_paths() {
        let state = json!({"ports": [{"id": "a"}, {"id": "b"}], "networks": [{"id": "n"}]});
        let data = json!({"errors": [
            {"path": "ports[1].security_groups", "message": "x"},
            {"path": "ports[1].mac_address", "message": "y"},
            {"path": "networks[0]", "message": "z"},
            {"path": "l2.mac_aging_secs", "message": "w"},
        ]});
        assert_eq!(
            refused_items(&state, &data),
            vec![
                ("ports".to_owned(), "b".to_owned()),
                ("networks".to_owned(), "n".to_owned())
            ]
        );
        let data = json!({"path": "ports[0].security_groups", "details": "not supported"});
        assert_eq!(
            refused_items(&state, &data),
            vec![("ports".to_owned(), "a".to_owned())]
        );
    }
}
