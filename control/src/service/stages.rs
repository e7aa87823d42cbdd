//! What the pipeline's stages did: drops per (stage, reason), ranked, and each stage's
//! runtime (as VPP's `show drops`/`show errors` and `show runtime`). The socket methods
//! `drops.list` and `runtime.get` are answered from the workers' counters here.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pollux_dataplane::counters::{Stage, WorkerCounters};
use pollux_dataplane::drop::DropReason;
use pollux_dataplane::pipeline::tsc;
use pollux_dataplane::port::PortId;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::engine::{port_label, Engine};
use crate::rpc::RpcError;
use crate::stage_counters::runtime;

/// `rpc.list` usage of `drops.list`.
pub const DROPS_LIST_USAGE: &str =
    "{port?: string, per_port?: bool} -> {generation, drops: [{stage, reason, count, port?, \
     help}]}: drops by the stage that decided them and reason, most first; per port (the \
     input port, or the output port for tx_ring_full/port_not_attached) with `port` or \
     `per_port`";

/// `rpc.list` usage of `runtime.get`.
pub const RUNTIME_GET_USAGE: &str =
    "{} -> {generation, tsc_hz, stages: [{stage, calls, packets, vector_size, cycles, \
     cycles_per_packet, ns_per_packet}]}: each stage's calls (bursts), packets, packets per \
     call and time per packet, from the time-stamp counter";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DropsParams {
    port: Option<String>,
    #[serde(default)]
    per_port: bool,
}

/// One ranked row of `drops.list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropRow {
    /// The stage that decided the drop.
    pub stage: Stage,
    /// Why.
    pub reason: DropReason,
    /// The port it is charged to, when asked per port.
    pub port: Option<PortId>,
    /// How many.
    pub count: u64,
}

/// Drops summed over `workers`: per (stage, reason), or per (port, stage, reason) when
/// `per_port`, keeping only `only` when given; most first, then by stage and reason.
pub fn drop_rows(
    workers: &[&WorkerCounters],
    per_port: bool,
    only: Option<PortId>,
) -> Vec<DropRow> {
    let mut sums: BTreeMap<(Option<PortId>, Stage, DropReason), u64> = BTreeMap::new();
    for w in workers {
        if per_port || only.is_some() {
            for (port, stage, reason, n) in w.port_drops.iter() {
                if only.is_none_or(|p| p == port) {
                    *sums.entry((Some(port), stage, reason)).or_default() += n;
                }
            }
        } else {
            for stage in Stage::ALL {
                for &reason in DropReason::ALL {
                    let n = w.stage_dropped(stage, reason);
                    if n > 0 {
                        *sums.entry((None, stage, reason)).or_default() += n;
                    }
                }
            }
        }
    }
    let mut rows: Vec<DropRow> = sums
        .into_iter()
        .map(|((port, stage, reason), count)| DropRow {
            stage,
            reason,
            port,
            count,
        })
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.count));
    rows
}

/// `drops.list`.
pub fn drops_list(e: &mut Engine, params: Option<Value>) -> Result<Value, RpcError> {
    let p: DropsParams = super::parse(params)?;
    let names: BTreeMap<PortId, String> = e
        .port_names()
        .into_iter()
        .map(|(id, key)| (id, port_label(&key).to_owned()))
        .collect();
    let only = match &p.port {
        Some(label) => Some(
            names
                .iter()
                .find(|(_, name)| *name == label)
                .map(|(id, _)| *id)
                .ok_or_else(|| RpcError::invalid_params(format!("no port {label:?}")))?,
        ),
        None => None,
    };
    let counters = e.worker_counters();
    let all: Vec<&WorkerCounters> = counters.iter().map(|c| &**c).collect();
    let rows = drop_rows(&all, p.per_port, only);
    let drops: Vec<Value> = rows
        .iter()
        .map(|r| {
            let mut v = json!({
                "stage": r.stage.name(),
                "reason": r.reason.name(),
                "count": r.count,
                "help": r.reason.help(),
            });
            if let Some(port) = r.port {
                v["port"] = json!(names
                    .get(&port)
                    .cloned()
                    .unwrap_or_else(|| format!("#{}", port.0)));
            }
            v
        })
        .collect();
    Ok(json!({ "drops": drops }))
}

/// Time-stamp-counter ticks per second, measured once against the monotonic clock (over
/// 20 ms, the first time it is asked for). `None` without a time-stamp counter.
pub fn tsc_hz() -> Option<f64> {
    static HZ: OnceLock<Option<f64>> = OnceLock::new();
    *HZ.get_or_init(|| {
        let (t0, c0) = (Instant::now(), tsc::now());
        std::thread::sleep(Duration::from_millis(20));
        let (t1, c1) = (Instant::now(), tsc::now());
        let secs = t1.duration_since(t0).as_secs_f64();
        let ticks = c1.wrapping_sub(c0) as f64;
        (ticks > 0.0 && secs > 0.0).then_some(ticks / secs)
    })
}

/// `runtime.get`.
pub fn runtime_get(e: &mut Engine, params: Option<Value>) -> Result<Value, RpcError> {
    super::parse::<super::NoParams>(params)?;
    let hz = tsc_hz();
    let counters = e.worker_counters();
    let all: Vec<&WorkerCounters> = counters.iter().map(|c| &**c).collect();
    let stages: Vec<Value> = runtime(&all)
        .into_iter()
        .map(|(stage, r)| {
            let per_packet = (r.packets > 0).then(|| r.cycles as f64 / r.packets as f64);
            let round = |x: f64| (x * 10.0).round() / 10.0;
            json!({
                "stage": stage.name(),
                "calls": r.calls,
                "packets": r.packets,
                "vector_size": (r.calls > 0).then(|| round(r.packets as f64 / r.calls as f64)),
                "cycles": r.cycles,
                "cycles_per_packet": per_packet.map(round),
                "ns_per_packet": per_packet
                    .zip(hz)
                    .map(|(c, hz)| round(c * 1e9 / hz)),
            })
        })
        .collect();
    Ok(json!({ "tsc_hz": hz.map(|h| h.round() as u64), "stages": stages }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::metrics::{render, MetricsSource};

    fn two_workers() -> (Arc<WorkerCounters>, Arc<WorkerCounters>) {
        let a = Arc::new(WorkerCounters::new(4));
        let b = Arc::new(WorkerCounters::new(4));
        a.count_drop(Some(PortId(1)), Stage::L2, DropReason::Hairpin, 2);
        b.count_drop(Some(PortId(1)), Stage::L2, DropReason::Hairpin, 3);
        a.count_drop(Some(PortId(2)), Stage::Classify, DropReason::Runt, 7);
        b.count_drop(None, Stage::Flood, DropReason::NoBuffers, 1);
        (a, b)
    }

    #[test]
    fn drops_are_summed_and_ranked() {
        let (a, b) = two_workers();
        let rows = drop_rows(&[&a, &b], false, None);
        let got: Vec<_> = rows.iter().map(|r| (r.stage, r.reason, r.count)).collect();
        assert_eq!(
            got,
            vec![
                (Stage::Classify, DropReason::Runt, 7),
                (Stage::L2, DropReason::Hairpin, 5),
                (Stage::Flood, DropReason::NoBuffers, 1),
            ]
        );
        let per_port = drop_rows(&[&a, &b], true, None);
        assert_eq!(per_port.len(), 2);
        assert_eq!(per_port[0].port, Some(PortId(2)));
        let one = drop_rows(&[&a, &b], false, Some(PortId(1)));
        assert_eq!(
            one,
            vec![DropRow {
                stage: Stage::L2,
                reason: DropReason::Hairpin,
                port: Some(PortId(1)),
                count: 5
            }]
        );
    }

    #[test]
    fn stage_families_are_exported_beside_the_per_reason_ones() {
        let (a, b) = two_workers();
        a.stage_calls[Stage::L2 as usize].add(3);
        b.stage_cycles[Stage::L2 as usize].add(900);
        let src = MetricsSource::new(vec![(0, a), (1, b)], vec![]);
        let text = render(&src);
        for line in [
            r#"pollux_stage_drops_total{stage="l2",reason="hairpin"} 5"#,
            r#"pollux_stage_drops_total{stage="classify",reason="runt"} 7"#,
            r#"pollux_stage_calls_total{stage="l2"} 3"#,
            r#"pollux_stage_cycles_total{stage="l2"} 900"#,
            r#"pollux_drops_total{reason="hairpin"} 5"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn runtime_sums_workers() {
        let (a, b) = two_workers();
        a.stage_calls[Stage::Output as usize].add(2);
        a.stage_packets[Stage::Output as usize].add(100);
        b.stage_packets[Stage::Output as usize].add(28);
        let r = runtime(&[&a, &b]);
        let (_, out) = r.iter().find(|(s, _)| *s == Stage::Output).unwrap();
        assert_eq!((out.calls, out.packets), (2, 128));
    }
}
