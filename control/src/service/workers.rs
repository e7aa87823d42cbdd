//! `workers.list` and the `workers` rows of `stats.get`: each worker's CPU, the port
//! queues it polls, what it received, sent and handed to the others, and how busy it is.

use pollux_dataplane::counters::WorkerCounters;
use serde_json::{json, Value};

use crate::engine::{port_label, Engine};
use crate::rpc::RpcError;

pub(super) const WORKERS_LIST_USAGE: &str =
    "{} -> {workers: [{id, core, queues: [{port, queue}], rx_packets, tx_packets, \
     handoffs, handoff_drops, handoffs_received, flow_handoffs, flow_handoff_drops, \
     flow_handoffs_received, neighbor_news, busy_percent, stalled_ms, ...}]}: each \
     worker, the port queues it polls and its counters";

/// One row per worker, by index.
pub(super) fn worker_rows(e: &Engine) -> Vec<Value> {
    let names: std::collections::BTreeMap<_, _> = e.port_names().into_iter().collect();
    let cores = e.worker_cores();
    e.worker_counters()
        .iter()
        .enumerate()
        .map(|(w, c)| {
            let queues: Vec<Value> = e
                .placement()
                .queues_of(w as u16)
                .into_iter()
                .map(|(port, queue)| {
                    let name = names
                        .get(&port)
                        .map_or_else(|| format!("#{}", port.0), |k| port_label(k).to_string());
                    json!({ "port": name, "queue": queue })
                })
                .collect();
            let mut row = counters_json(c);
            row["id"] = json!(w);
            row["core"] = json!(cores.get(w).copied().flatten());
            row["queues"] = json!(queues);
            row["stalled_ms"] = json!(e.worker_stalled_for(w).map(|d| d.as_millis() as u64));
            row
        })
        .collect()
}

fn counters_json(c: &WorkerCounters) -> Value {
    let (busy, idle) = (c.busy_ns.get(), c.idle_ns.get());
    let busy_percent = if busy + idle > 0 {
        (busy as f64 * 1000.0 / (busy + idle) as f64).round() / 10.0
    } else {
        0.0
    };
    json!({
        "rx_packets": c.rx_packets.get(),
        "tx_packets": c.tx_packets.get(),
        "flood_copies": c.replicas.get(),
        "dropped": c.dropped_total(),
        "handoffs": c.handoffs.get(),
        "handoff_drops": c.handoff_drops.get(),
        "handoffs_received": c.handoffs_received.get(),
        "flow_handoffs": c.flow_handoffs.get(),
        "flow_handoff_drops": c.flow_handoff_drops.get(),
        "flow_handoffs_received": c.flow_handoffs_received.get(),
        "neighbor_news": c.neighbor_news.get(),
        "neighbor_news_lost": c.neighbor_news_lost.get(),
        "loops": c.loops.get(),
        "busy_loops": c.busy_loops.get(),
        "busy_ns": busy,
        "idle_ns": idle,
        "busy_percent": busy_percent,
        "macs": c.macs.get(),
        "macs_learned": c.macs_learned.get(),
        "mac_moves": c.mac_moves.get(),
        "macs_aged": c.macs_aged.get(),
        "mac_table_full": c.mac_table_full.get(),
        "mac_port_limit": c.mac_port_limit.get(),
        "mac_move_refused": c.mac_move_refused.get(),
        "checksums_completed": c.checksums_completed.get(),
        "gso_frames": c.gso_frames.get(),
        "gso_segments": c.gso_segments.get(),
        "vxlan_encapsulated": c.vxlan_encapsulated.get(),
        "vxlan_decapsulated": c.vxlan_decapsulated.get(),
        "geneve_encapsulated": c.geneve_encapsulated.get(),
        "geneve_decapsulated": c.geneve_decapsulated.get(),
        "gre_encapsulated": c.gre_encapsulated.get(),
        "gre_decapsulated": c.gre_decapsulated.get(),
        "arp_responder_replies": c.arp_responder_replies.get(),
        "generation": c.generation.get(),
    })
}

/// `workers.list`.
pub(super) fn workers_list(e: &mut Engine, params: Option<Value>) -> Result<Value, RpcError> {
    super::parse::<super::NoParams>(params)?;
    Ok(json!({ "workers": worker_rows(e) }))
}
