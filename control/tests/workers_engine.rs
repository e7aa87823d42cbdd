//! The engine with several workers on `mem` ports, without root: ports spread over the
//! workers, frames between ports of different workers handed over, `workers.list` showing
//! each worker's queues, and what several workers cannot run refused with its path.

use pollux_testkit::TempDir;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pollux_control::binding::MemWires;
use pollux_control::engine::{ApplyError, ApplyOptions, Engine, EngineConfig, Initial};
use pollux_control::model::DesiredState;
use pollux_control::rpc::dispatch_line;
use pollux_control::service::Service;
use pollux_drivers::mem::MemWire;
use serde_json::Value;

const PORTS: [&str; 4] = ["vm1", "vm2", "vm3", "vm4"];

fn port_mac(i: usize) -> [u8; 6] {
    [0xfa, 0x16, 0x3e, 0, 0, i as u8 + 1]
}

fn state(extra: &str) -> DesiredState {
    let mut toml = String::from(
        r#"
        [[networks]]
        id = "net-a"
        network_type = "local"

        [[subnets]]
        id = "sub-a"
        network_id = "net-a"
        cidr = "198.18.1.0/24"
        gateway_ip = "198.18.1.1"
        enable_dhcp = false
        "#,
    );
    for (i, id) in PORTS.iter().enumerate() {
        toml.push_str(&format!(
            r#"
            [[ports]]
            id = "{id}"
            network_id = "net-a"
            mac_address = "fa:16:3e:00:00:{:02x}"
            fixed_ips = [{{ subnet_id = "sub-a", ip_address = "198.18.1.{}" }}]
            port_security_enabled = false
            binding = {{ driver = "mem" }}
            "#,
            i + 1,
            i + 10
        ));
    }
    toml.push_str(extra);
    DesiredState::from_toml_str(&toml).expect("test state parses")
}

fn start(
    dir: &TempDir,
    state: DesiredState,
    workers: usize,
    wires: &MemWires,
) -> Result<Engine, String> {
    let store = pollux_control::store::Store::open(&dir.join("state"), 8).expect("store");
    Engine::start(
        &EngineConfig {
            cores: vec![None; workers],
            pool_frames: 4096,
            ..Default::default()
        },
        Initial {
            state,
            generation: 1,
            persist: true,
        },
        Some(store),
        Arc::clone(wires),
    )
}

fn wire(wires: &MemWires, key: &str) -> MemWire {
    wires
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(key)
        .unwrap_or_else(|| panic!("no wire {key}"))
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

fn call(service: &mut Service, method: &str) -> Value {
    let line = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{method}"}}"#);
    let reply = dispatch_line(service, line.as_bytes()).expect("a reply");
    let reply: Value = serde_json::from_slice(&reply).expect("JSON");
    reply["result"].clone()
}

#[test]
fn ports_spread_over_two_workers_and_frames_cross_between_them() {
    let dir = TempDir::new();
    let wires = MemWires::default();
    let engine = start(&dir, state(""), 2, &wires).expect("starts");
    let mut ends: Vec<MemWire> = PORTS
        .iter()
        .map(|p| wire(&wires, &format!("port:{p}")))
        .collect();
    let mut service = Service::new(engine);
    let workers = call(&mut service, "workers.list");
    let rows = workers["workers"].as_array().expect("rows");
    assert_eq!(rows.len(), 2, "{workers}");
    let queues = |w: usize| -> Vec<String> {
        rows[w]["queues"]
            .as_array()
            .expect("queues")
            .iter()
            .map(|q| format!("{}:{}", q["port"].as_str().unwrap(), q["queue"]))
            .collect()
    };
    // Round-robin in port order: every port's one queue on exactly one worker.
    assert_eq!(queues(0), vec!["vm1:0", "vm3:0"], "{workers}");
    assert_eq!(queues(1), vec!["vm2:0", "vm4:0"], "{workers}");

    // vm1 (worker 0) to vm2 (worker 1) and back, vm1 to vm3 (both worker 0).
    const N: u32 = 300;
    let flows = [(0usize, 1usize), (1, 0), (0, 2)];
    for seq in 0..N {
        for &(a, b) in &flows {
            assert!(ends[a].send(&frame(port_mac(b), port_mac(a), seq)));
        }
        if seq % 64 == 63 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let mut got = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.iter().map(Vec::len).sum::<usize>() < flows.len() * N as usize {
        assert!(
            Instant::now() < deadline,
            "frames missing: {:?}",
            got.map(|g| g.len())
        );
        for (i, end) in ends.iter_mut().enumerate() {
            while let Some(f) = end.recv() {
                got[i].push(f);
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    for (to, from) in [(1usize, 0usize), (0, 1), (2, 0)] {
        let seqs: Vec<u32> = got[to]
            .iter()
            .filter(|f| f[6..12] == port_mac(from))
            .map(|f| u32::from_be_bytes(f[14..18].try_into().unwrap()))
            .collect();
        assert_eq!(
            seqs,
            (0..N).collect::<Vec<_>>(),
            "{from} -> {to}: all, in order"
        );
    }
    assert!(got[3].is_empty());

    let stats = call(&mut service, "stats.get");
    let rows = stats["workers"].as_array().expect("workers");
    assert_eq!(rows.len(), 2);
    let sum = |key: &str| rows.iter().map(|w| w[key].as_u64().unwrap()).sum::<u64>();
    assert_eq!(sum("rx_packets"), 3 * u64::from(N));
    assert_eq!(sum("tx_packets"), 3 * u64::from(N));
    assert_eq!(sum("handoffs"), 2 * u64::from(N), "the two crossing flows");
    assert_eq!(sum("handoffs_received"), 2 * u64::from(N));
    assert_eq!(sum("handoff_drops"), 0);
    assert_eq!(rows[0]["rx_packets"], 2 * N, "vm1's frames, on worker 0");
    service.engine.shutdown().expect("clean shutdown");
}

/// Security groups run on several workers (their flows are handed to the worker that owns
/// their state); what cannot (a QoS token bucket, a jumbo network) is refused naming the
/// field, whether at start-up or in an apply.
#[test]
fn state_that_must_follow_a_flow_is_refused_with_several_workers() {
    let policies = r#"
        [[security_groups]]
        id = "web"
        rules = [{ direction = "egress", ethertype = "IPv4" }]

        [[qos_policies]]
        id = "slow"
        rules = [{ type = "bandwidth_limit", max_kbps = 1000, direction = "egress" }]
    "#;
    let wires = MemWires::default();
    let mut with_group = state(policies);
    with_group.ports[2].security_groups = vec!["web".into()];
    // The test's frames are neither IPv4, ARP nor IPv6: port security is off but here.
    with_group.ports[2].port_security_enabled = true;
    start(&TempDir::new(), with_group.clone(), 2, &MemWires::default())
        .expect("two workers run security groups")
        .shutdown()
        .expect("clean shutdown");

    let mut qos = with_group.clone();
    qos.ports[1].qos_policy_id = Some("slow".into());
    let err = start(&TempDir::new(), qos.clone(), 2, &wires).expect_err("refused");
    assert!(
        err.contains("not supported: ports[1].qos_policy_id:") && err.contains("2 workers"),
        "{err}"
    );
    // One worker runs it; two start without it and refuse it in an apply.
    start(&TempDir::new(), qos.clone(), 1, &MemWires::default())
        .expect("one worker runs QoS")
        .shutdown()
        .expect("clean shutdown");
    let mut engine = start(&TempDir::new(), with_group.clone(), 2, &wires).expect("starts");
    match engine.apply(qos, ApplyOptions::default()) {
        Err(ApplyError::Unsupported { path, what }) => {
            assert_eq!(path, "ports[1].qos_policy_id");
            assert!(what.contains("2 workers"), "{what}");
        }
        other => panic!("expected not supported, got {other:?}"),
    }
    let mut jumbo = with_group;
    jumbo.networks[0].mtu = Some(9000);
    match engine.apply(jumbo, ApplyOptions::default()) {
        Err(ApplyError::Unsupported { path, .. }) => assert_eq!(path, "networks[0].mtu"),
        other => panic!("expected not supported, got {other:?}"),
    }
    assert_eq!(engine.generation(), 1, "nothing applied");
    engine.shutdown().expect("clean shutdown");
}
