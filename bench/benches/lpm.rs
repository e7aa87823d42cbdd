//! Criterion benchmark of the IPv4 longest-prefix-match table (`pollux_dataplane::lpm`, a
//! multibit trie shaped by table size: `lpm`) against what it was chosen over
//! (`pollux_bench::lpm`): the same trie with 8-bit strides (`multibit8`) and a poptrie.
//!
//! Tables: a 10-route Neutron router, 1,000,000 BGP-like routes (fixed seed), and 1,000
//! routers of 10 routes with each lookup in a random router's table (`1000x10`). Lookups:
//! 4,194,304 uniformly random addresses (`random`) and as many inside random routes
//! (`routed`), reported per lookup (criterion's time per element); `random_batch` is
//! `Lpm::lookup_batch` over bursts of 64 addresses, as the router stage calls it. Build time is from a
//! route list to a table; for `lpm` also `compile`, building from a filled
//! `LpmBuilder` (what a snapshot compile does when the builder is kept). Memory is printed
//! before each group as `lpm memory: ...`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pollux_bench::lpm::{
    random_addrs, routed_addrs, routers, spread_lookups, table, Route, Structure, Table,
};
use pollux_dataplane::lpm::LpmBuilder;
use pollux_dataplane::packet::MAX_BURST;

/// Addresses per pass: 4M, so the table lines a pass touches do not all stay cached
/// between passes (a large table's working set is then its own, not the benchmark's).
const ADDRS: usize = 1 << 22;

const SIZES: [(usize, &str); 2] = [(10, "10"), (1_000_000, "1m")];

fn lookup(c: &mut Criterion) {
    for (n, label) in SIZES {
        let routes = table(n);
        let random = random_addrs(ADDRS, 1);
        let routed = routed_addrs(&routes, ADDRS, 2);
        let mut group = c.benchmark_group(format!("lpm_lookup_{label}"));
        group.throughput(Throughput::Elements(ADDRS as u64));
        group.warm_up_time(Duration::from_secs(1));
        group.sample_size(20);
        group.measurement_time(Duration::from_secs(5));
        for structure in Structure::ALL {
            let t = structure.build(&routes);
            println!(
                "lpm memory: {} routes, {}: {} bytes",
                routes.len(),
                structure.name(),
                t.memory_bytes()
            );
            for (kind, addrs) in [("random", &random), ("routed", &routed)] {
                group.bench_function(format!("{}/{kind}", structure.name()), |b| {
                    b.iter(|| t.lookup_all(black_box(addrs)))
                });
            }
            if let (Structure::Lpm, Table::Lpm(lpm)) = (structure, &t) {
                // As the router stage calls it: one burst of packets at a time.
                let mut out = [None; MAX_BURST];
                group.bench_function("lpm/random_batch", |b| {
                    b.iter(|| {
                        let mut sum = 0u64;
                        for burst in black_box(&random).chunks(MAX_BURST) {
                            let out = &mut out[..burst.len()];
                            lpm.lookup_batch(burst, out);
                            sum += out.iter().map(|v| v.map_or(0, u64::from)).sum::<u64>();
                        }
                        sum
                    })
                });
            }
        }
        group.finish();
    }
}

/// 1,000 routers of 10 routes, each lookup in a random router's table: the tables compete
/// for the cache as they do on a host with many routers.
fn lookup_many_routers(c: &mut Criterion) {
    let routes = routers(1000, 3);
    let queries = spread_lookups(&routes, ADDRS, 4);
    let mut group = c.benchmark_group("lpm_lookup_1000x10");
    group.throughput(Throughput::Elements(ADDRS as u64));
    group.sample_size(20);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    for structure in Structure::ALL {
        let tables: Vec<Table> = routes.iter().map(|r| structure.build(r)).collect();
        let memory: usize = tables.iter().map(Table::memory_bytes).sum();
        println!(
            "lpm memory: 1000 routers x 10 routes, {}: {memory} bytes",
            structure.name()
        );
        group.bench_function(format!("{}/routed", structure.name()), |b| {
            b.iter(|| Table::lookup_spread(&tables, black_box(&queries)))
        });
    }
    group.finish();
}

fn builder(routes: &[Route]) -> LpmBuilder {
    let mut b = LpmBuilder::new();
    for &(addr, len, value) in routes {
        b.insert(addr, len, value);
    }
    b
}

fn build(c: &mut Criterion) {
    for (n, label) in SIZES {
        let routes = table(n);
        let mut group = c.benchmark_group(format!("lpm_build_{label}"));
        group.sample_size(10);
        group.measurement_time(Duration::from_secs(if n > 10 { 15 } else { 3 }));
        for structure in Structure::ALL {
            group.bench_function(structure.name(), |b| {
                b.iter(|| structure.build(black_box(&routes)))
            });
        }
        let filled = builder(&routes);
        group.bench_function("lpm/compile", |b| b.iter(|| black_box(&filled).build()));
        group.finish();
    }
}

criterion_group!(benches, lookup, lookup_many_routers, build);
criterion_main!(benches);
