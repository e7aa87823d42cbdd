//! `polluxd`, the Pollux daemon. See `pollux_control::daemon`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use pollux_control::daemon::{run, Options};
use pollux_control::workers::parse_cpu_list;

/// The Pollux userspace virtual switch and router.
#[derive(Debug, Parser)]
#[command(name = "polluxd", version)]
struct Args {
    /// Desired state (TOML).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// CPUs for the workers (e.g. `1` or `2-3`); one worker runs on the first. Default:
    /// the last CPU.
    #[arg(long, value_name = "LIST")]
    cores: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let core = match args.cores.as_deref().map(parse_cpu_list) {
        None => None,
        Some(Ok(cpus)) => cpus.first().copied(),
        Some(Err(e)) => {
            eprintln!("polluxd: --cores: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&Options {
        config: args.config,
        core,
    }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("polluxd: {e}");
            ExitCode::FAILURE
        }
    }
}
