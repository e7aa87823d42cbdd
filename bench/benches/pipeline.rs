//! Criterion benchmark of one worker pass per scenario: 64 frames of 64 bytes (60 without
//! FCS) through receive copy-in, classify, L2, output and transmit copy-out on mem ports.
//! Throughput is reported in elements (frames received) per second; only the pass is
//! timed, not offering the frames or emptying the output rings.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pollux_bench::{Bench, Scenario, BURST};

fn pipeline(c: &mut Criterion) {
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(BURST as u64));
    for scenario in Scenario::ALL {
        let mut bench = Bench::new(scenario);
        group.bench_function(scenario.name(), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    bench.drain();
                    bench.offer();
                    let start = Instant::now();
                    black_box(bench.poll());
                    spent += start.elapsed();
                }
                spent
            })
        });
        bench.drain();
    }
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
