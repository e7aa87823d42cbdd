//! The hosts of the deployment (`[[hosts]]`) and which one this polluxd is (`[agent]
//! host`): what makes a port local or remote (its `binding_host_id`).

use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::{Checker, Uplink};
use crate::model;

/// A checked host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// Its name (unique).
    pub name: String,
    /// Its VXLAN endpoint.
    pub tunnel_ip: Ipv4Addr,
}

/// The hosts, and which of them this polluxd is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hosts {
    /// This host's name: `[agent] host`, or the machine's hostname.
    pub local: String,
    /// Every host, in document order.
    pub items: Vec<Host>,
    /// Which host can be referred to (its name and tunnel_ip are valid).
    pub(super) ok: Vec<bool>,
    pub(super) by_name: HashMap<String, usize>,
}

impl Hosts {
    /// The index of the host named `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }
}

/// The machine's hostname, as `uname -n` gives it (empty if it cannot be read).
pub fn machine_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

impl Checker {
    pub(super) fn hosts(
        &mut self,
        agent: &model::Agent,
        hosts: &[model::Host],
        uplinks: &[Uplink],
    ) -> Hosts {
        let local = match &agent.host {
            Some(h) if h.is_empty() => {
                self.err(
                    "agent.host",
                    "give a non-empty host name, or leave it out for the machine's hostname",
                );
                String::new()
            }
            Some(h) => h.clone(),
            None => machine_hostname(),
        };
        let vtep = uplinks
            .iter()
            .find_map(|u| u.local_ip.map(|(ip, _)| (ip, u.name.as_str())));
        let mut out = Hosts {
            local,
            items: Vec::with_capacity(hosts.len()),
            ok: Vec::with_capacity(hosts.len()),
            by_name: HashMap::new(),
        };
        let mut by_ip: HashMap<Ipv4Addr, usize> = HashMap::new();
        for (i, h) in hosts.iter().enumerate() {
            let base = format!("hosts[{i}]");
            let before = self.errors.len();
            let named = !h.name.is_empty() && !out.by_name.contains_key(&h.name);
            if h.name.is_empty() {
                self.err(format!("{base}.name"), "a host needs a non-empty name");
            } else if let Some(first) = out.by_name.get(&h.name) {
                let m = format!("host name {} is already used by hosts[{first}]", h.name);
                self.err(format!("{base}.name"), m);
            } else {
                out.by_name.insert(h.name.clone(), i);
            }
            let ip_path = format!("{base}.tunnel_ip");
            let tunnel_ip = self.ip(&ip_path, &h.tunnel_ip);
            if let Some(ip) = tunnel_ip {
                if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
                    self.err(&ip_path, format!("{ip} is not a unicast address"));
                } else if let Some(first) = by_ip.insert(ip, i) {
                    by_ip.insert(ip, first);
                    self.err(
                        &ip_path,
                        format!("{ip} is already the tunnel_ip of hosts[{first}]"),
                    );
                } else if !named {
                    // Which host this is cannot be told by a name in error.
                } else if h.name == out.local {
                    match vtep {
                        None => self.err(
                            &ip_path,
                            format!(
                                "host {} is this host (agent.host), but no uplink has local_ip",
                                h.name
                            ),
                        ),
                        Some((own, uplink)) if own != ip => self.err(
                            &ip_path,
                            format!(
                                "host {} is this host (agent.host): its tunnel_ip must be the \
                                 local_ip {own} of uplink {uplink}",
                                h.name
                            ),
                        ),
                        Some(_) => {}
                    }
                } else if vtep.is_some_and(|(own, _)| own == ip) {
                    self.err(
                        &ip_path,
                        format!(
                            "{ip} is this host's local_ip, but host {} is another host (agent.host is {:?})",
                            h.name, out.local
                        ),
                    );
                }
            }
            out.items.push(Host {
                name: h.name.clone(),
                tunnel_ip: tunnel_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
            });
            out.ok.push(self.clean(before));
        }
        out
    }

    /// Resolves a `binding_host_id` at `path`: whether it names this host (or is absent),
    /// and the index of the other host it names, if valid.
    pub(super) fn bound_host(
        &mut self,
        path: &str,
        host: Option<&str>,
        hosts: &Hosts,
    ) -> (bool, Option<usize>) {
        match host {
            None => (true, None),
            Some(h) if h == hosts.local => (true, None),
            Some(h) => match hosts.index(h) {
                Some(k) => (false, hosts.ok[k].then_some(k)),
                None => {
                    self.err(
                        path,
                        format!(
                            "no host has name {h:?} (hosts[].name), and this host is {:?} \
                             (agent.host)",
                            hosts.local
                        ),
                    );
                    (false, None)
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::model::DesiredState;
    use crate::validate::fixtures::{assert_errors, errors};
    use crate::validate::validate;

    const TWO_HOSTS: &str = r#"
        [agent]
        host = "compute-1"

        [[hosts]]
        name = "compute-1"
        tunnel_ip = "198.18.255.1"

        [[hosts]]
        name = "compute-2"
        tunnel_ip = "198.18.255.2"

        [[uplinks]]
        name = "uplink0"
        physnet = "physnet1"
        binding = { driver = "mem" }
        local_ip = "198.18.255.1/24"

        [[networks]]
        id = "net-x"
        network_type = "vxlan"
        segmentation_id = 5000

        [[ports]]
        id = "vm1"
        network_id = "net-x"
        mac_address = "fa:16:3e:00:00:01"
        binding = { driver = "mem" }

        [[ports]]
        id = "vm2"
        network_id = "net-x"
        mac_address = "fa:16:3e:00:00:02"
        binding_host_id = "compute-2"
    "#;

    fn state(edit: impl Fn(&mut DesiredState)) -> DesiredState {
        let mut s = DesiredState::from_toml_str(TWO_HOSTS).unwrap();
        edit(&mut s);
        s
    }

    #[test]
    fn ports_are_local_or_remote_by_their_host() {
        let v = validate(&state(|_| {})).unwrap();
        assert_eq!(v.hosts.local, "compute-1");
        // A remote port's binding is its own host's business: accepted, not used here
        // (not even its interface name, which may repeat one of this host's).
        let v2 = validate(&state(|s| {
            s.ports[1].binding = Some(crate::model::Binding::Tap {
                interface: "tap0".into(),
            });
            s.ports[0].binding = Some(crate::model::Binding::Tap {
                interface: "tap0".into(),
            });
        }))
        .unwrap();
        assert!(v2.ports[1].binding.is_none());
        assert_eq!(v.ports[0].remote_host, None);
        assert_eq!(v.ports[1].remote_host, Some(1));
        assert!(v.ports[1].binding.is_none());
        // Naming this host is the same as naming none.
        let v = validate(&state(|s| {
            s.ports[0].binding_host_id = Some("compute-1".into())
        }))
        .unwrap();
        assert_eq!(v.ports[0].remote_host, None);
        // The same state on compute-2: the roles swap.
        let s = state(|s| {
            s.agent.host = Some("compute-2".into());
            s.hosts[0].tunnel_ip = "198.18.255.2".into();
            s.hosts[1].tunnel_ip = "198.18.255.1".into();
            s.ports[0].binding_host_id = Some("compute-1".into());
            s.ports[0].binding = None;
            s.ports[1].binding = Some(crate::model::Binding::Mem {});
        });
        let v = validate(&s).unwrap();
        assert_eq!(v.ports[0].remote_host, Some(0));
        assert_eq!(v.ports[1].remote_host, None);
    }

    #[test]
    fn host_problems_are_reported_with_paths() {
        assert_errors(
            &state(|s| s.ports[1].binding_host_id = Some("compute-9".into())),
            &[
                "ports[1].binding_host_id: no host has name \"compute-9\" (hosts[].name), and \
               this host is \"compute-1\" (agent.host)",
            ],
        );
        assert_errors(
            &state(|s| s.ports[0].binding = None),
            &["ports[0].binding: a port of this host needs a binding"],
        );
        assert_errors(
            &state(|s| s.hosts[0].tunnel_ip = "198.18.255.9".into()),
            &[
                "hosts[0].tunnel_ip: host compute-1 is this host (agent.host): its tunnel_ip \
               must be the local_ip 198.18.255.1 of uplink uplink0",
            ],
        );
        assert_errors(
            &state(|s| s.hosts[1].tunnel_ip = "198.18.255.1".into()),
            &["hosts[1].tunnel_ip: 198.18.255.1 is already the tunnel_ip of hosts[0]"],
        );
        assert_errors(
            &state(|s| s.hosts[1].name = "compute-1".into()),
            &[
                "hosts[1].name: host name compute-1 is already used by hosts[0]",
                "ports[1].binding_host_id: no host has name \"compute-2\" (hosts[].name), and \
                 this host is \"compute-1\" (agent.host)",
            ],
        );
        let bad_ip = errors(&state(|s| s.hosts[1].tunnel_ip = "198.18.255".into()));
        assert_eq!(bad_ip.len(), 1, "{bad_ip:?}");
        assert!(bad_ip[0].starts_with("hosts[1].tunnel_ip: "), "{bad_ip:?}");
        assert_errors(
            &state(|s| s.agent.host = Some(String::new())),
            &[
                "agent.host: give a non-empty host name, or leave it out for the machine's hostname",
                "hosts[0].tunnel_ip: 198.18.255.1 is this host's local_ip, but host compute-1 is \
                 another host (agent.host is \"\")",
            ],
        );
        assert_errors(
            &state(|s| s.ports[0].mac_address = "02:70:76:00:00:01".into()),
            &[
                "ports[0].mac_address: 02:70:76:00:00:01 is in 02:70:76:00:00:00/24, which \
               polluxd reserves for its VXLAN tunnel endpoints",
            ],
        );
    }

    /// [`TWO_HOSTS`] with a subnet on net-x and router r1 on it.
    fn with_router(edit: impl Fn(&mut crate::model::Router)) -> DesiredState {
        state(|s| {
            let sub = "[[subnets]]\nid = \"sub-x\"\nnetwork_id = \"net-x\"\n\
                       cidr = \"203.0.113.0/24\"\ngateway_ip = \"203.0.113.1\"\n";
            s.subnets = DesiredState::from_toml_str(sub).unwrap().subnets;
            let mut r = crate::model::Router {
                id: "r1".into(),
                interfaces: vec!["sub-x".into()],
                external_gateway_info: None,
                routes: vec![],
                binding_host_id: Some("compute-2".into()),
                mac_address: Some("fa:16:3e:00:0f:01".into()),
                project_id: None,
            };
            edit(&mut r);
            s.routers.push(r);
        })
    }

    #[test]
    fn routers_run_on_their_host_and_overlay_ones_have_a_mac() {
        let v = validate(&with_router(|_| {})).unwrap();
        assert_eq!(v.routers[0].remote_host, Some(1));
        assert!(!v.routers[0].runs_here);
        assert_eq!(v.routers[0].mac, Some([0xfa, 0x16, 0x3e, 0, 0x0f, 1]));
        for here in [None, Some("compute-1")] {
            let v = validate(&with_router(|r| r.binding_host_id = here.map(Into::into))).unwrap();
            assert!(v.routers[0].runs_here);
            assert_eq!(v.routers[0].remote_host, None);
        }
        assert_errors(
            &with_router(|r| r.binding_host_id = Some("compute-9".into())),
            &[
                "routers[0].binding_host_id: no host has name \"compute-9\" (hosts[].name), and \
               this host is \"compute-1\" (agent.host)",
            ],
        );
        assert_errors(
            &with_router(|r| r.mac_address = None),
            &[
                "routers[0].mac_address: a router of another host on a vxlan, geneve or gre \
                 network needs a mac_address (Neutron's router ports' MAC) to be reached over \
                 the overlay",
            ],
        );
        // Its own host has no need of one: it picks its own.
        let v = validate(&with_router(|r| {
            r.mac_address = None;
            r.binding_host_id = None;
        }))
        .unwrap();
        assert_eq!(v.routers[0].mac, None);
        assert_errors(
            &with_router(|r| r.mac_address = Some("fa:16:3e:00:00:02".into())),
            &[
                "routers[0].mac_address: fa:16:3e:00:00:02 is already a MAC of port vm2 on \
               network net-x",
            ],
        );
        assert_errors(
            &with_router(|r| r.mac_address = Some("02:70:6c:00:00:01".into())),
            &[
                "routers[0].mac_address: 02:70:6c:00:00:01 is in 02:70:6c:00:00:00/24, which \
               polluxd reserves for its routers",
            ],
        );
        let mut two = with_router(|_| {});
        let mut r2 = two.routers[0].clone();
        r2.id = "r2".into();
        r2.interfaces.clear();
        two.routers.push(r2);
        assert_errors(
            &two,
            &["routers[1].mac_address: fa:16:3e:00:0f:01 is already the MAC of router r1"],
        );
    }

    #[test]
    fn without_agent_host_this_is_the_machine() {
        let name = super::machine_hostname();
        let v = validate(&state(|s| s.agent.host = None));
        match v {
            Ok(v) => assert_eq!(v.hosts.local, name),
            // On a machine called neither compute-1 nor compute-2, compute-1's tunnel_ip
            // is this host's local_ip: refused as such.
            Err(e) => assert!(e.iter().any(|e| e.path == "hosts[0].tunnel_ip"), "{e:?}"),
        }
        assert!(!name.is_empty());
    }
}
