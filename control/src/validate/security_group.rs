//! Security groups and their rules (IPv4).

use super::{Checked, Checker};
use crate::model::{self, Direction, ProtocolSpec};
use pollux_services::addr::Ipv4Cidr;

/// A rule's protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// ICMP (1).
    Icmp,
    /// Another IP protocol number.
    Other(u8),
}

/// Whom a rule allows at the remote end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remote {
    /// Anyone.
    Any,
    /// Addresses in a prefix.
    Prefix(Ipv4Cidr),
    /// Ports in a security group (index).
    Group(usize),
}

/// A checked security group rule (IPv4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Direction.
    pub direction: Direction,
    /// Protocol; `None` is any.
    pub protocol: Option<Protocol>,
    /// Destination port range (tcp and udp only), `min <= max`.
    pub ports: Option<(u16, u16)>,
    /// Remote end.
    pub remote: Remote,
}

/// A checked security group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecurityGroup {
    /// Unique id.
    pub id: String,
    /// Rules.
    pub rules: Vec<Rule>,
}

impl Checker {
    pub(super) fn security_groups(
        &mut self,
        groups: &[model::SecurityGroup],
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
                rules: Vec::new(),
            });
        }
        for (i, g) in groups.iter().enumerate() {
            for (k, r) in g.rules.iter().enumerate() {
                let rule = self.rule(&format!("security_groups[{i}].rules[{k}]"), r, &out);
                out.items[i].rules.push(rule);
            }
        }
        out
    }

    pub(super) fn rule(
        &mut self,
        base: &str,
        r: &model::SecurityGroupRule,
        groups: &Checked<SecurityGroup>,
    ) -> Rule {
        match r.ethertype.as_str() {
            "IPv4" => {}
            "IPv6" => self.err(
                format!("{base}.ethertype"),
                "IPv6 rules are not supported yet",
            ),
            e => self.err(
                format!("{base}.ethertype"),
                format!("{e:?} is not an ethertype (IPv4)"),
            ),
        }
        let protocol = r.protocol.as_ref().and_then(|p| {
            let parsed = match p {
                ProtocolSpec::Number(n) => u8::try_from(*n).ok(),
                ProtocolSpec::Name(s) => match s.to_ascii_lowercase().as_str() {
                    "tcp" => Some(6),
                    "udp" => Some(17),
                    "icmp" => Some(1),
                    s if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
                    _ => None,
                },
            };
            match parsed {
                Some(6) => Some(Protocol::Tcp),
                Some(17) => Some(Protocol::Udp),
                Some(1) => Some(Protocol::Icmp),
                Some(n) => Some(Protocol::Other(n)),
                None => {
                    self.err(
                        format!("{base}.protocol"),
                        format!("{p} is not a protocol (tcp, udp, icmp or a number 0..=255)"),
                    );
                    None
                }
            }
        });
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
        let min = port("port_range_min", r.port_range_min);
        let max = port("port_range_max", r.port_range_max);
        let ports = match (r.port_range_min, r.port_range_max) {
            (None, None) => None,
            (given_min, _) => {
                let field = if given_min.is_some() {
                    "port_range_min"
                } else {
                    "port_range_max"
                };
                // A protocol that did not parse was reported already.
                let protocol_bad = r.protocol.is_some() && protocol.is_none();
                if !protocol_bad && !matches!(protocol, Some(Protocol::Tcp | Protocol::Udp)) {
                    let proto = r
                        .protocol
                        .as_ref()
                        .map_or("any".to_owned(), |p| p.to_string());
                    self.err(
                        format!("{base}.{field}"),
                        format!("a port range needs protocol tcp or udp, not {proto}"),
                    );
                    None
                } else if r.port_range_min.is_none() {
                    self.err(
                        format!("{base}.port_range_min"),
                        "port_range_max needs port_range_min too",
                    );
                    None
                } else if r.port_range_max.is_none() {
                    self.err(
                        format!("{base}.port_range_max"),
                        "port_range_min needs port_range_max too",
                    );
                    None
                } else {
                    match (min, max) {
                        (Some(a), Some(b)) if a > b => {
                            self.err(
                                format!("{base}.port_range_min"),
                                format!("{a} is greater than port_range_max {b}"),
                            );
                            None
                        }
                        (Some(a), Some(b)) => Some((a, b)),
                        _ => None,
                    }
                }
            }
        };
        let remote = match (&r.remote_ip_prefix, &r.remote_group_id) {
            (Some(_), Some(_)) => {
                self.err(
                    format!("{base}.remote_group_id"),
                    "give remote_ip_prefix or remote_group_id, not both",
                );
                Remote::Any
            }
            (Some(p), None) => self
                .cidr(&format!("{base}.remote_ip_prefix"), p)
                .map_or(Remote::Any, Remote::Prefix),
            (None, Some(g)) => self
                .reference(
                    &format!("{base}.remote_group_id"),
                    g,
                    "security group",
                    groups,
                )
                .map_or(Remote::Any, Remote::Group),
            (None, None) => Remote::Any,
        };
        Rule {
            direction: r.direction,
            protocol,
            ports,
            remote,
        }
    }
}
