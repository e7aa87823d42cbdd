//! RFC 2544 throughput of one device at one frame size: the NDR and PDR searches over
//! trials the caller runs, and what the report says about their outcome.
//!
//! The searches ([`Search`]) only steer: the figures reported are the best trials
//! *measured*. The NDR is the highest rate offered in a trial with zero loss, the PDR the
//! highest with at most the PDR's loss, whichever search ran the trial, so a noisy
//! failure at a lower rate never takes back a pass. When no trial passed, the finding
//! says so (`pps: None`) and why: the generator could not offer the rates, or frames
//! were lost at every rate tried (with the loss figures), or they came out mis-tagged.

use serde::Serialize;

use super::search::{Search, SearchConfig};
use super::traffic::TrialResult;

/// The figures of a failed trial, for the report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FailedTrial {
    /// Rate asked for.
    pub requested_pps: f64,
    /// Rate the generator offered.
    pub offered_pps: f64,
    /// Frames sent.
    pub sent: u64,
    /// Frames lost.
    pub lost: u64,
    /// `lost / sent`.
    pub loss_fraction: f64,
    /// The generator fell short of the asked rate (see `TrialResult::generator_limited`).
    pub generator_limited: bool,
    /// Frames with a wrong VLAN tag.
    pub bad_vlan: u64,
    /// Frames with a wrong source address (not translated).
    pub bad_source: u64,
}

impl FailedTrial {
    fn of(t: &TrialResult) -> FailedTrial {
        FailedTrial {
            requested_pps: t.requested_pps,
            offered_pps: t.offered_pps,
            sent: t.sent,
            lost: t.lost,
            loss_fraction: if t.sent > 0 {
                t.lost as f64 / t.sent as f64
            } else {
                0.0
            },
            generator_limited: t.generator_limited,
            bad_vlan: t.bad_vlan,
            bad_source: t.bad_source,
        }
    }

    fn describe(&self) -> String {
        let mut s = format!(
            "at {:.3} Mpps asked ({:.3} offered) lost {} of {} ({:.3}%)",
            self.requested_pps / 1e6,
            self.offered_pps / 1e6,
            self.lost,
            self.sent,
            self.loss_fraction * 100.0
        );
        if self.generator_limited {
            s.push_str(", generator-limited");
        }
        if self.bad_vlan > 0 {
            s.push_str(&format!(", {} mis-tagged", self.bad_vlan));
        }
        if self.bad_source > 0 {
            s.push_str(&format!(
                ", {} with a wrong source address",
                self.bad_source
            ));
        }
        s
    }
}

/// What one search (NDR or PDR) found.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Finding {
    /// Rate offered in the best passing trial; `None` when no trial passed.
    pub pps: Option<f64>,
    /// Rate asked for in that trial.
    pub requested_pps: Option<f64>,
    /// Why no trial passed, or what the reader should know about the rate reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Trials that failed at or below the reported rate (a noisy device or machine).
    pub failures_at_or_below: u32,
    /// The failed trial at the lowest asked rate, with its loss figures.
    pub lowest_failure: Option<FailedTrial>,
}

impl Finding {
    /// The finding for loss bound `max_loss` (0: the NDR) over `trials`;
    /// `trial_budget` is the search's trial limit when it ran out of trials.
    pub fn of(trials: &[TrialResult], max_loss: f64, trial_budget: Option<u32>) -> Finding {
        let bound = bound_name(max_loss);
        let best = trials
            .iter()
            .filter(|t| t.passes(max_loss))
            .max_by(|a, b| a.offered_pps.total_cmp(&b.offered_pps));
        let failures: Vec<&TrialResult> = trials.iter().filter(|t| !t.passes(max_loss)).collect();
        let lowest_failure = failures
            .iter()
            .min_by(|a, b| a.requested_pps.total_cmp(&b.requested_pps))
            .map(|t| FailedTrial::of(t));
        let Some(best) = best else {
            return Finding {
                pps: None,
                requested_pps: None,
                note: Some(none_found(&failures, &bound, trial_budget)),
                failures_at_or_below: 0,
                lowest_failure,
            };
        };
        let below: Vec<&&TrialResult> = failures
            .iter()
            .filter(|t| t.requested_pps <= best.requested_pps)
            .collect();
        let note = below
            .iter()
            .min_by(|a, b| a.requested_pps.total_cmp(&b.requested_pps))
            .map(|low| {
                format!(
                    "best rate measured with {bound}; {} trial(s) at or below it failed (noisy; \
                     lowest: {})",
                    below.len(),
                    FailedTrial::of(low).describe()
                )
            });
        Finding {
            pps: Some(best.offered_pps),
            requested_pps: Some(best.requested_pps),
            note,
            failures_at_or_below: below.len() as u32,
            lowest_failure,
        }
    }
}

fn bound_name(max_loss: f64) -> String {
    if max_loss == 0.0 {
        "zero loss".to_string()
    } else {
        format!("at most {}% loss", max_loss * 100.0)
    }
}

/// Why no trial passed: every reason that applies, with the figures.
fn none_found(failures: &[&TrialResult], bound: &str, trial_budget: Option<u32>) -> String {
    if failures.is_empty() {
        return format!("none found with {bound}: no trial ran");
    }
    let limited: Vec<&&TrialResult> = failures.iter().filter(|t| t.generator_limited).collect();
    let mistagged = failures.iter().filter(|t| t.bad_vlan > 0).count();
    let untranslated = failures.iter().filter(|t| t.bad_source > 0).count();
    let lossy = failures
        .iter()
        .filter(|t| !t.generator_limited)
        .min_by(|a, b| a.requested_pps.total_cmp(&b.requested_pps));
    let lowest_asked = failures
        .iter()
        .map(|t| t.requested_pps)
        .fold(f64::INFINITY, f64::min);
    let most_offered = limited.iter().map(|t| t.offered_pps).fold(0.0, f64::max);
    let mut parts = Vec::new();
    match lossy {
        None => parts.push(format!(
            "generator-limited at every rate tried (down to {:.3} Mpps asked): the generator \
             offered at most {:.3} Mpps",
            lowest_asked / 1e6,
            most_offered / 1e6
        )),
        Some(low) => {
            parts.push(format!(
                "loss at every rate tried; lowest: {}",
                FailedTrial::of(low).describe()
            ));
            if !limited.is_empty() {
                parts.push(format!(
                    "{} trial(s) generator-limited (offered at most {:.3} Mpps)",
                    limited.len(),
                    most_offered / 1e6
                ));
            }
        }
    }
    if mistagged > 0 {
        parts.push(format!("{mistagged} trial(s) with mis-tagged frames"));
    }
    if untranslated > 0 {
        parts.push(format!(
            "{untranslated} trial(s) with frames of a wrong source address"
        ));
    }
    if let Some(n) = trial_budget {
        parts.push(format!("the search used all its {n} trials (--max-trials)"));
    }
    format!("none found with {bound}: {}", parts.join("; "))
}

/// The outcome of the NDR and PDR searches for one device and frame size.
#[derive(Clone, Debug, Default)]
pub struct Throughput {
    /// Zero loss.
    pub ndr: Finding,
    /// At most the PDR's loss.
    pub pdr: Finding,
    /// The trial the NDR was taken from.
    pub ndr_trial: Option<TrialResult>,
    /// The first trial, at the maximum rate.
    pub overload: Option<TrialResult>,
    /// Every trial, in order.
    pub trials: Vec<TrialResult>,
}

/// Searches the NDR, then the PDR (reusing the NDR's trials), running each trial with
/// `trial(phase, rate)`.
pub fn measure(
    cfg: SearchConfig,
    pdr_loss: f64,
    mut trial: impl FnMut(&str, f64) -> Result<TrialResult, String>,
) -> Result<Throughput, String> {
    let mut trials: Vec<TrialResult> = Vec::new();
    let mut overload: Option<TrialResult> = None;

    let mut ndr_search = Search::new(cfg);
    while let Some(rate) = ndr_search.next_rate() {
        let r = trial("NDR", rate)?;
        ndr_search.record(rate, r.passes(0.0));
        if overload.is_none() {
            // What got through while overloaded is close to the answer, unless the
            // device collapsed under overload (receive livelock): then bisect.
            if r.received_pps > 0.05 * rate {
                ndr_search.set_hint(r.received_pps * 0.99);
            }
            overload = Some(r.clone());
        }
        trials.push(r);
    }
    let ndr_budget = (ndr_search.trials() >= cfg.max_trials).then_some(cfg.max_trials);

    // PDR: starts above the NDR, knowing what the NDR trials showed.
    let mut pdr_search = Search::with_known_pass(cfg, ndr_search.result());
    for t in &trials {
        if t.passes(pdr_loss) {
            pdr_search.known_pass(t.requested_pps);
        } else {
            pdr_search.known_fail(t.requested_pps);
        }
    }
    if let Some(o) = overload
        .as_ref()
        .filter(|o| o.received_pps > 0.05 * o.requested_pps)
    {
        pdr_search.set_hint(o.received_pps);
    }
    while let Some(rate) = pdr_search.next_rate() {
        let r = trial("PDR", rate)?;
        pdr_search.record(rate, r.passes(pdr_loss));
        trials.push(r);
    }
    let pdr_budget = (pdr_search.trials() >= cfg.max_trials).then_some(cfg.max_trials);

    let ndr = Finding::of(&trials, 0.0, ndr_budget);
    let pdr = Finding::of(&trials, pdr_loss, pdr_budget);
    let ndr_trial = ndr.requested_pps.and_then(|rate| {
        trials
            .iter()
            .filter(|t| t.requested_pps == rate && t.passes(0.0))
            .max_by(|a, b| a.offered_pps.total_cmp(&b.offered_pps))
            .cloned()
    });
    Ok(Throughput {
        ndr,
        pdr,
        ndr_trial,
        overload,
        trials,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECS: f64 = 2.0;

    /// A synthetic device: at each asked rate, the rate the generator manages and the
    /// fraction of frames lost.
    fn trial_at(rate: f64, generator_max: f64, loss: f64) -> TrialResult {
        let offered = rate.min(generator_max);
        let wanted = (rate * SECS) as u64;
        let sent = (offered * SECS) as u64;
        let lost = (sent as f64 * loss).ceil() as u64;
        let mut t = TrialResult {
            requested_pps: rate,
            offered_pps: offered,
            received_pps: (sent - lost) as f64 / SECS,
            sent,
            not_offered: wanted - sent,
            received: sent - lost,
            lost,
            secs: SECS,
            ..TrialResult::default()
        };
        t.generator_limited = !t.offered_in_full();
        t
    }

    fn cfg(max_trials: u32) -> SearchConfig {
        SearchConfig {
            max_trials,
            resolution: 0.02,
            ..SearchConfig::default()
        }
    }

    fn run(
        cfg: SearchConfig,
        mut device: impl FnMut(f64) -> TrialResult,
    ) -> (Throughput, Vec<(String, f64)>) {
        let mut asked = Vec::new();
        let t = measure(cfg, 0.005, |phase, rate| {
            asked.push((phase.to_string(), rate));
            Ok(device(rate))
        })
        .unwrap();
        (t, asked)
    }

    /// Loss grows past `ndr` and exceeds 0.5% past `pdr`.
    fn monotone(ndr: f64, pdr: f64) -> impl FnMut(f64) -> TrialResult {
        move |rate| {
            let loss = if rate <= ndr {
                0.0
            } else if rate <= pdr {
                0.001
            } else {
                (1.0 - pdr / rate).max(0.01)
            };
            trial_at(rate, f64::INFINITY, loss)
        }
    }

    /// The smoke run that printed "NDR 0.000 Mpps" beside a PDR of 0.903: three trials,
    /// the maximum lost half, the hint (what got through) lost a little, and so did the
    /// step below it. No rate had zero loss: the NDR is none, said plainly with the loss
    /// figures, never a 0; the PDR is at least the hint's rate.
    #[test]
    fn the_smoke_run_reports_no_ndr_with_the_reason_and_a_pdr() {
        let (t, asked) = run(cfg(3), |rate| {
            let loss = if rate > 1_000_000.0 { 0.5 } else { 0.0005 };
            trial_at(rate, f64::INFINITY, loss)
        });
        assert_eq!(
            asked.iter().filter(|a| a.0 == "NDR").count(),
            3,
            "{asked:?}"
        );
        assert_eq!(t.ndr.pps, None);
        let note = t.ndr.note.as_deref().unwrap();
        assert!(
            note.starts_with(
                "none found with zero loss: loss at every rate tried; lowest: at 0.941 Mpps"
            ),
            "{note}"
        );
        assert!(note.contains("lost 941 of 1881000 (0.050%)"), "{note}");
        assert!(note.contains("used all its 3 trials"), "{note}");
        let low = t.ndr.lowest_failure.as_ref().unwrap();
        assert_eq!((low.lost, low.sent), (941, 1_881_000));
        assert!(t.pdr.pps.unwrap() >= 990_000.0, "{:?}", t.pdr);
        assert!(t.pdr.pps.unwrap() <= 1_000_000.0, "{:?}", t.pdr);
        assert!(t.ndr_trial.is_none());
    }

    #[test]
    fn monotone_loss_curve_finds_both_rates_within_the_resolution() {
        let (t, _) = run(cfg(14), monotone(600_000.0, 800_000.0));
        let ndr = t.ndr.pps.unwrap();
        let pdr = t.pdr.pps.unwrap();
        assert!((600_000.0 * 0.96..=600_000.0).contains(&ndr), "{ndr}");
        assert!((800_000.0 * 0.96..=800_000.0).contains(&pdr), "{pdr}");
        assert_eq!(t.ndr.note, None);
        assert_eq!(t.ndr.failures_at_or_below, 0);
        assert_eq!(t.ndr_trial.as_ref().unwrap().offered_pps, ndr);
        assert_eq!(t.overload.as_ref().unwrap().requested_pps, 2_000_000.0);
    }

    /// Non-monotone: a pass, then a failure at a lower rate. The pass stands (it was
    /// measured), and the note says the device is noisy there, with the failure's loss.
    #[test]
    fn a_failure_below_a_measured_pass_is_noted_not_reported_as_zero() {
        let mut n = 0;
        let (t, asked) = run(cfg(6), |rate| {
            n += 1;
            // Trial 2 (the hint) passes; every later trial loses one frame.
            let loss = if rate > 1_000_000.0 {
                0.5
            } else if n == 2 {
                0.0
            } else {
                1e-9
            };
            trial_at(rate, f64::INFINITY, loss)
        });
        let ndr = t.ndr.pps.unwrap();
        assert_eq!(ndr, asked[1].1, "{asked:?}");
        assert!(t.ndr.failures_at_or_below == 0 || t.ndr.note.is_some());
        let lower_failures = asked.iter().filter(|a| a.1 < ndr).count() as u32;
        assert_eq!(t.ndr.failures_at_or_below, lower_failures, "{asked:?}");
        if lower_failures > 0 {
            let note = t.ndr.note.as_deref().unwrap();
            assert!(note.contains("noisy"), "{note}");
            assert!(note.contains("lost 1 of"), "{note}");
        }
    }

    /// Occasional loss at every rate (a frame now and then, whatever the rate): no NDR,
    /// and the note gives the loss at the lowest rate tried; the PDR is found.
    #[test]
    fn loss_at_every_rate_gives_no_ndr_and_the_loss_figures() {
        let (t, _) = run(cfg(14), |rate| {
            let loss = if rate > 700_000.0 { 0.3 } else { 1e-6 };
            trial_at(rate, f64::INFINITY, loss)
        });
        assert_eq!(t.ndr.pps, None);
        let note = t.ndr.note.as_deref().unwrap();
        assert!(note.contains("loss at every rate tried"), "{note}");
        assert!(!note.contains("generator-limited"), "{note}");
        let low = t.ndr.lowest_failure.as_ref().unwrap();
        assert!(low.lost == 1 && !low.generator_limited, "{low:?}");
        let pdr = t.pdr.pps.unwrap();
        assert!((700_000.0 * 0.96..=700_000.0).contains(&pdr), "{pdr}");
    }

    /// The generator tops out at 400 kpps, the device loses nothing: trials above are
    /// generator-limited (marked, failed), the NDR is what the generator could offer.
    #[test]
    fn generator_limited_trials_are_marked_and_the_ndr_is_what_was_offered() {
        let (t, _) = run(cfg(14), |rate| trial_at(rate, 400_000.0, 0.0));
        let ndr = t.ndr.pps.unwrap();
        assert!((400_000.0 * 0.9..=400_000.0).contains(&ndr), "{ndr}");
        let o = t.overload.as_ref().unwrap();
        assert!(o.generator_limited && !o.passes(0.0), "{o:?}");
        assert!(t.trials.iter().any(|t| !t.generator_limited));
        for tr in &t.trials {
            assert_eq!(
                tr.generator_limited,
                tr.offered_pps < 0.95 * tr.requested_pps - 1.0
            );
        }
    }

    /// The generator cannot offer even the lowest rate tried in full: no NDR, no PDR,
    /// and the note says it was the generator, not the device.
    #[test]
    fn generator_limited_everywhere_says_so() {
        let (t, _) = run(cfg(5), |rate| trial_at(rate, rate * 0.5, 0.0));
        for f in [&t.ndr, &t.pdr] {
            assert_eq!(f.pps, None);
            let note = f.note.as_deref().unwrap();
            assert!(
                note.contains("generator-limited at every rate tried"),
                "{note}"
            );
            assert!(f.lowest_failure.as_ref().unwrap().generator_limited);
        }
    }

    proptest! {
        /// Whatever the loss curve (noisy, non-monotone, generator-limited), the NDR is
        /// the best zero-loss trial measured, the PDR the best within the bound (so never
        /// below the NDR), and a search without a pass always says why.
        #[test]
        fn findings_are_the_best_trials_measured(
            ndr in 10_000.0f64..2_000_000.0,
            extra in 0.0f64..0.5,
            generator_max in 100_000.0f64..3_000_000.0,
            noise in any::<u64>(),
        ) {
            let pdr_rate = ndr * (1.0 + extra);
            let mut bits = noise;
            let (t, _) = run(cfg(10), |rate| {
                let unlucky = bits & 7 == 0;
                bits = bits.rotate_right(3);
                let loss = if rate > pdr_rate {
                    0.2
                } else if rate > ndr || unlucky {
                    0.001
                } else {
                    0.0
                };
                trial_at(rate, generator_max, loss)
            });
            let best = |max_loss: f64| {
                t.trials
                    .iter()
                    .filter(|x| x.passes(max_loss))
                    .map(|x| x.offered_pps)
                    .reduce(f64::max)
            };
            prop_assert_eq!(t.ndr.pps, best(0.0));
            prop_assert_eq!(t.pdr.pps, best(0.005));
            if let (Some(n), Some(p)) = (t.ndr.pps, t.pdr.pps) {
                prop_assert!(p >= n);
            }
            for f in [&t.ndr, &t.pdr] {
                prop_assert!(f.pps.is_some() || f.note.as_deref().is_some_and(|n| n.starts_with("none found")));
            }
        }
    }
}
