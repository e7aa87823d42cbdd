//! Criterion benchmarks of the per-worker connection table at a realistic size: a table
//! built with the default configuration (256 Ki sessions, about 42 MiB, far beyond the
//! caches) holding 100 000 SNAT sessions, probed in a pseudo-random order so that the
//! figures include the cache misses a real mix of flows causes.
//!
//! - `lookup_hit`: a lookup that finds a session, original and reply keys alternating;
//! - `lookup_hit_cached`: the same over 256 sessions, which stay in cache;
//! - `lookup_miss`: a lookup of a key no session has;
//! - `lookup_touch`: the per-packet work on a known flow (lookup, then touch);
//! - `new_session_snat`: SNAT port allocation, insert and remove, the cost of a flow's
//!   first packet (and of its teardown) at that occupancy;
//! - `expire_per_session`: the sweep freeing 100 000 timed-out sessions, per session.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pollux_dataplane::conntrack::{ConnConfig, ConnTable, Dir, FlowKey};
use pollux_dataplane::wire::TcpFlags;

const SESSIONS: usize = 100_000;
const EXT: u32 = 0xcb00_710a; // 203.0.113.10
const UDP: u8 = 17;
const TCP: u8 = 6;

/// SplitMix64: a fixed, reproducible stream of well-mixed numbers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// A flow from a VM in 198.18.0.0/15 to a host in 203.0.113.0/24.
fn flow(rng: &mut Rng) -> FlowKey {
    let r = rng.next();
    FlowKey {
        zone: (r % 4) as u32,
        proto: if r & 0x100 == 0 { TCP } else { UDP },
        src: 0xc612_0000 | ((r >> 8) as u32 & 0x1_ffff),
        dst: 0xcb00_7100 | ((r >> 32) as u32 & 0xff),
        sport: 1024 + ((r >> 40) as u16 % 64000),
        dport: [53, 80, 443, 123][(r >> 60) as usize % 4],
    }
}

/// Allocates a port for `orig`, inserts its session; false when either fails.
fn open(t: &mut ConnTable, orig: FlowKey, owner: u32, now: u64) -> bool {
    let Some(port) = t.alloc_snat(orig.zone, orig.proto, EXT, orig.dst, orig.dport, orig.sport)
    else {
        return false;
    };
    t.insert(orig, orig.snat_reply(EXT, port), owner, 0, now)
        .is_ok()
}

/// The default table with `SESSIONS` SNAT sessions; returns it and their keys, both
/// directions of each session interleaved, in insertion order.
fn filled(rng: &mut Rng) -> (ConnTable, Vec<FlowKey>) {
    let mut t = ConnTable::new(ConnConfig::default());
    let mut keys = Vec::with_capacity(2 * SESSIONS);
    let mut owner = 0;
    while keys.len() < 2 * SESSIONS {
        let orig = flow(rng);
        owner = (owner + 1) % 64;
        if open(&mut t, orig, owner, 0) {
            let (id, _) = t.lookup(&orig, 0).expect("just inserted");
            t.touch(id, Dir::Original, TcpFlags::SYN, 60, 0);
            keys.push(orig);
            keys.push(*t.session(id).key(Dir::Reply));
        }
    }
    (t, keys)
}

fn conntrack(c: &mut Criterion) {
    let mut rng = Rng(1);
    let (mut t, keys) = filled(&mut rng);
    let now = 1;
    let misses: Vec<FlowKey> = (0..keys.len())
        .map(|_| FlowKey {
            zone: 7, // no session is in zone 7
            ..flow(&mut rng)
        })
        .collect();

    let mut group = c.benchmark_group("conntrack");
    group.throughput(Throughput::Elements(1));

    let mut i = 0;
    group.bench_function("lookup_hit", |b| {
        b.iter(|| {
            // A stride coprime to the key count walks all keys in a cache-hostile order.
            i = (i + 7919) % keys.len();
            black_box(t.lookup(black_box(&keys[i]), now))
        })
    });

    // The same with 256 flows, all in cache: the cost of the code rather than of memory
    // (a burst usually carries several packets of one flow).
    let mut i = 0;
    group.bench_function("lookup_hit_cached", |b| {
        b.iter(|| {
            i = (i + 1) % 256;
            black_box(t.lookup(black_box(&keys[i]), now))
        })
    });

    let mut i = 0;
    group.bench_function("lookup_miss", |b| {
        b.iter(|| {
            i = (i + 7919) % misses.len();
            black_box(t.lookup(black_box(&misses[i]), now))
        })
    });

    let mut i = 0;
    group.bench_function("lookup_touch", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            if let Some((id, dir)) = t.lookup(black_box(&keys[i]), now) {
                t.touch(id, dir, TcpFlags::ACK, 1500, now);
            }
        })
    });

    let fresh: Vec<FlowKey> = (0..4096).map(|_| flow(&mut rng)).collect();
    let mut i = 0;
    group.bench_function("new_session_snat", |b| {
        b.iter(|| {
            i = (i + 1) % fresh.len();
            let orig = fresh[i];
            let port = t.alloc_snat(orig.zone, orig.proto, EXT, orig.dst, orig.dport, orig.sport);
            if let Some(port) = port {
                if let Ok(id) = t.insert(orig, orig.snat_reply(EXT, port), 99, 0, now) {
                    t.remove(black_box(id));
                }
            }
        })
    });
    assert_eq!(
        t.len(),
        SESSIONS,
        "the benchmarks left the table as they found it"
    );

    group.throughput(Throughput::Elements(SESSIONS as u64));
    // Each sample refills the table, untimed: keep the wall time reasonable.
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    let mut t = ConnTable::new(ConnConfig::default());
    let mut now = 0u64;
    group.bench_function("expire_per_session", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let mut n = 0;
                let mut owner = 0;
                while n < SESSIONS {
                    owner = (owner + 1) % 64;
                    n += usize::from(open(&mut t, flow(&mut rng), owner, now));
                }
                // Every one is a UDP or TCP flow without a reply: gone after 120 s.
                now += 200;
                let start = Instant::now();
                let freed = t.expire(now, usize::MAX);
                spent += start.elapsed();
                assert_eq!(freed, SESSIONS);
            }
            spent
        })
    });
    group.finish();
}

criterion_group!(benches, conntrack);
criterion_main!(benches);
