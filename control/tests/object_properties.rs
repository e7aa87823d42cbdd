//! Property test of the object changes (`Engine::patch`, `Engine::patch_raw`: what
//! `<collection>.put`, `.delete` and `config.patch` call) against whole-state applies.
//!
//! Each case runs two persisting engines side by side from the same base state. Every step
//! is a put, a delete, a batch of them or a rollback, with a random `dry_run` and
//! `expect_generation` (absent, right or stale). Engine A gets it as object changes (typed,
//! or as the JSON a client sends); engine B gets the whole state the changes make (by the
//! documented rule: a put replaces in place or appends, a delete removes and keeps the
//! order) through `Engine::apply`. After every step:
//!
//! - both answered alike (accepted with the same diff, or refused for the same reason and,
//!   for an invalid state, with the same paths and messages), except that a delete of an id
//!   that is not there is refused by A as an unknown object (and B is not asked);
//! - both run the same generation, state and port plan, and their stores retain the same
//!   generations holding the same states;
//! - a refused or dry-run change changed nothing in A: generation, state, persisted state.
//!
//! At the end both engines stop and their stores are opened again: the same generation
//! and state come back.

use pollux_testkit::TempDir;
use std::collections::BTreeMap;
use std::sync::Mutex;

use pollux_control::binding::MemWires;
use pollux_control::engine::{
    state_from_json, ApplyError, ApplyOptions, ApplyOutcome, Engine, EngineConfig, Initial,
};
use pollux_control::model::{DesiredState, FixedIp, Network, SecurityGroup};
use pollux_control::patch::{edit, Change, Collection, Object, PatchError, RawChange};
use pollux_control::store::Store;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde_json::Value;

/// Random cases (each two engines and two state directories).
const CASES: u32 = 40;
const HISTORY: usize = 8;

const BASE: &str = r#"
[[uplinks]]
name = "uplink0"
physnet = "physnet1"
binding = { driver = "mem" }

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
id = "ext"
network_type = "flat"
physical_network = "physnet1"

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

[[subnets]]
id = "sub-ext"
network_id = "ext"
cidr = "203.0.113.0/24"
gateway_ip = "203.0.113.1"

[[ports]]
id = "p0"
network_id = "net-a"
mac_address = "fa:16:3e:00:00:01"
fixed_ips = [{ subnet_id = "sub-a", ip_address = "198.18.10.11" }]
binding = { driver = "mem" }

[[ports]]
id = "p1"
network_id = "net-b"
mac_address = "fa:16:3e:00:00:02"
fixed_ips = [{ subnet_id = "sub-b", ip_address = "198.18.20.12" }]
binding = { driver = "mem" }

[[routers]]
id = "r1"
interfaces = ["sub-a", "sub-b"]
external_gateway_info = { network_id = "ext", external_fixed_ip = "203.0.113.10" }

[[floating_ips]]
id = "fip0"
floating_ip_address = "203.0.113.20"
port_id = "p0"

[[security_groups]]
id = "sg0"
rules = [{ direction = "ingress", ethertype = "IPv4", protocol = "tcp", port_range_min = 22, port_range_max = 22 }]
"#;

/// One change, as choices resolved against the state it is made to.
#[derive(Clone, Debug)]
enum Spec {
    /// A port: replace the `target`-th (new when past the end) with these fields.
    Port {
        target: usize,
        mac: u8,
        network: usize,
        ip: Option<u8>,
        sg: bool,
    },
    /// A network with this VLAN ID (a taken one is invalid).
    Network { target: usize, vid: u8 },
    /// A security group with `rules` copies of an SSH rule.
    SecurityGroup { target: usize, rules: usize },
    /// The object as it is (a no-op).
    Same { collection: usize, target: usize },
    /// A delete (past the end: an id that is not there).
    Delete { collection: usize, target: usize },
}

#[derive(Clone, Debug)]
enum Step {
    Changes {
        specs: Vec<Spec>,
        dry_run: bool,
        /// 6: the active generation, 7: a stale one, else absent.
        expect: u8,
        json: bool,
    },
    /// Roll back to the `k`-th retained generation (newest first).
    Rollback(usize),
}

fn spec() -> impl Strategy<Value = Spec> {
    prop_oneof![
        6 => (0usize..5, 0u8..12, prop_oneof![4 => Just(0usize), 4 => Just(1), 1 => Just(2)], prop::option::of(10u8..16), prop::bool::weighted(0.1)).prop_map(
            |(target, mac, network, ip, sg)| Spec::Port { target, mac, network, ip, sg }
        ),
        1 => (0usize..5, 0u8..4).prop_map(|(target, vid)| Spec::Network { target, vid }),
        1 => (0usize..3, 0usize..3).prop_map(|(target, rules)| Spec::SecurityGroup { target, rules }),
        1 => (0usize..9, 0usize..3).prop_map(|(collection, target)| Spec::Same { collection, target }),
        3 => (0usize..9, 0usize..4).prop_map(|(collection, target)| Spec::Delete { collection, target }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (prop::collection::vec(spec(), 1..4), prop::bool::weighted(0.2), 0u8..8, any::<bool>())
            .prop_map(|(specs, dry_run, expect, json)| Step::Changes { specs, dry_run, expect, json }),
        1 => (0usize..4).prop_map(Step::Rollback),
    ]
}

/// The `target`-th object of `collection` in `state`, if there is one.
fn nth(state: &DesiredState, collection: Collection, target: usize) -> Option<Object> {
    Some(match collection {
        Collection::Uplinks => Object::Uplink(state.uplinks.get(target)?.clone()),
        Collection::Networks => Object::Network(state.networks.get(target)?.clone()),
        Collection::Subnets => Object::Subnet(state.subnets.get(target)?.clone()),
        Collection::Ports => Object::Port(state.ports.get(target)?.clone()),
        Collection::Routers => Object::Router(state.routers.get(target)?.clone()),
        Collection::FloatingIps => Object::FloatingIp(state.floating_ips.get(target)?.clone()),
        Collection::SecurityGroups => {
            Object::SecurityGroup(state.security_groups.get(target)?.clone())
        }
        Collection::AddressGroups => {
            Object::AddressGroup(state.address_groups.get(target)?.clone())
        }
        Collection::QosPolicies => Object::QosPolicy(state.qos_policies.get(target)?.clone()),
        Collection::Trunks => Object::Trunk(state.trunks.get(target)?.clone()),
    })
}

fn resolve(state: &DesiredState, spec: &Spec) -> Change {
    match *spec {
        Spec::Port {
            target,
            mac,
            network,
            ip,
            sg,
        } => {
            let mut port = state
                .ports
                .first()
                .cloned()
                .unwrap_or_else(|| base().ports[0].clone());
            port.id = state
                .ports
                .get(target)
                .map_or(format!("p{target}-new"), |p| p.id.clone());
            port.mac_address = format!("fa:16:3e:00:00:{mac:02x}");
            let (net, sub, prefix) = [
                ("net-a", "sub-a", "198.18.10"),
                ("net-b", "sub-b", "198.18.20"),
                ("net-x", "sub-a", "198.18.10"),
            ][network];
            port.network_id = net.into();
            port.fixed_ips = ip
                .map(|octet| FixedIp {
                    subnet_id: sub.into(),
                    ip_address: format!("{prefix}.{octet}"),
                })
                .into_iter()
                .collect();
            port.security_groups = if sg { vec!["sg0".into()] } else { Vec::new() };
            Change::Put(Object::Port(port))
        }
        Spec::Network { target, vid } => {
            let mut network: Network = base().networks[0].clone();
            network.id = state
                .networks
                .get(target)
                .map_or(format!("net-{target}-new"), |n| n.id.clone());
            network.segmentation_id = Some(100 + i64::from(vid));
            Change::Put(Object::Network(network))
        }
        Spec::SecurityGroup { target, rules } => {
            let base = base();
            let rule = base.security_groups[0].rules[0].clone();
            let group = SecurityGroup {
                id: state
                    .security_groups
                    .get(target)
                    .map_or(format!("sg{target}-new"), |g| g.id.clone()),
                name: None,
                description: None,
                stateful: true,
                rules: vec![rule; rules],
            };
            Change::Put(Object::SecurityGroup(group))
        }
        Spec::Same { collection, target } => {
            let c = Collection::ALL[collection];
            match nth(state, c, target) {
                Some(object) => Change::Put(object),
                None => Change::Delete {
                    collection: c,
                    id: "absent".into(),
                },
            }
        }
        Spec::Delete { collection, target } => {
            let c = Collection::ALL[collection];
            let id = c
                .ids(state)
                .get(target)
                .map_or_else(|| format!("absent-{target}"), |id| (*id).to_owned());
            Change::Delete { collection: c, id }
        }
    }
}

fn base() -> DesiredState {
    DesiredState::from_toml_str(BASE).expect("the base parses")
}

fn raw(change: &Change) -> RawChange {
    match change {
        Change::Put(object) => RawChange::Put {
            collection: object.collection(),
            object: object.to_value(),
        },
        Change::Delete { collection, id } => RawChange::Delete {
            collection: *collection,
            id: id.clone(),
        },
    }
}

fn start(dir: &TempDir, name: &str) -> Engine {
    let store = Store::open(&dir.join(name), HISTORY).unwrap();
    let config = EngineConfig {
        cores: vec![None],
        pool_frames: 4096,
        ..Default::default()
    };
    let initial = Initial {
        state: base(),
        generation: 1,
        persist: true,
    };
    Engine::start(&config, initial, Some(store), MemWires::default()).unwrap()
}

/// The retained generations of an engine's store and their states.
fn persisted(engine: &Engine) -> Vec<(u64, Value)> {
    let store = engine.store().unwrap();
    store
        .history()
        .into_iter()
        .map(|(g, _)| {
            (
                g,
                store.get(g).unwrap().expect("a retained generation reads"),
            )
        })
        .collect()
}

/// What an answer says, for comparing the two engines.
fn answer(result: &Result<ApplyOutcome, ApplyError>) -> String {
    match result {
        Ok(o) => format!(
            "Ok(generation {}, applied {}, changed {}, diff {})",
            o.generation,
            o.applied,
            o.changed,
            serde_json::to_string(&o.diff).unwrap()
        ),
        Err(ApplyError::Invalid(errors)) => format!(
            "Invalid({:?})",
            errors.iter().map(|e| e.to_string()).collect::<Vec<_>>()
        ),
        Err(e) => format!("Err({e})"),
    }
}

fn assert_same(a: &Engine, b: &Engine, ctx: &str) {
    assert_eq!(a.generation(), b.generation(), "{ctx}: generation");
    assert_eq!(a.state(), b.state(), "{ctx}: state");
    assert_eq!(a.plans(), b.plans(), "{ctx}: port plans");
    assert_eq!(persisted(a), persisted(b), "{ctx}: persisted generations");
}

fn run_case(steps: &[Step]) {
    let dir = TempDir::new();
    let mut a = start(&dir, "a");
    let mut b = start(&dir, "b");
    for (n, step) in steps.iter().enumerate() {
        let ctx = format!("step {n}: {step:?}");
        let before = (a.generation(), a.state().clone(), persisted(&a));
        let (result_a, dry_run) = match step {
            Step::Rollback(k) => {
                let history = a.history();
                let g = history.get(*k).map_or(999, |(g, _)| *g);
                let options = ApplyOptions::default();
                let ra = a.rollback(g, options);
                let rb = b.rollback(g, options);
                assert_eq!(answer(&ra), answer(&rb), "{ctx}");
                (ra, false)
            }
            Step::Changes {
                specs,
                dry_run,
                expect,
                json,
            } => {
                let mut changes = Vec::new();
                let mut state = a.state().clone();
                for spec in specs {
                    let change = resolve(&state, spec);
                    // Later changes of a batch see what the earlier ones made.
                    if let Ok(next) = edit(&state, vec![change.clone()]) {
                        state = next;
                    }
                    changes.push(change);
                }
                let options = ApplyOptions {
                    dry_run: *dry_run,
                    expect_generation: match expect {
                        6 => Some(a.generation()),
                        7 => Some(a.generation() + 7),
                        _ => None,
                    },
                };
                let expected = edit(a.state(), changes.clone());
                let ra = if *json {
                    a.patch_raw(changes.iter().map(raw).collect(), options)
                } else {
                    a.patch(changes, options)
                };
                match expected {
                    _ if *expect == 7 => {
                        assert!(
                            matches!(ra, Err(ApplyError::GenerationMismatch { .. })),
                            "{ctx}: {}",
                            answer(&ra)
                        );
                    }
                    Err(PatchError::UnknownObject {
                        collection,
                        id,
                        change,
                    }) => match &ra {
                        Err(ApplyError::UnknownObject {
                            collection: c,
                            id: i,
                            change: k,
                        }) => assert_eq!(
                            (c.as_str(), i, *k),
                            (collection.name(), &id, change),
                            "{ctx}"
                        ),
                        other => panic!("{ctx}: expected an unknown object, got {}", answer(other)),
                    },
                    Err(e) => panic!("{ctx}: typed changes cannot fail to read: {e}"),
                    Ok(state) => {
                        let rb = b.apply(state, options);
                        assert_eq!(answer(&ra), answer(&rb), "{ctx}");
                    }
                }
                (ra, *dry_run)
            }
        };
        assert_same(&a, &b, &ctx);
        tally(&result_a);
        let applied = matches!(&result_a, Ok(o) if o.applied);
        if !applied {
            let after = (a.generation(), a.state().clone(), persisted(&a));
            assert!(
                before == after,
                "{ctx}: a change that was not applied changed A"
            );
        } else {
            assert!(!dry_run, "{ctx}: a dry run applied");
            assert_eq!(a.generation(), before.0 + 1, "{ctx}");
        }
    }
    let (generation, state) = (a.generation(), a.state().clone());
    *TALLY.lock().unwrap().entry("patched".into()).or_default() += a.patched_generations();
    drop(a);
    drop(b);
    for name in ["a", "b"] {
        let store = Store::open(&dir.join(name), HISTORY).unwrap();
        let (g, value) = store.current().expect("a committed generation");
        assert_eq!(g, generation, "{name}: restart generation");
        let restored = state_from_json(value).unwrap();
        assert_eq!(restored, state, "{name}: restart state");
    }
}

static TALLY: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

fn tally(result: &Result<ApplyOutcome, ApplyError>) {
    let kind = match result {
        Ok(o) if o.applied => "applied".to_owned(),
        Ok(o) if o.changed => "dry run".to_owned(),
        Ok(_) => "no-op".to_owned(),
        Err(e) => format!("{e}")
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned(),
    };
    *TALLY.lock().unwrap().entry(kind).or_default() += 1;
}

#[test]
fn object_changes_are_whole_state_applies_of_their_result() {
    let mut runner = TestRunner::new(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&prop::collection::vec(step(), 1..14), |steps| {
            run_case(&steps);
            Ok(())
        })
        .unwrap();
    let tally = TALLY.lock().unwrap();
    eprintln!("outcomes: {tally:?}");
    // The generator must reach every kind of answer, or the test proves little.
    for kind in [
        "applied",
        "dry run",
        "no-op",
        "invalid configuration",
        "unknown object",
        // Changes of ports compiled as a patch of the running snapshot, each compared
        // with a compile from scratch by the test build.
        "patched",
    ] {
        assert!(
            tally.get(kind).is_some_and(|n| *n > 0),
            "no {kind:?} in {tally:?}"
        );
    }
}
