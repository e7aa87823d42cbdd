//! Security groups of a desired state written as Neutron's hybrid iptables firewall driver
//! (`OVSHybridIptablesFirewallDriver`, `neutron/agent/linux/iptables_firewall.py`) writes
//! them, so that the kernel can enforce the same groups as Pollux and the two can be
//! compared verdict for verdict (`tests/tests/e2e_sg_matrix.rs`).
//!
//! The output is an `ipset restore` script (one `hash:net` set `NIPv4<group>` per remote
//! group and address group with IPv4 members) and an `iptables-restore` script with the
//! driver's shapes: `neutron-openvswi-FORWARD` sending bridged traffic of each filtered
//! port's `tap` device to `neutron-openvswi-sg-chain`, which jumps to the port's ingress
//! (`i<port>`) and egress (`o<port>`) chains; the anti-spoofing chain `s<port>`; the fixed
//! DHCP rules; `RELATED,ESTABLISHED` first and `INVALID` dropped after the group rules;
//! `sg-fallback` dropping the rest; unfiltered ports (port security off) accepted; and in
//! the `raw` table a conntrack zone per port, or `CT --notrack` for a port whose groups
//! are stateless. The rules come from the driver's own order and argument layout
//! (`_spoofing_rule`, `_drop_dhcp_rule`, `_convert_sgr_to_iptables_rules`,
//! `_generate_plain_rule_args`, `_generate_ipset_rule_args`, `_port_arg`), plus the
//! provider rules the server adds to every port (`_add_ingress_dhcp_rule`).
//!
//! The desired state is read with serde structs of its own (lenient about fields it does
//! not need), in the schema of `/work/coord/sg-config.md`: nested and top-level
//! `security_group_rules`, `stateful`, `address_groups`.
//!
//! IPv6 rules go where the driver puts them, into an `ip6tables-restore` script of their
//! own ([`SgState::to_hybrid_firewall6`]): `hash:net family inet6` sets `NIPv6<group>`,
//! the same chains, the driver's fixed IPv6 rules (egress: neighbour discovery from `::`,
//! the spoofing chain of address/MAC pairs with each MAC's link-local address, router
//! advertisements dropped, every other ICMPv6 returned, DHCPv6 client allowed and server
//! dropped; ingress: `_accept_inbound_icmpv6`'s MLD query, NS and NA before the
//! connection state) and the provider rule the server adds for router advertisements from
//! each IPv6 subnet's link-local gateway (`_select_ra_ips_for_network_ids`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Deserialize;

/// iptables_manager's wrapped chain prefix for the OVS agent (`neutron-openvswi-`).
pub const CHAIN_PREFIX: &str = "neutron-openvswi-";
/// `constants.LINUX_DEV_LEN`: device names are cut to it.
const LINUX_DEV_LEN: usize = 14;
/// `iptables_manager.MAX_CHAIN_LEN_WRAP`: a wrapped chain's own part is cut to it.
const MAX_CHAIN_LEN_WRAP: usize = 11;
/// `ipset_manager.IPSET_NAME_MAX_LENGTH` (31 less the swap suffix).
const IPSET_NAME_MAX_LENGTH: usize = 29;
/// First conntrack zone given to a port (`ip_conntrack` allocates from here).
const FIRST_ZONE: u32 = 4097;

/// The parts of a desired state the translation reads.
#[derive(Debug, Clone, Deserialize)]
pub struct SgState {
    #[serde(default)]
    pub ports: Vec<SgPort>,
    #[serde(default)]
    pub security_groups: Vec<SgGroup>,
    #[serde(default)]
    pub security_group_rules: Vec<SgRule>,
    #[serde(default)]
    pub address_groups: Vec<AddressGroup>,
    #[serde(default)]
    pub subnets: Vec<SgSubnet>,
}

/// A subnet, for the provider rules (IPv6: the router advertisements' source).
#[derive(Debug, Clone, Deserialize)]
pub struct SgSubnet {
    pub network_id: String,
    #[serde(default)]
    pub ip_version: Option<i64>,
    #[serde(default)]
    pub gateway_ip: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SgPort {
    pub id: String,
    #[serde(default)]
    pub network_id: String,
    pub mac_address: String,
    #[serde(default)]
    pub fixed_ips: Vec<SgFixedIp>,
    #[serde(default)]
    pub security_groups: Vec<String>,
    #[serde(default = "yes")]
    pub port_security_enabled: bool,
    #[serde(default)]
    pub allowed_address_pairs: Vec<SgAddressPair>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SgFixedIp {
    pub ip_address: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SgAddressPair {
    pub ip_address: String,
    #[serde(default)]
    pub mac_address: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SgGroup {
    pub id: String,
    #[serde(default = "yes")]
    pub stateful: bool,
    #[serde(default)]
    pub rules: Vec<SgRule>,
}

/// A rule, nested in its group or top-level (then with `security_group_id`).
#[derive(Debug, Clone, Deserialize)]
pub struct SgRule {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub security_group_id: Option<String>,
    pub direction: String,
    #[serde(default)]
    pub ethertype: Option<String>,
    #[serde(default)]
    pub protocol: Option<Protocol>,
    #[serde(default)]
    pub port_range_min: Option<i64>,
    #[serde(default)]
    pub port_range_max: Option<i64>,
    #[serde(default)]
    pub remote_ip_prefix: Option<String>,
    #[serde(default)]
    pub remote_group_id: Option<String>,
    #[serde(default)]
    pub remote_address_group_id: Option<String>,
}

/// A protocol by name or number, as the Neutron API takes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Protocol {
    Number(i64),
    Name(String),
}

#[derive(Debug, Clone, Deserialize)]
pub struct AddressGroup {
    pub id: String,
    #[serde(default)]
    pub addresses: Vec<String>,
}

fn yes() -> bool {
    true
}

/// What the kernel is given: the two scripts, and the devices they name per port.
#[derive(Debug, Clone)]
pub struct HybridFirewall {
    /// For `ipset restore`.
    pub ipset: String,
    /// For `iptables-restore` (tables `raw` and `filter`).
    pub iptables: String,
}

/// The hybrid plug's tap device of port `id` (`get_hybrid_port_name`).
pub fn tap_device(port_id: &str) -> String {
    cut(&format!("tap{port_id}"), LINUX_DEV_LEN)
}

/// The `qvb` end of the hybrid plug's veth (in the port's `qbr` bridge).
pub fn qvb_device(port_id: &str) -> String {
    cut(&format!("qvb{port_id}"), LINUX_DEV_LEN)
}

/// The `qvo` end (on the integration bridge).
pub fn qvo_device(port_id: &str) -> String {
    cut(&format!("qvo{port_id}"), LINUX_DEV_LEN)
}

/// The per-port `qbr` bridge.
pub fn qbr_device(port_id: &str) -> String {
    cut(&format!("qbr{port_id}"), LINUX_DEV_LEN)
}

/// `neutron-openvswi-<kind><port>` with the port part cut as `get_chain_name` does; `kind`
/// is `i` (ingress), `o` (egress) or `s` (anti-spoofing).
pub fn port_chain(kind: char, port_id: &str) -> String {
    format!(
        "{CHAIN_PREFIX}{}",
        cut(&format!("{kind}{port_id}"), MAX_CHAIN_LEN_WRAP)
    )
}

/// `NIPv4<id>`, the ipset of a remote group or address group.
pub fn ipset_name(id: &str) -> String {
    cut(&format!("NIPv4{id}"), IPSET_NAME_MAX_LENGTH)
}

/// `NIPv6<id>`, the IPv6 ipset of a remote group or address group.
pub fn ipset_name6(id: &str) -> String {
    cut(&format!("NIPv6{id}"), IPSET_NAME_MAX_LENGTH)
}

/// The address family a script is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn ethertype(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// Whether `addr` (an address or prefix) is of this family.
    fn has(self, addr: &str) -> bool {
        addr.contains(':') == (self == Family::V6)
    }

    fn host_len(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    fn ipset_name(self, id: &str) -> String {
        match self {
            Family::V4 => ipset_name(id),
            Family::V6 => ipset_name6(id),
        }
    }
}

/// `addr` as a prefix (a host prefix when it has no length).
fn as_cidr(addr: &str, family: Family) -> String {
    if addr.contains('/') {
        addr.to_owned()
    } else {
        format!("{addr}/{}", family.host_len())
    }
}

/// The EUI-64 link-local address of `mac` (`get_ipv6_addr_by_EUI64`), as ip6tables prints
/// it.
pub fn link_local(mac: &str) -> String {
    let b: Vec<u8> = mac
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).expect("a MAC address"))
        .collect();
    let groups = [
        u16::from_be_bytes([b[0] ^ 0x02, b[1]]),
        u16::from_be_bytes([b[2], 0xff]),
        u16::from_be_bytes([0xfe, b[3]]),
        u16::from_be_bytes([b[4], b[5]]),
    ];
    format!(
        "fe80::{:x}:{:x}:{:x}:{:x}",
        groups[0], groups[1], groups[2], groups[3]
    )
}

fn cut(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

impl SgState {
    /// Reads the security-group parts of a TOML desired state.
    pub fn from_toml(text: &str) -> Result<SgState, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    fn group(&self, id: &str) -> Result<&SgGroup, String> {
        self.security_groups
            .iter()
            .find(|g| g.id == id)
            .ok_or_else(|| format!("no security group `{id}`"))
    }

    /// Every rule of group `id`: nested ones, then top-level ones, in document order.
    fn rules_of(&self, id: &str) -> Result<Vec<&SgRule>, String> {
        let group = self.group(id)?;
        let mut rules: Vec<&SgRule> = group.rules.iter().collect();
        rules.extend(
            self.security_group_rules
                .iter()
                .filter(|r| r.security_group_id.as_deref() == Some(id)),
        );
        Ok(rules)
    }

    /// IPv4 members of a remote group: its ports' fixed IPs and allowed address pairs.
    fn group_members(&self, id: &str) -> Vec<String> {
        self.group_members_of(id, Family::V4)
    }

    /// Members of a remote group of `family`.
    fn group_members_of(&self, id: &str, family: Family) -> Vec<String> {
        let mut members = Vec::new();
        for port in self
            .ports
            .iter()
            .filter(|p| p.security_groups.iter().any(|g| g == id))
        {
            members.extend(port.fixed_ips.iter().map(|f| f.ip_address.clone()));
            members.extend(
                port.allowed_address_pairs
                    .iter()
                    .map(|a| a.ip_address.clone()),
            );
        }
        members.retain(|m| family.has(m));
        members
    }

    fn address_group_members(&self, id: &str) -> Result<Vec<String>, String> {
        self.address_group_members_of(id, Family::V4)
    }

    fn address_group_members_of(&self, id: &str, family: Family) -> Result<Vec<String>, String> {
        let ag = self
            .address_groups
            .iter()
            .find(|a| a.id == id)
            .ok_or_else(|| format!("no address group `{id}`"))?;
        Ok(ag
            .addresses
            .iter()
            .filter(|m| family.has(m))
            .cloned()
            .collect())
    }

    /// Filtered ports (port security on) sorted by id, as the driver walks them; a port's
    /// conntrack zone follows from its place.
    fn filtered_sorted(&self) -> Vec<&SgPort> {
        let mut ports: Vec<&SgPort> = self
            .ports
            .iter()
            .filter(|p| p.port_security_enabled)
            .collect();
        ports.sort_by(|a, b| a.id.cmp(&b.id));
        ports
    }

    /// The conntrack zone of filtered port `id`.
    pub fn zone(&self, id: &str) -> Option<u32> {
        self.filtered_sorted()
            .iter()
            .position(|p| p.id == id)
            .map(|n| FIRST_ZONE + n as u32)
    }

    /// The `conntrack -D` commands the driver runs when `rule` is removed from group
    /// `group_id` (`ip_conntrack.delete_conntrack_state_by_rule`): for every filtered port
    /// of the group and each of its IPv4 addresses, the entries of the rule's protocol
    /// to (ingress) or from (egress) that address in the port's zone. Like the driver, it
    /// does not narrow by port range or remote.
    pub fn conntrack_deletes(&self, group_id: &str, rule: &SgRule) -> Vec<Vec<String>> {
        let mut cmds = Vec::new();
        for port in self.filtered_sorted() {
            if !port.security_groups.iter().any(|g| g == group_id) {
                continue;
            }
            let zone = self.zone(&port.id).expect("a filtered port has a zone");
            for f in port
                .fixed_ips
                .iter()
                .filter(|f| !f.ip_address.contains(':'))
            {
                let mut cmd = vec!["-D".to_owned()];
                if let Some(p) = &rule.protocol {
                    let p = match p {
                        Protocol::Number(0) => "ip".to_owned(),
                        Protocol::Number(n) => n.to_string(),
                        Protocol::Name(n) => n.clone(),
                    };
                    cmd.extend(["-p".to_owned(), p]);
                }
                cmd.extend(["-f".to_owned(), "ipv4".to_owned()]);
                cmd.push(
                    if rule.direction == "ingress" {
                        "-d"
                    } else {
                        "-s"
                    }
                    .to_owned(),
                );
                cmd.extend([f.ip_address.clone(), "-w".to_owned(), zone.to_string()]);
                cmds.push(cmd);
            }
        }
        cmds
    }

    /// The rule with `id` (nested or top-level) and its group.
    pub fn rule_by_id(&self, id: &str) -> Option<(String, SgRule)> {
        for g in &self.security_groups {
            if let Some(r) = g.rules.iter().find(|r| r.id.as_deref() == Some(id)) {
                return Some((g.id.clone(), r.clone()));
            }
        }
        self.security_group_rules
            .iter()
            .find(|r| r.id.as_deref() == Some(id))
            .map(|r| (r.security_group_id.clone().unwrap_or_default(), r.clone()))
    }

    /// The kernel's version of these groups, each port's VM-side device named as the
    /// hybrid plug names it (`tap<port id>`).
    pub fn to_hybrid_firewall(&self) -> Result<HybridFirewall, String> {
        self.to_hybrid_firewall_on(&BTreeMap::new())
    }

    /// [`SgState::to_hybrid_firewall`] with the VM-side device of the ports in `devices`
    /// (port id → interface) named otherwise, for a topology that is not the hybrid
    /// plug's (the benchmark's bridge between two given interfaces).
    pub fn to_hybrid_firewall_on(
        &self,
        devices: &BTreeMap<String, String>,
    ) -> Result<HybridFirewall, String> {
        let tap_device = |id: &str| devices.get(id).cloned().unwrap_or_else(|| tap_device(id));
        // Sets: every remote group / address group a filtered port's rule names, when it
        // has IPv4 members (the driver creates no set for an empty group and leaves the
        // rule out, so nothing matches it).
        let mut sets: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let filtered: Vec<&SgPort> = self
            .ports
            .iter()
            .filter(|p| p.port_security_enabled)
            .collect();
        for port in &filtered {
            for gid in &port.security_groups {
                for rule in self.rules_of(gid)? {
                    if let Some(remote) = &rule.remote_group_id {
                        let members = self.group_members(remote);
                        if !members.is_empty() {
                            sets.insert(remote.clone(), members);
                        }
                    } else if let Some(ag) = &rule.remote_address_group_id {
                        let members = self.address_group_members(ag)?;
                        if !members.is_empty() {
                            sets.insert(ag.clone(), members);
                        }
                    }
                }
            }
        }
        let mut ipset = String::new();
        for (id, members) in &sets {
            let name = ipset_name(id);
            writeln!(
                ipset,
                "create {name} hash:net family inet hashsize 1024 maxelem 65536 -exist"
            )
            .unwrap();
            for m in members {
                writeln!(ipset, "add {name} {m} -exist").unwrap();
            }
        }

        let mut raw = Vec::new();
        let mut forward = Vec::new();
        let mut input = Vec::new();
        let mut sg_chain = Vec::new();
        let mut port_chains: Vec<(String, Vec<String>)> = Vec::new();
        for (n, port) in self.filtered_sorted().iter().enumerate() {
            let tap = tap_device(&port.id);
            let stateful = match port.security_groups.first() {
                Some(g) => self.group(g)?.stateful,
                None => true,
            };
            let suffix = &port.id;
            let (comment, target) = if stateful {
                (
                    format!("Set zone for {suffix}"),
                    format!("CT --zone {}", FIRST_ZONE + n as u32),
                )
            } else {
                (
                    format!("Make {suffix} stateless"),
                    "CT --notrack".to_owned(),
                )
            };
            let qvb = qvb_device(&port.id);
            for m in [
                format!("-m physdev --physdev-in {qvb}"),
                format!("-i {qvb}"),
                format!("-m physdev --physdev-in {tap}"),
            ] {
                raw.push(format!(
                    "-A {CHAIN_PREFIX}PREROUTING {m} -m comment --comment \"{comment}\" -j {target}"
                ));
            }

            let (i, o, s) = (
                port_chain('i', &port.id),
                port_chain('o', &port.id),
                port_chain('s', &port.id),
            );
            for (dir, chain) in [("out", &i), ("in", &o)] {
                forward.push(format!(
                    "-A {CHAIN_PREFIX}FORWARD -m physdev --physdev-{dir} {tap} --physdev-is-bridged \
                     -m comment --comment \"Direct traffic from the VM interface to the security group chain.\" \
                     -j {CHAIN_PREFIX}sg-chain"
                ));
                sg_chain.push(format!(
                    "-A {CHAIN_PREFIX}sg-chain -m physdev --physdev-{dir} {tap} --physdev-is-bridged \
                     -m comment --comment \"Jump to the VM specific chain.\" -j {chain}"
                ));
            }
            input.push(format!(
                "-A {CHAIN_PREFIX}INPUT -m physdev --physdev-in {tap} --physdev-is-bridged \
                 -m comment --comment \"Direct incoming traffic from VM to the security group chain.\" -j {o}"
            ));

            let (ingress, egress) = self.port_rules(port, &sets, Family::V4)?;

            // Ingress: the provider DHCP rules, then the groups'.
            let mut in_rules = vec![established(&i)];
            for dst in port
                .fixed_ips
                .iter()
                .filter(|f| !f.ip_address.contains(':'))
                .map(|f| format!("{}/32", f.ip_address))
                .chain(std::iter::once("255.255.255.255/32".to_owned()))
            {
                in_rules.push(format!(
                    "-A {i} -d {dst} -p udp -m udp --sport 67 --dport 68 -j RETURN"
                ));
            }
            in_rules.extend(dedup(ingress).into_iter().map(|r| format!("-A {i} {r}")));
            in_rules.push(invalid(&i));
            in_rules.push(fallback(&i));

            let mut out_rules = vec![
                format!(
                    "-A {o} -s 0.0.0.0/32 -d 255.255.255.255/32 -p udp -m udp --sport 68 --dport 67 \
                     -m comment --comment \"Allow DHCP client traffic.\" -j RETURN"
                ),
                format!("-A {o} -j {s}"),
                format!(
                    "-A {o} -p udp -m udp --sport 68 --dport 67 \
                     -m comment --comment \"Allow DHCP client traffic.\" -j RETURN"
                ),
                format!(
                    "-A {o} -p udp -m udp --sport 67 --dport 68 \
                     -m comment --comment \"Prevent DHCP Spoofing by VM.\" -j DROP"
                ),
                established(&o),
            ];
            out_rules.extend(dedup(egress).into_iter().map(|r| format!("-A {o} {r}")));
            out_rules.push(invalid(&o));
            out_rules.push(fallback(&o));

            // Anti-spoofing: address pairs first, then the fixed IPs, each with its MAC.
            let mut spoof = Vec::new();
            let own_mac = port.mac_address.to_ascii_uppercase();
            for pair in &port.allowed_address_pairs {
                if pair.ip_address.contains(':') {
                    continue;
                }
                let mac = pair
                    .mac_address
                    .as_deref()
                    .map_or(own_mac.clone(), str::to_ascii_uppercase);
                spoof.push(pair_rule(&s, &pair.ip_address, &mac));
            }
            for f in port
                .fixed_ips
                .iter()
                .filter(|f| !f.ip_address.contains(':'))
            {
                spoof.push(pair_rule(&s, &f.ip_address, &own_mac));
            }
            if port.fixed_ips.is_empty() {
                spoof.push(format!(
                    "-A {s} -m mac --mac-source {own_mac} \
                     -m comment --comment \"Allow traffic from defined IP/MAC pairs.\" -j RETURN"
                ));
            }
            spoof.push(format!(
                "-A {s} -m comment --comment \"Drop traffic without an IP/MAC allow rule.\" -j DROP"
            ));

            port_chains.push((i, in_rules));
            port_chains.push((o, out_rules));
            port_chains.push((s, spoof));
        }
        // Ports with port security off: accepted both ways, never filtered.
        for port in self.ports.iter().filter(|p| !p.port_security_enabled) {
            let tap = tap_device(&port.id);
            for dir in ["out", "in"] {
                forward.push(format!(
                    "-A {CHAIN_PREFIX}FORWARD -m physdev --physdev-{dir} {tap} --physdev-is-bridged \
                     -m comment --comment \"Accept all packets when port security is disabled.\" -j ACCEPT"
                ));
            }
            input.push(format!(
                "-A {CHAIN_PREFIX}INPUT -m physdev --physdev-in {tap} --physdev-is-bridged \
                 -m comment --comment \"Accept all packets when port security is disabled.\" -j ACCEPT"
            ));
        }
        sg_chain.push(format!("-A {CHAIN_PREFIX}sg-chain -j ACCEPT"));

        let t = restore_script(&raw, &forward, &input, &sg_chain, &port_chains);
        Ok(HybridFirewall { ipset, iptables: t })
    }

    /// The kernel's IPv6 version of these groups: the `ipset restore` script of the
    /// `NIPv6<group>` sets and the `ip6tables-restore` script (in
    /// [`HybridFirewall::iptables`]), each port's VM-side device named as the hybrid
    /// plug names it.
    pub fn to_hybrid_firewall6(&self) -> Result<HybridFirewall, String> {
        self.to_hybrid_firewall6_on(&BTreeMap::new())
    }

    /// [`SgState::to_hybrid_firewall6`] with the VM-side device of the ports in `devices`
    /// named otherwise.
    pub fn to_hybrid_firewall6_on(
        &self,
        devices: &BTreeMap<String, String>,
    ) -> Result<HybridFirewall, String> {
        let family = Family::V6;
        let tap_device = |id: &str| devices.get(id).cloned().unwrap_or_else(|| tap_device(id));
        let mut sets: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for port in self.ports.iter().filter(|p| p.port_security_enabled) {
            for gid in &port.security_groups {
                for rule in self.rules_of(gid)? {
                    if rule.ethertype.as_deref() != Some("IPv6") {
                        continue;
                    }
                    if let Some(remote) = &rule.remote_group_id {
                        let members = self.group_members_of(remote, family);
                        if !members.is_empty() {
                            sets.insert(remote.clone(), members);
                        }
                    } else if let Some(ag) = &rule.remote_address_group_id {
                        let members = self.address_group_members_of(ag, family)?;
                        if !members.is_empty() {
                            sets.insert(ag.clone(), members);
                        }
                    }
                }
            }
        }
        let mut ipset = String::new();
        for (id, members) in &sets {
            let name = ipset_name6(id);
            writeln!(
                ipset,
                "create {name} hash:net family inet6 hashsize 1024 maxelem 65536 -exist"
            )
            .unwrap();
            for m in members {
                writeln!(ipset, "add {name} {m} -exist").unwrap();
            }
        }

        let (mut raw, mut forward, mut input, mut sg_chain) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut port_chains: Vec<(String, Vec<String>)> = Vec::new();
        for (n, port) in self.filtered_sorted().iter().enumerate() {
            let tap = tap_device(&port.id);
            // The same zone rules as IPv4's (`_add_raw_rule` writes both tables).
            let stateful = match port.security_groups.first() {
                Some(g) => self.group(g)?.stateful,
                None => true,
            };
            let suffix = &port.id;
            let (comment, target) = if stateful {
                (
                    format!("Set zone for {suffix}"),
                    format!("CT --zone {}", FIRST_ZONE + n as u32),
                )
            } else {
                (
                    format!("Make {suffix} stateless"),
                    "CT --notrack".to_owned(),
                )
            };
            let qvb = qvb_device(&port.id);
            for m in [
                format!("-m physdev --physdev-in {qvb}"),
                format!("-i {qvb}"),
                format!("-m physdev --physdev-in {tap}"),
            ] {
                raw.push(format!(
                    "-A {CHAIN_PREFIX}PREROUTING {m} -m comment --comment \"{comment}\" -j {target}"
                ));
            }
            let (i, o, sp) = (
                port_chain('i', &port.id),
                port_chain('o', &port.id),
                port_chain('s', &port.id),
            );
            for (dir, chain) in [("out", &i), ("in", &o)] {
                forward.push(format!(
                    "-A {CHAIN_PREFIX}FORWARD -m physdev --physdev-{dir} {tap} --physdev-is-bridged \
                     -m comment --comment \"Direct traffic from the VM interface to the security group chain.\" \
                     -j {CHAIN_PREFIX}sg-chain"
                ));
                sg_chain.push(format!(
                    "-A {CHAIN_PREFIX}sg-chain -m physdev --physdev-{dir} {tap} --physdev-is-bridged \
                     -m comment --comment \"Jump to the VM specific chain.\" -j {chain}"
                ));
            }
            input.push(format!(
                "-A {CHAIN_PREFIX}INPUT -m physdev --physdev-in {tap} --physdev-is-bridged \
                 -m comment --comment \"Direct incoming traffic from VM to the security group chain.\" -j {o}"
            ));

            let (mut ingress, egress) = self.port_rules(port, &sets, family)?;
            // The provider rule: router advertisements from each IPv6 subnet's link-local
            // gateway on the port's network, when the port has an IPv6 fixed IP.
            if port.fixed_ips.iter().any(|f| family.has(&f.ip_address)) {
                for gw in self.ra_sources(&port.network_id) {
                    ingress.push(format!(
                        "-s {gw}/128 -p ipv6-icmp -m icmp6 --icmpv6-type 134 -j RETURN"
                    ));
                }
            }

            // Ingress: `_accept_inbound_icmpv6` first, then the state and the rules.
            let mut in_rules: Vec<String> = ICMPV6_ALLOWED_INGRESS_TYPES
                .iter()
                .map(|t| format!("-A {i} -p ipv6-icmp -m icmp6 --icmpv6-type {t} -j RETURN"))
                .collect();
            in_rules.push(established(&i));
            in_rules.extend(dedup(ingress).into_iter().map(|r| format!("-A {i} {r}")));
            in_rules.push(invalid(&i));
            in_rules.push(fallback(&i));

            // Egress: `_spoofing_rule` and `_drop_dhcp_rule` for IPv6, then the rest.
            let mut out_rules: Vec<String> = ICMPV6_ALLOWED_UNSPEC_ADDR_TYPES
                .iter()
                .map(|t| {
                    format!(
                        "-A {o} -s ::/128 -d ff02::/16 -p ipv6-icmp -m icmp6 --icmpv6-type {t} \
                         -m comment --comment \"Allow IPv6 ICMP traffic.\" -j RETURN"
                    )
                })
                .collect();
            out_rules.extend([
                format!("-A {o} -j {sp}"),
                format!(
                    "-A {o} -p ipv6-icmp -m icmp6 --icmpv6-type 134 \
                     -m comment --comment \"Drop IPv6 Router Advts from VM Instance.\" -j DROP"
                ),
                format!(
                    "-A {o} -p ipv6-icmp -m comment --comment \"Allow IPv6 ICMP traffic.\" -j RETURN"
                ),
                format!(
                    "-A {o} -p udp -m udp --sport 546 --dport 547 \
                     -m comment --comment \"Allow DHCP client traffic.\" -j RETURN"
                ),
                format!(
                    "-A {o} -p udp -m udp --sport 547 --dport 546 \
                     -m comment --comment \"Prevent DHCP Spoofing by VM.\" -j DROP"
                ),
                established(&o),
            ]);
            out_rules.extend(dedup(egress).into_iter().map(|r| format!("-A {o} {r}")));
            out_rules.push(invalid(&o));
            out_rules.push(fallback(&o));

            // Anti-spoofing: each (MAC, address) pair and each MAC's link-local address
            // (`_build_ipv4v6_mac_ip_list`), address pairs first.
            let own_mac = port.mac_address.to_ascii_uppercase();
            let mut pairs: Vec<(String, String)> = Vec::new();
            let mut push = |mac: &str, ip: &str| {
                for p in [
                    (mac.to_owned(), ip.to_owned()),
                    (mac.to_owned(), link_local(mac)),
                ] {
                    if !pairs.contains(&p) {
                        pairs.push(p);
                    }
                }
            };
            for pair in &port.allowed_address_pairs {
                if family.has(&pair.ip_address) {
                    let mac = pair
                        .mac_address
                        .as_deref()
                        .map_or(own_mac.clone(), str::to_ascii_uppercase);
                    push(&mac, &pair.ip_address);
                }
            }
            for f in port.fixed_ips.iter().filter(|f| family.has(&f.ip_address)) {
                push(&own_mac, &f.ip_address);
            }
            let mut spoof: Vec<String> = pairs
                .iter()
                .map(|(mac, ip)| pair_rule6(&sp, ip, mac))
                .collect();
            if port.fixed_ips.is_empty() {
                spoof.push(format!(
                    "-A {sp} -m mac --mac-source {own_mac} \
                     -m comment --comment \"Allow traffic from defined IP/MAC pairs.\" -j RETURN"
                ));
            }
            spoof.push(format!(
                "-A {sp} -m comment --comment \"Drop traffic without an IP/MAC allow rule.\" -j DROP"
            ));
            port_chains.push((i, in_rules));
            port_chains.push((o, out_rules));
            port_chains.push((sp, spoof));
        }
        for port in self.ports.iter().filter(|p| !p.port_security_enabled) {
            let tap = tap_device(&port.id);
            for dir in ["out", "in"] {
                forward.push(format!(
                    "-A {CHAIN_PREFIX}FORWARD -m physdev --physdev-{dir} {tap} --physdev-is-bridged \
                     -m comment --comment \"Accept all packets when port security is disabled.\" -j ACCEPT"
                ));
            }
            input.push(format!(
                "-A {CHAIN_PREFIX}INPUT -m physdev --physdev-in {tap} --physdev-is-bridged \
                 -m comment --comment \"Accept all packets when port security is disabled.\" -j ACCEPT"
            ));
        }
        sg_chain.push(format!("-A {CHAIN_PREFIX}sg-chain -j ACCEPT"));
        let t = restore_script(&raw, &forward, &input, &sg_chain, &port_chains);
        Ok(HybridFirewall { ipset, iptables: t })
    }

    /// The link-local gateways of the IPv6 subnets of network `id`, the sources the
    /// server lets router advertisements in from.
    fn ra_sources(&self, network_id: &str) -> Vec<String> {
        self.subnets
            .iter()
            .filter(|s| s.network_id == network_id && s.ip_version == Some(6))
            .filter_map(|s| s.gateway_ip.clone())
            .filter(|g| g.to_ascii_lowercase().starts_with("fe80:"))
            .collect()
    }

    /// The rule arguments (without `-A chain`) of `port`'s groups, ingress and egress.
    fn port_rules(
        &self,
        port: &SgPort,
        sets: &BTreeMap<String, Vec<String>>,
        family: Family,
    ) -> Result<(Vec<String>, Vec<String>), String> {
        let (mut ingress, mut egress) = (Vec::new(), Vec::new());
        for gid in &port.security_groups {
            for rule in self.rules_of(gid)? {
                match rule.ethertype.as_deref().unwrap_or("IPv4") {
                    "IPv4" | "IPv6" => {}
                    e => return Err(format!("group `{gid}`: ethertype `{e}`")),
                }
                if rule.ethertype.as_deref().unwrap_or("IPv4") != family.ethertype() {
                    continue;
                }
                let ingress_rule = match rule.direction.as_str() {
                    "ingress" => true,
                    "egress" => false,
                    d => return Err(format!("group `{gid}`: direction `{d}`")),
                };
                let Some(args) = rule_args(rule, ingress_rule, sets, family)? else {
                    continue;
                };
                if ingress_rule {
                    ingress.push(args);
                } else {
                    egress.push(args);
                }
            }
        }
        Ok((ingress, egress))
    }
}

/// The `iptables-restore` (or `ip6tables-restore`) script of the driver's chains: the
/// `raw` zone rules, then the filter table's jumps, the per-port chains and the fallback.
fn restore_script(
    raw: &[String],
    forward: &[String],
    input: &[String],
    sg_chain: &[String],
    port_chains: &[(String, Vec<String>)],
) -> String {
    let mut t = String::new();
    t.push_str("*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    writeln!(t, ":{CHAIN_PREFIX}OUTPUT - [0:0]").unwrap();
    writeln!(t, ":{CHAIN_PREFIX}PREROUTING - [0:0]").unwrap();
    writeln!(t, "-A PREROUTING -j {CHAIN_PREFIX}PREROUTING").unwrap();
    writeln!(t, "-A OUTPUT -j {CHAIN_PREFIX}OUTPUT").unwrap();
    for r in raw {
        writeln!(t, "{r}").unwrap();
    }
    t.push_str(
        "COMMIT\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n",
    );
    t.push_str(":neutron-filter-top - [0:0]\n");
    for c in [
        "FORWARD",
        "INPUT",
        "OUTPUT",
        "local",
        "sg-chain",
        "sg-fallback",
    ] {
        writeln!(t, ":{CHAIN_PREFIX}{c} - [0:0]").unwrap();
    }
    for (c, _) in port_chains {
        writeln!(t, ":{c} - [0:0]").unwrap();
    }
    t.push_str("-A INPUT -j ");
    writeln!(t, "{CHAIN_PREFIX}INPUT").unwrap();
    t.push_str("-A FORWARD -j neutron-filter-top\n");
    writeln!(t, "-A FORWARD -j {CHAIN_PREFIX}FORWARD").unwrap();
    t.push_str("-A OUTPUT -j neutron-filter-top\n");
    writeln!(t, "-A OUTPUT -j {CHAIN_PREFIX}OUTPUT").unwrap();
    writeln!(t, "-A neutron-filter-top -j {CHAIN_PREFIX}local").unwrap();
    for r in forward.iter().chain(input).chain(sg_chain) {
        writeln!(t, "{r}").unwrap();
    }
    for (_, rules) in port_chains {
        for r in rules {
            writeln!(t, "{r}").unwrap();
        }
    }
    writeln!(
        t,
        "-A {CHAIN_PREFIX}sg-fallback -m comment --comment \"Default drop rule for unmatched traffic.\" -j DROP"
    )
    .unwrap();
    t.push_str("COMMIT\n");
    t
}

fn established(chain: &str) -> String {
    format!(
        "-A {chain} -m state --state RELATED,ESTABLISHED \
         -m comment --comment \"Direct packets associated with a known session to the RETURN chain.\" -j RETURN"
    )
}

fn invalid(chain: &str) -> String {
    format!(
        "-A {chain} -m state --state INVALID \
         -m comment --comment \"Drop packets that appear related to an existing connection (e.g. TCP ACK/FIN) but do not have an entry in conntrack.\" -j DROP"
    )
}

fn fallback(chain: &str) -> String {
    format!(
        "-A {chain} -m comment --comment \"Send unmatched traffic to the fallback chain.\" \
         -j {CHAIN_PREFIX}sg-fallback"
    )
}

fn pair_rule(chain: &str, ip: &str, mac: &str) -> String {
    let cidr = if ip.contains('/') {
        ip.to_owned()
    } else {
        format!("{ip}/32")
    };
    format!(
        "-A {chain} -s {cidr} -m mac --mac-source {mac} \
         -m comment --comment \"Allow traffic from defined IP/MAC pairs.\" -j RETURN"
    )
}

/// `firewall.ICMPV6_ALLOWED_INGRESS_TYPES`: MLD query, neighbour solicitation and
/// advertisement.
const ICMPV6_ALLOWED_INGRESS_TYPES: [u8; 3] = [130, 135, 136];
/// `constants.ICMPV6_ALLOWED_UNSPEC_ADDR_TYPES`: MLD report, neighbour solicitation, MLDv2
/// report (duplicate address detection and its MLD from `::`).
const ICMPV6_ALLOWED_UNSPEC_ADDR_TYPES: [u8; 3] = [131, 135, 143];

fn pair_rule6(chain: &str, ip: &str, mac: &str) -> String {
    format!(
        "-A {chain} -s {} -m mac --mac-source {mac} \
         -m comment --comment \"Allow traffic from defined IP/MAC pairs.\" -j RETURN",
        as_cidr(ip, Family::V6)
    )
}

/// Rules from several groups may repeat; the driver keeps the first.
fn dedup(rules: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    rules
        .into_iter()
        .filter(|r| seen.insert(r.clone()))
        .collect()
}

/// The iptables name of a protocol (`_iptables_protocol_name`): numbers of the well-known
/// ones become their names, as the driver's name map does; 0 and `any` mean none.
fn protocol_name(p: &Protocol) -> Option<String> {
    let s = match p {
        Protocol::Number(n) => n.to_string(),
        Protocol::Name(s) => s.to_ascii_lowercase(),
    };
    let name = match s.as_str() {
        "" | "0" | "any" => return None,
        "1" => "icmp",
        "6" => "tcp",
        "17" => "udp",
        "33" => "dccp",
        "47" => "gre",
        "58" | "icmpv6" | "ipv6-icmp" => "ipv6-icmp",
        "132" => "sctp",
        "136" => "udplite",
        other => other,
    };
    Some(name.to_owned())
}

/// `_convert_sg_rule_to_iptables_args` for one rule; `None` when the driver leaves it out
/// (a remote group without members).
fn rule_args(
    rule: &SgRule,
    ingress: bool,
    sets: &BTreeMap<String, Vec<String>>,
    family: Family,
) -> Result<Option<String>, String> {
    // An IPv6 rule's legacy `icmp` is ICMPv6 (`_split_sgr_by_ethertype`).
    let protocol =
        rule.protocol
            .as_ref()
            .and_then(protocol_name)
            .map(|p| match (family, p.as_str()) {
                (Family::V6, "icmp") => "ipv6-icmp".to_owned(),
                _ => p,
            });
    let mut args: Vec<String> = Vec::new();
    let remote_set = rule
        .remote_group_id
        .as_ref()
        .or(rule.remote_address_group_id.as_ref());
    if remote_set.is_none() {
        if let Some(prefix) = &rule.remote_ip_prefix {
            if !prefix.ends_with("/0") {
                let cidr = as_cidr(prefix, family);
                args.push(format!("{} {cidr}", if ingress { "-s" } else { "-d" }));
            }
        }
    }
    if let Some(p) = &protocol {
        args.push(format!("-p {p}"));
        let module = match p.as_str() {
            "tcp" | "udp" | "sctp" | "dccp" | "icmp" => Some(p.as_str()),
            "ipv6-icmp" => Some("icmp6"),
            _ => None,
        };
        if let (Some(m), Some(_)) = (module, rule.port_range_min) {
            args.push(format!("-m {m}"));
        }
        if let Some(min) = rule.port_range_min {
            match p.as_str() {
                "icmp" | "ipv6-icmp" => {
                    let kind = if p == "icmp" { "icmp" } else { "icmpv6" };
                    let mut t = format!("--{kind}-type {min}");
                    if let Some(code) = rule.port_range_max {
                        write!(t, "/{code}").unwrap();
                    }
                    args.push(t);
                }
                "tcp" | "udp" | "sctp" | "dccp" => {
                    let max = rule.port_range_max.unwrap_or(min);
                    if min == max {
                        args.push(format!("--dport {min}"));
                    } else {
                        args.push(format!("-m multiport --dports {min}:{max}"));
                    }
                }
                "udplite" => {
                    let max = rule.port_range_max.unwrap_or(min);
                    if min == max {
                        args.push(format!("-m multiport --dports {min}"));
                    } else {
                        args.push(format!("-m multiport --dports {min}:{max}"));
                    }
                }
                _ => {}
            }
        }
    }
    if let Some(id) = remote_set {
        if !sets.contains_key(id) {
            return Ok(None);
        }
        args.push(format!(
            "-m set --match-set {} {}",
            family.ipset_name(id),
            if ingress { "src" } else { "dst" }
        ));
    }
    args.push("-j RETURN".to_owned());
    Ok(Some(args.join(" ")))
}

/// `text` (a TOML desired state) without the rule whose `id` is `rule_id`, nested or
/// top-level: the state after a rule deletion.
pub fn toml_without_rule(text: &str, rule_id: &str) -> Result<String, String> {
    let mut doc: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    let is_it = |r: &toml::Value| r.get("id").and_then(toml::Value::as_str) == Some(rule_id);
    let mut removed = 0;
    if let Some(groups) = doc
        .get_mut("security_groups")
        .and_then(toml::Value::as_array_mut)
    {
        for g in groups {
            if let Some(rules) = g.get_mut("rules").and_then(toml::Value::as_array_mut) {
                let before = rules.len();
                rules.retain(|r| !is_it(r));
                removed += before - rules.len();
            }
        }
    }
    if let Some(rules) = doc
        .get_mut("security_group_rules")
        .and_then(toml::Value::as_array_mut)
    {
        let before = rules.len();
        rules.retain(|r| !is_it(r));
        removed += before - rules.len();
    }
    if removed != 1 {
        return Err(format!("{removed} rules with id `{rule_id}`"));
    }
    toml::to_string(&doc).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: &str = r#"
[[address_groups]]
id = "admins"
addresses = ["203.0.113.0/28"]

[[security_groups]]
id = "web"
[[security_groups.rules]]
direction = "ingress"
protocol = "tcp"
port_range_min = 8000
port_range_max = 8099
remote_ip_prefix = "198.18.40.0/24"
[[security_groups.rules]]
direction = "ingress"
protocol = "icmp"
port_range_min = 8

[[security_groups]]
id = "app"
stateful = false

[[security_group_rules]]
id = "r1"
security_group_id = "web"
direction = "ingress"
protocol = "udp"
port_range_min = 5000
port_range_max = 5000
remote_group_id = "app"

[[security_group_rules]]
id = "r2"
security_group_id = "web"
direction = "ingress"
protocol = 17
port_range_min = 7000
port_range_max = 7000
remote_address_group_id = "admins"

[[ports]]
id = "m1"
network_id = "n"
mac_address = "fa:16:3e:00:00:01"
fixed_ips = [{ subnet_id = "s", ip_address = "198.18.40.11" }]
security_groups = ["web"]
binding = { driver = "mem" }

[[ports]]
id = "m2"
network_id = "n"
mac_address = "fa:16:3e:00:00:02"
fixed_ips = [{ subnet_id = "s", ip_address = "198.18.40.12" }]
security_groups = ["app"]
binding = { driver = "mem" }

[[ports]]
id = "x"
network_id = "n"
mac_address = "fa:16:3e:00:00:03"
port_security_enabled = false
binding = { driver = "mem" }
"#;

    fn fw() -> HybridFirewall {
        SgState::from_toml(STATE)
            .unwrap()
            .to_hybrid_firewall()
            .unwrap()
    }

    #[test]
    fn group_rules_take_the_drivers_shapes() {
        let t = fw().iptables;
        let i = "neutron-openvswi-im1";
        for want in [
            format!(
                "-A {i} -s 198.18.40.0/24 -p tcp -m tcp -m multiport --dports 8000:8099 -j RETURN"
            ),
            format!("-A {i} -p icmp -m icmp --icmp-type 8 -j RETURN"),
            format!("-A {i} -p udp -m udp --dport 5000 -m set --match-set NIPv4app src -j RETURN"),
            format!(
                "-A {i} -p udp -m udp --dport 7000 -m set --match-set NIPv4admins src -j RETURN"
            ),
            format!("-A {i} -d 198.18.40.11/32 -p udp -m udp --sport 67 --dport 68 -j RETURN"),
            "-A neutron-openvswi-sm1 -s 198.18.40.11/32 -m mac --mac-source FA:16:3E:00:00:01"
                .to_owned(),
            "-A neutron-openvswi-sg-chain -m physdev --physdev-out tapm1 --physdev-is-bridged"
                .to_owned(),
            "-A neutron-openvswi-FORWARD -m physdev --physdev-in tapx --physdev-is-bridged"
                .to_owned(),
        ] {
            assert!(t.contains(&want), "missing `{want}` in\n{t}");
        }
        // RELATED,ESTABLISHED first, the group rules, INVALID, the fallback last.
        let chain: Vec<&str> = t
            .lines()
            .filter(|l| l.starts_with(&format!("-A {i} ")))
            .collect();
        assert!(chain[0].contains("RELATED,ESTABLISHED"), "{chain:?}");
        assert!(chain[chain.len() - 2].contains("INVALID"), "{chain:?}");
        assert!(chain[chain.len() - 1].ends_with("-j neutron-openvswi-sg-fallback"));
    }

    #[test]
    fn stateless_ports_are_untracked_and_stateful_ones_zoned() {
        let t = fw().iptables;
        assert!(t.contains("-m physdev --physdev-in tapm2 -m comment --comment \"Make m2 stateless\" -j CT --notrack"));
        assert!(t.contains("-m physdev --physdev-in tapm1 -m comment --comment \"Set zone for m1\" -j CT --zone 4097"));
        assert!(!t.contains("physdev-in tapx -m comment --comment \"Set zone"));
    }

    #[test]
    fn sets_hold_group_members_and_address_groups() {
        let s = fw().ipset;
        assert!(s.contains("create NIPv4app hash:net family inet"), "{s}");
        assert!(s.contains("add NIPv4app 198.18.40.12 -exist"), "{s}");
        assert!(s.contains("add NIPv4admins 203.0.113.0/28 -exist"), "{s}");
        assert!(!s.contains("NIPv4web"), "{s}");
    }

    #[test]
    fn a_removed_rule_deletes_the_ports_connections_as_the_driver_does() {
        let state = SgState::from_toml(STATE).unwrap();
        let (group, rule) = state.rule_by_id("r1").unwrap();
        assert_eq!(group, "web");
        let cmds = state.conntrack_deletes(&group, &rule);
        let want: Vec<String> = "-D -p udp -f ipv4 -d 198.18.40.11 -w 4097"
            .split(' ')
            .map(str::to_owned)
            .collect();
        assert_eq!(cmds, vec![want]);
        let after = SgState::from_toml(&toml_without_rule(STATE, "r1").unwrap()).unwrap();
        assert!(after.rule_by_id("r1").is_none());
        assert!(after.rule_by_id("r2").is_some());
        assert!(toml_without_rule(STATE, "nope").is_err());
    }

    #[test]
    fn ipv6_rules_go_to_the_ip6tables_script_only() {
        let text = format!(
            "{STATE}\n[[security_group_rules]]\nid = \"v6\"\nsecurity_group_id = \"web\"\ndirection = \"ingress\"\nethertype = \"IPv6\"\nprotocol = \"icmp\"\nport_range_min = 128\nremote_group_id = \"app\"\n"
        );
        let state = SgState::from_toml(&text).unwrap();
        let v4 = state.to_hybrid_firewall().unwrap();
        assert!(!v4.iptables.contains("icmpv6"), "{}", v4.iptables);
        // app has no IPv6 member: no set, and the rule is left out, as the driver does.
        let v6 = state.to_hybrid_firewall6().unwrap();
        assert!(v6.ipset.is_empty(), "{}", v6.ipset);
        assert!(
            !v6.iptables.contains("--icmpv6-type 128"),
            "{}",
            v6.iptables
        );
        let text = text.replace(
            "ip_address = \"198.18.40.12\" }]",
            "ip_address = \"198.18.40.12\" }, { subnet_id = \"s6\", ip_address = \"2001:db8:40::12\" }]",
        );
        let v6 = SgState::from_toml(&text)
            .unwrap()
            .to_hybrid_firewall6()
            .unwrap();
        assert!(
            v6.ipset.contains("create NIPv6app hash:net family inet6")
                && v6.ipset.contains("add NIPv6app 2001:db8:40::12 -exist"),
            "{}",
            v6.ipset
        );
        let i = "-A neutron-openvswi-im1";
        for want in [
            format!("{i} -p ipv6-icmp -m icmp6 --icmpv6-type 128 -m set --match-set NIPv6app src -j RETURN"),
            format!("{i} -p ipv6-icmp -m icmp6 --icmpv6-type 135 -j RETURN"),
            "-A neutron-openvswi-sm2 -s 2001:db8:40::12/128 -m mac --mac-source FA:16:3E:00:00:02".to_owned(),
            "-A neutron-openvswi-sm2 -s fe80::f816:3eff:fe00:2/128 -m mac --mac-source FA:16:3E:00:00:02".to_owned(),
            "-A neutron-openvswi-om2 -p ipv6-icmp -m icmp6 --icmpv6-type 134".to_owned(),
        ] {
            assert!(v6.iptables.contains(&want), "missing `{want}` in\n{}", v6.iptables);
        }
        assert!(!v6.iptables.contains("--icmp-type"), "{}", v6.iptables);
    }
}
