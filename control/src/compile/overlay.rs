//! The overlay part of a compile: this host's tunnel endpoint, a tunnel port per remote
//! host that has ports on an overlay network, the remote ports' MACs on those tunnels
//! (l2population), each network's peers (the hosts with ports on it) and the addresses
//! the ARP responder answers for. A router another host runs is, on overlay networks, an
//! l2population entry of that host like its ports (its MAC, its interfaces' addresses).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use pollux_dataplane::overlay::EndpointSpec;
use pollux_dataplane::port::PortId;
use pollux_dataplane::snapshot::{NetworkUid, SnapshotBuilder};

use super::{CompileError, Identities};
use crate::validate::Validated;

/// The key of the tunnel port towards host `name` in [`Identities`].
pub fn tunnel_key(name: &str) -> String {
    format!("host:{name}")
}

/// Adds the overlay to `b`. `uplink_ids` are the uplinks' port ids (by uplink index),
/// `network_uid` the networks' uids; `taken` marks the port ids in use. Returns the keys
/// of the tunnel ports, which the identities must keep.
pub(super) fn compile_overlay(
    state: &Validated,
    ids: &mut Identities,
    taken: &mut [bool],
    b: &mut SnapshotBuilder,
    uplink_ids: &[PortId],
    network_uid: &[NetworkUid],
) -> Result<Vec<String>, CompileError> {
    let overlay_net = |n: usize| {
        let net = &state.networks[n];
        net.admin_state_up && net.segment.is_overlay()
    };
    for (i, port) in state.ports.iter().enumerate() {
        if port.remote_host.is_some() && !state.networks[port.network].segment.is_overlay() {
            return Err(CompileError::Unsupported {
                path: format!("ports[{i}].binding_host_id"),
                what: "ports of other hosts are supported on vxlan, geneve and gre networks only"
                    .into(),
            });
        }
    }
    let Some((uplink, (local_ip, prefix))) = state
        .uplinks
        .iter()
        .enumerate()
        .find_map(|(i, u)| u.local_ip.map(|l| (i, l)))
    else {
        return Ok(Vec::new());
    };
    if !(0..state.networks.len()).any(overlay_net) {
        // An endpoint without overlay networks: nothing to decapsulate into.
        return Ok(Vec::new());
    }
    b.tunnel_endpoint(EndpointSpec {
        uplink: uplink_ids[uplink],
        local_ip,
    });
    // Routers another host runs, with their interfaces on overlay networks: l2population
    // entries of that host, as its ports are.
    let remote_routers: Vec<(usize, usize, Ipv4Addr, [u8; 6])> = state
        .routers
        .iter()
        .filter_map(|r| Some((r, r.remote_host?, r.mac?)))
        .flat_map(|(r, host, mac)| {
            let interfaces = r.interfaces.iter().filter_map(|&s| {
                let subnet = &state.subnets[s];
                Some((subnet.network, subnet.gateway_ip?))
            });
            interfaces
                .chain(r.external_gateway.map(|g| (g.network, g.ip)))
                .map(move |(network, ip)| (host, network, ip, mac))
        })
        .filter(|&(_, network, _, _)| overlay_net(network))
        .collect();
    // Hosts with remote ports or routers on overlay networks get a tunnel port, in host
    // order.
    let hosts: BTreeSet<usize> = state
        .ports
        .iter()
        .filter(|p| overlay_net(p.network))
        .filter_map(|p| p.remote_host)
        .chain(remote_routers.iter().map(|&(host, ..)| host))
        .collect();
    let mut tunnel = vec![None; state.hosts.items.len()];
    let mut keys = Vec::new();
    for h in hosts {
        let host = &state.hosts.items[h];
        if !prefix.contains(host.tunnel_ip) {
            return Err(CompileError::Unsupported {
                path: format!("hosts[{h}].tunnel_ip"),
                what: format!(
                    "{} is outside {prefix}, the subnet of local_ip: tunnel endpoints behind a \
                     router of the underlay are not supported yet",
                    host.tunnel_ip
                ),
            });
        }
        let key = tunnel_key(&host.name);
        let id = ids.assign_port(&key, taken)?;
        b.tunnel_port(id, host.tunnel_ip);
        tunnel[h] = Some(id);
        keys.push(key);
    }
    for port in &state.ports {
        if !overlay_net(port.network) {
            continue;
        }
        let uid = network_uid[port.network];
        if let Some(t) = port.remote_host.and_then(|h| tunnel[h]) {
            b.remote_port(uid, t, &port.macs());
        }
        for f in &port.fixed_ips {
            b.arp_entry(uid, f.ip, port.mac);
        }
    }
    // A VM here asks for its gateway: the ARP responder answers with the MAC of the
    // router on the other host, and the frames to it go through that host's tunnel.
    for &(host, network, ip, mac) in &remote_routers {
        let uid = network_uid[network];
        if let Some(t) = tunnel[host] {
            b.remote_port(uid, t, &[mac]);
        }
        b.arp_entry(uid, ip, mac);
    }
    Ok(keys)
}
