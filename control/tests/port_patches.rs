//! Property test of the changes of ports compiled as a patch of the running snapshot
//! (`compile::compile_ports`, `Snapshot::patch_ports`): random sequences of port puts,
//! deletes and batches of them, on networks with DHCP, a router, none of either, one
//! administratively down, one of an overlay, with and without port security, QoS (egress
//! and ingress), allowed address pairs (a second MAC) and, rarely, a security group.
//!
//! After every accepted change the running snapshot, port plans and identities must be
//! what a compile from scratch of the running state makes (the test build also compares
//! each patch inside the engine, before it is published); a refused change leaves them
//! as they were. At the end, enough changes must have been patched for the test to mean
//! something, and enough compiled whole (the cases a patch leaves alone). A third of the
//! cases have a tunnel endpoint (with which a change of the number of port slots is
//! compiled whole), the others not.

use std::sync::Mutex;

use pollux_control::binding::MemWires;
use pollux_control::compile::compile;
use pollux_control::engine::{ApplyOptions, Engine, EngineConfig, Initial};
use pollux_control::model::DesiredState;
use pollux_control::patch::{Collection, RawChange};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde_json::json;

const CASES: u32 = 24;

const BASE: &str = r#"
[agent]
host = "compute-1"

[[hosts]]
name = "compute-1"
tunnel_ip = "198.18.255.1"

[[hosts]]
name = "compute-2"
tunnel_ip = "198.18.255.2"

[[uplinks]]
name = "uplink0"
physnet = "physnet1"
binding = { driver = "mem" }
local_ip = "198.18.255.1/24"

[[networks]]
id = "net-a"
network_type = "vlan"
physical_network = "physnet1"
segmentation_id = 100

[[networks]]
id = "net-b"
network_type = "vlan"
physical_network = "physnet1"
segmentation_id = 101

[[networks]]
id = "net-c"
network_type = "local"

[[networks]]
id = "net-down"
network_type = "local"
admin_state_up = false

[[networks]]
id = "net-x"
network_type = "vxlan"
segmentation_id = 5000

[[subnets]]
id = "sub-a"
network_id = "net-a"
cidr = "198.18.10.0/24"
gateway_ip = "198.18.10.1"

[[subnets]]
id = "sub-b"
network_id = "net-b"
cidr = "198.18.20.0/24"
gateway_ip = "198.18.20.1"
enable_dhcp = false

[[routers]]
id = "r1"
interfaces = ["sub-a"]

[[qos_policies]]
id = "out"
rules = [{ type = "bandwidth_limit", max_kbps = 2000 }]

[[qos_policies]]
id = "in"
rules = [{ type = "bandwidth_limit", max_kbps = 2000, direction = "ingress" }]

[[security_groups]]
id = "sg0"
rules = [{ direction = "ingress", ethertype = "IPv4", protocol = "tcp", port_range_min = 22, port_range_max = 22 }]

[[ports]]
id = "p0"
network_id = "net-a"
mac_address = "fa:16:3e:00:00:f0"
fixed_ips = [{ subnet_id = "sub-a", ip_address = "198.18.10.200" }]
binding = { driver = "mem" }

[[ports]]
id = "p1"
network_id = "net-b"
mac_address = "fa:16:3e:00:00:f1"
binding = { driver = "mem" }
port_security_enabled = false
"#;

/// One port change, as choices.
#[derive(Clone, Debug)]
enum Op {
    Put {
        port: u8,
        network: u8,
        mac: u8,
        ip: Option<u8>,
        security: bool,
        qos: u8,
        pair: bool,
        group: bool,
    },
    Delete {
        port: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let network = prop_oneof![8 => 0u8..3, 1 => 3u8..5];
    let qos = prop_oneof![10 => Just(0u8), 1 => 1u8..3];
    prop_oneof![
        3 => (0u8..8, network, 0u8..24, prop::option::of(10u8..30), prop::bool::weighted(0.7),
              qos, prop::bool::weighted(0.15), prop::bool::weighted(0.05))
            .prop_map(|(port, network, mac, ip, security, qos, pair, group)| Op::Put {
                port, network, mac, ip, security, qos, pair, group
            }),
        1 => (0u8..8).prop_map(|port| Op::Delete { port }),
    ]
}

fn raw(op: &Op) -> RawChange {
    match *op {
        Op::Put {
            port,
            network,
            mac,
            ip,
            security,
            qos,
            pair,
            group,
        } => {
            let net = ["net-a", "net-b", "net-c", "net-down", "net-x"][usize::from(network)];
            let mut object = json!({
                "id": format!("p{port}"),
                "network_id": net,
                "mac_address": format!("fa:16:3e:00:00:{mac:02x}"),
                "binding": {"driver": "mem"},
                "port_security_enabled": security,
            });
            let subnet = match network {
                0 => Some(("sub-a", "198.18.10")),
                1 => Some(("sub-b", "198.18.20")),
                _ => None,
            };
            if let (Some((sub, prefix)), Some(ip)) = (subnet, ip) {
                object["fixed_ips"] =
                    json!([{"subnet_id": sub, "ip_address": format!("{prefix}.{ip}")}]);
                if pair {
                    object["allowed_address_pairs"] = json!([{
                        "ip_address": format!("{prefix}.{}", u16::from(ip) + 100),
                        "mac_address": format!("fa:16:3e:00:01:{mac:02x}"),
                    }]);
                }
            }
            if qos > 0 {
                object["qos_policy_id"] = json!(["out", "in"][usize::from(qos - 1)]);
            }
            if group {
                object["security_groups"] = json!(["sg0"]);
            }
            RawChange::Put {
                collection: Collection::Ports,
                object,
            }
        }
        Op::Delete { port } => RawChange::Delete {
            collection: Collection::Ports,
            id: format!("p{port}"),
        },
    }
}

/// What the engine runs: its snapshot's differences from a compile from scratch of its
/// state (none), its plans and identities compared with that compile's.
fn check_against_scratch(engine: &Engine, ctx: &str) {
    let whole = compile(engine.validated(), engine.identities(), engine.generation())
        .unwrap_or_else(|e| panic!("{ctx}: the running state compiles: {e}"));
    let running = engine.snapshot();
    assert_eq!(
        running.differences(&whole.snapshot),
        Vec::<&str>::new(),
        "{ctx}: the running snapshot is not the one compiled from scratch"
    );
    assert_eq!(engine.plans(), &whole.ports[..], "{ctx}: port plans");
    assert_eq!(engine.identities(), &whole.identities, "{ctx}: identities");
}

static TOTALS: Mutex<[u64; 3]> = Mutex::new([0; 3]);

fn run_case(overlay: bool, steps: &[Vec<Op>]) {
    // Without the tunnel endpoint, net-x is one more local network.
    let text = if overlay {
        BASE.to_owned()
    } else {
        let from_uplinks = &BASE[BASE.find("[[uplinks]]").expect("an uplink")..];
        from_uplinks
            .replace("local_ip = \"198.18.255.1/24\"\n", "")
            .replace(
                "network_type = \"vxlan\"\nsegmentation_id = 5000",
                "network_type = \"local\"",
            )
    };
    let state = DesiredState::from_toml_str(&text).expect("the base parses");
    let config = EngineConfig {
        cores: vec![None],
        pool_frames: 4096,
        ..Default::default()
    };
    let initial = Initial {
        state,
        generation: 1,
        persist: false,
    };
    let mut engine = Engine::start(&config, initial, None, MemWires::default()).unwrap();
    let (mut applied, mut refused) = (0, 0);
    for (k, batch) in steps.iter().enumerate() {
        let before = (
            engine.generation(),
            engine.state().clone(),
            engine.snapshot(),
        );
        let changes: Vec<RawChange> = batch.iter().map(raw).collect();
        let ctx = format!("step {k} {batch:?}");
        match engine.patch_raw(changes, ApplyOptions::default()) {
            Ok(o) if o.applied => applied += 1,
            Ok(_) => {}
            Err(_) => {
                refused += 1;
                assert_eq!(
                    engine.generation(),
                    before.0,
                    "{ctx}: refused, same generation"
                );
                assert_eq!(engine.state(), &before.1, "{ctx}: refused, same state");
                assert!(
                    std::sync::Arc::ptr_eq(&engine.snapshot(), &before.2),
                    "{ctx}: refused, same snapshot"
                );
            }
        }
        check_against_scratch(&engine, &ctx);
    }
    let mut totals = TOTALS.lock().unwrap();
    totals[0] += applied;
    totals[1] += refused;
    totals[2] += engine.patched_generations();
    drop(totals);
    engine.shutdown().unwrap();
}

#[test]
fn port_changes_patched_are_what_a_compile_from_scratch_makes() {
    let mut runner = TestRunner::new(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let batch = prop::collection::vec(op(), 1..4);
    runner
        .run(
            &(
                prop::bool::weighted(0.3),
                prop::collection::vec(batch, 1..24),
            ),
            |(overlay, steps)| {
                run_case(overlay, &steps);
                Ok(())
            },
        )
        .unwrap();
    let [applied, refused, patched] = *TOTALS.lock().unwrap();
    eprintln!("applied {applied}, refused {refused}, patched {patched}");
    assert!(
        patched * 4 >= applied,
        "too few patched: {patched} of {applied}"
    );
    assert!(patched < applied, "some changes must be compiled whole");
    assert!(refused > 0, "some changes must be refused");
}
