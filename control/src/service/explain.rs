//! `explain.run`: one frame, given whole (hex) or as flow fields with the rest filled in
//! as the port's VM would send it, run by the worker through its live snapshot and tables
//! with every side effect suppressed (see `pollux_dataplane::pipeline::explain`); the
//! answer says where it would go, rewritten how, or which stage would drop it and why.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use pollux_dataplane::conntrack::{Dir, FlowKey};
use pollux_dataplane::drop::DropReason;
use pollux_dataplane::packet::Next;
use pollux_dataplane::pipeline::explain::{default_dst_mac, ConnOwner, Explanation};
use pollux_dataplane::pipeline::Stage;
use pollux_dataplane::port::PortId;
use pollux_dataplane::secgroup::{zone_port, Direction, RuleVerdict};
use pollux_services::addr::{fmt_mac, parse_ipv4, parse_mac};
use serde::Deserialize;
use serde_json::{json, Value};

use super::trace::{next_text, port_names};
use super::{parse, rpc_error};
use crate::engine::Engine;
use crate::rpc::RpcError;

/// `rpc.list` usage of `explain.run`.
pub const EXPLAIN_RUN_USAGE: &str =
    "{port: string, frame?: hex string, src_mac?, dst_mac?, vlan?: u16, src_ip?, dst_ip?, \
     proto?: tcp|udp|icmp|number, src_port?: u16, dst_port?: u16, ttl?: u8} -> {generation, \
     worker, port, verdict: sent|dropped|waiting_for_arp|slow_path|consumed, summary, steps: \
     [{stage, next}], sent: [{port, frame: {vlan, src_mac, dst_mac, src_ip, dst_ip, ttl, \
     proto, src_port, dst_port}, hex}], dropped: [{stage, reason, help, port?, \
     security_groups?}], waiting_for?, connections: [{zone, kind, dir, original, reply, \
     state}], security_groups: [{port, direction: egress|ingress, security_groups, verdict: \
     rule|implicit|no_rule, group?, rule?, established}], frame}: what the worker would do with the frame received on `port`, from its \
     live tables, changing nothing. Without `frame`, a TCP SYN (or UDP, ICMP echo) from the \
     VM port's MAC and first fixed IP to `dst_ip` (required), to the router's MAC off the \
     subnet, else to the port holding `dst_ip`";

/// The parameters of `explain.run`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainParams {
    /// The port it is received on (a VM port's id, or uplink:NAME).
    pub port: String,
    /// The whole frame, hex (bytes may be separated by spaces or colons).
    pub frame: Option<String>,
    /// Fields of a frame to build instead.
    pub src_mac: Option<String>,
    /// See `src_mac`.
    pub dst_mac: Option<String>,
    /// 802.1Q VLAN id of a tag to add.
    pub vlan: Option<u16>,
    /// See `src_mac`.
    pub src_ip: Option<String>,
    /// See `src_mac`.
    pub dst_ip: Option<String>,
    /// tcp (default), udp, icmp or a protocol number.
    pub proto: Option<String>,
    /// TCP/UDP source port (default 40000), ICMP echo identifier.
    pub src_port: Option<u16>,
    /// TCP/UDP destination port (default 80 for TCP, 53 for UDP).
    pub dst_port: Option<u16>,
    /// Time to live (default 64).
    pub ttl: Option<u8>,
}

/// A frame to build, every field known but the destination MAC, which may be left to
/// the worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// Source MAC.
    pub src_mac: [u8; 6],
    /// Destination MAC; `None`: as the port's VM would address it.
    pub dst_mac: Option<[u8; 6]>,
    /// Tag.
    pub vlan: Option<u16>,
    /// Source address.
    pub src_ip: Ipv4Addr,
    /// Destination address.
    pub dst_ip: Ipv4Addr,
    /// IP protocol.
    pub proto: u8,
    /// TCP/UDP source port, ICMP echo identifier.
    pub src_port: u16,
    /// TCP/UDP destination port.
    pub dst_port: u16,
    /// Time to live.
    pub ttl: u8,
}

/// What the configuration says of the port a frame is explained on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortFacts {
    /// Its MAC (VM ports).
    pub mac: Option<[u8; 6]>,
    /// Its first IPv4 fixed IP (VM ports).
    pub ip: Option<Ipv4Addr>,
}

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const TCP_SYN: u8 = 0x02;

/// Reads a frame written as hex: pairs of hex digits, optionally separated by spaces,
/// colons, dashes or newlines, with an optional `0x` in front.
pub fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let text = text.trim();
    let text = text.strip_prefix("0x").unwrap_or(text);
    let digits: Vec<u8> = text
        .bytes()
        .filter(|b| !matches!(b, b' ' | b':' | b'-' | b'\n' | b'\r' | b'\t'))
        .collect();
    if !digits.len().is_multiple_of(2) {
        return Err("an odd number of hex digits".into());
    }
    let nibble = |d: u8| match d {
        b'0'..=b'9' => Ok(d - b'0'),
        b'a'..=b'f' => Ok(d - b'a' + 10),
        b'A'..=b'F' => Ok(d - b'A' + 10),
        other => Err(format!("{:?} is not a hex digit", char::from(other))),
    };
    let bytes = digits
        .chunks_exact(2)
        .map(|pair| Ok(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect::<Result<Vec<u8>, String>>()?;
    if bytes.is_empty() {
        return Err("no bytes".into());
    }
    Ok(bytes)
}

/// Bytes as hex, two digits each, no separator (what [`parse_hex`] reads).
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An IP protocol by name or number.
pub fn parse_proto(text: &str) -> Result<u8, String> {
    match text {
        "tcp" => Ok(TCP),
        "udp" => Ok(UDP),
        "icmp" => Ok(ICMP),
        n => n
            .parse()
            .map_err(|_| format!("{n:?} is not tcp, udp, icmp or a protocol number 0..=255")),
    }
}

/// The flow of `p` (which gives no `frame`), with what it leaves out taken from the
/// port's configuration and the defaults.
pub fn flow_of(p: &ExplainParams, port: &PortFacts) -> Result<Flow, String> {
    let mac = |field: &str, v: &Option<String>| {
        v.as_deref()
            .map(|s| parse_mac(s).map_err(|e| format!("{field}: {e}")))
            .transpose()
    };
    let ip = |field: &str, v: &Option<String>| {
        v.as_deref()
            .map(|s| parse_ipv4(s).map_err(|e| format!("{field}: {e}")))
            .transpose()
    };
    let src_mac = mac("src_mac", &p.src_mac)?
        .or(port.mac)
        .ok_or("src_mac: the port has no MAC of its own; give one")?;
    let dst_mac = mac("dst_mac", &p.dst_mac)?;
    let src_ip = ip("src_ip", &p.src_ip)?
        .or(port.ip)
        .ok_or("src_ip: the port has no fixed IPv4 address; give one")?;
    let dst_ip = ip("dst_ip", &p.dst_ip)?.ok_or("dst_ip is required (or give a frame)")?;
    if let Some(v) = p.vlan {
        if !(1..=4094).contains(&v) {
            return Err(format!("vlan: {v} is not a VLAN id 1..=4094"));
        }
    }
    let proto = p.proto.as_deref().map_or(Ok(TCP), parse_proto)?;
    if !matches!(proto, TCP | UDP | ICMP) && (p.src_port.is_some() || p.dst_port.is_some()) {
        return Err(format!("src_port/dst_port: protocol {proto} has no ports"));
    }
    if proto == ICMP && p.dst_port.is_some() {
        return Err("dst_port: ICMP echo has an identifier only (src_port)".into());
    }
    Ok(Flow {
        src_mac,
        dst_mac,
        vlan: p.vlan,
        src_ip,
        dst_ip,
        proto,
        src_port: p.src_port.unwrap_or(40000),
        dst_port: p.dst_port.unwrap_or(if proto == UDP { 53 } else { 80 }),
        ttl: p.ttl.unwrap_or(64),
    })
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The frame of `flow` to `dst_mac`: Ethernet (tagged with its VLAN, if any), IPv4 (DF,
/// checksummed), then a TCP SYN, an 8-byte UDP datagram, an ICMP echo request or no
/// payload at all, with correct checksums.
pub fn build_frame(flow: &Flow, dst_mac: [u8; 6]) -> Vec<u8> {
    let mut f = Vec::with_capacity(80);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&flow.src_mac);
    if let Some(vid) = flow.vlan {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    }
    f.extend_from_slice(&[0x08, 0x00]);
    let (src, dst) = (flow.src_ip.octets(), flow.dst_ip.octets());
    let l4: Vec<u8> = match flow.proto {
        TCP => {
            let mut t = Vec::with_capacity(20);
            t.extend_from_slice(&flow.src_port.to_be_bytes());
            t.extend_from_slice(&flow.dst_port.to_be_bytes());
            t.extend_from_slice(&1u32.to_be_bytes());
            t.extend_from_slice(&0u32.to_be_bytes());
            t.extend_from_slice(&[0x50, TCP_SYN, 0xff, 0xff, 0, 0, 0, 0]);
            t
        }
        UDP => {
            let mut u = Vec::with_capacity(8);
            u.extend_from_slice(&flow.src_port.to_be_bytes());
            u.extend_from_slice(&flow.dst_port.to_be_bytes());
            u.extend_from_slice(&8u16.to_be_bytes());
            u.extend_from_slice(&[0, 0]);
            u
        }
        ICMP => {
            let mut m = vec![8, 0, 0, 0];
            m.extend_from_slice(&flow.src_port.to_be_bytes());
            m.extend_from_slice(&1u16.to_be_bytes());
            let sum = checksum(&m);
            m[2..4].copy_from_slice(&sum.to_be_bytes());
            m
        }
        _ => Vec::new(),
    };
    let mut l4 = l4;
    if matches!(flow.proto, TCP | UDP) {
        let mut pseudo = Vec::with_capacity(12 + l4.len());
        pseudo.extend_from_slice(&src);
        pseudo.extend_from_slice(&dst);
        pseudo.extend_from_slice(&[0, flow.proto]);
        pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(&l4);
        let mut sum = checksum(&pseudo);
        if flow.proto == UDP && sum == 0 {
            sum = 0xffff;
        }
        let at = if flow.proto == TCP { 16 } else { 6 };
        l4[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    }
    let total = (20 + l4.len()) as u16;
    let mut h = vec![0x45, 0x00];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0x40, 0x00, flow.ttl, flow.proto, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let sum = checksum(&h);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&h);
    f.extend_from_slice(&l4);
    // The Ethernet minimum, as a VM's NIC pads.
    if f.len() < 60 {
        f.resize(60, 0);
    }
    f
}

/// The fields of a frame worth showing: MACs, tag, and for IPv4 the addresses, TTL,
/// protocol and ports (TCP/UDP) or echo identifier (ICMP).
pub fn describe_frame(frame: &[u8]) -> Value {
    let be16 = |at: usize| {
        frame
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let mac = |at: usize| {
        frame
            .get(at..at + 6)
            .and_then(|b| <[u8; 6]>::try_from(b).ok())
            .map(fmt_mac)
    };
    let mut d = json!({ "dst_mac": mac(0), "src_mac": mac(6), "len": frame.len() });
    let (mut ethertype, mut l3) = (be16(12), 14);
    if ethertype == Some(0x8100) {
        d["vlan"] = json!(be16(14).map(|tci| tci & 0x0fff));
        ethertype = be16(16);
        l3 = 18;
    }
    d["ethertype"] = json!(ethertype.map(|e| format!("0x{e:04x}")));
    let Some(ip) = frame
        .get(l3..)
        .filter(|ip| ethertype == Some(0x0800) && ip.len() >= 20 && ip[0] >> 4 == 4)
    else {
        return d;
    };
    let addr = |at: usize| Ipv4Addr::new(ip[at], ip[at + 1], ip[at + 2], ip[at + 3]).to_string();
    d["src_ip"] = json!(addr(12));
    d["dst_ip"] = json!(addr(16));
    d["ttl"] = json!(ip[8]);
    d["proto"] = json!(super::protocol_name(ip[9]));
    let l4 = usize::from(ip[0] & 0x0f) * 4;
    let word = |at: usize| {
        ip.get(l4 + at..l4 + at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let first_fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff == 0;
    match ip[9] {
        TCP | UDP if first_fragment => {
            d["src_port"] = json!(word(0));
            d["dst_port"] = json!(word(2));
        }
        ICMP if first_fragment => {
            d["icmp_type"] = json!(ip.get(l4));
            d["icmp_id"] = json!(word(4));
        }
        _ => {}
    }
    d
}

/// What decided a drop, in words: for a packet no security-group rule allowed, the port
/// and its groups; for any other reason (a port-security check, a connection quota, an
/// MTU), the condition the reason names.
fn drop_condition(
    ex: &Explanation,
    stage: Stage,
    reason: DropReason,
    name: &dyn Fn(PortId) -> String,
    groups_of: impl Fn(PortId) -> Vec<String>,
) -> String {
    let sg_port = match stage {
        Stage::SgEgress => Some(ex.in_port),
        Stage::SgIngress => ex.steps.iter().rev().find_map(|s| match s.next {
            Next::Output(p) => Some(p),
            _ => None,
        }),
        _ => None,
    };
    match (reason, sg_port) {
        (DropReason::SgNoRule, Some(p)) => format!(
            "no rule of port {}'s security groups [{}] allows it",
            name(p),
            groups_of(p).join(", ")
        ),
        (_, Some(p)) => format!(
            "{}; port {}'s security groups [{}]",
            reason.help(),
            name(p),
            groups_of(p).join(", ")
        ),
        _ => reason.help().to_owned(),
    }
}

/// The one-line answer.
fn summary(
    ex: &Explanation,
    names: &BTreeMap<PortId, String>,
    groups_of: impl Fn(PortId) -> Vec<String> + Copy,
) -> (&'static str, String) {
    let name = |p: PortId| {
        names
            .get(&p)
            .cloned()
            .unwrap_or_else(|| format!("#{}", p.0))
    };
    if let Some((_, ip)) = ex.waiting_for {
        return (
            "waiting_for_arp",
            format!(
                "would wait for the MAC of next hop {} (an ARP request would be sent)",
                Ipv4Addr::from(ip)
            ),
        );
    }
    if ex.to_slow_path {
        return (
            "slow_path",
            "would go to the slow path (DHCP server)".into(),
        );
    }
    let ports = |sent: &[pollux_dataplane::pipeline::explain::Emitted]| {
        sent.iter()
            .map(|e| name(e.port))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // The packet's own fate is its last step; what else would leave (an ICMP error, an
    // ARP request, fragments) is said after it.
    if let Some(Next::Drop(reason, stage)) = ex.steps.last().map(|s| s.next) {
        let mut text = format!(
            "would be dropped by {stage}: {} ({})",
            reason.name(),
            drop_condition(ex, stage, reason, &name, groups_of)
        );
        if !ex.sent.is_empty() {
            text += &format!(
                "; the router would send {} to {}",
                if ex.sent.len() == 1 {
                    "a frame"
                } else {
                    "frames"
                },
                ports(&ex.sent)
            );
        }
        return ("dropped", text);
    }
    if !ex.sent.is_empty() {
        let mut text = format!("would be sent to {}", ports(&ex.sent));
        let allowed: Vec<String> = ex
            .rules
            .iter()
            .filter_map(|r| {
                let rule = r.rule.as_ref()?;
                let way = match r.direction {
                    Direction::Egress => "out of",
                    Direction::Ingress => "into",
                };
                Some(format!(
                    "rule {} of group {} {way} {}",
                    rule.rule,
                    rule.group,
                    name(r.port)
                ))
            })
            .collect();
        if !allowed.is_empty() {
            text += &format!(", allowed by {}", allowed.join(" and "));
        }
        if !ex.dropped.is_empty() {
            text += &format!(" ({} copies dropped)", ex.dropped.len());
        }
        return ("sent", text);
    }
    if let Some(d) = ex.dropped.first() {
        return (
            "dropped",
            format!(
                "would be dropped by {}: {} ({})",
                d.stage,
                d.reason.name(),
                drop_condition(ex, d.stage, d.reason, &name, groups_of)
            ),
        );
    }
    if ex.consumed {
        return ("consumed", "would be taken where it arrived".into());
    }
    ("dropped", "would go nowhere".into())
}

fn endpoints(k: &FlowKey) -> Value {
    json!({
        "src": Ipv4Addr::from(k.src).to_string(),
        "sport": k.sport,
        "dst": Ipv4Addr::from(k.dst).to_string(),
        "dport": k.dport,
    })
}

/// `explain.run`.
pub fn explain_run(e: &mut Engine, params: Option<Value>) -> Result<Value, RpcError> {
    let p: ExplainParams = parse(params)?;
    let names = port_names(e);
    let port = names
        .iter()
        .find(|(_, name)| **name == p.port)
        .map(|(&id, _)| id)
        .ok_or_else(|| RpcError::invalid_params(format!("no port {:?}", p.port)))?;
    let model = e.state().ports.iter().find(|q| q.id == p.port).cloned();
    let facts = PortFacts {
        mac: model.as_ref().and_then(|q| parse_mac(&q.mac_address).ok()),
        ip: model.as_ref().and_then(|q| {
            q.fixed_ips
                .iter()
                .find_map(|f| f.ip_address.parse::<Ipv4Addr>().ok())
        }),
    };
    let has_fields = p.src_mac.is_some()
        || p.dst_mac.is_some()
        || p.vlan.is_some()
        || p.src_ip.is_some()
        || p.dst_ip.is_some()
        || p.proto.is_some()
        || p.src_port.is_some()
        || p.dst_port.is_some()
        || p.ttl.is_some();
    let input = match &p.frame {
        Some(_) if has_fields => {
            return Err(RpcError::invalid_params(
                "give either frame or the flow's fields, not both",
            ))
        }
        Some(hex) => {
            Err(parse_hex(hex).map_err(|e| RpcError::invalid_params(format!("frame: {e}")))?)
        }
        None => Ok(flow_of(&p, &facts).map_err(RpcError::invalid_params)?),
    };
    // The configured port holding the destination address on the same network: what
    // the VM would address on its own subnet.
    let owner = match (&input, &model) {
        (Ok(flow), Some(me)) => e
            .state()
            .ports
            .iter()
            .filter(|q| q.network_id == me.network_id)
            .find(|q| {
                q.fixed_ips
                    .iter()
                    .any(|f| f.ip_address.parse() == Ok(flow.dst_ip))
                    || q.allowed_address_pairs
                        .iter()
                        .any(|a| a.ip_address.parse() == Ok(flow.dst_ip))
            })
            .and_then(|q| parse_mac(&q.mac_address).ok()),
        _ => None,
    };
    let home = e.placement().home(port);
    let answer = e
        .call_on(home, move |w| {
            let frame = match input {
                Err(frame) => frame,
                Ok(flow) => {
                    let dst_mac = flow.dst_mac.or_else(|| {
                        default_dst_mac(
                            w.snapshot(),
                            w.router().neighbors(),
                            port,
                            u32::from(flow.src_ip),
                            u32::from(flow.dst_ip),
                            owner,
                        )
                    });
                    let Some(dst_mac) = dst_mac else {
                        return Err(format!(
                            "dst_mac: no router or port is known for {} from this port; give one",
                            flow.dst_ip
                        ));
                    };
                    build_frame(&flow, dst_mac)
                }
            };
            let ex = w.explain(port, &frame).map_err(|e| e.to_string())?;
            Ok((frame, ex))
        })
        .map_err(rpc_error)?;
    let (frame, ex) = answer.map_err(RpcError::invalid_params)?;
    Ok(explanation_json(e, &names, &frame, &ex))
}

fn explanation_json(
    e: &Engine,
    names: &BTreeMap<PortId, String>,
    frame: &[u8],
    ex: &Explanation,
) -> Value {
    let name = |p: PortId| {
        names
            .get(&p)
            .cloned()
            .unwrap_or_else(|| format!("#{}", p.0))
    };
    let groups_of = &|p: PortId| super::port_security_groups(e, names, p);
    let (verdict, text) = summary(ex, names, groups_of);
    let steps: Vec<Value> = ex
        .steps
        .iter()
        .map(|s| json!({ "stage": s.stage.name(), "next": next_text(s.next, names) }))
        .collect();
    let sent: Vec<Value> = ex
        .sent
        .iter()
        .map(|s| json!({ "port": name(s.port), "frame": describe_frame(&s.frame), "hex": to_hex(&s.frame) }))
        .collect();
    // The port whose groups refused it: the input port's on the way out of the VM, the
    // output port's (the last the packet was headed for) on the way in.
    let headed_for = ex.steps.iter().rev().find_map(|s| match s.next {
        Next::Output(p) => Some(p),
        _ => None,
    });
    let dropped: Vec<Value> = ex
        .dropped
        .iter()
        .map(|d| {
            let mut v = json!({
                "stage": d.stage.name(),
                "reason": d.reason.name(),
                "help": d.reason.help(),
            });
            let sg_port = match d.stage {
                Stage::SgEgress => Some(ex.in_port),
                Stage::SgIngress => headed_for,
                _ => None,
            };
            if let Some(p) = sg_port {
                v["port"] = json!(name(p));
                v["security_groups"] = json!(groups_of(p));
            }
            v
        })
        .collect();
    let routers = e.identities().routers_by_uid();
    let ports = e.identities().ports_by_id();
    let connections: Vec<Value> = ex
        .connections
        .iter()
        .map(|c| {
            let (zone, kind) = match (c.owner, zone_port(c.original.zone)) {
                (ConnOwner::Port(_), Some(p)) => (
                    ports
                        .get(&p.0)
                        .map_or_else(|| format!("#{}", p.0), |k| k.to_string()),
                    "security group connection",
                ),
                _ => (
                    routers
                        .get(&c.original.zone)
                        .map_or_else(|| "router".to_owned(), |id| format!("router:{id}")),
                    "nat session",
                ),
            };
            json!({
                "zone": zone,
                "kind": kind,
                "dir": match c.dir { Dir::Original => "original", Dir::Reply => "reply" },
                "protocol": super::protocol_name(c.original.proto),
                "original": endpoints(&c.original),
                "reply": endpoints(&c.reply),
                "state": c.tcp.map(|s| s.name()),
            })
        })
        .collect();
    // Whether a security-group connection of `p` carries the packet (then its rule
    // decided when the connection began).
    let in_connection = |p: PortId| {
        ex.connections
            .iter()
            .any(|c| matches!(c.owner, ConnOwner::Port(q) if q == p))
    };
    let security_groups: Vec<Value> = ex
        .rules
        .iter()
        .map(|r| {
            let mut v = json!({
                "port": name(r.port),
                "direction": match r.direction {
                    Direction::Egress => "egress",
                    Direction::Ingress => "ingress",
                },
                "security_groups": groups_of(r.port),
                "verdict": match r.verdict {
                    RuleVerdict::Rule(_) => "rule",
                    RuleVerdict::Implicit => "implicit",
                    RuleVerdict::NoRule => "no_rule",
                },
                "established": in_connection(r.port),
            });
            if let Some(rule) = &r.rule {
                v["group"] = json!(rule.group);
                v["rule"] = json!(rule.rule);
            }
            v
        })
        .collect();
    let mut out = json!({
        "worker": ex.worker,
        "port": name(ex.in_port),
        "frame": describe_frame(frame),
        "hex": to_hex(frame),
        "verdict": verdict,
        "summary": text,
        "steps": steps,
        "sent": sent,
        "dropped": dropped,
        "connections": connections,
        "security_groups": security_groups,
        "generation": ex.generation,
    });
    if let Some((_, ip)) = ex.waiting_for {
        out["waiting_for"] = json!(Ipv4Addr::from(ip).to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn facts() -> PortFacts {
        PortFacts {
            mac: Some([0xfa, 0x16, 0x3e, 0, 0, 1]),
            ip: Some(Ipv4Addr::new(198, 18, 1, 10)),
        }
    }

    #[test]
    fn defaults_fill_a_tcp_syn_from_the_port() {
        let p = ExplainParams {
            port: "vm1".into(),
            dst_ip: Some("198.18.2.10".into()),
            ..ExplainParams::default()
        };
        let flow = flow_of(&p, &facts()).unwrap();
        assert_eq!(
            flow,
            Flow {
                src_mac: [0xfa, 0x16, 0x3e, 0, 0, 1],
                dst_mac: None,
                vlan: None,
                src_ip: Ipv4Addr::new(198, 18, 1, 10),
                dst_ip: Ipv4Addr::new(198, 18, 2, 10),
                proto: TCP,
                src_port: 40000,
                dst_port: 80,
                ttl: 64,
            }
        );
        let frame = build_frame(&flow, [2, 0, 0, 0, 0, 1]);
        let d = describe_frame(&frame);
        assert_eq!(d["proto"], "tcp");
        assert_eq!(frame[14 + 20 + 13], TCP_SYN);
        for (bad, says) in [
            (ExplainParams::default(), "dst_ip is required"),
            (
                ExplainParams {
                    dst_ip: Some("1.2.3".into()),
                    ..ExplainParams::default()
                },
                "dst_ip",
            ),
            (
                ExplainParams {
                    dst_ip: Some("198.18.2.1".into()),
                    proto: Some("sctp".into()),
                    ..ExplainParams::default()
                },
                "not tcp, udp, icmp",
            ),
            (
                ExplainParams {
                    dst_ip: Some("198.18.2.1".into()),
                    vlan: Some(4095),
                    ..ExplainParams::default()
                },
                "vlan",
            ),
        ] {
            let e = flow_of(&bad, &facts()).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
        let uplink = PortFacts::default();
        let p = ExplainParams {
            dst_ip: Some("198.18.2.1".into()),
            ..ExplainParams::default()
        };
        assert!(flow_of(&p, &uplink).unwrap_err().contains("src_mac"));
    }

    #[test]
    fn the_summary_is_the_packets_own_fate_then_what_else_would_leave() {
        use pollux_dataplane::pipeline::explain::{Dropped, Emitted, RuleCheck};
        use pollux_dataplane::pipeline::trace::TraceStep;
        let names: BTreeMap<PortId, String> = [(PortId(1), "vm1".to_owned())].into();
        let expired = Next::Drop(DropReason::TtlExpired, Stage::L3);
        let mut ex = Explanation {
            generation: 2,
            worker: 0,
            in_port: PortId(1),
            steps: vec![TraceStep {
                stage: Stage::L3,
                next: expired,
            }],
            sent: vec![Emitted {
                port: PortId(1),
                frame: vec![0; 60],
            }],
            dropped: vec![Dropped {
                stage: Stage::L3,
                reason: DropReason::TtlExpired,
            }],
            waiting_for: None,
            to_slow_path: false,
            consumed: false,
            connections: Vec::new(),
            rules: Vec::new(),
        };
        let groups = |p: PortId| vec![format!("g{}", p.0), "default".to_owned()];
        assert_eq!(
            summary(&ex, &names, groups),
            (
                "dropped",
                format!(
                    "would be dropped by l3: ttl_expired ({}); the router would send a frame to vm1",
                    DropReason::TtlExpired.help()
                )
            )
        );
        // A packet no rule allowed: the port and its groups.
        ex.steps[0] = TraceStep {
            stage: Stage::SgEgress,
            next: Next::Drop(DropReason::SgNoRule, Stage::SgEgress),
        };
        ex.sent.clear();
        assert_eq!(
            summary(&ex, &names, groups).1,
            "would be dropped by sg_egress: sg_no_rule (no rule of port vm1's security groups \
             [g1, default] allows it)"
        );
        // A packet a rule allowed: the rule, its group and the way it crossed the port.
        ex.steps[0].next = Next::Output(PortId(1));
        ex.dropped.clear();
        ex.sent.push(Emitted {
            port: PortId(1),
            frame: vec![0; 60],
        });
        ex.rules.push(RuleCheck {
            port: PortId(1),
            direction: Direction::Egress,
            verdict: RuleVerdict::Rule(3),
            rule: Some(pollux_dataplane::secgroup::RuleName {
                group: "web".into(),
                rule: "r-80".into(),
            }),
        });
        assert_eq!(
            summary(&ex, &names, groups).1,
            "would be sent to vm1, allowed by rule r-80 of group web out of vm1"
        );
        ex.steps[0].next = Next::Flood;
        assert_eq!(summary(&ex, &names, groups).0, "sent");
        ex.waiting_for = Some((pollux_dataplane::snapshot::NetworkUid(1), 0xc612_0201));
        assert_eq!(
            summary(&ex, &names, groups).1,
            "would wait for the MAC of next hop 198.18.2.1 (an ARP request would be sent)"
        );
    }

    #[test]
    fn hex_frames_read_with_separators() {
        assert_eq!(parse_hex("0x0a0B"), Ok(vec![0x0a, 0x0b]));
        assert_eq!(parse_hex("0a:0b 0c-0d\n"), Ok(vec![10, 11, 12, 13]));
        assert!(parse_hex("abc").unwrap_err().contains("odd"));
        assert!(parse_hex("zz").unwrap_err().contains("hex digit"));
        assert!(parse_hex("").is_err());
    }

    /// Independent check of a built frame: every checksum verifies (sums to zero).
    fn checksums_verify(frame: &[u8]) -> bool {
        let l3 = if frame[12..14] == [0x81, 0x00] {
            18
        } else {
            14
        };
        let ip = &frame[l3..];
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        let l4 = &ip[20..total];
        let header_ok = checksum(&ip[..20]) == 0;
        let l4_ok = match ip[9] {
            TCP | UDP => {
                let mut pseudo = ip[12..20].to_vec();
                pseudo.extend_from_slice(&[0, ip[9]]);
                pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
                pseudo.extend_from_slice(l4);
                checksum(&pseudo) == 0
            }
            ICMP => checksum(l4) == 0,
            _ => true,
        };
        header_ok && l4_ok
    }

    proptest! {
        #[test]
        fn hex_reads_back_and_never_panics(bytes in proptest::collection::vec(any::<u8>(), 1..200), junk in "[0-9a-zA-Z: x-]{0,40}") {
            prop_assert_eq!(parse_hex(&to_hex(&bytes)), Ok(bytes.clone()));
            let spaced: Vec<String> = bytes.iter().map(|b| format!("{b:02X}")).collect();
            prop_assert_eq!(parse_hex(&spaced.join(":")), Ok(bytes));
            let _ = parse_hex(&junk);
        }

        #[test]
        fn fields_build_the_frame_they_describe(
            src_mac in any::<[u8; 6]>(),
            dst_mac in any::<[u8; 6]>(),
            vlan in proptest::option::of(1u16..4095),
            src_ip in any::<[u8; 4]>(),
            dst_ip in any::<[u8; 4]>(),
            proto in prop_oneof![Just("tcp"), Just("udp"), Just("icmp"), Just("47")],
            src_port in any::<u16>(),
            dst_port in any::<u16>(),
            ttl in any::<u8>(),
        ) {
            let ported = matches!(proto, "tcp" | "udp");
            let p = ExplainParams {
                port: "p".into(),
                src_mac: Some(fmt_mac(src_mac)),
                dst_mac: Some(fmt_mac(dst_mac)),
                vlan,
                src_ip: Some(Ipv4Addr::from(src_ip).to_string()),
                dst_ip: Some(Ipv4Addr::from(dst_ip).to_string()),
                proto: Some(proto.into()),
                src_port: (proto != "47").then_some(src_port),
                dst_port: ported.then_some(dst_port),
                ttl: Some(ttl),
                frame: None,
            };
            // As the JSON the CLI sends reads back.
            let json = serde_json::to_value(json!({
                "port": p.port, "src_mac": p.src_mac, "dst_mac": p.dst_mac, "vlan": p.vlan,
                "src_ip": p.src_ip, "dst_ip": p.dst_ip, "proto": p.proto,
                "src_port": p.src_port, "dst_port": p.dst_port, "ttl": p.ttl,
            })).unwrap();
            let read: ExplainParams = serde_json::from_value(json).unwrap();
            prop_assert_eq!(&read, &p);
            let flow = flow_of(&read, &PortFacts::default()).unwrap();
            let frame = build_frame(&flow, flow.dst_mac.unwrap());
            prop_assert!(checksums_verify(&frame));
            let d = describe_frame(&frame);
            prop_assert_eq!(&d["src_mac"], &json!(fmt_mac(src_mac)));
            prop_assert_eq!(&d["dst_mac"], &json!(fmt_mac(dst_mac)));
            prop_assert_eq!(&d["vlan"], &json!(vlan));
            prop_assert_eq!(&d["src_ip"], &json!(Ipv4Addr::from(src_ip).to_string()));
            prop_assert_eq!(&d["dst_ip"], &json!(Ipv4Addr::from(dst_ip).to_string()));
            prop_assert_eq!(&d["ttl"], &json!(ttl));
            if ported {
                prop_assert_eq!(&d["src_port"], &json!(src_port));
                prop_assert_eq!(&d["dst_port"], &json!(dst_port));
            }
            if proto == "icmp" {
                prop_assert_eq!(&d["icmp_id"], &json!(src_port));
            }
            // The same frame given whole reads back byte for byte.
            prop_assert_eq!(parse_hex(&to_hex(&frame)), Ok(frame));
        }
    }
}
