//! Receive queues moved between workers while frames flow, on `mem` ports with 2 and 4
//! worker threads: by hand (`workers.pin`), by measured load (`workers.rebalance`), with
//! no frame lost or reordered within a flow, every frame accounted for once summed over
//! the workers, and the per-queue load shown by `workers.list`.

use pollux_testkit::TempDir;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pollux_control::binding::MemWires;
use pollux_control::engine::{AutoRebalance, Engine, EngineConfig, Initial};
use pollux_control::model::DesiredState;
use pollux_control::rpc::dispatch_line;
use pollux_control::service::Service;
use pollux_drivers::mem::MemWire;
use serde_json::{json, Value};

const PORTS: usize = 4;
/// Frames in flight at most, below a handoff ring's depth (see tests/tests/workers.rs).
const WINDOW: u64 = 512;

fn port_mac(i: usize) -> [u8; 6] {
    [0xfa, 0x16, 0x3e, 0, 0, i as u8 + 1]
}

fn state() -> DesiredState {
    let mut toml = String::from(
        r#"
        [[networks]]
        id = "net-a"
        network_type = "local"
        "#,
    );
    for i in 0..PORTS {
        toml.push_str(&format!(
            r#"
            [[ports]]
            id = "vm{}"
            network_id = "net-a"
            mac_address = "fa:16:3e:00:00:{:02x}"
            port_security_enabled = false
            binding = {{ driver = "mem" }}
            "#,
            i + 1,
            i + 1,
        ));
    }
    DesiredState::from_toml_str(&toml).expect("test state parses")
}

fn start(dir: &TempDir, workers: usize, wires: &MemWires) -> Engine {
    start_with(dir, workers, wires, AutoRebalance::default())
}

fn start_with(dir: &TempDir, workers: usize, wires: &MemWires, auto: AutoRebalance) -> Engine {
    start_as(dir, workers, wires, auto, true)
}

/// As [`start`], again in `dir` (the state is committed already).
fn restart(dir: &TempDir, workers: usize) -> Engine {
    start_as(
        dir,
        workers,
        &MemWires::default(),
        AutoRebalance::default(),
        false,
    )
}

fn start_as(
    dir: &TempDir,
    workers: usize,
    wires: &MemWires,
    auto: AutoRebalance,
    persist: bool,
) -> Engine {
    let store = pollux_control::store::Store::open(&dir.join("state"), 8).expect("store");
    Engine::start(
        &EngineConfig {
            cores: vec![None; workers],
            pool_frames: 16384,
            rebalance: auto,
            ..Default::default()
        },
        Initial {
            state: state(),
            generation: 1,
            persist,
        },
        Some(store),
        Arc::clone(wires),
    )
    .expect("starts")
}

fn frame(dst: [u8; 6], src: [u8; 6], seq: u32) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend_from_slice(&seq.to_be_bytes());
    f.resize(60, 0);
    f
}

fn call(service: &mut Service, method: &str, params: Value) -> Value {
    let line = json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params });
    let reply = dispatch_line(service, line.to_string().as_bytes()).expect("a reply");
    serde_json::from_slice(&reply).expect("JSON")
}

fn result(service: &mut Service, method: &str, params: Value) -> Value {
    let reply = call(service, method, params);
    assert!(reply["error"].is_null(), "{method}: {reply}");
    reply["result"].clone()
}

/// Sends `per_flow` numbered frames on every flow (each port to the next two), a window
/// at a time, and checks that each arrives once and in order; returns the frames sent.
fn traffic(mut ends: Vec<MemWire>, per_flow: u32, stop_early: &AtomicBool) -> u64 {
    let flows: Vec<(usize, usize)> = (0..PORTS)
        .flat_map(|p| [(p, (p + 1) % PORTS), (p, (p + 2) % PORTS)])
        .collect();
    let mut next: BTreeMap<(usize, usize), u32> = flows.iter().map(|&f| (f, 0)).collect();
    let mut expect = next.clone();
    let total = flows.len() as u64 * u64::from(per_flow);
    let (mut sent, mut received) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(120);
    while received < total {
        assert!(
            Instant::now() < deadline,
            "{received} of {total} frames arrived"
        );
        assert!(!stop_early.load(Ordering::Relaxed), "the test gave up");
        for &(src, dst) in &flows {
            let seq = next.get_mut(&(src, dst)).expect("flow");
            if *seq < per_flow
                && sent - received < WINDOW
                && ends[src].send(&frame(port_mac(dst), port_mac(src), *seq))
            {
                *seq += 1;
                sent += 1;
            }
        }
        for (port, end) in ends.iter_mut().enumerate() {
            while let Some(f) = end.recv() {
                assert_eq!(f[..6], port_mac(port), "delivered to its destination");
                let src = usize::from(f[11]) - 1;
                let seq = u32::from_be_bytes(f[14..18].try_into().expect("4 bytes"));
                let want = expect.get_mut(&(src, port)).expect("a flow of the test");
                assert_eq!(
                    seq,
                    *want,
                    "flow vm{} -> vm{}: in order, none lost",
                    src + 1,
                    port + 1
                );
                *want += 1;
                received += 1;
            }
        }
        std::thread::yield_now();
    }
    for end in ends.iter_mut() {
        assert!(end.recv().is_none(), "no frame beyond those sent");
    }
    sent
}

fn queue_worker(service: &mut Service, port: &str) -> u64 {
    let list = result(service, "workers.list", json!({}));
    for w in list["workers"].as_array().expect("workers") {
        for q in w["queues"].as_array().expect("queues") {
            if q["port"] == port {
                return w["id"].as_u64().expect("id");
            }
        }
    }
    panic!("{port} on no worker: {list}")
}

/// Moves the ports' queues from worker to worker, `moves` times, while every port sends
/// to two others; then checks loss, order and conservation.
fn queues_move_under_load(workers: usize, moves: usize) {
    let dir = TempDir::new();
    let wires = MemWires::default();
    let engine = start(&dir, workers, &wires);
    let ends: Vec<MemWire> = (1..=PORTS)
        .map(|i| {
            wires
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&format!("port:vm{i}"))
                .expect("wire")
        })
        .collect();
    let mut service = Service::new(engine);
    let give_up = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&give_up);
    let per_flow = 4_000;
    let sender = std::thread::spawn(move || traffic(ends, per_flow, &flag));
    let mut moved = 0;
    for i in 0..moves {
        if sender.is_finished() {
            break;
        }
        let port = format!("vm{}", i % PORTS + 1);
        let from = queue_worker(&mut service, &port);
        let to = (from + 1 + (i / PORTS) as u64 % (workers as u64 - 1)) % workers as u64;
        let r = call(
            &mut service,
            "workers.pin",
            json!({ "port": port, "worker": to }),
        );
        if !r["error"].is_null() {
            give_up.store(true, Ordering::Relaxed);
            panic!("pin {port} to {to}: {r}");
        }
        assert_eq!(r["result"]["moved"], true, "{r}");
        assert_eq!(queue_worker(&mut service, &port), to);
        moved += 1;
        std::thread::sleep(Duration::from_millis(3));
    }
    let sent = sender.join().expect("every frame arrived, in order");
    assert!(
        moved >= 4.min(moves),
        "only {moved} moves while traffic ran"
    );
    assert_eq!(sent, (2 * PORTS) as u64 * u64::from(per_flow));

    let list = result(&mut service, "workers.list", json!({}));
    assert_eq!(list["rebalance"]["queues_moved"], moved as u64, "{list}");
    let queues: Vec<&Value> = list["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .flat_map(|w| w["queues"].as_array().expect("queues"))
        .collect();
    assert_eq!(
        queues.len(),
        PORTS,
        "every queue on exactly one worker: {list}"
    );
    assert!(queues
        .iter()
        .all(|q| q["pinned"] == true && q["movable"] == true));

    let done = service.engine.shutdown().expect("clean shutdown");
    let (mut handed_off, mut handed_in, mut rx, mut tx) = (0, 0, 0, 0);
    for (w, c) in done.workers.iter().enumerate() {
        assert_eq!(
            c.frames_in(),
            c.frames_out(),
            "worker {w}: every frame it held accounted for once"
        );
        assert_eq!(c.dropped_total(), 0, "worker {w}: {:?}", c.drop_summary());
        handed_off += c.handoffs.get();
        handed_in += c.handoffs_received.get();
        rx += c.rx_packets.get();
        tx += c.tx_packets.get();
    }
    assert_eq!(handed_off, handed_in, "nothing left in the rings");
    assert_eq!((rx, tx), (sent, sent), "received and sent once each");
}

#[test]
fn two_workers_move_queues_under_load_without_loss_or_reordering() {
    queues_move_under_load(2, 24);
}

#[test]
fn four_workers_move_queues_under_load_without_loss_or_reordering() {
    queues_move_under_load(4, 24);
}

/// Load on two ports of worker 0 and none elsewhere: a rebalance moves one of them to
/// worker 1, a dry run moves nothing, a pinned queue stays, and `workers.list` shows each
/// queue's busy share and cycles per packet.
#[test]
fn a_rebalance_moves_a_busy_queue_off_the_busiest_worker() {
    let dir = TempDir::new();
    let wires = MemWires::default();
    let engine = start(&dir, 2, &wires);
    let mut ends: Vec<MemWire> = (1..=PORTS)
        .map(|i| {
            wires
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&format!("port:vm{i}"))
                .expect("wire")
        })
        .collect();
    let mut service = Service::new(engine);
    // Round-robin: vm1 and vm3 on worker 0, vm2 and vm4 on worker 1. Put vm2 on worker 0
    // too, so that worker 0 polls the two busy queues (vm1, vm2) and worker 1 none.
    result(
        &mut service,
        "workers.pin",
        json!({ "port": "vm2", "worker": 0 }),
    );
    result(
        &mut service,
        "workers.pin",
        json!({ "port": "vm2", "worker": null }),
    );
    assert_eq!(queue_worker(&mut service, "vm1"), 0);
    assert_eq!(queue_worker(&mut service, "vm2"), 0);
    // Each of vm1 and vm2 sends to vm3 for a while, sampled as the daemon's timer does.
    let mut seq = 0u32;
    let until = Instant::now() + Duration::from_millis(1500);
    let mut next_sample = Instant::now();
    while Instant::now() < until {
        for src in [0, 1] {
            for _ in 0..32 {
                ends[src].send(&frame(port_mac(2), port_mac(src), seq));
                seq += 1;
            }
        }
        while ends[2].recv().is_some() {}
        if Instant::now() >= next_sample {
            service.engine.supervise_workers();
            next_sample += Duration::from_millis(100);
        }
    }
    let list = result(&mut service, "workers.list", json!({}));
    let busy_queue = list["workers"][0]["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .find(|q| q["port"] == "vm1")
        .cloned()
        .expect("vm1 on worker 0");
    assert!(busy_queue["packets"].as_u64().unwrap() > 0, "{busy_queue}");
    assert!(
        busy_queue["cycles_per_packet"].as_f64().unwrap() > 0.0,
        "{busy_queue}"
    );
    assert!(
        busy_queue["packets_per_sec"].as_f64().unwrap() > 0.0,
        "{busy_queue}"
    );

    let dry = result(
        &mut service,
        "workers.rebalance",
        json!({ "dry_run": true }),
    );
    assert_eq!(dry["applied"], false, "{dry}");
    let moves = dry["moves"].as_array().expect("moves");
    assert_eq!(moves.len(), 1, "{dry}");
    assert_eq!(
        (moves[0]["from"].as_u64(), moves[0]["to"].as_u64()),
        (Some(0), Some(1))
    );
    assert!(
        dry["improvement_percent"].as_f64().unwrap() >= 25.0,
        "{dry}"
    );
    assert_eq!(
        queue_worker(&mut service, "vm1"),
        0,
        "a dry run moves nothing"
    );
    assert_eq!(
        queue_worker(&mut service, "vm2"),
        0,
        "a dry run moves nothing"
    );

    // Pinned, vm1 stays: the rebalance moves vm2.
    result(
        &mut service,
        "workers.pin",
        json!({ "port": "vm1", "worker": 0 }),
    );
    let done = result(&mut service, "workers.rebalance", json!({}));
    assert_eq!(done["applied"], true, "{done}");
    assert_eq!(done["moves"][0]["port"], "vm2", "{done}");
    assert_eq!(queue_worker(&mut service, "vm1"), 0);
    assert_eq!(queue_worker(&mut service, "vm2"), 1);
    let list = result(&mut service, "workers.list", json!({}));
    assert_eq!(list["rebalance"]["applied"], 1, "{list}");
    // Even now: nothing more to move.
    let again = result(
        &mut service,
        "workers.rebalance",
        json!({ "improvement_percent": 100 }),
    );
    assert_eq!(again["applied"], false, "{again}");
    service.engine.shutdown().expect("clean shutdown");
}

/// `polluxd --auto-rebalance-interval`: two busy queues on worker 0 and none on worker 1;
/// the control thread's timer moves one of them once two checks in a row found the plan
/// worth it, and counts it.
#[test]
fn automatic_rebalancing_moves_a_busy_queue_after_two_checks() {
    let dir = TempDir::new();
    let wires = MemWires::default();
    let auto = AutoRebalance {
        interval: Some(Duration::from_millis(300)),
        ..AutoRebalance::default()
    };
    let engine = start_with(&dir, 2, &wires, auto);
    let mut ends: Vec<MemWire> = (1..=PORTS)
        .map(|i| {
            wires
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&format!("port:vm{i}"))
                .expect("wire")
        })
        .collect();
    let mut service = Service::new(engine);
    // Round-robin: vm1 and vm3 on worker 0.
    assert_eq!(queue_worker(&mut service, "vm1"), 0);
    assert_eq!(queue_worker(&mut service, "vm3"), 0);
    let list = result(&mut service, "workers.list", json!({}));
    assert_eq!(list["rebalance"]["auto_interval_secs"], 0, "{list}");
    let mut seq = 0u32;
    let started = Instant::now();
    let mut next_tick = Instant::now();
    let mut applied_after = None;
    while started.elapsed() < Duration::from_secs(20) {
        for src in [0, 2] {
            for _ in 0..32 {
                ends[src].send(&frame(port_mac(1), port_mac(src), seq));
                seq += 1;
            }
        }
        while ends[1].recv().is_some() {}
        if Instant::now() >= next_tick {
            service.engine.supervise_workers();
            next_tick += Duration::from_millis(100);
            let (_, _, _, auto_applied, _) = service.engine.rebalance_stats();
            if auto_applied > 0 {
                applied_after = Some(started.elapsed());
                break;
            }
        }
    }
    let after = applied_after.expect("an automatic rebalance within 20 s");
    assert!(
        after >= Duration::from_millis(600),
        "two checks, an interval apart, before moving: {after:?}"
    );
    let (w1, w3) = (
        queue_worker(&mut service, "vm1"),
        queue_worker(&mut service, "vm3"),
    );
    assert_ne!(w1, w3, "the busy queues are on both workers now");
    let list = result(&mut service, "workers.list", json!({}));
    assert_eq!(list["rebalance"]["auto_applied"], 1, "{list}");
    assert_eq!(list["rebalance"]["queues_moved"], 1, "{list}");
    service.engine.shutdown().expect("clean shutdown");
}

/// Pins are kept in the state directory: after a restart the pinned queue starts on its
/// worker, still pinned; unpinned, the next start places it round-robin again. A pins
/// file that cannot be parsed stops the start, naming it.
#[test]
fn pins_survive_a_restart() {
    let dir = TempDir::new();
    let mut service = Service::new(start(&dir, 2, &MemWires::default()));
    assert_eq!(queue_worker(&mut service, "vm1"), 0);
    result(
        &mut service,
        "workers.pin",
        json!({ "port": "vm1", "worker": 1 }),
    );
    service.engine.shutdown().expect("clean shutdown");

    let mut service = Service::new(restart(&dir, 2));
    assert_eq!(
        queue_worker(&mut service, "vm1"),
        1,
        "placed on its pinned worker"
    );
    let list = result(&mut service, "workers.list", json!({}));
    let row = list["workers"][1]["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .find(|q| q["port"] == "vm1")
        .cloned()
        .expect("vm1 on worker 1");
    assert_eq!(row["pinned"], true, "{row}");
    result(
        &mut service,
        "workers.pin",
        json!({ "port": "vm1", "worker": null }),
    );
    service.engine.shutdown().expect("clean shutdown");

    let mut service = Service::new(restart(&dir, 2));
    assert_eq!(queue_worker(&mut service, "vm1"), 0, "round-robin again");
    service.engine.shutdown().expect("clean shutdown");

    std::fs::write(dir.join("state").join("queue-pins.json"), b"{not json").expect("write");
    let store = pollux_control::store::Store::open(&dir.join("state"), 8).expect("store");
    let err = Engine::start(
        &EngineConfig {
            cores: vec![None; 2],
            ..Default::default()
        },
        Initial {
            state: state(),
            generation: 1,
            persist: false,
        },
        Some(store),
        MemWires::default(),
    )
    .expect_err("refused");
    assert!(err.contains("queue-pins.json"), "{err}");
}

/// The methods' parameters: unknown fields, bad types, a port or queue or worker that
/// does not exist are refused, and change nothing.
#[test]
fn pin_and_rebalance_parameters_are_checked() {
    let dir = TempDir::new();
    let wires = MemWires::default();
    let mut service = Service::new(start(&dir, 2, &wires));
    let code = |r: &Value| r["error"]["code"].as_i64();
    for (method, params, want) in [
        ("workers.pin", json!({ "port": "vm9", "worker": 0 }), -32007),
        ("workers.pin", json!({ "port": "vm1", "worker": 2 }), -32006),
        (
            "workers.pin",
            json!({ "port": "vm1", "queue": 1, "worker": 0 }),
            -32006,
        ),
        (
            "workers.pin",
            json!({ "port": "vm1", "worker": "0" }),
            -32602,
        ),
        (
            "workers.pin",
            json!({ "port": "vm1", "worker": 0, "x": 1 }),
            -32602,
        ),
        ("workers.pin", json!({ "worker": 0 }), -32602),
        ("workers.pin", json!([1]), -32602),
        (
            "workers.rebalance",
            json!({ "improvement_percent": 101 }),
            -32602,
        ),
        (
            "workers.rebalance",
            json!({ "improvement_percent": -1 }),
            -32602,
        ),
        ("workers.rebalance", json!({ "dry_run": 1 }), -32602),
        ("workers.rebalance", json!({ "force": true }), -32602),
    ] {
        let r = call(&mut service, method, params.clone());
        assert_eq!(code(&r), Some(want), "{method} {params}: {r}");
    }
    let r = call(
        &mut service,
        "workers.pin",
        json!({ "port": "vm1", "worker": 2 }),
    );
    assert_eq!(r["error"]["data"]["path"], "worker", "{r}");
    let list = result(&mut service, "workers.list", json!({}));
    assert_eq!(list["rebalance"]["queues_moved"], 0, "{list}");
    assert_eq!(queue_worker(&mut service, "vm1"), 0);
    service.engine.shutdown().expect("clean shutdown");
}

/// Any parameters: a reply (a result or one of the documented errors), never a panic,
/// and every queue still on exactly one existing worker.
mod params {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (0u64..6).prop_map(Value::from),
            "[a-z0-9:]{0,8}".prop_map(Value::from),
            Just(json!("vm1")),
            Just(json!("vm2")),
            Just(json!([0])),
            Just(json!({})),
        ]
    }

    fn params() -> impl Strategy<Value = Value> {
        let keys = prop_oneof![
            Just("port"),
            Just("queue"),
            Just("worker"),
            Just("dry_run"),
            Just("improvement_percent"),
            Just("other"),
        ];
        prop_oneof![
            proptest::collection::btree_map(keys, value(), 0..5).prop_map(|m| Value::Object(
                m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
            )),
            value(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn pin_and_rebalance_take_any_parameters(
            calls in proptest::collection::vec((any::<bool>(), params()), 1..12),
        ) {
            let dir = TempDir::new();
            let wires = MemWires::default();
            let mut service = Service::new(start(&dir, 2, &wires));
            for (pin, p) in calls {
                let method = if pin { "workers.pin" } else { "workers.rebalance" };
                let r = call(&mut service, method, p.clone());
                if let Some(code) = r["error"]["code"].as_i64() {
                    prop_assert!(
                        [-32600, -32602, -32006, -32007].contains(&code),
                        "{} {}: {}", method, p, r
                    );
                } else {
                    prop_assert!(r["result"].is_object(), "{} {}: {}", method, p, r);
                }
            }
            let list = result(&mut service, "workers.list", json!({}));
            let mut seen: Vec<String> = list["workers"]
                .as_array()
                .expect("workers")
                .iter()
                .flat_map(|w| w["queues"].as_array().expect("queues"))
                .map(|q| q["port"].as_str().expect("port").to_string())
                .collect();
            seen.sort();
            prop_assert_eq!(seen, vec!["vm1", "vm2", "vm3", "vm4"]);
            service.engine.shutdown().expect("clean shutdown");
        }
    }
}
