//! The desired-state model and its validation: the example configurations, one test per
//! class of error (path and message), and property tests over random edits and arbitrary
//! input.

use std::net::Ipv4Addr;

use pollux_control::model::{
    Binding, DesiredState, ExternalGateway, FloatingIp, Format, NetworkType, ProtocolSpec, Route,
    Router, Uplink, VhostUserMode, TOP_LEVEL_KEYS,
};
use pollux_control::validate::{self, validate, PortMatch, Remote, Segment, Validated};
use pollux_services::addr::Ipv4Cidr;
use proptest::prelude::*;
use serde_json::Value;

const TWO_NETWORKS_VLAN: &str = include_str!("../../configs/two-networks-vlan.toml");
const ROUTER_FLOATING_IP: &str = include_str!("../../configs/router-floating-ip.toml");

fn two_networks() -> DesiredState {
    DesiredState::from_toml_str(TWO_NETWORKS_VLAN).expect("the example parses")
}

fn router_fip() -> DesiredState {
    DesiredState::from_toml_str(ROUTER_FLOATING_IP).expect("the example parses")
}

fn valid(state: &DesiredState) -> Validated {
    match validate(state) {
        Ok(v) => v,
        Err(errors) => panic!(
            "expected valid, got:\n{}",
            errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

fn errors(state: &DesiredState) -> Vec<String> {
    match validate(state) {
        Ok(_) => panic!("expected validation errors"),
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

/// Asserts that validating `state` reports exactly `expected` ("path: message" lines).
#[track_caller]
fn assert_errors(state: &DesiredState, expected: &[&str]) {
    assert_eq!(errors(state), expected);
}

// ---- the examples -------------------------------------------------------------------

#[test]
fn two_networks_vlan_example_parses_and_validates() {
    let state = two_networks();
    assert_eq!(state.uplinks.len(), 1);
    assert_eq!(state.networks.len(), 2);
    assert_eq!(state.subnets.len(), 2);
    assert_eq!(state.ports.len(), 4);
    assert_eq!(state.security_groups.len(), 1);
    assert!(state
        .ports
        .iter()
        .all(|p| p.binding == Some(Binding::Mem {})));
    // Defaults.
    assert_eq!(state.networks[1].mtu, None);
    assert!(state.networks[1].admin_state_up);
    assert!(state.subnets[1].enable_dhcp);
    assert!(state.ports[1].port_security_enabled);
    assert_eq!(state.security_groups[0].rules[1].ethertype, "IPv4");

    let v = valid(&state);
    assert_eq!(v.l2.mac_aging_secs, 300);
    assert_eq!(v.l2.mac_limit_per_network, 8192);
    assert_eq!(
        v.networks[0].segment,
        Segment::Vlan {
            uplink: 0,
            vid: 100
        }
    );
    assert_eq!(
        v.networks[1].segment,
        Segment::Vlan {
            uplink: 0,
            vid: 200
        }
    );
    assert_eq!(v.networks[1].mtu, 1500);
    assert_eq!(
        v.subnets[0].cidr,
        Ipv4Cidr {
            addr: Ipv4Addr::new(198, 18, 1, 0),
            prefix: 24
        }
    );
    assert_eq!(v.subnets[0].gateway_ip, Some(Ipv4Addr::new(198, 18, 1, 1)));
    assert_eq!(
        v.subnets[0].allocation_pools,
        vec![(
            Ipv4Addr::new(198, 18, 1, 100),
            Ipv4Addr::new(198, 18, 1, 199)
        )]
    );
    assert_eq!(
        v.subnets[0].host_routes[0].nexthop,
        Ipv4Addr::new(198, 18, 1, 254)
    );
    assert_eq!(v.ports[0].mac, [0xfa, 0x16, 0x3e, 0, 0, 1]);
    assert_eq!(v.ports[0].network, 0);
    assert_eq!(v.ports[3].network, 1);
    assert_eq!(v.ports[0].fixed_ips[0].ip, Ipv4Addr::new(198, 18, 1, 10));
    assert_eq!(v.ports[0].security_groups, vec![0]);
    assert_eq!(v.ports[0].binding, Some(validate::Binding::Mem));
    assert_eq!(v.ports[0].macs(), vec![[0xfa, 0x16, 0x3e, 0, 0, 1]]);
    assert_eq!(
        v.ports[0].allowed_address_pairs[0].ip,
        Ipv4Cidr {
            addr: Ipv4Addr::new(198, 18, 1, 50),
            prefix: 32
        }
    );
    let rules = &v.security_groups[0].rules;
    assert_eq!(rules[0].protocol, Some(6));
    assert_eq!(rules[0].ports, PortMatch::Ports(80, 80));
    assert_eq!(
        rules[0].remote,
        Remote::Prefix(Ipv4Cidr {
            addr: Ipv4Addr::UNSPECIFIED,
            prefix: 0
        })
    );
    assert_eq!(rules[1].protocol, Some(1));
    assert_eq!(rules[1].remote, Remote::Group(0));
    assert_eq!(rules[2].protocol, None);
    assert_eq!(rules[2].remote, Remote::Any);
}

#[test]
fn router_floating_ip_example_parses_and_validates() {
    let v = valid(&router_fip());
    assert_eq!(v.uplinks[0].mtu, 1600);
    assert_eq!(
        v.uplinks[0].local_ip,
        Some((
            Ipv4Addr::new(198, 19, 255, 1),
            Ipv4Cidr {
                addr: Ipv4Addr::new(198, 19, 255, 0),
                prefix: 24
            }
        ))
    );
    assert_eq!(v.networks[0].segment, Segment::Flat { uplink: 0 });
    assert_eq!(v.networks[0].mtu, 1600, "defaults to the uplink's MTU");
    assert_eq!(
        v.networks[1].segment,
        Segment::Vxlan {
            uplink: 0,
            vni: 5001
        }
    );
    assert_eq!(
        v.networks[1].mtu, 1550,
        "the uplink's MTU minus VXLAN overhead"
    );
    assert_eq!(v.networks[2].segment, Segment::Local);
    assert_eq!(v.networks[2].mtu, 1500);
    let gw = v.routers[0].external_gateway.expect("gateway");
    assert_eq!((gw.network, gw.subnet), (0, 0));
    assert_eq!(gw.ip, Ipv4Addr::new(203, 0, 113, 10));
    assert!(gw.enable_snat);
    assert_eq!(v.routers[0].interfaces, vec![1]);
    let target = v.floating_ips[0].target.expect("associated");
    assert_eq!(
        (target.port, target.fixed_ip, target.router),
        (0, Ipv4Addr::new(198, 18, 10, 10), 0)
    );
    assert_eq!(v.floating_ips[1].target, None);
    assert_eq!(v.floating_ips[1].network, 0);
    assert_eq!(
        v.security_groups[0].rules[2].protocol,
        Some(17),
        "17 is udp"
    );
}

#[test]
fn json_round_trip_keeps_the_state() {
    for state in [two_networks(), router_fip()] {
        let json = state.to_json_string();
        let back = DesiredState::from_json_str(&json).expect("own JSON parses");
        assert_eq!(back, state);
        assert_eq!(validate(&back), validate(&state));
    }
}

#[test]
fn empty_documents_are_the_empty_state() {
    let empty = DesiredState::default();
    assert_eq!(DesiredState::from_toml_str("").unwrap(), empty);
    assert_eq!(DesiredState::from_json_str("{}").unwrap(), empty);
    let v = valid(&empty);
    assert!(v.ports.is_empty() && v.networks.is_empty());
}

// ---- parse errors ---------------------------------------------------------------------

#[test]
fn toml_typo_is_an_error_with_line_and_column() {
    let text =
        TWO_NETWORKS_VLAN.replace("mac_address = \"fa:16:3e:00:00:02\"", "mac_adress = \"x\"");
    let line = text
        .lines()
        .position(|l| l.starts_with("mac_adress"))
        .unwrap()
        + 1;
    let e = DesiredState::from_toml_str(&text).unwrap_err();
    assert_eq!(e.format, Format::Toml);
    assert_eq!(e.line, Some(line));
    assert_eq!(e.column, Some(1));
    assert_eq!(e.path.as_deref(), Some("ports[1]"));
    assert!(e.message.contains("unknown field `mac_adress`"), "{e}");
    assert!(
        e.to_string()
            .starts_with(&format!("TOML line {line}, column 1 in ports[1]: ")),
        "{e}"
    );
}

#[test]
fn toml_bad_enum_and_syntax_errors_name_the_position() {
    let text = TWO_NETWORKS_VLAN.replacen("network_type = \"vlan\"", "network_type = \"vlna\"", 1);
    let e = DesiredState::from_toml_str(&text).unwrap_err();
    assert!(e.message.contains("unknown variant `vlna`"), "{e}");
    assert_eq!(e.path.as_deref(), Some("networks[0]"));
    assert!(e.line.is_some() && e.column.is_some());

    let e = DesiredState::from_toml_str("[[ports]\nid = 1").unwrap_err();
    assert_eq!(e.line, Some(1), "{e}");

    let e = DesiredState::from_toml_str("[[port]]\nid = \"x\"").unwrap_err();
    assert!(e.message.contains("unknown field `port`"), "{e}");

    let e = DesiredState::from_toml_str(
        "[[ports]]\nid = \"p\"\nnetwork_id = \"n\"\nmac_address = \"fa:16:3e:00:00:01\"\nbinding = { driver = \"afxdp\" }\n",
    )
    .unwrap_err();
    assert!(e.message.contains("missing field `interface`"), "{e}");
    assert_eq!(e.path.as_deref(), Some("ports[0]"));

    let e = DesiredState::from_toml_str(
        "[[ports]]\nid = \"p\"\nnetwork_id = \"n\"\nmac_address = \"fa:16:3e:00:00:01\"\nbinding = { driver = \"vhost-user\", socket = \"/run/p.sock\", mode = \"both\" }\n",
    )
    .unwrap_err();
    assert!(e.message.contains("unknown variant `both`"), "{e}");
    assert_eq!(e.path.as_deref(), Some("ports[0]"));
}

#[test]
fn json_errors_name_the_item_and_position() {
    let mut v: Value = serde_json::from_str(&router_fip().to_json_string()).unwrap();
    v["ports"][2]["binding"]["driver"] = Value::from("vhost");
    let e = DesiredState::from_json_str(&serde_json::to_string_pretty(&v).unwrap()).unwrap_err();
    assert_eq!(e.format, Format::Json);
    assert_eq!(e.path.as_deref(), Some("ports[2]"));
    assert!(e.message.contains("unknown variant `vhost`"), "{e}");
    assert!(e.line.is_some());

    let e = DesiredState::from_json_str("{\"networks\": [").unwrap_err();
    assert_eq!((e.line, e.path.as_deref()), (Some(1), None));
    assert!(
        !e.message.contains(" at line "),
        "the position is not repeated: {e}"
    );
}

// ---- validation errors, one class at a time -------------------------------------------

#[test]
fn bad_ipv4_addresses_are_reported_with_their_path() {
    let mut s = two_networks();
    s.ports[0].fixed_ips[0].ip_address = "203.0.113.300".into();
    s.subnets[0].dns_nameservers[0] = "dns".into();
    assert_errors(
        &s,
        &[
            "subnets[0].dns_nameservers[0]: dns is not an IPv4 address",
            "ports[0].fixed_ips[0].ip_address: 203.0.113.300 is not an IPv4 address",
        ],
    );
}

#[test]
fn duplicate_ids_names_and_physnets() {
    let mut s = two_networks();
    s.networks[1].id = "net-a".into();
    s.ports[2].id = "vm1".into();
    s.security_groups.push(s.security_groups[0].clone());
    let mut second = s.uplinks[0].clone();
    second.binding = Binding::Mem {};
    s.uplinks.push(second);
    let e = errors(&s);
    for expected in [
        "uplinks[1].name: uplink name uplink0 is already used by uplinks[0]",
        "uplinks[1].physnet: physnet physnet1 already has an uplink (uplinks[0]); a physnet has one",
        "networks[1].id: network id net-a is already used by networks[0]",
        "ports[2].id: port id vm1 is already used by ports[0]",
        "security_groups[1].id: security_group id web is already used by security_groups[0]",
    ] {
        assert!(e.iter().any(|x| x == expected), "{expected} not in {e:#?}");
    }
}

#[test]
fn unresolved_references() {
    let mut s = two_networks();
    s.subnets[1].network_id = "net-x".into();
    s.ports[0].network_id = "nowhere".into();
    s.ports[1].fixed_ips[0].subnet_id = "sub-x".into();
    s.ports[2].security_groups = vec!["db".into()];
    s.security_groups[0].rules[1].remote_group_id = Some("db".into());
    s.routers.push(Router {
        id: "r1".into(),
        interfaces: vec!["sub-a".into(), "sub-z".into()],
        external_gateway_info: Some(ExternalGateway {
            network_id: "ext".into(),
            external_fixed_ip: "203.0.113.10".into(),
            enable_snat: true,
        }),
        routes: vec![],
        binding_host_id: None,
        mac_address: None,
        project_id: None,
    });
    s.floating_ips.push(FloatingIp {
        id: "fip".into(),
        floating_ip_address: "203.0.113.20".into(),
        port_id: Some("vm9".into()),
        fixed_ip_address: None,
    });
    assert_errors(
        &s,
        &[
            "subnets[1].network_id: no network has id \"net-x\"",
            "security_groups[0].rules[1].remote_group_id: no security group has id \"db\"",
            "ports[0].network_id: no network has id \"nowhere\"",
            "ports[1].fixed_ips[0].subnet_id: no subnet has id \"sub-x\"",
            "ports[2].security_groups[0]: no security group has id \"db\"",
            "routers[0].interfaces[1]: no subnet has id \"sub-z\"",
            "routers[0].external_gateway_info.network_id: no network has id \"ext\"",
            "floating_ips[0].floating_ip_address: 203.0.113.20 is not inside a subnet of an external network (one that a router's external_gateway_info names)",
            "floating_ips[0].port_id: no port has id \"vm9\"",
        ],
    );
}

#[test]
fn macs_must_be_valid_unicast_and_unique_per_network() {
    let mut s = two_networks();
    s.ports[0].mac_address = "fa:16:3e:00:00".into();
    s.ports[1].mac_address = "01:00:5e:00:00:01".into();
    s.ports[2].mac_address = "FA:16:3E:00:00:01".into(); // vm4's MAC, same network
    assert_errors(
        &s,
        &[
            "ports[0].mac_address: fa:16:3e:00:00 is not a MAC address (six hex bytes like fa:16:3e:00:00:01)",
            "ports[1].mac_address: 01:00:5e:00:00:01 is a multicast MAC; a port needs a unicast MAC",
            "ports[3].mac_address: fa:16:3e:00:00:01 is already a MAC of port vm3 on network net-b",
        ],
    );

    let mut s = two_networks();
    s.ports[1].allowed_address_pairs = vec![pollux_control::model::AddressPair {
        ip_address: "198.18.1.60".into(),
        mac_address: Some("fa:16:3e:00:00:01".into()),
    }];
    assert_errors(
        &s,
        &["ports[1].allowed_address_pairs[0].mac_address: fa:16:3e:00:00:01 is already a MAC of port vm1 on network net-a"],
    );
}

#[test]
fn cidrs_must_parse_and_have_zero_host_bits() {
    let mut s = two_networks();
    s.subnets[0].cidr = "198.18.1.5/24".into();
    s.subnets[1].cidr = "198.18.2.0".into();
    s.subnets[0].host_routes[0].destination = "198.19.0.0/33".into();
    s.security_groups[0].rules[0].remote_ip_prefix = Some("198.18.0.0/8".into());
    let e = errors(&s);
    for expected in [
        "subnets[0].cidr: 198.18.1.5/24 has host bits set (the prefix is 198.18.1.0/24)",
        "subnets[0].host_routes[0].destination: 198.19.0.0/33 is not a CIDR: the prefix length must be 0..=32",
        "subnets[1].cidr: 198.18.2.0 is not a CIDR (expected an IPv4 prefix like 198.18.1.0/24)",
        "security_groups[0].rules[0].remote_ip_prefix: 198.18.0.0/8 has host bits set (the prefix is 198.0.0.0/8)",
    ] {
        assert!(e.iter().any(|x| x == expected), "{expected} not in {e:#?}");
    }
}

#[test]
fn gateway_must_be_inside_its_subnet() {
    let mut s = two_networks();
    s.subnets[0].gateway_ip = Some("198.18.9.1".into());
    s.subnets[1].gateway_ip = Some("198.18.2.255".into());
    assert_errors(
        &s,
        &[
            "subnets[0].gateway_ip: 198.18.9.1 is not inside the subnet's cidr 198.18.1.0/24",
            "subnets[1].gateway_ip: 198.18.2.255 is the network or broadcast address of 198.18.2.0/24",
        ],
    );
}

#[test]
fn subnet_routes_pools_and_overlaps() {
    let mut s = two_networks();
    s.subnets[0].host_routes[0].nexthop = "198.18.2.254".into();
    s.subnets[0].allocation_pools.as_mut().unwrap().extend([
        pollux_control::model::AllocationPool {
            start: "198.18.1.150".into(),
            end: "198.18.1.160".into(),
        },
        pollux_control::model::AllocationPool {
            start: "198.18.1.1".into(),
            end: "198.18.1.9".into(),
        },
    ]);
    let mut overlapping = s.subnets[0].clone();
    overlapping.id = "sub-a2".into();
    overlapping.cidr = "198.18.0.0/23".into();
    overlapping.gateway_ip = None;
    overlapping.host_routes.clear();
    overlapping.allocation_pools = None;
    s.subnets.push(overlapping);
    assert_errors(
        &s,
        &[
            "subnets[0].host_routes[0].nexthop: 198.18.2.254 is not inside the subnet's cidr 198.18.1.0/24",
            "subnets[0].allocation_pools[1]: 198.18.1.150-198.18.1.160 overlaps the pool 198.18.1.100-198.18.1.199",
            "subnets[0].allocation_pools[2]: 198.18.1.1-198.18.1.9 contains the gateway_ip 198.18.1.1",
            "subnets[2].cidr: 198.18.0.0/23 overlaps 198.18.1.0/24 of subnet sub-a on network net-a",
        ],
    );
}

#[test]
fn fixed_ips_inside_subnet_on_network_unique_and_not_gateway() {
    let mut s = two_networks();
    s.ports[0].fixed_ips[0].ip_address = "198.18.2.10".into(); // outside sub-a
    s.ports[1].fixed_ips[0].subnet_id = "sub-b".into(); // vm2 is on net-a
    s.ports[2].fixed_ips[0].ip_address = "198.18.2.1".into(); // sub-b's gateway
    s.ports[3].fixed_ips[0].ip_address = "198.18.2.0".into(); // network address
    assert_errors(
        &s,
        &[
            "ports[0].fixed_ips[0].ip_address: 198.18.2.10 is not inside 198.18.1.0/24 of subnet sub-a",
            "ports[1].fixed_ips[0].subnet_id: subnet sub-b is on network net-b, not on the port's network net-a",
            "ports[2].fixed_ips[0].ip_address: 198.18.2.1 is the gateway_ip of subnet sub-b",
            "ports[3].fixed_ips[0].ip_address: 198.18.2.0 is the network address of 198.18.2.0/24 (subnet sub-b)",
        ],
    );

    let mut s = two_networks();
    s.ports[1].fixed_ips[0].ip_address = "198.18.1.10".into();
    assert_errors(
        &s,
        &["ports[1].fixed_ips[0].ip_address: 198.18.1.10 is already used by port vm1"],
    );
}

#[test]
fn segmentation_ids_in_range_and_unique() {
    let mut s = two_networks();
    s.networks[0].segmentation_id = Some(4095);
    s.networks[1].segmentation_id = None;
    assert_errors(
        &s,
        &[
            "networks[0].segmentation_id: 4095 is not a VLAN ID (1..=4094)",
            "networks[1].segmentation_id: a vlan network needs a segmentation_id (VLAN ID 1..=4094)",
        ],
    );

    let mut s = two_networks();
    s.networks[1].segmentation_id = Some(100);
    assert_errors(
        &s,
        &["networks[1].segmentation_id: VLAN 100 on physnet physnet1 is already used by network net-a"],
    );

    let mut s = router_fip();
    s.networks[1].segmentation_id = Some(16_777_216);
    assert_errors(
        &s,
        &["networks[1].segmentation_id: 16777216 is not a VXLAN VNI (1..=16777215)"],
    );

    let mut s = router_fip();
    let mut second = s.networks[1].clone();
    second.id = "tenant2".into();
    s.networks.push(second);
    assert_errors(
        &s,
        &["networks[3].segmentation_id: VNI 5001 is already used by network tenant"],
    );
}

#[test]
fn segment_types_need_their_uplinks() {
    let mut s = two_networks();
    s.networks[0].physical_network = Some("physnet2".into());
    s.networks[1].physical_network = None;
    assert_errors(
        &s,
        &[
            "networks[0].physical_network: no uplink carries physnet physnet2 (add an uplink with physnet = \"physnet2\")",
            "networks[1].physical_network: a vlan network needs a physical_network",
        ],
    );

    let mut s = router_fip();
    s.uplinks[0].local_ip = None;
    s.networks[2].physical_network = Some("physnet1".into());
    let mut flat2 = s.networks[0].clone();
    flat2.id = "ext2".into();
    s.networks.push(flat2);
    assert_errors(
        &s,
        &[
            "networks[1].network_type: a vxlan network needs an uplink with local_ip (the VXLAN endpoint)",
            "networks[2].physical_network: a local network has no physical_network",
            "networks[3].physical_network: physnet physnet1 already carries flat network ext; a physnet carries one",
        ],
    );

    let mut s = router_fip();
    s.uplinks[0].local_ip = Some("198.19.255.1".into());
    let e = errors(&s);
    assert_eq!(
        e[0],
        "uplinks[0].local_ip: 198.19.255.1 needs a prefix length, as in 198.19.255.1/24 (the endpoint's subnet)"
    );
}

#[test]
fn mtu_bounds_and_vxlan_overhead() {
    let mut s = two_networks();
    s.networks[0].mtu = Some(67);
    s.networks[1].mtu = Some(9001);
    assert_errors(
        &s,
        &[
            "networks[0].mtu: MTU 67 is outside 68..=9000",
            "networks[1].mtu: MTU 9001 is outside 68..=9000",
        ],
    );

    let mut s = two_networks();
    s.networks[0].mtu = Some(1600);
    assert_errors(
        &s,
        &["networks[0].mtu: MTU 1600 exceeds 1500, the MTU of uplink uplink0"],
    );

    let mut s = router_fip();
    s.uplinks[0].mtu = None;
    s.networks[1].mtu = Some(1500);
    assert_errors(
        &s,
        &["networks[1].mtu: MTU 1500 exceeds 1450, the MTU 1500 of uplink uplink0 minus 50 bytes of VXLAN overhead"],
    );
    s.networks[1].mtu = Some(1450);
    valid(&s);
}

#[test]
fn geneve_and_gre_segments_ranges_and_overhead() {
    // The VXLAN network of router_fip as Geneve, then as GRE: the same endpoint, each
    // kind's identifier range, uniqueness within a kind, and its overhead.
    let mut s = router_fip();
    s.uplinks[0].mtu = None;
    s.networks[1].network_type = NetworkType::Geneve;
    let v = valid(&s);
    assert_eq!(
        v.networks[1].segment,
        Segment::Geneve {
            uplink: 0,
            vni: 5001
        }
    );
    assert_eq!(v.networks[1].mtu, 1450, "1500 minus 50 bytes of Geneve");
    s.networks[1].mtu = Some(1451);
    assert_errors(
        &s,
        &["networks[1].mtu: MTU 1451 exceeds 1450, the MTU 1500 of uplink uplink0 minus 50 bytes of Geneve overhead"],
    );
    s.networks[1].mtu = None;
    s.networks[1].segmentation_id = Some(16_777_216);
    assert_errors(
        &s,
        &["networks[1].segmentation_id: 16777216 is not a Geneve VNI (1..=16777215)"],
    );
    s.networks[1].segmentation_id = Some(5001);
    let mut second = s.networks[1].clone();
    second.id = "tenant2".into();
    s.networks.push(second.clone());
    assert_errors(
        &s,
        &["networks[3].segmentation_id: Geneve VNI 5001 is already used by network tenant"],
    );
    // One number in two kinds is two networks.
    s.networks[3].network_type = NetworkType::Vxlan;
    valid(&s);

    let mut s = router_fip();
    s.uplinks[0].mtu = None;
    s.networks[1].network_type = NetworkType::Gre;
    s.networks[1].segmentation_id = Some(4_294_967_295);
    let v = valid(&s);
    assert_eq!(
        v.networks[1].segment,
        Segment::Gre {
            uplink: 0,
            key: 4_294_967_295
        }
    );
    assert_eq!(
        v.networks[1].mtu, 1458,
        "1500 minus 42 bytes of GRE with a key"
    );
    s.networks[1].mtu = Some(1459);
    s.networks[1].segmentation_id = Some(0);
    assert_errors(
        &s,
        &["networks[1].segmentation_id: 0 is not a GRE key (1..=4294967295)"],
    );
    s.networks[1].segmentation_id = Some(7);
    assert_errors(
        &s,
        &["networks[1].mtu: MTU 1459 exceeds 1458, the MTU 1500 of uplink uplink0 minus 42 bytes of GRE overhead"],
    );
    s.networks[1].mtu = None;
    s.networks[1].physical_network = Some("physnet1".into());
    s.uplinks[0].local_ip = None;
    assert_errors(
        &s,
        &[
            "networks[1].physical_network: a gre network has no physical_network; it uses the uplink with local_ip",
            "networks[1].network_type: a gre network needs an uplink with local_ip (the GRE endpoint)",
        ],
    );
}

#[test]
fn bindings_are_checked() {
    let mut s = two_networks();
    s.uplinks[0].binding = Binding::Afxdp {
        interface: "eth1".into(),
        queues: Some(vec![0, 1, 1]),
    };
    s.ports[0].binding = Some(Binding::Afxdp {
        interface: "".into(),
        queues: None,
    });
    s.ports[1].binding = Some(Binding::Tap {
        interface: "a-very-long-interface".into(),
    });
    s.ports[2].binding = Some(Binding::Tap {
        interface: "eth1".into(),
    });
    s.ports[3].binding = Some(Binding::VhostUser {
        socket: "relative.sock".into(),
        mode: None,
    });
    assert_errors(
        &s,
        &[
            "uplinks[0].binding.queues[2]: queue 1 is listed twice",
            "ports[0].binding.interface: an interface name cannot be empty",
            "ports[1].binding.interface: interface name \"a-very-long-interface\" is 21 bytes; Linux allows at most 15",
            "ports[2].binding.interface: interface eth1 is already bound by uplink uplink0",
            "ports[3].binding.socket: \"relative.sock\" is not an absolute path for the vhost-user socket",
        ],
    );
    s.ports[0].binding = Some(Binding::Afxdp {
        interface: "vm1-host".into(),
        queues: None,
    });
    s.ports[1].binding = Some(Binding::Tap {
        interface: "tap-vm2".into(),
    });
    s.ports[2].binding = Some(Binding::Mem {});
    s.ports[3].binding = Some(Binding::VhostUser {
        socket: "/run/pollux/vm4.sock".into(),
        mode: Some(VhostUserMode::Client),
    });
    s.uplinks[0].binding = Binding::Afxdp {
        interface: "eth1".into(),
        queues: Some(vec![0, 1]),
    };
    let v = valid(&s);
    assert_eq!(
        v.ports[0].binding,
        Some(validate::Binding::Afxdp {
            interface: "vm1-host".into(),
            queues: vec![0]
        })
    );
    assert_eq!(
        v.ports[3].binding,
        Some(validate::Binding::VhostUser {
            socket: "/run/pollux/vm4.sock".into(),
            mode: VhostUserMode::Client,
        })
    );
    s.ports[3].binding = Some(Binding::VhostUser {
        socket: "/run/pollux/vm4.sock".into(),
        mode: None,
    });
    assert_eq!(
        valid(&s).ports[3].binding,
        Some(validate::Binding::VhostUser {
            socket: "/run/pollux/vm4.sock".into(),
            mode: VhostUserMode::Server,
        }),
        "Pollux is the server unless told otherwise"
    );
}

#[test]
fn floating_ips_must_be_on_an_external_network_and_reachable() {
    let mut s = router_fip();
    s.floating_ips[0].floating_ip_address = "198.18.10.50".into();
    s.floating_ips[1].port_id = Some("tool".into()); // its subnet has no router
    s.floating_ips.push(FloatingIp {
        id: "fip3".into(),
        floating_ip_address: "203.0.113.10".into(), // the router's gateway
        port_id: None,
        fixed_ip_address: Some("198.18.10.11".into()),
    });
    s.floating_ips.push(FloatingIp {
        id: "fip4".into(),
        floating_ip_address: "203.0.113.22".into(),
        port_id: Some("web2".into()),
        fixed_ip_address: Some("198.18.10.99".into()),
    });
    assert_errors(
        &s,
        &[
            "floating_ips[0].floating_ip_address: 198.18.10.50 is not inside a subnet of an external network (one that a router's external_gateway_info names)",
            "floating_ips[1].port_id: subnet scratch-v4 of port tool has no router with a gateway on the floating IP's network",
            "floating_ips[2].floating_ip_address: 203.0.113.10 is already used by the gateway of router r1",
            "floating_ips[2].fixed_ip_address: fixed_ip_address needs a port_id",
            "floating_ips[3].fixed_ip_address: 198.18.10.99 is not a fixed IP of port web2",
        ],
    );

    let mut s = router_fip();
    s.floating_ips[1].port_id = Some("web1".into());
    assert_errors(
        &s,
        &["floating_ips[1].port_id: fixed IP 198.18.10.10 of port web1 already has floating IP fip1"],
    );
}

#[test]
fn router_interfaces_gateways_and_routes() {
    let mut s = router_fip();
    s.routers[0].interfaces.push("scratch-v4".into()); // no gateway_ip
    s.routers[0].routes.push(Route {
        destination: "198.19.1.0/24".into(),
        nexthop: "198.18.99.1".into(),
    });
    let mut r2 = s.routers[0].clone();
    r2.id = "r2".into();
    r2.interfaces = vec!["tenant-v4".into()];
    r2.routes.clear();
    r2.external_gateway_info = Some(ExternalGateway {
        network_id: "ext".into(),
        external_fixed_ip: "203.0.113.10".into(),
        enable_snat: false,
    });
    s.routers.push(r2);
    assert_errors(
        &s,
        &[
            "routers[0].interfaces[1]: subnet scratch-v4 has no gateway_ip for the router's interface",
            "routers[0].routes[1].nexthop: 198.18.99.1 is not inside a subnet connected to router r1",
            "routers[1].interfaces[0]: subnet tenant-v4 already has an interface on router r1",
            "routers[1].external_gateway_info.external_fixed_ip: 203.0.113.10 is already used by the gateway of router r1",
        ],
    );
}

#[test]
fn security_group_rules_are_checked() {
    let mut s = two_networks();
    let rules = &mut s.security_groups[0].rules;
    rules[0].port_range_min = Some(443);
    rules[1].protocol = Some(ProtocolSpec::Name("gre".into()));
    rules[1].port_range_min = Some(1);
    rules[1].port_range_max = Some(2);
    rules[2].protocol = Some(ProtocolSpec::Name("gre-ish".into()));
    let mut r = rules[0].clone();
    r.port_range_min = Some(0);
    r.port_range_max = Some(70000);
    rules.push(r);
    let mut r = rules[0].clone();
    r.port_range_max = None;
    r.ethertype = "IPv6".into();
    r.remote_group_id = Some("web".into());
    rules.push(r);
    // IPv6 rules: an IPv4 prefix or protocol, a prefix with host bits, an IPv4-only
    // protocol.
    let mut r = rules[0].clone();
    r.ethertype = "IPv6".into();
    r.port_range_min = Some(80);
    r.remote_ip_prefix = Some("198.18.0.0/15".into());
    rules.push(r);
    let mut r = rules[5].clone();
    r.remote_ip_prefix = Some("2001:db8::1/64".into());
    rules.push(r);
    let mut r = rules[5].clone();
    r.protocol = Some(ProtocolSpec::Name("igmp".into()));
    r.port_range_min = None;
    r.port_range_max = None;
    r.remote_ip_prefix = Some("2001:db8::/64".into());
    rules.push(r);
    let mut r = rules[5].clone();
    r.ethertype = "IPv4".into();
    r.remote_ip_prefix = Some("2001:db8::/64".into());
    rules.push(r);
    // ICMPv6 type and code through the port-range fields are bytes, as ICMP's.
    let mut r = rules[5].clone();
    r.protocol = Some(ProtocolSpec::Name("ipv6-icmp".into()));
    r.remote_ip_prefix = None;
    r.port_range_min = Some(300);
    r.port_range_max = Some(256);
    rules.push(r);
    assert_errors(
        &s,
        &[
            "security_groups[0].rules[0].port_range_min: 443 is greater than port_range_max 80",
            "security_groups[0].rules[1].port_range_min: a port range needs protocol tcp, udp, sctp, dccp or udplite (or icmp, for a type and code), not gre",
            "security_groups[0].rules[2].protocol: gre-ish is not a protocol (a name such as tcp, udp, icmp, sctp, or a number 0..=255, or any)",
            "security_groups[0].rules[3].port_range_min: 0 is not a port (1..=65535)",
            "security_groups[0].rules[3].port_range_max: 70000 is not a port (1..=65535)",
            "security_groups[0].rules[4].port_range_max: port_range_min needs port_range_max too",
            "security_groups[0].rules[4].remote_group_id: give at most one of remote_ip_prefix, remote_group_id and remote_address_group_id",
            "security_groups[0].rules[5].remote_ip_prefix: 198.18.0.0/15 is an IPv4 prefix; this rule's ethertype is IPv6",
            "security_groups[0].rules[6].remote_ip_prefix: 2001:db8::1/64 has host bits set (the prefix is 2001:db8::/64)",
            "security_groups[0].rules[7].protocol: igmp is an IPv4 protocol; this rule's ethertype is IPv6",
            "security_groups[0].rules[8].remote_ip_prefix: 2001:db8::/64 is an IPv6 prefix; this rule's ethertype is IPv4",
            "security_groups[0].rules[9].port_range_min: 300 is not an ICMP type (0..=255)",
            "security_groups[0].rules[9].port_range_max: 256 is not an ICMP code (0..=255)",
        ],
    );
}

#[test]
fn port_security_off_excludes_groups_and_pairs() {
    let mut s = two_networks();
    s.ports[0].port_security_enabled = false;
    assert_errors(
        &s,
        &[
            "ports[0].security_groups: a port with port_security_enabled = false has no security groups",
            "ports[0].allowed_address_pairs: a port with port_security_enabled = false has no allowed_address_pairs",
        ],
    );
}

#[test]
fn l2_limits() {
    let mut s = two_networks();
    s.l2.mac_aging_secs = 0;
    s.l2.mac_limit_per_network = -1;
    s.l2.mac_limit_per_port = 0;
    assert_errors(
        &s,
        &[
            "l2.mac_aging_secs: 0 is outside 1..=4294967295",
            "l2.mac_limit_per_network: -1 is outside 1..=4294967295",
            "l2.mac_limit_per_port: 0 is outside 1..=4294967295",
        ],
    );
}

#[test]
fn every_error_of_a_config_is_reported_at_once() {
    let mut s = two_networks();
    s.uplinks[0].mtu = Some(0);
    s.networks[0].segmentation_id = Some(0);
    s.subnets[1].cidr = "198.18.2.0/33".into();
    s.ports[0].fixed_ips[0].ip_address = "203.0.113.300".into();
    s.ports[2].mac_address = "zz:16:3e:00:00:03".into();
    s.ports[3].network_id = "net-q".into();
    s.security_groups[0].rules[0].port_range_max = Some(1);
    let e = errors(&s);
    assert_eq!(
        e,
        [
            "uplinks[0].mtu: MTU 0 is outside 68..=9000",
            "networks[0].segmentation_id: 0 is not a VLAN ID (1..=4094)",
            "subnets[1].cidr: 198.18.2.0/33 is not a CIDR: the prefix length must be 0..=32",
            "security_groups[0].rules[0].port_range_min: 80 is greater than port_range_max 1",
            "ports[0].fixed_ips[0].ip_address: 203.0.113.300 is not an IPv4 address",
            "ports[2].mac_address: zz:16:3e:00:00:03 is not a MAC address (six hex bytes like fa:16:3e:00:00:01)",
            "ports[3].network_id: no network has id \"net-q\"",
        ]
    );
}

#[test]
fn uplink_fields_are_checked() {
    let mut s = two_networks();
    s.uplinks.push(Uplink {
        name: String::new(),
        physnet: "physnet2".into(),
        binding: Binding::Mem {},
        local_ip: Some("198.19.255.300/24".into()),
        mtu: Some(20),
    });
    assert_errors(
        &s,
        &[
            "uplinks[1].name: an uplink needs a non-empty name",
            "uplinks[1].local_ip: 198.19.255.300/24 is not a CIDR: 198.19.255.300 is not an IPv4 address",
            "uplinks[1].mtu: MTU 20 is outside 68..=9000",
        ],
    );
    assert_eq!(s.networks[0].network_type, NetworkType::Vlan);
}

// ---- property tests -------------------------------------------------------------------

/// One step of a path into a JSON document.
#[derive(Clone, Debug)]
enum Step {
    Key(String),
    Index(usize),
}

/// Every path in `v` (including the root), in document order.
fn paths(v: &Value, prefix: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    out.push(prefix.clone());
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                prefix.push(Step::Key(k.clone()));
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                prefix.push(Step::Index(i));
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn at<'a>(v: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, step| match step {
        Step::Key(k) => v.get_mut(k.as_str()),
        Step::Index(i) => v.get_mut(*i),
    })
}

/// Whether `path` holds an id that refers to another object.
fn is_reference(path: &[Step]) -> bool {
    match path {
        [.., Step::Key(k)] => matches!(
            k.as_str(),
            "network_id" | "subnet_id" | "port_id" | "remote_group_id"
        ),
        [.., Step::Key(k), Step::Index(_)] => k == "security_groups" || k == "interfaces",
        _ => false,
    }
}

#[derive(Clone, Debug)]
enum Edit {
    /// Replace the value at a path with garbage.
    Garbage(usize, Value),
    /// Remove an item of a list.
    Drop(usize),
    /// Insert a copy of an item of a list after it.
    Duplicate(usize),
    /// Point a reference at an id that does not exist.
    MissingRef(usize, String),
}

fn garbage() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-2i64..70000).prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,20}".prop_map(Value::from),
        prop::sample::select(vec![
            "",
            "203.0.113.300",
            "198.18.1.1",
            "198.18.1.0/24",
            "198.18.1.7/24",
            "0.0.0.0/0",
            "ff:ff:ff:ff:ff:ff",
            "fa:16:3e:00:00:01",
            "00:00:00:00:00:00",
            "vlan",
            "vxlan",
            "flat",
            "local",
            "mem",
            "tcp",
            "icmp",
            "ingress",
            "IPv6",
            "net-a",
            "sub-b",
            "web",
            "vm1",
            "physnet1",
        ])
        .prop_map(Value::from),
        Just(Value::Array(vec![])),
        Just(serde_json::json!({})),
        Just(serde_json::json!({ "driver": "mem" })),
        Just(serde_json::json!({ "driver": "afxdp", "interface": "eth1" })),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), garbage()).prop_map(|(i, g)| Edit::Garbage(i, g)),
        any::<usize>().prop_map(Edit::Drop),
        any::<usize>().prop_map(Edit::Duplicate),
        (any::<usize>(), "[a-z]{1,8}-missing").prop_map(|(i, s)| Edit::MissingRef(i, s)),
    ]
}

fn apply(doc: &mut Value, edit: &Edit) {
    let mut all = Vec::new();
    paths(doc, &mut Vec::new(), &mut all);
    let items: Vec<&Vec<Step>> = all
        .iter()
        .filter(|p| matches!(p.last(), Some(Step::Index(_))))
        .collect();
    let refs: Vec<&Vec<Step>> = all.iter().filter(|p| is_reference(p)).collect();
    match edit {
        Edit::Garbage(i, g) => {
            let path = &all[i % all.len()];
            if let Some(v) = at(doc, path) {
                *v = g.clone();
            }
        }
        Edit::Drop(i) | Edit::Duplicate(i) if !items.is_empty() => {
            let path = items[i % items.len()];
            let (Some(Step::Index(k)), parent) = (path.last(), &path[..path.len() - 1]) else {
                return;
            };
            if let Some(Value::Array(list)) = at(doc, parent) {
                if matches!(edit, Edit::Drop(_)) {
                    list.remove(*k);
                } else {
                    let copy = list[*k].clone();
                    list.insert(k + 1, copy);
                }
            }
        }
        Edit::MissingRef(i, id) if !refs.is_empty() => {
            if let Some(v) = at(doc, refs[i % refs.len()]) {
                *v = Value::from(id.clone());
            }
        }
        _ => {}
    }
}

fn check_outcome(text: &str) -> Result<(), TestCaseError> {
    match DesiredState::from_json_str(text) {
        Err(e) => prop_assert!(!e.message.is_empty()),
        Ok(state) => {
            // Whatever parses survives a JSON round trip.
            prop_assert_eq!(
                &DesiredState::from_json_str(&state.to_json_string()).unwrap(),
                &state
            );
            if let Err(errors) = validate(&state) {
                prop_assert!(!errors.is_empty());
                for e in errors {
                    let known = TOP_LEVEL_KEYS.iter().any(|k| {
                        e.path
                            .strip_prefix(k)
                            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
                    });
                    prop_assert!(known, "path {:?} of {}", e.path, e);
                    prop_assert!(!e.message.is_empty());
                }
            }
        }
    }
    Ok(())
}

fn example_docs() -> [Value; 2] {
    [
        serde_json::to_value(two_networks()).unwrap(),
        serde_json::to_value(router_fip()).unwrap(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_edits_validate_or_report_paths(which in 0usize..2, edits in prop::collection::vec(edit(), 1..4)) {
        let mut doc = example_docs()[which].clone();
        for e in &edits {
            apply(&mut doc, e);
        }
        check_outcome(&serde_json::to_string(&doc).unwrap())?;
    }

    #[test]
    fn arbitrary_strings_never_panic(s in ".{0,200}") {
        let _ = DesiredState::from_toml_str(&s);
        let _ = DesiredState::from_json_str(&s);
    }

    #[test]
    fn corrupted_config_text_never_panics(which in 0usize..2, at in any::<usize>(), len in 0usize..8, insert in ".{0,6}") {
        let text = [TWO_NETWORKS_VLAN, ROUTER_FLOATING_IP][which];
        let mut bytes: Vec<char> = text.chars().collect();
        let at = at % bytes.len();
        let end = (at + len).min(bytes.len());
        bytes.splice(at..end, insert.chars());
        let text: String = bytes.into_iter().collect();
        if let Ok(state) = DesiredState::from_toml_str(&text) {
            check_outcome(&state.to_json_string())?;
        }
        let json = example_docs()[which].to_string();
        let cut = json.char_indices().nth(at % json.len()).map_or(0, |(i, _)| i);
        let _ = DesiredState::from_json_str(&json[..cut]);
    }
}

#[test]
fn route_model_type_is_shared() {
    // Subnet host routes and router routes use one type.
    let r = Route {
        destination: "198.19.0.0/16".into(),
        nexthop: "198.18.1.254".into(),
    };
    assert_eq!(two_networks().subnets[0].host_routes[0], r);
}

#[test]
fn router_macs_are_reserved_and_a_router_has_one_interface_per_network() {
    let mut s = router_fip();
    s.ports[0].mac_address = "02:70:6c:00:00:01".into();
    assert_errors(
        &s,
        &["ports[0].mac_address: 02:70:6c:00:00:01 is in 02:70:6c:00:00:00/24, which polluxd reserves for its routers"],
    );

    let mut s = router_fip();
    let mut second = s.subnets[1].clone();
    second.id = "tenant-v4-b".into();
    second.cidr = "198.18.11.0/24".into();
    second.gateway_ip = Some("198.18.11.1".into());
    s.subnets.push(second);
    s.routers[0].interfaces.push("tenant-v4-b".into());
    assert_errors(
        &s,
        &["routers[0].interfaces[1]: subnet tenant-v4-b is on the same network as subnet tenant-v4, which already has an interface on this router"],
    );
}
