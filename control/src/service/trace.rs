//! Packet trace on live traffic, as VPP's `trace add`: `trace.start` arms the worker's
//! tracer for the next N packets of a port, `trace.show` reads what it recorded (every
//! stage passed and its decision), `trace.stop` ends it.

use std::collections::BTreeMap;

use pollux_dataplane::packet::Next;
use pollux_dataplane::pipeline::trace::{TraceRecord, MAX_TRACE_PACKETS};
use pollux_dataplane::port::PortId;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{parse, rpc_error, NoParams, NOT_SUPPORTED};
use crate::engine::{port_label, Engine};
use crate::rpc::RpcError;

/// `rpc.list` usage of `trace.start`.
pub const TRACE_START_USAGE: &str =
    "{port: string, count?: u32 (default 10, at most 256)} -> {generation, port, count}: \
     trace the next `count` packets received on `port` (a match expression is not \
     supported yet)";
/// `rpc.list` usage of `trace.show`.
pub const TRACE_SHOW_USAGE: &str =
    "{} -> {generation, running, port, remaining, packets: [{generation, port, len, steps: \
     [{stage, next}]}]}: what the trace recorded";
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
    filter: Option<Value>,
}

fn port_names(e: &Engine) -> BTreeMap<PortId, String> {
    e.port_names()
        .into_iter()
        .map(|(id, key)| (id, port_label(&key).to_owned()))
        .collect()
}

/// `trace.start`.
pub fn trace_start(e: &mut Engine, params: Option<Value>) -> Result<Value, RpcError> {
    let p: StartParams = parse(params)?;
    if p.filter.is_some() {
        // Never accepted and ignored: a trace would record packets the user excluded.
        return Err(RpcError::application(
            NOT_SUPPORTED,
            "trace.start: match is not supported yet",
            json!({ "path": "match", "details": "match expressions are not supported yet" }),
        ));
    }
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
    e.call(move |w| w.trace_start(port, count))
        .map_err(rpc_error)?;
    Ok(json!({ "port": p.port, "count": count }))
}

/// A next step as `trace.show` prints it.
fn next_text(next: Next, names: &BTreeMap<PortId, String>) -> String {
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
        Next::Local => "slow path".into(),
    }
}

fn record_json(r: &TraceRecord, names: &BTreeMap<PortId, String>) -> Value {
    let steps: Vec<Value> = r
        .steps()
        .iter()
        .map(|s| json!({ "stage": s.stage.name(), "next": next_text(s.next, names) }))
        .collect();
    json!({
        "generation": r.generation,
        "port": names.get(&r.port).cloned().unwrap_or_else(|| format!("#{}", r.port.0)),
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
        .call(|w| {
            w.trace()
                .map(|t| (t.port(), t.remaining(), t.records().to_vec()))
        })
        .map_err(rpc_error)?;
    let Some((port, remaining, records)) = snapshot else {
        return Ok(json!({ "running": false, "packets": [] }));
    };
    let packets: Vec<Value> = records.iter().map(|r| record_json(r, &names)).collect();
    Ok(json!({
        "running": true,
        "port": names.get(&port).cloned().unwrap_or_else(|| format!("#{}", port.0)),
        "remaining": remaining,
        "packets": packets,
    }))
}

/// `trace.stop`.
pub fn trace_stop(e: &mut Engine, params: Option<Value>) -> Result<Value, RpcError> {
    parse::<NoParams>(params)?;
    let stopped = e
        .call(|w| w.trace_stop().map(|t| t.records().len()))
        .map_err(rpc_error)?;
    Ok(json!({ "stopped": stopped.is_some(), "packets": stopped.unwrap_or(0) }))
}
