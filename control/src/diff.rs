//! What changed between two desired states: which objects were added, removed or changed,
//! by collection and id, and which fields of a changed object differ.
//!
//! The diff works on the unvalidated [`DesiredState`], so that it can describe any
//! `config.apply` request (including one that validation will reject) and so that field
//! names are exactly those of the document (the serde names, which are Neutron's).
//!
//! Objects are matched by their key (`name` for uplinks, `id` for everything else). A
//! document with a duplicate key is invalid, but the diff must still say something sane
//! about it: the later object of that key is read as a change of the earlier one, so the
//! last definition counts and the position is that of the first.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::Serialize;
use serde_json::Value;

use crate::model::DesiredState;
use crate::patch::Collection;

/// Per-collection lists, in document order of the collections. Serialises as an object
/// that names only the non-empty collections, with [`DesiredState`]'s field names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ByCollection<T> {
    /// Uplinks (by `name`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub uplinks: Vec<T>,
    /// Networks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<T>,
    /// Subnets.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subnets: Vec<T>,
    /// Ports.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<T>,
    /// Routers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routers: Vec<T>,
    /// Floating IPs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub floating_ips: Vec<T>,
    /// Security groups.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<T>,
    /// Top-level security group rules.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub security_group_rules: Vec<T>,
    /// Address groups.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub address_groups: Vec<T>,
    /// QoS policies.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub qos_policies: Vec<T>,
    /// Metering labels.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub metering_labels: Vec<T>,
    /// Top-level metering label rules.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub metering_label_rules: Vec<T>,
    /// Trunks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trunks: Vec<T>,
}

// Written out because the derive would require `T: Default`, which an empty list does not
// need.
impl<T> Default for ByCollection<T> {
    fn default() -> Self {
        ByCollection {
            uplinks: Vec::new(),
            networks: Vec::new(),
            subnets: Vec::new(),
            ports: Vec::new(),
            routers: Vec::new(),
            floating_ips: Vec::new(),
            security_groups: Vec::new(),
            security_group_rules: Vec::new(),
            address_groups: Vec::new(),
            qos_policies: Vec::new(),
            metering_labels: Vec::new(),
            metering_label_rules: Vec::new(),
            trunks: Vec::new(),
        }
    }
}

impl<T> ByCollection<T> {
    /// Every collection with its name, in document order, empty ones included.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &[T])> {
        [
            ("uplinks", self.uplinks.as_slice()),
            ("networks", self.networks.as_slice()),
            ("subnets", self.subnets.as_slice()),
            ("ports", self.ports.as_slice()),
            ("routers", self.routers.as_slice()),
            ("floating_ips", self.floating_ips.as_slice()),
            ("security_groups", self.security_groups.as_slice()),
            ("security_group_rules", self.security_group_rules.as_slice()),
            ("address_groups", self.address_groups.as_slice()),
            ("qos_policies", self.qos_policies.as_slice()),
            ("metering_labels", self.metering_labels.as_slice()),
            ("metering_label_rules", self.metering_label_rules.as_slice()),
            ("trunks", self.trunks.as_slice()),
        ]
        .into_iter()
    }

    /// The list of the collection called `name` (a [`DesiredState`] field name).
    pub fn get(&self, name: &str) -> Option<&[T]> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Entries over all collections.
    pub fn len(&self) -> usize {
        self.iter().map(|(_, v)| v.len()).sum()
    }

    /// Whether every collection is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A changed object: its key and the top-level fields that differ.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    /// The object's `id` (`name` for an uplink).
    pub id: String,
    /// Serde names of the differing fields, sorted.
    pub fields: Vec<String>,
}

/// The changed part of a [`Diff`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Changed {
    /// Changed objects, by collection.
    #[serde(flatten)]
    pub objects: ByCollection<Change>,
    /// Whether the `[l2]` section differs; serialised only when it does.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub l2: bool,
    /// Whether the `[dhcp]` section differs; serialised only when it does.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dhcp: bool,
    /// Whether the `[metadata]` section differs; serialised only when it does.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub metadata: bool,
}

/// The difference between two desired states; see the module documentation.
///
/// Serialises as `{"added": {"ports": ["vm3"]}, "removed": {}, "changed": {"ports":
/// [{"id": "vm1", "fields": ["mac_address"]}], "l2": true}}`. Added and changed ids are in
/// the order of the new state, removed ids in the order of the old one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Diff {
    /// Keys only in the new state.
    pub added: ByCollection<String>,
    /// Keys only in the old state.
    pub removed: ByCollection<String>,
    /// Objects in both that differ, and the `[l2]` and `[dhcp]` sections.
    pub changed: Changed,
}

impl Diff {
    /// Whether the two states are the same.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed_count() == 0
    }

    /// Added, removed and changed objects. A changed `[l2]` or `[dhcp]` section counts as
    /// one changed object, so that the counts are all zero exactly when the diff [is
    /// empty](Self::is_empty).
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.added.len(), self.removed.len(), self.changed_count())
    }

    fn changed_count(&self) -> usize {
        self.changed.objects.len()
            + usize::from(self.changed.l2)
            + usize::from(self.changed.dhcp)
            + usize::from(self.changed.metadata)
    }
}

/// One line per entry, each ending in a newline: `+ ports vm3`, `- networks net-x`,
/// `~ ports vm1 (fixed_ips, mac_address)`, `~ l2`, `~ dhcp`. An empty diff prints nothing.
impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, ids) in self.added.iter() {
            for id in ids {
                writeln!(f, "+ {name} {id}")?;
            }
        }
        for (name, ids) in self.removed.iter() {
            for id in ids {
                writeln!(f, "- {name} {id}")?;
            }
        }
        for (name, changes) in self.changed.objects.iter() {
            for c in changes {
                if c.fields.is_empty() {
                    writeln!(f, "~ {name} {}", c.id)?;
                } else {
                    writeln!(f, "~ {name} {} ({})", c.id, c.fields.join(", "))?;
                }
            }
        }
        if self.changed.l2 {
            writeln!(f, "~ l2")?;
        }
        if self.changed.dhcp {
            writeln!(f, "~ dhcp")?;
        }
        if self.changed.metadata {
            writeln!(f, "~ metadata")?;
        }
        Ok(())
    }
}

/// What changed from `old` to `new`; see the module documentation.
pub fn diff(old: &DesiredState, new: &DesiredState) -> Diff {
    let mut d = Diff::default();
    // A macro rather than a loop: each collection has its own item type and key field.
    macro_rules! collection {
        ($field:ident, $key:ident) => {
            diff_list(
                &old.$field,
                &new.$field,
                |x| x.$key.as_str(),
                &mut d.added.$field,
                &mut d.removed.$field,
                &mut d.changed.objects.$field,
            )
        };
    }
    collection!(uplinks, name);
    collection!(networks, id);
    collection!(subnets, id);
    collection!(ports, id);
    collection!(routers, id);
    collection!(floating_ips, id);
    collection!(security_groups, id);
    diff_list(
        &old.security_group_rules,
        &new.security_group_rules,
        |x| x.id.as_deref().unwrap_or(""),
        &mut d.added.security_group_rules,
        &mut d.removed.security_group_rules,
        &mut d.changed.objects.security_group_rules,
    );
    collection!(address_groups, id);
    collection!(qos_policies, id);
    collection!(metering_labels, id);
    diff_list(
        &old.metering_label_rules,
        &new.metering_label_rules,
        |x| x.id.as_deref().unwrap_or(""),
        &mut d.added.metering_label_rules,
        &mut d.removed.metering_label_rules,
        &mut d.changed.objects.metering_label_rules,
    );
    collection!(trunks, id);
    d.changed.l2 = old.l2 != new.l2;
    d.changed.dhcp = old.dhcp != new.dhcp;
    d.changed.metadata = old.metadata != new.metadata;
    d
}

/// [`diff`] of two valid states (no key twice in a collection) of which `new` differs
/// from `old` at most in the `touched` objects and the settings sections: it looks at
/// those objects alone, so that a change of one port costs what a port is. The same
/// answer as [`diff`] under that condition.
pub fn diff_of(old: &DesiredState, new: &DesiredState, touched: &[(Collection, String)]) -> Diff {
    let mut d = Diff::default();
    macro_rules! collection {
        ($c:expr, $field:ident, $key:ident) => {{
            let mut keys: Vec<&str> = Vec::new();
            for (c, k) in touched {
                if *c == $c && !keys.contains(&k.as_str()) {
                    keys.push(k);
                }
            }
            if !keys.is_empty() {
                diff_keys(
                    &old.$field,
                    &new.$field,
                    |x| x.$key.as_str(),
                    &keys,
                    &mut d.added.$field,
                    &mut d.removed.$field,
                    &mut d.changed.objects.$field,
                );
            }
        }};
    }
    collection!(Collection::Uplinks, uplinks, name);
    collection!(Collection::Networks, networks, id);
    collection!(Collection::Subnets, subnets, id);
    collection!(Collection::Ports, ports, id);
    collection!(Collection::Routers, routers, id);
    collection!(Collection::FloatingIps, floating_ips, id);
    collection!(Collection::SecurityGroups, security_groups, id);
    collection!(Collection::AddressGroups, address_groups, id);
    collection!(Collection::QosPolicies, qos_policies, id);
    collection!(Collection::Trunks, trunks, id);
    d.changed.l2 = old.l2 != new.l2;
    d.changed.dhcp = old.dhcp != new.dhcp;
    d.changed.metadata = old.metadata != new.metadata;
    d
}

/// [`diff_list`] restricted to `keys`, found by scanning (a few keys in a large list).
fn diff_keys<T: Serialize + PartialEq>(
    old: &[T],
    new: &[T],
    key: impl Fn(&T) -> &str,
    keys: &[&str],
    added: &mut Vec<String>,
    removed: &mut Vec<String>,
    changed: &mut Vec<Change>,
) {
    let find = |items: &[T], k: &str| items.iter().position(|x| key(x) == k);
    let mut added_at = Vec::new();
    let mut removed_at = Vec::new();
    let mut changed_at = Vec::new();
    for &k in keys {
        match (find(old, k), find(new, k)) {
            (None, Some(i)) => added_at.push((i, k.to_owned())),
            (Some(j), None) => removed_at.push((j, k.to_owned())),
            (Some(j), Some(i)) if old[j] != new[i] => changed_at.push((
                i,
                Change {
                    id: k.to_owned(),
                    fields: differing_fields(&to_json(&old[j]), &to_json(&new[i])),
                },
            )),
            _ => {}
        }
    }
    // In the order [`diff`] gives: added and changed as in the new state, removed as in
    // the old one.
    added_at.sort_by_key(|(i, _)| *i);
    removed_at.sort_by_key(|(j, _)| *j);
    changed_at.sort_by_key(|(i, _)| *i);
    added.extend(added_at.into_iter().map(|(_, k)| k));
    removed.extend(removed_at.into_iter().map(|(_, k)| k));
    changed.extend(changed_at.into_iter().map(|(_, c)| c));
}

/// The objects of one collection by key in order of first appearance; a repeated key
/// replaces the earlier object (see the module documentation).
fn index<'a, T>(items: &'a [T], key: impl Fn(&T) -> &str) -> Vec<(&'a str, &'a T)> {
    let mut out: Vec<(&'a str, &'a T)> = Vec::with_capacity(items.len());
    let mut pos: HashMap<&'a str, usize> = HashMap::with_capacity(items.len());
    for item in items {
        let k = key(item);
        match pos.get(k) {
            Some(&i) => out[i].1 = item,
            None => {
                pos.insert(k, out.len());
                out.push((k, item));
            }
        }
    }
    out
}

/// Objects are compared as typed values (cheap: a configuration of 10,000 ports changes
/// one); only those that differ are converted to JSON to name the differing fields.
fn diff_list<T: Serialize + PartialEq>(
    old: &[T],
    new: &[T],
    key: impl Fn(&T) -> &str,
    added: &mut Vec<String>,
    removed: &mut Vec<String>,
    changed: &mut Vec<Change>,
) {
    let old = index(old, &key);
    let new = index(new, &key);
    let old_by_key: HashMap<&str, &T> = old.iter().map(|(k, v)| (*k, *v)).collect();
    let new_keys: HashSet<&str> = new.iter().map(|(k, _)| *k).collect();
    for (k, v) in &new {
        match old_by_key.get(k) {
            None => added.push((*k).to_owned()),
            Some(&o) if o != *v => changed.push(Change {
                id: (*k).to_owned(),
                fields: differing_fields(&to_json(o), &to_json(*v)),
            }),
            Some(_) => {}
        }
    }
    removed.extend(
        old.iter()
            .filter(|(k, _)| !new_keys.contains(k))
            .map(|(k, _)| (*k).to_owned()),
    );
}

fn to_json<T: Serialize>(item: &T) -> Value {
    // The model has only string-keyed structs, lists and scalars, which always convert.
    serde_json::to_value(item).expect("the model serialises to JSON")
}

/// Top-level field names whose values differ, a field absent on one side included.
fn differing_fields(old: &Value, new: &Value) -> Vec<String> {
    let (Value::Object(o), Value::Object(n)) = (old, new) else {
        return Vec::new();
    };
    let mut fields: Vec<String> = o
        .keys()
        .chain(n.keys().filter(|k| !o.contains_key(*k)))
        .filter(|k| o.get(*k) != n.get(*k))
        .cloned()
        .collect();
    // serde_json's map order depends on its `preserve_order` feature, which another crate
    // of the build may turn on; sorting keeps the output the same either way.
    fields.sort();
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Binding, FixedIp, Network, NetworkType, Port, SecurityGroup, Uplink};
    use proptest::prelude::*;
    use serde_json::json;

    fn network(id: &str) -> Network {
        Network {
            id: id.to_owned(),
            name: None,
            network_type: NetworkType::Local,
            physical_network: None,
            segmentation_id: None,
            mtu: None,
            admin_state_up: true,
            dns_domain: None,
            qos_policy_id: None,
        }
    }

    fn port(id: &str, network_id: &str, mac: &str) -> Port {
        Port {
            id: id.to_owned(),
            network_id: network_id.to_owned(),
            mac_address: mac.to_owned(),
            fixed_ips: Vec::new(),
            security_groups: Vec::new(),
            port_security_enabled: true,
            allowed_address_pairs: Vec::new(),
            binding_host_id: None,
            binding: Some(Binding::Mem {}),
            dns_name: None,
            extra_dhcp_opts: Vec::new(),
            qos_policy_id: None,
            device_id: None,
            project_id: None,
        }
    }

    fn fixed_ip(ip: &str) -> FixedIp {
        FixedIp {
            subnet_id: "s".to_owned(),
            ip_address: ip.to_owned(),
        }
    }

    fn state(networks: Vec<Network>, ports: Vec<Port>) -> DesiredState {
        DesiredState {
            networks,
            ports,
            ..DesiredState::default()
        }
    }

    fn json(d: &Diff) -> Value {
        serde_json::to_value(d).unwrap()
    }

    #[test]
    fn equal_states_give_an_empty_diff() {
        let a = state(
            vec![network("n1")],
            vec![port("vm1", "n1", "fa:16:3e:00:00:01")],
        );
        let d = diff(&a, &a.clone());
        assert!(d.is_empty());
        assert_eq!(d.counts(), (0, 0, 0));
        assert_eq!(d.to_string(), "");
        assert_eq!(json(&d), json!({"added": {}, "removed": {}, "changed": {}}));
        assert_eq!(
            diff(&DesiredState::default(), &DesiredState::default()),
            Diff::default()
        );
    }

    #[test]
    fn added_removed_changed_and_l2() {
        let mut vm1 = port("vm1", "net-a", "fa:16:3e:00:00:01");
        vm1.fixed_ips = vec![fixed_ip("198.18.0.10")];
        let old = state(
            vec![network("net-x"), network("net-a")],
            vec![vm1.clone(), port("vm2", "net-a", "fa:16:3e:00:00:02")],
        );
        let mut new = state(
            vec![network("net-a")],
            vec![
                port("vm2", "net-a", "fa:16:3e:00:00:02"),
                Port {
                    mac_address: "fa:16:3e:00:00:09".to_owned(),
                    fixed_ips: vec![fixed_ip("198.18.0.11")],
                    ..vm1
                },
                port("vm3", "net-a", "fa:16:3e:00:00:03"),
            ],
        );
        new.l2.mac_aging_secs = 60;
        let d = diff(&old, &new);
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            r#"{"added":{"ports":["vm3"]},"removed":{"networks":["net-x"]},"changed":{"ports":[{"id":"vm1","fields":["fixed_ips","mac_address"]}],"l2":true}}"#
        );
        assert_eq!(d.counts(), (1, 1, 2));
        assert!(!d.is_empty());
        assert_eq!(
            d.to_string(),
            "+ ports vm3\n- networks net-x\n~ ports vm1 (fixed_ips, mac_address)\n~ l2\n"
        );
    }

    #[test]
    fn only_dhcp_limits_changed() {
        let old = DesiredState::default();
        let mut new = old.clone();
        new.dhcp.port_rate = 7;
        let d = diff(&old, &new);
        assert!(!d.is_empty());
        assert_eq!(d.counts(), (0, 0, 1));
        assert_eq!(d.to_string(), "~ dhcp\n");
        assert_eq!(
            json(&d),
            json!({"added": {}, "removed": {}, "changed": {"dhcp": true}})
        );
    }

    #[test]
    fn only_l2_changed() {
        let old = DesiredState::default();
        let mut new = old.clone();
        new.l2.mac_limit_per_network = 16;
        let d = diff(&old, &new);
        assert!(!d.is_empty());
        assert_eq!(d.counts(), (0, 0, 1));
        assert_eq!(d.to_string(), "~ l2\n");
        assert_eq!(
            json(&d),
            json!({"added": {}, "removed": {}, "changed": {"l2": true}})
        );
    }

    #[test]
    fn ids_follow_document_order_and_collections_follow_the_schema() {
        let old = state(
            vec![network("z"), network("keep"), network("a")],
            Vec::new(),
        );
        let mut new = state(
            vec![network("keep"), network("m"), network("b")],
            Vec::new(),
        );
        new.security_groups = vec![SecurityGroup {
            id: "sg".to_owned(),
            name: None,
            description: None,
            stateful: true,
            rules: Vec::new(),
        }];
        new.uplinks = vec![Uplink {
            name: "up0".to_owned(),
            physnet: "physnet1".to_owned(),
            binding: Binding::Mem {},
            local_ip: None,
            mtu: None,
        }];
        let d = diff(&old, &new);
        // Added in the new state's order, removed in the old state's order (not sorted).
        assert_eq!(d.added.networks, ["m", "b"]);
        assert_eq!(d.removed.networks, ["z", "a"]);
        assert_eq!(
            serde_json::to_string(&d.added).unwrap(),
            r#"{"uplinks":["up0"],"networks":["m","b"],"security_groups":["sg"]}"#
        );
        assert_eq!(
            d.to_string(),
            "+ uplinks up0\n+ networks m\n+ networks b\n+ security_groups sg\n\
             - networks z\n- networks a\n"
        );
        assert_eq!(d.counts(), (4, 2, 0));
        assert_eq!(
            d.added.get("networks"),
            Some(&["m".to_owned(), "b".to_owned()][..])
        );
        assert_eq!(d.added.get("ports"), Some(&[][..]));
        assert_eq!(d.added.get("l2"), None);
    }

    #[test]
    fn changed_ids_follow_the_new_order() {
        let old = state(vec![network("a"), network("b")], Vec::new());
        let mut new = state(vec![network("b"), network("a")], Vec::new());
        new.networks[0].mtu = Some(1400);
        new.networks[1].mtu = Some(1400);
        let d = diff(&old, &new);
        let ids: Vec<&str> = d
            .changed
            .objects
            .networks
            .iter()
            .map(|c| c.id.as_str())
            .collect();
        assert_eq!(ids, ["b", "a"]);
    }

    #[test]
    fn reordering_alone_is_no_change() {
        let old = state(vec![network("a"), network("b")], Vec::new());
        let new = state(vec![network("b"), network("a")], Vec::new());
        assert!(diff(&old, &new).is_empty());
    }

    #[test]
    fn a_field_appearing_or_disappearing_is_a_change() {
        let old = state(vec![network("n")], Vec::new());
        let mut new = old.clone();
        new.networks[0].mtu = Some(1400);
        new.networks[0].name = Some("web".to_owned());
        let d = diff(&old, &new);
        assert_eq!(
            d.changed.objects.networks,
            [Change {
                id: "n".to_owned(),
                fields: vec!["mtu".to_owned(), "name".to_owned()],
            }]
        );
        // And back: the fields absent from the new object are reported too.
        let d = diff(&new, &old);
        assert_eq!(d.changed.objects.networks[0].fields, ["mtu", "name"]);
        assert_eq!(d.to_string(), "~ networks n (mtu, name)\n");
    }

    #[test]
    fn field_names_are_the_serde_names() {
        let old = state(Vec::new(), vec![port("p", "n", "fa:16:3e:00:00:01")]);
        let mut new = old.clone();
        new.ports[0].binding = Some(Binding::Tap {
            interface: "tap0".to_owned(),
        });
        new.ports[0].port_security_enabled = false;
        let d = diff(&old, &new);
        assert_eq!(
            d.changed.objects.ports[0].fields,
            ["binding", "port_security_enabled"]
        );
    }

    #[test]
    fn uplinks_are_keyed_by_name() {
        let up = |name: &str, physnet: &str| Uplink {
            name: name.to_owned(),
            physnet: physnet.to_owned(),
            binding: Binding::Mem {},
            local_ip: None,
            mtu: None,
        };
        let old = DesiredState {
            uplinks: vec![up("up0", "physnet1"), up("up1", "physnet2")],
            ..DesiredState::default()
        };
        let new = DesiredState {
            uplinks: vec![up("up0", "physnet9")],
            ..DesiredState::default()
        };
        let d = diff(&old, &new);
        assert_eq!(
            json(&d),
            json!({
                "added": {},
                "removed": {"uplinks": ["up1"]},
                "changed": {"uplinks": [{"id": "up0", "fields": ["physnet"]}]},
            })
        );
    }

    #[test]
    fn a_duplicate_id_is_a_change_of_the_earlier_object() {
        let a = port("vm1", "n", "fa:16:3e:00:00:01");
        let b = port("vm1", "n", "fa:16:3e:00:00:02");
        let c = port("vm2", "n", "fa:16:3e:00:00:03");
        // In the new state: the later vm1 is what vm1 becomes.
        let old = state(Vec::new(), vec![a.clone()]);
        let new = state(Vec::new(), vec![a.clone(), c.clone(), b.clone()]);
        let d = diff(&old, &new);
        assert_eq!(d.added.ports, ["vm2"]);
        assert_eq!(
            d.changed.objects.ports,
            [Change {
                id: "vm1".to_owned(),
                fields: vec!["mac_address".to_owned()],
            }]
        );
        // In the old state: vm1 already was b, so nothing changed.
        let old = state(Vec::new(), vec![a.clone(), b.clone()]);
        let new = state(Vec::new(), vec![b.clone()]);
        assert!(diff(&old, &new).is_empty());
        // A duplicate that is removed is reported once.
        let d = diff(&old, &DesiredState::default());
        assert_eq!(d.removed.ports, ["vm1"]);
        // And a duplicate that is added, once, at its first position.
        let d = diff(&DesiredState::default(), &state(Vec::new(), vec![a, c, b]));
        assert_eq!(d.added.ports, ["vm1", "vm2"]);
    }

    // ---- properties ------------------------------------------------------------------

    /// A few networks and ports with ids from a small alphabet, so that duplicates occur.
    fn arb_state() -> impl Strategy<Value = DesiredState> {
        let id = prop::sample::select(vec!["a", "b", "c", "d"]);
        let net = (id.clone(), prop::option::of(1280i64..9000), any::<bool>()).prop_map(
            |(id, mtu, up)| Network {
                mtu,
                admin_state_up: up,
                ..network(id)
            },
        );
        let prt = (id.clone(), id, any::<u8>(), prop::option::of(any::<u8>())).prop_map(
            |(id, net, m, ip)| {
                let mut p = port(id, net, &format!("fa:16:3e:00:00:{m:02x}"));
                p.fixed_ips = ip
                    .map(|x| fixed_ip(&format!("198.18.0.{x}")))
                    .into_iter()
                    .collect();
                p
            },
        );
        (
            prop::collection::vec(net, 0..4),
            prop::collection::vec(prt, 0..6),
            0i64..3,
        )
            .prop_map(|(networks, ports, aging)| {
                let mut s = state(networks, ports);
                s.l2.mac_aging_secs += aging;
                s
            })
    }

    proptest! {
        #[test]
        fn a_state_does_not_differ_from_itself(a in arb_state()) {
            let d = diff(&a, &a);
            prop_assert!(d.is_empty());
            prop_assert_eq!(d.counts(), (0, 0, 0));
            prop_assert_eq!(d.to_string(), "");
        }

        #[test]
        fn counts_match_ports_added_removed_and_changed(
            n_old in 0usize..8,
            remove in prop::collection::vec(any::<bool>(), 8),
            change in prop::collection::vec(any::<bool>(), 8),
            n_add in 0usize..5,
        ) {
            let old = state(
                Vec::new(),
                (0..n_old).map(|i| port(&format!("p{i}"), "n", "fa:16:3e:00:00:01")).collect(),
            );
            let mut new = old.clone();
            new.ports.clear();
            let (mut removed, mut changed) = (Vec::new(), Vec::new());
            for (i, p) in old.ports.iter().enumerate() {
                if remove[i] {
                    removed.push(p.id.clone());
                } else if change[i] {
                    changed.push(p.id.clone());
                    new.ports.push(Port { network_id: "m".to_owned(), ..p.clone() });
                } else {
                    new.ports.push(p.clone());
                }
            }
            let added: Vec<String> = (0..n_add).map(|i| format!("q{i}")).collect();
            new.ports.extend(added.iter().map(|id| port(id, "n", "fa:16:3e:00:00:02")));

            let d = diff(&old, &new);
            prop_assert_eq!(d.counts(), (added.len(), removed.len(), changed.len()));
            prop_assert_eq!(&d.added.ports, &added);
            prop_assert_eq!(&d.removed.ports, &removed);
            let ids: Vec<String> = d.changed.objects.ports.iter().map(|c| c.id.clone()).collect();
            prop_assert_eq!(ids, changed);
            prop_assert!(d.changed.objects.ports.iter().all(|c| c.fields == ["network_id"]));
            prop_assert_eq!(d.is_empty(), added.is_empty() && removed.is_empty() && d.changed.objects.is_empty());
            prop_assert_eq!(d.to_string().lines().count(), added.len() + removed.len() + d.changed.objects.len());

            // The reverse diff swaps added and removed.
            let r = diff(&new, &old);
            prop_assert_eq!(r.counts(), (removed.len(), added.len(), d.counts().2));
        }
    }
}
