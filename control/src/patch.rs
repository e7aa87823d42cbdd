//! Changes to one object of the desired state: put (create or replace by id) and delete.
//!
//! A change here only edits a [`DesiredState`] (a copy, or the state itself with a log to
//! take the edit back: [`edit_in_place`], [`undo`]); the engine then runs the result as a
//! whole-state apply of it (validation against the whole state, diff, all-or-nothing,
//! history), so the two kinds of change cannot mean different things. A replaced object
//! keeps its index and a new one goes last, so the error paths of validation name the
//! index the object has in the resulting state, and the state equals what a client that
//! edits its copy and sends it whole would send.

use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::model::{
    AddressGroup, DesiredState, FloatingIp, Network, Port, QosPolicy, Router, SecurityGroup,
    Subnet, Trunk, Uplink,
};
use crate::validate::ValidationError;

/// A collection of the desired state whose objects have a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Collection {
    /// `uplinks`, keyed by `name`.
    Uplinks,
    /// `networks`.
    Networks,
    /// `subnets`.
    Subnets,
    /// `ports`.
    Ports,
    /// `routers`.
    Routers,
    /// `floating_ips`.
    FloatingIps,
    /// `security_groups` (with their rules).
    SecurityGroups,
    /// `address_groups`.
    AddressGroups,
    /// `qos_policies` (with their rules).
    QosPolicies,
    /// `trunks` (with their subports).
    Trunks,
}

impl Collection {
    /// Every collection, in document order.
    pub const ALL: [Collection; 10] = [
        Collection::Uplinks,
        Collection::Networks,
        Collection::Subnets,
        Collection::Ports,
        Collection::Routers,
        Collection::FloatingIps,
        Collection::SecurityGroups,
        Collection::AddressGroups,
        Collection::QosPolicies,
        Collection::Trunks,
    ];

    /// The collection's key in the desired state (`ports`).
    pub fn name(self) -> &'static str {
        match self {
            Collection::Uplinks => "uplinks",
            Collection::Networks => "networks",
            Collection::Subnets => "subnets",
            Collection::Ports => "ports",
            Collection::Routers => "routers",
            Collection::FloatingIps => "floating_ips",
            Collection::SecurityGroups => "security_groups",
            Collection::AddressGroups => "address_groups",
            Collection::QosPolicies => "qos_policies",
            Collection::Trunks => "trunks",
        }
    }

    /// One object of it (`port`): the key of the object in a `put`'s parameters, as in
    /// the Neutron API's request bodies.
    pub fn singular(self) -> &'static str {
        match self {
            Collection::Uplinks => "uplink",
            Collection::Networks => "network",
            Collection::Subnets => "subnet",
            Collection::Ports => "port",
            Collection::Routers => "router",
            Collection::FloatingIps => "floating_ip",
            Collection::SecurityGroups => "security_group",
            Collection::AddressGroups => "address_group",
            Collection::QosPolicies => "qos_policy",
            Collection::Trunks => "trunk",
        }
    }

    /// The field that identifies an object.
    pub fn key_field(self) -> &'static str {
        match self {
            Collection::Uplinks => "name",
            _ => "id",
        }
    }

    /// The collection named `kind`: plural or singular, `-` or `_` (`floating-ip`).
    pub fn parse(kind: &str) -> Option<Collection> {
        let kind = kind.replace('-', "_");
        Collection::ALL
            .into_iter()
            .find(|c| c.name() == kind || c.singular() == kind)
    }

    /// The index of its object `id` in `state`: a scan, without the list of every id
    /// (a change of one port on a host with 10,000 looks a few times).
    pub fn position(self, state: &DesiredState, id: &str) -> Option<usize> {
        fn find<T>(items: &[T], key: impl Fn(&T) -> &str, id: &str) -> Option<usize> {
            items.iter().position(|o| key(o) == id)
        }
        match self {
            Collection::Uplinks => find(&state.uplinks, |o| &o.name, id),
            Collection::Networks => find(&state.networks, |o| &o.id, id),
            Collection::Subnets => find(&state.subnets, |o| &o.id, id),
            Collection::Ports => find(&state.ports, |o| &o.id, id),
            Collection::Routers => find(&state.routers, |o| &o.id, id),
            Collection::FloatingIps => find(&state.floating_ips, |o| &o.id, id),
            Collection::SecurityGroups => find(&state.security_groups, |o| &o.id, id),
            Collection::AddressGroups => find(&state.address_groups, |o| &o.id, id),
            Collection::QosPolicies => find(&state.qos_policies, |o| &o.id, id),
            Collection::Trunks => find(&state.trunks, |o| &o.id, id),
        }
    }

    /// How many objects it has in `state`.
    pub fn len(self, state: &DesiredState) -> usize {
        match self {
            Collection::Uplinks => state.uplinks.len(),
            Collection::Networks => state.networks.len(),
            Collection::Subnets => state.subnets.len(),
            Collection::Ports => state.ports.len(),
            Collection::Routers => state.routers.len(),
            Collection::FloatingIps => state.floating_ips.len(),
            Collection::SecurityGroups => state.security_groups.len(),
            Collection::AddressGroups => state.address_groups.len(),
            Collection::QosPolicies => state.qos_policies.len(),
            Collection::Trunks => state.trunks.len(),
        }
    }

    /// The ids of its objects in `state`, in order.
    pub fn ids(self, state: &DesiredState) -> Vec<&str> {
        match self {
            Collection::Uplinks => state.uplinks.iter().map(|o| o.name.as_str()).collect(),
            Collection::Networks => state.networks.iter().map(|o| o.id.as_str()).collect(),
            Collection::Subnets => state.subnets.iter().map(|o| o.id.as_str()).collect(),
            Collection::Ports => state.ports.iter().map(|o| o.id.as_str()).collect(),
            Collection::Routers => state.routers.iter().map(|o| o.id.as_str()).collect(),
            Collection::FloatingIps => state.floating_ips.iter().map(|o| o.id.as_str()).collect(),
            Collection::SecurityGroups => state
                .security_groups
                .iter()
                .map(|o| o.id.as_str())
                .collect(),
            Collection::AddressGroups => {
                state.address_groups.iter().map(|o| o.id.as_str()).collect()
            }
            Collection::QosPolicies => state.qos_policies.iter().map(|o| o.id.as_str()).collect(),
            Collection::Trunks => state.trunks.iter().map(|o| o.id.as_str()).collect(),
        }
    }
}

impl fmt::Display for Collection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One object, typed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    /// An uplink.
    Uplink(Uplink),
    /// A network.
    Network(Network),
    /// A subnet.
    Subnet(Subnet),
    /// A port.
    Port(Port),
    /// A router.
    Router(Router),
    /// A floating IP.
    FloatingIp(FloatingIp),
    /// A security group.
    SecurityGroup(SecurityGroup),
    /// An address group.
    AddressGroup(AddressGroup),
    /// A QoS policy.
    QosPolicy(QosPolicy),
    /// A trunk.
    Trunk(Trunk),
}

impl Object {
    /// Its collection.
    pub fn collection(&self) -> Collection {
        match self {
            Object::Uplink(_) => Collection::Uplinks,
            Object::Network(_) => Collection::Networks,
            Object::Subnet(_) => Collection::Subnets,
            Object::Port(_) => Collection::Ports,
            Object::Router(_) => Collection::Routers,
            Object::FloatingIp(_) => Collection::FloatingIps,
            Object::SecurityGroup(_) => Collection::SecurityGroups,
            Object::AddressGroup(_) => Collection::AddressGroups,
            Object::QosPolicy(_) => Collection::QosPolicies,
            Object::Trunk(_) => Collection::Trunks,
        }
    }

    /// Its id (an uplink's name).
    pub fn id(&self) -> &str {
        match self {
            Object::Uplink(o) => &o.name,
            Object::Network(o) => &o.id,
            Object::Subnet(o) => &o.id,
            Object::Port(o) => &o.id,
            Object::Router(o) => &o.id,
            Object::FloatingIp(o) => &o.id,
            Object::SecurityGroup(o) => &o.id,
            Object::AddressGroup(o) => &o.id,
            Object::QosPolicy(o) => &o.id,
            Object::Trunk(o) => &o.id,
        }
    }

    /// Its JSON form, as it is in the serialised state.
    pub fn to_value(&self) -> Value {
        fn value<T: serde::Serialize>(o: &T) -> Value {
            serde_json::to_value(o).expect("the model serialises to JSON")
        }
        match self {
            Object::Uplink(o) => value(o),
            Object::Network(o) => value(o),
            Object::Subnet(o) => value(o),
            Object::Port(o) => value(o),
            Object::Router(o) => value(o),
            Object::FloatingIp(o) => value(o),
            Object::SecurityGroup(o) => value(o),
            Object::AddressGroup(o) => value(o),
            Object::QosPolicy(o) => value(o),
            Object::Trunk(o) => value(o),
        }
    }

    /// Reads an object of `collection` sent as JSON; a shape error is reported at `path`
    /// (the index the object would have), as a whole-state apply reports it.
    pub fn from_json(
        collection: Collection,
        value: Value,
        path: &str,
    ) -> Result<Object, ValidationError> {
        fn read<T: DeserializeOwned>(value: Value, path: &str) -> Result<T, ValidationError> {
            serde_json::from_value(value).map_err(|e| ValidationError {
                path: path.to_owned(),
                message: e.to_string(),
            })
        }
        Ok(match collection {
            Collection::Uplinks => Object::Uplink(read(value, path)?),
            Collection::Networks => Object::Network(read(value, path)?),
            Collection::Subnets => Object::Subnet(read(value, path)?),
            Collection::Ports => Object::Port(read(value, path)?),
            Collection::Routers => Object::Router(read(value, path)?),
            Collection::FloatingIps => Object::FloatingIp(read(value, path)?),
            Collection::SecurityGroups => Object::SecurityGroup(read(value, path)?),
            Collection::AddressGroups => Object::AddressGroup(read(value, path)?),
            Collection::QosPolicies => Object::QosPolicy(read(value, path)?),
            Collection::Trunks => Object::Trunk(read(value, path)?),
        })
    }
}

/// One change of a batch.
// A batch is short-lived and mostly puts: boxing the object would cost an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Create or replace the object with its id.
    Put(Object),
    /// Remove the object with this id.
    Delete {
        /// Where.
        collection: Collection,
        /// Which.
        id: String,
    },
}

/// One change as a client sends it: the object still JSON, read once its index is known.
#[derive(Clone, Debug, PartialEq)]
pub enum RawChange {
    /// Create or replace the object (JSON) in the collection.
    Put {
        /// Where.
        collection: Collection,
        /// The object.
        object: Value,
    },
    /// Remove the object with this id.
    Delete {
        /// Where.
        collection: Collection,
        /// Which.
        id: String,
    },
}

/// Why a batch cannot be made into a state. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PatchError {
    /// An object does not have the shape of its collection's objects.
    Invalid(ValidationError),
    /// A delete of an id the collection does not hold (at that point of the batch).
    UnknownObject {
        /// Where.
        collection: Collection,
        /// Which.
        id: String,
        /// Its position in the batch.
        change: usize,
    },
}

impl fmt::Display for PatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PatchError::Invalid(e) => write!(f, "{e}"),
            PatchError::UnknownObject {
                collection,
                id,
                change,
            } => write!(f, "changes[{change}]: {collection} has no object {id:?}"),
        }
    }
}

/// How to take one change made in place back (see [`undo`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Undo {
    /// The object at this index was replaced; this was it.
    Replaced(usize, Object),
    /// An object was appended to the collection.
    Appended(Collection),
    /// The object at this index was removed; this was it.
    Deleted(usize, Object),
}

/// Puts `object` at `at` (replacing what is there, which is returned), or appends it.
fn place(state: &mut DesiredState, at: Option<usize>, object: Object) -> Option<Object> {
    macro_rules! place {
        ($items:expr, $o:expr, $variant:ident) => {
            match at {
                Some(i) => Some(Object::$variant(std::mem::replace(&mut $items[i], $o))),
                None => {
                    $items.push($o);
                    None
                }
            }
        };
    }
    match object {
        Object::Uplink(o) => place!(state.uplinks, o, Uplink),
        Object::Network(o) => place!(state.networks, o, Network),
        Object::Subnet(o) => place!(state.subnets, o, Subnet),
        Object::Port(o) => place!(state.ports, o, Port),
        Object::Router(o) => place!(state.routers, o, Router),
        Object::FloatingIp(o) => place!(state.floating_ips, o, FloatingIp),
        Object::SecurityGroup(o) => place!(state.security_groups, o, SecurityGroup),
        Object::AddressGroup(o) => place!(state.address_groups, o, AddressGroup),
        Object::QosPolicy(o) => place!(state.qos_policies, o, QosPolicy),
        Object::Trunk(o) => place!(state.trunks, o, Trunk),
    }
}

/// Removes the object at `i` of `collection` and returns it.
fn take(state: &mut DesiredState, collection: Collection, i: usize) -> Object {
    match collection {
        Collection::Uplinks => Object::Uplink(state.uplinks.remove(i)),
        Collection::Networks => Object::Network(state.networks.remove(i)),
        Collection::Subnets => Object::Subnet(state.subnets.remove(i)),
        Collection::Ports => Object::Port(state.ports.remove(i)),
        Collection::Routers => Object::Router(state.routers.remove(i)),
        Collection::FloatingIps => Object::FloatingIp(state.floating_ips.remove(i)),
        Collection::SecurityGroups => Object::SecurityGroup(state.security_groups.remove(i)),
        Collection::AddressGroups => Object::AddressGroup(state.address_groups.remove(i)),
        Collection::QosPolicies => Object::QosPolicy(state.qos_policies.remove(i)),
        Collection::Trunks => Object::Trunk(state.trunks.remove(i)),
    }
}

/// Inserts `object` at `i` of its collection.
fn insert(state: &mut DesiredState, i: usize, object: Object) {
    match object {
        Object::Uplink(o) => state.uplinks.insert(i, o),
        Object::Network(o) => state.networks.insert(i, o),
        Object::Subnet(o) => state.subnets.insert(i, o),
        Object::Port(o) => state.ports.insert(i, o),
        Object::Router(o) => state.routers.insert(i, o),
        Object::FloatingIp(o) => state.floating_ips.insert(i, o),
        Object::SecurityGroup(o) => state.security_groups.insert(i, o),
        Object::AddressGroup(o) => state.address_groups.insert(i, o),
        Object::QosPolicy(o) => state.qos_policies.insert(i, o),
        Object::Trunk(o) => state.trunks.insert(i, o),
    }
}

/// Puts `object` into `state`: replaces the object with its id in place, or appends it.
/// Returns its index.
pub fn put(state: &mut DesiredState, object: Object) -> usize {
    let collection = object.collection();
    match put_in_place(state, object) {
        Undo::Replaced(i, _) | Undo::Deleted(i, _) => i,
        Undo::Appended(_) => collection.len(state) - 1,
    }
}

/// [`put`], saying how to take it back.
pub fn put_in_place(state: &mut DesiredState, object: Object) -> Undo {
    let collection = object.collection();
    let at = collection.position(state, object.id());
    match (place(state, at, object), at) {
        (Some(old), Some(i)) => Undo::Replaced(i, old),
        _ => Undo::Appended(collection),
    }
}

/// Removes the object `id` of `collection`, keeping the order of the others. `false`
/// when there is none.
pub fn delete(state: &mut DesiredState, collection: Collection, id: &str) -> bool {
    delete_in_place(state, collection, id).is_some()
}

/// [`delete`], saying how to take it back (`None`: there was no such object).
pub fn delete_in_place(state: &mut DesiredState, collection: Collection, id: &str) -> Option<Undo> {
    let i = collection.position(state, id)?;
    Some(Undo::Deleted(i, take(state, collection, i)))
}

/// A copy of the object at `i` of `collection`.
fn object_at(state: &DesiredState, collection: Collection, i: usize) -> Object {
    match collection {
        Collection::Uplinks => Object::Uplink(state.uplinks[i].clone()),
        Collection::Networks => Object::Network(state.networks[i].clone()),
        Collection::Subnets => Object::Subnet(state.subnets[i].clone()),
        Collection::Ports => Object::Port(state.ports[i].clone()),
        Collection::Routers => Object::Router(state.routers[i].clone()),
        Collection::FloatingIps => Object::FloatingIp(state.floating_ips[i].clone()),
        Collection::SecurityGroups => Object::SecurityGroup(state.security_groups[i].clone()),
        Collection::AddressGroups => Object::AddressGroup(state.address_groups[i].clone()),
        Collection::QosPolicies => Object::QosPolicy(state.qos_policies[i].clone()),
        Collection::Trunks => Object::Trunk(state.trunks[i].clone()),
    }
}

/// The `touched` objects of `state` alone, each collection in the order of `state`, and
/// the settings sections left at their defaults: what [`crate::diff::diff_of`] needs of a
/// state that is changed in place, whose earlier version is gone once the change is made.
pub fn excerpt(state: &DesiredState, touched: &[(Collection, String)]) -> DesiredState {
    let mut at: Vec<(usize, Collection, usize)> = Vec::new();
    for (c, id) in touched {
        if let Some(i) = c.position(state, id) {
            let rank = Collection::ALL.iter().position(|x| x == c).unwrap_or(0);
            if !at.contains(&(rank, *c, i)) {
                at.push((rank, *c, i));
            }
        }
    }
    at.sort_by_key(|&(rank, _, i)| (rank, i));
    let mut out = DesiredState::default();
    for (_, c, i) in at {
        place(&mut out, None, object_at(state, c, i));
    }
    out
}

/// Takes back changes made in place, given how (in the order they were made).
pub fn undo(state: &mut DesiredState, log: Vec<Undo>) {
    for u in log.into_iter().rev() {
        match u {
            Undo::Replaced(i, old) => {
                let at = Some(i);
                place(state, at, old);
            }
            Undo::Appended(collection) => {
                let last = collection.len(state) - 1;
                take(state, collection, last);
            }
            Undo::Deleted(i, old) => insert(state, i, old),
        }
    }
}

/// `state` with `changes` made in order.
pub fn edit(state: &DesiredState, changes: Vec<Change>) -> Result<DesiredState, PatchError> {
    let mut next = state.clone();
    edit_in_place(&mut next, changes)?;
    Ok(next)
}

/// Makes `changes` in order to `state` itself, saying how to take them back: a change
/// costs what it touches, not a copy of the state. On error nothing changed.
pub fn edit_in_place(
    state: &mut DesiredState,
    changes: Vec<Change>,
) -> Result<Vec<Undo>, PatchError> {
    let mut log = Vec::with_capacity(changes.len());
    for (k, change) in changes.into_iter().enumerate() {
        match change {
            Change::Put(object) => log.push(put_in_place(state, object)),
            Change::Delete { collection, id } => match delete_in_place(state, collection, &id) {
                Some(u) => log.push(u),
                None => {
                    undo(state, log);
                    return Err(PatchError::UnknownObject {
                        collection,
                        id,
                        change: k,
                    });
                }
            },
        }
    }
    Ok(log)
}

/// `state` with `changes` (as sent) made in order, and the changes read; a put object
/// that does not read is reported at the index it would have had.
pub fn edit_raw(
    state: &DesiredState,
    changes: Vec<RawChange>,
) -> Result<(DesiredState, Vec<Change>), PatchError> {
    let mut next = state.clone();
    let (_, typed) = edit_raw_in_place(&mut next, changes)?;
    Ok((next, typed))
}

/// [`edit_raw`] made to `state` itself, as [`edit_in_place`]: how to take the changes
/// back, and the changes read. On error nothing changed.
pub fn edit_raw_in_place(
    state: &mut DesiredState,
    changes: Vec<RawChange>,
) -> Result<(Vec<Undo>, Vec<Change>), PatchError> {
    let mut log = Vec::with_capacity(changes.len());
    let mut typed = Vec::with_capacity(changes.len());
    for (k, change) in changes.into_iter().enumerate() {
        let done = match change {
            RawChange::Put { collection, object } => {
                let id = object.get(collection.key_field()).and_then(Value::as_str);
                let index = id
                    .and_then(|id| collection.position(state, id))
                    .unwrap_or_else(|| collection.len(state));
                let path = format!("{collection}[{index}]");
                Object::from_json(collection, object, &path)
                    .map_err(PatchError::Invalid)
                    .map(|object| {
                        log.push(put_in_place(state, object.clone()));
                        typed.push(Change::Put(object));
                    })
            }
            RawChange::Delete { collection, id } => match delete_in_place(state, collection, &id) {
                Some(u) => {
                    log.push(u);
                    typed.push(Change::Delete { collection, id });
                    Ok(())
                }
                None => Err(PatchError::UnknownObject {
                    collection,
                    id,
                    change: k,
                }),
            },
        };
        if let Err(e) = done {
            undo(state, log);
            return Err(e);
        }
    }
    Ok((log, typed))
}

/// What a batch of changes is, beside the state it makes: the objects it touches (so that
/// the diff looks at those alone) and its journal form (so that the store appends it
/// instead of writing the whole state).
#[derive(Clone, Debug, PartialEq)]
pub struct Edits {
    /// Collection and key of each object put or deleted, in batch order (a key touched
    /// twice is listed twice).
    pub touched: Vec<(Collection, String)>,
    /// The changes in the journal's form: see [`journal_form`].
    pub journal: Value,
}

impl Edits {
    /// The edits of `changes`.
    pub fn of(changes: &[Change]) -> Edits {
        Edits {
            touched: changes
                .iter()
                .map(|c| match c {
                    Change::Put(o) => (o.collection(), o.id().to_owned()),
                    Change::Delete { collection, id } => (*collection, id.clone()),
                })
                .collect(),
            journal: journal_form(changes),
        }
    }

    /// The edits of `changes` made in place as `log` says: each journal record also
    /// names the index its object had in its collection, or that it is new, so that the
    /// store finds its place without a scan of the collection.
    pub fn of_placed(changes: &[Change], log: &[Undo]) -> Edits {
        let mut edits = Edits::of(changes);
        if let Value::Array(records) = &mut edits.journal {
            for (record, undo) in records.iter_mut().zip(log) {
                match undo {
                    Undo::Replaced(at, _) | Undo::Deleted(at, _) => record["at"] = Value::from(*at),
                    Undo::Appended(_) => record["new"] = Value::Bool(true),
                }
            }
        }
        edits
    }
}

/// `changes` as the store's journal records them (see [`crate::store`]): the same edits,
/// made on the serialised state, each object in its serialised form.
pub fn journal_form(changes: &[Change]) -> Value {
    Value::Array(
        changes
            .iter()
            .map(|change| match change {
                Change::Put(object) => serde_json::json!({
                    "op": "put",
                    "collection": object.collection().name(),
                    "key": object.collection().key_field(),
                    "object": object.to_value(),
                }),
                Change::Delete { collection, id } => serde_json::json!({
                    "op": "delete",
                    "collection": collection.name(),
                    "key": collection.key_field(),
                    "id": id,
                }),
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn state() -> DesiredState {
        DesiredState::from_toml_str(
            r#"
            [[networks]]
            id = "net-a"
            network_type = "local"

            [[ports]]
            id = "vm1"
            network_id = "net-a"
            mac_address = "fa:16:3e:00:00:01"
            binding = { driver = "mem" }

            [[ports]]
            id = "vm2"
            network_id = "net-a"
            mac_address = "fa:16:3e:00:00:02"
            binding = { driver = "mem" }
            "#,
        )
        .unwrap()
    }

    #[test]
    fn kinds_parse_singular_plural_and_dashed() {
        for c in Collection::ALL {
            assert_eq!(Collection::parse(c.name()), Some(c));
            assert_eq!(Collection::parse(c.singular()), Some(c));
        }
        assert_eq!(
            Collection::parse("floating-ip"),
            Some(Collection::FloatingIps)
        );
        assert_eq!(Collection::parse("portz"), None);
    }

    #[test]
    fn put_replaces_in_place_and_appends_new() {
        let s = state();
        let mut vm1 = s.ports[0].clone();
        vm1.mac_address = "fa:16:3e:00:00:09".into();
        let mut vm3 = vm1.clone();
        vm3.id = "vm3".into();
        let next = edit(
            &s,
            vec![
                Change::Put(Object::Port(vm1)),
                Change::Put(Object::Port(vm3)),
            ],
        )
        .unwrap();
        let ids: Vec<_> = next.ports.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["vm1", "vm2", "vm3"]);
        assert_eq!(next.ports[0].mac_address, "fa:16:3e:00:00:09");
    }

    #[test]
    fn delete_keeps_order_and_refuses_unknown_ids() {
        let s = state();
        let del = |id: &str| Change::Delete {
            collection: Collection::Ports,
            id: id.into(),
        };
        let next = edit(&s, vec![del("vm1")]).unwrap();
        assert_eq!(next.ports.len(), 1);
        assert_eq!(next.ports[0].id, "vm2");
        let err = edit(&s, vec![del("vm1"), del("vm1")]).unwrap_err();
        assert_eq!(
            err,
            PatchError::UnknownObject {
                collection: Collection::Ports,
                id: "vm1".into(),
                change: 1
            }
        );
    }

    /// Changes made in place and taken back leave the state as it was, whatever they
    /// were (replaced, appended, deleted, in any order).
    #[test]
    fn undo_takes_changes_back() {
        let s = state();
        let mut vm1 = s.ports[0].clone();
        vm1.mac_address = "fa:16:3e:00:00:09".into();
        let mut vm3 = vm1.clone();
        vm3.id = "vm3".into();
        let del = |id: &str| Change::Delete {
            collection: Collection::Ports,
            id: id.into(),
        };
        let changes = vec![
            Change::Put(Object::Port(vm3.clone())),
            del("vm1"),
            Change::Put(Object::Port(vm1)),
            del("vm3"),
            Change::Put(Object::Port(vm3)),
        ];
        let mut next = s.clone();
        let log = edit_in_place(&mut next, changes.clone()).unwrap();
        assert_eq!(next, edit(&s, changes.clone()).unwrap());
        undo(&mut next, log);
        assert_eq!(next, s);
        let mut failing = changes;
        failing.push(del("vm9"));
        let mut next = s.clone();
        assert!(edit_in_place(&mut next, failing).is_err());
        assert_eq!(next, s, "a refused batch changes nothing");
    }

    #[test]
    fn a_bad_object_is_reported_at_its_index() {
        let s = state();
        let bad = json!({ "id": "vm2", "network_id": "net-a", "mac_address": 5,
                          "binding": { "driver": "mem" } });
        let err = edit_raw(
            &s,
            vec![RawChange::Put {
                collection: Collection::Ports,
                object: bad.clone(),
            }],
        )
        .unwrap_err();
        let PatchError::Invalid(e) = err else {
            panic!("{err:?}")
        };
        assert_eq!(e.path, "ports[1]");
        let mut new = bad;
        new["id"] = json!("vm9");
        let err = edit_raw(
            &s,
            vec![RawChange::Put {
                collection: Collection::Ports,
                object: new,
            }],
        )
        .unwrap_err();
        assert!(matches!(err, PatchError::Invalid(e) if e.path == "ports[2]"));
    }
}
