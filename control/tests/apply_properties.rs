//! Property test of [`Engine::apply`] over random sequences of edits to a running,
//! persisting, in-process engine (mem ports, unpinned worker, small pool).
//!
//! Each case starts an engine on a valid base configuration and applies a sequence of
//! edits to whatever state is running: valid ones (add or remove a port or a network, set
//! a free address, a free VLAN ID, an MTU in range, roll back to a retained generation)
//! and invalid or unsupported ones (random MAC and IP strings, duplicates, out-of-range
//! numbers, references to missing objects, duplicate ids, a vhost-user binding (accepted,
//! in client mode), a stale
//! `expect_generation`, an unknown generation to roll back to). Every edit is first tried
//! as a dry run, then applied. The invariants:
//!
//! - a dry run never changes the generation, the running state or any file in the state
//!   directory, and answers as the real apply does;
//! - a change that is accepted bumps the generation by one, writes `gen-<N>.json` holding
//!   exactly the applied state, leaves every older file byte-identical (or pruned, oldest
//!   first), and the engine then runs exactly the applied state; an identical state is a
//!   no-op;
//! - a change that is refused leaves the generation, the running state and every byte of
//!   every file in the state directory as they were; `Invalid` lists at least one error,
//!   each with a path starting with a top-level key, `Unsupported` names a path;
//! - an independent oracle (written here from the documented rules, not from the
//!   validator's code) says for most edits whether the result must be accepted, refused
//!   as invalid (often at which path) or refused as unsupported; any disagreement fails.

use pollux_testkit::TempDir;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use pollux_control::binding::MemWires;
use pollux_control::compile::MAX_MTU as DATAPLANE_MAX_MTU;
use pollux_control::diff::diff;
use pollux_control::engine::{
    ApplyError, ApplyOptions, ApplyOutcome, Engine, EngineConfig, Initial, PortStatus,
};
use pollux_control::model::{
    Binding, DesiredState, FixedIp, Network, NetworkType, Port, Subnet, VhostUserMode,
    TOP_LEVEL_KEYS,
};
use pollux_control::store::Store;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde_json::Value;

/// Random cases (each its own engine and state directory).
const CASES: u32 = 128;
/// Generations the store retains.
const HISTORY: usize = 16;

/// The base configuration: one uplink, three VLAN networks with a subnet each (one a /28,
/// so that random addresses inside it, and its reserved ones, come up often), six ports
/// with fixed IPs (p6 reuses p1's MAC on another network, which is allowed), a router.
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
segmentation_id = 200

[[networks]]
id = "net-c"
network_type = "vlan"
physical_network = "physnet1"
segmentation_id = 300

[[subnets]]
id = "sub-a"
network_id = "net-a"
cidr = "10.0.1.0/24"
gateway_ip = "10.0.1.1"

[[subnets]]
id = "sub-b"
network_id = "net-b"
cidr = "10.0.2.0/24"
gateway_ip = "10.0.2.1"

[[subnets]]
id = "sub-c"
network_id = "net-c"
cidr = "10.0.3.0/28"
gateway_ip = "10.0.3.1"

[[ports]]
id = "p1"
network_id = "net-a"
mac_address = "fa:16:3e:00:00:01"
fixed_ips = [{ subnet_id = "sub-a", ip_address = "10.0.1.11" }]
binding = { driver = "mem" }

[[ports]]
id = "p2"
network_id = "net-a"
mac_address = "fa:16:3e:00:00:02"
fixed_ips = [{ subnet_id = "sub-a", ip_address = "10.0.1.12" }]
binding = { driver = "mem" }

[[ports]]
id = "p3"
network_id = "net-b"
mac_address = "fa:16:3e:00:00:03"
fixed_ips = [{ subnet_id = "sub-b", ip_address = "10.0.2.13" }]
binding = { driver = "mem" }

[[ports]]
id = "p4"
network_id = "net-b"
mac_address = "fa:16:3e:00:00:04"
fixed_ips = [{ subnet_id = "sub-b", ip_address = "10.0.2.14" }]
binding = { driver = "mem" }

[[ports]]
id = "p5"
network_id = "net-c"
mac_address = "fa:16:3e:00:00:05"
fixed_ips = [{ subnet_id = "sub-c", ip_address = "10.0.3.5" }]
binding = { driver = "mem" }

[[ports]]
id = "p6"
network_id = "net-c"
mac_address = "fa:16:3e:00:00:01"
fixed_ips = [{ subnet_id = "sub-c", ip_address = "10.0.3.6" }]
binding = { driver = "mem" }

[[routers]]
id = "r1"
interfaces = ["sub-a", "sub-b"]
"#;

fn base_state() -> DesiredState {
    DesiredState::from_toml_str(BASE).expect("the base configuration parses")
}

fn engine_config() -> EngineConfig {
    EngineConfig {
        cores: vec![None],
        pool_frames: 8192,
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------
// Temp directory and state-directory snapshots.

/// Every file of `dir`: name → bytes.
fn dir_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .expect("list the state directory")
        .map(|e| e.expect("directory entry"))
        // The DHCP lease directory: no client runs here, so nothing writes in it.
        .filter(|e| !e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| {
            let name = e.file_name().into_string().expect("UTF-8 file name");
            let bytes = fs::read(e.path()).expect("read a state file");
            (name, bytes)
        })
        .collect()
}

fn gen_file(generation: u64) -> String {
    format!("gen-{generation:020}.json")
}

// ---------------------------------------------------------------------------------------
// Edits.

#[derive(Clone, Debug)]
enum MacChoice {
    /// Six random bytes, well formed (half of them multicast, a few zero).
    Bytes([u8; 6]),
    /// Another port's MAC (possibly the port's own, or one on another network).
    CopyOf(usize),
    /// Any text.
    Text(String),
}

#[derive(Clone, Debug)]
enum IpChoice {
    /// An address inside the port's subnet (offset modulo its size).
    InSubnet(u32),
    /// Any address.
    Any(u32),
    /// Another port's first fixed IP.
    CopyOf(usize),
    /// The subnet's gateway.
    Gateway,
    /// The subnet's network address.
    NetworkAddr,
    /// The subnet's broadcast address.
    Broadcast,
}

#[derive(Clone, Debug)]
enum VidChoice {
    Any(i64),
    /// Another network's segmentation_id.
    CopyOf(usize),
}

#[derive(Clone, Debug)]
enum Edit {
    AddPort { net: usize },
    RemovePort { port: usize },
    SetMac { port: usize, mac: MacChoice },
    SetIp { port: usize, ip: IpChoice },
    SetSegmentationId { net: usize, vid: VidChoice },
    PortToMissingNetwork { port: usize },
    FixedIpToMissingSubnet { port: usize },
    AddDuplicateNetwork { net: usize },
    AddNetwork { with_subnet: bool },
    RemoveNetwork { net: usize },
    SetNetworkMtu { net: usize, mtu: i64 },
    SetUplinkMtu { mtu: i64 },
    SetMacAging { secs: i64 },
    VhostUser { port: usize },
    StaleGeneration { ahead: bool },
    Rollback { pick: usize },
    RollbackUnknown,
}

fn mac_choice() -> impl Strategy<Value = MacChoice> {
    prop_oneof![
        4 => prop::array::uniform6(any::<u8>()).prop_map(MacChoice::Bytes),
        // Mostly unicast, locally administered: valid unless duplicate.
        2 => prop::array::uniform6(any::<u8>()).prop_map(|mut b| {
            b[0] = (b[0] & 0xfc) | 0x02;
            MacChoice::Bytes(b)
        }),
        3 => any::<usize>().prop_map(MacChoice::CopyOf),
        2 => "[0-9a-fA-F:xg -]{0,20}".prop_map(MacChoice::Text),
        1 => prop::array::uniform6(any::<u8>()).prop_map(|b| MacChoice::Text(format!(
            "{:02X}:{:02X}:{:02X}:{:02X}:{:02X}:{:02X}",
            b[0] & 0xfe, b[1], b[2], b[3], b[4], b[5]
        ))),
        1 => Just(MacChoice::Bytes([0; 6])),
    ]
}

fn ip_choice() -> impl Strategy<Value = IpChoice> {
    prop_oneof![
        4 => any::<u32>().prop_map(IpChoice::InSubnet),
        2 => any::<u32>().prop_map(IpChoice::Any),
        3 => any::<usize>().prop_map(IpChoice::CopyOf),
        1 => Just(IpChoice::Gateway),
        1 => Just(IpChoice::NetworkAddr),
        1 => Just(IpChoice::Broadcast),
    ]
}

fn vid_choice() -> impl Strategy<Value = VidChoice> {
    prop_oneof![
        2 => any::<i64>().prop_map(VidChoice::Any),
        4 => (-3i64..4100).prop_map(VidChoice::Any),
        3 => any::<usize>().prop_map(VidChoice::CopyOf),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => any::<usize>().prop_map(|net| Edit::AddPort { net }),
        2 => any::<usize>().prop_map(|port| Edit::RemovePort { port }),
        4 => (any::<usize>(), mac_choice()).prop_map(|(port, mac)| Edit::SetMac { port, mac }),
        4 => (any::<usize>(), ip_choice()).prop_map(|(port, ip)| Edit::SetIp { port, ip }),
        3 => (any::<usize>(), vid_choice())
            .prop_map(|(net, vid)| Edit::SetSegmentationId { net, vid }),
        1 => any::<usize>().prop_map(|port| Edit::PortToMissingNetwork { port }),
        1 => any::<usize>().prop_map(|port| Edit::FixedIpToMissingSubnet { port }),
        1 => any::<usize>().prop_map(|net| Edit::AddDuplicateNetwork { net }),
        2 => any::<bool>().prop_map(|with_subnet| Edit::AddNetwork { with_subnet }),
        1 => any::<usize>().prop_map(|net| Edit::RemoveNetwork { net }),
        1 => (any::<usize>(), prop_oneof![any::<i64>(), 0i64..10_000, 1400i64..1800])
            .prop_map(|(net, mtu)| Edit::SetNetworkMtu { net, mtu }),
        1 => prop_oneof![any::<i64>(), 0i64..10_000, Just(9000i64), 1400i64..1800]
            .prop_map(|mtu| Edit::SetUplinkMtu { mtu }),
        1 => prop_oneof![
            any::<i64>(),
            -2i64..5,
            Just(i64::from(u32::MAX)),
            Just(i64::from(u32::MAX) + 1)
        ]
        .prop_map(|secs| Edit::SetMacAging { secs }),
        1 => any::<usize>().prop_map(|port| Edit::VhostUser { port }),
        1 => any::<bool>().prop_map(|ahead| Edit::StaleGeneration { ahead }),
        2 => any::<usize>().prop_map(|pick| Edit::Rollback { pick }),
        1 => Just(Edit::RollbackUnknown),
    ]
}

// ---------------------------------------------------------------------------------------
// The oracle: the documented rules, written independently of the validator.

/// What the engine must answer.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Expect {
    /// Accepted (applied, or a no-op when identical).
    Ok,
    /// Refused as invalid; when known, a path that must be among the errors.
    Invalid(Option<String>),
    /// Valid but refused as unsupported by the data plane.
    Unsupported,
    /// Refused: `expect_generation` is stale.
    Mismatch,
    /// Refused: the generation to roll back to is not retained.
    UnknownGeneration,
}

// A few ops live at a time; boxing the state would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
enum Op {
    Apply {
        state: DesiredState,
        expect_generation: Option<u64>,
    },
    Rollback(u64),
}

#[derive(Debug)]
struct Planned {
    what: String,
    op: Op,
    expect: Expect,
}

/// Fresh names for one case.
#[derive(Debug, Default)]
struct Fresh(u32);

impl Fresh {
    fn next(&mut self) -> u32 {
        self.0 += 1;
        self.0
    }
}

/// `s` as a MAC: six colon-separated pairs of hex digits.
fn oracle_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 || !p.chars().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

/// A MAC a port may have: well formed, unicast, not zero.
fn oracle_station_mac(s: &str) -> Option<[u8; 6]> {
    oracle_mac(s).filter(|m| m[0] & 1 == 0 && *m != [0; 6])
}

fn fmt_mac(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// (network address, prefix length) of a CIDR of the (valid) running state.
fn cidr_of(s: &str) -> (u32, u8) {
    let (a, p) = s.split_once('/').expect("a CIDR");
    (
        u32::from(a.parse::<Ipv4Addr>().expect("an address")),
        p.parse().expect("a prefix length"),
    )
}

fn cidr_size(prefix: u8) -> u64 {
    1u64 << (32 - u32::from(prefix))
}

fn cidr_contains((net, prefix): (u32, u8), ip: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    ip & mask == net
}

fn broadcast((net, prefix): (u32, u8)) -> u32 {
    (u64::from(net) + cidr_size(prefix) - 1) as u32
}

fn subnet<'a>(state: &'a DesiredState, id: &str) -> Option<&'a Subnet> {
    state.subnets.iter().find(|s| s.id == id)
}

fn uplink_mtu(state: &DesiredState, physnet: Option<&str>) -> i64 {
    state
        .uplinks
        .iter()
        .find(|u| Some(u.physnet.as_str()) == physnet)
        .and_then(|u| u.mtu)
        .unwrap_or(1500)
}

/// Addresses in use on network `network_id` by anyone but port `except`: subnet gateways,
/// DHCP server addresses (by default a subnet's last host address) and other ports'
/// fixed IPs.
fn used_ips(state: &DesiredState, network_id: &str, except: Option<usize>) -> HashSet<u32> {
    let on_net =
        |subnet_id: &str| subnet(state, subnet_id).is_some_and(|s| s.network_id == network_id);
    let mut used: HashSet<u32> = state
        .subnets
        .iter()
        .filter(|s| s.network_id == network_id)
        .filter_map(|s| s.gateway_ip.as_deref())
        .map(|g| u32::from(g.parse::<Ipv4Addr>().expect("gateway")))
        .collect();
    for s in state.subnets.iter() {
        if s.network_id == network_id && s.enable_dhcp {
            used.insert(match s.dhcp_server_ip.as_deref() {
                Some(ip) => u32::from(ip.parse::<Ipv4Addr>().expect("DHCP server IP")),
                None => broadcast(cidr_of(&s.cidr)) - 1,
            });
        }
    }
    for (i, p) in state.ports.iter().enumerate() {
        if Some(i) == except {
            continue;
        }
        for f in &p.fixed_ips {
            if on_net(&f.subnet_id) {
                used.insert(u32::from(f.ip_address.parse::<Ipv4Addr>().expect("ip")));
            }
        }
    }
    used
}

/// MACs of ports on `network_id` other than port `except`.
fn used_macs(state: &DesiredState, network_id: &str, except: Option<usize>) -> HashSet<[u8; 6]> {
    state
        .ports
        .iter()
        .enumerate()
        .filter(|(i, p)| Some(*i) != except && p.network_id == network_id)
        .filter_map(|(_, p)| oracle_mac(&p.mac_address))
        .collect()
}

/// Whether every port network `n`'s frames cross can carry chains of pool frames (what a
/// frame larger than one pool frame is): `mem`, tap and vhost-user ports, through a
/// `mem`, tap or vhost-user uplink for a flat or VLAN network; never through a tunnel.
fn carries_chains(state: &DesiredState, n: &Network) -> bool {
    let chains = |b: &Binding| {
        matches!(
            b,
            Binding::Mem {} | Binding::Tap { .. } | Binding::VhostUser { .. }
        )
    };
    let through = match n.network_type {
        NetworkType::Local => true,
        NetworkType::Flat | NetworkType::Vlan => state
            .uplinks
            .iter()
            .find(|u| Some(u.physnet.as_str()) == n.physical_network.as_deref())
            .is_some_and(|u| chains(&u.binding)),
        _ => false,
    };
    through
        && state
            .ports
            .iter()
            .filter(|p| p.network_id == n.id)
            .all(|p| p.binding.as_ref().is_some_and(chains))
}

/// What the engine must answer for a state that passes validation: unsupported when a
/// network's MTU exceeds what one of the data plane's buffers holds and one of the ports
/// its frames cross cannot carry chains of them, or a port is neither `mem` nor
/// `vhost-user` (the only drivers that open without root and a kernel interface).
fn expect_valid(state: &DesiredState) -> Expect {
    let mtu_too_big = state.networks.iter().any(|n| {
        n.mtu
            .unwrap_or_else(|| uplink_mtu(state, n.physical_network.as_deref()))
            > i64::from(DATAPLANE_MAX_MTU)
            && !carries_chains(state, n)
    });
    let not_mem = state
        .ports
        .iter()
        .filter_map(|p| p.binding.as_ref())
        .chain(state.uplinks.iter().map(|u| &u.binding))
        .any(|b| !matches!(b, Binding::Mem {} | Binding::VhostUser { .. }));
    if mtu_too_big || not_mem {
        Expect::Unsupported
    } else {
        Expect::Ok
    }
}

fn fresh_vid(state: &DesiredState) -> i64 {
    let used: HashSet<i64> = state
        .networks
        .iter()
        .filter_map(|n| n.segmentation_id)
        .collect();
    (500..=4094)
        .find(|v| !used.contains(v))
        .expect("a free VLAN ID")
}

fn fresh_mac(state: &DesiredState, network_id: &str, fresh: &mut Fresh) -> String {
    let used = used_macs(state, network_id, None);
    loop {
        let n = fresh.next();
        let mac = [0xfa, 0x16, 0x3e, 0xa0, (n >> 8) as u8, n as u8];
        if !used.contains(&mac) {
            return fmt_mac(mac);
        }
    }
}

/// Plans `edit` against the running state; `None` when it does not apply (no port to
/// edit, ...).
fn plan(edit: &Edit, engine: &Engine, fresh: &mut Fresh) -> Option<Planned> {
    let current = engine.state();
    let mut s = current.clone();
    let apply = |state: DesiredState| Op::Apply {
        state,
        expect_generation: None,
    };
    let pick = |len: usize, i: usize| (len > 0).then(|| i % len);
    let planned = match edit {
        Edit::AddPort { net } => {
            let j = pick(s.networks.len(), *net)?;
            let network_id = s.networks[j].id.clone();
            let mac_address = fresh_mac(&s, &network_id, fresh);
            let mut fixed_ips = Vec::new();
            if let Some(sub) = s.subnets.iter().find(|x| x.network_id == network_id) {
                let cidr = cidr_of(&sub.cidr);
                let used = used_ips(&s, &network_id, None);
                let hosts = (u64::from(cidr.0) + 1)..(u64::from(broadcast(cidr)));
                if let Some(ip) = hosts.map(|h| h as u32).find(|h| !used.contains(h)) {
                    fixed_ips.push(FixedIp {
                        subnet_id: sub.id.clone(),
                        ip_address: Ipv4Addr::from(ip).to_string(),
                    });
                }
            }
            let id = format!("px{}", fresh.next());
            s.ports.push(Port {
                id: id.clone(),
                network_id: network_id.clone(),
                mac_address: mac_address.clone(),
                fixed_ips,
                security_groups: Vec::new(),
                port_security_enabled: true,
                allowed_address_pairs: Vec::new(),
                binding_host_id: None,
                binding: Some(Binding::Mem {}),
                dns_name: None,
                extra_dhcp_opts: Vec::new(),
                qos_policy_id: None,
                device_id: None,
                project_id: None,
            });
            let expect = expect_valid(&s);
            Planned {
                what: format!("add port {id} on {network_id} with MAC {mac_address}"),
                op: apply(s),
                expect,
            }
        }
        Edit::RemovePort { port } => {
            let i = pick(s.ports.len(), *port)?;
            let p = s.ports.remove(i);
            let expect = expect_valid(&s);
            Planned {
                what: format!("remove port {}", p.id),
                op: apply(s),
                expect,
            }
        }
        Edit::SetMac { port, mac } => {
            let i = pick(s.ports.len(), *port)?;
            let text = match mac {
                MacChoice::Bytes(b) => fmt_mac(*b),
                MacChoice::CopyOf(j) => s.ports[j % s.ports.len()].mac_address.clone(),
                MacChoice::Text(t) => t.clone(),
            };
            let network_id = s.ports[i].network_id.clone();
            let expect = match oracle_station_mac(&text) {
                None => Expect::Invalid(Some(format!("ports[{i}].mac_address"))),
                Some(m) if used_macs(&s, &network_id, Some(i)).contains(&m) => {
                    Expect::Invalid(None)
                }
                Some(_) => Expect::Ok,
            };
            s.ports[i].mac_address = text.clone();
            Planned {
                what: format!("set the MAC of port {} to {text:?}", s.ports[i].id),
                op: apply(s),
                expect,
            }
        }
        Edit::SetIp { port, ip } => {
            let i = pick(s.ports.len(), *port)?;
            let fixed = s.ports[i].fixed_ips.first()?.clone();
            let sub = subnet(&s, &fixed.subnet_id).expect("valid state").clone();
            let cidr = cidr_of(&sub.cidr);
            let gateway = sub
                .gateway_ip
                .as_deref()
                .map(|g| u32::from(g.parse::<Ipv4Addr>().expect("gateway")));
            let addr = match ip {
                IpChoice::InSubnet(off) => {
                    (u64::from(cidr.0) + u64::from(*off) % cidr_size(cidr.1)) as u32
                }
                IpChoice::Any(a) => *a,
                IpChoice::CopyOf(j) => {
                    let other = &s.ports[j % s.ports.len()];
                    let f = other.fixed_ips.first()?;
                    u32::from(f.ip_address.parse::<Ipv4Addr>().expect("ip"))
                }
                IpChoice::Gateway => gateway?,
                IpChoice::NetworkAddr => cidr.0,
                IpChoice::Broadcast => broadcast(cidr),
            };
            let path = format!("ports[{i}].fixed_ips[0].ip_address");
            let reserved = cidr.1 <= 30 && (addr == cidr.0 || addr == broadcast(cidr));
            let expect = if !cidr_contains(cidr, addr) || reserved || Some(addr) == gateway {
                Expect::Invalid(Some(path))
            } else if used_ips(&s, &s.ports[i].network_id, Some(i)).contains(&addr) {
                Expect::Invalid(None)
            } else {
                Expect::Ok
            };
            let text = Ipv4Addr::from(addr).to_string();
            s.ports[i].fixed_ips[0].ip_address = text.clone();
            Planned {
                what: format!(
                    "set the fixed IP of port {} (subnet {}) to {text}",
                    s.ports[i].id, sub.cidr
                ),
                op: apply(s),
                expect,
            }
        }
        Edit::SetSegmentationId { net, vid } => {
            let j = pick(s.networks.len(), *net)?;
            let v = match vid {
                VidChoice::Any(v) => *v,
                VidChoice::CopyOf(k) => s.networks[k % s.networks.len()].segmentation_id?,
            };
            let physnet = s.networks[j].physical_network.clone();
            let expect = if !(1..=4094).contains(&v) {
                Expect::Invalid(Some(format!("networks[{j}].segmentation_id")))
            } else if s.networks.iter().enumerate().any(|(k, n)| {
                k != j
                    && n.network_type == NetworkType::Vlan
                    && n.physical_network == physnet
                    && n.segmentation_id == Some(v)
            }) {
                Expect::Invalid(None)
            } else {
                Expect::Ok
            };
            s.networks[j].segmentation_id = Some(v);
            Planned {
                what: format!("set the VLAN ID of network {} to {v}", s.networks[j].id),
                op: apply(s),
                expect,
            }
        }
        Edit::PortToMissingNetwork { port } => {
            let i = pick(s.ports.len(), *port)?;
            s.ports[i].network_id = "no-such-network".into();
            Planned {
                what: format!("move port {} to a missing network", s.ports[i].id),
                op: apply(s),
                expect: Expect::Invalid(Some(format!("ports[{i}].network_id"))),
            }
        }
        Edit::FixedIpToMissingSubnet { port } => {
            let i = pick(s.ports.len(), *port)?;
            let p = &mut s.ports[i];
            match p.fixed_ips.first_mut() {
                Some(f) => f.subnet_id = "no-such-subnet".into(),
                None => p.fixed_ips.push(FixedIp {
                    subnet_id: "no-such-subnet".into(),
                    ip_address: "10.0.1.99".into(),
                }),
            }
            Planned {
                what: format!("point a fixed IP of port {} at a missing subnet", p.id),
                op: apply(s),
                expect: Expect::Invalid(Some(format!("ports[{i}].fixed_ips[0].subnet_id"))),
            }
        }
        Edit::AddDuplicateNetwork { net } => {
            let j = pick(s.networks.len(), *net)?;
            let mut dup = s.networks[j].clone();
            dup.segmentation_id = Some(fresh_vid(&s));
            let m = s.networks.len();
            let id = dup.id.clone();
            s.networks.push(dup);
            Planned {
                what: format!("add a second network with id {id}"),
                op: apply(s),
                expect: Expect::Invalid(Some(format!("networks[{m}].id"))),
            }
        }
        Edit::AddNetwork { with_subnet } => {
            let n = fresh.next();
            let id = format!("nx{n}");
            let vid = fresh_vid(&s);
            s.networks.push(Network {
                id: id.clone(),
                name: None,
                network_type: NetworkType::Vlan,
                physical_network: Some("physnet1".into()),
                segmentation_id: Some(vid),
                mtu: None,
                admin_state_up: true,
                dns_domain: None,
                qos_policy_id: None,
            });
            if *with_subnet {
                let octet = n % 250;
                s.subnets.push(Subnet {
                    id: format!("sx{n}"),
                    network_id: id.clone(),
                    ip_version: None,
                    cidr: format!("172.16.{octet}.0/24"),
                    gateway_ip: Some(format!("172.16.{octet}.1")),
                    enable_dhcp: true,
                    dns_nameservers: Vec::new(),
                    host_routes: Vec::new(),
                    allocation_pools: None,
                    dhcp_server_ip: None,
                    dhcp_lease_duration: None,
                    dhcp_serve_unknown: false,
                });
            }
            let expect = expect_valid(&s);
            Planned {
                what: format!("add network {id} (VLAN {vid}, subnet: {with_subnet})"),
                op: apply(s),
                expect,
            }
        }
        Edit::RemoveNetwork { net } => {
            let j = pick(s.networks.len(), *net)?;
            let gone = s.networks.remove(j).id;
            let gone_subnets: HashSet<String> = s
                .subnets
                .iter()
                .filter(|x| x.network_id == gone)
                .map(|x| x.id.clone())
                .collect();
            s.subnets.retain(|x| x.network_id != gone);
            s.ports.retain(|p| p.network_id != gone);
            for r in &mut s.routers {
                r.interfaces.retain(|i| !gone_subnets.contains(i));
            }
            let expect = expect_valid(&s);
            Planned {
                what: format!("remove network {gone} with its subnets and ports"),
                op: apply(s),
                expect,
            }
        }
        Edit::SetNetworkMtu { net, mtu } => {
            let j = pick(s.networks.len(), *net)?;
            let limit = uplink_mtu(&s, s.networks[j].physical_network.as_deref());
            s.networks[j].mtu = Some(*mtu);
            let expect = if (68..=limit.min(9000)).contains(mtu) {
                expect_valid(&s)
            } else {
                Expect::Invalid(Some(format!("networks[{j}].mtu")))
            };
            Planned {
                what: format!("set the MTU of network {} to {mtu}", s.networks[j].id),
                op: apply(s),
                expect,
            }
        }
        Edit::SetUplinkMtu { mtu } => {
            s.uplinks.first_mut()?.mtu = Some(*mtu);
            let expect = if !(68..=9000).contains(mtu) {
                Expect::Invalid(Some("uplinks[0].mtu".into()))
            } else if s.networks.iter().any(|n| n.mtu.is_some_and(|m| m > *mtu)) {
                Expect::Invalid(None)
            } else {
                expect_valid(&s)
            };
            Planned {
                what: format!("set the MTU of the uplink to {mtu}"),
                op: apply(s),
                expect,
            }
        }
        Edit::SetMacAging { secs } => {
            s.l2.mac_aging_secs = *secs;
            let expect = if (1..=i64::from(u32::MAX)).contains(secs) {
                Expect::Ok
            } else {
                Expect::Invalid(Some("l2.mac_aging_secs".into()))
            };
            Planned {
                what: format!("set l2.mac_aging_secs to {secs}"),
                op: apply(s),
                expect,
            }
        }
        Edit::VhostUser { port } => {
            let i = pick(s.ports.len(), *port)?;
            // A client-mode port only connects (and retries) in the background: the apply
            // succeeds whether or not a VM is there.
            s.ports[i].binding = Some(Binding::VhostUser {
                socket: format!("/tmp/pollux-apply-properties-{}.sock", fresh.next()),
                mode: Some(VhostUserMode::Client),
            });
            // Accepted on a jumbo network too: vhost-user ports carry chains.
            let expect = expect_valid(&s);
            Planned {
                what: format!("bind port {} to a vhost-user socket", s.ports[i].id),
                op: apply(s),
                expect,
            }
        }
        Edit::StaleGeneration { ahead } => {
            let g = engine.generation();
            let stale = if *ahead || g == 0 { g + 1 } else { g - 1 };
            s.l2.mac_limit_per_network = if s.l2.mac_limit_per_network == 4096 {
                8192
            } else {
                4096
            };
            Planned {
                what: format!("a valid change expecting generation {stale} (running {g})"),
                op: Op::Apply {
                    state: s,
                    expect_generation: Some(stale),
                },
                expect: Expect::Mismatch,
            }
        }
        Edit::Rollback { pick: k } => {
            let history = engine.history();
            let g = history[k % history.len()].0;
            Planned {
                what: format!("roll back to generation {g} (retained: {history:?})"),
                op: Op::Rollback(g),
                expect: Expect::Ok,
            }
        }
        Edit::RollbackUnknown => {
            let g = engine.generation() + 1000;
            Planned {
                what: format!("roll back to generation {g}, never applied"),
                op: Op::Rollback(g),
                expect: Expect::UnknownGeneration,
            }
        }
    };
    Some(planned)
}

// ---------------------------------------------------------------------------------------
// Running one step and checking it.

fn run(engine: &mut Engine, op: &Op, dry_run: bool) -> Result<ApplyOutcome, ApplyError> {
    match op {
        Op::Apply {
            state,
            expect_generation,
        } => engine.apply(
            state.clone(),
            ApplyOptions {
                dry_run,
                expect_generation: *expect_generation,
            },
        ),
        Op::Rollback(g) => engine.rollback(
            *g,
            ApplyOptions {
                dry_run,
                expect_generation: None,
            },
        ),
    }
}

/// The kind of an answer, to compare a dry run with the real apply.
fn kind(result: &Result<ApplyOutcome, ApplyError>) -> String {
    match result {
        Ok(o) => format!("Ok(changed: {})", o.changed),
        Err(ApplyError::Invalid(_)) => "Invalid".into(),
        Err(ApplyError::Unsupported { .. }) => "Unsupported".into(),
        Err(ApplyError::GenerationMismatch { .. }) => "GenerationMismatch".into(),
        Err(ApplyError::UnknownGeneration { .. }) => "UnknownGeneration".into(),
        Err(e) => format!("other error: {e}"),
    }
}

fn path_is_rooted(path: &str) -> bool {
    TOP_LEVEL_KEYS.iter().any(|k| {
        path == *k
            || path
                .strip_prefix(k)
                .is_some_and(|rest| rest.starts_with('[') || rest.starts_with('.'))
    })
}

fn step(engine: &mut Engine, wires: &MemWires, dir: &Path, n: usize, planned: Planned) {
    let Planned { what, op, expect } = planned;
    let ctx = format!("step {n}: {what}");
    let before_gen = engine.generation();
    let before_state = engine.state().clone();
    let before_files = dir_files(dir);
    assert!(
        before_files.contains_key(&gen_file(before_gen)),
        "{ctx}: the running generation {before_gen} has no file; files: {:?}",
        before_files.keys().collect::<Vec<_>>()
    );
    // The state a successful apply must leave running.
    let target = match &op {
        Op::Apply { state, .. } => Some(state.clone()),
        Op::Rollback(g) => engine.state_of(*g).ok(),
    };

    // A dry run changes nothing.
    let dry = run(engine, &op, true);
    assert_eq!(
        engine.generation(),
        before_gen,
        "{ctx}: a dry run changed the generation"
    );
    assert!(
        *engine.state() == before_state,
        "{ctx}: a dry run changed the running state"
    );
    assert!(
        dir_files(dir) == before_files,
        "{ctx}: a dry run changed the state directory"
    );
    if let Ok(o) = &dry {
        assert!(!o.applied, "{ctx}: a dry run says it applied");
        assert_eq!(
            o.generation, before_gen,
            "{ctx}: a dry run reports another generation"
        );
    }

    let result = run(engine, &op, false);
    tally(kind(&result));
    assert_eq!(
        kind(&dry),
        kind(&result),
        "{ctx}: the dry run and the apply disagree ({dry:?} vs {result:?})"
    );

    match &result {
        Ok(o) => {
            let target = target.expect("an accepted change has a target state");
            if o.changed {
                let next = before_gen + 1;
                assert!(o.applied, "{ctx}: changed but not applied: {o:?}");
                assert_eq!(o.generation, next, "{ctx}: outcome generation");
                assert_eq!(engine.generation(), next, "{ctx}: engine generation");
                assert!(
                    *engine.state() == target,
                    "{ctx}: the running state is not the applied state"
                );
                check_committed(dir, &ctx, &before_files, next, &target);
                assert_eq!(
                    engine.history().first().map(|h| h.0),
                    Some(next),
                    "{ctx}: history does not start with the new generation"
                );
            } else {
                assert!(!o.applied, "{ctx}: unchanged but applied");
                assert_eq!(engine.generation(), before_gen, "{ctx}: a no-op bumped");
                assert!(
                    *engine.state() == before_state,
                    "{ctx}: a no-op changed the state"
                );
                assert!(
                    diff(&before_state, &target).is_empty(),
                    "{ctx}: reported unchanged but the diff is not empty"
                );
                assert!(
                    dir_files(dir) == before_files,
                    "{ctx}: a no-op changed the state directory"
                );
            }
        }
        Err(e) => {
            assert_eq!(
                engine.generation(),
                before_gen,
                "{ctx}: a refused change ({e}) changed the generation"
            );
            assert!(
                *engine.state() == before_state,
                "{ctx}: a refused change ({e}) changed the running state"
            );
            let after = dir_files(dir);
            let changed: Vec<&String> = before_files
                .keys()
                .chain(after.keys())
                .filter(|k| before_files.get(*k) != after.get(*k))
                .collect();
            assert!(
                changed.is_empty(),
                "{ctx}: a refused change ({e}) changed files in the state directory: {changed:?}"
            );
            match e {
                ApplyError::Invalid(errors) => {
                    assert!(!errors.is_empty(), "{ctx}: Invalid without errors");
                    for err in errors {
                        assert!(
                            !err.path.is_empty() && path_is_rooted(&err.path),
                            "{ctx}: error path {:?} does not start with a top-level key \
                             ({err})",
                            err.path
                        );
                    }
                }
                ApplyError::Unsupported { path, .. } => {
                    assert!(!path.is_empty(), "{ctx}: Unsupported without a path ({e})");
                }
                ApplyError::GenerationMismatch { expected, current } => {
                    assert_eq!(
                        *current, before_gen,
                        "{ctx}: mismatch reports another current"
                    );
                    assert_ne!(expected, current, "{ctx}: mismatch on the right generation");
                }
                ApplyError::UnknownGeneration { retained, .. } => {
                    assert!(
                        retained.contains(&before_gen),
                        "{ctx}: the running generation is not retained: {retained:?}"
                    );
                }
                other => panic!("{ctx}: BUG: unexpected error kind for a mem-only engine: {other}"),
            }
        }
    }

    check_ports(engine, wires, &ctx);

    // The oracle.
    match (&expect, &result) {
        (Expect::Ok, Ok(_)) => {}
        (Expect::Ok, Err(e)) => panic!("{ctx}: BUG: a valid change was refused: {e}"),
        (Expect::Invalid(path), Err(ApplyError::Invalid(errors))) => {
            if let Some(path) = path {
                assert!(
                    errors.iter().any(|e| &e.path == path),
                    "{ctx}: expected an error at {path}, got {errors:?}"
                );
            }
        }
        (Expect::Unsupported, Err(ApplyError::Unsupported { .. }))
        | (Expect::Mismatch, Err(ApplyError::GenerationMismatch { .. }))
        | (Expect::UnknownGeneration, Err(ApplyError::UnknownGeneration { .. })) => {}
        (expect, result) => {
            panic!(
                "{ctx}: expected {expect:?}, got {}: {result:?}",
                kind(result)
            )
        }
    }
}

/// The engine runs exactly the ports of its state, all up, and the far end of each is in
/// `wires` (no more: a removed port's is gone).
fn check_ports(engine: &Engine, wires: &MemWires, ctx: &str) {
    let state = engine.state();
    let want: BTreeSet<String> = state
        .ports
        .iter()
        .map(|p| format!("port:{}", p.id))
        .chain(state.uplinks.iter().map(|u| format!("uplink:{}", u.name)))
        .collect();
    let plans: BTreeSet<String> = engine.plans().iter().map(|p| p.key.clone()).collect();
    assert_eq!(plans, want, "{ctx}: the engine's ports are not the state's");
    for p in engine.plans() {
        assert_eq!(
            engine.port_status(p.id),
            PortStatus::Up,
            "{ctx}: port {} is not up",
            p.key
        );
    }
    let wired: BTreeSet<String> = wires
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .keys()
        .cloned()
        .collect();
    // Every mem port has its far end; a port rebound to vhost-user has none.
    let want_wired: BTreeSet<String> = state
        .ports
        .iter()
        .filter(|p| p.binding == Some(Binding::Mem {}))
        .map(|p| format!("port:{}", p.id))
        .chain(
            state
                .uplinks
                .iter()
                .filter(|u| u.binding == Binding::Mem {})
                .map(|u| format!("uplink:{}", u.name)),
        )
        .collect();
    assert_eq!(
        wired, want_wired,
        "{ctx}: the mem wires are not those of the state's ports"
    );
}

/// After an accepted change to generation `next`: its file exists and holds exactly
/// `target`; every other file is as it was, or pruned (the oldest, beyond `HISTORY`).
fn check_committed(
    dir: &Path,
    ctx: &str,
    before: &BTreeMap<String, Vec<u8>>,
    next: u64,
    target: &DesiredState,
) {
    let after = dir_files(dir);
    let name = gen_file(next);
    assert!(!before.contains_key(&name), "{ctx}: {name} existed before");
    let bytes = after
        .get(&name)
        .unwrap_or_else(|| panic!("{ctx}: {name} was not written; files: {:?}", after.keys()));
    let doc: Value = serde_json::from_slice(bytes).expect("the generation file is JSON");
    assert_eq!(
        doc["generation"].as_u64(),
        Some(next),
        "{ctx}: {name}'s generation"
    );
    assert_eq!(
        doc["state"],
        serde_json::to_value(target).expect("the state serialises"),
        "{ctx}: {name} does not hold the applied state"
    );
    for extra in after.keys().filter(|k| **k != name) {
        assert_eq!(
            after.get(extra),
            before.get(extra),
            "{ctx}: {extra} appeared or changed while committing {name}"
        );
    }
    let pruned: Vec<&String> = before.keys().filter(|k| !after.contains_key(*k)).collect();
    let oldest_kept = after.keys().filter(|k| k.starts_with("gen-")).min();
    for p in &pruned {
        assert!(
            Some(*p) < oldest_kept,
            "{ctx}: {p} was removed but is not older than every kept generation"
        );
    }
    let kept = after.keys().filter(|k| k.starts_with("gen-")).count();
    assert!(
        kept <= HISTORY,
        "{ctx}: {kept} generations kept, history is {HISTORY}"
    );
    if !pruned.is_empty() {
        tally("(pruned a generation)".into());
        assert_eq!(kept, HISTORY, "{ctx}: pruned {pruned:?} below the history");
    }
}

fn run_case(edits: &[Edit]) {
    let tmp = TempDir::new();
    let dir = tmp.join("state");
    let store = Store::open(&dir, HISTORY).expect("open the store");
    let wires = MemWires::default();
    let mut engine = Engine::start(
        &engine_config(),
        Initial {
            state: base_state(),
            generation: 1,
            persist: true,
        },
        Some(store),
        Arc::clone(&wires),
    )
    .expect("the base configuration starts");
    assert_eq!(engine.generation(), 1);
    assert!(
        dir_files(&dir).contains_key(&gen_file(1)),
        "generation 1 persisted"
    );

    check_ports(&engine, &wires, "start");
    let mut fresh = Fresh::default();
    for (n, edit) in edits.iter().enumerate() {
        if let Some(planned) = plan(edit, &engine, &mut fresh) {
            step(&mut engine, &wires, &dir, n, planned);
        }
    }

    let final_state = engine.state().clone();
    let final_gen = engine.generation();
    let counters = engine.counters().clone();
    engine.shutdown().expect("the engine shuts down");
    // No traffic was offered: nothing was received, sent or dropped.
    assert_eq!(counters.rx_packets.get(), 0);
    assert_eq!(counters.tx_packets.get(), 0);
    assert_eq!(counters.dropped_total(), 0, "{:?}", counters.drop_summary());
    // What is on disk is what ran last.
    let store = Store::open(&dir, HISTORY).expect("reopen the store");
    let (g, v) = store.current().expect("a current generation");
    assert_eq!(g, final_gen, "the newest file is the running generation");
    assert_eq!(
        *v,
        serde_json::to_value(&final_state).expect("serialise"),
        "the newest file holds the running state"
    );
}

/// Answers seen, by kind, over every case of a test (printed for information).
static TALLY: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

fn tally(kind: String) {
    *TALLY
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(kind)
        .or_default() += 1;
}

#[test]
fn apply_is_all_or_nothing() {
    let config = ProptestConfig {
        cases: CASES,
        // Only the named test files are ours to create: no regressions file.
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let started = std::time::Instant::now();
    let mut runner = TestRunner::new(config);
    let result = runner.run(&prop::collection::vec(edit(), 1..32), |edits| {
        run_case(&edits);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let tally = TALLY.lock().unwrap_or_else(|e| e.into_inner());
    eprintln!(
        "apply_is_all_or_nothing: {CASES} cases in {:.1?}; answers: {tally:?}",
        started.elapsed()
    );
}

/// One fixed sequence that touches every kind of edit, so that each is exercised on every
/// run whatever the random cases draw.
#[test]
fn every_edit_kind_once() {
    let edits = vec![
        Edit::AddPort { net: 0 },
        Edit::SetMac {
            port: 1,
            mac: MacChoice::CopyOf(0),
        },
        Edit::SetMac {
            port: 2,
            mac: MacChoice::Text("fa:16:3e:zz:00:01".into()),
        },
        Edit::SetMac {
            port: 5,
            mac: MacChoice::CopyOf(0),
        },
        Edit::SetIp {
            port: 0,
            ip: IpChoice::CopyOf(1),
        },
        Edit::SetIp {
            port: 4,
            ip: IpChoice::Broadcast,
        },
        Edit::SetIp {
            port: 4,
            ip: IpChoice::InSubnet(9),
        },
        Edit::SetSegmentationId {
            net: 0,
            vid: VidChoice::CopyOf(1),
        },
        Edit::SetSegmentationId {
            net: 0,
            vid: VidChoice::Any(4095),
        },
        Edit::SetSegmentationId {
            net: 0,
            vid: VidChoice::Any(101),
        },
        Edit::PortToMissingNetwork { port: 3 },
        Edit::FixedIpToMissingSubnet { port: 3 },
        Edit::AddDuplicateNetwork { net: 2 },
        Edit::AddNetwork { with_subnet: true },
        Edit::AddPort { net: 3 },
        Edit::SetNetworkMtu { net: 1, mtu: 1501 },
        Edit::SetNetworkMtu { net: 1, mtu: 1400 },
        Edit::SetUplinkMtu { mtu: 9000 },
        Edit::SetUplinkMtu { mtu: 1300 },
        Edit::SetMacAging { secs: 0 },
        Edit::SetMacAging { secs: 600 },
        Edit::VhostUser { port: 0 },
        Edit::StaleGeneration { ahead: true },
        Edit::StaleGeneration { ahead: false },
        Edit::RemoveNetwork { net: 0 },
        Edit::RemovePort { port: 0 },
        Edit::Rollback { pick: 3 },
        Edit::RollbackUnknown,
    ];
    run_case(&edits);
}
