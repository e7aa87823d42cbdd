//! Runs a pipeline scenario for a given number of rounds, for `bench/instructions.sh`
//! to count instructions under callgrind. Usage: `pipeline-instructions SCENARIO ROUNDS`.

use pollux_bench::{Bench, Scenario};

fn usage() -> ! {
    let names: Vec<_> = Scenario::ALL.iter().map(|s| s.name()).collect();
    eprintln!(
        "usage: pipeline-instructions SCENARIO ROUNDS\n  SCENARIO: {}",
        names.join(" | ")
    );
    std::process::exit(2);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let scenario = args
        .next()
        .and_then(|s| Scenario::from_name(&s))
        .unwrap_or_else(|| usage());
    let rounds: usize = args
        .next()
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| usage());
    let mut bench = Bench::new(scenario);
    for _ in 0..rounds {
        bench.round();
    }
}
