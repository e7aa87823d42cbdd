//! `pollux-bench`: benchmark runners. `pollux-bench compare` measures Pollux, a bare
//! forwarder on Pollux's AF_XDP driver (`pollux-bench xsk-fwd`), Open vSwitch (afxdp), the
//! Linux bridge and an XDP redirect side by side on veth (RFC 2544 NDR, PDR and latency).
//! Needs root. See bench/README.md, "Benchmark harness".

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pollux_bench::compare::dut::DutKind;
use pollux_bench::compare::frame::RFC2544_SIZES;
use pollux_bench::compare::placement::Cpus;
use pollux_bench::compare::run::{run_all, Options};
use pollux_bench::compare::scenario;
use pollux_bench::compare::search::SearchConfig;
use pollux_bench::compare::sys::{self, install_signal_handlers};
use pollux_bench::compare::xsk_fwd;

#[derive(Debug, Parser)]
#[command(name = "pollux-bench", version, about = "Pollux benchmark runners")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// RFC 2544 throughput (NDR, PDR) and latency, every device in one run on one veth
    /// topology: generator ↔ veth ↔ device under test ↔ veth ↔ sink.
    Compare(CompareArgs),
    /// The `xsk-fwd` device under test, which `compare` starts in the DUT's namespace: a
    /// bare forwarder on Pollux's AF_XDP driver, rx on INGRESS to tx on EGRESS, one thread
    /// pinned to CPU, until SIGINT or SIGTERM.
    XskFwd(XskFwdArgs),
}

#[derive(Debug, clap::Args)]
struct XskFwdArgs {
    /// Interface to receive on.
    #[arg(long, value_name = "IF")]
    ingress: String,
    /// Interface to transmit on.
    #[arg(long, value_name = "IF")]
    egress: String,
    /// CPU of the forwarding thread.
    #[arg(long, value_name = "CPU")]
    cpu: usize,
    /// Push this 802.1Q VLAN tag (1..=4094) on every frame.
    #[arg(long, value_name = "VID", value_parser = clap::value_parser!(u16).range(1..=4094))]
    push_vlan: Option<u16>,
}

#[derive(Debug, clap::Args)]
struct CompareArgs {
    /// Short trials (2 s each, 2% resolution) instead of the RFC's 60 s.
    #[arg(long)]
    quick: bool,
    /// Seconds per trial (default 60, or 2 with --quick).
    #[arg(long, value_name = "SECS")]
    trial_secs: Option<f64>,
    /// Frame sizes with FCS, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = RFC2544_SIZES.to_vec())]
    sizes: Vec<u16>,
    /// Devices under test: pollux, pollux-busy-poll, xsk-fwd, ovs-afxdp, linux-bridge,
    /// xdp-redirect; for vhost-user scenarios (pvp) also ovs-dpdk, testpmd-vhost; for the
    /// routed ones (routed, snat) also linux-router, ovn.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "pollux,pollux-busy-poll,xsk-fwd,ovs-afxdp,linux-bridge,xdp-redirect"
    )]
    duts: Vec<String>,
    /// Scenarios: l2-p2p, l2-vlan-push, sg-udp; not in the default: pvp (vhost-user),
    /// routed and snat (through a router; with --duts pollux,linux-router,ovn).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "l2-p2p,l2-vlan-push,sg-udp"
    )]
    scenarios: Vec<String>,
    /// Highest offered rate tried, frames per second (the first trial of each search).
    #[arg(long, value_name = "PPS", default_value_t = 2_000_000.0)]
    max_rate: f64,
    /// Search resolution, relative (default 0.01, or 0.02 with --quick).
    #[arg(long, value_name = "FRACTION")]
    resolution: Option<f64>,
    /// Most trials per search.
    #[arg(long, value_name = "N", default_value_t = 14)]
    max_trials: u32,
    /// CPU of the generator and sink.
    #[arg(long, value_name = "CPU", default_value_t = 0)]
    gen_cpu: usize,
    /// CPU of the device under test.
    #[arg(long, value_name = "CPU", default_value_t = 1)]
    dut_cpu: usize,
    /// Where the ingress veth's receive work runs: `dut` (threaded NAPI pinned to the
    /// DUT's CPU, RPS) or `sender` (the kernel's default: the generator's CPU).
    #[arg(long, value_name = "WHERE", default_value = "dut", value_parser = ["dut", "sender"])]
    ingress_rx: String,
    /// Raise priorities over other work on the machine: NAPI threads and ksoftirqd of the
    /// DUT's CPU SCHED_FIFO, the generator and the DUT's datapath threads (polluxd's
    /// worker, OVS's PMD) nice -20 (`--realtime false`: leave every priority alone).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    realtime: bool,
    /// SO_BUSY_POLL_BUDGET for pollux-busy-poll.
    #[arg(long, value_name = "N", default_value_t = 64)]
    busy_poll_budget: u16,
    /// polluxd binary (default: beside this one).
    #[arg(long, value_name = "PATH")]
    polluxd: Option<PathBuf>,
    /// Write the JSON results here.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Write the SVG chart here (default: the --out file with .svg).
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// Write the Markdown tables here (they are printed either way).
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Compare(args) => compare(args),
        Cmd::XskFwd(args) => xsk_fwd(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pollux-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn xsk_fwd(args: XskFwdArgs) -> Result<(), String> {
    install_signal_handlers();
    let opts = xsk_fwd::Options {
        ingress: args.ingress,
        egress: args.egress,
        cpu: args.cpu,
        push_vlan: args.push_vlan,
    };
    let stats = xsk_fwd::run(&opts, |ports| {
        for p in ports {
            eprintln!("xsk-fwd: {p}");
        }
        eprintln!(
            "xsk-fwd: ready: {} -> {}{}, thread {} on CPU {}",
            opts.ingress,
            opts.egress,
            opts.push_vlan
                .map_or(String::new(), |v| format!(", pushing VLAN {v}")),
            xsk_fwd::THREAD_NAME,
            opts.cpu
        );
    })?;
    eprintln!(
        "xsk-fwd: stopped: received {}, forwarded {}, tx ring full {}, too short to tag {}, \
         received on egress (dropped) {}, loops {} ({} busy)",
        stats.received,
        stats.forwarded,
        stats.tx_ring_full,
        stats.too_short,
        stats.reverse_dropped,
        stats.loops,
        stats.busy_loops
    );
    for line in &stats.ports {
        eprintln!("xsk-fwd:   {line}");
    }
    Ok(())
}

fn compare(args: CompareArgs) -> Result<(), String> {
    if !rustix::process::geteuid().is_root() {
        return Err("compare needs root (network namespaces, XDP, AF_XDP)".into());
    }
    let mut scenarios = Vec::new();
    for name in &args.scenarios {
        scenarios.push(scenario::by_name(name).ok_or_else(|| {
            let names: Vec<&str> = scenario::all().iter().map(|s| s.name()).collect();
            format!("unknown scenario {name:?} (known: {})", names.join(", "))
        })?);
    }
    let duts = args
        .duts
        .iter()
        .map(|d| DutKind::from_name(d).ok_or_else(|| format!("unknown device {d:?}")))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(bad) = args.sizes.iter().find(|s| !(64..=1518).contains(*s)) {
        return Err(format!("frame size {bad} outside 64..=1518"));
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if args.gen_cpu >= cpus || args.dut_cpu >= cpus || args.gen_cpu == args.dut_cpu {
        return Err(format!(
            "--gen-cpu {} and --dut-cpu {} must be different CPUs below {cpus}",
            args.gen_cpu, args.dut_cpu
        ));
    }
    let polluxd = match args.polluxd {
        Some(p) => p,
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("polluxd"),
    };
    if duts.iter().any(|d| d.is_pollux()) && !polluxd.exists() {
        return Err(format!(
            "{} not found: cargo build --release -p pollux-control --bin polluxd (or --polluxd PATH)",
            polluxd.display()
        ));
    }
    let trial_secs = args
        .trial_secs
        .unwrap_or(if args.quick { 2.0 } else { 60.0 });
    if !(0.1..=3600.0).contains(&trial_secs) {
        return Err("--trial-secs must be between 0.1 and 3600".into());
    }
    let resolution = args
        .resolution
        .unwrap_or(if args.quick { 0.02 } else { 0.01 });
    let opts = Options {
        scenarios,
        duts,
        sizes: args.sizes,
        trial_secs,
        search: SearchConfig {
            max_pps: args.max_rate,
            resolution,
            max_trials: args.max_trials,
            ..SearchConfig::default()
        },
        cpus: Cpus {
            gen: args.gen_cpu,
            dut: args.dut_cpu,
            ingress_on_dut: args.ingress_rx == "dut",
            realtime: args.realtime,
        },
        polluxd,
        busy_poll_budget: args.busy_poll_budget,
    };
    sys::ensure_packages(&sys::HARNESS_PACKAGES)?;
    install_signal_handlers();
    let mut report = run_all(&opts)?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    report.notes.push(format!(
        "load average at the end: {} (other work on this machine disturbs the figures; compare ratios from one run)",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    ));
    let md = report.to_markdown();
    println!("{md}");
    for n in &report.notes {
        println!("note: {n}");
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, &md).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &args.out {
        std::fs::write(path, report.to_json()).map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    let svg = args
        .svg
        .or_else(|| args.out.as_ref().map(|p| p.with_extension("svg")));
    if let Some(path) = svg {
        report.write_svg(&path)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
