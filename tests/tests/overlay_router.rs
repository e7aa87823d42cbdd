//! A router on a VXLAN network, run by one host and reached by the others over the overlay
//! (Neutron's legacy L3 agent, centralized routing), on mem ports from one desired state
//! compiled for each host (`polluxd`'s own validation and compile):
//!
//! ```text
//!  hosta (198.18.0.1): router r1 (gateway 198.18.21.1 on X, 203.0.113.10 on ext, SNAT),
//!                      floating IP 203.0.113.20 → b1; a1 (X, .11); uplinks underlay, ext
//!  hostb (198.18.0.2): b1 (X, .12), b2 (X, .13); uplinks underlay, ext (r1 does not run there)
//! ```
//!
//! On hostb: ARP for the gateway is answered by the ARP responder with r1's MAC, and
//! frames to r1 go to hosta's tunnel. On hosta: what b2 sends through r1 is routed and
//! source-NATed to the external network, and the answers, like the traffic to b1's
//! floating IP, are routed back over the overlay to hostb; an oversize DF packet towards
//! the overlay is answered with "fragmentation needed" and the tenant MTU.

use pollux_control::compile::{compile, Identities};
use pollux_control::model::DesiredState;
use pollux_control::validate::validate;
use pollux_dataplane::overlay::vtep_mac;
use pollux_dataplane::worker::WorkerConfig;
use pollux_drivers::mem::MemPortConfig;
use pollux_tests::frames::{self, arp, internet_checksum, ipv4, udp, BROADCAST};
use pollux_tests::harness::{MemSwitch, POOL_FRAMES};

const STATE: &str = r#"
[agent]
host = "@HOST@"

[[hosts]]
name = "hosta"
tunnel_ip = "198.18.0.1"

[[hosts]]
name = "hostb"
tunnel_ip = "198.18.0.2"

[[uplinks]]
name = "underlay"
physnet = "underlay"
binding = { driver = "mem" }
local_ip = "@LOCAL@/24"

[[uplinks]]
name = "ext"
physnet = "extnet"
binding = { driver = "mem" }

[[networks]]
id = "ext"
network_type = "flat"
physical_network = "extnet"

[[networks]]
id = "net-x"
network_type = "vxlan"
segmentation_id = 5000

[[subnets]]
id = "sub-ext"
network_id = "ext"
cidr = "203.0.113.0/24"
gateway_ip = "203.0.113.1"
enable_dhcp = false

[[subnets]]
id = "sub-x"
network_id = "net-x"
cidr = "198.18.21.0/24"
gateway_ip = "198.18.21.1"

[[ports]]
id = "vm-a1"
network_id = "net-x"
mac_address = "fa:16:3e:18:02:11"
fixed_ips = [{ subnet_id = "sub-x", ip_address = "198.18.21.11" }]
port_security_enabled = false
binding_host_id = "hosta"
binding = { driver = "mem" }

[[ports]]
id = "vm-b1"
network_id = "net-x"
mac_address = "fa:16:3e:18:02:12"
fixed_ips = [{ subnet_id = "sub-x", ip_address = "198.18.21.12" }]
port_security_enabled = false
binding_host_id = "hostb"
binding = { driver = "mem" }

[[ports]]
id = "vm-b2"
network_id = "net-x"
mac_address = "fa:16:3e:18:02:13"
fixed_ips = [{ subnet_id = "sub-x", ip_address = "198.18.21.13" }]
port_security_enabled = false
binding_host_id = "hostb"
binding = { driver = "mem" }

[[routers]]
id = "r1"
binding_host_id = "hosta"
mac_address = "fa:16:3e:18:0f:01"
interfaces = ["sub-x"]
external_gateway_info = { network_id = "ext", external_fixed_ip = "203.0.113.10", enable_snat = true }

[[floating_ips]]
id = "fip-b1"
floating_ip_address = "203.0.113.20"
port_id = "vm-b1"
"#;

const HOSTA: [u8; 4] = [198, 18, 0, 1];
const HOSTB: [u8; 4] = [198, 18, 0, 2];
const VNI: u32 = 5000;
const R1_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0x18, 0x0f, 0x01];
const A1_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0x18, 0x02, 0x11];
const B1_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0x18, 0x02, 0x12];
const GATEWAY: [u8; 4] = [198, 18, 21, 1];
const A1_IP: [u8; 4] = [198, 18, 21, 11];
const B1_IP: [u8; 4] = [198, 18, 21, 12];
const B2_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0x18, 0x02, 0x13];
const B2_IP: [u8; 4] = [198, 18, 21, 13];
const ROUTER_EXT: [u8; 4] = [203, 0, 113, 10];
const B1_FIP: [u8; 4] = [203, 0, 113, 20];
const INTERNET: [u8; 4] = [203, 0, 113, 1];
const INTERNET_MAC: [u8; 6] = [0x02, 0x99, 0, 0, 0, 1];
/// The underlay's 1500 bytes minus VXLAN's 50.
const TENANT_MTU: u16 = 1450;

/// One host's switch and the ports of its compiled state.
struct Host {
    sw: MemSwitch,
    ids: Identities,
    local: [u8; 4],
}

impl Host {
    fn new(name: &str) -> Host {
        let local = if name == "hosta" { HOSTA } else { HOSTB };
        let text = STATE
            .replace("@HOST@", name)
            .replace("@LOCAL@", &std::net::Ipv4Addr::from(local).to_string());
        let valid = validate(&DesiredState::from_toml_str(&text).unwrap())
            .unwrap_or_else(|e| panic!("valid: {e:?}"));
        let c = compile(&valid, &Identities::default(), 1).expect("compiles");
        let ports: Vec<u16> = c.ports.iter().map(|p| p.id.0).collect();
        let sw = MemSwitch::with_snapshot(
            c.snapshot,
            &ports,
            WorkerConfig::default(),
            MemPortConfig::default(),
            POOL_FRAMES,
        );
        let mut host = Host {
            sw,
            ids: c.identities,
            local,
        };
        // The ARP requests for the other endpoint the configuration brings.
        host.sw.run();
        host.sw.collect();
        host
    }

    fn port(&self, key: &str) -> u16 {
        self.ids
            .port(key)
            .unwrap_or_else(|| panic!("no port {key}"))
            .0
    }

    fn vtep(&self) -> [u8; 6] {
        vtep_mac(self.local.into())
    }

    /// The other endpoint asks for this one: its underlay MAC is then known.
    fn resolve_peer(&mut self, peer: [u8; 4]) {
        let ul = self.port("uplink:underlay");
        let out = self.sw.exchange(
            ul,
            &arp(1, BROADCAST, peer_mac(peer), peer, [0; 6], self.local),
        );
        assert_eq!(out[&ul].len(), 1, "{out:?}");
    }

    /// A VXLAN packet from `peer` carrying `inner`, on the underlay uplink.
    fn receive_from(
        &mut self,
        peer: [u8; 4],
        inner: &[u8],
    ) -> std::collections::BTreeMap<u16, Vec<Vec<u8>>> {
        let f = frames::vxlan(self.vtep(), peer_mac(peer), peer, self.local, VNI, inner);
        let ul = self.port("uplink:underlay");
        self.sw.exchange(ul, &f)
    }
}

fn peer_mac(ip: [u8; 4]) -> [u8; 6] {
    [0x02, 0xee, ip[0], ip[1], ip[2], ip[3]]
}

/// Checks that `f` is a VXLAN packet from `from` to `to` on VNI 5000 and returns the inner
/// frame.
fn inner_of(f: &[u8], from: [u8; 4], to: [u8; 4]) -> Vec<u8> {
    assert_eq!(&f[0..6], &peer_mac(to), "outer destination MAC");
    assert_eq!(&f[6..12], &vtep_mac(from.into()), "outer source MAC");
    assert_eq!(&f[26..30], &from, "outer source");
    assert_eq!(&f[30..34], &to, "outer destination");
    assert_eq!(&f[36..38], &4789u16.to_be_bytes(), "VXLAN port");
    assert_eq!(u32::from_be_bytes([0, f[46], f[47], f[48]]), VNI);
    f[50..].to_vec()
}

fn udp_frame(dst: [u8; 6], src: [u8; 6], src_ip: [u8; 4], dst_ip: [u8; 4]) -> Vec<u8> {
    let l4 = udp(src_ip, dst_ip, 40000, 53, b"overlay router");
    ipv4(dst, src, None, src_ip, dst_ip, 64, 17, &l4)
}

#[test]
fn a_host_without_the_router_answers_for_its_gateway_and_sends_to_its_host() {
    let mut b = Host::new("hostb");
    assert!(
        b.ids.port("host:hosta").is_some(),
        "hosta has no VM port here but runs r1: it has a tunnel"
    );
    b.resolve_peer(HOSTA);
    let b1 = b.port("port:vm-b1");
    let ul = b.port("uplink:underlay");

    // b1 asks for its gateway: answered on this host with r1's MAC, nothing crosses.
    let out =
        b.sw.exchange(b1, &arp(1, BROADCAST, B1_MAC, B1_IP, [0; 6], GATEWAY));
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![b1], "{out:?}");
    assert_eq!(
        out[&b1][0][..42],
        arp(2, B1_MAC, R1_MAC, GATEWAY, B1_MAC, B1_IP)[..42]
    );
    assert_eq!(b.sw.counters().arp_responder_replies.get(), 1);

    // What b1 sends to r1 goes to hosta, unchanged.
    let sent = udp_frame(R1_MAC, B1_MAC, B1_IP, INTERNET);
    let out = b.sw.exchange(b1, &sent);
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![ul], "{out:?}");
    assert_eq!(inner_of(&out[&ul][0], HOSTB, HOSTA), sent);

    // r1's answers from hosta reach b1.
    let back = udp_frame(B1_MAC, R1_MAC, INTERNET, B1_IP);
    let out = b.receive_from(HOSTA, &back);
    assert_eq!(out[&b1], vec![back]);
    b.sw.assert_conserved();
}

#[test]
fn the_router_host_routes_snats_and_floats_for_a_vm_of_another_host() {
    let mut a = Host::new("hosta");
    a.resolve_peer(HOSTB);
    let ul = a.port("uplink:underlay");
    let ext = a.port("uplink:ext");
    let a1 = a.port("port:vm-a1");

    // a1 (on this host) asks for its gateway: r1 answers.
    let out =
        a.sw.exchange(a1, &arp(1, BROADCAST, A1_MAC, A1_IP, [0; 6], GATEWAY));
    assert_eq!(
        out[&a1][0][..42],
        arp(2, A1_MAC, R1_MAC, GATEWAY, A1_MAC, A1_IP)[..42]
    );
    assert_eq!(a.sw.counters().arp_responder_replies.get(), 0);

    // b2's packet to the internet arrives over the overlay: r1 asks for the next hop...
    let out = a.receive_from(HOSTB, &udp_frame(R1_MAC, B2_MAC, B2_IP, INTERNET));
    assert_eq!(
        out[&ext][0][..42],
        arp(1, BROADCAST, R1_MAC, ROUTER_EXT, [0; 6], INTERNET)[..42]
    );
    // ...and sends it, source-NATed, once answered.
    let out = a.sw.exchange(
        ext,
        &arp(2, R1_MAC, INTERNET_MAC, INTERNET, R1_MAC, ROUTER_EXT),
    );
    let routed = &out[&ext][0];
    assert_eq!(&routed[0..6], &INTERNET_MAC);
    assert_eq!(&routed[6..12], &R1_MAC);
    assert_eq!(&routed[26..30], &ROUTER_EXT, "source NAT");
    assert_eq!(&routed[30..34], &INTERNET);
    assert_eq!(routed[22], 63, "TTL decremented");
    let snat_port = u16::from_be_bytes([routed[34], routed[35]]);

    // The answer comes back to the router's address: r1 asks for b2 over the overlay (its
    // ARP request is flooded to hostb), then sends it there.
    let answer = {
        let l4 = udp(INTERNET, ROUTER_EXT, 53, snat_port, b"answer");
        ipv4(
            R1_MAC,
            INTERNET_MAC,
            None,
            INTERNET,
            ROUTER_EXT,
            64,
            17,
            &l4,
        )
    };
    let out = a.sw.exchange(ext, &answer);
    let asked = inner_of(&out[&ul][0], HOSTA, HOSTB);
    assert_eq!(
        asked[..42],
        arp(1, BROADCAST, R1_MAC, GATEWAY, [0; 6], B2_IP)[..42]
    );
    assert_eq!(out[&a1].len(), 1, "the request is flooded locally too");
    let out = a.receive_from(HOSTB, &arp(2, R1_MAC, B2_MAC, B2_IP, R1_MAC, GATEWAY));
    let delivered = inner_of(&out[&ul][0], HOSTA, HOSTB);
    assert_eq!(&delivered[0..6], &B2_MAC);
    assert_eq!(&delivered[6..12], &R1_MAC);
    assert_eq!(&delivered[26..30], &INTERNET);
    assert_eq!(&delivered[30..34], &B2_IP, "source NAT undone");
    assert_eq!(u16::from_be_bytes([delivered[36], delivered[37]]), 40000);

    // b1's floating IP, from outside: DNAT to b1, over the overlay.
    let to_fip = udp_frame(R1_MAC, INTERNET_MAC, INTERNET, B1_FIP);
    let out = a.sw.exchange(ext, &to_fip);
    let asked = inner_of(&out[&ul][0], HOSTA, HOSTB);
    assert_eq!(
        asked[..42],
        arp(1, BROADCAST, R1_MAC, GATEWAY, [0; 6], B1_IP)[..42]
    );
    let out = a.receive_from(HOSTB, &arp(2, R1_MAC, B1_MAC, B1_IP, R1_MAC, GATEWAY));
    let inner = inner_of(&out[&ul][0], HOSTA, HOSTB);
    assert_eq!(&inner[0..6], &B1_MAC);
    assert_eq!(&inner[30..34], &B1_IP, "floating IP translated");
    assert_eq!(internet_checksum(&inner[14..34]), 0);

    // A DF packet larger than the tenant MTU towards the overlay: "fragmentation needed"
    // with the overlay network's MTU, to the sender.
    let big = {
        let payload = vec![0u8; usize::from(TENANT_MTU) + 1 - 20 - 8];
        let l4 = udp(INTERNET, B1_FIP, 40001, 9, &payload);
        ipv4(R1_MAC, INTERNET_MAC, None, INTERNET, B1_FIP, 64, 17, &l4)
    };
    let out = a.sw.exchange(ext, &big);
    assert!(
        !out.contains_key(&ul),
        "nothing oversize enters the overlay"
    );
    let icmp = &out[&ext][0];
    assert_eq!(&icmp[30..34], &INTERNET);
    assert_eq!(icmp[23], 1, "ICMP");
    assert_eq!((icmp[34], icmp[35]), (3, 4), "fragmentation needed");
    assert_eq!(u16::from_be_bytes([icmp[40], icmp[41]]), TENANT_MTU);
    // One byte less crosses.
    let fits = {
        let payload = vec![0u8; usize::from(TENANT_MTU) - 20 - 8];
        let l4 = udp(INTERNET, B1_FIP, 40001, 9, &payload);
        ipv4(R1_MAC, INTERNET_MAC, None, INTERNET, B1_FIP, 64, 17, &l4)
    };
    let out = a.sw.exchange(ext, &fits);
    assert_eq!(out[&ul][0].len(), 50 + 14 + usize::from(TENANT_MTU));
    a.sw.assert_conserved();
}
