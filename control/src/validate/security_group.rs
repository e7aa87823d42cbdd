//! Security groups, their rules (nested in the group or in the top-level
//! `security_group_rules`) and address groups, with Neutron's rules for each field.

use std::collections::HashMap;
use std::net::Ipv6Addr;

use super::{Checked, Checker};
use crate::model::{self, Direction, ProtocolSpec};
use pollux_services::addr::Ipv4Cidr;

/// IP protocol numbers a rule's ports apply to: destination port ranges.
const PORT_PROTOCOLS: [u8; 4] = [6, 17, 33, 132];
/// UDP-Lite, which has ports too.
const UDPLITE: u8 = 136;
/// ICMP, whose rules take a type and a code.
pub const ICMP: u8 = 1;
/// ICMPv6.
const ICMPV6: u8 = 58;
/// IGMP, which IPv6 does not have (MLD is ICMPv6).
const ICMP_V4_ONLY: u8 = 2;

/// The protocol names the Neutron API accepts, with their numbers.
const PROTOCOL_NAMES: [(&str, u8); 24] = [
    ("ah", 51),
    ("dccp", 33),
    ("egp", 8),
    ("esp", 50),
    ("gre", 47),
    ("hopopt", 0),
    ("icmp", 1),
    ("icmpv6", 58),
    ("igmp", 2),
    ("ipip", 4),
    ("ipv6-encap", 41),
    ("ipv6-frag", 44),
    ("ipv6-icmp", 58),
    ("ipv6-nonxt", 59),
    ("ipv6-opts", 60),
    ("ipv6-route", 43),
    ("ospf", 89),
    ("pgm", 113),
    ("rsvp", 46),
    ("sctp", 132),
    ("tcp", 6),
    ("udp", 17),
    ("udplite", 136),
    ("vrrp", 112),
];

/// What a rule matches beyond its protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortMatch {
    /// Any port, type or code.
    Any,
    /// Destination ports `min..=max` (protocols with ports).
    Ports(u16, u16),
    /// ICMP type and code, each `None` for any (a code needs a type).
    Icmp(Option<u8>, Option<u8>),
}

/// Whom a rule allows at the remote end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remote {
    /// Anyone.
    Any,
    /// Addresses in a prefix.
    Prefix(Ipv4Cidr),
    /// Addresses in an IPv6 prefix (network address, length), in an IPv6 rule.
    Prefix6(Ipv6Addr, u8),
    /// The addresses of the ports in a security group (index).
    Group(usize),
    /// The addresses of an address group (index).
    AddressGroup(usize),
}

/// A checked security group rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Its id: given, or `<group id>/<index>` for a nested rule without one.
    pub id: String,
    /// Direction.
    pub direction: Direction,
    /// `ethertype = "IPv6"`: the rule matches IPv6 packets only (else IPv4 only).
    pub ipv6: bool,
    /// IP protocol number; `None` is any.
    pub protocol: Option<u8>,
    /// Ports or ICMP type and code.
    pub ports: PortMatch,
    /// Remote end.
    pub remote: Remote,
}

/// A checked security group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecurityGroup {
    /// Unique id.
    pub id: String,
    /// Connection tracking on.
    pub stateful: bool,
    /// Rules: the nested ones, then those of `security_group_rules` naming the group.
    pub rules: Vec<Rule>,
}

/// A checked address group: its IPv4 prefixes, which IPv4 rules naming it match, and its
/// IPv6 prefixes, which IPv6 rules match (Neutron keeps one set per ethertype).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressGroup {
    /// Unique id.
    pub id: String,
    /// IPv4 prefixes.
    pub ipv4: Vec<Ipv4Cidr>,
    /// IPv6 prefixes (network address, length).
    pub ipv6: Vec<(Ipv6Addr, u8)>,
}

/// The number of a protocol name (any case) or number in a string, as Neutron accepts.
pub fn protocol_number(name: &str) -> Option<u8> {
    let lower = name.to_ascii_lowercase();
    if !lower.is_empty() && lower.bytes().all(|b| b.is_ascii_digit()) {
        return lower.parse().ok();
    }
    PROTOCOL_NAMES
        .iter()
        .find(|(n, _)| *n == lower)
        .map(|&(_, p)| p)
}

impl Checker {
    pub(super) fn address_groups(
        &mut self,
        groups: &[model::AddressGroup],
    ) -> Checked<AddressGroup> {
        let mut out: Checked<AddressGroup> = Checked::default();
        for (i, g) in groups.iter().enumerate() {
            let before = self.errors.len();
            self.id(
                format!("address_groups[{i}].id"),
                &g.id,
                "address_group",
                &mut out.by_id,
                i,
            );
            let mut ipv4 = Vec::new();
            let mut ipv6 = Vec::new();
            for (k, a) in g.addresses.iter().enumerate() {
                let path = format!("address_groups[{i}].addresses[{k}]");
                if a.contains(':') {
                    if let Some(p) = self.ipv6_prefix(&path, a) {
                        ipv6.push(p);
                    }
                    continue;
                }
                let text = if a.contains('/') {
                    a.clone()
                } else {
                    format!("{a}/32")
                };
                if let Some(c) = self.cidr(&path, &text) {
                    ipv4.push(c);
                }
            }
            out.ok.push(self.clean(before));
            out.items.push(AddressGroup {
                id: g.id.clone(),
                ipv4,
                ipv6,
            });
        }
        out
    }

    pub(super) fn security_groups(
        &mut self,
        groups: &[model::SecurityGroup],
        top_level: &[model::SecurityGroupRule],
        address_groups: &Checked<AddressGroup>,
    ) -> Checked<SecurityGroup> {
        let mut out: Checked<SecurityGroup> = Checked::default();
        for (i, g) in groups.iter().enumerate() {
            let before = self.errors.len();
            self.id(
                format!("security_groups[{i}].id"),
                &g.id,
                "security_group",
                &mut out.by_id,
                i,
            );
            out.ok.push(self.clean(before));
            out.items.push(SecurityGroup {
                id: g.id.clone(),
                stateful: g.stateful,
                rules: Vec::new(),
            });
        }
        // Rule ids are unique over both places, as in Neutron's one rules collection.
        let mut rule_ids: HashMap<String, String> = HashMap::new();
        for (i, g) in groups.iter().enumerate() {
            for (k, r) in g.rules.iter().enumerate() {
                let base = format!("security_groups[{i}].rules[{k}]");
                if let Some(sg) = &r.security_group_id {
                    if *sg != g.id {
                        self.err(
                            format!("{base}.security_group_id"),
                            format!("a rule nested in group {} cannot name group {sg}", g.id),
                        );
                    }
                }
                let id = match &r.id {
                    Some(id) => id.clone(),
                    None => format!("{}/{k}", g.id),
                };
                self.rule_id(&format!("{base}.id"), &id, &base, &mut rule_ids);
                let rule = self.rule(&base, id, r, &out, address_groups);
                out.items[i].rules.push(rule);
            }
        }
        for (k, r) in top_level.iter().enumerate() {
            let base = format!("security_group_rules[{k}]");
            let id = match &r.id {
                Some(id) => id.clone(),
                None => {
                    self.err(
                        format!("{base}.id"),
                        "a rule in security_group_rules needs an id",
                    );
                    String::new()
                }
            };
            if !id.is_empty() {
                self.rule_id(&format!("{base}.id"), &id, &base, &mut rule_ids);
            }
            let group = match &r.security_group_id {
                Some(g) => self.reference(
                    &format!("{base}.security_group_id"),
                    g,
                    "security group",
                    &out,
                ),
                None => {
                    self.err(
                        format!("{base}.security_group_id"),
                        "a rule in security_group_rules needs the security_group_id of its group",
                    );
                    None
                }
            };
            let rule = self.rule(&base, id, r, &out, address_groups);
            if let Some(g) = group {
                out.items[g].rules.push(rule);
            }
        }
        out
    }

    fn rule_id(&mut self, path: &str, id: &str, base: &str, ids: &mut HashMap<String, String>) {
        if id.is_empty() {
            self.err(path, "a rule id may not be empty");
        } else if let Some(first) = ids.get(id) {
            self.err(path, format!("rule id {id} is already used by {first}"));
        } else {
            ids.insert(id.to_owned(), base.to_owned());
        }
    }

    fn rule(
        &mut self,
        base: &str,
        id: String,
        r: &model::SecurityGroupRule,
        groups: &Checked<SecurityGroup>,
        address_groups: &Checked<AddressGroup>,
    ) -> Rule {
        let ipv6 = match r.ethertype.as_str() {
            "IPv4" => false,
            "IPv6" => true,
            e => {
                self.err(
                    format!("{base}.ethertype"),
                    format!("{e:?} is not an ethertype (IPv4 or IPv6)"),
                );
                false
            }
        };
        let mut protocol_bad = false;
        let protocol = match &r.protocol {
            None => None,
            Some(ProtocolSpec::Name(s)) if s.eq_ignore_ascii_case("any") => None,
            Some(p) => {
                let parsed = match p {
                    ProtocolSpec::Number(n) => u8::try_from(*n).ok(),
                    ProtocolSpec::Name(s) => protocol_number(s),
                };
                match parsed {
                    // Neutron stores `icmp` in an IPv6 rule as ICMPv6.
                    Some(ICMP) if ipv6 => Some(ICMPV6),
                    Some(ICMP_V4_ONLY) if ipv6 => {
                        self.err(
                            format!("{base}.protocol"),
                            format!("{p} is an IPv4 protocol; this rule's ethertype is IPv6"),
                        );
                        protocol_bad = true;
                        None
                    }
                    Some(ICMPV6) if !ipv6 => {
                        self.err(
                            format!("{base}.protocol"),
                            format!("{p} is an IPv6 protocol; this rule's ethertype is IPv4"),
                        );
                        protocol_bad = true;
                        None
                    }
                    Some(n) => Some(n),
                    None => {
                        self.err(
                            format!("{base}.protocol"),
                            format!(
                                "{p} is not a protocol (a name such as tcp, udp, icmp, sctp, \
                                 or a number 0..=255, or any)"
                            ),
                        );
                        protocol_bad = true;
                        None
                    }
                }
            }
        };
        let ports = if protocol_bad {
            PortMatch::Any
        } else {
            self.port_match(base, r, protocol)
        };
        let remote = self.remote(base, r, ipv6, groups, address_groups);
        Rule {
            id,
            direction: r.direction,
            ipv6,
            protocol,
            ports,
            remote,
        }
    }

    fn port_match(
        &mut self,
        base: &str,
        r: &model::SecurityGroupRule,
        protocol: Option<u8>,
    ) -> PortMatch {
        let (min, max) = (r.port_range_min, r.port_range_max);
        if min.is_none() && max.is_none() {
            return PortMatch::Any;
        }
        match protocol {
            Some(ICMP | ICMPV6) => {
                let mut byte = |field: &str, v: Option<i64>| -> Option<u8> {
                    let v = v?;
                    let b = u8::try_from(v).ok();
                    if b.is_none() {
                        self.err(
                            format!("{base}.{field}"),
                            format!(
                                "{v} is not an ICMP {} (0..=255)",
                                if field == "port_range_min" {
                                    "type"
                                } else {
                                    "code"
                                }
                            ),
                        );
                    }
                    b
                };
                let t = byte("port_range_min", min);
                let c = byte("port_range_max", max);
                if min.is_none() {
                    self.err(
                        format!("{base}.port_range_max"),
                        "an ICMP code (port_range_max) needs an ICMP type (port_range_min)",
                    );
                    return PortMatch::Any;
                }
                PortMatch::Icmp(t, c)
            }
            Some(p) if PORT_PROTOCOLS.contains(&p) || p == UDPLITE => {
                let mut port = |field: &str, v: Option<i64>| -> Option<u16> {
                    let v = v?;
                    match u16::try_from(v) {
                        Ok(p) if p >= 1 => Some(p),
                        _ => {
                            self.err(
                                format!("{base}.{field}"),
                                format!("{v} is not a port (1..=65535)"),
                            );
                            None
                        }
                    }
                };
                let a = port("port_range_min", min);
                let b = port("port_range_max", max);
                match (min, max) {
                    (None, _) => {
                        self.err(
                            format!("{base}.port_range_min"),
                            "port_range_max needs port_range_min too",
                        );
                        PortMatch::Any
                    }
                    (_, None) => {
                        self.err(
                            format!("{base}.port_range_max"),
                            "port_range_min needs port_range_max too",
                        );
                        PortMatch::Any
                    }
                    _ => match (a, b) {
                        (Some(a), Some(b)) if a > b => {
                            self.err(
                                format!("{base}.port_range_min"),
                                format!("{a} is greater than port_range_max {b}"),
                            );
                            PortMatch::Any
                        }
                        (Some(a), Some(b)) => PortMatch::Ports(a, b),
                        _ => PortMatch::Any,
                    },
                }
            }
            _ => {
                let field = if min.is_some() {
                    "port_range_min"
                } else {
                    "port_range_max"
                };
                let proto = r
                    .protocol
                    .as_ref()
                    .map_or("any".to_owned(), |p| p.to_string());
                self.err(
                    format!("{base}.{field}"),
                    format!(
                        "a port range needs protocol tcp, udp, sctp, dccp or udplite (or icmp, \
                         for a type and code), not {proto}"
                    ),
                );
                PortMatch::Any
            }
        }
    }

    fn remote(
        &mut self,
        base: &str,
        r: &model::SecurityGroupRule,
        ipv6: bool,
        groups: &Checked<SecurityGroup>,
        address_groups: &Checked<AddressGroup>,
    ) -> Remote {
        let given = [
            r.remote_ip_prefix.is_some(),
            r.remote_group_id.is_some(),
            r.remote_address_group_id.is_some(),
        ];
        if given.iter().filter(|&&g| g).count() > 1 {
            self.err(
                format!("{base}.remote_group_id"),
                "give at most one of remote_ip_prefix, remote_group_id and \
                 remote_address_group_id",
            );
            return Remote::Any;
        }
        if let Some(p) = &r.remote_ip_prefix {
            let path = format!("{base}.remote_ip_prefix");
            if ipv6 {
                if !p.contains(':') {
                    self.err(
                        path,
                        format!("{p} is an IPv4 prefix; this rule's ethertype is IPv6"),
                    );
                    return Remote::Any;
                }
                return self
                    .ipv6_prefix(&path, p)
                    .map_or(Remote::Any, |(a, l)| Remote::Prefix6(a, l));
            }
            if p.contains(':') {
                self.err(
                    format!("{base}.remote_ip_prefix"),
                    format!("{p} is an IPv6 prefix; this rule's ethertype is IPv4"),
                );
                return Remote::Any;
            }
            return self
                .cidr(&format!("{base}.remote_ip_prefix"), p)
                .map_or(Remote::Any, Remote::Prefix);
        }
        if let Some(g) = &r.remote_group_id {
            return self
                .reference(
                    &format!("{base}.remote_group_id"),
                    g,
                    "security group",
                    groups,
                )
                .map_or(Remote::Any, Remote::Group);
        }
        if let Some(g) = &r.remote_address_group_id {
            return self
                .reference(
                    &format!("{base}.remote_address_group_id"),
                    g,
                    "address group",
                    address_groups,
                )
                .map_or(Remote::Any, Remote::AddressGroup);
        }
        Remote::Any
    }
}

impl Checker {
    /// An IPv6 address (a /128) or prefix without host bits.
    pub(super) fn ipv6_prefix(&mut self, path: &str, s: &str) -> Option<(Ipv6Addr, u8)> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, l.parse::<u8>().ok().filter(|&l| l <= 128)),
            None => (s, Some(128)),
        };
        let (Ok(addr), Some(len)) = (addr.parse::<Ipv6Addr>(), len) else {
            self.err(path, format!("{s:?} is not an IPv6 address or prefix"));
            return None;
        };
        let mask = match len {
            0 => 0,
            l => u128::MAX << (128 - u32::from(l)),
        };
        let net = Ipv6Addr::from(u128::from(addr) & mask);
        if net != addr {
            self.err(
                path,
                format!("{s} has host bits set (the prefix is {net}/{len})"),
            );
            return None;
        }
        Some((addr, len))
    }
}
