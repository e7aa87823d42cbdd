//! Security groups through the whole worker on `mem` ports, from a desired state compiled
//! by the control plane: what the groups allow passes in each direction, what they do not
//! is dropped with `sg_no_rule` under the stage that decided (`sg_egress` on the sending
//! port, `sg_ingress` for the receiving one, per replica when flooding), replies and
//! related ICMP errors of allowed connections pass without a rule, stateless groups track
//! nothing, a rule change cuts what it no longer allows, and a port flooding new
//! connections hits its own quota only. Every frame is accounted for.

use pollux_dataplane::conntrack::ConnConfig;
use pollux_dataplane::drop::DropReason;
use pollux_dataplane::pipeline::Stage;
use pollux_dataplane::secgroup::port_zone;
use pollux_dataplane::worker::WorkerConfig;
use pollux_tests::frames::{arp, icmp_echo, internet_checksum, ipv4, tcp, udp, BROADCAST};
use pollux_tests::port_lab::{NamedVm, PortLab};

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const SYN_ACK: u8 = 0x12;
const RST: u8 = 0x04;

/// A VM port of the test network: its id in the config, MAC and address.
#[derive(Clone, Copy, Debug)]
struct Vm {
    name: &'static str,
    mac: [u8; 6],
    ip: [u8; 4],
}

const WEB: Vm = Vm {
    name: "web",
    mac: [0xfa, 0x16, 0x3e, 0, 0, 1],
    ip: [198, 18, 1, 10],
};
const CLIENT: Vm = Vm {
    name: "client",
    mac: [0xfa, 0x16, 0x3e, 0, 0, 2],
    ip: [198, 18, 1, 11],
};
const ADMIN: Vm = Vm {
    name: "admin",
    mac: [0xfa, 0x16, 0x3e, 0, 0, 3],
    ip: [198, 18, 1, 12],
};
/// Port security off: sends and receives anything.
const OPEN: Vm = Vm {
    name: "open",
    mac: [0xfa, 0x16, 0x3e, 0, 0, 4],
    ip: [198, 18, 1, 13],
};
/// Port security on and no group: Neutron's deny-all but for ARP and DHCP.
const BARE: Vm = Vm {
    name: "bare",
    mac: [0xfa, 0x16, 0x3e, 0, 0, 5],
    ip: [198, 18, 1, 14],
};
/// A stateless group.
const STATELESS: Vm = Vm {
    name: "stateless",
    mac: [0xfa, 0x16, 0x3e, 0, 0, 6],
    ip: [198, 18, 1, 15],
};
/// Two groups: the union of their rules.
const UNION: Vm = Vm {
    name: "union",
    mac: [0xfa, 0x16, 0x3e, 0, 0, 7],
    ip: [198, 18, 1, 16],
};

const VMS: [Vm; 7] = [WEB, CLIENT, ADMIN, OPEN, BARE, STATELESS, UNION];

fn port_toml(vm: &Vm, groups: &str, security: bool) -> String {
    format!(
        r#"
[[ports]]
id = "{name}"
network_id = "net"
mac_address = "{mac}"
fixed_ips = [{{ subnet_id = "sub", ip_address = "{ip}" }}]
security_groups = [{groups}]
port_security_enabled = {security}
binding = {{ driver = "mem" }}
"#,
        name = vm.name,
        mac = vm
            .mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
        ip = std::net::Ipv4Addr::from(vm.ip),
    )
}

/// The test state. `web_http` keeps web's HTTP rule; `client_in_clients` keeps the client
/// port in the `clients` group (else it is in `clients2`, with the same rules).
fn state(web_http: bool, client_in_clients: bool) -> String {
    let mut s = String::from(
        r#"
[[networks]]
id = "net"
network_type = "local"

[[subnets]]
id = "sub"
network_id = "net"
cidr = "198.18.1.0/24"
enable_dhcp = false

[[address_groups]]
id = "admins"
addresses = ["198.18.1.12", "2001:db8::/64"]

[[security_groups]]
id = "web"
"#,
    );
    if web_http {
        s += r#"
[[security_groups.rules]]
id = "web-http"
direction = "ingress"
protocol = "tcp"
port_range_min = 80
port_range_max = 80
remote_group_id = "clients"
"#;
    }
    s += r#"
[[security_groups.rules]]
direction = "ingress"
protocol = "tcp"
port_range_min = 8000
port_range_max = 8080
remote_ip_prefix = "198.18.1.13/32"

[[security_groups.rules]]
direction = "ingress"
protocol = "icmp"
port_range_min = 8

[[security_groups.rules]]
direction = "ingress"
protocol = 17
port_range_min = 53
port_range_max = 53
remote_address_group_id = "admins"

[[security_groups.rules]]
direction = "ingress"
protocol = "udp"
port_range_min = 5000
port_range_max = 5000

[[security_groups]]
id = "clients"
rules = [{ direction = "egress" }]

[[security_groups]]
id = "clients2"
rules = [{ direction = "egress" }]

[[security_groups]]
id = "plain"
stateful = false
rules = [
  { direction = "ingress", protocol = "tcp", port_range_min = 80, port_range_max = 80 },
]

[[security_groups]]
id = "ssh"
rules = [{ direction = "ingress", protocol = "tcp", port_range_min = 22, port_range_max = 22 }]

[[security_groups]]
id = "http"

[[security_group_rules]]
id = "http-80"
security_group_id = "http"
direction = "ingress"
protocol = "tcp"
port_range_min = 80
port_range_max = 80
"#;
    let client_group = if client_in_clients {
        r#""clients""#
    } else {
        r#""clients2""#
    };
    s += &port_toml(&WEB, r#""web""#, true);
    s += &port_toml(&CLIENT, client_group, true);
    s += &port_toml(&ADMIN, r#""clients""#, true);
    s += &port_toml(&OPEN, "", false);
    s += &port_toml(&BARE, "", true);
    s += &port_toml(&STATELESS, r#""plain""#, true);
    s += &port_toml(&UNION, r#""ssh", "http""#, true);
    s
}

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
    fn new(text: &str) -> Self {
        Self::with(text, WorkerConfig::default())
    }

    fn with(text: &str, worker: WorkerConfig) -> Self {
        Sg(PortLab::new(text, &VMS.map(|vm| vm.name), worker))
    }

    fn hits(&self, group: &str, rule: &str) -> u64 {
        self.snap()
            .security_groups()
            .rule_hits()
            .find(|(n, _)| n.group == group && n.rule == rule)
            .map(|(_, h)| h)
            .expect("rule exists")
    }

    fn sg_sessions(&self, vm: &Vm) -> usize {
        let zone = port_zone(pollux_dataplane::port::PortId(self.id(vm)));
        self.sw
            .worker
            .sessions()
            .iter()
            .filter(|(_, s)| s.key(pollux_dataplane::conntrack::Dir::Original).zone == zone)
            .count()
    }
}

#[allow(clippy::too_many_arguments)]
fn tcp_frame(from: &Vm, to: &Vm, sport: u16, dport: u16, seq: u32, ack: u32, flags: u8) -> Vec<u8> {
    ipv4(
        to.mac,
        from.mac,
        None,
        from.ip,
        to.ip,
        64,
        6,
        &tcp(from.ip, to.ip, sport, dport, seq, ack, flags, 64000, &[]),
    )
}

fn udp_frame(from: &Vm, to: &Vm, sport: u16, dport: u16) -> Vec<u8> {
    ipv4(
        to.mac,
        from.mac,
        None,
        from.ip,
        to.ip,
        64,
        17,
        &udp(from.ip, to.ip, sport, dport, b"hello"),
    )
}

fn ping(from: &Vm, to: &Vm, reply: bool) -> Vec<u8> {
    ipv4(
        to.mac,
        from.mac,
        None,
        from.ip,
        to.ip,
        64,
        1,
        &icmp_echo(reply, 9, 1),
    )
}

/// An ICMP message of `ty`/`code` from `from` to `to` quoting `quoted` (an IPv4 packet
/// without its Ethernet header) as an error does.
fn icmp_error(from: &Vm, to: &Vm, ty: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&quoted[..quoted.len().min(28)]);
    let sum = internet_checksum(&m);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    ipv4(to.mac, from.mac, None, from.ip, to.ip, 64, 1, &m)
}

/// A handshake from `client` to `server`'s `port`; asserts every segment passes.
fn handshake(sg: &mut Sg, client: &Vm, server: &Vm, sport: u16, port: u16) {
    sg.passes(
        client,
        server,
        &tcp_frame(client, server, sport, port, 1000, 0, SYN),
    );
    sg.passes(
        server,
        client,
        &tcp_frame(server, client, port, sport, 5000, 1001, SYN_ACK),
    );
    sg.passes(
        client,
        server,
        &tcp_frame(client, server, sport, port, 1001, 5001, ACK),
    );
}

#[test]
fn allowed_connections_pass_both_ways_and_are_tracked_in_each_ports_zone() {
    let mut sg = Sg::new(&state(true, true));
    handshake(&mut sg, &CLIENT, &WEB, 40000, 80);
    // The client's egress admitted it in its zone, the web port's ingress in its own.
    assert_eq!(sg.sg_sessions(&CLIENT), 1);
    assert_eq!(sg.sg_sessions(&WEB), 1);
    assert_eq!(sg.hits("web", "web-http"), 1, "one connection, one hit");
    assert_eq!(
        sg.hits("clients", "clients/0"),
        1,
        "default id <group>/<index>"
    );
}

#[test]
fn no_rule_is_a_drop_in_either_direction() {
    let mut sg = Sg::new(&state(true, true));
    // Wrong port: web's ingress has no rule for it.
    sg.refused(
        &CLIENT,
        &tcp_frame(&CLIENT, &WEB, 40000, 81, 1, 0, SYN),
        Stage::SgIngress,
        DropReason::SgNoRule,
    );
    // Web has no egress rule: it may answer, never open.
    sg.refused(
        &WEB,
        &tcp_frame(&WEB, &CLIENT, 40000, 80, 1, 0, SYN),
        Stage::SgEgress,
        DropReason::SgNoRule,
    );
    // Unsolicited traffic to the client (no ingress rule, no connection).
    sg.refused(
        &OPEN,
        &tcp_frame(&OPEN, &CLIENT, 80, 40000, 1, 1, SYN_ACK),
        Stage::SgIngress,
        DropReason::SgNoRule,
    );
    assert_eq!(sg.sg_sessions(&WEB), 0, "nothing admitted into web's zone");
}

#[test]
fn port_ranges_prefixes_and_remote_groups_decide() {
    let mut sg = Sg::new(&state(true, true));
    // 8000-8080 from 198.18.1.13/32 only.
    sg.passes(&OPEN, &WEB, &tcp_frame(&OPEN, &WEB, 1234, 8000, 1, 0, SYN));
    sg.passes(&OPEN, &WEB, &tcp_frame(&OPEN, &WEB, 1235, 8080, 1, 0, SYN));
    sg.refused(
        &OPEN,
        &tcp_frame(&OPEN, &WEB, 1236, 8081, 1, 0, SYN),
        Stage::SgIngress,
        DropReason::SgNoRule,
    );
    sg.refused(
        &CLIENT,
        &tcp_frame(&CLIENT, &WEB, 1237, 8000, 1, 0, SYN),
        Stage::SgIngress,
        DropReason::SgNoRule,
    );
    // Port 80 from members of `clients` (client and admin), not from the open port.
    sg.passes(&ADMIN, &WEB, &tcp_frame(&ADMIN, &WEB, 1238, 80, 1, 0, SYN));
    sg.refused(
        &OPEN,
        &tcp_frame(&OPEN, &WEB, 1239, 80, 1, 0, SYN),
        Stage::SgIngress,
        DropReason::SgNoRule,
    );
    // UDP 53 from the address group (admin's address) only.
    sg.passes(&ADMIN, &WEB, &udp_frame(&ADMIN, &WEB, 5353, 53));
    sg.refused(
        &CLIENT,
        &udp_frame(&CLIENT, &WEB, 5353, 53),
        Stage::SgIngress,
        DropReason::SgNoRule,
    );
}

#[test]
fn icmp_type_and_code_are_matched_and_echo_replies_pass() {
    let mut sg = Sg::new(&state(true, true));
    sg.passes(&OPEN, &WEB, &ping(&OPEN, &WEB, false));
    sg.passes(&WEB, &OPEN, &ping(&WEB, &OPEN, true));
    // A timestamp request (type 13) is not type 8.
    let mut ts = vec![13, 0, 0, 0, 0, 9, 0, 1];
    ts.extend_from_slice(&[0; 12]);
    let sum = internet_checksum(&ts);
    ts[2..4].copy_from_slice(&sum.to_be_bytes());
    let frame = ipv4(WEB.mac, OPEN.mac, None, OPEN.ip, WEB.ip, 64, 1, &ts);
    sg.refused(&OPEN, &frame, Stage::SgIngress, DropReason::SgNoRule);
    // An echo reply nobody asked for.
    sg.refused(
        &OPEN,
        &ipv4(
            WEB.mac,
            OPEN.mac,
            None,
            OPEN.ip,
            WEB.ip,
            64,
            1,
            &icmp_echo(true, 77, 1),
        ),
        Stage::SgIngress,
        DropReason::SgNoRule,
    );
}

#[test]
fn related_icmp_errors_pass_and_unrelated_ones_do_not() {
    let mut sg = Sg::new(&state(true, true));
    let query = udp_frame(&CLIENT, &OPEN, 41000, 9999);
    sg.passes(&CLIENT, &OPEN, &query);
    // Port unreachable about that datagram: the client has no ingress rule, it is related.
    let error = icmp_error(&OPEN, &CLIENT, 3, 3, &query[14..]);
    sg.passes(&OPEN, &CLIENT, &error);
    // The same error about a datagram never sent.
    let other = udp_frame(&CLIENT, &OPEN, 41001, 9999);
    let error = icmp_error(&OPEN, &CLIENT, 3, 3, &other[14..]);
    sg.refused(&OPEN, &error, Stage::SgIngress, DropReason::SgNoRule);
}

#[test]
fn a_port_without_groups_gets_only_arp_and_dhcp() {
    let mut sg = Sg::new(&state(true, true));
    sg.refused(
        &BARE,
        &ping(&BARE, &OPEN, false),
        Stage::SgEgress,
        DropReason::SgNoRule,
    );
    sg.refused(
        &OPEN,
        &ping(&OPEN, &BARE, false),
        Stage::SgIngress,
        DropReason::SgNoRule,
    );
    // ARP is flooded to every other port.
    let who_has = arp(1, BROADCAST, BARE.mac, BARE.ip, [0; 6], OPEN.ip);
    let got = sg.send(&BARE, &who_has);
    assert_eq!(got.len(), VMS.len() - 1, "ARP reaches everyone: {got:?}");
    // A DHCP client's first message goes out (flooded: no DHCP server on this network);
    // the ports with groups refuse it on their way in, the open port takes it.
    let discover = ipv4(
        BROADCAST,
        BARE.mac,
        None,
        [0, 0, 0, 0],
        [255, 255, 255, 255],
        64,
        17,
        &udp([0, 0, 0, 0], [255, 255, 255, 255], 68, 67, &[0; 240]),
    );
    let got = sg.send(&BARE, &discover);
    assert_eq!(got, vec![(OPEN.name, discover.clone())]);
}

#[test]
fn flooded_replicas_are_filtered_per_output_port() {
    let mut sg = Sg::new(&state(true, true));
    let before = sg
        .sw
        .counters()
        .stage_dropped(Stage::SgIngress, DropReason::SgNoRule);
    let frame = ipv4(
        BROADCAST,
        OPEN.mac,
        None,
        OPEN.ip,
        [198, 18, 1, 255],
        64,
        17,
        &udp(OPEN.ip, [198, 18, 1, 255], 6000, 5000, b"announce"),
    );
    let got = sg.send(&OPEN, &frame);
    // Only web allows UDP 5000 in; the five other ports with groups refuse their copy.
    assert_eq!(got, vec![(WEB.name, frame.clone())]);
    assert_eq!(
        sg.sw
            .counters()
            .stage_dropped(Stage::SgIngress, DropReason::SgNoRule),
        before + 5
    );
}

#[test]
fn several_groups_allow_the_union_of_their_rules() {
    let mut sg = Sg::new(&state(true, true));
    sg.passes(&OPEN, &UNION, &tcp_frame(&OPEN, &UNION, 1, 22, 1, 0, SYN));
    sg.passes(&OPEN, &UNION, &tcp_frame(&OPEN, &UNION, 2, 80, 1, 0, SYN));
    sg.refused(
        &OPEN,
        &tcp_frame(&OPEN, &UNION, 3, 23, 1, 0, SYN),
        Stage::SgIngress,
        DropReason::SgNoRule,
    );
    assert_eq!(sg.hits("http", "http-80"), 1, "the top-level rule counted");
}

#[test]
fn stateless_groups_track_nothing_and_need_rules_both_ways() {
    let mut sg = Sg::new(&state(true, true));
    sg.passes(
        &OPEN,
        &STATELESS,
        &tcp_frame(&OPEN, &STATELESS, 4000, 80, 1, 0, SYN),
    );
    assert_eq!(sg.sg_sessions(&STATELESS), 0);
    // No egress rule: even the answer is dropped.
    sg.refused(
        &STATELESS,
        &tcp_frame(&STATELESS, &OPEN, 80, 4000, 7, 2, SYN_ACK),
        Stage::SgEgress,
        DropReason::SgNoRule,
    );
    assert_eq!(
        sg.hits("plain", "plain/0"),
        1,
        "stateless: one hit per packet"
    );
}

#[test]
fn membership_change_updates_the_address_set_not_the_rules() {
    let mut sg = Sg::new(&state(true, true));
    let web = pollux_dataplane::port::PortId(sg.id(&WEB));
    let before = sg.snap();
    handshake(&mut sg, &CLIENT, &WEB, 42000, 80);
    sg.apply(&state(true, false));
    let after = sg.snap();
    let (p0, p1) = (
        before.security_groups().policy(web).expect("policy"),
        after.security_groups().policy(web).expect("policy"),
    );
    assert_eq!(p0.ingress, p1.ingress, "the compiled rules are the same");
    assert_ne!(
        before.security_groups().sets()[1],
        after.security_groups().sets()[1],
        "the `clients` set lost the client"
    );
    // A new connection from the client is refused now; the admin still gets in.
    sg.refused(
        &CLIENT,
        &tcp_frame(&CLIENT, &WEB, 42001, 80, 1, 0, SYN),
        Stage::SgIngress,
        DropReason::SgNoRule,
    );
    sg.passes(&ADMIN, &WEB, &tcp_frame(&ADMIN, &WEB, 42002, 80, 1, 0, SYN));
    // The client's open connection is no longer allowed either: cut on its next packet.
    sg.refused(
        &CLIENT,
        &tcp_frame(&CLIENT, &WEB, 42000, 80, 1001, 5001, ACK),
        Stage::SgIngress,
        DropReason::SgConnectionCut,
    );
}

#[test]
fn removing_a_rule_cuts_its_established_connections() {
    let mut sg = Sg::new(&state(true, true));
    handshake(&mut sg, &CLIENT, &WEB, 43000, 80);
    // A connection admitted by another rule survives the change.
    sg.passes(&OPEN, &WEB, &tcp_frame(&OPEN, &WEB, 43001, 8000, 1, 0, SYN));
    sg.apply(&state(false, true));
    sg.refused(
        &WEB,
        &tcp_frame(&WEB, &CLIENT, 80, 43000, 5001, 1001, ACK),
        Stage::SgEgress,
        DropReason::SgConnectionCut,
    );
    // Gone for good: the next packet finds no connection and no rule.
    sg.refused(
        &CLIENT,
        &tcp_frame(&CLIENT, &WEB, 43000, 80, 1001, 5001, ACK),
        Stage::SgIngress,
        DropReason::SgNoRule,
    );
    sg.passes(
        &WEB,
        &OPEN,
        &tcp_frame(&WEB, &OPEN, 8000, 43001, 9, 2, SYN_ACK),
    );
}

#[test]
fn a_port_opening_connections_as_fast_as_it_can_hits_its_own_quota() {
    let worker = WorkerConfig {
        conntrack: ConnConfig {
            owner_quota: 8,
            ..ConnConfig::with_capacity(1024)
        },
        ..WorkerConfig::default()
    };
    let mut sg = Sg::with(&state(true, true), worker);
    let mut passed = 0;
    for sport in 0..20u16 {
        let got = sg.send(&CLIENT, &udp_frame(&CLIENT, &OPEN, 10000 + sport, 7));
        passed += got.len();
    }
    assert_eq!(passed, 8, "the quota");
    assert_eq!(
        sg.sw
            .counters()
            .stage_dropped(Stage::SgEgress, DropReason::SgConnLimit),
        12
    );
    // Another port still opens connections, and the client's open ones still flow.
    sg.passes(&ADMIN, &OPEN, &udp_frame(&ADMIN, &OPEN, 10000, 7));
    sg.passes(&CLIENT, &OPEN, &udp_frame(&CLIENT, &OPEN, 10000, 7));
    sg.passes(&OPEN, &CLIENT, &udp_frame(&OPEN, &CLIENT, 7, 10000));
}

#[test]
fn forged_rst_and_out_of_window_segments_are_dropped() {
    let mut sg = Sg::new(&state(true, true));
    handshake(&mut sg, &CLIENT, &WEB, 44000, 80);
    // Data inside the window passes.
    sg.passes(
        &CLIENT,
        &WEB,
        &tcp_frame(&CLIENT, &WEB, 44000, 80, 1001, 5001, ACK),
    );
    // An RST far outside the window (a blind attacker's guess) is refused.
    sg.refused(
        &OPEN,
        &ipv4(
            WEB.mac,
            OPEN.mac,
            None,
            CLIENT.ip,
            WEB.ip,
            64,
            6,
            &tcp(
                CLIENT.ip,
                WEB.ip,
                44000,
                80,
                1001 + 0x4000_0000,
                0,
                RST,
                0,
                &[],
            ),
        ),
        Stage::SgIngress,
        DropReason::SgInvalid,
    );
    // So is a data segment far ahead of anything acknowledged (refused by the sender's
    // own zone first).
    sg.refused(
        &CLIENT,
        &tcp_frame(&CLIENT, &WEB, 44000, 80, 1001 + 0x2000_0000, 5001, ACK),
        Stage::SgEgress,
        DropReason::SgInvalid,
    );
    // The connection still works, and an in-window RST closes it.
    sg.passes(
        &WEB,
        &CLIENT,
        &tcp_frame(&WEB, &CLIENT, 80, 44000, 5001, 1001, ACK),
    );
    sg.passes(
        &CLIENT,
        &WEB,
        &tcp_frame(&CLIENT, &WEB, 44000, 80, 1001, 0, RST),
    );
}

#[test]
fn later_fragments_pass_only_behind_an_admitted_first_fragment() {
    let mut sg = Sg::new(&state(true, true));
    let fragment = |ident: u16, offset_words: u16, more: bool, payload: &[u8]| {
        let mut f = ipv4(WEB.mac, OPEN.mac, None, OPEN.ip, WEB.ip, 64, 17, payload);
        f[18..20].copy_from_slice(&ident.to_be_bytes());
        let flags = if more { 0x2000 } else { 0 } | offset_words;
        f[20..22].copy_from_slice(&flags.to_be_bytes());
        // The header checksum covers what changed.
        f[24..26].copy_from_slice(&[0, 0]);
        let sum = internet_checksum(&f[14..34]);
        f[24..26].copy_from_slice(&sum.to_be_bytes());
        f
    };
    // UDP 5000 is allowed in: the first fragment, then the rest of its datagram.
    let mut first = udp(OPEN.ip, WEB.ip, 6000, 5000, &[7; 24]);
    first.truncate(16);
    sg.passes(&OPEN, &WEB, &fragment(0x1111, 0, true, &first));
    sg.passes(&OPEN, &WEB, &fragment(0x1111, 2, false, &[7; 16]));
    // A later fragment of a datagram whose first fragment never came (or was refused).
    sg.refused(
        &OPEN,
        &fragment(0x2222, 2, false, &[7; 16]),
        Stage::SgIngress,
        DropReason::SgFragment,
    );
    let mut refused_first = udp(OPEN.ip, WEB.ip, 6000, 5001, &[7; 24]);
    refused_first.truncate(16);
    sg.refused(
        &OPEN,
        &fragment(0x3333, 0, true, &refused_first),
        Stage::SgIngress,
        DropReason::SgNoRule,
    );
    sg.refused(
        &OPEN,
        &fragment(0x3333, 2, false, &[7; 16]),
        Stage::SgIngress,
        DropReason::SgFragment,
    );
}

#[test]
fn drops_are_charged_to_the_sending_port_with_stage_and_reason() {
    let mut sg = Sg::new(&state(true, true));
    let open = pollux_dataplane::port::PortId(sg.id(&OPEN));
    sg.refused(
        &OPEN,
        &tcp_frame(&OPEN, &WEB, 1, 9999, 1, 0, SYN),
        Stage::SgIngress,
        DropReason::SgNoRule,
    );
    let per_port: Vec<_> = sg
        .sw
        .counters()
        .port_drops
        .iter()
        .filter(|&(p, _, _, n)| p == open && n > 0)
        .map(|(_, stage, reason, n)| (stage, reason, n))
        .collect();
    assert_eq!(per_port, vec![(Stage::SgIngress, DropReason::SgNoRule, 1)]);
}

#[test]
fn an_allowed_ping_lets_its_reply_back_not_a_ping_the_other_way() {
    let mut sg = Sg::new(&state(true, true));
    sg.passes(&CLIENT, &OPEN, &ping(&CLIENT, &OPEN, false));
    sg.passes(&OPEN, &CLIENT, &ping(&OPEN, &CLIENT, true));
    // A request from the open port with the same identifier is no reply.
    sg.refused(
        &OPEN,
        &ping(&OPEN, &CLIENT, false),
        Stage::SgIngress,
        DropReason::SgNoRule,
    );
}
