//! Networks: their segments (local, flat, VLAN, VXLAN, Geneve, GRE) on the uplinks and
//! their MTUs.

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
        /// VNI, 1..=16777215, unique among VXLAN networks.
        vni: u32,
    },
    /// Geneve (without options) with `vni` through the endpoint uplink.
    Geneve {
        /// Index of the uplink with `local_ip`.
        uplink: usize,
        /// VNI, 1..=16777215, unique among Geneve networks.
        vni: u32,
    },
    /// GRE with `key` through the endpoint uplink.
    Gre {
        /// Index of the uplink with `local_ip`.
        uplink: usize,
        /// Key, 1..=4294967295, unique among GRE networks.
        key: u32,
    },
}

impl Segment {
    /// The endpoint uplink of an overlay segment (VXLAN, Geneve, GRE).
    pub fn overlay_uplink(self) -> Option<usize> {
        match self {
            Segment::Vxlan { uplink, .. }
            | Segment::Geneve { uplink, .. }
            | Segment::Gre { uplink, .. } => Some(uplink),
            Segment::Local | Segment::Flat { .. } | Segment::Vlan { .. } => None,
        }
    }

    /// The name of an overlay's encapsulation in messages and the bytes it adds on the
    /// uplink (nothing for other segments).
    pub fn overhead(self) -> (&'static str, u16) {
        match self {
            Segment::Vxlan { .. } => ("VXLAN", VXLAN_OVERHEAD),
            Segment::Geneve { .. } => ("Geneve", GENEVE_OVERHEAD),
            Segment::Gre { .. } => ("GRE", GRE_OVERHEAD),
            Segment::Local | Segment::Flat { .. } | Segment::Vlan { .. } => ("", 0),
        }
    }

    /// Whether the segment is carried between tunnel endpoints.
    pub fn is_overlay(self) -> bool {
        self.overlay_uplink().is_some()
    }
}

/// What an overlay network type needs: its name in messages and the range of its
/// identifier.
struct OverlayKind {
    label: &'static str,
    id_name: &'static str,
    max_id: i64,
}

fn overlay_kind(ty: NetworkType) -> Option<OverlayKind> {
    Some(match ty {
        NetworkType::Vxlan => OverlayKind {
            label: "VXLAN",
            id_name: "VNI",
            max_id: 16_777_215,
        },
        NetworkType::Geneve => OverlayKind {
            label: "Geneve",
            id_name: "VNI",
            max_id: 16_777_215,
        },
        NetworkType::Gre => OverlayKind {
            label: "GRE",
            id_name: "key",
            max_id: 4_294_967_295,
        },
        NetworkType::Local | NetworkType::Flat | NetworkType::Vlan => return None,
    })
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
/// Bytes Geneve without options adds on the uplink: outer Ethernet 14 + IPv4 20 + UDP 8 +
/// Geneve 8.
pub const GENEVE_OVERHEAD: u16 = 50;
/// Bytes GRE with a key adds on the uplink: outer Ethernet 14 + IPv4 20 + GRE 4 + key 4.
pub const GRE_OVERHEAD: u16 = 42;
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
        let mut tunnel_ids: HashMap<(NetworkType, u32), String> = HashMap::new();
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
                NetworkType::Vxlan | NetworkType::Geneve | NetworkType::Gre => match overlay_kind(ty) {
                    None => None,
                    Some(OverlayKind {
                        label,
                        id_name,
                        max_id,
                    }) => {
                        if n.physical_network.is_some() {
                            self.err(
                                &pn_path,
                                format!("a {ty} network has no physical_network; it uses the uplink with local_ip"),
                            );
                        }
                        if vtep.is_none() {
                            self.err(
                                format!("{base}.network_type"),
                                format!("a {ty} network needs an uplink with local_ip (the {label} endpoint)"),
                            );
                        }
                        let id = match n.segmentation_id {
                            None => {
                                self.err(&seg_path, format!("a {ty} network needs a segmentation_id ({id_name} 1..={max_id})"));
                                None
                            }
                            Some(v) if (1..=max_id).contains(&v) => {
                                let v = v as u32;
                                if let Some(first) = tunnel_ids.get(&(ty, v)) {
                                    let m = match ty {
                                        NetworkType::Vxlan => format!("VNI {v} is already used by network {first}"),
                                        _ => format!("{label} {id_name} {v} is already used by network {first}"),
                                    };
                                    self.err(&seg_path, m);
                                    None
                                } else {
                                    tunnel_ids.insert((ty, v), n.id.clone());
                                    Some(v)
                                }
                            }
                            Some(v) => {
                                self.err(&seg_path, format!("{v} is not a {label} {id_name} (1..={max_id})"));
                                None
                            }
                        };
                        match (vtep, id) {
                            (Some(uplink), Some(id)) => Some(match ty {
                                NetworkType::Geneve => Segment::Geneve { uplink, vni: id },
                                NetworkType::Gre => Segment::Gre { uplink, key: id },
                                _ => Segment::Vxlan { uplink, vni: id },
                            }),
                            _ => None,
                        }
                    }
                },
            };
            let mtu_path = format!("{base}.mtu");
            let (limit, why) = match segment {
                Some(Segment::Flat { uplink } | Segment::Vlan { uplink, .. }) => (
                    Some(uplinks[uplink].mtu),
                    format!("the MTU of uplink {}", uplinks[uplink].name),
                ),
                Some(seg) if seg.is_overlay() => {
                    let (label, overhead) = seg.overhead();
                    let uplink = seg.overlay_uplink().unwrap_or_default();
                    (
                        uplinks[uplink].mtu.checked_sub(overhead),
                        format!(
                            "the MTU {} of uplink {} minus {overhead} bytes of {label} overhead",
                            uplinks[uplink].mtu, uplinks[uplink].name
                        ),
                    )
                }
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
