//! Results: the JSON file, the Markdown table and the SVG chart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::throughput::Finding;
use super::traffic::{Latency, TrialResult};

/// Latency at a fraction of the NDR.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyPoint {
    /// Fraction of the NDR (0.5, 0.9).
    pub fraction_of_ndr: f64,
    /// Offered rate.
    pub rate_pps: f64,
    /// Percentiles.
    #[serde(flatten)]
    pub latency: Latency,
    /// Frames lost in that trial.
    pub lost: u64,
}

/// Pollux's NDR and PDR divided by another device's, same scenario and frame size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Ratio {
    /// NDR ratio (`None` when either device has no NDR).
    pub ndr: Option<f64>,
    /// PDR ratio.
    pub pdr: Option<f64>,
}

/// One device, scenario and frame size.
#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    /// Scenario name.
    pub scenario: String,
    /// Device under test.
    pub dut: String,
    /// Frame size with FCS.
    pub frame_size: u16,
    /// Highest rate measured with zero loss (`None`: no trial had zero loss; `ndr_search`
    /// says why, with the loss figures).
    pub ndr_pps: Option<f64>,
    /// Highest rate measured with at most `pdr_loss` loss (`None`: see `pdr_search`).
    pub pdr_pps: Option<f64>,
    /// Loss allowed for the PDR (0.005).
    pub pdr_loss: f64,
    /// Latency at 50% and 90% of the NDR.
    pub latency: Vec<LatencyPoint>,
    /// For Pollux: ratios to every other device.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ratios: BTreeMap<String, Ratio>,
    /// Trials run for this entry.
    pub trials: u32,
    /// The trial at the NDR (counters along the path included).
    pub ndr_trial: Option<TrialResult>,
    /// How the NDR was found, or why none was: notes, the lowest failed trial's loss.
    pub ndr_search: Finding,
    /// The same for the PDR.
    pub pdr_search: Finding,
    /// The first trial, at the maximum rate: what the device forwards when overloaded,
    /// and where the frames it could not take went.
    pub overload_trial: Option<TrialResult>,
    /// Every trial, in order: rate, outcome and counters along the path.
    pub all_trials: Vec<TrialResult>,
}

/// Everything one run produced.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// What made it.
    pub tool: String,
    /// Start, seconds since the epoch.
    pub started_unix: u64,
    /// `uname -r`.
    pub kernel: String,
    /// CPUs online.
    pub cpus: usize,
    /// Trial length, seconds.
    pub trial_secs: f64,
    /// Search resolution (relative).
    pub resolution: f64,
    /// CPU placement, one line each.
    pub placement: Vec<String>,
    /// Scenario name → description.
    pub scenarios: BTreeMap<String, String>,
    /// Per device and scenario: placement lines and notes (modes, versions, counters).
    pub dut_notes: BTreeMap<String, Vec<String>>,
    /// The results.
    pub results: Vec<Entry>,
    /// Things the reader should know (contention, skipped devices).
    pub notes: Vec<String>,
}

impl Report {
    /// Fills in every Pollux entry's ratios to the other devices.
    pub fn compute_ratios(&mut self) {
        let snapshot = self.results.clone();
        for e in &mut self.results {
            if !e.dut.starts_with("pollux") {
                continue;
            }
            e.ratios.clear();
            for o in &snapshot {
                if o.scenario == e.scenario && o.frame_size == e.frame_size && o.dut != e.dut {
                    let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
                        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                        _ => None,
                    };
                    e.ratios.insert(
                        o.dut.clone(),
                        Ratio {
                            ndr: div(e.ndr_pps, o.ndr_pps),
                            pdr: div(e.pdr_pps, o.pdr_pps),
                        },
                    );
                }
            }
        }
    }

    /// The JSON document.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serializes")
    }

    /// Markdown: one throughput and latency table per scenario, then Pollux's ratios.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let scenarios: Vec<&String> = dedup(self.results.iter().map(|e| &e.scenario));
        for sc in scenarios {
            let _ = writeln!(
                s,
                "### {sc}: {}\n",
                self.scenarios.get(sc).map_or("", String::as_str)
            );
            let _ = writeln!(
                s,
                "| frame | device | NDR Mpps | PDR Mpps | latency @50% NDR p50/p99/p99.9/max µs | @90% NDR p50/p99/p99.9/max µs |"
            );
            let _ = writeln!(s, "|---:|---|---:|---:|---|---|");
            for e in self.results.iter().filter(|e| &e.scenario == sc) {
                let lat = |f: f64| {
                    e.latency
                        .iter()
                        .find(|p| (p.fraction_of_ndr - f).abs() < 1e-6)
                        .map_or("–".to_string(), |p| {
                            let l = &p.latency;
                            format!(
                                "{} / {} / {} / {}",
                                us(l.p50_ns),
                                us(l.p99_ns),
                                us(l.p999_ns),
                                us(l.max_ns)
                            )
                        })
                };
                let cell = |pps: Option<f64>, f: &Finding, mark: &str| match pps {
                    Some(v) if f.note.is_some() => format!("{:.3}{mark}", v / 1e6),
                    Some(v) => format!("{:.3}", v / 1e6),
                    None => format!("none{mark}"),
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} |",
                    e.frame_size,
                    e.dut,
                    cell(e.ndr_pps, &e.ndr_search, "¹"),
                    cell(e.pdr_pps, &e.pdr_search, "²"),
                    lat(0.5),
                    lat(0.9)
                );
            }
            let mut first = true;
            for e in self.results.iter().filter(|e| &e.scenario == sc) {
                for (mark, what, f) in [("¹", "NDR", &e.ndr_search), ("²", "PDR", &e.pdr_search)]
                {
                    if let Some(note) = &f.note {
                        if first {
                            s.push('\n');
                            first = false;
                        }
                        let _ = writeln!(s, "{mark} {} {} B {what}: {note}  ", e.dut, e.frame_size);
                    }
                }
            }
            let pollux: Vec<&Entry> = self
                .results
                .iter()
                .filter(|e| &e.scenario == sc && !e.ratios.is_empty())
                .collect();
            if !pollux.is_empty() {
                let _ = writeln!(s, "\nRatios (same run), NDR / PDR:\n");
                let _ = writeln!(s, "| frame | device | vs | NDR ratio | PDR ratio |");
                let _ = writeln!(s, "|---:|---|---|---:|---:|");
                for e in pollux {
                    for (other, r) in &e.ratios {
                        let f = |x: Option<f64>| x.map_or("–".to_string(), |v| format!("{v:.2}"));
                        let _ = writeln!(
                            s,
                            "| {} | {} | {} | {} | {} |",
                            e.frame_size,
                            e.dut,
                            other,
                            f(r.ndr),
                            f(r.pdr)
                        );
                    }
                }
                let others: Vec<&String> = dedup(
                    self.results
                        .iter()
                        .filter(|e| &e.scenario == sc)
                        .map(|e| &e.dut),
                );
                let mut first = true;
                for (dut, meaning) in RATIO_MEANINGS {
                    if others.iter().any(|o| o.as_str() == dut) {
                        if first {
                            s.push('\n');
                            first = false;
                        }
                        let _ = writeln!(s, "- pollux / {dut}: {meaning}");
                    }
                }
            }
            s.push('\n');
        }
        s
    }

    /// An SVG chart per scenario, side by side: NDR (Mpps) against frame size, one line
    /// per device.
    pub fn write_svg(&self, path: &Path) -> Result<(), String> {
        use plotters::prelude::*;
        let scenarios: Vec<&String> = dedup(self.results.iter().map(|e| &e.scenario));
        if scenarios.is_empty() {
            return Ok(());
        }
        let width = 640 * scenarios.len() as u32;
        let root = SVGBackend::new(path, (width, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let panels = root.split_evenly((1, scenarios.len()));
        let duts: Vec<&String> = dedup(self.results.iter().map(|e| &e.dut));
        for (panel, sc) in panels.iter().zip(&scenarios) {
            let entries: Vec<&Entry> = self.results.iter().filter(|e| &e.scenario == *sc).collect();
            let ymax = entries
                .iter()
                .map(|e| e.ndr_pps.unwrap_or(0.0).max(e.pdr_pps.unwrap_or(0.0)) / 1e6)
                .fold(0.1f64, f64::max)
                * 1.15;
            let mut chart = ChartBuilder::on(panel)
                .caption(format!("{sc}: NDR vs frame size"), ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(52)
                .build_cartesian_2d(0f64..1600f64, 0f64..ymax)
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_desc("frame size (bytes)")
                .y_desc("NDR (Mpps)")
                .draw()
                .map_err(|e| e.to_string())?;
            for (i, dut) in duts.iter().enumerate() {
                let mut pts: Vec<(f64, f64)> = entries
                    .iter()
                    .filter(|e| &e.dut == *dut)
                    .filter_map(|e| Some((f64::from(e.frame_size), e.ndr_pps? / 1e6)))
                    .collect();
                if pts.is_empty() {
                    continue;
                }
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                let color = Palette99::pick(i).to_rgba();
                chart
                    .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                    .map_err(|e| e.to_string())?
                    .label(dut.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                    });
                chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(|e| e.to_string())?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())
    }
}

/// What Pollux's ratio to each reference device measures.
const RATIO_MEANINGS: [(&str, &str); 2] = [
    (
        "xsk-fwd",
        "what Pollux's pipeline costs (same AF_XDP driver, sockets and placement, no pipeline)",
    ),
    (
        "xdp-redirect",
        "what userspace costs (the kernel redirecting in XDP, no AF_XDP copy or socket)",
    ),
];

/// `0.123 Mpps`, or `none` when no rate was found.
pub fn mpps(pps: Option<f64>) -> String {
    pps.map_or("none".to_string(), |v| format!("{:.3} Mpps", v / 1e6))
}

fn us(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1000.0)
}

fn dedup<'a>(it: impl Iterator<Item = &'a String>) -> Vec<&'a String> {
    let mut out: Vec<&String> = Vec::new();
    for s in it {
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(dut: &str, size: u16, ndr: f64) -> Entry {
        Entry {
            scenario: "l2-p2p".into(),
            dut: dut.into(),
            frame_size: size,
            ndr_pps: (ndr > 0.0).then_some(ndr),
            pdr_pps: (ndr > 0.0).then_some(ndr * 1.1),
            pdr_loss: 0.005,
            latency: vec![LatencyPoint {
                fraction_of_ndr: 0.5,
                rate_pps: ndr / 2.0,
                latency: Latency {
                    samples: 10,
                    p50_ns: 12_000,
                    p99_ns: 30_000,
                    p999_ns: 40_000,
                    max_ns: 50_000,
                },
                lost: 0,
            }],
            ratios: BTreeMap::new(),
            trials: 7,
            ndr_trial: None,
            overload_trial: None,
            ndr_search: Finding::default(),
            pdr_search: Finding::default(),
            all_trials: Vec::new(),
        }
    }

    fn report() -> Report {
        let mut r = Report {
            tool: "test".into(),
            trial_secs: 1.0,
            ..Report::default()
        };
        r.scenarios.insert("l2-p2p".into(), "port to port".into());
        r.results = vec![
            entry("pollux", 64, 900_000.0),
            entry("ovs-afxdp", 64, 450_000.0),
            entry("xdp-redirect", 64, 1_000_000.0),
            entry("xsk-fwd", 64, 1_200_000.0),
            entry("linux-bridge", 64, 0.0),
            entry("pollux", 1518, 500_000.0),
        ];
        r.compute_ratios();
        r
    }

    #[test]
    fn ratios_are_pollux_over_each_other_device_of_the_same_size() {
        let r = report();
        let p = &r.results[0];
        assert_eq!(p.ratios.len(), 4);
        assert!((p.ratios["xsk-fwd"].ndr.unwrap() - 0.75).abs() < 1e-9);
        assert!((p.ratios["ovs-afxdp"].ndr.unwrap() - 2.0).abs() < 1e-9);
        assert!((p.ratios["xdp-redirect"].ndr.unwrap() - 0.9).abs() < 1e-9);
        assert_eq!(p.ratios["linux-bridge"].ndr, None, "no ratio to a zero NDR");
        assert!(r.results[1].ratios.is_empty(), "only Pollux gets ratios");
        assert!(r.results[5].ratios.is_empty(), "nothing else at 1518 bytes");
    }

    #[test]
    fn json_has_the_fields_the_issue_names() {
        let r = report();
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        let e = &v["results"][0];
        for k in [
            "dut",
            "frame_size",
            "ndr_pps",
            "pdr_pps",
            "latency",
            "ratios",
        ] {
            assert!(!e[k].is_null(), "missing {k}");
        }
        assert_eq!(e["latency"][0]["p99_ns"], 30_000);
        assert_eq!(e["ratios"]["ovs-afxdp"]["ndr"], 2.0);
        assert!(v["results"][1].get("ratios").is_none());
    }

    #[test]
    fn markdown_lists_every_entry_and_the_ratios() {
        let md = report().to_markdown();
        assert!(md.contains("### l2-p2p: port to port"));
        assert!(
            md.contains("| 64 | pollux | 0.900 | 0.990 | 12.0 / 30.0 / 40.0 / 50.0 | – |"),
            "{md}"
        );
        assert!(
            md.contains("| 64 | pollux | ovs-afxdp | 2.00 | 2.00 |"),
            "{md}"
        );
        assert!(
            md.contains("| 64 | pollux | linux-bridge | – | – |"),
            "{md}"
        );
        assert!(
            md.contains("| 64 | pollux | xsk-fwd | 0.75 | 0.75 |"),
            "{md}"
        );
        assert!(
            md.contains("- pollux / xsk-fwd: what Pollux's pipeline costs"),
            "{md}"
        );
        assert!(
            md.contains("- pollux / xdp-redirect: what userspace costs"),
            "{md}"
        );
    }

    #[test]
    fn a_device_without_ndr_shows_none_and_why_never_zero() {
        let mut r = report();
        let e = &mut r.results[2];
        e.ndr_pps = None;
        e.ndr_search.note = Some("none found with zero loss: loss at every rate tried".into());
        r.compute_ratios();
        let md = r.to_markdown();
        assert!(md.contains("| 64 | xdp-redirect | none¹ | 1.100 |"), "{md}");
        assert!(
            md.contains(
                "¹ xdp-redirect 64 B NDR: none found with zero loss: loss at every rate tried"
            ),
            "{md}"
        );
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert!(v["results"][2]["ndr_pps"].is_null());
        assert_eq!(
            v["results"][2]["ndr_search"]["note"],
            "none found with zero loss: loss at every rate tried"
        );
        assert!(v["results"][0]["ratios"]["xdp-redirect"]["ndr"].is_null());
    }

    #[test]
    fn svg_is_written() {
        let dir = std::env::temp_dir().join(format!("pollux-bench-svg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.svg");
        report().write_svg(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("<svg") && text.contains("pollux"),
            "{}",
            &text[..200.min(text.len())]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
