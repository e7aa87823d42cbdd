//! Trunks (Neutron's trunk extension): a parent port bound on this host and subports,
//! each a port of another network reached by its VLAN ID in the parent's frames.
//!
//! The rules are Neutron's (`neutron.services.trunk.rules`): the parent exists and is in
//! one trunk; a subport exists, is neither a parent nor in another trunk, and its
//! network's MTU is not above the parent's; segmentation IDs are 1–4094 and distinct in a
//! trunk. Pollux adds what its data plane needs: the parent is bound here (it has the
//! interface); a subport has no binding of its own (its frames ride on the parent's) and
//! is on a network other than the parent's and its trunk's other subports' (a network
//! reached twice through one interface would loop).

use std::collections::{HashMap, HashSet};

use super::{Checked, Checker, Network, Port};
use crate::model;

/// A checked trunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trunk {
    /// Unique id.
    pub id: String,
    /// Index of the parent port.
    pub parent: usize,
    /// Its subports.
    pub sub_ports: Vec<SubPort>,
}

/// A checked subport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubPort {
    /// Index of the port.
    pub port: usize,
    /// Its VLAN ID in the parent's frames.
    pub vid: u16,
}

/// The ids of the ports that the trunks of `trunks` name as subports: the port checker
/// lets them be without a binding.
pub(super) fn subport_ids(trunks: &[model::Trunk]) -> HashSet<String> {
    trunks
        .iter()
        .flat_map(|t| t.sub_ports.iter().map(|s| s.port_id.clone()))
        .collect()
}

impl Checker {
    pub(super) fn trunks(
        &mut self,
        trunks: &[model::Trunk],
        ports: &Checked<Port>,
        networks: &Checked<Network>,
    ) -> Vec<Trunk> {
        let mut ids = HashMap::new();
        let parents: HashSet<&str> = trunks.iter().map(|t| t.port_id.as_str()).collect();
        // Port id → where it is first a parent, or a subport.
        let mut parent_of: HashMap<&str, usize> = HashMap::new();
        let mut subport_of: HashMap<&str, String> = HashMap::new();
        let mut out = Vec::with_capacity(trunks.len());
        for (i, t) in trunks.iter().enumerate() {
            let base = format!("trunks[{i}]");
            self.id(format!("{base}.id"), &t.id, "trunk", &mut ids, i);
            let ppath = format!("{base}.port_id");
            let parent = self.reference(&ppath, &t.port_id, "port", ports);
            if let Some(p) = parent {
                if let Some(&first) = parent_of.get(t.port_id.as_str()) {
                    self.err(
                        &ppath,
                        format!(
                            "port {} is already the parent of trunks[{first}]",
                            t.port_id
                        ),
                    );
                } else {
                    parent_of.insert(&t.port_id, i);
                }
                if ports.items[p].binding.is_none() {
                    self.err(
                        &ppath,
                        format!(
                            "the parent port {} is not bound on this host (it needs a binding: \
                             its interface carries the subports' frames)",
                            t.port_id
                        ),
                    );
                }
            }
            let mut vids: HashMap<u16, usize> = HashMap::new();
            let mut nets: HashMap<usize, usize> = HashMap::new();
            let mut sub_ports = Vec::with_capacity(t.sub_ports.len());
            for (j, s) in t.sub_ports.iter().enumerate() {
                let sbase = format!("{base}.sub_ports[{j}]");
                let vid = match s.segmentation_type.as_str() {
                    "vlan" => match u16::try_from(s.segmentation_id) {
                        Ok(v @ 1..=4094) => match vids.get(&v) {
                            Some(&k) => {
                                self.err(
                                    format!("{sbase}.segmentation_id"),
                                    format!("VLAN ID {v} is already used by sub_ports[{k}]"),
                                );
                                None
                            }
                            None => {
                                vids.insert(v, j);
                                Some(v)
                            }
                        },
                        _ => {
                            self.err(
                                format!("{sbase}.segmentation_id"),
                                format!("{} is not a VLAN ID (1-4094)", s.segmentation_id),
                            );
                            None
                        }
                    },
                    "inherit" => {
                        self.err(
                            format!("{sbase}.segmentation_type"),
                            "not supported: inherit (segmentation from the subport's \
                             network); give segmentation_type = \"vlan\" and its VLAN ID",
                        );
                        None
                    }
                    other => {
                        self.err(
                            format!("{sbase}.segmentation_type"),
                            format!("{other:?} is not a segmentation type (vlan)"),
                        );
                        None
                    }
                };
                let spath = format!("{sbase}.port_id");
                let Some(port) = self.reference(&spath, &s.port_id, "port", ports) else {
                    continue;
                };
                let before = self.errors.len();
                if s.port_id == t.port_id {
                    self.err(&spath, "a trunk's parent is not one of its subports");
                } else if parents.contains(s.port_id.as_str()) {
                    self.err(
                        &spath,
                        format!("port {} is the parent of a trunk", s.port_id),
                    );
                }
                if let Some(other) = subport_of.get(s.port_id.as_str()) {
                    self.err(
                        &spath,
                        format!("port {} is already a subport of {other}", s.port_id),
                    );
                } else {
                    subport_of.insert(&s.port_id, format!("{base}.sub_ports[{j}]"));
                }
                let sp = &ports.items[port];
                if sp.binding.is_some() || sp.remote_host.is_some() {
                    self.err(
                        &spath,
                        format!(
                            "port {} is bound itself (binding or another binding_host_id): a \
                             subport has no interface, its frames ride on its parent's",
                            s.port_id
                        ),
                    );
                }
                if let Some(p) = parent {
                    let (pn, sn) = (ports.items[p].network, sp.network);
                    if sn == pn {
                        self.err(
                            &spath,
                            format!(
                                "port {} is on the parent's network {}: a subport is on \
                                 another network",
                                s.port_id, networks.items[sn].id
                            ),
                        );
                    } else if networks.items[sn].mtu > networks.items[pn].mtu {
                        self.err(
                            &spath,
                            format!(
                                "the MTU of port {}'s network ({}) is larger than the \
                                 parent's network's ({})",
                                s.port_id, networks.items[sn].mtu, networks.items[pn].mtu
                            ),
                        );
                    }
                }
                if let Some(&k) = nets.get(&sp.network) {
                    self.err(
                        &spath,
                        format!(
                            "sub_ports[{k}] is already on network {}",
                            networks.items[sp.network].id
                        ),
                    );
                } else {
                    nets.insert(sp.network, j);
                }
                if let (Some(vid), true) = (vid, self.clean(before)) {
                    sub_ports.push(SubPort { port, vid });
                }
            }
            if let Some(parent) = parent {
                out.push(Trunk {
                    id: t.id.clone(),
                    parent,
                    sub_ports,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use crate::model::DesiredState;
    use crate::validate::validate;

    const STATE: &str = r#"
        [[networks]]
        id = "net-a"
        network_type = "local"
        [[networks]]
        id = "net-b"
        network_type = "local"
        [[networks]]
        id = "net-c"
        network_type = "local"
        mtu = 9000

        [[ports]]
        id = "parent"
        network_id = "net-a"
        mac_address = "fa:16:3e:00:00:01"
        binding = { driver = "mem" }
        [[ports]]
        id = "sub-b"
        network_id = "net-b"
        mac_address = "fa:16:3e:00:00:01"
        [[ports]]
        id = "sub-c"
        network_id = "net-c"
        mac_address = "fa:16:3e:00:00:03"
        [[ports]]
        id = "vm-a"
        network_id = "net-a"
        mac_address = "fa:16:3e:00:00:04"
        binding = { driver = "mem" }
        [[ports]]
        id = "lone"
        network_id = "net-b"
        mac_address = "fa:16:3e:00:00:05"
    "#;

    fn errors(trunks: &str) -> Vec<String> {
        let state: DesiredState = toml::from_str(&format!("{STATE}\n{trunks}")).unwrap();
        match validate(&state) {
            Ok(_) => Vec::new(),
            Err(e) => e.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn a_trunk_with_a_subport_is_valid_and_the_subport_needs_no_binding() {
        let state: DesiredState = toml::from_str(&format!(
            "{STATE}\n{}",
            r#"
            [[trunks]]
            id = "t1"
            port_id = "parent"
            sub_ports = [{ port_id = "sub-b", segmentation_type = "vlan", segmentation_id = 100 }]
            [[ports]]
            id = "other"
            network_id = "net-c"
            mac_address = "fa:16:3e:00:00:09"
            binding = { driver = "mem" }
            "#
        ))
        .unwrap();
        let mut state = state;
        // `lone` and `sub-c` are nobody's subports: without a binding they are refused.
        state.ports.retain(|p| p.id != "lone" && p.id != "sub-c");
        // Jumbo frames do not compile (yet): net-c is an ordinary network here.
        state.networks[2].mtu = None;
        let v = validate(&state).expect("valid");
        assert_eq!(v.trunks.len(), 1);
        assert_eq!(v.trunks[0].parent, 0);
        assert_eq!(v.trunks[0].sub_ports[0].vid, 100);
        assert_eq!(v.ports[v.trunks[0].sub_ports[0].port].id, "sub-b");
        // Compiled: the subport is a port of the snapshot, reached through the parent,
        // with no driver of its own to open.
        let c = crate::compile::compile(&v, &Default::default(), 1).unwrap();
        let trunks: Vec<_> = c.snapshot.trunks().iter().collect();
        assert_eq!(trunks.len(), 1);
        let (parent, vid, sub) = trunks[0];
        assert_eq!(vid, 100);
        assert!(c.ports.iter().any(|p| p.id == parent));
        assert!(c.ports.iter().all(|p| p.id != sub));
        assert_eq!(c.snapshot.transmit_port(sub), parent);
        assert_eq!(
            c.snapshot
                .egress_vid(sub, pollux_dataplane::ident::NetworkSlot(1)),
            Some(100)
        );
        assert_eq!(
            c.snapshot
                .egress(sub, pollux_dataplane::ident::NetworkSlot(1)),
            (Some(100), parent)
        );
        assert!(c
            .snapshot
            .port_stages(parent)
            .contains(pollux_dataplane::pipeline::Stage::Trunk));
    }

    #[test]
    fn neutron_rules_are_refused_with_their_paths() {
        let e = errors(
            r#"
            [[trunks]]
            id = "t1"
            port_id = "parent"
            sub_ports = [
                { port_id = "sub-b", segmentation_type = "vlan", segmentation_id = 100 },
                { port_id = "sub-c", segmentation_type = "vlan", segmentation_id = 100 },
                { port_id = "vm-a", segmentation_type = "vlan", segmentation_id = 4095 },
                { port_id = "lone", segmentation_type = "inherit", segmentation_id = 0 },
            ]
            [[trunks]]
            id = "t2"
            port_id = "sub-b"
            sub_ports = [{ port_id = "nope", segmentation_type = "vlan", segmentation_id = 7 }]
            "#,
        );
        let want = [
            "trunks[0].sub_ports[0].port_id: port sub-b is the parent of a trunk",
            "trunks[0].sub_ports[1].segmentation_id: VLAN ID 100 is already used by sub_ports[0]",
            "trunks[0].sub_ports[1].port_id: the MTU of port sub-c's network (9000) is larger than the parent's network's (1500)",
            "trunks[0].sub_ports[2].segmentation_id: 4095 is not a VLAN ID (1-4094)",
            "trunks[0].sub_ports[2].port_id: port vm-a is bound itself (binding or another binding_host_id): a subport has no interface, its frames ride on its parent's",
            "trunks[0].sub_ports[2].port_id: port vm-a is on the parent's network net-a: a subport is on another network",
            "trunks[0].sub_ports[3].segmentation_type: not supported: inherit (segmentation from the subport's network); give segmentation_type = \"vlan\" and its VLAN ID",
            "trunks[0].sub_ports[3].port_id: sub_ports[0] is already on network net-b",
            "trunks[1].port_id: the parent port sub-b is not bound on this host (it needs a binding: its interface carries the subports' frames)",
            "trunks[1].sub_ports[0].port_id: no port has id \"nope\"",
        ];
        for w in want {
            assert!(e.iter().any(|x| x == w), "missing {w:?} in {e:#?}");
        }
        assert_eq!(e.len(), want.len(), "{e:#?}");
    }

    #[test]
    fn a_port_without_binding_that_no_trunk_names_still_needs_one() {
        let e = errors("");
        assert!(e
            .iter()
            .any(|x| x == "ports[1].binding: a port of this host needs a binding"));
    }
}
