//! `polluxd`, the Pollux daemon. See `pollux_control::daemon`.

use std::process::ExitCode;

use clap::Parser;
use pollux_control::cli::polluxd::Args;
use pollux_control::daemon::{run, Options};
use pollux_control::workers::parse_cpu_list;
use pollux_drivers::xsk::BusyPoll;
use pollux_services::log::set_level;

fn main() -> ExitCode {
    let args = Args::parse();
    set_level(args.log_level);
    let mut cores = match args.cores.as_deref().map(parse_cpu_list) {
        None => Vec::new(),
        Some(Ok(cpus)) => cpus,
        Some(Err(e)) => {
            eprintln!("polluxd: --cores: {e}");
            return ExitCode::from(2);
        }
    };
    match args.workers {
        None => {}
        Some(1) if cores.is_empty() => {}
        Some(n) if n >= 1 && n <= cores.len() => cores.truncate(n),
        Some(n) => {
            eprintln!(
                "polluxd: --workers {n}: give --cores with at least {n} CPU(s), one per \
                 worker (workers are pinned, never two on one CPU)"
            );
            return ExitCode::from(2);
        }
    }
    if args.busy_poll {
        pollux_control::binding::set_busy_poll(BusyPoll {
            budget: args.busy_poll_budget,
            ..BusyPoll::default()
        });
    }
    let options = Options {
        config: args.config,
        socket: args.socket,
        state_dir: args.state_dir,
        history: args.history,
        cores,
        metrics: args.metrics,
        max_request: args.max_request,
        pool_frames: args.pool_frames,
        conn_per_port: args.conn_per_port,
        conn6_per_port: args.conn6_per_port,
        auto_rebalance_interval: (args.auto_rebalance_interval > 0)
            .then(|| std::time::Duration::from_secs(args.auto_rebalance_interval)),
        rebalance_improvement: f64::from(args.rebalance_improvement) / 100.0,
    };
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("polluxd: {e}");
            ExitCode::FAILURE
        }
    }
}
