//! Validation of a change made of ports alone, in what it touches: each new or replaced
//! port is checked on its own, then against indexes of what the rest of the state claims
//! (the MACs and addresses of every network, the interfaces and sockets bound), instead
//! of the whole state again.
//!
//! It only ever says yes for sure: an answer is the [`Validated`] view that [`validate`]
//! gives the resulting state (the test builds check that it is), and anything it cannot
//! settle alone (an error in the port, a MAC or address someone else holds, a port with
//! a floating IP, a port touched twice) makes it give up, so that the caller runs
//! [`validate`], which reports every problem with its path. A refused change costs what
//! it did before; an accepted one costs what its ports are.
//!
//! [`validate`]: super::validate

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use super::port::PortOwners;
use super::{
    Binding, Checked, Checker, Hosts, Network, Port, QosPolicy, SecurityGroup, Subnet, Validated,
};
use crate::model;

/// Who holds an address or a kernel resource: a port (by id), or another object.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Holder {
    Port(String),
    Other,
}

/// What the ports of a valid state are checked against: the objects they refer to, by
/// id, and what every object claims, by value. Made from a [`Validated`] view and kept in
/// step with it by [`revalidate_ports`] (and [`PortIndex::undo`]).
#[derive(Debug)]
pub struct PortIndex {
    networks: Checked<Network>,
    subnets: Checked<Subnet>,
    groups: Checked<SecurityGroup>,
    qos: Checked<QosPolicy>,
    hosts: Hosts,
    macs: HashMap<(usize, [u8; 6]), String>,
    ips: HashMap<(usize, Ipv4Addr), Holder>,
    ips6: HashMap<(usize, Ipv6Addr), String>,
    bound: HashMap<String, Holder>,
    /// Ports a floating IP maps to: a change of one is left to the whole validation.
    floating: HashSet<String>,
    /// Trunks' parents and subports: a change of one is left to the whole validation
    /// (whether it may be without a binding, its network, are the trunk's rules).
    trunked: HashSet<String>,
}

/// What [`revalidate_ports`] changed in the index, to be taken back with
/// [`PortIndex::undo`] when the change is not committed.
#[derive(Debug, Default)]
pub struct IndexUndo {
    removed: Vec<Arc<Port>>,
    added: Vec<Arc<Port>>,
}

fn checked<T: Clone>(items: &[T], id: impl Fn(&T) -> &str) -> Checked<T> {
    Checked {
        items: items.to_vec(),
        ok: vec![true; items.len()],
        by_id: items
            .iter()
            .enumerate()
            .map(|(i, x)| (id(x).to_owned(), i))
            .collect(),
    }
}

/// The kernel resource a binding claims (as [`Checker::bind`] names it), if any.
fn claim(binding: &Binding) -> Option<String> {
    match binding {
        Binding::Afxdp { interface, .. } | Binding::Tap { interface } => {
            Some(format!("interface {interface}"))
        }
        Binding::VhostUser { socket, .. } => Some(format!("socket {socket}")),
        Binding::Mem => None,
    }
}

impl PortIndex {
    /// The index of a valid state's view.
    pub fn new(valid: &Validated) -> PortIndex {
        let mut index = PortIndex {
            networks: checked(&valid.networks, |n| &n.id),
            subnets: checked(&valid.subnets, |s| &s.id),
            groups: checked(&valid.security_groups, |g| &g.id),
            qos: checked(&valid.qos_policies, |q| &q.id),
            hosts: valid.hosts.clone(),
            macs: HashMap::new(),
            ips: HashMap::new(),
            ips6: HashMap::new(),
            bound: HashMap::new(),
            floating: HashSet::new(),
            trunked: HashSet::new(),
        };
        let other = |ips: &mut HashMap<_, _>, network: usize, ip: Ipv4Addr| {
            ips.insert((network, ip), Holder::Other);
        };
        for s in valid.subnets.iter() {
            if let Some(gw) = s.gateway_ip {
                other(&mut index.ips, s.network, gw);
            }
            if let Some(ip) = s.dhcp_server_ip {
                other(&mut index.ips, s.network, ip);
            }
        }
        for r in valid.routers.iter() {
            if let Some(g) = r.external_gateway {
                other(&mut index.ips, g.network, g.ip);
            }
            // A port taking a router's MAC is left to the whole validation to refuse.
            if let Some(mac) = r.mac {
                for n in r.networks(&valid.subnets) {
                    index.macs.insert((n, mac), format!("router {}", r.id));
                }
            }
        }
        for f in valid.floating_ips.iter() {
            other(&mut index.ips, f.network, f.address);
            if let Some(t) = f.target {
                index.floating.insert(valid.ports[t.port].id.clone());
            }
        }
        for t in valid.trunks.iter() {
            index.trunked.insert(valid.ports[t.parent].id.clone());
            for s in &t.sub_ports {
                index.trunked.insert(valid.ports[s.port].id.clone());
            }
        }
        for u in valid.uplinks.iter() {
            if let Some(what) = claim(&u.binding) {
                index.bound.insert(what, Holder::Other);
            }
        }
        for p in &valid.ports {
            index.add(p);
        }
        index
    }

    /// What port `p` claims, with the index's values.
    fn claims(&self, p: &Port) -> PortClaims {
        PortClaims {
            macs: p.macs().into_iter().map(|m| (p.network, m)).collect(),
            ips: p
                .fixed_ips
                .iter()
                .map(|f| (self.subnets.items[f.subnet].network, f.ip))
                .collect(),
            ips6: p.fixed_ips6.iter().map(|&ip| (p.network, ip)).collect(),
            bound: p.binding.as_ref().and_then(claim),
        }
    }

    /// Whether anyone holds what `p` would claim.
    fn collides(&self, p: &Port) -> bool {
        let c = self.claims(p);
        c.macs.iter().any(|k| self.macs.contains_key(k))
            || c.ips.iter().any(|k| self.ips.contains_key(k))
            || c.ips6.iter().any(|k| self.ips6.contains_key(k))
            || c.bound.is_some_and(|b| self.bound.contains_key(&b))
    }

    fn add(&mut self, p: &Port) {
        let c = self.claims(p);
        for k in c.macs {
            self.macs.insert(k, p.id.clone());
        }
        for k in c.ips {
            self.ips.insert(k, Holder::Port(p.id.clone()));
        }
        for k in c.ips6 {
            self.ips6.insert(k, p.id.clone());
        }
        if let Some(b) = c.bound {
            self.bound.insert(b, Holder::Port(p.id.clone()));
        }
    }

    fn remove(&mut self, p: &Port) {
        let c = self.claims(p);
        for k in c.macs {
            self.macs.remove(&k);
        }
        for k in c.ips {
            self.ips.remove(&k);
        }
        for k in c.ips6 {
            self.ips6.remove(&k);
        }
        if let Some(b) = c.bound {
            self.bound.remove(&b);
        }
    }

    /// Takes back what [`revalidate_ports`] did to the index.
    pub fn undo(&mut self, undo: IndexUndo) {
        for p in &undo.added {
            self.remove(p);
        }
        for p in &undo.removed {
            self.add(p);
        }
    }

    /// Checks port `p` (at `i` in its state) alone, as [`validate`](super::validate)
    /// checks it; `None` on any error.
    fn check(&self, i: usize, p: &model::Port) -> Option<Port> {
        let mut c = Checker::default();
        c.id(
            format!("ports[{i}].id"),
            &p.id,
            "port",
            &mut HashMap::new(),
            i,
        );
        let (mut port, _) = c.port(
            i,
            p,
            0,
            &self.networks,
            &self.subnets,
            &self.groups,
            &self.hosts,
            &mut PortOwners::default(),
        );
        let own = p.qos_policy_id.as_ref().and_then(|id| {
            c.reference(
                &format!("ports[{i}].qos_policy_id"),
                id,
                "QoS policy",
                &self.qos,
            )
        });
        let inherited = self
            .networks
            .items
            .get(port.network)
            .and_then(|n| n.qos_policy);
        port.qos_policy = own.or(inherited);
        c.errors.is_empty().then_some(port)
    }
}

/// What one port claims.
struct PortClaims {
    macs: Vec<(usize, [u8; 6])>,
    ips: Vec<(usize, Ipv4Addr)>,
    ips6: Vec<(usize, Ipv6Addr)>,
    bound: Option<String>,
}

/// The view of `state`, which differs from the state of `valid` in the ports `touched`
/// alone (each put, replacing in place or appending, or deleted, keeping the order):
/// `valid` with those ports checked again, and `index` brought in step with it. `None`
/// (and `index` as it was) when it cannot tell; see the module documentation.
pub fn revalidate_ports(
    index: &mut PortIndex,
    valid: &Validated,
    state: &model::DesiredState,
    touched: &[&str],
) -> Option<(Validated, IndexUndo)> {
    let distinct: HashSet<&str> = touched.iter().copied().collect();
    if distinct.len() != touched.len()
        || touched
            .iter()
            .any(|id| index.floating.contains(*id) || index.trunked.contains(*id))
    {
        return None;
    }
    let mut olds: Vec<(usize, &Arc<Port>)> = Vec::new();
    let mut news: Vec<(usize, &model::Port)> = Vec::new();
    for &id in touched {
        if let Some(i) = valid.ports.iter().position(|p| p.id == id) {
            olds.push((i, &valid.ports[i]));
        }
        if let Some(i) = state.ports.iter().position(|p| p.id == id) {
            news.push((i, &state.ports[i]));
        }
    }
    news.sort_by_key(|(i, _)| *i);
    let mut undo = IndexUndo::default();
    for (_, p) in &olds {
        index.remove(p);
        undo.removed.push(Arc::clone(p));
    }
    let mut checked: HashMap<&str, Arc<Port>> = HashMap::new();
    for &(i, p) in &news {
        let port = index.check(i, p).filter(|port| !index.collides(port));
        let Some(port) = port else {
            index.undo(undo);
            return None;
        };
        let port = Arc::new(port);
        index.add(&port);
        undo.added.push(Arc::clone(&port));
        checked.insert(p.id.as_str(), port);
    }
    // The order of the state: the old ports, those deleted left out and those replaced in
    // place, then the new ones in the order they were appended.
    let mut ports = Vec::with_capacity(state.ports.len());
    // Copied a run of untouched ports at a time: the touched ones are where `olds` found
    // them (no lookup of every port's id).
    let mut removed_before = vec![0usize; valid.ports.len()];
    let mut removed = 0;
    let mut at_old: Vec<usize> = olds.iter().map(|&(i, _)| i).collect();
    at_old.sort_unstable();
    let mut from = 0;
    for k in at_old.into_iter().chain(std::iter::once(valid.ports.len())) {
        for slot in &mut removed_before[from..k] {
            *slot = removed;
        }
        ports.extend(valid.ports[from..k].iter().map(Arc::clone));
        let Some(p) = valid.ports.get(k) else {
            break;
        };
        removed_before[k] = removed;
        match checked.remove(p.id.as_str()) {
            Some(new) => ports.push(new),
            None => removed += 1,
        }
        from = k + 1;
    }
    for &(_, p) in &news {
        if let Some(new) = checked.remove(p.id.as_str()) {
            ports.push(new);
        }
    }
    if ports.len() != state.ports.len() {
        index.undo(undo);
        return None;
    }
    let mut next = valid.clone();
    next.ports = ports;
    if removed > 0 && valid.floating_ips.iter().any(|f| f.target.is_some()) {
        for f in Arc::make_mut(&mut next.floating_ips) {
            if let Some(t) = f.target.as_mut() {
                t.port -= removed_before[t.port];
            }
        }
    }
    if removed > 0 && !valid.trunks.is_empty() {
        for t in Arc::make_mut(&mut next.trunks) {
            t.parent -= removed_before[t.parent];
            for s in &mut t.sub_ports {
                s.port -= removed_before[s.port];
            }
        }
    }
    Some((next, undo))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::model::{DesiredState, FixedIp};
    use crate::validate::validate;

    const STATE: &str = r#"
        [[uplinks]]
        name = "uplink0"
        physnet = "physnet1"
        binding = { driver = "mem" }

        [[networks]]
        id = "net-a"
        network_type = "vlan"
        physical_network = "physnet1"
        segmentation_id = 100

        [[networks]]
        id = "net-b"
        network_type = "local"

        [[networks]]
        id = "ext"
        network_type = "vlan"
        physical_network = "physnet1"
        segmentation_id = 102

        [[subnets]]
        id = "sub-a"
        network_id = "net-a"
        cidr = "198.18.1.0/29"
        gateway_ip = "198.18.1.1"

        [[subnets]]
        id = "sub-b"
        network_id = "net-b"
        cidr = "198.18.2.0/29"
        gateway_ip = "198.18.2.1"

        [[subnets]]
        id = "sub-ext"
        network_id = "ext"
        cidr = "203.0.113.0/28"
        gateway_ip = "203.0.113.1"

        [[routers]]
        id = "r1"
        interfaces = ["sub-a"]
        external_gateway_info = { network_id = "ext", external_fixed_ip = "203.0.113.2" }

        [[security_groups]]
        id = "web"

        [[ports]]
        id = "p0"
        network_id = "net-a"
        mac_address = "fa:16:3e:00:00:01"
        fixed_ips = [{ subnet_id = "sub-a", ip_address = "198.18.1.2" }]
        binding = { driver = "mem" }

        [[ports]]
        id = "p1"
        network_id = "net-b"
        mac_address = "fa:16:3e:00:00:02"
        fixed_ips = [{ subnet_id = "sub-b", ip_address = "198.18.2.2" }]
        binding = { driver = "mem" }

        [[ports]]
        id = "p2"
        network_id = "net-a"
        mac_address = "fa:16:3e:00:00:03"
        fixed_ips = [{ subnet_id = "sub-a", ip_address = "198.18.1.3" }]
        binding = { driver = "mem" }

        [[floating_ips]]
        id = "fip1"
        floating_ip_address = "203.0.113.5"
        port_id = "p2"
    "#;

    /// One random edit of a port: ids, networks, MACs, addresses and bindings from small
    /// sets, so that collisions (and errors) are frequent.
    #[derive(Clone, Debug)]
    enum Edit {
        Put {
            id: u8,
            network: u8,
            mac: u8,
            ip: u8,
            tap: Option<u8>,
            group: bool,
        },
        Delete(u8),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            3 => (0..6u8, 0..3u8, 0..6u8, 0..8u8, proptest::option::of(0..3u8), any::<bool>())
                .prop_map(|(id, network, mac, ip, tap, group)| Edit::Put {
                    id, network, mac, ip, tap, group
                }),
            1 => (0..6u8).prop_map(Edit::Delete),
        ]
    }

    fn make(state: &mut DesiredState, e: &Edit) -> String {
        match *e {
            Edit::Put {
                id,
                network,
                mac,
                ip,
                tap,
                group,
            } => {
                let (net, sub, prefix) = [
                    ("net-a", "sub-a", "198.18.1"),
                    ("net-b", "sub-b", "198.18.2"),
                    ("net-c", "sub-a", "198.18.1"),
                ][network as usize];
                let mut p = DesiredState::from_toml_str(STATE).unwrap().ports[0].clone();
                p.id = format!("p{id}");
                p.network_id = net.into();
                p.mac_address = format!("fa:16:3e:00:00:{:02x}", mac + 1);
                p.fixed_ips = vec![FixedIp {
                    subnet_id: sub.into(),
                    ip_address: format!("{prefix}.{ip}"),
                }];
                p.binding = Some(match tap {
                    Some(t) => model::Binding::Tap {
                        interface: format!("tap{t}"),
                    },
                    None => model::Binding::Mem {},
                });
                p.security_groups = if group { vec!["web".into()] } else { vec![] };
                let id = p.id.clone();
                crate::patch::put(state, crate::patch::Object::Port(p));
                id
            }
            Edit::Delete(id) => {
                let id = format!("p{id}");
                crate::patch::delete(state, crate::patch::Collection::Ports, &id);
                id
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Over random sequences of batches of port edits, an answer of the incremental
        /// check is the whole validation's, and the index stays the one of the running
        /// view (also after a change that is not committed).
        #[test]
        fn the_incremental_verdict_is_the_whole_one(
            batches in proptest::collection::vec(
                (proptest::collection::vec(edit(), 1..3), any::<bool>()), 1..24)
        ) {
            let mut state = DesiredState::from_toml_str(STATE).unwrap();
            let mut valid = validate(&state).unwrap();
            let mut index = PortIndex::new(&valid);
            for (batch, commit) in &batches {
                let mut next = state.clone();
                let touched: Vec<String> = batch.iter().map(|e| make(&mut next, e)).collect();
                let touched: Vec<&str> = touched.iter().map(String::as_str).collect();
                let whole = validate(&next);
                match revalidate_ports(&mut index, &valid, &next, &touched) {
                    Some((v, undo)) => {
                        prop_assert_eq!(whole.as_ref(), Ok(&v), "{:?}", batch);
                        if *commit {
                            state = next;
                            valid = v;
                        } else {
                            index.undo(undo);
                        }
                    }
                    None => {
                        if let (Ok(v), true) = (whole, *commit) {
                            state = next;
                            index = PortIndex::new(&v);
                            valid = v;
                        }
                    }
                }
                let fresh = PortIndex::new(&valid);
                prop_assert_eq!(&index.macs, &fresh.macs);
                prop_assert_eq!(&index.ips, &fresh.ips);
                prop_assert_eq!(&index.ips6, &fresh.ips6);
                prop_assert_eq!(&index.bound, &fresh.bound);
            }
        }
    }

    #[test]
    fn a_port_change_is_answered_alone() {
        let state = DesiredState::from_toml_str(STATE).unwrap();
        let valid = validate(&state).unwrap();
        let mut index = PortIndex::new(&valid);
        let mut next = state.clone();
        next.ports[0].fixed_ips[0].ip_address = "198.18.1.4".into();
        crate::patch::delete(&mut next, crate::patch::Collection::Ports, "p1");
        let mut p9 = next.ports[0].clone();
        p9.id = "p9".into();
        p9.mac_address = "fa:16:3e:00:00:09".into();
        p9.fixed_ips[0].ip_address = "198.18.1.5".into();
        next.ports.push(p9);
        let (v, _) = revalidate_ports(&mut index, &valid, &next, &["p0", "p1", "p9"])
            .expect("answered alone");
        assert_eq!(Ok(&v), validate(&next).as_ref());
        assert_eq!(v.floating_ips[0].target.unwrap().port, 1, "p2 moved up");
        // Taken: the gateway, another port's address, the floating IP's port.
        for (id, ip) in [("p0", "198.18.1.1"), ("p0", "198.18.1.3")] {
            let mut next = state.clone();
            next.ports[0].fixed_ips[0].ip_address = ip.into();
            assert!(
                revalidate_ports(&mut index, &valid, &next, &[id]).is_none(),
                "{ip}"
            );
        }
        let mut next = state.clone();
        crate::patch::delete(&mut next, crate::patch::Collection::Ports, "p2");
        assert!(revalidate_ports(&mut index, &valid, &next, &["p2"]).is_none());
    }
}
