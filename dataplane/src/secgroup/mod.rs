//! Security groups with Neutron's semantics, enforced per VM port on the worker's
//! connection table (one lookup path with the routers' NAT: zone = the port).
//!
//! - **Egress** (traffic from the VM): the [`SgEgress`] stage, right after port security
//!   on the port the burst came from.
//! - **Ingress** (traffic to the VM): decided for the *output* port, so it runs after the
//!   forwarding decision: the [`SgIngress`] stage before output for unicast, and
//!   [`filter_ingress`] for each flooded replica (a replica to a port whose groups refuse
//!   it is dropped while the others go out) and for the frames the router sends after a
//!   burst.
//! - **Stateful** groups: the first packet of a flow is evaluated against the rules; if a
//!   rule allows it, a connection is tracked in the port's zone (charged to the port's
//!   quota) and its replies, and ICMP errors whose inner header is a tracked flow, pass
//!   without the rules. The established path is one conntrack lookup whatever the rule
//!   count. Each connection remembers the version of the policy that admitted it; when
//!   the port's rules change, its next packet re-evaluates the rules and the connection
//!   is cut if they no longer allow it.
//! - **Stateless** groups: every packet needs a rule of its own direction.
//! - **Implicit allows** (Neutron's iptables driver): ARP; DHCP client requests out
//!   (UDP 68 → 67) and DHCP replies in (67 → 68, from any server); IPv6 neighbour
//!   discovery, MLD, router solicitations out and advertisements in from the network's
//!   routers (an IPv6 subnet's link-local gateway, as Neutron's provider rule), DHCPv6
//!   client traffic. Nothing else: no rule is a drop (`sg_no_rule`).
//!
//! - **IPv6**: rules with `ethertype = "IPv6"` compile into rule sets of their own (remote
//!   prefixes and address sets of IPv6 addresses), and IPv6 connections are tracked in
//!   the worker's IPv6 connection table ([`FlowKey6`], same zones), so the IPv4 table and
//!   its established path keep their narrow keys. The extension-header walk is bounded
//!   ([`crate::wire::ipv6::MAX_EXTENSION_HEADERS`]); a first fragment gives the ports and
//!   admits the later fragments of its datagram; ICMPv6 types and codes match through
//!   the port-range fields as ICMP's do; ICMPv6 errors quoting a tracked flow pass.

pub mod classifier;

use crate::conntrack::{
    ConnKey, ConnTable, Dir, FlowKey, FlowKey6, InsertError, TcpSegment, FRAGMENT_ZONE,
};
use crate::counters::Counter;
use crate::drop::DropReason;
use crate::packet::{Meta, Next, Packet};
use crate::pipeline::{BurstCtx, BurstStage, Outcome, Pending, Stage};
use crate::port::PortId;
use crate::snapshot::Snapshot;
use crate::wire::ipv6::{Ipv6Packet, ICMPV6};
use crate::wire::{EtherType, IpProtocol, Ipv4Packet, TcpFlags};

pub use classifier::{AddressSet, RuleSet, SgAddr, SgRemote, SgRule};

/// Zones of security-group connections have this bit; NAT zones (router uids, 24 bits)
/// never do.
pub const PORT_ZONE: u32 = 1 << 31;

/// The conntrack zone of a port's security-group connections.
#[inline]
pub const fn port_zone(port: PortId) -> u32 {
    PORT_ZONE | port.0 as u32
}

/// The port of a security-group connection's zone; `None` for a router's zone (NAT) and
/// for the entries that admit later fragments.
pub const fn zone_port(zone: u32) -> Option<PortId> {
    if zone & (PORT_ZONE | FRAGMENT_ZONE) == PORT_ZONE {
        Some(PortId(zone as u16))
    } else {
        None
    }
}

const TCP: u8 = IpProtocol::TCP.0;
const UDP: u8 = IpProtocol::UDP.0;
const ICMP: u8 = IpProtocol::ICMP.0;
const SCTP: u8 = 132;
const DCCP: u8 = 33;
const UDPLITE: u8 = 136;
const DHCP_SERVER: u16 = 67;
const DHCP_CLIENT: u16 = 68;
const DHCPV6_CLIENT: u16 = 546;
const DHCPV6_SERVER: u16 = 547;
/// ICMPv6 neighbour discovery and MLD types Neutron lets through on every port: MLD query,
/// report, done (130-132), router solicitation (133), neighbour solicitation and
/// advertisement (135, 136), MLDv2 report (143). Router advertisements (134) pass in only
/// from the network's routers ([`SgTables::ra_from_router`]).
const ICMPV6_IMPLICIT: [u8; 7] = [130, 131, 132, 133, 135, 136, 143];
const ICMPV6_ROUTER_ADVERTISEMENT: u8 = 134;
const ICMPV6_PROTO: u8 = ICMPV6.0;

/// Which way a packet crosses the port, seen from the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// To the VM.
    Ingress,
    /// From the VM.
    Egress,
}

/// The compiled security groups of one port: the union of its groups' rules, per
/// direction and address family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SgPolicy {
    /// IPv4 rules for traffic to the port.
    pub ingress: RuleSet,
    /// IPv4 rules for traffic from the port.
    pub egress: RuleSet,
    /// IPv6 rules for traffic to the port.
    pub ingress6: RuleSet<u128>,
    /// IPv6 rules for traffic from the port.
    pub egress6: RuleSet<u128>,
    /// Connection tracking (all of the port's groups are stateful or none is).
    pub stateful: bool,
    /// A digest of the rules and the address sets they use: a connection admitted under
    /// another version is re-evaluated on its next packet.
    pub version: u16,
}

/// Names of a rule, for counters and the CLI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleName {
    /// The security group's id.
    pub group: String,
    /// The rule's id.
    pub rule: String,
}

/// Everything the snapshot holds for security groups.
#[derive(Debug, Default)]
pub struct SgTables {
    policies: Box<[SgPolicy]>,
    /// Per port id, its policy's index, or `u32::MAX`.
    port_policy: Box<[u32]>,
    sets: Box<[AddressSet]>,
    /// The IPv6 addresses of the same groups, by the same indices.
    sets6: Box<[AddressSet<u128>]>,
    rules: Box<[RuleName]>,
    /// Per rule: connections (stateful) or packets (stateless) it admitted.
    hits: Box<[Counter]>,
    /// Per port id, the link-local addresses its network's routers send router
    /// advertisements from (Neutron's `_select_ra_ips_for_network_ids`).
    ra_sources: Box<[Box<[u128]>]>,
    /// Some port has a policy.
    any: bool,
}

/// A copy starts its hit counters from zero.
impl Clone for SgTables {
    fn clone(&self) -> Self {
        SgTables {
            policies: self.policies.clone(),
            port_policy: self.port_policy.clone(),
            sets: self.sets.clone(),
            sets6: self.sets6.clone(),
            rules: self.rules.clone(),
            hits: (0..self.rules.len()).map(|_| Counter::default()).collect(),
            ra_sources: self.ra_sources.clone(),
            any: self.any,
        }
    }
}

impl SgTables {
    /// Tables of `policies` (ports share one when they have the same groups), with
    /// `port_policy` giving each port's (`(port, index into policies)`), the address
    /// `sets` the rules refer to, and every rule's names (indexed by [`SgRule::id`]).
    pub fn new(
        policies: Vec<SgPolicy>,
        port_policy: &[(PortId, u32)],
        sets: Vec<AddressSet>,
        rules: Vec<RuleName>,
    ) -> Self {
        let slots = port_policy
            .iter()
            .map(|(p, _)| p.index() + 1)
            .max()
            .unwrap_or(0);
        let mut by_port = vec![u32::MAX; slots];
        for &(p, i) in port_policy {
            by_port[p.index()] = i;
        }
        let hits = (0..rules.len()).map(|_| Counter::default()).collect();
        SgTables {
            policies: policies.into(),
            any: !port_policy.is_empty(),
            port_policy: by_port.into(),
            sets: sets.into(),
            sets6: Box::default(),
            rules: rules.into(),
            hits,
            ra_sources: Box::default(),
        }
    }

    /// These tables with the IPv6 address sets of the groups (same indices as the IPv4
    /// sets given to [`SgTables::new`]).
    pub fn with_ipv6_sets(mut self, sets6: Vec<AddressSet<u128>>) -> Self {
        self.sets6 = sets6.into();
        self
    }

    /// These tables with the addresses each port accepts router advertisements from
    /// (`(port, link-local addresses of its network's routers)`); a port not given gets
    /// router advertisements only as its rules allow them.
    pub fn with_ra_sources(mut self, sources: Vec<(PortId, Vec<u128>)>) -> Self {
        let slots = sources
            .iter()
            .map(|(p, _)| p.index() + 1)
            .max()
            .unwrap_or(0);
        let mut by_port: Vec<Box<[u128]>> = vec![Box::default(); slots];
        for (p, mut addrs) in sources {
            addrs.sort_unstable();
            addrs.dedup();
            by_port[p.index()] = addrs.into();
        }
        self.ra_sources = by_port.into();
        self
    }

    /// Gives `port` the held policy equal to `policy`, with the addresses it accepts
    /// router advertisements from, or takes its policy away (`None`): how a change of
    /// ports edits a copy of the running tables ([`crate::snapshot::Snapshot::patch_ports`]).
    /// False, and nothing changed, when not exactly one held policy equals `policy` (a
    /// build from scratch would number them otherwise).
    pub fn set_port(&mut self, port: PortId, policy: Option<(&SgPolicy, &[u128])>) -> bool {
        let i = port.index();
        let Some((policy, ra)) = policy else {
            if let Some(slot) = self.port_policy.get_mut(i) {
                *slot = u32::MAX;
            }
            if let Some(slot) = self.ra_sources.get_mut(i) {
                *slot = Box::default();
            }
            return true;
        };
        let mut equal = self
            .policies
            .iter()
            .enumerate()
            .filter(|(_, p)| *p == policy);
        let (Some((at, _)), None) = (equal.next(), equal.next()) else {
            return false;
        };
        if self.port_policy.len() <= i {
            let mut grown = std::mem::take(&mut self.port_policy).into_vec();
            grown.resize(i + 1, u32::MAX);
            self.port_policy = grown.into();
        }
        if self.ra_sources.len() <= i {
            let mut grown = std::mem::take(&mut self.ra_sources).into_vec();
            grown.resize(i + 1, Box::default());
            self.ra_sources = grown.into();
        }
        self.port_policy[i] = at as u32;
        let mut ra = ra.to_vec();
        ra.sort_unstable();
        ra.dedup();
        self.ra_sources[i] = ra.into();
        true
    }

    /// Ends a run of [`SgTables::set_port`]: the per-port tables as long as a build from
    /// scratch makes them. False when some policy is left without a port (a build from
    /// scratch would not hold it).
    pub fn settle(&mut self) -> bool {
        let len = self
            .port_policy
            .iter()
            .rposition(|&p| p != u32::MAX)
            .map_or(0, |last| last + 1);
        if len < self.port_policy.len() {
            let mut cut = std::mem::take(&mut self.port_policy).into_vec();
            cut.truncate(len);
            self.port_policy = cut.into();
        }
        if len < self.ra_sources.len() {
            let mut cut = std::mem::take(&mut self.ra_sources).into_vec();
            cut.truncate(len);
            self.ra_sources = cut.into();
        }
        self.any = len > 0;
        let mut used = vec![false; self.policies.len()];
        for &p in self.port_policy.iter().filter(|&&p| p != u32::MAX) {
            used[p as usize] = true;
        }
        used.into_iter().all(|u| u)
    }

    /// Whether `src` is one of the routers `port` accepts router advertisements from.
    #[inline]
    pub fn ra_from_router(&self, port: PortId, src: u128) -> bool {
        self.ra_sources
            .get(port.index())
            .is_some_and(|a| a.contains(&src))
    }

    /// The policy of `port`, if it has security groups (port security on).
    #[inline]
    pub fn policy(&self, port: PortId) -> Option<&SgPolicy> {
        let i = *self.port_policy.get(port.index())?;
        self.policies.get(i as usize)
    }

    /// Ports with a policy.
    pub fn ports(&self) -> impl Iterator<Item = PortId> + '_ {
        self.port_policy
            .iter()
            .enumerate()
            .filter(|(_, &i)| i != u32::MAX)
            .map(|(p, _)| PortId(p as u16))
    }

    /// Whether no port has a policy.
    pub fn is_empty(&self) -> bool {
        !self.any
    }

    /// Whether some port has a policy (one read: flooding asks it per packet).
    #[inline(always)]
    pub fn any(&self) -> bool {
        self.any
    }

    /// The address sets of remote and address groups.
    pub fn sets(&self) -> &[AddressSet] {
        &self.sets
    }

    /// The IPv6 address sets of remote and address groups.
    pub fn sets6(&self) -> &[AddressSet<u128>] {
        &self.sets6
    }

    /// Every rule's names with its hit count, by rule id.
    pub fn rule_hits(&self) -> impl Iterator<Item = (&RuleName, u64)> + '_ {
        self.rules
            .iter()
            .zip(self.hits.iter())
            .map(|(n, c)| (n, c.get()))
    }

    /// Counts a packet or connection admitted by rule `id` (an id the tables do not name
    /// counts nowhere rather than panicking).
    #[inline]
    fn count_hit(&self, id: u32) {
        if let Some(c) = self.hits.get(id as usize) {
            c.inc();
        }
    }

    /// The names of rule `id`.
    pub fn rule(&self, id: u32) -> Option<&RuleName> {
        self.rules.get(id as usize)
    }
}

/// An address family's flow key as the filter uses it: its connection table's key, with
/// the remote end and the rules and address sets of its family.
pub trait SgKey: ConnKey {
    /// The drop of a connection the family's table has no room for (the port's quota in
    /// that table, or the table full): each family has its own table and quota, so a port
    /// filling one still opens connections of the other.
    const CONN_LIMIT: DropReason;
    /// The family's addresses.
    type Addr: SgAddr;
    /// The identification of a fragmented datagram (IPv4: 16 bits, IPv6: 32).
    type Ident: Copy + core::fmt::Debug;
    /// The remote end of a packet crossing the port in `dir`.
    fn remote(&self, dir: Direction) -> Self::Addr;
    /// The key under which the later fragments of this datagram (identification
    /// `ident`) are admitted.
    fn fragment_key(&self, ident: Self::Ident) -> Self;
    /// The family's rules of `policy` in `dir`.
    fn rules(policy: &SgPolicy, dir: Direction) -> &RuleSet<Self::Addr>;
    /// The family's address sets.
    fn sets(tables: &SgTables) -> &[AddressSet<Self::Addr>];
}

impl SgKey for FlowKey {
    const CONN_LIMIT: DropReason = DropReason::SgConnLimit;
    type Addr = u32;
    type Ident = u16;

    #[inline(always)]
    fn remote(&self, dir: Direction) -> u32 {
        match dir {
            Direction::Ingress => self.src,
            Direction::Egress => self.dst,
        }
    }

    fn fragment_key(&self, ident: u16) -> FlowKey {
        FlowKey {
            zone: self.zone | FRAGMENT_ZONE,
            proto: self.proto,
            src: self.src,
            dst: self.dst,
            sport: ident,
            dport: 0,
        }
    }

    #[inline(always)]
    fn rules(policy: &SgPolicy, dir: Direction) -> &RuleSet {
        match dir {
            Direction::Ingress => &policy.ingress,
            Direction::Egress => &policy.egress,
        }
    }

    #[inline(always)]
    fn sets(tables: &SgTables) -> &[AddressSet] {
        &tables.sets
    }
}

impl SgKey for FlowKey6 {
    const CONN_LIMIT: DropReason = DropReason::SgConnLimitIpv6;
    type Addr = u128;
    type Ident = u32;

    #[inline(always)]
    fn remote(&self, dir: Direction) -> u128 {
        match dir {
            Direction::Ingress => self.src,
            Direction::Egress => self.dst,
        }
    }

    fn fragment_key(&self, ident: u32) -> FlowKey6 {
        FlowKey6 {
            zone: self.zone | FRAGMENT_ZONE,
            proto: self.proto,
            src: self.src,
            dst: self.dst,
            sport: (ident >> 16) as u16,
            dport: ident as u16,
        }
    }

    #[inline(always)]
    fn rules(policy: &SgPolicy, dir: Direction) -> &RuleSet<u128> {
        match dir {
            Direction::Ingress => &policy.ingress6,
            Direction::Egress => &policy.egress6,
        }
    }

    #[inline(always)]
    fn sets(tables: &SgTables) -> &[AddressSet<u128>] {
        &tables.sets6
    }
}

/// What the filter reads of an IP packet.
#[derive(Clone, Copy, Debug)]
struct Flow<K: SgKey> {
    key: K,
    flags: TcpFlags,
    /// Destination port, or ICMP `type << 8 | code`.
    port_key: u16,
    /// For an ICMP error: the flow of the packet it is about, as that packet was sent.
    related: Option<K>,
    len: u16,
    /// TCP: what the window check reads.
    tcp: TcpSegment,
    /// Fragmentation: `None`, or the identification of a first fragment (`Some((id,
    /// false))`) or of a later one (`Some((id, true))`).
    fragment: Option<(K::Ident, bool)>,
}

/// Reads the flow of the IPv4 packet `ip` in `zone`. `DRY` is that of the one caller,
/// [`filter`]: an instance per caller keeps it a function with a single call site,
/// which the compiler inlines; with the explain pass's caller besides, it would stay out
/// of line, a call per packet and per direction.
#[inline]
fn ipv4_flow<const DRY: bool>(
    ip: &[u8],
    beyond: usize,
    zone: u32,
) -> Result<Flow<FlowKey>, DropReason> {
    let p = Ipv4Packet::new_checked_within(ip, beyond).map_err(|_| DropReason::BadIpv4Header)?;
    let proto = p.protocol().0;
    let l4 = p.payload();
    let word = |at: usize| l4.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let mut flow = Flow {
        key: FlowKey {
            zone,
            proto,
            src: u32::from(p.src_addr()),
            dst: u32::from(p.dst_addr()),
            sport: 0,
            dport: 0,
        },
        flags: TcpFlags(0),
        port_key: 0,
        related: None,
        len: p.total_len(),
        tcp: TcpSegment::default(),
        fragment: None,
    };
    if p.frag_offset() != 0 {
        flow.fragment = Some((p.ident(), true));
        return Ok(flow);
    }
    if p.more_frags() {
        flow.fragment = Some((p.ident(), false));
    }
    match proto {
        TCP | UDP | SCTP | DCCP | UDPLITE => {
            let (Some(s), Some(d)) = (word(0), word(2)) else {
                return Err(DropReason::SgTruncated);
            };
            flow.key.sport = s;
            flow.key.dport = d;
            flow.port_key = d;
            if proto == TCP {
                let l4_len = usize::from(p.total_len()) - p.header_len();
                flow.tcp = tcp_segment(l4, l4_len).ok_or(DropReason::SgTruncated)?;
                flow.flags = flow.tcp.flags;
            }
        }
        ICMP => {
            let (Some(&ty), Some(&code)) = (l4.first(), l4.get(1)) else {
                return Err(DropReason::SgTruncated);
            };
            flow.port_key = u16::from(ty) << 8 | u16::from(code);
            if let Some((kind, request)) = icmp_query(ty) {
                let id = word(4).ok_or(DropReason::SgTruncated)?;
                (flow.key.sport, flow.key.dport) = icmp_query_ports(id, request);
                flow.key.zone |= kind;
            } else if matches!(ty, 3 | 4 | 5 | 11 | 12) {
                // Errors: destination unreachable, source quench, redirect, time
                // exceeded, parameter problem.
                flow.related = inner_flow(l4.get(8..).unwrap_or(&[]), zone);
            }
        }
        _ => {}
    }
    Ok(flow)
}

/// The window-relevant fields of the TCP segment `l4` (its window scale option only on a
/// SYN, where it counts), `l4_len` bytes long by its IP header (more than `l4` holds when
/// the packet is chained).
fn tcp_segment(l4: &[u8], l4_len: usize) -> Option<TcpSegment> {
    let h = l4.get(..20)?;
    let word = |at: usize| u32::from_be_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    let header_len = usize::from(h[12] >> 4) * 4;
    if header_len < 20 || header_len > l4.len() {
        return None;
    }
    let flags = TcpFlags(u16::from_be_bytes([h[12], h[13]]) & 0x01ff);
    let mut wscale = None;
    if flags.contains(TcpFlags::SYN) {
        let mut opts = &l4[20..header_len];
        while let [kind, rest @ ..] = opts {
            match *kind {
                0 => break,
                1 => opts = rest,
                _ => {
                    let len = usize::from(*rest.first()?);
                    if len < 2 || len > opts.len() {
                        break;
                    }
                    if *kind == 3 && len == 3 {
                        wscale = Some(opts[2]);
                    }
                    opts = &opts[len..];
                }
            }
        }
    }
    Some(TcpSegment {
        seq: word(4),
        ack: word(8),
        len: (l4_len - header_len) as u32,
        window: u16::from_be_bytes([h[14], h[15]]),
        flags,
        wscale,
    })
}

/// ICMP queries are tracked per kind (echo, timestamp, information, address mask) and
/// identifier, as Linux tracks them: the kind goes into zone bits no port zone uses, so
/// an allowed query of one kind lets no query of another kind through.
const ICMP_KIND_SHIFT: u32 = 24;

/// The kind of an ICMP query or reply of type `ty` (in the zone's kind bits) and whether
/// it is the request; `None` for errors and everything else.
#[inline]
fn icmp_query(ty: u8) -> Option<(u32, bool)> {
    let (kind, request) = match ty {
        8 => (0, true),
        0 => (0, false),
        13 => (1, true),
        14 => (1, false),
        15 => (2, true),
        16 => (2, false),
        17 => (3, true),
        18 => (3, false),
        _ => return None,
    };
    Some((kind << ICMP_KIND_SHIFT, request))
}

/// A query is keyed (id, !id) and its reply (!id, id): a reply's key is its request's
/// reversed, while a request the other way is a new flow.
#[inline]
fn icmp_query_ports(id: u16, request: bool) -> (u16, u16) {
    if request {
        (id, !id)
    } else {
        (!id, id)
    }
}

/// The flow of the packet quoted in an ICMP error (its IPv4 header and first 8 bytes).
fn inner_flow(quoted: &[u8], zone: u32) -> Option<FlowKey> {
    let h = quoted.get(..20)?;
    if h[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(h[0] & 0x0f) * 4;
    let proto = h[9];
    let l4 = quoted.get(ihl..)?;
    let word = |at: usize| l4.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let mut query_kind = 0;
    let (sport, dport) = match proto {
        TCP | UDP | SCTP | DCCP | UDPLITE => (word(0)?, word(2)?),
        ICMP => match icmp_query(*l4.first()?) {
            Some((kind, request)) => {
                query_kind = kind;
                icmp_query_ports(word(4)?, request)
            }
            None => (0, 0),
        },
        _ => (0, 0),
    };
    Some(FlowKey {
        zone: zone | query_kind,
        proto,
        src: u32::from_be_bytes([h[12], h[13], h[14], h[15]]),
        dst: u32::from_be_bytes([h[16], h[17], h[18], h[19]]),
        sport,
        dport,
    })
}

/// The connection the previous packet of a burst hit (its key, slot and direction): runs
/// of one flow pay one lookup. Valid within one burst (one clock reading), where only
/// [`revalidate`] removes connections, and it clears it first. IPv4 only: an IPv6 packet
/// leaves it alone and looks its connection up.
pub type LastHit<K = FlowKey> = Option<(K, crate::conntrack::SessionId, Dir)>;

/// A connection's tag: the policy version that admitted it, the direction it was
/// admitted in and its port key, so that it can be re-evaluated when the rules change.
#[inline]
const fn tag(version: u16, dir: Direction, port_key: u16) -> u32 {
    (version as u32) << 17 | (matches!(dir, Direction::Ingress) as u32) << 16 | port_key as u32
}

/// What filtering keeps across the packets of one burst: the IPv4 connection the
/// previous packet hit, and the worker's IPv6 connection table. The table travels here,
/// read only for IPv6, rather than as one more argument of [`filter`]: as an argument
/// it cost the IPv4 established path about 12 instructions per packet
/// (`sg_established_10_rules` 1134.5 -> 1146.7).
#[derive(Debug)]
pub struct Burst<'c> {
    last: LastHit,
    conns6: &'c mut ConnTable<FlowKey6>,
}

impl<'c> Burst<'c> {
    /// The state at the start of a burst.
    pub fn new(conns6: &'c mut ConnTable<FlowKey6>) -> Self {
        Burst { last: None, conns6 }
    }
}

/// What a port's security groups say of a packet by their rules alone (no connection
/// consulted): for explain, which names the rule that lets a packet through, or says that
/// none does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleVerdict {
    /// Allowed without a rule, as on every port with groups (ARP, DHCP between a VM and
    /// its server, IPv6 neighbour discovery): Neutron's implicit rules.
    Implicit,
    /// Allowed by the rule with this id (see [`SgTables::rule`]).
    Rule(u32),
    /// No rule of the port's groups allows it.
    NoRule,
}

/// The verdict of `port`'s rules on the frame `data` (`l3` its network-layer offset,
/// `ethertype` what it carries) crossing the port in `dir`, for explain. `None` when the
/// port has no groups, or the rules do not decide the packet (it is malformed, or a later
/// fragment, which passes with its first).
pub fn rule_for(
    snap: &Snapshot,
    port: PortId,
    dir: Direction,
    data: &[u8],
    beyond: usize,
    ethertype: EtherType,
    l3: usize,
) -> Option<RuleVerdict> {
    let tables = snap.security_groups();
    let policy = tables.policy(port)?;
    let ip = data.get(l3..)?;
    let zone = port_zone(port);
    match ethertype {
        EtherType::ARP => Some(RuleVerdict::Implicit),
        EtherType::IPV4 => {
            let flow = ipv4_flow::<true>(ip, beyond, zone).ok()?;
            rules_verdict(tables, policy, dir, &flow, ipv4_implicit(&flow, dir))
        }
        EtherType::IPV6 => {
            let flow = ipv6_flow(ip, beyond, zone).ok()?;
            rules_verdict(tables, policy, dir, &flow, ipv6_implicit(&flow, dir))
        }
        _ => Some(RuleVerdict::NoRule),
    }
}

fn rules_verdict<K: SgKey>(
    tables: &SgTables,
    policy: &SgPolicy,
    dir: Direction,
    flow: &Flow<K>,
    implicit: bool,
) -> Option<RuleVerdict> {
    if implicit {
        return Some(RuleVerdict::Implicit);
    }
    if matches!(flow.fragment, Some((_, true))) {
        return None;
    }
    let rule = K::rules(policy, dir).lookup(
        K::sets(tables),
        flow.key.remote(dir),
        flow.key.proto(),
        flow.port_key,
    );
    Some(rule.map_or(RuleVerdict::NoRule, RuleVerdict::Rule))
}

/// Decides one packet crossing `port` (whose policy is `policy`) in `dir`: `Ok` when it
/// may pass. `data` is the frame, `meta` its metadata. `DRY` (an explained packet)
/// decides the same but changes nothing: no connection created, touched, re-tagged or
/// cut, no window moved, no rule hit counted.
// The stages pass what they looked up once per burst (policy) or per pass (time); a
// context struct would be rebuilt per packet.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn filter<const DRY: bool>(
    snap: &Snapshot,
    conns: &mut ConnTable,
    now: u64,
    port: PortId,
    policy: &SgPolicy,
    dir: Direction,
    data: &[u8],
    beyond: usize,
    meta: &Meta,
    burst: &mut Burst<'_>,
) -> Result<(), DropReason> {
    let l3 = data.get(usize::from(meta.l3_offset)..).unwrap_or(&[]);
    match EtherType(meta.ethertype) {
        EtherType::IPV4 => {}
        EtherType::ARP => return Ok(()),
        EtherType::IPV6 => {
            return filter_ipv6::<DRY>(snap, burst.conns6, now, port, policy, dir, l3, beyond)
        }
        _ => return Err(DropReason::SgNoRule),
    }
    let zone = port_zone(port);
    let flow = ipv4_flow::<DRY>(l3, beyond, zone)?;
    if ipv4_implicit(&flow, dir) {
        return Ok(());
    }
    filter_flow::<DRY, _>(snap, conns, now, port, policy, dir, &flow, &mut burst.last)
}

/// [`filter`] for the IPv6 packet `l3`. Out of line: inlined, its parsing and its own
/// instance of the decision made the IPv4 path spill registers (measured:
/// `sg_established_10_rules` 1134.5 -> 1148.7 instructions per packet).
// `filter`'s state, passed on as it has it.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn filter_ipv6<const DRY: bool>(
    snap: &Snapshot,
    conns6: &mut ConnTable<FlowKey6>,
    now: u64,
    port: PortId,
    policy: &SgPolicy,
    dir: Direction,
    l3: &[u8],
    beyond: usize,
) -> Result<(), DropReason> {
    let flow = ipv6_flow(l3, beyond, port_zone(port))?;
    if ipv6_implicit(&flow, dir) {
        return Ok(());
    }
    if dir == Direction::Ingress && is_router_advertisement(&flow) {
        return router_advertisement::<DRY>(snap, conns6, now, port, policy, &flow);
    }
    filter_flow::<DRY, _>(snap, conns6, now, port, policy, dir, &flow, &mut None)
}

/// A router advertisement to `port` passes when it comes from one of its network's
/// routers, as Neutron's provider rule has it (ingress ICMPv6 type 134 from the link-local
/// gateway of each of the network's IPv6 subnets); from anywhere else only when a rule of
/// the port's groups allows it (`sg_ra_not_from_router` when none does): a rogue router
/// on an uplink or a VM with port security off cannot become the VMs' default router.
#[cold]
#[inline(never)]
fn router_advertisement<const DRY: bool>(
    snap: &Snapshot,
    conns6: &mut ConnTable<FlowKey6>,
    now: u64,
    port: PortId,
    policy: &SgPolicy,
    flow: &Flow<FlowKey6>,
) -> Result<(), DropReason> {
    if snap.security_groups().ra_from_router(port, flow.key.src) {
        return Ok(());
    }
    let dir = Direction::Ingress;
    match filter_flow::<DRY, _>(snap, conns6, now, port, policy, dir, flow, &mut None) {
        Err(DropReason::SgNoRule) => Err(DropReason::SgRaNotFromRouter),
        other => other,
    }
}

/// Whether the IPv6 packet is a (first or only fragment of a) router advertisement.
#[inline]
fn is_router_advertisement(flow: &Flow<FlowKey6>) -> bool {
    flow.key.proto == ICMPV6_PROTO
        && (flow.port_key >> 8) as u8 == ICMPV6_ROUTER_ADVERTISEMENT
        && !matches!(flow.fragment, Some((_, true)))
}

/// Decides a parsed packet of either family, its fragments included.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn filter_flow<const DRY: bool, K: SgKey>(
    snap: &Snapshot,
    conns: &mut ConnTable<K>,
    now: u64,
    port: PortId,
    policy: &SgPolicy,
    dir: Direction,
    flow: &Flow<K>,
    last: &mut LastHit<K>,
) -> Result<(), DropReason> {
    match flow.fragment {
        None => decide::<DRY, K>(snap, conns, now, port, policy, dir, flow, last),
        // Later fragments carry no ports: they pass when their first fragment did.
        Some((ident, true)) => {
            match policy.stateful && conns.lookup(&flow.key.fragment_key(ident), now).is_some() {
                true => Ok(()),
                false => Err(DropReason::SgFragment),
            }
        }
        Some((ident, false)) => {
            decide::<DRY, K>(snap, conns, now, port, policy, dir, flow, last)?;
            if policy.stateful && !DRY {
                let key = flow.key.fragment_key(ident);
                // A full table only costs the later fragments.
                let _ = conns.insert(key, key.reverse(), u32::from(port.0), 0, now);
            }
            Ok(())
        }
    }
}

/// Decides a packet that is not a later fragment: the established path (a connection of
/// the port's zone, usually the previous packet's) first, then [`decide_new`]. Both are
/// inlined into the stage and read the flow in place (a copy of it cost the established
/// path ~30 instructions per packet, the IPv6 one ~115).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn decide<const DRY: bool, K: SgKey>(
    snap: &Snapshot,
    conns: &mut ConnTable<K>,
    now: u64,
    port: PortId,
    policy: &SgPolicy,
    dir: Direction,
    flow: &Flow<K>,
    last: &mut LastHit<K>,
) -> Result<(), DropReason> {
    if policy.stateful {
        let hit = match *last {
            // The connection of the previous packet of the burst, already checked against
            // this policy: no lookup.
            Some((key, id, cdir)) if key == flow.key => Some((id, cdir)),
            _ => conns.lookup(&flow.key, now),
        };
        if let Some((id, cdir)) = hit {
            let t = conns.session(id).tag();
            if (t >> 17) as u16 != policy.version {
                *last = None;
                let tables = snap.security_groups();
                if DRY {
                    revalidated(conns, tables, policy, id, t)?;
                } else {
                    revalidate(conns, tables, policy, id, t)?;
                }
            }
            *last = Some((flow.key, id, cdir));
            if DRY {
                if flow.key.proto() == TCP && !conns.tcp_window_check(id, cdir, &flow.tcp) {
                    return Err(DropReason::SgInvalid);
                }
                return Ok(());
            }
            if flow.key.proto() == TCP && !conns.tcp_window(id, cdir, &flow.tcp) {
                return Err(DropReason::SgInvalid);
            }
            conns.touch(id, cdir, flow.flags, u32::from(flow.len), now);
            return Ok(());
        }
    }
    decide_new::<DRY, K>(snap, conns, now, port, policy, dir, flow)
}

/// Decides a packet of no known connection: by the rules (stateless groups, or a new
/// connection, inserted), or as an ICMP error related to a connection.
#[inline(always)]
fn decide_new<const DRY: bool, K: SgKey>(
    snap: &Snapshot,
    conns: &mut ConnTable<K>,
    now: u64,
    port: PortId,
    policy: &SgPolicy,
    dir: Direction,
    flow: &Flow<K>,
) -> Result<(), DropReason> {
    let tables = snap.security_groups();
    if !policy.stateful {
        return match K::rules(policy, dir).lookup(
            K::sets(tables),
            flow.key.remote(dir),
            flow.key.proto(),
            flow.port_key,
        ) {
            Some(rule) => {
                if !DRY {
                    tables.count_hit(rule);
                }
                Ok(())
            }
            None => Err(DropReason::SgNoRule),
        };
    }
    if let Some(inner) = flow.related {
        if conns.lookup(&inner, now).is_some() {
            return Ok(());
        }
    }
    let Some(rule) = K::rules(policy, dir).lookup(
        K::sets(tables),
        flow.key.remote(dir),
        flow.key.proto(),
        flow.port_key,
    ) else {
        return Err(DropReason::SgNoRule);
    };
    let owner = u32::from(port.0);
    if DRY {
        return match conns.check_insert(&flow.key, &flow.key.reverse(), owner, now) {
            Err(InsertError::QuotaExceeded | InsertError::TableFull) => Err(K::CONN_LIMIT),
            Ok(()) | Err(InsertError::Exists) => Ok(()),
        };
    }
    tables.count_hit(rule);
    match conns.insert(
        flow.key,
        flow.key.reverse(),
        owner,
        tag(policy.version, dir, flow.port_key),
        now,
    ) {
        Ok(id) => {
            if flow.key.proto() == TCP {
                conns.tcp_window(id, Dir::Original, &flow.tcp);
            }
            conns.touch(id, Dir::Original, flow.flags, u32::from(flow.len), now);
            Ok(())
        }
        Err(InsertError::QuotaExceeded | InsertError::TableFull) => Err(K::CONN_LIMIT),
        // A live connection holds the reverse key (a flow to itself): let it pass untracked.
        Err(InsertError::Exists) => Ok(()),
    }
}

/// Re-evaluates connection `id` (tag `t`) against the port's current rules: cut when no
/// rule allows it any more, else carried on under the new version.
#[cold]
#[inline(never)]
fn revalidate<K: SgKey>(
    conns: &mut ConnTable<K>,
    tables: &SgTables,
    policy: &SgPolicy,
    id: crate::conntrack::SessionId,
    t: u32,
) -> Result<(), DropReason> {
    match revalidated(conns, tables, policy, id, t) {
        Ok(()) => {
            conns.set_tag(id, tag(policy.version, tagged_direction(t), t as u16));
            Ok(())
        }
        Err(reason) => {
            conns.remove(id);
            Err(reason)
        }
    }
}

/// The direction a connection's tag `t` says it was admitted in.
fn tagged_direction(t: u32) -> Direction {
    if t & (1 << 16) != 0 {
        Direction::Ingress
    } else {
        Direction::Egress
    }
}

/// What [`revalidate`] decides, changing nothing.
#[cold]
#[inline(never)]
fn revalidated<K: SgKey>(
    conns: &ConnTable<K>,
    tables: &SgTables,
    policy: &SgPolicy,
    id: crate::conntrack::SessionId,
    t: u32,
) -> Result<(), DropReason> {
    let dir = tagged_direction(t);
    let original = *conns.session(id).key(Dir::Original);
    let allowed = K::rules(policy, dir)
        .lookup(
            K::sets(tables),
            original.remote(dir),
            original.proto(),
            t as u16,
        )
        .is_some();
    if allowed {
        Ok(())
    } else {
        Err(DropReason::SgConnectionCut)
    }
}

/// Neutron's implicit IPv4 allows: DHCP client requests out, DHCP replies in. The replies
/// may come from any server, as Neutron's `_add_ingress_dhcp_rule` has it (a VM with
/// port security off may serve a network without Neutron's DHCP); a VM with port
/// security cannot send them (port security drops its DHCP server messages).
#[inline]
fn ipv4_implicit(flow: &Flow<FlowKey>, dir: Direction) -> bool {
    if flow.key.proto != UDP {
        return false;
    }
    match dir {
        Direction::Egress => flow.key.sport == DHCP_CLIENT && flow.key.dport == DHCP_SERVER,
        Direction::Ingress => flow.key.sport == DHCP_SERVER && flow.key.dport == DHCP_CLIENT,
    }
}

/// The upper-layer protocol of the IPv6 packet whose payload is `payload` (first next
/// header `next`), the offset of its header in the payload, and the packet's fragment
/// (identification, whether it is a later one). The walk over hop-by-hop, routing,
/// fragment and destination-options headers is bounded by
/// [`crate::wire::ipv6::MAX_EXTENSION_HEADERS`]; a header that does not fit, or a longer
/// chain, is malformed.
/// An IPv6 packet's upper layer: protocol, header offset in the payload, fragment.
type Upper6 = (u8, usize, Option<(u32, bool)>);

#[inline]
fn ipv6_upper(payload: &[u8], mut next: u8) -> Result<Upper6, DropReason> {
    let mut at = 0usize;
    let mut fragment = None;
    for _ in 0..crate::wire::ipv6::MAX_EXTENSION_HEADERS {
        match next {
            // Hop-by-hop, routing, destination options: length in 8-octet units, not
            // counting the first 8.
            0 | 43 | 60 => {
                let h = payload.get(at..at + 2).ok_or(DropReason::BadIpv6Header)?;
                next = h[0];
                at += (usize::from(h[1]) + 1) * 8;
                if at > payload.len() {
                    return Err(DropReason::BadIpv6Header);
                }
            }
            44 => {
                let h = payload.get(at..at + 8).ok_or(DropReason::BadIpv6Header)?;
                next = h[0];
                at += 8;
                let offset = u16::from_be_bytes([h[2], h[3]]) >> 3;
                let more = h[3] & 1 != 0;
                let ident = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                if offset != 0 {
                    return Ok((next, at, Some((ident, true))));
                }
                // An atomic fragment (offset 0, no more) is a whole datagram.
                if more {
                    fragment = Some((ident, false));
                }
            }
            _ => return Ok((next, at, fragment)),
        }
    }
    Err(DropReason::BadIpv6Header)
}

/// Reads the flow of the IPv6 packet `ip` in `zone`.
#[inline]
fn ipv6_flow(ip: &[u8], beyond: usize, zone: u32) -> Result<Flow<FlowKey6>, DropReason> {
    let p = Ipv6Packet::new_checked_within(ip, beyond).map_err(|_| DropReason::BadIpv6Header)?;
    let (proto, at, fragment) = ipv6_upper(p.payload(), p.next_header().0)?;
    let mut flow = Flow {
        key: FlowKey6 {
            zone,
            proto,
            src: u128::from(p.src_addr()),
            dst: u128::from(p.dst_addr()),
            sport: 0,
            dport: 0,
        },
        flags: TcpFlags(0),
        port_key: 0,
        related: None,
        len: p.payload_len().saturating_add(40),
        tcp: TcpSegment::default(),
        fragment,
    };
    if matches!(fragment, Some((_, true))) {
        return Ok(flow);
    }
    let l4 = p.payload().get(at..).unwrap_or(&[]);
    let word = |at: usize| l4.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    match proto {
        TCP | UDP | SCTP | DCCP | UDPLITE => {
            let (Some(s), Some(d)) = (word(0), word(2)) else {
                return Err(DropReason::SgTruncated);
            };
            flow.key.sport = s;
            flow.key.dport = d;
            flow.port_key = d;
            if proto == TCP {
                let l4_len = usize::from(p.payload_len()).saturating_sub(at);
                flow.tcp = tcp_segment(l4, l4_len).ok_or(DropReason::SgTruncated)?;
                flow.flags = flow.tcp.flags;
            }
        }
        ICMPV6_PROTO => {
            let (Some(&ty), Some(&code)) = (l4.first(), l4.get(1)) else {
                return Err(DropReason::SgTruncated);
            };
            flow.port_key = u16::from(ty) << 8 | u16::from(code);
            if let Some(request) = icmpv6_echo(ty) {
                let id = word(4).ok_or(DropReason::SgTruncated)?;
                (flow.key.sport, flow.key.dport) = icmp_query_ports(id, request);
            } else if matches!(ty, 1..=4) {
                // Errors: destination unreachable, packet too big, time exceeded,
                // parameter problem.
                flow.related = inner_flow6(l4.get(8..).unwrap_or(&[]), zone);
            }
        }
        _ => {}
    }
    Ok(flow)
}

/// Whether ICMPv6 type `ty` is an echo request (`Some(true)`) or reply (`Some(false)`),
/// the only ICMPv6 queries tracked as connections.
#[inline]
fn icmpv6_echo(ty: u8) -> Option<bool> {
    match ty {
        128 => Some(true),
        129 => Some(false),
        _ => None,
    }
}

/// The flow of the packet quoted in an ICMPv6 error (as much of it as fits).
fn inner_flow6(quoted: &[u8], zone: u32) -> Option<FlowKey6> {
    let h = quoted.get(..40)?;
    if h[0] >> 4 != 6 {
        return None;
    }
    let addr = |at: usize| {
        let mut a = [0u8; 16];
        a.copy_from_slice(&h[at..at + 16]);
        u128::from_be_bytes(a)
    };
    // The quote is cut short of the announced payload: walk what is there.
    let (proto, at, fragment) = ipv6_upper(&quoted[40..], h[6]).ok()?;
    if matches!(fragment, Some((_, true))) {
        return None;
    }
    let l4 = quoted[40..].get(at..)?;
    let word = |at: usize| l4.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let (sport, dport) = match proto {
        TCP | UDP | SCTP | DCCP | UDPLITE => (word(0)?, word(2)?),
        ICMPV6_PROTO => match icmpv6_echo(*l4.first()?) {
            Some(request) => icmp_query_ports(word(4)?, request),
            None => (0, 0),
        },
        _ => (0, 0),
    };
    Some(FlowKey6 {
        zone,
        proto,
        src: addr(8),
        dst: addr(24),
        sport,
        dport,
    })
}

/// Neutron's implicit IPv6 allows: neighbour discovery and MLD both ways (router
/// advertisements are decided apart: [`router_advertisement`]), DHCPv6 client traffic out
/// and server replies in. Nothing of it is tracked.
#[inline]
fn ipv6_implicit(flow: &Flow<FlowKey6>, dir: Direction) -> bool {
    if matches!(flow.fragment, Some((_, true))) {
        return false;
    }
    match flow.key.proto {
        ICMPV6_PROTO => {
            let t = (flow.port_key >> 8) as u8;
            ICMPV6_IMPLICIT.contains(&t)
        }
        UDP => match dir {
            Direction::Egress => (flow.key.sport, flow.key.dport) == (DHCPV6_CLIENT, DHCPV6_SERVER),
            Direction::Ingress => {
                (flow.key.sport, flow.key.dport) == (DHCPV6_SERVER, DHCPV6_CLIENT)
            }
        },
        _ => false,
    }
}

/// Filters a packet about to be sent to `out` (a flooded replica, a frame the router
/// sends after the burst): `Err` with the reason when `out`'s groups refuse it.
// The output stage's per-frame state, as `filter` takes it.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn filter_ingress(
    snap: &Snapshot,
    conns: &mut ConnTable,
    conns6: &mut ConnTable<FlowKey6>,
    now: u64,
    out: PortId,
    data: &[u8],
    beyond: usize,
    meta: &Meta,
    dry_run: bool,
) -> Result<(), DropReason> {
    let Some(policy) = snap.security_groups().policy(out) else {
        return Ok(());
    };
    let dir = Direction::Ingress;
    let mut burst = Burst::new(conns6);
    if dry_run {
        return filter::<true>(
            snap, conns, now, out, policy, dir, data, beyond, meta, &mut burst,
        );
    }
    filter::<false>(
        snap, conns, now, out, policy, dir, data, beyond, meta, &mut burst,
    )
}

/// The egress stage: traffic from a VM port with security groups, after port security.
#[derive(Clone, Copy, Debug, Default)]
pub struct SgEgress;

impl BurstStage for SgEgress {
    #[inline(always)]
    fn id(&self) -> Stage {
        Stage::SgEgress
    }

    #[inline(always)]
    fn wants(&self) -> Pending {
        Pending::L2
    }

    fn process(&mut self, cx: &mut BurstCtx<'_>, pkts: &mut [Packet]) -> Outcome {
        let snap = cx.snap;
        let in_port = cx.in_port;
        let Some(policy) = snap.security_groups().policy(in_port) else {
            return Outcome {
                packets: 0,
                produced: Pending::L2,
            };
        };
        filter_burst(cx, pkts, Direction::Egress, Pending::L2, |next| {
            (next == Next::L2).then_some((in_port, policy))
        })
    }
}

/// Runs [`filter`] in direction `dir` over the packets of a burst for which `pick` (given
/// a packet's next step) names the VM port and policy to check; a refused packet is
/// dropped under the stage of `dir`. The stage produced `pending` (and, if it dropped any,
/// [`Pending::DONE`]).
#[inline(always)]
fn filter_burst<'s>(
    cx: &mut BurstCtx<'s>,
    pkts: &mut [Packet],
    dir: Direction,
    pending: Pending,
    pick: impl Fn(Next) -> Option<(PortId, &'s SgPolicy)>,
) -> Outcome {
    if cx.dry_run {
        return filter_burst_dry(cx, pkts, dir, pending, pick);
    }
    filter_burst_as::<false>(cx, pkts, dir, pending, pick)
}

/// [`filter_burst`] for an explained packet, kept out of the forwarding path's code.
#[cold]
#[inline(never)]
fn filter_burst_dry<'s>(
    cx: &mut BurstCtx<'s>,
    pkts: &mut [Packet],
    dir: Direction,
    pending: Pending,
    pick: impl Fn(Next) -> Option<(PortId, &'s SgPolicy)>,
) -> Outcome {
    filter_burst_as::<true>(cx, pkts, dir, pending, pick)
}

/// [`filter_burst`], for explained packets with `DRY`.
#[inline(always)]
fn filter_burst_as<'s, const DRY: bool>(
    cx: &mut BurstCtx<'s>,
    pkts: &mut [Packet],
    dir: Direction,
    pending: Pending,
    pick: impl Fn(Next) -> Option<(PortId, &'s SgPolicy)>,
) -> Outcome {
    let stage = match dir {
        Direction::Egress => Stage::SgEgress,
        Direction::Ingress => Stage::SgIngress,
    };
    let snap = cx.snap;
    let now = u64::from(cx.now_secs);
    let frames = cx.pool.reader();
    let mut checked = 0;
    let mut refused = false;
    let mut burst = Burst::new(&mut *cx.conns6);
    for pkt in pkts.iter_mut() {
        let Some((port, policy)) = pick(pkt.meta.next) else {
            continue;
        };
        checked += 1;
        let data = frames.data(pkt);
        let beyond = cx.pool.tail_len(pkt);
        if let Err(reason) = filter::<DRY>(
            snap, cx.conns, now, port, policy, dir, data, beyond, &pkt.meta, &mut burst,
        ) {
            pkt.meta.next = Next::Drop(reason, stage);
            refused = true;
        }
    }
    Outcome {
        packets: checked,
        produced: if refused {
            pending | Pending::DONE
        } else {
            pending
        },
    }
}

/// The ingress stage: unicast traffic to VM ports with security groups, after the
/// forwarding decision (switched or routed). Flooded replicas are filtered per replica
/// in the output stage ([`filter_ingress`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct SgIngress;

impl BurstStage for SgIngress {
    #[inline(always)]
    fn id(&self) -> Stage {
        Stage::SgIngress
    }

    #[inline(always)]
    fn wants(&self) -> Pending {
        Pending::SEND
    }

    fn process(&mut self, cx: &mut BurstCtx<'_>, pkts: &mut [Packet]) -> Outcome {
        let tables = cx.snap.security_groups();
        filter_burst(
            cx,
            pkts,
            Direction::Ingress,
            Pending::SEND,
            |next| match next {
                Next::Output(out) => tables.policy(out).map(|policy| (out, policy)),
                _ => None,
            },
        )
    }
}
