//! Per-port connection quotas of each address family, through the whole worker on `mem`
//! ports: IPv4 connections are charged to the port's share of the IPv4 table and IPv6 ones
//! to its share of the IPv6 table, each with its own quota (`polluxd --conn-per-port`,
//! `--conn6-per-port`) and drop counter (`sg_conn_limit`, `sg_conn_limit_ipv6`), so a VM
//! filling one family's share neither starves its own other family nor another port.
//! Addresses: 198.18.0.0/15 and 2001:db8::/32 only.

use pollux_dataplane::conntrack::ConnConfig;
use pollux_dataplane::drop::DropReason;
use pollux_dataplane::pipeline::Stage;
use pollux_dataplane::worker::WorkerConfig;
use pollux_tests::frames::{ipv4, ipv6_frame, udp, udp6};
use pollux_tests::port_lab::{NamedVm, PortLab};

#[derive(Clone, Copy, Debug)]
struct Vm {
    name: &'static str,
    mac: [u8; 6],
    ip: [u8; 4],
    ip6: [u8; 16],
}

impl NamedVm for Vm {
    fn name(&self) -> &'static str {
        self.name
    }
}

const fn vm(name: &'static str, last: u8) -> Vm {
    Vm {
        name,
        mac: [0xfa, 0x16, 0x3e, 0, 0, last],
        ip: [198, 18, 1, last],
        ip6: [
            0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, last,
        ],
    }
}

/// Opens connections as fast as it can.
const FLOODER: Vm = vm("flooder", 11);
/// Its victim: anything in.
const SINK: Vm = vm("sink", 12);
/// Another VM, opening connections of its own.
const OTHER: Vm = vm("other", 13);
/// What the flooder and the other VM also talk to.
const PEER: Vm = vm("peer", 14);

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
enable_dhcp = false

[[security_groups]]
id = "open"
rules = [
  { direction = "egress", ethertype = "IPv4" },
  { direction = "egress", ethertype = "IPv6" },
  { direction = "ingress", ethertype = "IPv4" },
  { direction = "ingress", ethertype = "IPv6" },
]

[[ports]]
id = "flooder"
network_id = "net"
mac_address = "fa:16:3e:00:00:0b"
fixed_ips = [{ subnet_id = "sub", ip_address = "198.18.1.11" }, { subnet_id = "sub6", ip_address = "2001:db8:1::b" }]
security_groups = ["open"]
binding = { driver = "mem" }

[[ports]]
id = "sink"
network_id = "net"
mac_address = "fa:16:3e:00:00:0c"
fixed_ips = [{ subnet_id = "sub", ip_address = "198.18.1.12" }, { subnet_id = "sub6", ip_address = "2001:db8:1::c" }]
security_groups = ["open"]
binding = { driver = "mem" }

[[ports]]
id = "other"
network_id = "net"
mac_address = "fa:16:3e:00:00:0d"
fixed_ips = [{ subnet_id = "sub", ip_address = "198.18.1.13" }, { subnet_id = "sub6", ip_address = "2001:db8:1::d" }]
security_groups = ["open"]
binding = { driver = "mem" }

[[ports]]
id = "peer"
network_id = "net"
mac_address = "fa:16:3e:00:00:0e"
fixed_ips = [{ subnet_id = "sub", ip_address = "198.18.1.14" }, { subnet_id = "sub6", ip_address = "2001:db8:1::e" }]
security_groups = ["open"]
binding = { driver = "mem" }
"#;

const QUOTA4: usize = 8;
const QUOTA6: usize = 4;

fn lab() -> PortLab {
    let worker = WorkerConfig {
        conntrack: ConnConfig {
            owner_quota: QUOTA4,
            ..ConnConfig::with_capacity(1024)
        },
        conntrack6: Some(ConnConfig {
            owner_quota: QUOTA6,
            ..ConnConfig::with_capacity(1024)
        }),
        ..WorkerConfig::default()
    };
    PortLab::new(STATE, &[FLOODER, SINK, OTHER, PEER].map(|v| v.name), worker)
}

fn udp4(from: &Vm, to: &Vm, sport: u16) -> Vec<u8> {
    let u = udp(from.ip, to.ip, sport, 7, b"x");
    ipv4(to.mac, from.mac, None, from.ip, to.ip, 64, 17, &u)
}

fn udp6_frame(from: &Vm, to: &Vm, sport: u16) -> Vec<u8> {
    let u = udp6(from.ip6, to.ip6, sport, 7, b"x");
    ipv6_frame(to.mac, from.mac, from.ip6, to.ip6, 17, &u)
}

/// Sends `count` new flows from `from` to `to` built by `make`; returns how many passed.
fn open(
    lab: &mut PortLab,
    from: &Vm,
    to: &Vm,
    count: u16,
    make: fn(&Vm, &Vm, u16) -> Vec<u8>,
) -> usize {
    (0..count)
        .map(|i| lab.send(from, &make(from, to, 20000 + i)).len())
        .sum()
}

fn dropped(lab: &PortLab, reason: DropReason) -> u64 {
    lab.sw.counters().stage_dropped(Stage::SgEgress, reason)
}

#[test]
fn filling_the_ipv4_quota_leaves_the_ports_ipv6_connections_alone() {
    let mut lab = lab();
    assert_eq!(open(&mut lab, &FLOODER, &SINK, 20, udp4), QUOTA4);
    assert_eq!(dropped(&lab, DropReason::SgConnLimit), 20 - QUOTA4 as u64);
    assert_eq!(dropped(&lab, DropReason::SgConnLimitIpv6), 0);
    // The same port still opens IPv6 connections.
    assert_eq!(open(&mut lab, &FLOODER, &PEER, 3, udp6_frame), 3);
    assert_eq!(dropped(&lab, DropReason::SgConnLimitIpv6), 0);
    // Another port opens connections of both families.
    lab.passes(&OTHER, &PEER, &udp4(&OTHER, &PEER, 40000));
    lab.passes(&OTHER, &PEER, &udp6_frame(&OTHER, &PEER, 40000));
    // The flooder's open connections still flow, both ways.
    lab.passes(&FLOODER, &SINK, &udp4(&FLOODER, &SINK, 20000));
    let reply = {
        let u = udp(SINK.ip, FLOODER.ip, 7, 20000, b"x");
        ipv4(FLOODER.mac, SINK.mac, None, SINK.ip, FLOODER.ip, 64, 17, &u)
    };
    lab.passes(&SINK, &FLOODER, &reply);
    assert_eq!(dropped(&lab, DropReason::SgConnLimit), 20 - QUOTA4 as u64);
}

#[test]
fn filling_the_ipv6_quota_leaves_the_ports_ipv4_connections_alone() {
    let mut lab = lab();
    assert_eq!(open(&mut lab, &FLOODER, &SINK, 10, udp6_frame), QUOTA6);
    assert_eq!(
        dropped(&lab, DropReason::SgConnLimitIpv6),
        10 - QUOTA6 as u64
    );
    assert_eq!(dropped(&lab, DropReason::SgConnLimit), 0);
    assert_eq!(lab.sw.worker.sessions6().len(), 2 * QUOTA6, "both zones");
    // The same port still opens IPv4 connections, another port IPv6 ones.
    assert_eq!(open(&mut lab, &FLOODER, &PEER, 3, udp4), 3);
    assert_eq!(dropped(&lab, DropReason::SgConnLimit), 0);
    lab.passes(&OTHER, &PEER, &udp6_frame(&OTHER, &PEER, 40000));
    // The flooder's open IPv6 connections still flow.
    lab.passes(&FLOODER, &SINK, &udp6_frame(&FLOODER, &SINK, 20000));
}
