//! The run: for each scenario and device under test, start the device, apply the
//! placement, and for each frame size search the NDR and PDR and measure latency.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;

use super::dut::{self, DutKind, Env};
use super::placement::{self, Cpus};
use super::pvp_traffic::{PvpListener, PvpTraffic};
use super::report::{mpps, Entry, LatencyPoint, Report};
use super::scenario::Scenario;
use super::search::SearchConfig;
use super::sys::{self, interrupted, interrupted_error, pin_to_cpu, run};
use super::throughput;
use super::topology::{self, counter_delta, Topology};
use super::traffic::{Traffic, TrafficPath, TrialResult, TrialSpec};

/// Loss allowed at the PDR.
pub const PDR_LOSS: f64 = 0.005;
/// Fractions of the NDR at which latency is measured.
pub const LATENCY_AT: [f64; 2] = [0.5, 0.9];

/// What to run.
#[derive(Debug)]
pub struct Options {
    /// Scenarios, in order.
    pub scenarios: Vec<Box<dyn Scenario>>,
    /// Devices, in order.
    pub duts: Vec<DutKind>,
    /// Frame sizes (with FCS).
    pub sizes: Vec<u16>,
    /// Seconds per trial.
    pub trial_secs: f64,
    /// Search bounds.
    pub search: SearchConfig,
    /// CPUs.
    pub cpus: Cpus,
    /// polluxd binary.
    pub polluxd: PathBuf,
    /// `SO_BUSY_POLL_BUDGET` for pollux-busy-poll.
    pub busy_poll_budget: u16,
}

/// The progress line: rewritten in place on a terminal; elsewhere only trial results
/// (`final_line`) are printed, one per line.
fn progress_line(line: &str, final_line: bool) {
    use std::io::IsTerminal;
    let mut err = std::io::stderr().lock();
    if err.is_terminal() {
        let _ = write!(err, "\r\x1b[K{line}");
    } else if final_line && !line.is_empty() {
        let _ = writeln!(err, "{line}");
    }
    let _ = err.flush();
}

fn progress(line: &str) {
    progress_line(line, false);
}

/// Runs everything; the topology is torn down before this returns, whatever happens.
pub fn run_all(opts: &Options) -> Result<Report, String> {
    // Release builds abort on panic, so no guard would run: delete what this run makes
    // from the panic hook as well.
    let work = std::env::temp_dir().join(format!(
        "{}{:x}.work",
        topology::PREFIX_ROOT,
        std::process::id()
    ));
    let hook_work = work.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        let _ = pollux_testkit::netns::remove_own(topology::PREFIX_ROOT);
        let _ = std::fs::remove_dir_all(&hook_work);
    }));
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let result = run_in_topology(opts, &work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn run_in_topology(opts: &Options, work: &std::path::Path) -> Result<Report, String> {
    // Everything this process starts (polluxd's and OVS's control threads, `ip`) inherits
    // the generator's CPU; the DUT's datapath threads pin themselves to the DUT's.
    pin_to_cpu(opts.cpus.gen).map_err(|e| format!("pin to CPU {}: {e}", opts.cpus.gen))?;
    if opts.cpus.realtime {
        sys::set_nice(sys::gettid(), placement::DATAPATH_NICE)?;
    }
    let topo = Topology::create()?;
    let mut traffic = Traffic::open(topo.ns("gen"), topo.ns("sink"))?;
    let mut report = Report {
        tool: format!("pollux-bench compare {}", env!("CARGO_PKG_VERSION")),
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        kernel: run(&["uname", "-r"]).unwrap_or_default().trim().to_string(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        trial_secs: opts.trial_secs,
        resolution: opts.search.resolution,
        placement: placement::describe(&topo, opts.cpus),
        ..Report::default()
    };
    report
        .placement
        .push(placement::apply_sink(&topo, opts.cpus)?);
    let _softirq = placement::SoftirqPriority::raise(opts.cpus)?;
    if let Some(line) = _softirq.describe() {
        report.placement.push(line);
    }
    let own_group = placement::AutogroupPriority::raise(opts.cpus, &[std::process::id()], &[]);
    if let Some(line) = own_group.describe() {
        report.placement.push(line);
    }
    for line in &report.placement {
        eprintln!("placement: {line}");
    }
    let vhost_sockets = [work.join("pvp-gen.sock"), work.join("pvp-sink.sock")];
    let env = Env {
        topo: &topo,
        work,
        polluxd: &opts.polluxd,
        gen_cpu: opts.cpus.gen,
        dut_cpu: opts.cpus.dut,
        busy_poll_budget: opts.busy_poll_budget,
        vhost_sockets: &vhost_sockets,
    };
    for sc in &opts.scenarios {
        report
            .scenarios
            .insert(sc.name().to_string(), sc.describe().to_string());
        for &kind in &opts.duts {
            if interrupted() {
                return Err(interrupted_error());
            }
            let key = format!("{}/{}", sc.name(), kind.name());
            progress(&format!("[{key}] starting"));
            topo.detach_xdp();
            // vhost-user scenarios: the generator and the sink listen before the device
            // starts, and it connects to them.
            let listener = if sc.vhost_user() {
                Some(PvpListener::bind(&vhost_sockets[0], &vhost_sockets[1])?)
            } else {
                None
            };
            let running = match dut::start(kind, &env, sc.as_ref()) {
                Ok(Some(r)) => r,
                Ok(None) => {
                    report.notes.push(format!(
                        "{key}: the device cannot do this scenario; skipped"
                    ));
                    continue;
                }
                Err(e) => {
                    eprintln!("\npollux-bench: {key}: {e}");
                    report.notes.push(format!("{key}: failed to start: {e}"));
                    continue;
                }
            };
            let mut pvp: Option<PvpTraffic> = None;
            if let Some(l) = &listener {
                match l
                    .accept(std::time::Duration::from_secs(30))
                    .and_then(|t| running.wait_connected().map(|()| t))
                {
                    Ok(t) => pvp = Some(t),
                    Err(e) => {
                        eprintln!("\npollux-bench: {key}: {e}");
                        report.notes.push(format!("{key}: failed to connect: {e}"));
                        continue;
                    }
                }
            }
            let mut notes = placement::apply(&topo, opts.cpus, &running.pids())?;
            let dut_group =
                placement::AutogroupPriority::raise(opts.cpus, &running.pids(), &own_group.names());
            notes.extend(dut_group.describe());
            for l in &notes {
                progress("");
                eprintln!("[{key}] placement: {l}");
            }
            let dut_threads = placement::datapath_threads(&running.pids());
            if sc.check_before_search() && pvp.is_none() {
                match check_forwarding(&mut traffic, sc.as_ref()) {
                    Ok(line) => notes.push(line),
                    Err(e) => {
                        progress("");
                        eprintln!("pollux-bench: {key}: {e}");
                        report.notes.push(format!("{key}: failed: {e}"));
                        notes.extend(running.stats());
                        notes.extend(running.stop());
                        drop(dut_group);
                        topo.detach_xdp();
                        report.dut_notes.insert(key, notes);
                        continue;
                    }
                }
            }
            for &size in &opts.sizes {
                let path: &mut dyn TrafficPath = match &mut pvp {
                    Some(p) => p,
                    None => &mut traffic,
                };
                let entry = measure(opts, &topo, path, &dut_threads, sc.as_ref(), kind, size)?;
                progress("");
                eprintln!(
                    "[{key} {size}B] NDR {}, PDR {} ({} trials){}",
                    mpps(entry.ndr_pps),
                    mpps(entry.pdr_pps),
                    entry.trials,
                    entry
                        .latency
                        .iter()
                        .map(|p| format!(
                            "; @{:.0}% p50 {:.1} µs p99 {:.1} µs",
                            p.fraction_of_ndr * 100.0,
                            p.latency.p50_ns as f64 / 1e3,
                            p.latency.p99_ns as f64 / 1e3
                        ))
                        .collect::<String>()
                );
                for note in [&entry.ndr_search.note, &entry.pdr_search.note]
                    .into_iter()
                    .flatten()
                {
                    eprintln!("[{key} {size}B] {note}");
                }
                report.results.push(entry);
            }
            notes.extend(running.stats());
            notes.extend(running.stop());
            drop(pvp);
            drop(dut_group);
            topo.detach_xdp();
            report.dut_notes.insert(key, notes);
        }
    }
    progress("");
    if let Some(id) = traffic.sink_napi_id() {
        report.notes.push(format!(
            "SO_INCOMING_NAPI_ID of the sink's AF_XDP socket on veth: {id} (busy polling an \
             AF_XDP socket polls this NAPI instance; 0 means the kernel never marked one, and \
             busy polling does nothing)"
        ));
    }
    report.compute_ratios();
    Ok(report)
}

/// Rate and length of the trials that check a device forwards before its search.
const CHECK_PPS: f64 = 1000.0;
const CHECK_SECS: f64 = 0.2;
/// How long a device may take to forward the flow as it should (its next hop resolved,
/// its flows installed).
const CHECK_WITHIN: std::time::Duration = std::time::Duration::from_secs(20);

/// Sends short, slow trials until one gets every frame through with the scenario's
/// rewriting (source translated, tag right); returns what it took, or an error with what
/// the last trial saw if none does within [`CHECK_WITHIN`].
fn check_forwarding(traffic: &mut Traffic, sc: &dyn Scenario) -> Result<String, String> {
    let flow = sc.flow();
    let spec = TrialSpec {
        rate_pps: CHECK_PPS,
        secs: CHECK_SECS,
        frame_size: 64,
        expect_vlan: sc.egress_vlan(),
        flow: flow.clone(),
    };
    let start = std::time::Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        traffic.prime(&sc.prime_frame(), &flow.sink_addrs);
        let r = traffic.trial(&spec, |_, _| ())?;
        let through = r.sent > 0 && r.lost == 0 && r.bad_vlan == 0 && r.bad_source == 0;
        if through {
            return Ok(format!(
                "forwarding checked before the search: {} of {} frames through to the sink \
                 from {} after {attempts} trial(s) of {CHECK_SECS} s ({:.1} s); the sink \
                 answered {} ARP request(s)",
                r.received,
                r.sent,
                super::traffic::dotted(flow.expect_src_ip),
                start.elapsed().as_secs_f64(),
                r.arp_answered
            ));
        }
        if start.elapsed() > CHECK_WITHIN {
            let mut what = format!(
                "does not forward the flow as the scenario says after {attempts} trials in \
                 {:.0} s: last trial {} sent, {} received, {} lost",
                start.elapsed().as_secs_f64(),
                r.sent,
                r.received,
                r.lost
            );
            if r.bad_source > 0 {
                what.push_str(&format!(
                    ", {} with source {} instead of {} (not translated)",
                    r.bad_source,
                    r.wrong_source.as_deref().unwrap_or("?"),
                    super::traffic::dotted(flow.expect_src_ip)
                ));
            }
            if r.bad_vlan > 0 {
                what.push_str(&format!(", {} mis-tagged", r.bad_vlan));
            }
            what.push_str(&format!(
                ", {} foreign frame(s) at the sink, {} ARP request(s) answered",
                r.foreign, r.arp_answered
            ));
            return Err(what);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Searches NDR and PDR for one device and frame size, then measures latency.
fn measure(
    opts: &Options,
    topo: &Topology,
    traffic: &mut dyn TrafficPath,
    dut_threads: &[(u32, String)],
    sc: &dyn Scenario,
    kind: DutKind,
    size: u16,
) -> Result<Entry, String> {
    let label = format!("[{}/{} {size}B]", sc.name(), kind.name());
    let prime = sc.prime_frame();
    let flow = sc.flow();
    let trials: std::cell::RefCell<Vec<TrialResult>> = Default::default();
    let trial = |traffic: &mut dyn TrafficPath,
                 phase: &str,
                 rate: f64|
     -> Result<TrialResult, String> {
        if interrupted() {
            return Err(interrupted_error());
        }
        traffic.prime(&prime, &flow);
        let spec = TrialSpec {
            rate_pps: rate,
            secs: opts.trial_secs,
            frame_size: size,
            expect_vlan: sc.egress_vlan(),
            flow: flow.clone(),
        };
        let before = path_counters(topo, traffic, dut_threads);
        let n = trials.borrow().len() + 1;
        let mut r = traffic.run_trial(&spec, &mut |sent, recv| {
            progress(&format!(
                "{label} {phase} trial {n} at {:.3} Mpps: sent {sent}, received {recv}",
                rate / 1e6
            ))
        })?;
        r.path = counter_delta(&before, &path_counters(topo, traffic, dut_threads));
        let sum = |suffix: &str| -> u64 {
            r.path
                .iter()
                .filter(|(k, _)| k.starts_with("dut/") && k.ends_with(suffix))
                .map(|(_, v)| v)
                .sum()
        };
        let (waited, preempted) = (sum("/waited_ns"), sum("/preempted"));
        progress_line(&format!(
            "{label} {phase} trial {n} at {:.3} Mpps: offered {:.3}, received {:.3} Mpps, lost {}, not offered {}{}{}",
            rate / 1e6,
            r.offered_pps / 1e6,
            r.received_pps / 1e6,
            r.lost,
            r.not_offered,
            if r.generator_limited { " (generator-limited)" } else { "" },
            if preempted > 0 {
                format!("; DUT preempted {preempted}x, {:.1} ms", waited as f64 / 1e6)
            } else {
                String::new()
            }
        ), true);
        trials.borrow_mut().push(r.clone());
        Ok(r)
    };

    let found = throughput::measure(opts.search, PDR_LOSS, |phase, rate| {
        trial(traffic, phase, rate)
    })?;

    // Latency at fractions of the NDR.
    let mut latency = Vec::new();
    if let Some(ndr) = found.ndr.pps {
        for f in LATENCY_AT {
            let r = trial(traffic, &format!("latency {:.0}%", f * 100.0), ndr * f)?;
            latency.push(LatencyPoint {
                fraction_of_ndr: f,
                rate_pps: ndr * f,
                latency: r.latency,
                lost: r.lost,
            });
        }
    }
    let all_trials = trials.into_inner();
    Ok(Entry {
        scenario: sc.name().to_string(),
        dut: kind.name().to_string(),
        frame_size: size,
        ndr_pps: found.ndr.pps,
        pdr_pps: found.pdr.pps,
        pdr_loss: PDR_LOSS,
        latency,
        ratios: BTreeMap::new(),
        trials: all_trials.len() as u32,
        ndr_trial: found.ndr_trial,
        overload_trial: found.overload,
        ndr_search: found.ndr,
        pdr_search: found.pdr,
        all_trials,
    })
}

/// The counters along the path, and what other work took from the device's datapath
/// threads (`dut/<thread>/waited_ns`, `dut/<thread>/preempted`): a device that loses
/// frames at a rate far below what it forwards at overload was usually not running.
fn path_counters(
    topo: &Topology,
    traffic: &dyn TrafficPath,
    dut_threads: &[(u32, String)],
) -> BTreeMap<String, u64> {
    let mut c = topo.path_counters();
    c.extend(traffic.counters());
    for (tid, name) in dut_threads {
        if let Some((waited, preempted)) = sys::preemption(*tid) {
            c.insert(format!("dut/{name}/waited_ns"), waited);
            c.insert(format!("dut/{name}/preempted"), preempted);
        }
    }
    c
}
