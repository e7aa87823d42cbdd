//! `workers.list` and the `workers` rows of `stats.get`: each worker's CPU, the port
//! queues it polls, what it received, sent and handed to the others, and how busy it is.

use pollux_dataplane::counters::WorkerCounters;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::engine::{Engine, QueueRow, RebalanceOptions};
use crate::rpc::RpcError;

pub(super) const WORKERS_LIST_USAGE: &str =
    "{} -> {workers: [{id, core, queues: [{port, queue, pinned, movable, not_movable?, \
     packets, cycles, cycles_per_packet, busy_percent, packets_per_sec}], rx_packets, \
     tx_packets, handoffs, handoff_drops, handoffs_received, flow_handoffs, \
     flow_handoff_drops, flow_handoffs_received, neighbor_news, busy_percent, stalled_ms, \
     ...}], rebalance: {auto_interval_secs, improvement_percent, runs, applied, \
     auto_applied, queues_moved}}: each worker, the port queues it polls with their load, \
     and its counters";

pub(super) const WORKERS_REBALANCE_USAGE: &str =
    "{dry_run?: bool, improvement_percent?: 0..100} -> {applied, improvement_percent, \
     threshold_percent, variance_before, variance_after, before: [{worker, busy_percent, \
     cycles_per_sec}], after: [...], moves: [{port, queue, from, to, busy_percent}]}: \
     assign the receive queues to workers by measured load (busiest first, each to the \
     least loaded worker; pinned and unmovable queues stay), applied when the variance of \
     the workers' loads falls by at least the threshold";

pub(super) const WORKERS_PIN_USAGE: &str =
    "{port: string, queue?: u16 = 0, worker: u16|null} -> {port, queue, worker, pinned, \
     moved}: pin a receive queue to a worker (moved there now, never moved by a \
     rebalance; kept across restarts), or unpin it (worker null)";

/// A rate in cycles per second as a share of one CPU, in percent (one decimal).
fn percent(cycles_per_sec: f64, hz: Option<f64>) -> Value {
    match hz {
        Some(hz) if hz > 0.0 => json!((cycles_per_sec * 1000.0 / hz).round() / 10.0),
        _ => Value::Null,
    }
}

fn queue_json(q: &QueueRow, hz: Option<f64>) -> Value {
    let rate = q.rate.unwrap_or_default();
    let mut v = json!({
        "port": q.port,
        "queue": q.queue,
        "pinned": q.pinned,
        "movable": q.fixed.is_none(),
        "packets": q.packets,
        "bursts": q.bursts,
        "cycles": q.cycles,
        "cycles_per_packet": if q.packets > 0 {
            json!((q.cycles as f64 * 10.0 / q.packets as f64).round() / 10.0)
        } else {
            Value::Null
        },
        "busy_percent": percent(rate.cycles_per_sec, hz),
        "packets_per_sec": rate.packets_per_sec.round(),
    });
    if let Some(why) = &q.fixed {
        v["not_movable"] = json!(why);
    }
    v
}

/// One row per worker, by index.
pub(super) fn worker_rows(e: &Engine) -> Vec<Value> {
    let cores = e.worker_cores();
    let hz = super::stages::tsc_hz();
    let rows = e.queue_rows();
    e.worker_counters()
        .iter()
        .enumerate()
        .map(|(w, c)| {
            let queues: Vec<Value> = rows
                .iter()
                .filter(|q| usize::from(q.worker) == w)
                .map(|q| queue_json(q, hz))
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

fn rebalance_json(e: &Engine) -> Value {
    let (auto, runs, applied, auto_applied, moved) = e.rebalance_stats();
    json!({
        "auto_interval_secs": auto.interval.map(|d| d.as_secs()),
        "improvement_percent": (auto.improvement * 100.0).round(),
        "runs": runs,
        "applied": applied,
        "auto_applied": auto_applied,
        "queues_moved": moved,
    })
}

/// `workers.list`.
pub(super) fn workers_list(e: &mut Engine, params: Option<Value>) -> Result<Value, RpcError> {
    super::parse::<super::NoParams>(params)?;
    e.sample_loads();
    Ok(json!({ "workers": worker_rows(e), "rebalance": rebalance_json(e) }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RebalanceParams {
    #[serde(default)]
    dry_run: bool,
    improvement_percent: Option<u8>,
}

/// `workers.rebalance`.
pub(super) fn workers_rebalance(e: &mut Engine, params: Option<Value>) -> Result<Value, RpcError> {
    let p: RebalanceParams = super::parse(params)?;
    if p.improvement_percent.is_some_and(|i| i > 100) {
        return Err(RpcError::invalid_params(
            "improvement_percent: a share of the variance, 0 to 100",
        ));
    }
    let o = e
        .rebalance(RebalanceOptions {
            dry_run: p.dry_run,
            improvement: p.improvement_percent.map(|i| f64::from(i) / 100.0),
        })
        .map_err(super::rpc_error)?;
    let hz = super::stages::tsc_hz();
    let loads = |l: &[f64]| -> Vec<Value> {
        l.iter()
            .enumerate()
            .map(|(w, &c)| {
                json!({ "worker": w, "cycles_per_sec": c.round(), "busy_percent": percent(c, hz) })
            })
            .collect()
    };
    let moves: Vec<Value> = o
        .moves
        .iter()
        .map(|m| {
            json!({
                "port": m.port,
                "queue": m.queue,
                "from": m.from,
                "to": m.to,
                "cycles_per_sec": m.load.round(),
                "busy_percent": percent(m.load, hz),
            })
        })
        .collect();
    Ok(json!({
        "applied": o.applied,
        "dry_run": p.dry_run,
        "improvement_percent": (o.improvement * 1000.0).round() / 10.0,
        "threshold_percent": (o.threshold * 1000.0).round() / 10.0,
        "variance_before": o.variance_before,
        "variance_after": o.variance_after,
        "before": loads(&o.before),
        "after": loads(&o.after),
        "moves": moves,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PinParams {
    port: String,
    #[serde(default)]
    queue: u16,
    worker: Option<u16>,
}

/// `workers.pin`.
pub(super) fn workers_pin(e: &mut Engine, params: Option<Value>) -> Result<Value, RpcError> {
    let p: PinParams = super::parse(params)?;
    let moved = e
        .pin_queue(&p.port, p.queue, p.worker)
        .map_err(super::rpc_error)?;
    Ok(json!({
        "port": p.port,
        "queue": p.queue,
        "worker": p.worker,
        "pinned": p.worker.is_some(),
        "moved": moved,
    }))
}
