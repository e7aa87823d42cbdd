//! Networks: their segments (local, flat, VLAN, VXLAN) on the uplinks and their MTUs.

use std::collections::HashMap;

use super::{Checked, Checker, Uplink};
use crate::model::{self, NetworkType};

/// A checked segment of a network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    /// Local to the host.
    Local,
    /// Untagged on `uplink` (the only flat network of its physnet).
    Flat {
        /// Index of the uplink.
        uplink: usize,
    },
    /// Tagged `vid` on `uplink`.
    Vlan {
        /// Index of the uplink.
        uplink: usize,
        /// VLAN ID, 1..=4094, unique on the physnet.
        vid: u16,
    },
    /// VXLAN with `vni` through the endpoint uplink.
    Vxlan {
        /// Index of the uplink with `local_ip`.
        uplink: usize,
        /// VNI, 1..=16777215, unique.
        vni: u32,
    },
}

/// A checked network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    /// Unique id.
    pub id: String,
    /// Name.
    pub name: Option<String>,
    /// How it is carried.
    pub segment: Segment,
    /// Effective MTU (defaults applied).
    pub mtu: u16,
    /// Whether it forwards.
    pub admin_state_up: bool,
    /// Domain name for DHCP option 15 (RFC 1123, without a trailing dot; an empty
    /// `dns_domain` is none).
    pub dns_domain: Option<String>,
    /// Its QoS policy (an index of `qos_policies`), for its ports without one.
    pub qos_policy: Option<usize>,
}

/// Default MTU of an uplink (and of a local network).
pub const DEFAULT_MTU: u16 = 1500;
/// Bytes VXLAN adds on the uplink: outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8.
pub const VXLAN_OVERHEAD: u16 = 50;
/// Smallest MTU (IPv4's minimum).
pub const MIN_MTU: i64 = 68;
/// The largest MTU a desired state may name (jumbo frames). What the data plane forwards
/// today is less, [`crate::compile::MAX_MTU`]: a larger MTU up to this one is valid and
/// refused by compile as not supported yet, rather than as an error of the document.
pub const JUMBO_MTU: i64 = 9000;

impl Checker {
    /// The uplink of a flat or VLAN network's `physical_network`.
    pub(super) fn physnet_uplink(
        &mut self,
        path: &str,
        ty: NetworkType,
        physnet: Option<&str>,
        physnets: &HashMap<&str, usize>,
    ) -> Option<usize> {
        match physnet {
            None => {
                self.err(path, format!("a {ty} network needs a physical_network"));
                None
            }
            Some(p) => {
                match physnets.get(p) {
                    Some(&u) => Some(u),
                    None => {
                        self.err(
                        path,
                        format!("no uplink carries physnet {p} (add an uplink with physnet = \"{p}\")"),
                    );
                        None
                    }
                }
            }
        }
    }

    pub(super) fn mtu(&mut self, path: &str, mtu: i64) -> Option<u16> {
        if (MIN_MTU..=JUMBO_MTU).contains(&mtu) {
            Some(mtu as u16)
        } else {
            self.err(
                path,
                format!("MTU {mtu} is outside {MIN_MTU}..={JUMBO_MTU}"),
            );
            None
        }
    }

    pub(super) fn networks(
        &mut self,
        networks: &[model::Network],
        uplinks: &[Uplink],
    ) -> Checked<Network> {
        let mut out = Checked::default();
        let physnets: HashMap<&str, usize> = uplinks
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, u)| !u.physnet.is_empty())
            .map(|(i, u)| (u.physnet.as_str(), i))
            .collect();
        let vtep = uplinks.iter().position(|u| u.local_ip.is_some());
        let mut flat: HashMap<usize, String> = HashMap::new();
        let mut vlans: HashMap<(usize, u16), String> = HashMap::new();
        let mut vnis: HashMap<u32, String> = HashMap::new();
        for (i, n) in networks.iter().enumerate() {
            let base = format!("networks[{i}]");
            let before = self.errors.len();
            self.id(format!("{base}.id"), &n.id, "network", &mut out.by_id, i);
            let id_ok = self.clean(before);
            let ty = n.network_type;
            let pn_path = format!("{base}.physical_network");
            let seg_path = format!("{base}.segmentation_id");
            let physnet_uplink = |c: &mut Checker| -> Option<usize> {
                c.physnet_uplink(&pn_path, ty, n.physical_network.as_deref(), &physnets)
            };
            let segment = match ty {
                NetworkType::Local => {
                    if n.physical_network.is_some() {
                        self.err(&pn_path, "a local network has no physical_network");
                    }
                    if n.segmentation_id.is_some() {
                        self.err(&seg_path, "a local network has no segmentation_id");
                    }
                    Some(Segment::Local)
                }
                NetworkType::Flat if n.segmentation_id.is_some() => {
                    self.err(&seg_path, "a flat network has no segmentation_id");
                    physnet_uplink(self);
                    None
                }
                NetworkType::Flat => physnet_uplink(self).and_then(|uplink| {
                    if let Some(first) = flat.get(&uplink) {
                        let m = format!(
                            "physnet {} already carries flat network {first}; a physnet carries one",
                            uplinks[uplink].physnet
                        );
                        self.err(&pn_path, m);
                        None
                    } else {
                        flat.insert(uplink, n.id.clone());
                        Some(Segment::Flat { uplink })
                    }
                }),
                NetworkType::Vlan => {
                    let uplink = physnet_uplink(self);
                    let vid = match n.segmentation_id {
                        None => {
                            self.err(&seg_path, "a vlan network needs a segmentation_id (VLAN ID 1..=4094)");
                            None
                        }
                        Some(v) if (1..=4094).contains(&v) => Some(v as u16),
                        Some(v) => {
                            self.err(&seg_path, format!("{v} is not a VLAN ID (1..=4094)"));
                            None
                        }
                    };
                    match (uplink, vid) {
                        (Some(uplink), Some(vid)) => {
                            if let Some(first) = vlans.get(&(uplink, vid)) {
                                let m = format!(
                                    "VLAN {vid} on physnet {} is already used by network {first}",
                                    uplinks[uplink].physnet
                                );
                                self.err(&seg_path, m);
                                None
                            } else {
                                vlans.insert((uplink, vid), n.id.clone());
                                Some(Segment::Vlan { uplink, vid })
                            }
                        }
                        _ => None,
                    }
                }
                NetworkType::Vxlan => {
                    if n.physical_network.is_some() {
                        self.err(
                            &pn_path,
                            "a vxlan network has no physical_network; it uses the uplink with local_ip",
                        );
                    }
                    if vtep.is_none() {
                        self.err(
                            format!("{base}.network_type"),
                            "a vxlan network needs an uplink with local_ip (the VXLAN endpoint)",
                        );
                    }
                    let vni = match n.segmentation_id {
                        None => {
                            self.err(&seg_path, "a vxlan network needs a segmentation_id (VNI 1..=16777215)");
                            None
                        }
                        Some(v) if (1..=16_777_215).contains(&v) => {
                            let v = v as u32;
                            if let Some(first) = vnis.get(&v) {
                                let m = format!("VNI {v} is already used by network {first}");
                                self.err(&seg_path, m);
                                None
                            } else {
                                vnis.insert(v, n.id.clone());
                                Some(v)
                            }
                        }
                        Some(v) => {
                            self.err(&seg_path, format!("{v} is not a VXLAN VNI (1..=16777215)"));
                            None
                        }
                    };
                    match (vtep, vni) {
                        (Some(uplink), Some(vni)) => Some(Segment::Vxlan { uplink, vni }),
                        _ => None,
                    }
                }
            };
            let mtu_path = format!("{base}.mtu");
            let (limit, why) = match segment {
                Some(Segment::Flat { uplink } | Segment::Vlan { uplink, .. }) => (
                    Some(uplinks[uplink].mtu),
                    format!("the MTU of uplink {}", uplinks[uplink].name),
                ),
                Some(Segment::Vxlan { uplink, .. }) => (
                    uplinks[uplink].mtu.checked_sub(VXLAN_OVERHEAD),
                    format!(
                        "the MTU {} of uplink {} minus {VXLAN_OVERHEAD} bytes of VXLAN overhead",
                        uplinks[uplink].mtu, uplinks[uplink].name
                    ),
                ),
                _ => (None, String::new()),
            };
            let mtu = match n.mtu {
                Some(m) => self.mtu(&mtu_path, m),
                None => Some(limit.unwrap_or(DEFAULT_MTU)),
            };
            if let (Some(m), Some(limit)) = (mtu, limit) {
                if m > limit {
                    self.err(&mtu_path, format!("MTU {m} exceeds {limit}, {why}"));
                } else if i64::from(m) < MIN_MTU {
                    self.err(
                        &mtu_path,
                        format!("the default MTU {m} ({why}) is below {MIN_MTU}"),
                    );
                }
            }
            out.items.push(Network {
                id: n.id.clone(),
                name: n.name.clone(),
                segment: segment.unwrap_or(Segment::Local),
                mtu: mtu.unwrap_or(DEFAULT_MTU),
                admin_state_up: n.admin_state_up,
                dns_domain: self.dns_name(format!("{base}.dns_domain"), n.dns_domain.as_deref()),
                // Resolved with the ports' (`Checker::attach_qos`).
                qos_policy: None,
            });
            // Other objects may refer to a network whose segment is bad: that is the
            // network's error, not theirs.
            out.ok.push(id_ok);
        }
        out
    }
}
