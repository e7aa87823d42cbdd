//! Busy share per receive queue before and after a rebalance on an imbalanced load: the
//! engine of `polluxd` with two workers and four `mem` ports (round-robin: vm1 and vm3 on
//! worker 0, vm2 and vm4 on worker 1); a generator thread keeps vm1 and vm3 sending to
//! vm2 as fast as their rings take frames, so worker 0 polls both busy queues. After
//! SECONDS the queues' loads are printed, `workers.rebalance` runs, and after SECONDS
//! more they are printed again.
//!
//! `cargo build --release -p pollux-bench --bin workers-rebalance &&
//! target/release/workers-rebalance [SECONDS]`

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pollux_control::binding::MemWires;
use pollux_control::engine::{Engine, EngineConfig, Initial};
use pollux_control::model::DesiredState;
use pollux_control::rpc::dispatch_line;
use pollux_control::service::Service;
use pollux_drivers::mem::MemWire;
use serde_json::{json, Value};

const PORTS: usize = 4;

fn state() -> DesiredState {
    let mut toml = String::from("[[networks]]\nid = \"net-a\"\nnetwork_type = \"local\"\n");
    for i in 1..=PORTS {
        toml.push_str(&format!(
            "[[ports]]\nid = \"vm{i}\"\nnetwork_id = \"net-a\"\n\
             mac_address = \"fa:16:3e:00:00:{i:02x}\"\nport_security_enabled = false\n\
             binding = {{ driver = \"mem\" }}\n"
        ));
    }
    DesiredState::from_toml_str(&toml).expect("the state parses")
}

fn frame(dst: usize, src: usize) -> Vec<u8> {
    let mut f = vec![
        0xfa, 0x16, 0x3e, 0, 0, dst as u8, 0xfa, 0x16, 0x3e, 0, 0, src as u8,
    ];
    f.extend_from_slice(&[0x88, 0xb5]);
    f.resize(60, 0);
    f
}

fn call(service: &mut Service, method: &str, params: Value) -> Value {
    let line = json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params });
    let reply = dispatch_line(service, line.to_string().as_bytes()).expect("a reply");
    let reply: Value = serde_json::from_slice(&reply).expect("JSON");
    assert!(reply["error"].is_null(), "{method}: {reply}");
    reply["result"].clone()
}

/// Runs the load for `secs`, sampling the queues as polluxd's timer does.
fn run_for(service: &mut Service, secs: f64) {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < until {
        service.engine.supervise_workers();
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn print_queues(service: &mut Service, title: &str) {
    let list = call(service, "workers.list", json!({}));
    println!("{title}");
    println!("WORKER  QUEUES_BUSY%  PORT  QUEUE  BUSY%  PKTS/S     CYCLES/PKT");
    for w in list["workers"].as_array().expect("workers") {
        let queues = w["queues"].as_array().expect("queues");
        // The worker's share over the same window as its queues': their sum.
        let sum: f64 = queues
            .iter()
            .filter_map(|q| q["busy_percent"].as_f64())
            .sum();
        for q in queues {
            println!(
                "{:>6}  {:>12.1}  {:<4}  {:>5}  {:>5}  {:>9}  {:>10}",
                w["id"],
                sum,
                q["port"].as_str().unwrap_or("?"),
                q["queue"],
                q["busy_percent"],
                q["packets_per_sec"],
                q["cycles_per_packet"]
            );
        }
    }
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3.0);
    let dir = std::env::temp_dir().join(format!("pollux-rebalance-{}", std::process::id()));
    let store = pollux_control::store::Store::open(&dir, 4).expect("store");
    let wires = MemWires::default();
    let engine = Engine::start(
        &EngineConfig {
            cores: vec![None; 2],
            pool_frames: 16384,
            ..Default::default()
        },
        Initial {
            state: state(),
            generation: 1,
            persist: true,
        },
        Some(store),
        Arc::clone(&wires),
    )
    .expect("the engine starts");
    let mut ends: Vec<MemWire> = (1..=PORTS)
        .map(|i| {
            wires
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&format!("port:vm{i}"))
                .expect("wire")
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let generator = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let (f1, f3) = (frame(2, 1), frame(2, 3));
            while !stop.load(Ordering::Relaxed) {
                ends[0].send_repeated(&f1, 256);
                ends[2].send_repeated(&f3, 256);
                while ends[1].recv().is_some() {}
            }
        })
    };
    let mut service = Service::new(engine);
    run_for(&mut service, secs);
    print_queues(&mut service, "before the rebalance:");
    let r = call(&mut service, "workers.rebalance", json!({}));
    println!(
        "\nworkers.rebalance: applied {}, {} queue(s) moved {}, variance {:.1}% lower\n",
        r["applied"],
        r["moves"].as_array().map_or(0, Vec::len),
        r["moves"],
        r["improvement_percent"].as_f64().unwrap_or(0.0)
    );
    run_for(&mut service, secs);
    print_queues(&mut service, "after the rebalance:");
    stop.store(true, Ordering::Relaxed);
    generator.join().expect("the generator");
    service.engine.shutdown().expect("clean shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}
