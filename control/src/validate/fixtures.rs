//! The desired state the unit tests of validation start from, and their helpers.

use crate::model::{self, DesiredState};
use crate::validate::validate;

/// A network with a /24 (DHCP on by default) and a port, a router with an external
/// gateway and a floating IP.
pub const BASE: &str = r#"
    [[networks]]
    id = "net-a"
    network_type = "local"

    [[networks]]
    id = "ext"
    network_type = "local"

    [[subnets]]
    id = "sub-a"
    network_id = "net-a"
    cidr = "198.18.1.0/24"
    gateway_ip = "198.18.1.1"

    [[subnets]]
    id = "sub-ext"
    network_id = "ext"
    cidr = "203.0.113.0/24"
    gateway_ip = "203.0.113.1"

    [[ports]]
    id = "vm1"
    network_id = "net-a"
    mac_address = "fa:16:3e:00:00:01"
    fixed_ips = [{ subnet_id = "sub-a", ip_address = "198.18.1.10" }]
    binding = { driver = "mem" }

    [[routers]]
    id = "r1"
    interfaces = ["sub-a"]
    external_gateway_info = { network_id = "ext", external_fixed_ip = "203.0.113.10" }

    [[floating_ips]]
    id = "fip1"
    floating_ip_address = "203.0.113.20"
    port_id = "vm1"
"#;

pub fn base() -> DesiredState {
    DesiredState::from_toml_str(BASE).expect("the base state parses")
}

pub fn errors(state: &DesiredState) -> Vec<String> {
    match validate(state) {
        Ok(_) => Vec::new(),
        Err(e) => e.iter().map(|e| e.to_string()).collect(),
    }
}

#[track_caller]
pub fn assert_errors(state: &DesiredState, expected: &[&str]) {
    assert_eq!(errors(state), expected);
}

pub fn opt(name: &str, value: &str) -> model::ExtraDhcpOpt {
    model::ExtraDhcpOpt {
        opt_name: name.into(),
        opt_value: value.into(),
        ip_version: None,
    }
}
