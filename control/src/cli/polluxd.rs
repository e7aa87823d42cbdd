//! `polluxd`'s command line, apart from the daemon so that the package build can render
//! its manual page and shell completions from it (`pollux-packaging`).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use pollux_services::log::Level;

use crate::daemon::{DEFAULT_SOCKET, DEFAULT_STATE_DIR};
use crate::engine::DEFAULT_POOL_FRAMES;
use crate::store::DEFAULT_HISTORY;

/// The Pollux userspace virtual switch and router.
#[derive(Debug, Parser)]
#[command(name = "polluxd", version)]
pub struct Args {
    /// Desired state (TOML) to start with. Without it, polluxd restarts into the last
    /// generation persisted in the state directory (or an empty configuration).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Control socket (JSON-RPC 2.0, one object per line; mode 0660).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Where applied generations are persisted.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Generations kept for rollback.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_HISTORY)]
    pub history: usize,
    /// Workers: the first N CPUs of --cores (default: one per CPU of --cores).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// CPUs for the workers (e.g. `1` or `0,1` or `2-3`): one worker pinned to each.
    /// Default: one worker on the last CPU.
    #[arg(long, value_name = "LIST")]
    pub cores: Option<String>,
    /// Serve Prometheus metrics on ADDR (e.g. `127.0.0.1:9477`) at /metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Longest request line accepted on the control socket, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20)]
    pub max_request: usize,
    /// How much to log on stderr: error, warn, info or debug.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: Level,
    /// Frames (2 KiB each) in the worker's pool; each AF_XDP queue needs 3072.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_POOL_FRAMES)]
    pub pool_frames: u32,
    /// Connections one port may hold in the worker's connection table (its NAT sessions
    /// and security-group connections together); default 1/8 of the table.
    #[arg(long, value_name = "N")]
    pub conn_per_port: Option<usize>,
    /// IPv6 connections one port may hold in the worker's IPv6 connection table (its
    /// security-group connections of IPv6 flows), apart from --conn-per-port: a port
    /// filling one family's share still opens connections of the other. Default: the
    /// same share of that table as --conn-per-port of the IPv4 one.
    #[arg(long, value_name = "N")]
    pub conn6_per_port: Option<usize>,
    /// Rebalance the receive queues by measured load every SECS seconds (0: never, the
    /// default; `polluxctl rebalance` does it on demand): queues move when two checks in a
    /// row find a plan lowering the variance of the workers' loads by
    /// --rebalance-improvement. Only mem and vhost-user queues move.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub auto_rebalance_interval: u64,
    /// The share (percent) by which a rebalance must lower the variance of the workers'
    /// loads to move queues.
    #[arg(long, value_name = "PERCENT", default_value_t = 25,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    pub rebalance_improvement: u8,
    /// Preferred busy polling on every AF_XDP socket (SO_PREFER_BUSY_POLL): the worker's
    /// receive bursts run the interfaces' receive work (XDP, the copy into the pool) on
    /// its own CPU. Set `napi_defer_hard_irqs` and `gro_flush_timeout` on the interfaces.
    #[arg(long)]
    pub busy_poll: bool,
    /// Frames one busy poll may process (SO_BUSY_POLL_BUDGET), with --busy-poll.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub busy_poll_budget: u16,
}
