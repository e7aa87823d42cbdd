//! What one object change costs the control thread on a large state, measured in the
//! process (no socket, no client): `bench/apply-latency.sh --method put` measures the same
//! changes over the socket, whose wall-clock figures depend on what else the machine runs;
//! the CPU time of the thread that makes the change does not.
//!
//! `cargo bench -p pollux-bench --bench put_cost`: a state of 10,000 `mem` ports on 1,000
//! VLAN networks (one /25 subnet each) and 1,000 routers (router i on subnet i); 400
//! one-port changes through `Engine::patch_raw` as `ports.put`/`ports.delete` make them (a
//! port's fixed IP, its MAC, a removal, an addition, in turn), persisted to a state
//! directory (fsync); per change the wall time and the thread's CPU time, p50/p99/max.
//! With `PUT_COST_PHASES=1` in the environment the engine logs each change's steps on
//! stderr. Run without `--bench` (`cargo bench -- --test`, as CI does, or `cargo test
//! --benches`) it makes 20 changes on a tenth of the state: a check that it runs.

use pollux_testkit::TempDir;
use std::net::Ipv4Addr;
use std::time::Instant;

use pollux_control::binding::MemWires;
use pollux_control::engine::{ApplyOptions, Engine, EngineConfig, Initial};
use pollux_control::model::DesiredState;
use pollux_control::patch::{Collection, RawChange};
use pollux_control::store::Store;
use serde_json::{json, Value};

/// The size of the state and the number of changes made to it.
#[derive(Clone, Copy)]
struct Scale {
    networks: usize,
    ports: usize,
    changes: usize,
}

const FULL: Scale = Scale {
    networks: 1000,
    ports: 10_000,
    changes: 400,
};

/// A run that only shows the measurement still works.
const QUICK: Scale = Scale {
    networks: 100,
    ports: 1000,
    changes: 20,
};

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for clock_gettime to write.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn subnet_base(n: usize) -> u32 {
    u32::from(Ipv4Addr::new(198, 18, 0, 0)) + n as u32 * 128
}

fn port(scale: Scale, k: usize, host: u32, mac: u32) -> Value {
    let n = k % scale.networks;
    json!({
        "id": format!("port-{k:05}"),
        "network_id": format!("net-{n:05}"),
        "mac_address": format!("fa:16:3e:{:02x}:{:02x}:{:02x}", mac >> 16, (mac >> 8) & 0xff, mac & 0xff),
        "fixed_ips": [{"subnet_id": format!("subnet-{n:05}"),
                       "ip_address": Ipv4Addr::from(subnet_base(n) + host).to_string()}],
        "binding": {"driver": "mem"},
    })
}

fn state(scale: Scale) -> DesiredState {
    let Scale {
        networks, ports, ..
    } = scale;
    let networks: Vec<Value> = (0..networks)
        .map(|n| {
            json!({"id": format!("net-{n:05}"), "network_type": "vlan",
                   "physical_network": "physnet1", "segmentation_id": n + 1})
        })
        .collect();
    let subnets: Vec<Value> = (0..scale.networks)
        .map(|n| {
            json!({"id": format!("subnet-{n:05}"), "network_id": format!("net-{n:05}"),
                   "cidr": format!("{}/25", Ipv4Addr::from(subnet_base(n))),
                   "gateway_ip": Ipv4Addr::from(subnet_base(n) + 1).to_string()})
        })
        .collect();
    let ports: Vec<Value> = (0..ports)
        .map(|k| port(scale, k, 2 + (k / scale.networks) as u32, k as u32 + 1))
        .collect();
    let routers: Vec<Value> = (0..scale.networks)
        .map(|n| json!({"id": format!("router-{n:05}"), "interfaces": [format!("subnet-{n:05}")]}))
        .collect();
    let doc = json!({
        "uplinks": [{"name": "uplink0", "physnet": "physnet1", "binding": {"driver": "mem"}}],
        "networks": networks, "subnets": subnets, "ports": ports, "routers": routers,
    });
    serde_json::from_value(doc).expect("the generated state reads")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let measuring = args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test");
    let scale = if measuring { FULL } else { QUICK };
    let Scale {
        networks,
        ports,
        changes,
    } = scale;
    let dir = TempDir::new();
    let config = EngineConfig {
        pool_frames: 1 << 20,
        ..EngineConfig::default()
    };
    let store = Store::open(&dir.join("state"), 8).expect("store");
    let initial = Initial {
        state: state(scale),
        generation: 1,
        persist: true,
    };
    if std::env::var_os("PUT_COST_PHASES").is_some() {
        // Each generation's steps on stderr (`generation N: validate .. ms, ...`).
        pollux_services::log::set_level(pollux_services::log::Level::Debug);
    }
    let mut engine =
        Engine::start(&config, initial, Some(store), MemWires::default()).expect("engine starts");
    let mut wall = Vec::new();
    let mut cpu = Vec::new();
    let mut next_added = ports;
    let started = Instant::now();
    for i in 0..changes {
        let k = (i * 37) % (ports / 2);
        let change = match i % 4 {
            0 => RawChange::Put {
                collection: Collection::Ports,
                object: port(scale, k, 100 + (i % 8) as u32, k as u32 + 1),
            },
            1 => RawChange::Put {
                collection: Collection::Ports,
                object: port(scale, k, 2 + (k / networks) as u32, 0x80_0000 + i as u32),
            },
            2 => RawChange::Delete {
                collection: Collection::Ports,
                id: format!("port-{:05}", ports / 2 + i),
            },
            _ => {
                next_added += 1;
                let mut p = port(
                    scale,
                    ports / 2 + i - 1,
                    110 + (i % 8) as u32,
                    0x90_0000 + i as u32,
                );
                p["id"] = json!(format!("port-new-{next_added}"));
                RawChange::Put {
                    collection: Collection::Ports,
                    object: p,
                }
            }
        };
        let (t0, c0) = (Instant::now(), thread_cpu_ns());
        let outcome = engine
            .patch_raw(vec![change], ApplyOptions::default())
            .unwrap_or_else(|e| panic!("change {i}: {e}"));
        cpu.push((thread_cpu_ns() - c0) as f64 / 1e6);
        wall.push(t0.elapsed().as_secs_f64() * 1e3);
        assert!(outcome.applied, "change {i} applied");
    }
    let total = started.elapsed().as_secs_f64();
    let patched = engine.patched_generations();
    wall.sort_by(f64::total_cmp);
    cpu.sort_by(f64::total_cmp);
    println!(
        "put_cost: {changes} one-port changes on {ports} ports: wall p50 {:.2} ms, p99 {:.2} ms, \
         max {:.2} ms; control-thread CPU p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; \
         {:.0} changes/s; {patched} compiled as a patch of the running snapshot",
        percentile(&wall, 50.0),
        percentile(&wall, 99.0),
        wall[wall.len() - 1],
        percentile(&cpu, 50.0),
        percentile(&cpu, 99.0),
        cpu[cpu.len() - 1],
        changes as f64 / total
    );
}
