//! State that follows a flow, with several workers on mem ports (issue #19): a
//! security-group connection opened through one worker is answered through another, a
//! SNAT session made on one worker translates its replies received by another, floating
//! IPs work both ways; every packet of a flow whose state another worker owns is handed
//! to it (counted), none is lost while the rings have room, a flow keeps its order, and
//! conservation holds summed over the workers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pollux_control::compile::Identities;
use pollux_dataplane::drop::DropReason;
use pollux_dataplane::pipeline::Stage;
use pollux_dataplane::worker::Worker;
use pollux_tests::frames::{arp, internet_checksum, ipv4, tcp, transport_checksum, udp, BROADCAST};
use pollux_tests::port_lab::compile_state;
use pollux_tests::router_lab::*;
use pollux_tests::workers::{assert_conserved, MultiSwitch};

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const SYN_ACK: u8 = 0x12;
const PSH_ACK: u8 = 0x18;

/// Flows per test: enough that, hashed, every worker owns some.
const FLOWS: u16 = 64;

const CLIENT_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 1, 1];
const SERVER_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 1, 2];
const CLIENT_IP: [u8; 4] = [198, 18, 5, 10];
const SERVER_IP: [u8; 4] = [198, 18, 5, 20];

fn mac_text(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A client whose group allows only egress, a server whose group allows TCP 80 in and
/// anything out; both with port security.
fn sg_state() -> String {
    let port = |name: &str, mac: [u8; 6], ip: [u8; 4], group: &str| {
        format!(
            r#"
[[ports]]
id = "{name}"
network_id = "net"
mac_address = "{mac}"
fixed_ips = [{{ subnet_id = "sub", ip_address = "{ip}" }}]
security_groups = ["{group}"]
binding = {{ driver = "mem" }}
"#,
            mac = mac_text(mac),
            ip = std::net::Ipv4Addr::from(ip),
        )
    };
    let mut s = String::from(
        r#"
[[networks]]
id = "net"
network_type = "local"

[[subnets]]
id = "sub"
network_id = "net"
cidr = "198.18.5.0/24"
enable_dhcp = false

[[security_groups]]
id = "out-only"
rules = [{ direction = "egress" }]

[[security_groups]]
id = "web"
rules = [
  { direction = "egress" },
  { direction = "ingress", protocol = "tcp", port_range_min = 80, port_range_max = 80 },
]
"#,
    );
    s += &port("client", CLIENT_MAC, CLIENT_IP, "out-only");
    s += &port("server", SERVER_MAC, SERVER_IP, "web");
    s
}

fn send(sw: &mut MultiSwitch, port: u16, frame: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sw.wires.get_mut(&port).expect("port").send(frame) {
        assert!(Instant::now() < deadline, "port {port}'s ring stays full");
        std::thread::yield_now();
    }
}

/// The next `n` IPv4 frames `port` emits (ARP requests the router makes are skipped),
/// untagged.
fn collect(sw: &mut MultiSwitch, port: u16, n: usize) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    while got.len() < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} frames left port {port}",
            got.len()
        );
        match sw.wires.get_mut(&port).expect("port").recv() {
            Some(f) => {
                let f = if f[12..14] == [0x81, 0x00] {
                    [&f[..12], &f[16..]].concat()
                } else {
                    f
                };
                if f[12..14] == [0x08, 0x00] {
                    got.push(f);
                }
            }
            None => std::thread::yield_now(),
        }
    }
    got
}

/// Waits a moment and checks that nothing more left any port.
fn quiet(sw: &mut MultiSwitch) {
    std::thread::sleep(Duration::from_millis(100));
    for (port, wire) in sw.wires.iter_mut() {
        let extra: Vec<Vec<u8>> = wire
            .recv_all()
            .into_iter()
            .filter(|f| f[12..14] != [0x08, 0x06] && f[16..18] != [0x08, 0x06])
            .collect();
        assert!(extra.is_empty(), "port {port} sent more: {extra:?}");
    }
}

/// (src, dst, sport, dport, payload) of an untagged IPv4 TCP or UDP frame, after checking
/// both checksums.
fn l4(f: &[u8]) -> ([u8; 4], [u8; 4], u16, u16, Vec<u8>) {
    let h = &f[14..34];
    assert_eq!(internet_checksum(h), 0, "IPv4 header checksum");
    let src: [u8; 4] = h[12..16].try_into().unwrap();
    let dst: [u8; 4] = h[16..20].try_into().unwrap();
    let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
    let seg = &f[34..14 + total];
    assert_eq!(transport_checksum(src, dst, h[9], seg), 0, "L4 checksum");
    let port = |i: usize| u16::from_be_bytes([seg[i], seg[i + 1]]);
    let payload = match h[9] {
        17 => seg[8..].to_vec(),
        6 => seg[usize::from(seg[12] >> 4) * 4..].to_vec(),
        p => panic!("protocol {p}"),
    };
    (src, dst, port(0), port(2), payload)
}

fn seq_of_tcp(f: &[u8]) -> u32 {
    u32::from_be_bytes([f[38], f[39], f[40], f[41]])
}

/// Checks the counters of the stopped workers: conservation, no ring overflow, packets
/// handed to their flows' owners (returned: handed off in total), and, if `sessions`,
/// that every worker owns some of the flows' sessions.
fn check_workers(stopped: &[Worker], sessions: bool) -> u64 {
    assert_conserved(stopped);
    let mut handed = 0;
    for w in stopped {
        let c = w.counters();
        assert_eq!(c.flow_handoff_drops.get(), 0, "worker {}", w.id());
        assert_eq!(c.drops[DropReason::FlowHandoffRingFull as usize].get(), 0);
        handed += c.flow_handoffs.get();
        if sessions {
            assert!(
                !w.sessions().is_empty(),
                "worker {} owns no session",
                w.id()
            );
        }
    }
    assert!(
        handed > 0,
        "some packets were handed to their flows' owners"
    );
    handed
}

/// A connection opened through one worker and answered through another passes the
/// client's security group (which admits no new inbound connection) as a reply, in order;
/// unsolicited inbound to the client is still dropped.
fn security_group_connections(workers: u16) {
    let c = compile_state(&sg_state(), &Identities::default(), 1);
    let id = |name: &str| {
        c.ports
            .iter()
            .find(|p| p.key.ends_with(name))
            .map(|p| p.id.0)
            .unwrap_or_else(|| panic!("port {name}: {:?}", c.ports))
    };
    let (client, server) = (id("client"), id("server"));
    let mut sw = MultiSwitch::start(c.snapshot, &[client, server], workers);
    assert_ne!(sw.owners[&client], sw.owners[&server]);
    const DATA: u32 = 8;
    let to_server = |sport: u16, seq: u32, ack: u32, flags: u8, data: &[u8]| {
        let t = tcp(
            CLIENT_IP, SERVER_IP, sport, 80, seq, ack, flags, 64240, data,
        );
        ipv4(
            SERVER_MAC, CLIENT_MAC, None, CLIENT_IP, SERVER_IP, 64, 6, &t,
        )
    };
    let to_client = |sport: u16, dport: u16, seq: u32, ack: u32, flags: u8| {
        let t = tcp(
            SERVER_IP,
            CLIENT_IP,
            sport,
            dport,
            seq,
            ack,
            flags,
            64240,
            &[],
        );
        ipv4(
            CLIENT_MAC, SERVER_MAC, None, SERVER_IP, CLIENT_IP, 64, 6, &t,
        )
    };
    for i in 0..FLOWS {
        send(&mut sw, client, &to_server(40000 + i, 1000, 0, SYN, &[]));
    }
    assert_eq!(collect(&mut sw, server, usize::from(FLOWS)).len(), 64);
    for i in 0..FLOWS {
        send(
            &mut sw,
            server,
            &to_client(80, 40000 + i, 5000, 1001, SYN_ACK),
        );
    }
    let replies = collect(&mut sw, client, usize::from(FLOWS));
    let mut ports: Vec<u16> = replies.iter().map(|f| l4(f).3).collect();
    ports.sort_unstable();
    assert_eq!(ports, (40000..40000 + FLOWS).collect::<Vec<_>>());
    for i in 0..FLOWS {
        send(&mut sw, client, &to_server(40000 + i, 1001, 5001, ACK, &[]));
        for k in 0..DATA {
            let seq = 1001 + k * 10;
            send(
                &mut sw,
                client,
                &to_server(40000 + i, seq, 5001, PSH_ACK, &[k as u8; 10]),
            );
        }
    }
    let got = collect(&mut sw, server, usize::from(FLOWS) * (DATA as usize + 1));
    let mut next: BTreeMap<u16, u32> = BTreeMap::new();
    for f in &got {
        let (_, _, sport, _, payload) = l4(f);
        if payload.is_empty() {
            continue;
        }
        let want = next.entry(sport).or_insert(1001);
        assert_eq!(seq_of_tcp(f), *want, "flow {sport} in order");
        *want += 10;
    }
    assert_eq!(next.len(), usize::from(FLOWS));
    assert!(next.values().all(|&s| s == 1001 + DATA * 10));
    // Unsolicited: the server opens connections to the client, which admits none.
    for i in 0..FLOWS {
        send(&mut sw, server, &to_client(50000 + i, 22, 9000, 0, SYN));
    }
    quiet(&mut sw);
    let (stopped, _) = sw.stop();
    let handed = check_workers(&stopped, true);
    let refused: u64 = stopped
        .iter()
        .map(|w| {
            w.counters().stage_drops
                [Stage::SgIngress as usize * DropReason::COUNT + DropReason::SgNoRule as usize]
                .get()
        })
        .sum();
    assert_eq!(refused, u64::from(FLOWS), "unsolicited inbound dropped");
    let total_drops: u64 = stopped.iter().map(|w| w.counters().dropped_total()).sum();
    assert_eq!(total_drops, u64::from(FLOWS), "nothing else dropped");
    eprintln!("{workers} workers: security groups: {handed} packets handed to their owners");
}

#[test]
fn two_workers_security_group_replies_cross_workers() {
    security_group_connections(2);
}

#[test]
fn four_workers_security_group_replies_cross_workers() {
    security_group_connections(4);
}

/// The router lab (VM1, VM3 on A, VM2 with a floating IP on B, the uplink) on `workers`
/// workers, every host known to the router.
fn router_lab(workers: u16) -> MultiSwitch {
    let snapshot = topology(1500, Vec::new()).build(1).expect("valid");
    let mut sw = MultiSwitch::start(snapshot, &[VM1, VM2, VM3, UPLINK], workers);
    for (port, mac, ip, gw) in [
        (VM1, VM1_MAC, VM1_IP, GW_A),
        (VM3, VM3_MAC, VM3_IP, GW_A),
        (VM2, VM2_MAC, VM2_IP, GW_B),
    ] {
        send(&mut sw, port, &arp(1, BROADCAST, mac, ip, [0; 6], gw));
    }
    let mut upstream = arp(1, BROADCAST, UPSTREAM_MAC, UPSTREAM, [0; 6], ROUTER_EXT);
    tag(&mut upstream);
    send(&mut sw, UPLINK, &upstream);
    // The answers, and time for the neighbours to reach every worker.
    let deadline = Instant::now() + Duration::from_secs(10);
    for port in [VM1, VM3, VM2, UPLINK] {
        while sw.wires.get_mut(&port).expect("port").recv().is_none() {
            assert!(Instant::now() < deadline, "ARP answered on {port}");
            std::thread::yield_now();
        }
    }
    std::thread::sleep(Duration::from_millis(50));
    sw
}

fn from_internet(dst: [u8; 4], sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut f = ipv4(
        ROUTER_MAC,
        UPSTREAM_MAC,
        None,
        INTERNET,
        dst,
        60,
        17,
        &udp(INTERNET, dst, sport, dport, data),
    );
    tag(&mut f);
    f
}

fn from_vm(mac: [u8; 6], src: [u8; 4], sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    ipv4(
        ROUTER_MAC,
        mac,
        None,
        src,
        INTERNET,
        64,
        17,
        &udp(src, INTERNET, sport, dport, data),
    )
}

fn index(payload: &[u8]) -> u16 {
    u16::from_be_bytes([payload[1], payload[2]])
}

fn tagged(kind: u8, i: u16) -> [u8; 3] {
    let b = i.to_be_bytes();
    [kind, b[0], b[1]]
}

/// SNAT sessions made by their owners and answered through the uplink's worker: every
/// reply comes back to its VM port translated to the original address and port.
fn snat_sessions(workers: u16) {
    let mut sw = router_lab(workers);
    for i in 0..FLOWS {
        send(
            &mut sw,
            VM1,
            &from_vm(VM1_MAC, VM1_IP, 40000 + i, 53, &tagged(b'q', i)),
        );
    }
    let out = collect(&mut sw, UPLINK, usize::from(FLOWS));
    let mut external: BTreeMap<u16, u16> = BTreeMap::new();
    for f in &out {
        let (src, dst, sport, dport, payload) = l4(f);
        assert_eq!((src, dst, dport), (ROUTER_EXT, INTERNET, 53));
        assert!(
            external.insert(index(&payload), sport).is_none(),
            "one session per flow"
        );
    }
    let mut ports: Vec<u16> = external.values().copied().collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), usize::from(FLOWS), "distinct external ports");
    for (&i, &port) in &external {
        send(
            &mut sw,
            UPLINK,
            &from_internet(ROUTER_EXT, 53, port, &tagged(b'a', i)),
        );
    }
    let back = collect(&mut sw, VM1, usize::from(FLOWS));
    for f in &back {
        let (src, dst, sport, dport, payload) = l4(f);
        assert_eq!(&f[..6], &VM1_MAC);
        assert_eq!(payload[0], b'a');
        assert_eq!(
            (src, dst, sport, dport),
            (INTERNET, VM1_IP, 53, 40000 + index(&payload)),
            "translated back"
        );
    }
    quiet(&mut sw);
    let (stopped, _) = sw.stop();
    let handed = check_workers(&stopped, true);
    for w in &stopped {
        assert_eq!(
            w.counters().dropped_total(),
            0,
            "{:?}",
            w.counters().drop_summary()
        );
    }
    eprintln!("{workers} workers: SNAT: {handed} packets handed to their owners");
}

#[test]
fn two_workers_snat_replies_find_their_session() {
    snat_sessions(2);
}

#[test]
fn four_workers_snat_replies_find_their_session() {
    snat_sessions(4);
}

/// A floating IP both ways: VM2's own flows leave as the floating IP and their replies
/// come back to the fixed IP; flows the internet opens to the floating IP reach VM2 and
/// its answers leave as the floating IP.
fn floating_ip_both_ways(workers: u16) {
    let mut sw = router_lab(workers);
    for i in 0..FLOWS {
        send(
            &mut sw,
            VM2,
            &from_vm(VM2_MAC, VM2_IP, 30000 + i, 123, &tagged(b'o', i)),
        );
    }
    for f in collect(&mut sw, UPLINK, usize::from(FLOWS)) {
        let (src, dst, sport, dport, payload) = l4(&f);
        assert_eq!(
            (src, dst, sport, dport),
            (VM2_FIP, INTERNET, 30000 + index(&payload), 123)
        );
    }
    for i in 0..FLOWS {
        send(
            &mut sw,
            UPLINK,
            &from_internet(VM2_FIP, 123, 30000 + i, &tagged(b'r', i)),
        );
        send(
            &mut sw,
            UPLINK,
            &from_internet(VM2_FIP, 20000 + i, 8080, &tagged(b'n', i)),
        );
    }
    let mut replies = 0;
    for f in collect(&mut sw, VM2, 2 * usize::from(FLOWS)) {
        let (src, dst, sport, dport, payload) = l4(&f);
        assert_eq!((src, dst), (INTERNET, VM2_IP), "to the fixed IP");
        let i = index(&payload);
        match payload[0] {
            b'r' => {
                replies += 1;
                assert_eq!((sport, dport), (123, 30000 + i));
            }
            b'n' => assert_eq!((sport, dport), (20000 + i, 8080)),
            k => panic!("payload {k}"),
        }
    }
    assert_eq!(replies, FLOWS);
    for i in 0..FLOWS {
        let f = ipv4(
            ROUTER_MAC,
            VM2_MAC,
            None,
            VM2_IP,
            INTERNET,
            64,
            17,
            &udp(VM2_IP, INTERNET, 8080, 20000 + i, &tagged(b'b', i)),
        );
        send(&mut sw, VM2, &f);
    }
    for f in collect(&mut sw, UPLINK, usize::from(FLOWS)) {
        let (src, dst, sport, dport, payload) = l4(&f);
        assert_eq!(
            (src, dst, sport, dport),
            (VM2_FIP, INTERNET, 8080, 20000 + index(&payload))
        );
    }
    quiet(&mut sw);
    let (stopped, _) = sw.stop();
    // A floating IP translates without a session: what must follow the flow is the
    // state of the stages around it (a security group's connection), which needs the
    // same owner for both directions, as the handoffs show.
    let handed = check_workers(&stopped, false);
    for w in &stopped {
        assert_eq!(
            w.counters().dropped_total(),
            0,
            "{:?}",
            w.counters().drop_summary()
        );
    }
    eprintln!("{workers} workers: floating IP: {handed} packets handed to their owners");
}

#[test]
fn two_workers_floating_ip_both_ways() {
    floating_ip_both_ways(2);
}

#[test]
fn four_workers_floating_ip_both_ways() {
    floating_ip_both_ways(4);
}
