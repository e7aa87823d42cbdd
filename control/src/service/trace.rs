//! Packet trace on live traffic, as VPP's `trace add`: `trace.start` arms the worker's
//! tracer for the next N packets of a port (that a match expression takes), `trace.show` reads what it recorded (every
//! stage passed and its decision), `trace.stop` ends it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use pollux_dataplane::packet::Next;
use pollux_dataplane::pipeline::trace::{TraceMatch, TraceRecord, MAX_TRACE_PACKETS};
use pollux_dataplane::pipeline::Stage;
use pollux_dataplane::port::PortId;
use pollux_services::addr::{fmt_mac, parse_cidr, parse_ipv4, parse_mac};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{parse, rpc_error, NoParams};
use crate::engine::{port_label, Engine};
use crate::rpc::RpcError;

/// `rpc.list` usage of `trace.start`.
pub const TRACE_START_USAGE: &str =
    "{port: string, count?: u32 (default 10, at most 256), match?: string} -> {generation, \
     port, count, match}: trace the next `count` packets received on `port` that `match` \
     takes (comma-separated field=value: src_mac, dst_mac, vlan, ethertype (arp, ipv4, \
     ipv6 or a number), src_ip, dst_ip (an address or a prefix), proto (tcp, udp, icmp or \
     a number), src_port, dst_port)";
/// `rpc.list` usage of `trace.show`.
pub const TRACE_SHOW_USAGE: &str =
    "{} -> {generation, running, port, remaining, packets: [{generation, port, len, steps: \
     [{stage, next}], dropped?: {stage, reason, port, security_groups}}], match}: what the \
     trace recorded (dropped: a security-group drop, with the port whose groups decided)";
/// `rpc.list` usage of `trace.stop`.
pub const TRACE_STOP_USAGE: &str = "{} -> {generation, stopped: bool, packets: n}";

/// Packets traced when `count` is not given.
const DEFAULT_COUNT: usize = 10;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartParams {
    port: String,
    count: Option<usize>,
    #[serde(rename = "match")]
    filter: Option<String>,
}

/// Parses a match expression: comma-separated `field=value`, each field at most once.
pub fn parse_match(text: &str) -> Result<TraceMatch, String> {
    let mut m = TraceMatch::default();
    let mut seen = Vec::new();
    for term in text.split(',').map(str::trim) {
        let Some((field, value)) = term.split_once('=') else {
            return Err(format!("{term:?} is not field=value"));
        };
        let (field, value) = (field.trim(), value.trim());
        if seen.contains(&field) {
            return Err(format!("{field} is given twice"));
        }
        seen.push(field);
        let number = |max: u32| -> Result<u32, String> {
            let n = match value.strip_prefix("0x") {
                Some(hex) => u32::from_str_radix(hex, 16),
                None => value.parse(),
            };
            n.ok()
                .filter(|&n| n <= max)
                .ok_or_else(|| format!("{field}: {value:?} is not a number 0..={max}"))
        };
        let prefix = || -> Result<(u32, u8), String> {
            if value.contains('/') {
                let c = parse_cidr(value).map_err(|e| format!("{field}: {e}"))?;
                Ok((u32::from(c.addr), c.prefix))
            } else {
                let ip = parse_ipv4(value).map_err(|e| format!("{field}: {e}"))?;
                Ok((u32::from(ip), 32))
            }
        };
        match field {
            "src_mac" => m.src_mac = Some(parse_mac(value).map_err(|e| format!("{field}: {e}"))?),
            "dst_mac" => m.dst_mac = Some(parse_mac(value).map_err(|e| format!("{field}: {e}"))?),
            "vlan" => m.vlan = Some(number(4095)? as u16),
            "ethertype" => {
                m.ethertype = Some(match value {
                    "arp" => 0x0806,
                    "ipv4" => 0x0800,
                    "ipv6" => 0x86dd,
                    _ => number(0xffff)? as u16,
                })
            }
            "src_ip" => m.src_ip = Some(prefix()?),
            "dst_ip" => m.dst_ip = Some(prefix()?),
            "proto" => {
                m.proto = Some(match value {
                    "icmp" => 1,
                    "tcp" => 6,
                    "udp" => 17,
                    _ => number(255)? as u8,
                })
            }
            "src_port" => m.src_port = Some(number(0xffff)? as u16),
            "dst_port" => m.dst_port = Some(number(0xffff)? as u16),
            _ => {
                return Err(format!(
                    "{field} is not a match field (src_mac, dst_mac, vlan, ethertype, src_ip, \
                     dst_ip, proto, src_port, dst_port)"
                ))
            }
        }
    }
    Ok(m)
}

/// A match as `parse_match` reads it back (empty: every packet).
pub fn match_text(m: &TraceMatch) -> String {
    let prefix = |(ip, len): (u32, u8)| {
        if len == 32 {
            Ipv4Addr::from(ip).to_string()
        } else {
            format!("{}/{len}", Ipv4Addr::from(ip))
        }
    };
    let mut terms = Vec::new();
    if let Some(v) = m.src_mac {
        terms.push(format!("src_mac={}", fmt_mac(v)));
    }
    if let Some(v) = m.dst_mac {
        terms.push(format!("dst_mac={}", fmt_mac(v)));
    }
    if let Some(v) = m.vlan {
        terms.push(format!("vlan={v}"));
    }
    if let Some(v) = m.ethertype {
        terms.push(format!("ethertype=0x{v:04x}"));
    }
    if let Some(v) = m.src_ip {
        terms.push(format!("src_ip={}", prefix(v)));
    }
    if let Some(v) = m.dst_ip {
        terms.push(format!("dst_ip={}", prefix(v)));
    }
    if let Some(v) = m.proto {
        terms.push(format!("proto={v}"));
    }
    if let Some(v) = m.src_port {
        terms.push(format!("src_port={v}"));
    }
    if let Some(v) = m.dst_port {
        terms.push(format!("dst_port={v}"));
    }
    terms.join(",")
}

pub(super) fn port_names(e: &Engine) -> BTreeMap<PortId, String> {
    e.port_names()
        .into_iter()
        .map(|(id, key)| (id, port_label(&key).to_owned()))
        .collect()
}

/// `trace.start`.
pub fn trace_start(e: &mut Engine, params: Option<Value>) -> Result<Value, RpcError> {
    let p: StartParams = parse(params)?;
    let filter = match p.filter.as_deref() {
        None => TraceMatch::default(),
        Some(text) => {
            parse_match(text).map_err(|e| RpcError::invalid_params(format!("match: {e}")))?
        }
    };
    let count = p.count.unwrap_or(DEFAULT_COUNT);
    if count == 0 || count > MAX_TRACE_PACKETS {
        return Err(RpcError::invalid_params(format!(
            "count must be 1 to {MAX_TRACE_PACKETS}"
        )));
    }
    let port = port_names(e)
        .into_iter()
        .find(|(_, name)| *name == p.port)
        .map(|(id, _)| id)
        .ok_or_else(|| RpcError::invalid_params(format!("no port {:?}", p.port)))?;
    // One trace at a time, on the worker that polls the port.
    e.call_each(|w| {
        w.trace_stop();
    })
    .map_err(rpc_error)?;
    e.call_on(e.placement().home(port), move |w| {
        w.trace_start(port, count, filter)
    })
    .map_err(rpc_error)?;
    Ok(json!({ "port": p.port, "count": count, "match": match_text(&filter) }))
}

/// A next step as `trace.show` prints it.
pub(super) fn next_text(next: Next, names: &BTreeMap<PortId, String>) -> String {
    let port = |p: PortId| {
        names
            .get(&p)
            .cloned()
            .unwrap_or_else(|| format!("#{}", p.0))
    };
    match next {
        Next::Classify => "classify".into(),
        Next::L2 => "l2".into(),
        Next::Output(p) => format!("output {}", port(p)),
        Next::Flood => "flood".into(),
        Next::Route(r) => format!("route router#{r}"),
        Next::Arp => "arp".into(),
        Next::Drop(reason, stage) => format!("drop {reason} ({stage})"),
        Next::Consumed => "consumed".into(),
        Next::Waiting => "waiting for arp".into(),
        Next::SlowPath => "slow path".into(),
    }
}

/// A recorded packet as `trace.show` gives it. A security-group stage's drop names the
/// port whose groups refused the packet, with those groups (`groups_of`): the input
/// port's on the way out of its VM, the port it was headed for on the way in.
pub fn record_json(
    r: &TraceRecord,
    names: &BTreeMap<PortId, String>,
    groups_of: &dyn Fn(PortId) -> Vec<String>,
) -> Value {
    let name = |p: PortId| {
        names
            .get(&p)
            .cloned()
            .unwrap_or_else(|| format!("#{}", p.0))
    };
    let mut headed_for = None;
    let steps: Vec<Value> = r
        .steps()
        .iter()
        .map(|s| {
            let mut v = json!({ "stage": s.stage.name(), "next": next_text(s.next, names) });
            let sg_port = match s.next {
                Next::Output(p) => {
                    headed_for = Some(p);
                    None
                }
                Next::Drop(_, Stage::SgEgress) if s.stage == Stage::SgEgress => Some(r.port),
                Next::Drop(_, Stage::SgIngress) if s.stage == Stage::SgIngress => headed_for,
                _ => None,
            };
            if let Some(p) = sg_port {
                v["port"] = json!(name(p));
                v["security_groups"] = json!(groups_of(p));
            }
            v
        })
        .collect();
    json!({
        "generation": r.generation,
        "port": name(r.port),
        "len": r.len,
        "steps": steps,
    })
}

/// `trace.show`.
pub fn trace_show(e: &mut Engine, params: Option<Value>) -> Result<Value, RpcError> {
    parse::<NoParams>(params)?;
    let names = port_names(e);
    // Copied on the worker's thread, converted here.
    let snapshot = e
        .call_each(|w| {
            w.trace()
                .map(|t| (t.port(), t.remaining(), *t.filter(), t.records().to_vec()))
        })
        .map_err(rpc_error)?
        .into_iter()
        .flatten()
        .next();
    let Some((port, remaining, filter, records)) = snapshot else {
        return Ok(json!({ "running": false, "packets": [] }));
    };
    let groups_of = |p: PortId| super::port_security_groups(e, &names, p);
    let packets: Vec<Value> = records
        .iter()
        .map(|r| record_json(r, &names, &groups_of))
        .collect();
    Ok(json!({
        "running": true,
        "port": names.get(&port).cloned().unwrap_or_else(|| format!("#{}", port.0)),
        "remaining": remaining,
        "match": match_text(&filter),
        "packets": packets,
    }))
}

/// `trace.stop`.
pub fn trace_stop(e: &mut Engine, params: Option<Value>) -> Result<Value, RpcError> {
    parse::<NoParams>(params)?;
    let stopped = e
        .call_each(|w| w.trace_stop().map(|t| t.records().len()))
        .map_err(rpc_error)?
        .into_iter()
        .flatten()
        .next();
    Ok(json!({ "stopped": stopped.is_some(), "packets": stopped.unwrap_or(0) }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_match_reads_every_field_and_reads_back() {
        let m = parse_match(
            "src_mac=fa:16:3e:00:00:01, dst_mac=fa:16:3e:00:00:02,vlan=100,ethertype=ipv4,\
             src_ip=198.18.1.10,dst_ip=198.18.2.0/24,proto=tcp,src_port=0x50,dst_port=443",
        )
        .unwrap();
        assert_eq!(
            m,
            TraceMatch {
                src_mac: Some([0xfa, 0x16, 0x3e, 0, 0, 1]),
                dst_mac: Some([0xfa, 0x16, 0x3e, 0, 0, 2]),
                vlan: Some(100),
                ethertype: Some(0x0800),
                src_ip: Some((u32::from_be_bytes([198, 18, 1, 10]), 32)),
                dst_ip: Some((u32::from_be_bytes([198, 18, 2, 0]), 24)),
                proto: Some(6),
                src_port: Some(80),
                dst_port: Some(443),
            }
        );
        assert_eq!(parse_match(&match_text(&m)), Ok(m));
        for (bad, says) in [
            ("vlan=4096", "vlan"),
            ("dst_ip=198.18.2.1/24", "host bits"),
            ("src_ip=300.1.1.1", "src_ip"),
            ("proto=tcp,proto=udp", "twice"),
            ("port=80", "not a match field"),
            ("proto", "field=value"),
        ] {
            let e = parse_match(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    proptest! {
        #[test]
        fn parsing_never_panics_and_what_parses_reads_back(text in "[a-z_=,.:/0-9x ]{0,80}") {
            if let Ok(m) = parse_match(&text) {
                prop_assert_eq!(parse_match(&match_text(&m)), Ok(m));
            }
        }
    }
}
