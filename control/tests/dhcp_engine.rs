//! The DHCP server as the engine runs it, on `mem` ports and without root: a VM's
//! DISCOVER/REQUEST go through the worker's punt ring to the DHCP thread and the answers
//! come back out of its port; configuration changes reach the server with the snapshot;
//! leases are persisted in the state directory and restored by a new engine.

use pollux_testkit::TempDir;
use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pollux_control::binding::MemWires;
use pollux_control::engine::{ApplyOptions, Engine, EngineConfig, Initial, LEASE_DIR};
use pollux_control::model::DesiredState;
use pollux_control::rpc::{dispatch_line, Handler, MethodInfo, RpcError};
use pollux_control::service::Service;
use pollux_control::store::Store;
use pollux_dataplane::drop::DropReason;
use pollux_dataplane::slowpath::ServiceId;
use pollux_dataplane::wire::checksum;
use pollux_dataplane::wire::dhcp::{opt, DhcpPacket};
use pollux_drivers::mem::MemWire;
use pollux_services::dhcp::LeaseState;
use serde_json::Value;

const VM1_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 1];
const STRANGER: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 0x99];
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 254);

fn state(vm1_ip: &str, with_vm2: bool) -> DesiredState {
    let vm2 = if with_vm2 {
        r#"
        [[ports]]
        id = "vm2"
        network_id = "net-a"
        mac_address = "fa:16:3e:00:00:02"
        fixed_ips = [{ subnet_id = "sub-a", ip_address = "198.18.1.11" }]
        port_security_enabled = false
        binding = { driver = "mem" }
        "#
    } else {
        ""
    };
    DesiredState::from_toml_str(&format!(
        r#"
        [[networks]]
        id = "net-a"
        network_type = "local"
        mtu = 1400
        dns_domain = "pollux.test"

        [[subnets]]
        id = "sub-a"
        network_id = "net-a"
        cidr = "198.18.1.0/24"
        gateway_ip = "198.18.1.1"
        enable_dhcp = true
        dns_nameservers = ["198.18.1.53"]
        host_routes = [{{ destination = "198.19.0.0/16", nexthop = "198.18.1.1" }}]
        dhcp_lease_duration = 600

        [[ports]]
        id = "vm1"
        network_id = "net-a"
        mac_address = "fa:16:3e:00:00:01"
        fixed_ips = [{{ subnet_id = "sub-a", ip_address = "{vm1_ip}" }}]
        dns_name = "vm1"
        extra_dhcp_opts = [{{ opt_name = "ntp-server", opt_value = "198.18.1.123" }}]
        binding = {{ driver = "mem" }}
        {vm2}
        "#
    ))
    .expect("test state parses")
}

fn start(dir: &TempDir, state: DesiredState, wires: &MemWires) -> Engine {
    let store = Store::open(&dir.join("state"), 8).expect("store");
    let generation = store.current_generation().map_or(1, |g| g + 1);
    Engine::start(
        &EngineConfig {
            cores: vec![None],
            pool_frames: 4096,
            ..Default::default()
        },
        Initial {
            state,
            generation,
            persist: true,
        },
        Some(store),
        Arc::clone(wires),
    )
    .expect("engine starts")
}

fn wire(wires: &MemWires, key: &str) -> MemWire {
    wires
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(key)
        .unwrap_or_else(|| panic!("no wire for {key}"))
}

/// A client message from `mac`: broadcast from 0.0.0.0:68 to 255.255.255.255:67 (or
/// unicast from `ciaddr` to the server), with option 53 = `kind` and `extra` options.
fn client_frame(mac: [u8; 6], kind: u8, ciaddr: Ipv4Addr, extra: &[u8]) -> Vec<u8> {
    let mut dhcp = vec![0u8; 240];
    dhcp[..3].copy_from_slice(&[1, 1, 6]);
    dhcp[4..8].copy_from_slice(&0x0bad_cafe_u32.to_be_bytes());
    dhcp[12..16].copy_from_slice(&ciaddr.octets());
    dhcp[28..34].copy_from_slice(&mac);
    dhcp[236..240].copy_from_slice(&[99, 130, 83, 99]);
    dhcp.extend_from_slice(&[53, 1, kind, 55, 8, 1, 3, 6, 12, 15, 26, 42, 121]);
    dhcp.extend_from_slice(extra);
    dhcp.push(255);
    let (src, dst, dst_mac) = if ciaddr.is_unspecified() {
        (Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, [0xff; 6])
    } else {
        (ciaddr, SERVER_IP, [0x02, 0x70, 0x64, 0, 0, 1])
    };
    let udp_len = 8 + dhcp.len();
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
    f.extend_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    let sum = checksum::checksum(&f[14..34]);
    f[24..26].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&68u16.to_be_bytes());
    f.extend_from_slice(&67u16.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&dhcp);
    f
}

fn request(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    let (i, s) = (ip.octets(), SERVER_IP.octets());
    client_frame(
        mac,
        3,
        Ipv4Addr::UNSPECIFIED,
        &[50, 4, i[0], i[1], i[2], i[3], 54, 4, s[0], s[1], s[2], s[3]],
    )
}

/// Sends `frame` and waits (bounded) for the first frame back on the same wire.
fn exchange(w: &mut MemWire, frame: &[u8]) -> Option<Vec<u8>> {
    exchange_within(w, frame, Duration::from_secs(3))
}

/// Sends `frame` and checks that nothing comes back for a while (the DHCP thread answers
/// within milliseconds when it answers at all).
fn no_answer(w: &mut MemWire, frame: &[u8]) -> bool {
    exchange_within(w, frame, Duration::from_millis(300)).is_none()
}

fn exchange_within(w: &mut MemWire, frame: &[u8], wait: Duration) -> Option<Vec<u8>> {
    assert!(w.send(frame));
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if let Some(f) = w.recv() {
            return Some(f);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

/// The DHCP message in a reply frame and its options by code, after checking the
/// frame's addresses and both checksums.
fn dhcp_of(frame: &[u8]) -> (Vec<u8>, BTreeMap<u8, Vec<u8>>) {
    assert_eq!(&frame[6..9], &[0x02, 0x70, 0x64], "from the DHCP MAC");
    assert_eq!(&frame[12..14], &[0x08, 0x00]);
    assert_eq!(checksum::checksum(&frame[14..34]), 0, "IPv4 checksum");
    assert_eq!(
        &frame[26..30],
        &SERVER_IP.octets(),
        "from the server address"
    );
    let udp = &frame[34..];
    let src = Ipv4Addr::new(frame[26], frame[27], frame[28], frame[29]);
    let dst = Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33]);
    let len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    let pseudo = checksum::pseudo_header_v4(src, dst, 17, len as u16);
    assert_eq!(
        checksum::combine(&[pseudo, checksum::sum(&udp[..len])]),
        0xffff,
        "UDP checksum"
    );
    let msg = udp[8..len].to_vec();
    let p = DhcpPacket::new_checked(&msg[..]).expect("a DHCP message");
    let opts = p
        .options()
        .map(|o| o.map(|o| (o.code, o.data.to_vec())))
        .collect::<Result<_, _>>()
        .expect("options parse");
    (msg, opts)
}

fn yiaddr(msg: &[u8]) -> Ipv4Addr {
    DhcpPacket::new_checked(msg).unwrap().yiaddr()
}

#[test]
fn a_vm_gets_its_address_and_options_through_the_worker() {
    let dir = TempDir::new();
    let wires = MemWires::default();
    let engine = start(&dir, state("198.18.1.10", true), &wires);
    let mut vm1 = wire(&wires, "port:vm1");
    let mut vm2 = wire(&wires, "port:vm2");

    let offer = exchange(
        &mut vm1,
        &client_frame(VM1_MAC, 1, Ipv4Addr::UNSPECIFIED, &[]),
    )
    .expect("an offer");
    let (msg, opts) = dhcp_of(&offer);
    assert_eq!(opts[&opt::MESSAGE_TYPE], [2]);
    assert_eq!(yiaddr(&msg), Ipv4Addr::new(198, 18, 1, 10));
    assert_eq!(opts[&1], [255, 255, 255, 0], "subnet mask");
    assert_eq!(opts[&3], [198, 18, 1, 1], "router");
    assert_eq!(opts[&6], [198, 18, 1, 53], "DNS");
    assert_eq!(opts[&15], b"pollux.test", "domain");
    assert_eq!(opts[&26], 1400u16.to_be_bytes(), "MTU");
    assert_eq!(opts[&51], 600u32.to_be_bytes(), "lease time");
    assert_eq!(opts[&54], SERVER_IP.octets(), "server id");
    assert_eq!(
        opts[&121],
        [0, 198, 18, 1, 1, 16, 198, 19, 198, 18, 1, 1],
        "classless routes, the default route included"
    );
    assert!(vm2.recv_all().is_empty(), "the DISCOVER was not flooded");

    let ack = exchange(&mut vm1, &request(VM1_MAC, Ipv4Addr::new(198, 18, 1, 10))).expect("an ack");
    let (msg, opts) = dhcp_of(&ack);
    assert_eq!(opts[&opt::MESSAGE_TYPE], [5]);
    assert_eq!(yiaddr(&msg), Ipv4Addr::new(198, 18, 1, 10));
    assert_eq!(opts[&12], b"vm1", "hostname");
    assert_eq!(opts[&42], [198, 18, 1, 123], "extra option: ntp-server");

    // ARP for the server's address is answered from its MAC.
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&VM1_MAC);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&VM1_MAC);
    arp.extend_from_slice(&[198, 18, 1, 10, 0, 0, 0, 0, 0, 0]);
    arp.extend_from_slice(&SERVER_IP.octets());
    arp.resize(60, 0);
    let reply = exchange(&mut vm1, &arp).expect("an ARP reply");
    assert_eq!(&reply[20..22], &[0, 2]);
    assert_eq!(&reply[22..25], &[0x02, 0x70, 0x64]);
    assert_eq!(&reply[28..32], &SERVER_IP.octets());

    // A renewal, unicast to the server.
    let mut renew = client_frame(VM1_MAC, 3, Ipv4Addr::new(198, 18, 1, 10), &[]);
    renew[..6].copy_from_slice(&reply[22..28]);
    let ack = exchange(&mut vm1, &renew).expect("an ack to the renewal");
    assert_eq!(dhcp_of(&ack).1[&opt::MESSAGE_TYPE], [5]);
    assert_eq!(&ack[..6], &VM1_MAC, "unicast back to the client");

    // From vm1, port security refuses a foreign MAC before DHCP ever sees it.
    assert!(no_answer(
        &mut vm1,
        &client_frame(STRANGER, 1, Ipv4Addr::UNSPECIFIED, &[])
    ));
    assert_eq!(engine.counters().dropped(DropReason::SpoofedMac), 1);
    // vm2 has port security off (it may bridge other hosts): an unknown MAC behind it
    // reaches the server, gets nothing, and the drop is counted.
    assert!(no_answer(
        &mut vm2,
        &client_frame(STRANGER, 1, Ipv4Addr::UNSPECIFIED, &[])
    ));
    let stats = engine.dhcp_stats();
    assert_eq!(stats.drops.get("unknown_client"), Some(&1), "{stats:?}");
    assert_eq!(
        (stats.server.offers, stats.server.acks),
        (1, 2),
        "{stats:?}"
    );
    assert_eq!(engine.counters().punted.get(), 4);
    assert_eq!(engine.counters().injected.get(), 3);
    // Every punted frame carried the DHCP service's id, and the slow-path thread handed
    // each to the DHCP service, which answered three.
    assert_eq!(
        engine.counters().punted_by_service[ServiceId::DHCP.index()].get(),
        4
    );
    let dispatched = engine.slow_path_stats();
    assert_eq!(dispatched.unhandled, 0);
    // The metadata proxy is registered beside DHCP and saw nothing.
    let count = |service: &str| {
        dispatched
            .services
            .iter()
            .find(|(name, _)| *name == service)
            .map(|(_, c)| *c)
            .unwrap_or_else(|| panic!("no {service} in {dispatched:?}"))
    };
    assert_eq!(dispatched.services.len(), 2, "{dispatched:?}");
    assert_eq!(count("metadata").received, 0, "{dispatched:?}");
    let counts = count("dhcp");
    assert_eq!(
        (counts.received, counts.replies, counts.replies_lost),
        (4, 3, 0)
    );
    let metrics = pollux_control::metrics::render(engine.metrics());
    for line in [
        "pollux_slowpath_punted_total{service=\"dhcp\"} 4\n",
        "pollux_slowpath_received_total{service=\"dhcp\"} 4\n",
        "pollux_slowpath_replies_total{service=\"dhcp\"} 3\n",
        "pollux_slowpath_unhandled_total 0\n",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }

    let leases = engine.leases();
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].lease.ip, Ipv4Addr::new(198, 18, 1, 10));
    assert_eq!(leases[0].lease.state, LeaseState::Bound);
    engine.shutdown().expect("clean shutdown");
}

#[test]
fn changes_reach_the_server_and_leases_survive_a_restart() {
    let dir = TempDir::new();
    let wires = MemWires::default();
    let engine = start(&dir, state("198.18.1.10", true), &wires);
    let mut vm1 = wire(&wires, "port:vm1");
    let ack = exchange(&mut vm1, &request(VM1_MAC, Ipv4Addr::new(198, 18, 1, 10)))
        .expect("an ack (INIT-REBOOT style request)");
    assert_eq!(dhcp_of(&ack).1[&opt::MESSAGE_TYPE], [5]);

    // Restart: the lease comes back from the state directory.
    engine.shutdown().expect("shutdown");
    let lease_files: Vec<_> = fs::read_dir(dir.join("state").join(LEASE_DIR))
        .expect("lease dir")
        .collect();
    assert_eq!(lease_files.len(), 1, "one network, one file");
    let wires = MemWires::default();
    let mut engine = start(&dir, state("198.18.1.10", true), &wires);
    let mut vm1 = wire(&wires, "port:vm1");
    assert_eq!(engine.leases().len(), 1, "restored");

    // The port's address changes: the renewal of the old one gets a NAK, and a new
    // exchange the new address.
    engine
        .apply(state("198.18.1.20", true), ApplyOptions::default())
        .expect("apply");
    assert!(engine.leases().is_empty(), "the old lease ended");
    let nak = exchange(&mut vm1, &request(VM1_MAC, Ipv4Addr::new(198, 18, 1, 10))).expect("a nak");
    assert_eq!(dhcp_of(&nak).1[&opt::MESSAGE_TYPE], [6]);
    let offer = exchange(
        &mut vm1,
        &client_frame(VM1_MAC, 1, Ipv4Addr::UNSPECIFIED, &[]),
    )
    .expect("an offer");
    assert_eq!(yiaddr(&dhcp_of(&offer).0), Ipv4Addr::new(198, 18, 1, 20));

    // DHCP off: the server, its leases and its file go.
    let mut off = state("198.18.1.20", false);
    off.subnets[0].enable_dhcp = false;
    engine.apply(off, ApplyOptions::default()).expect("apply");
    assert!(engine.leases().is_empty());
    assert!(exchange(
        &mut vm1,
        &client_frame(VM1_MAC, 1, Ipv4Addr::UNSPECIFIED, &[])
    )
    .is_none());
    assert_eq!(
        fs::read_dir(dir.join("state").join(LEASE_DIR))
            .expect("lease dir")
            .count(),
        0
    );
    engine.shutdown().expect("shutdown");
}

#[test]
fn made_up_macs_behind_one_port_get_a_bounded_number_of_leases() {
    let dir = TempDir::new();
    let wires = MemWires::default();
    let mut desired = state("198.18.1.10", true);
    desired.subnets[0].dhcp_serve_unknown = true;
    desired.dhcp.leases_per_port = 2;
    let engine = start(&dir, desired, &wires);
    let mut vm1 = wire(&wires, "port:vm1");
    let mut vm2 = wire(&wires, "port:vm2");
    // vm2 bridges other hosts (port security off): each made-up MAC behind it asks.
    let made_up = |n: u8| [0x02, 0xaa, 0, 0, 0, n];
    for n in 0..2 {
        let offer = exchange(
            &mut vm2,
            &client_frame(made_up(n), 1, Ipv4Addr::UNSPECIFIED, &[]),
        )
        .expect("an offer within the port's budget");
        assert_eq!(dhcp_of(&offer).1[&opt::MESSAGE_TYPE], [2]);
    }
    for n in 2..6 {
        assert!(no_answer(
            &mut vm2,
            &client_frame(made_up(n), 1, Ipv4Addr::UNSPECIFIED, &[])
        ));
    }
    let stats = engine.dhcp_stats();
    assert_eq!(stats.drops.get("port_lease_limit"), Some(&4), "{stats:?}");
    // The pool is not drained for others: vm1 still gets its own address.
    let offer = exchange(
        &mut vm1,
        &client_frame(VM1_MAC, 1, Ipv4Addr::UNSPECIFIED, &[]),
    )
    .expect("vm1's offer");
    assert_eq!(yiaddr(&dhcp_of(&offer).0), Ipv4Addr::new(198, 18, 1, 10));
    assert_eq!(engine.leases().len(), 3, "two dynamic offers and vm1's");
    engine.shutdown().expect("clean shutdown");
}

/// The daemon's handler with one method that panics (a bug), as the socket would call it.
struct WithABug(Service);

impl Handler for WithABug {
    fn call(&mut self, method: &str, params: Option<Value>) -> Result<Value, RpcError> {
        if method == "bug.trigger" {
            let _ = self.0.engine.generation();
            panic!("a bug in a handler");
        }
        self.0.call(method, params)
    }
    fn methods(&self) -> Vec<MethodInfo> {
        let mut methods = self.0.methods();
        methods.push(MethodInfo::new("bug.trigger", "bug.trigger -> never"));
        methods
    }
    fn generation(&self) -> u64 {
        self.0.generation()
    }
}

/// A handler that panics is answered with -32603 and the process goes on: the worker
/// keeps forwarding (a DHCP exchange through it, before and after) and the next method
/// is served. Release builds unwind too (`release_profile.rs`), so this holds there.
#[test]
fn a_panicking_handler_neither_stops_forwarding_nor_the_next_method() {
    let dir = TempDir::new();
    let wires = MemWires::default();
    let engine = start(&dir, state("198.18.1.10", true), &wires);
    let mut vm1 = wire(&wires, "port:vm1");
    let discover = client_frame(VM1_MAC, 1, Ipv4Addr::UNSPECIFIED, &[]);
    assert!(exchange(&mut vm1, &discover).is_some(), "an offer before");

    let mut handler = WithABug(Service::new(engine));
    let reply = dispatch_line(
        &mut handler,
        br#"{"jsonrpc":"2.0","id":1,"method":"bug.trigger"}"#,
    )
    .expect("a reply");
    let reply: Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(reply["error"]["code"], -32603, "{reply}");

    assert!(exchange(&mut vm1, &discover).is_some(), "an offer after");
    let reply = dispatch_line(
        &mut handler,
        br#"{"jsonrpc":"2.0","id":2,"method":"stats.get"}"#,
    )
    .expect("a reply");
    let reply: Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(reply["result"]["dhcp"]["offers"], 2, "{reply}");
    handler.0.engine.shutdown().expect("clean shutdown");
}
