//! The stage counters read for export: each stage's runtime summed over workers, and the
//! stage metric families of a scrape. Kept apart from the socket methods (which need the
//! engine) so that the metrics server, which the engine starts, depends on counters only.

use pollux_dataplane::counters::{Stage, WorkerCounters};
use pollux_dataplane::drop::DropReason;

/// One stage's runtime summed over workers.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StageRuntime {
    /// Bursts the stage ran for.
    pub calls: u64,
    /// Packets it took.
    pub packets: u64,
    /// Time-stamp-counter cycles it took.
    pub cycles: u64,
}

/// Every stage's runtime, summed over `workers`.
pub fn runtime(workers: &[&WorkerCounters]) -> Vec<(Stage, StageRuntime)> {
    Stage::ALL
        .iter()
        .map(|&s| {
            let i = s as usize;
            let mut r = StageRuntime::default();
            for w in workers {
                r.calls += w.stage_calls[i].get();
                r.packets += w.stage_packets[i].get();
                r.cycles += w.stage_cycles[i].get();
            }
            (s, r)
        })
        .collect()
}

/// The stages' metric families as one scrape read them.
#[derive(Debug, Default)]
pub struct StageMetrics {
    drops: Vec<(&'static str, &'static str, u64)>,
    runtime: Vec<(&'static str, StageRuntime)>,
}

impl StageMetrics {
    /// Reads `workers`' counters once.
    pub fn scrape<'a>(workers: impl IntoIterator<Item = &'a WorkerCounters>) -> Self {
        let workers: Vec<&WorkerCounters> = workers.into_iter().collect();
        let mut drops = Vec::new();
        for stage in Stage::ALL {
            for &reason in DropReason::ALL {
                let n: u64 = workers.iter().map(|w| w.stage_dropped(stage, reason)).sum();
                if n > 0 {
                    drops.push((stage.name(), reason.name(), n));
                }
            }
        }
        let runtime = runtime(&workers)
            .into_iter()
            .map(|(s, r)| (s.name(), r))
            .collect();
        StageMetrics { drops, runtime }
    }

    /// Writes `pollux_stage_drops_total{stage, reason}` (only the pairs that happened),
    /// `pollux_stage_calls_total{stage}` and `pollux_stage_cycles_total{stage}`.
    pub fn encode(
        &self,
        e: &mut prometheus_client::encoding::DescriptorEncoder,
    ) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::MetricType;

        let mut family = e.encode_descriptor(
            "pollux_stage_drops",
            "Frames dropped, by the pipeline stage that decided it and reason.",
            None,
            MetricType::Counter,
        )?;
        for &(stage, reason, n) in &self.drops {
            let labels = [("stage", stage), ("reason", reason)];
            ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
        }
        type Field = fn(&StageRuntime) -> u64;
        let families: [(&str, &str, Field); 2] = [
            (
                "pollux_stage_calls",
                "Bursts each pipeline stage ran for (packets per call: pollux_stage_packets / this).",
                |r| r.calls,
            ),
            (
                "pollux_stage_cycles",
                "Time-stamp-counter cycles spent in each pipeline stage.",
                |r| r.cycles,
            ),
        ];
        for (name, help, field) in families {
            let mut family = e.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (stage, r) in &self.runtime {
                let labels = [("stage", *stage)];
                ConstCounter::new(field(r)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
