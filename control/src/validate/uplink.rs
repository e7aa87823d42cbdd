//! Uplinks: the physical networks' ports (Neutron's `bridge_mappings`) and the VXLAN
//! endpoint.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::{Binding, Checker, DEFAULT_MTU};
use crate::model;
use pollux_services::addr::{parse_interface_addr, Ipv4Cidr};

/// A checked uplink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uplink {
    /// Unique name.
    pub name: String,
    /// Its physnet (unique among uplinks).
    pub physnet: String,
    /// How it is attached.
    pub binding: Binding,
    /// The VXLAN endpoint address and its subnet (at most one uplink has one).
    pub local_ip: Option<(Ipv4Addr, Ipv4Cidr)>,
    /// MTU of the physical network.
    pub mtu: u16,
}

impl Checker {
    pub(super) fn uplinks(&mut self, uplinks: &[model::Uplink]) -> Vec<Uplink> {
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut physnets: HashMap<&str, usize> = HashMap::new();
        let mut vtep: Option<usize> = None;
        let mut out = Vec::with_capacity(uplinks.len());
        for (i, u) in uplinks.iter().enumerate() {
            let base = format!("uplinks[{i}]");
            if u.name.is_empty() {
                self.err(format!("{base}.name"), "an uplink needs a non-empty name");
            } else if let Some(first) = names.insert(&u.name, i) {
                names.insert(&u.name, first);
                self.err(
                    format!("{base}.name"),
                    format!("uplink name {} is already used by uplinks[{first}]", u.name),
                );
            }
            if u.physnet.is_empty() {
                self.err(
                    format!("{base}.physnet"),
                    "an uplink needs a non-empty physnet",
                );
            } else if let Some(first) = physnets.insert(&u.physnet, i) {
                physnets.insert(&u.physnet, first);
                self.err(
                    format!("{base}.physnet"),
                    format!(
                        "physnet {} already has an uplink (uplinks[{first}]); a physnet has one",
                        u.physnet
                    ),
                );
            }
            let binding = self.binding(
                &format!("{base}.binding"),
                &u.binding,
                &format!("uplink {}", u.name),
            );
            let local_ip = u.local_ip.as_deref().and_then(|s| {
                let p = format!("{base}.local_ip");
                match parse_interface_addr(s) {
                    Err(m) => {
                        self.err(p, m);
                        None
                    }
                    Ok(v) => {
                        if let Some(first) = vtep {
                            self.err(
                                p,
                                format!(
                                    "uplinks[{first}] already has local_ip; one uplink is the VXLAN endpoint"
                                ),
                            );
                        } else {
                            vtep = Some(i);
                        }
                        Some(v)
                    }
                }
            });
            let mtu = match u.mtu {
                None => DEFAULT_MTU,
                Some(m) => self.mtu(&format!("{base}.mtu"), m).unwrap_or(DEFAULT_MTU),
            };
            out.push(Uplink {
                name: u.name.clone(),
                physnet: u.physnet.clone(),
                binding,
                local_ip,
                mtu,
            });
        }
        out
    }
}
