//! Aggregate throughput of 1, 2, ... workers on in-process ports, each worker replaying
//! its own frames (no generator thread competes for the CPUs): a replay port hands the
//! worker a copy of one 64-byte frame per slot of every receive burst, and a sink port
//! takes every frame sent and frees it, as a mem port's far end would.
//!
//! Scenarios: `local` (each worker forwards from its replay port to its own sink: no
//! state shared, the scaling ceiling) and `handoff` (each worker's frames go to the sink
//! of the next worker, so every frame crosses a handoff ring). Usage:
//! `workers-mpps [SECONDS] [MAX_WORKERS]`; prints one line per (scenario, workers).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pollux_control::workers::pin_current_thread;
use pollux_dataplane::buf::FramePool;
use pollux_dataplane::handoff::mesh;
use pollux_dataplane::packet::{Batch, Packet};
use pollux_dataplane::port::{Port, PortId, PortStats};
use pollux_dataplane::publish::Publisher;
use pollux_dataplane::snapshot::{NetworkUid, Segment, SnapshotBuilder};
use pollux_dataplane::worker::{Worker, WorkerConfig};
use pollux_tests::frames::{frame, mac};

/// Gives the worker a copy of `frame` for every free slot of a burst.
struct Replay {
    frame: Vec<u8>,
}

impl Port for Replay {
    fn name(&self) -> &str {
        "replay"
    }

    fn rx_burst(&mut self, _queue: u16, pool: &mut FramePool, batch: &mut Batch) -> usize {
        let mut n = 0;
        while batch.remaining() > 0 {
            let Some((id, offset)) = pool.alloc_with(&self.frame) else {
                break;
            };
            let _ = batch.push(Packet::received(id, offset, self.frame.len() as u16));
            n += 1;
        }
        n
    }

    fn tx_burst(&mut self, _queue: u16, pool: &mut FramePool, pkts: &[Packet]) -> usize {
        for p in pkts {
            pool.free(p.frame);
        }
        pkts.len()
    }

    fn stats(&self) -> PortStats {
        PortStats::default()
    }
}

/// Takes every frame, reading its first byte as a far end copying it out would touch it.
struct Sink {
    touched: u64,
}

impl Port for Sink {
    fn name(&self) -> &str {
        "sink"
    }

    fn rx_burst(&mut self, _queue: u16, _pool: &mut FramePool, _batch: &mut Batch) -> usize {
        0
    }

    fn tx_burst(&mut self, _queue: u16, pool: &mut FramePool, pkts: &[Packet]) -> usize {
        for p in pkts {
            self.touched = self.touched.wrapping_add(u64::from(pool.data(p)[0]));
            pool.free(p.frame);
        }
        pkts.len()
    }

    fn stats(&self) -> PortStats {
        PortStats::default()
    }
}

const NET: NetworkUid = NetworkUid(1);

fn replay_port(w: u16) -> PortId {
    PortId(2 * w)
}

fn sink_port(w: u16) -> PortId {
    PortId(2 * w + 1)
}

fn port_mac(p: PortId) -> [u8; 6] {
    mac(p.0 as u8 + 1)
}

/// Per second, summed over the workers.
struct Rates {
    /// Frames the sinks took.
    sent: f64,
    /// Frames handed to another worker.
    handed: f64,
    /// Frames dropped because a handoff ring was full (the receiver is behind).
    handoff_drops: f64,
    /// Frames each worker sent per second of CPU time it got, summed: what the workers
    /// would move with a CPU each, however busy the machine is.
    per_cpu_second: f64,
}

/// CPU time the calling thread has used, in seconds.
fn thread_cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID needs nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Runs `workers` workers for `secs`.
fn run(workers: u16, handoff: bool, secs: f64) -> Rates {
    let mut b = SnapshotBuilder::new();
    b.network(NET, Segment::Local);
    for w in 0..workers {
        for p in [replay_port(w), sink_port(w)] {
            b.access_port(p, NET, &[port_mac(p)]);
        }
    }
    let mut publisher = Publisher::new(b.build(1).expect("valid"));
    let max_ports = usize::from(2 * workers);
    let mut ends = mesh(usize::from(workers), 2048).into_iter();
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    let mut counters = Vec::new();
    for w in 0..workers {
        let pool = FramePool::with_frames(8192).expect("pool");
        let config = WorkerConfig {
            id: w,
            ..WorkerConfig::default()
        };
        let mut worker = Worker::new(
            config,
            pool,
            publisher.cell(),
            publisher.register_worker(),
            max_ports,
        );
        if workers > 1 {
            worker.connect_workers(ends.next().expect("an end per worker"));
        }
        let to = if handoff { (w + 1) % workers } else { w };
        let frame = frame(
            port_mac(sink_port(to)),
            port_mac(replay_port(w)),
            None,
            1,
            60,
        );
        worker.attach(replay_port(w), Box::new(Replay { frame }), &[0]);
        worker.attach(sink_port(w), Box::new(Sink { touched: 0 }), &[]);
        for other in 0..workers {
            if other != w {
                worker.set_transmit_owner(sink_port(other), Some(other));
            }
        }
        counters.push(worker.counters());
        let stop = Arc::clone(&stop);
        threads.push(std::thread::spawn(move || {
            // On a machine with fewer CPUs than workers, the extra ones share.
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            let _ = pin_current_thread(usize::from(w) % cpus);
            let epoch = Instant::now();
            let cpu = thread_cpu_secs();
            worker.run(&stop, || epoch.elapsed().as_nanos() as u64);
            let cpu = thread_cpu_secs() - cpu;
            worker.counters().tx_packets.get() as f64 / cpu.max(1e-9)
        }));
    }
    // Warm up, then measure over a window.
    std::thread::sleep(Duration::from_millis(200));
    let read = || -> [u64; 3] {
        let sum = |f: &dyn Fn(&pollux_dataplane::counters::WorkerCounters) -> u64| {
            counters.iter().map(|c| f(c)).sum::<u64>()
        };
        [
            sum(&|c| c.tx_packets.get()),
            sum(&|c| c.handoffs.get()),
            sum(&|c| c.handoff_drops.get()),
        ]
    };
    let before = read();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let elapsed = start.elapsed().as_secs_f64();
    let after = read();
    stop.store(true, Ordering::Relaxed);
    let per_cpu_second = threads.into_iter().map(|t| t.join().expect("worker")).sum();
    if std::env::var_os("WORKERS_MPPS_DEBUG").is_some() {
        for c in &counters {
            eprintln!(
                "rx {} tx {} in {} drops {:?} loops {}",
                c.rx_packets.get(),
                c.tx_packets.get(),
                c.handoffs_received.get(),
                c.drop_summary(),
                c.loops.get()
            );
        }
    }
    let rate = |i: usize| (after[i] - before[i]) as f64 / elapsed;
    Rates {
        sent: rate(0),
        handed: rate(1),
        handoff_drops: rate(2),
        per_cpu_second,
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let secs: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let max: u16 = args.next().and_then(|s| s.parse().ok()).unwrap_or(2);
    for handoff in [false, true] {
        for workers in 1..=max {
            if handoff && workers == 1 {
                continue;
            }
            let r = run(workers, handoff, secs);
            println!(
                "{} workers={workers} {:.2} Mpps sent, {:.2} Mpps per CPU-second summed \
                 (handed off {:.2} Mpps, handoff drops {:.2} Mpps)",
                if handoff { "handoff" } else { "local" },
                r.sent / 1e6,
                r.per_cpu_second / 1e6,
                r.handed / 1e6,
                r.handoff_drops / 1e6
            );
        }
    }
}
