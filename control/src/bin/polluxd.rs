//! `polluxd`, the Pollux daemon. See `pollux_control::daemon`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use pollux_control::daemon::{run, Options, DEFAULT_SOCKET, DEFAULT_STATE_DIR};
use pollux_control::engine::DEFAULT_POOL_FRAMES;
use pollux_control::store::DEFAULT_HISTORY;
use pollux_control::workers::parse_cpu_list;
use pollux_drivers::xsk::BusyPoll;
use pollux_services::log::{set_level, Level};

/// The Pollux userspace virtual switch and router.
#[derive(Debug, Parser)]
#[command(name = "polluxd", version)]
struct Args {
    /// Desired state (TOML) to start with. Without it, polluxd restarts into the last
    /// generation persisted in the state directory (or an empty configuration).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Control socket (JSON-RPC 2.0, one object per line; mode 0660).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Where applied generations are persisted.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Generations kept for rollback.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_HISTORY)]
    history: usize,
    /// Workers: the first N CPUs of --cores (default: one per CPU of --cores).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// CPUs for the workers (e.g. `1` or `0,1` or `2-3`): one worker pinned to each.
    /// Default: one worker on the last CPU.
    #[arg(long, value_name = "LIST")]
    cores: Option<String>,
    /// Serve Prometheus metrics on ADDR (e.g. `127.0.0.1:9477`) at /metrics.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Longest request line accepted on the control socket, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20)]
    max_request: usize,
    /// How much to log on stderr: error, warn, info or debug.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log_level: Level,
    /// Frames (2 KiB each) in the worker's pool; each AF_XDP queue needs 3072.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_POOL_FRAMES)]
    pool_frames: u32,
    /// Connections one port may hold in the worker's connection table (its NAT sessions
    /// and security-group connections together); default 1/8 of the table.
    #[arg(long, value_name = "N")]
    conn_per_port: Option<usize>,
    /// IPv6 connections one port may hold in the worker's IPv6 connection table (its
    /// security-group connections of IPv6 flows), apart from --conn-per-port: a port
    /// filling one family's share still opens connections of the other. Default: the
    /// same share of that table as --conn-per-port of the IPv4 one.
    #[arg(long, value_name = "N")]
    conn6_per_port: Option<usize>,
    /// Preferred busy polling on every AF_XDP socket (SO_PREFER_BUSY_POLL): the worker's
    /// receive bursts run the interfaces' receive work (XDP, the copy into the pool) on
    /// its own CPU. Set `napi_defer_hard_irqs` and `gro_flush_timeout` on the interfaces.
    #[arg(long)]
    busy_poll: bool,
    /// Frames one busy poll may process (SO_BUSY_POLL_BUDGET), with --busy-poll.
    #[arg(long, value_name = "N", default_value_t = 64)]
    busy_poll_budget: u16,
}

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
    };
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("polluxd: {e}");
            ExitCode::FAILURE
        }
    }
}
