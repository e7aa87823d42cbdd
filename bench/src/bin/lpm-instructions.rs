//! Builds one LPM table and looks up a batch of random and of routed addresses, for
//! `bench/lpm-instructions.sh` to count instructions per lookup under callgrind.
//! Usage: `lpm-instructions STRUCTURE ROUTES LOOKUPS` (ROUTES 10 is the Neutron router
//! table, any other number a BGP-like table; the same tables as `benches/lpm.rs`).

use std::hint::black_box;

use pollux_bench::lpm::{random_addrs, routed_addrs, table, Structure};

fn usage() -> ! {
    let names: Vec<_> = Structure::ALL.iter().map(|s| s.name()).collect();
    eprintln!(
        "usage: lpm-instructions STRUCTURE ROUTES LOOKUPS\n  STRUCTURE: {}",
        names.join(" | ")
    );
    std::process::exit(2);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let structure = args
        .next()
        .and_then(|s| Structure::from_name(&s))
        .unwrap_or_else(|| usage());
    let mut number = || -> usize {
        args.next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| usage())
    };
    let (routes, lookups) = (number(), number());
    let routes = table(routes);
    let t = structure.build(&routes);
    let random = random_addrs(lookups, 1);
    let routed = routed_addrs(&routes, lookups, 2);
    // The counted calls: the script collects inside `Table::lookup_all` only and dumps a
    // profile part after each call, the first for random addresses, the second for routed.
    black_box(t.lookup_all(black_box(&random)));
    black_box(t.lookup_all(black_box(&routed)));
    println!("{}", t.memory_bytes());
}
