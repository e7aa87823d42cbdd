//! Security groups compiled for the data plane: each port with port security gets the
//! union of its groups' rules per direction (ports with the same groups share one
//! compiled policy), and every remote group and address group becomes one address set
//! that all the rules naming it share. A change of membership changes the set only; the
//! rule sets refer to it by index. IPv6 rules compile into the policy's IPv6 rule sets,
//! and every group has an IPv6 address set too (its members' IPv6 address pairs), by the
//! same index.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use pollux_dataplane::port::PortId;
use pollux_dataplane::secgroup::{
    AddressSet, RuleName, RuleSet, SgPolicy, SgRemote, SgRule, SgTables,
};

use crate::model::Direction;
use crate::validate::{PortMatch, Remote, Rule, Validated};

/// A compiled rule of either family.
#[derive(Clone, Copy, Debug)]
enum Compiled {
    V4(SgRule),
    V6(SgRule<u128>),
}

/// The address set of security group `g` is set `g`; address group `a`'s is set
/// `groups + a` (in either family's sets).
fn set_index(state: &Validated, remote: Remote) -> Option<u32> {
    match remote {
        Remote::Group(g) => Some(g as u32),
        Remote::AddressGroup(a) => Some((state.security_groups.len() + a) as u32),
        _ => None,
    }
}

fn set_of(state: &Validated, remote: Remote) -> SgRemote {
    match remote {
        Remote::Prefix(c) => SgRemote::Prefix {
            addr: u32::from(c.addr),
            len: c.prefix,
        },
        r => set_index(state, r).map_or(SgRemote::Any, SgRemote::Set),
    }
}

fn set_of6(state: &Validated, remote: Remote) -> SgRemote<u128> {
    match remote {
        Remote::Prefix6(a, len) => SgRemote::Prefix {
            addr: u128::from(a),
            len,
        },
        r => set_index(state, r).map_or(SgRemote::Any, SgRemote::Set),
    }
}

fn compile_rule(state: &Validated, r: &Rule, id: u32) -> Compiled {
    let (lo, hi) = match (r.protocol, r.ports) {
        (None, _) | (_, PortMatch::Any) => (0, u16::MAX),
        (_, PortMatch::Ports(a, b)) => (a, b),
        (_, PortMatch::Icmp(Some(t), Some(c))) => {
            let k = u16::from(t) << 8 | u16::from(c);
            (k, k)
        }
        (_, PortMatch::Icmp(Some(t), None)) => (u16::from(t) << 8, u16::from(t) << 8 | 0xff),
        (_, PortMatch::Icmp(None, _)) => (0, u16::MAX),
    };
    if r.ipv6 {
        Compiled::V6(SgRule {
            proto: r.protocol,
            lo,
            hi,
            remote: set_of6(state, r.remote),
            id,
        })
    } else {
        Compiled::V4(SgRule {
            proto: r.protocol,
            lo,
            hi,
            remote: set_of(state, r.remote),
            id,
        })
    }
}

/// The prefixes of each address set, in set order.
fn set_prefixes(state: &Validated) -> Vec<Vec<(u32, u8)>> {
    let mut sets: Vec<Vec<(u32, u8)>> = vec![Vec::new(); state.security_groups.len()];
    for port in &state.ports {
        for &g in &port.security_groups {
            let set = &mut sets[g];
            set.extend(port.fixed_ips.iter().map(|f| (u32::from(f.ip), 32)));
            set.extend(
                port.allowed_address_pairs
                    .iter()
                    .map(|p| (u32::from(p.ip.addr), p.ip.prefix)),
            );
        }
    }
    for ag in state.address_groups.iter() {
        sets.push(
            ag.ipv4
                .iter()
                .map(|c| (u32::from(c.addr), c.prefix))
                .collect(),
        );
    }
    for s in &mut sets {
        s.sort_unstable();
        s.dedup();
    }
    sets
}

/// The IPv6 prefixes of each address set, by the same indices as [`set_prefixes`].
fn set_prefixes6(state: &Validated) -> Vec<Vec<(u128, u8)>> {
    let mut sets: Vec<Vec<(u128, u8)>> = vec![Vec::new(); state.security_groups.len()];
    for port in &state.ports {
        for &g in &port.security_groups {
            sets[g].extend(port.fixed_ips6.iter().map(|&ip| (u128::from(ip), 128)));
            sets[g].extend(
                port.allowed_address_pairs6
                    .iter()
                    .map(|p| (u128::from(p.addr), p.prefix)),
            );
        }
    }
    for ag in state.address_groups.iter() {
        sets.push(ag.ipv6.iter().map(|&(a, l)| (u128::from(a), l)).collect());
    }
    for s in &mut sets {
        s.sort_unstable();
        s.dedup();
    }
    sets
}

/// The security-group tables of `ports` (each: a port with port security, as (index into
/// `state.ports`, its id)).
pub fn tables(state: &Validated, ports: &[(usize, PortId)]) -> SgTables {
    let prefixes = set_prefixes(state);
    let prefixes6 = set_prefixes6(state);
    let mut names = Vec::new();
    let mut rules_of: Vec<Vec<(Direction, Compiled)>> = Vec::new();
    for g in state.security_groups.iter() {
        let mut compiled = Vec::new();
        for r in &g.rules {
            let id = names.len() as u32;
            names.push(RuleName {
                group: g.id.clone(),
                rule: r.id.clone(),
            });
            compiled.push((r.direction, compile_rule(state, r, id)));
        }
        rules_of.push(compiled);
    }
    // Policies in the order of their sorted groups, whatever the order of the ports, so
    // that a change of ports that keeps the set of groups in use keeps every policy's
    // index (and can be made to a copy of the running tables: `Snapshot::patch_ports`).
    let mut by_groups: BTreeMap<Vec<usize>, u32> = BTreeMap::new();
    let mut port_groups = Vec::with_capacity(ports.len());
    for &(index, id) in ports {
        let mut groups = state.ports[index].security_groups.clone();
        groups.sort_unstable();
        by_groups.entry(groups.clone()).or_default();
        port_groups.push((id, groups));
    }
    let mut policies: Vec<SgPolicy> = Vec::with_capacity(by_groups.len());
    for (groups, at) in by_groups.iter_mut() {
        *at = policies.len() as u32;
        policies.push(policy(state, groups, &rules_of, (&prefixes, &prefixes6)));
    }
    let port_policy: Vec<(PortId, u32)> = port_groups
        .iter()
        .map(|(id, groups)| (*id, by_groups[groups]))
        .collect();
    let sets = prefixes.iter().map(|p| AddressSet::new(p)).collect();
    let sets6 = prefixes6.iter().map(|p| AddressSet::new(p)).collect();
    SgTables::new(policies, &port_policy, sets, names)
        .with_ipv6_sets(sets6)
        .with_ra_sources(ra_sources(state, ports))
}

/// The addresses each port accepts router advertisements from, as Neutron's
/// `_select_ra_ips_for_network_ids` selects them: the gateway of each IPv6 subnet of the
/// port's network when it is link-local (the only source an RA may have). Neutron's other
/// case, a global gateway held by a router interface with `ipv6_ra_mode`, needs an IPv6
/// router interface, which Pollux refuses; with a global gateway and no such router,
/// Neutron allows no RA either.
/// The policy of a port with port security and no groups (Neutron's deny-all, but for the
/// implicit allows): made of no rule and no address set, so a change of ports alone can
/// give it without the state's groups.
pub fn ungrouped(state: &Validated) -> SgPolicy {
    policy(state, &[], &[], (&[], &[]))
}

/// What [`ra_sources`] gives a port of `network`, from that network's subnets alone.
pub fn ra_sources_of(state: &Validated, network: usize) -> Vec<u128> {
    state
        .subnets
        .iter()
        .filter(|s| s.network == network)
        .filter_map(|s| s.ipv6.as_ref().and_then(|v6| v6.gateway_ip))
        .filter(|g| g.is_unicast_link_local())
        .map(u128::from)
        .collect()
}

fn ra_sources(state: &Validated, ports: &[(usize, PortId)]) -> Vec<(PortId, Vec<u128>)> {
    // Per network once: a scan of the subnets per port costs ports x subnets, 10 million
    // steps on a host with 10,000 ports and 1,000 subnets.
    let mut of_network: Vec<Vec<u128>> = vec![Vec::new(); state.networks.len()];
    for s in state.subnets.iter() {
        if let Some(g) = s.ipv6.as_ref().and_then(|v6| v6.gateway_ip) {
            if g.is_unicast_link_local() {
                of_network[s.network].push(u128::from(g));
            }
        }
    }
    ports
        .iter()
        .map(|&(index, id)| (id, of_network[state.ports[index].network].clone()))
        .collect()
}

/// The IPv4 and IPv6 prefixes of every address set.
type SetPrefixes<'a> = (&'a [Vec<(u32, u8)>], &'a [Vec<(u128, u8)>]);

fn policy(
    state: &Validated,
    groups: &[usize],
    rules_of: &[Vec<(Direction, Compiled)>],
    (prefixes, prefixes6): SetPrefixes<'_>,
) -> SgPolicy {
    let of_dir = |dir: Direction| {
        groups
            .iter()
            .flat_map(|&g| rules_of[g].iter())
            .filter(move |(d, _)| *d == dir)
            .map(|&(_, r)| r)
    };
    let pick = |dir: Direction| -> Vec<SgRule> {
        of_dir(dir)
            .filter_map(|r| match r {
                Compiled::V4(r) => Some(r),
                Compiled::V6(_) => None,
            })
            .collect()
    };
    let pick6 = |dir: Direction| -> Vec<SgRule<u128>> {
        of_dir(dir)
            .filter_map(|r| match r {
                Compiled::V6(r) => Some(r),
                Compiled::V4(_) => None,
            })
            .collect()
    };
    let ingress = pick(Direction::Ingress);
    let egress = pick(Direction::Egress);
    let ingress6 = pick6(Direction::Ingress);
    let egress6 = pick6(Direction::Egress);
    // The version is a digest of what decides: the rules (without their ids, which only
    // name them) and the address sets they use.
    let mut h = DefaultHasher::new();
    for (tag, rules) in [(0u8, &ingress), (1, &egress)] {
        tag.hash(&mut h);
        for r in rules.iter() {
            (r.proto, r.lo, r.hi, r.remote).hash(&mut h);
            if let SgRemote::Set(s) = r.remote {
                prefixes[s as usize].hash(&mut h);
            }
        }
    }
    for (tag, rules) in [(2u8, &ingress6), (3, &egress6)] {
        tag.hash(&mut h);
        for r in rules.iter() {
            (r.proto, r.lo, r.hi, r.remote).hash(&mut h);
            if let SgRemote::Set(s) = r.remote {
                prefixes6[s as usize].hash(&mut h);
            }
        }
    }
    let stateful = groups.iter().all(|&g| state.security_groups[g].stateful);
    stateful.hash(&mut h);
    SgPolicy {
        ingress: RuleSet::build(&ingress),
        egress: RuleSet::build(&egress),
        ingress6: RuleSet::build(&ingress6),
        egress6: RuleSet::build(&egress6),
        stateful,
        version: (h.finish() & 0x7fff) as u16,
    }
}
