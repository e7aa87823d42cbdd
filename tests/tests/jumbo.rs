//! Jumbo frames on `mem` ports: frames larger than one pool frame travel as chains of
//! frames (see `pollux_dataplane::buf`) through switching, flooding, port security,
//! security groups and the router: a 9000-byte network's frames come out whole, a routed
//! jumbo datagram is fragmented for a 1500-byte network (or answered with "fragmentation
//! needed" when it says DF), the router answers a jumbo ping, a jumbo segment of an
//! allowed connection passes the groups (its length tracked in the window) while one
//! nobody allowed is dropped, and no frame of a chain leaks.

use pollux_dataplane::drop::DropReason;
use pollux_dataplane::pipeline::Stage;
use pollux_dataplane::port::PortId;
use pollux_dataplane::routing::{InterfaceSpec, RouterSpec, RouterUid};
use pollux_dataplane::snapshot::{NetworkUid, Segment, SnapshotBuilder};
use pollux_dataplane::worker::WorkerConfig;
use pollux_drivers::mem::MemPortConfig;
use pollux_tests::frames::{arp, icmp_echo, internet_checksum, ipv4, tcp, udp, BROADCAST};
use pollux_tests::harness::{MemSwitch, POOL_FRAMES};
use pollux_tests::port_lab::{NamedVm, PortLab};

const JUMBO: NetworkUid = NetworkUid(10);
const SMALL: NetworkUid = NetworkUid(20);

/// VM ports: 1, 2 and 3 on the jumbo network, 4 on the 1500-byte one.
const VM1: u16 = 1;
const VM2: u16 = 2;
const VM3: u16 = 3;
const VM4: u16 = 4;

const VM1_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 1];
const VM2_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 2];
const VM3_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 3];
const VM4_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 4];
const ROUTER_MAC: [u8; 6] = [0x02, 0x70, 0x6c, 0, 0, 1];

const VM1_IP: [u8; 4] = [198, 18, 1, 10];
const VM4_IP: [u8; 4] = [198, 18, 2, 10];
const GW_JUMBO: [u8; 4] = [198, 18, 1, 1];
const GW_SMALL: [u8; 4] = [198, 18, 2, 1];

fn switch() -> MemSwitch {
    let iface = |network, ip: [u8; 4], mtu| InterfaceSpec {
        network,
        ip: ip.into(),
        prefix_len: 24,
        mtu,
    };
    let mut b = SnapshotBuilder::new();
    b.network(JUMBO, Segment::Local)
        .network(SMALL, Segment::Local)
        .access_port(PortId(VM1), JUMBO, &[VM1_MAC])
        .access_port(PortId(VM2), JUMBO, &[VM2_MAC])
        .access_port(PortId(VM3), JUMBO, &[VM3_MAC])
        .access_port(PortId(VM4), SMALL, &[VM4_MAC])
        .router(RouterSpec {
            uid: RouterUid(1),
            mac: ROUTER_MAC,
            interfaces: vec![iface(JUMBO, GW_JUMBO, 9000), iface(SMALL, GW_SMALL, 1500)],
            external: None,
            enable_snat: false,
            floating_ips: Vec::new(),
            metering: Vec::new(),
            routes: Vec::new(),
        });
    MemSwitch::with(
        &b,
        &[VM1, VM2, VM3, VM4],
        WorkerConfig::default(),
        MemPortConfig {
            depth: 256,
            max_frame: 9216,
        },
        POOL_FRAMES,
    )
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 % 251) as u8).collect()
}

/// A frame of `len` bytes from `src` to `dst` (EtherType 0x88b5, local experimental).
fn jumbo_frame(dst: [u8; 6], src: [u8; 6], len: usize) -> Vec<u8> {
    let mut f = pattern(len);
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f
}

/// `frame` with its IPv4 header's DF flag cleared (and the checksum made again).
fn without_df(mut frame: Vec<u8>) -> Vec<u8> {
    frame[20] = 0;
    frame[24..26].fill(0);
    let sum = internet_checksum(&frame[14..34]);
    frame[24..26].copy_from_slice(&sum.to_be_bytes());
    frame
}

/// Teaches the router VM4's MAC: a packet for it makes the router ask, VM4 answers.
fn resolve_vm4(sw: &mut MemSwitch) {
    let ping = ipv4(
        ROUTER_MAC,
        VM1_MAC,
        None,
        VM1_IP,
        VM4_IP,
        64,
        1,
        &icmp_echo(false, 1, 1),
    );
    let out = sw.exchange(VM1, &ping);
    assert_eq!(&out[&VM4][0][..6], &BROADCAST, "the router asks for VM4");
    let reply = arp(2, ROUTER_MAC, VM4_MAC, VM4_IP, ROUTER_MAC, GW_SMALL);
    let out = sw.exchange(VM4, &reply);
    assert_eq!(out[&VM4].len(), 1, "the waiting ping goes: {out:?}");
}

#[test]
fn jumbo_frames_are_flooded_and_switched_whole() {
    let mut sw = switch();
    // A broadcast is flooded: one chain copied for the second port.
    let broadcast = jumbo_frame(BROADCAST, VM1_MAC, 9014);
    let out = sw.exchange(VM1, &broadcast);
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![VM2, VM3]);
    assert_eq!(out[&VM2], vec![broadcast.clone()]);
    assert_eq!(out[&VM3], vec![broadcast]);
    let back = jumbo_frame(VM1_MAC, VM2_MAC, 9000);
    let out = sw.exchange(VM2, &back);
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![VM1]);
    assert_eq!(out[&VM1], vec![back]);
    let frame = jumbo_frame(VM2_MAC, VM1_MAC, 9014);
    // To VM2 alone, a burst of them.
    for _ in 0..20 {
        sw.send(VM1, &frame);
    }
    sw.run();
    let out = sw.collect();
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![VM2]);
    assert_eq!(out[&VM2].len(), 20);
    assert!(out[&VM2].iter().all(|f| *f == frame));
    let c = sw.counters();
    let vm1 = c.port(PortId(VM1)).unwrap();
    assert_eq!(vm1.rx_bytes.get(), 21 * 9014, "bytes count the whole chain");
    let vm2 = c.port(PortId(VM2)).unwrap();
    assert_eq!(vm2.tx_bytes.get(), 21 * 9014);
    assert_eq!(c.port(PortId(VM1)).unwrap().tx_bytes.get(), 9000);
    sw.assert_conserved();
}

#[test]
fn a_routed_jumbo_datagram_is_fragmented_for_a_smaller_mtu() {
    let mut sw = switch();
    resolve_vm4(&mut sw);
    let data = pattern(8000);
    let datagram = udp(VM1_IP, VM4_IP, 4000, 5000, &data);
    let frame = without_df(ipv4(
        ROUTER_MAC, VM1_MAC, None, VM1_IP, VM4_IP, 64, 17, &datagram,
    ));
    let out = sw.exchange(VM1, &frame);
    let pieces = &out[&VM4];
    assert_eq!(pieces.len(), 6, "8028 bytes of UDP in 1480-byte pieces");
    let mut payload = Vec::new();
    for (i, f) in pieces.iter().enumerate() {
        assert!(f.len() <= 1514, "fragment {i} is {} bytes", f.len());
        assert_eq!(&f[..6], &VM4_MAC);
        let h = &f[14..34];
        assert_eq!(internet_checksum(h), 0, "fragment {i}'s header checksum");
        assert_eq!(h[8], 63, "TTL decremented");
        let flags_offset = u16::from_be_bytes([h[6], h[7]]);
        assert_eq!(usize::from(flags_offset & 0x1fff) * 8, payload.len());
        assert_eq!(flags_offset & 0x2000 != 0, i < 5, "MF on all but the last");
        let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
        payload.extend_from_slice(&f[34..14 + total]);
    }
    assert_eq!(payload, datagram, "the fragments hold the datagram");
    sw.assert_conserved();
}

#[test]
fn a_routed_jumbo_datagram_with_df_gets_fragmentation_needed() {
    let mut sw = switch();
    resolve_vm4(&mut sw);
    let datagram = udp(VM1_IP, VM4_IP, 4000, 5000, &pattern(8000));
    let frame = ipv4(ROUTER_MAC, VM1_MAC, None, VM1_IP, VM4_IP, 64, 17, &datagram);
    let out = sw.exchange(VM1, &frame);
    assert!(
        !out.contains_key(&VM4),
        "nothing goes out: {:?}",
        out.keys()
    );
    let error = &out[&VM1][0];
    assert_eq!(&error[..6], &VM1_MAC);
    let icmp = &error[34..];
    assert_eq!((icmp[0], icmp[1]), (3, 4), "fragmentation needed");
    assert_eq!(
        u16::from_be_bytes([icmp[6], icmp[7]]),
        1500,
        "the next hop's MTU"
    );
    assert_eq!(internet_checksum(icmp), 0);
    assert_eq!(
        &icmp[8..36],
        &frame[14..42],
        "quotes the header and 8 bytes"
    );
    assert_eq!(sw.counters().dropped(DropReason::MtuExceeded), 1);
    sw.assert_conserved();
}

#[test]
fn the_router_answers_a_jumbo_ping_whole() {
    let mut sw = switch();
    let mut echo = vec![8, 0, 0, 0, 0, 9, 0, 1];
    echo.extend(pattern(8000));
    let sum = internet_checksum(&echo);
    echo[2..4].copy_from_slice(&sum.to_be_bytes());
    let request = ipv4(ROUTER_MAC, VM1_MAC, None, VM1_IP, GW_JUMBO, 64, 1, &echo);
    let out = sw.exchange(VM1, &request);
    let reply = &out[&VM1][0];
    assert_eq!(reply.len(), request.len());
    assert_eq!(&reply[26..30], &GW_JUMBO, "from the router");
    assert_eq!(reply[34], 0, "echo reply");
    assert_eq!(
        internet_checksum(&reply[34..]),
        0,
        "ICMP checksum over the whole"
    );
    assert_eq!(&reply[38..], &request[38..], "data echoed");
    sw.assert_conserved();
}

/// A port of the secured lab's jumbo network.
struct Vm {
    name: &'static str,
    mac: [u8; 6],
    ip: [u8; 4],
}

impl NamedVm for Vm {
    fn name(&self) -> &'static str {
        self.name
    }
}

const WEB: Vm = Vm {
    name: "web",
    mac: [0xfa, 0x16, 0x3e, 0, 1, 1],
    ip: [198, 18, 1, 10],
};
const CLIENT: Vm = Vm {
    name: "client",
    mac: [0xfa, 0x16, 0x3e, 0, 1, 2],
    ip: [198, 18, 1, 11],
};

/// A 9000-byte network, compiled by the control plane: both ports with port security, the
/// web port admitting TCP 80 from the network, the client any egress.
const SECURED: &str = r#"
[[networks]]
id = "net"
network_type = "local"
mtu = 9000

[[subnets]]
id = "sub"
network_id = "net"
cidr = "198.18.1.0/24"
enable_dhcp = false

[[security_groups]]
id = "web"
[[security_groups.rules]]
direction = "ingress"
ethertype = "IPv4"
protocol = "tcp"
port_range_min = 80
port_range_max = 80
[[security_groups.rules]]
direction = "egress"
ethertype = "IPv4"

[[security_groups]]
id = "client"
[[security_groups.rules]]
direction = "egress"
ethertype = "IPv4"

[[ports]]
id = "web"
network_id = "net"
mac_address = "fa:16:3e:00:01:01"
fixed_ips = [{ subnet_id = "sub", ip_address = "198.18.1.10" }]
security_groups = ["web"]
binding = { driver = "mem" }

[[ports]]
id = "client"
network_id = "net"
mac_address = "fa:16:3e:00:01:02"
fixed_ips = [{ subnet_id = "sub", ip_address = "198.18.1.11" }]
security_groups = ["client"]
binding = { driver = "mem" }
"#;

fn segment(
    from: &Vm,
    to: &Vm,
    ports: (u16, u16),
    seq: u32,
    ack: u32,
    flags: u8,
    data: &[u8],
) -> Vec<u8> {
    let l4 = tcp(
        from.ip, to.ip, ports.0, ports.1, seq, ack, flags, 64000, data,
    );
    ipv4(to.mac, from.mac, None, from.ip, to.ip, 64, 6, &l4)
}

#[test]
fn port_security_and_security_groups_pass_a_jumbo_segment_of_an_allowed_connection() {
    let mut lab = PortLab::with_ring(
        SECURED,
        &["web", "client"],
        WorkerConfig::default(),
        MemPortConfig {
            depth: 256,
            max_frame: 9216,
        },
    );
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    const SYN_ACK: u8 = 0x12;
    let port = (40000, 80);
    let back = (80, 40000);
    lab.passes(
        &CLIENT,
        &WEB,
        &segment(&CLIENT, &WEB, port, 1000, 0, SYN, &[]),
    );
    lab.passes(
        &WEB,
        &CLIENT,
        &segment(&WEB, &CLIENT, back, 5000, 1001, SYN_ACK, &[]),
    );
    // 8960 bytes of data in one segment each way: the window tracking counts them all,
    // so the next segments, which start where these end, are in the window.
    let data = pattern(8960);
    lab.passes(
        &CLIENT,
        &WEB,
        &segment(&CLIENT, &WEB, port, 1001, 5001, ACK, &data),
    );
    lab.passes(
        &WEB,
        &CLIENT,
        &segment(&WEB, &CLIENT, back, 5001, 9961, ACK, &data),
    );
    lab.passes(
        &CLIENT,
        &WEB,
        &segment(&CLIENT, &WEB, port, 9961, 13961, ACK, &data),
    );
    // A jumbo segment to a port nobody allowed, and one from an address the client does
    // not own: each dropped by its stage.
    lab.refused(
        &CLIENT,
        &segment(&CLIENT, &WEB, (40001, 22), 1, 0, SYN, &data),
        Stage::SgIngress,
        DropReason::SgNoRule,
    );
    let spoofed = Vm {
        ip: [198, 18, 1, 99],
        ..CLIENT
    };
    lab.refused(
        &CLIENT,
        &segment(&spoofed, &WEB, port, 1, 0, SYN, &data),
        Stage::PortSecurity,
        DropReason::SpoofedIp,
    );
}
