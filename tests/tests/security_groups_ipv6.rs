//! IPv6 security groups and port security through the whole worker on `mem` ports, from a
//! desired state compiled by the control plane: IPv6 rules (protocol, ports, ICMPv6 type,
//! remote group of IPv6 fixed IPs and address pairs) admit what they allow in each direction, replies
//! of tracked IPv6 connections pass without a rule, neighbour discovery passes without
//! one, and everything else is dropped with its reason. Addresses: 2001:db8::/32 and
//! fe80::/10 only.

use pollux_control::model::DesiredState;
use pollux_control::validate::validate;
use pollux_dataplane::drop::DropReason;
use pollux_dataplane::pipeline::Stage;
use pollux_dataplane::wire::ipv6::link_local_from_mac;
use pollux_dataplane::worker::WorkerConfig;
use pollux_tests::frames::{icmpv6, ipv6_frame, transport_checksum6, udp6};
use pollux_tests::port_lab::{NamedVm, PortLab};

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const SYN_ACK: u8 = 0x12;
const RST: u8 = 0x04;

#[derive(Clone, Copy, Debug)]
struct Vm {
    name: &'static str,
    mac: [u8; 6],
    ip: [u8; 16],
}

const fn ip6(last: u8) -> [u8; 16] {
    [
        0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, last,
    ]
}

const WEB: Vm = Vm {
    name: "web",
    mac: [0xfa, 0x16, 0x3e, 0, 0, 1],
    ip: ip6(0x10),
};
const CLIENT: Vm = Vm {
    name: "client",
    mac: [0xfa, 0x16, 0x3e, 0, 0, 2],
    ip: ip6(0x11),
};
/// Not in the `clients` group: egress allowed, not a member of web's remote group.
const STRANGER: Vm = Vm {
    name: "stranger",
    mac: [0xfa, 0x16, 0x3e, 0, 0, 3],
    ip: ip6(0x12),
};
const VMS: [Vm; 3] = [WEB, CLIENT, STRANGER];

const STATE: &str = r#"
[[networks]]
id = "net"
network_type = "local"

[[subnets]]
id = "sub"
network_id = "net"
cidr = "198.18.1.0/24"
enable_dhcp = false

[[subnets]]
id = "sub6"
network_id = "net"
ip_version = 6
cidr = "2001:db8:1::/64"
gateway_ip = "2001:db8:1::1"
enable_dhcp = false

[[security_groups]]
id = "web"
rules = [
  { direction = "ingress", ethertype = "IPv6", protocol = "tcp", port_range_min = 80, port_range_max = 80, remote_group_id = "clients" },
  { direction = "ingress", ethertype = "IPv6", protocol = "ipv6-icmp", port_range_min = 128 },
  { direction = "ingress", ethertype = "IPv6", protocol = "udp", port_range_min = 53, port_range_max = 53, remote_ip_prefix = "2001:db8:1::12/128" },
]

[[security_groups]]
id = "clients"
rules = [
  { direction = "egress", ethertype = "IPv4" },
  { direction = "egress", ethertype = "IPv6" },
]

[[security_groups]]
id = "outsiders"
rules = [{ direction = "egress", ethertype = "IPv6" }]

[[ports]]
id = "web"
network_id = "net"
mac_address = "fa:16:3e:00:00:01"
allowed_address_pairs = [{ ip_address = "2001:db8:1::10" }]
security_groups = ["web"]
binding = { driver = "mem" }

[[ports]]
id = "client"
network_id = "net"
mac_address = "fa:16:3e:00:00:02"
fixed_ips = [{ subnet_id = "sub6", ip_address = "2001:db8:1::11" }]
security_groups = ["clients"]
binding = { driver = "mem" }

[[ports]]
id = "stranger"
network_id = "net"
mac_address = "fa:16:3e:00:00:03"
allowed_address_pairs = [{ ip_address = "2001:db8:1::12" }]
security_groups = ["outsiders"]
binding = { driver = "mem" }
"#;

/// The lab, with what only these tests look at.
struct Sg(PortLab);

impl std::ops::Deref for Sg {
    type Target = PortLab;
    fn deref(&self) -> &PortLab {
        &self.0
    }
}

impl std::ops::DerefMut for Sg {
    fn deref_mut(&mut self) -> &mut PortLab {
        &mut self.0
    }
}

impl NamedVm for Vm {
    fn name(&self) -> &'static str {
        self.name
    }
}

impl Sg {
    fn new() -> Self {
        Sg(PortLab::new(
            STATE,
            &VMS.map(|vm| vm.name),
            WorkerConfig::default(),
        ))
    }

    fn sessions6(&self) -> usize {
        self.sw.worker.sessions6().len()
    }
}

fn tcp6(from: &Vm, to: &Vm, sport: u16, dport: u16, seq: u32, ack: u32, flags: u8) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&ack.to_be_bytes());
    t.extend_from_slice(&[0x50, flags]);
    t.extend_from_slice(&64000u16.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]);
    let c = transport_checksum6(from.ip, to.ip, 6, &t);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    ipv6_frame(to.mac, from.mac, from.ip, to.ip, 6, &t)
}

fn ping6(from: &Vm, to: &Vm, reply: bool) -> Vec<u8> {
    let ty = if reply { 129 } else { 128 };
    let m = icmpv6(from.ip, to.ip, ty, 0, &[0, 7, 0, 1]);
    ipv6_frame(to.mac, from.mac, from.ip, to.ip, 58, &m)
}

fn udp_frame(from: &Vm, to: &Vm, sport: u16, dport: u16) -> Vec<u8> {
    let u = udp6(from.ip, to.ip, sport, dport, b"hello");
    ipv6_frame(to.mac, from.mac, from.ip, to.ip, 17, &u)
}

#[test]
fn ipv6_rules_admit_what_they_allow_and_track_it() {
    let mut sg = Sg::new();
    // TCP 80 from a member of `clients`: the handshake passes, tracked in both zones.
    sg.passes(&CLIENT, &WEB, &tcp6(&CLIENT, &WEB, 40000, 80, 1000, 0, SYN));
    sg.passes(
        &WEB,
        &CLIENT,
        &tcp6(&WEB, &CLIENT, 80, 40000, 5000, 1001, SYN_ACK),
    );
    sg.passes(
        &CLIENT,
        &WEB,
        &tcp6(&CLIENT, &WEB, 40000, 80, 1001, 5001, ACK),
    );
    assert_eq!(sg.sessions6(), 2, "one connection in each port's zone");
    assert_eq!(
        sg.sw.worker.sessions().len(),
        0,
        "nothing in the IPv4 table"
    );
    // A forged RST far outside the window.
    sg.refused(
        &CLIENT,
        &tcp6(&CLIENT, &WEB, 40000, 80, 900_000_000, 5001, RST),
        Stage::SgEgress,
        DropReason::SgInvalid,
    );
    // Another port: not allowed by web's rules.
    sg.refused(
        &CLIENT,
        &tcp6(&CLIENT, &WEB, 40001, 22, 1, 0, SYN),
        Stage::SgIngress,
        DropReason::SgNoRule,
    );
    // Not a member of the remote group.
    sg.refused(
        &STRANGER,
        &tcp6(&STRANGER, &WEB, 40000, 80, 1, 0, SYN),
        Stage::SgIngress,
        DropReason::SgNoRule,
    );
    // Web has no egress rule: it cannot open a connection.
    sg.refused(
        &WEB,
        &tcp6(&WEB, &CLIENT, 40000, 80, 1, 0, SYN),
        Stage::SgEgress,
        DropReason::SgNoRule,
    );
    // ICMPv6 echo request (type 128) from anyone; the reply passes as related state.
    sg.passes(&STRANGER, &WEB, &ping6(&STRANGER, &WEB, false));
    sg.passes(&WEB, &STRANGER, &ping6(&WEB, &STRANGER, true));
    // An unsolicited echo reply is not a reply of anything.
    sg.refused(
        &WEB,
        &ping6(&WEB, &CLIENT, true),
        Stage::SgEgress,
        DropReason::SgNoRule,
    );
    // remote_ip_prefix: DNS from the stranger's /128 only.
    sg.passes(&STRANGER, &WEB, &udp_frame(&STRANGER, &WEB, 5353, 53));
    sg.refused(
        &CLIENT,
        &udp_frame(&CLIENT, &WEB, 5353, 53),
        Stage::SgIngress,
        DropReason::SgNoRule,
    );
}

#[test]
fn neighbour_discovery_passes_without_rules_and_is_checked_by_port_security() {
    let mut sg = Sg::new();
    let web_ll = link_local_from_mac(WEB.mac).octets();
    let client_ll = link_local_from_mac(CLIENT.mac).octets();
    // A neighbour solicitation from the client's link-local address for web's address,
    // with its own link-layer address: web has no ICMPv6 rule for type 135, yet it passes.
    let mut body = vec![0, 0, 0, 0];
    body.extend_from_slice(&WEB.ip);
    body.extend_from_slice(&[1, 1]);
    body.extend_from_slice(&CLIENT.mac);
    let ns = ipv6_frame(
        WEB.mac,
        CLIENT.mac,
        client_ll,
        WEB.ip,
        58,
        &icmpv6(client_ll, WEB.ip, 135, 0, &body),
    );
    sg.passes(&CLIENT, &WEB, &ns);
    // Web's advertisement for its own address passes.
    let mut body = vec![0x60, 0, 0, 0];
    body.extend_from_slice(&WEB.ip);
    body.extend_from_slice(&[2, 1]);
    body.extend_from_slice(&WEB.mac);
    let na = ipv6_frame(
        CLIENT.mac,
        WEB.mac,
        web_ll,
        client_ll,
        58,
        &icmpv6(web_ll, client_ll, 136, 0, &body),
    );
    sg.passes(&WEB, &CLIENT, &na);
    // An advertisement for the client's address from web: spoofed.
    let mut body = vec![0x60, 0, 0, 0];
    body.extend_from_slice(&CLIENT.ip);
    let na = ipv6_frame(
        STRANGER.mac,
        WEB.mac,
        web_ll,
        client_ll,
        58,
        &icmpv6(web_ll, client_ll, 136, 0, &body),
    );
    sg.refused(&WEB, &na, Stage::PortSecurity, DropReason::SpoofedNd);
    // A solicitation whose source link-layer option names another MAC.
    let mut body = vec![0, 0, 0, 0];
    body.extend_from_slice(&CLIENT.ip);
    body.extend_from_slice(&[1, 1]);
    body.extend_from_slice(&STRANGER.mac);
    let ns = ipv6_frame(
        CLIENT.mac,
        WEB.mac,
        web_ll,
        CLIENT.ip,
        58,
        &icmpv6(web_ll, CLIENT.ip, 135, 0, &body),
    );
    sg.refused(&WEB, &ns, Stage::PortSecurity, DropReason::SpoofedNd);
    // A duplicate address detection probe for the client's address.
    let mut body = vec![0, 0, 0, 0];
    body.extend_from_slice(&CLIENT.ip);
    let unspecified = [0u8; 16];
    let dad = ipv6_frame(
        CLIENT.mac,
        WEB.mac,
        unspecified,
        CLIENT.ip,
        58,
        &icmpv6(unspecified, CLIENT.ip, 135, 0, &body),
    );
    sg.refused(&WEB, &dad, Stage::PortSecurity, DropReason::SpoofedNd);
    // A source that is neither the port's link-local address nor one of its addresses.
    sg.refused(
        &STRANGER,
        &tcp6(&CLIENT, &WEB, 40000, 80, 1, 0, SYN)
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (6..12).contains(&i) {
                    STRANGER.mac[i - 6]
                } else {
                    b
                }
            })
            .collect::<Vec<_>>(),
        Stage::PortSecurity,
        DropReason::SpoofedIp,
    );
}

#[test]
fn extension_headers_are_walked_and_fragments_follow_their_first() {
    let mut sg = Sg::new();
    // Hop-by-hop options (8 octets of padding) before TCP: the ports are found.
    let tcp = tcp6(&CLIENT, &WEB, 41000, 80, 1, 0, SYN);
    let mut with_hbh = tcp[..54].to_vec();
    with_hbh[20] = 0; // next header: hop-by-hop
    with_hbh.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
    with_hbh.extend_from_slice(&tcp[54..]);
    let len = (with_hbh.len() - 54) as u16;
    with_hbh[18..20].copy_from_slice(&len.to_be_bytes());
    sg.passes(&CLIENT, &WEB, &with_hbh);
    // Nine hop-by-hop headers: longer than the walk follows, a malformed packet.
    let mut long = tcp[..54].to_vec();
    long[20] = 0;
    for i in 0..9 {
        long.extend_from_slice(&[if i == 8 { 6 } else { 0 }, 0, 1, 4, 0, 0, 0, 0]);
    }
    long.extend_from_slice(&tcp[54..]);
    let len = (long.len() - 54) as u16;
    long[18..20].copy_from_slice(&len.to_be_bytes());
    let before = sg.sw.counters().dropped(DropReason::BadIpv6Header);
    assert!(sg.send(&CLIENT, &long).is_empty());
    assert_eq!(
        sg.sw.counters().dropped(DropReason::BadIpv6Header),
        before + 1
    );
    // A first fragment (of UDP to port 53 from the stranger) admits its later fragments;
    // a later fragment of another datagram is dropped where it is first checked (the
    // stranger's egress).
    let udp = udp_frame(&STRANGER, &WEB, 5353, 53);
    let frag = |offset: u16, more: bool, ident: u32, l4: &[u8]| {
        let mut f = udp[..54].to_vec();
        f[20] = 44;
        f.extend_from_slice(&[17, 0]);
        f.extend_from_slice(&(offset << 3 | u16::from(more)).to_be_bytes());
        f.extend_from_slice(&ident.to_be_bytes());
        f.extend_from_slice(l4);
        let len = (f.len() - 54) as u16;
        f[18..20].copy_from_slice(&len.to_be_bytes());
        f
    };
    let first = frag(0, true, 7, &udp[54..]);
    sg.passes(&STRANGER, &WEB, &first);
    sg.passes(&STRANGER, &WEB, &frag(2, false, 7, &[0; 8]));
    sg.refused(
        &STRANGER,
        &frag(2, false, 8, &[0; 8]),
        Stage::SgEgress,
        DropReason::SgFragment,
    );
}

#[test]
fn ipv6_rules_are_checked_against_their_ethertype() {
    let bad = STATE.replace(
        r#"remote_ip_prefix = "2001:db8:1::12/128""#,
        r#"remote_ip_prefix = "198.18.1.12/32""#,
    );
    let desired = DesiredState::from_toml_str(&bad).expect("parses");
    let errors = validate(&desired).expect_err("an IPv4 prefix in an IPv6 rule");
    let text = format!("{errors:?}");
    assert!(
        text.contains("remote_ip_prefix") && text.contains("this rule's ethertype is IPv6"),
        "{text}"
    );
    let bad = STATE.replace(
        r#"remote_ip_prefix = "2001:db8:1::12/128""#,
        r#"remote_ip_prefix = "2001:db8:1::12/64""#,
    );
    let desired = DesiredState::from_toml_str(&bad).expect("parses");
    let text = format!("{:?}", validate(&desired).expect_err("host bits"));
    assert!(text.contains("host bits set"), "{text}");
}

#[test]
fn ipv6_subnets_hold_addresses_and_promise_nothing_else() {
    let check = |from: &str, to: &str, expect: &str| {
        let bad = STATE.replace(from, to);
        let desired = DesiredState::from_toml_str(&bad).expect("parses");
        let text = format!("{:?}", validate(&desired).expect_err(expect));
        assert!(text.contains(expect), "{expect}: {text}");
    };
    check(
        "ip_version = 6\ncidr = \"2001:db8:1::/64\"\ngateway_ip = \"2001:db8:1::1\"\nenable_dhcp = false",
        "ip_version = 6\ncidr = \"2001:db8:1::/64\"",
        "DHCPv6 is not served; set enable_dhcp = false",
    );
    check(
        "ip_address = \"2001:db8:1::11\"",
        "ip_address = \"2001:db8:2::11\"",
        "is not inside the subnet's cidr 2001:db8:1::/64",
    );
    check(
        "ip_address = \"2001:db8:1::11\"",
        "ip_address = \"2001:db8:1::1\"",
        "is the gateway_ip of subnet sub6",
    );
    check(
        "ip_address = \"2001:db8:1::11\"",
        "ip_address = \"198.18.1.11\"",
        "is not an IPv6 address (subnet sub6 is IPv6)",
    );
    let routed = format!("{STATE}\n[[routers]]\nid = \"r\"\ninterfaces = [\"sub6\"]\n");
    let desired = DesiredState::from_toml_str(&routed).expect("parses");
    let text = format!("{:?}", validate(&desired).expect_err("routed IPv6"));
    assert!(
        text.contains("is an IPv6 subnet: not supported on a router"),
        "{text}"
    );
}

/// An ICMPv6 error of `ty` from `from` to `to` quoting `quoted` (an IPv6 packet without its
/// Ethernet header), as much as fits in the minimum MTU.
fn icmpv6_error(from: &Vm, to: &Vm, ty: u8, quoted: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 0, 0x05, 0x00];
    body.extend_from_slice(&quoted[..quoted.len().min(1232)]);
    let m = icmpv6(from.ip, to.ip, ty, 0, &body);
    ipv6_frame(to.mac, from.mac, from.ip, to.ip, 58, &m)
}

#[test]
fn icmpv6_errors_about_tracked_flows_pass_as_related() {
    let mut sg = Sg::new();
    let syn = tcp6(&CLIENT, &WEB, 42000, 80, 1000, 0, SYN);
    sg.passes(&CLIENT, &WEB, &syn);
    // Web (no egress rule) tells the client its segment was too big: related, passes.
    sg.passes(&WEB, &CLIENT, &icmpv6_error(&WEB, &CLIENT, 2, &syn[14..]));
    // The same about a flow nobody opened is not.
    let other = tcp6(&CLIENT, &WEB, 42001, 80, 1000, 0, SYN);
    sg.refused(
        &WEB,
        &icmpv6_error(&WEB, &CLIENT, 2, &other[14..]),
        Stage::SgEgress,
        DropReason::SgNoRule,
    );
}

#[test]
fn a_rule_change_cuts_the_ipv6_connections_it_no_longer_allows() {
    let mut sg = Sg::new();
    sg.passes(&CLIENT, &WEB, &tcp6(&CLIENT, &WEB, 43000, 80, 1000, 0, SYN));
    sg.passes(
        &WEB,
        &CLIENT,
        &tcp6(&WEB, &CLIENT, 80, 43000, 5000, 1001, SYN_ACK),
    );
    sg.passes(&STRANGER, &WEB, &ping6(&STRANGER, &WEB, false));
    // Web's TCP rule goes; its ICMPv6 rule stays.
    sg.apply(&STATE.replace(
        r#"  { direction = "ingress", ethertype = "IPv6", protocol = "tcp", port_range_min = 80, port_range_max = 80, remote_group_id = "clients" },
"#,
        "",
    ));
    sg.refused(
        &CLIENT,
        &tcp6(&CLIENT, &WEB, 43000, 80, 1001, 5001, ACK),
        Stage::SgIngress,
        DropReason::SgConnectionCut,
    );
    sg.passes(&WEB, &STRANGER, &ping6(&WEB, &STRANGER, true));
}
