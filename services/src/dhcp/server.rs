//! The DHCPv4 server's state machine (RFC 2131 §4.3), one message at a time.
//!
//! The caller (the slow path) hands [`DhcpServer::handle`] the UDP payload of a message
//! that arrived on port 67 and the current time in seconds; it gets back the reply's
//! bytes and the L2/L3 destination to send them to, `Ok(None)` when the protocol wants
//! silence, or the [`Discard`] reason. Nothing here does I/O or reads a clock.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::net::Ipv4Addr;

use pollux_dataplane::port::PortId;
use pollux_dataplane::ratelimit::{BucketConfig, KeyedLimiter, TokenBucket};

use super::leases::{Lease, LeaseState, LeaseTable};
use super::Discard;
use crate::addr::Ipv4Cidr;
use pollux_dataplane::wire::dhcp::{
    self as wire, opt, Message, MessageType, ReplyBuilder, ReplyHeader, BOOTREQUEST,
    MAX_MESSAGE_LEN,
};

/// Neutron's default `dhcp_lease_duration`.
pub const DEFAULT_LEASE_TIME: u32 = 86_400;
/// How long an offer holds its address: long enough for a slow client's REQUEST, short
/// enough that abandoned offers of dynamic addresses come back soon.
pub const OFFER_HOLD_SECS: u64 = 120;
/// How long a declined address stays out of dynamic allocation (dnsmasq uses 10 minutes).
pub const DECLINE_HOLD_SECS: u64 = 600;
/// Client port of replies (RFC 2131 §4.1).
pub const CLIENT_PORT: u16 = 68;
/// Per-client budget: a client sends a handful of messages per exchange, with retries.
pub const DEFAULT_PER_CLIENT: BucketConfig = BucketConfig {
    rate_per_sec: 5,
    burst: 20,
};
/// Budget of the whole server, for floods that spoof many hardware addresses.
pub const DEFAULT_GLOBAL: BucketConfig = BucketConfig {
    rate_per_sec: 500,
    burst: 200,
};
const LIMITER_BUCKETS: usize = 256;
/// Default of [`DhcpConfig::leases_per_port`].
pub const DEFAULT_LEASES_PER_PORT: u32 = 16;
/// Largest dynamic range scanned for a free address, so a /8 cannot make one DISCOVER
/// loop over 16 million addresses.
const MAX_SCAN: u32 = 65_536;
/// Codes whose values the protocol itself sets; a host's extra options cannot override
/// them.
const PROTOCOL_CODES: [u8; 12] = [
    opt::PAD,
    opt::END,
    opt::REQUESTED_IP,
    opt::LEASE_TIME,
    opt::OVERLOAD,
    opt::MESSAGE_TYPE,
    opt::SERVER_ID,
    opt::PARAMETER_REQUEST_LIST,
    opt::MAX_MESSAGE_SIZE,
    opt::RENEWAL_TIME,
    opt::REBINDING_TIME,
    opt::CLIENT_ID,
];
/// Options offered, in this order, to a client that sends no parameter request list.
const DEFAULT_OPTIONAL: [u8; 6] = [
    opt::DNS_SERVERS,
    opt::HOSTNAME,
    opt::DOMAIN_NAME,
    opt::INTERFACE_MTU,
    opt::BROADCAST_ADDRESS,
    opt::CLASSLESS_ROUTES,
];

/// A static route handed out in option 121.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostRoute {
    pub destination: Ipv4Cidr,
    pub nexthop: Ipv4Addr,
}

/// A Neutron `extra_dhcp_opts` entry: an option code and its raw value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtraOption {
    pub code: u8,
    pub value: Vec<u8>,
}

impl ExtraOption {
    pub fn raw(code: u8, value: impl Into<Vec<u8>>) -> Self {
        ExtraOption {
            code,
            value: value.into(),
        }
    }

    /// A text value (bootfile name, TFTP server name), sent without a trailing NUL as
    /// RFC 2132 asks.
    pub fn text(code: u8, value: &str) -> Self {
        Self::raw(code, value.as_bytes())
    }
}

/// One subnet the server serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubnetConfig {
    pub cidr: Ipv4Cidr,
    /// The router of the subnet (option 3 and the default route of option 121).
    pub gateway: Option<Ipv4Addr>,
    /// The server identifier (option 54) and source address of replies: the subnet's
    /// DHCP port IP.
    pub server_ip: Ipv4Addr,
    /// Source MAC of replies.
    pub server_mac: [u8; 6],
    pub dns_servers: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub mtu: Option<u16>,
    /// Seconds; `u32::MAX` is infinite (no T1/T2 then).
    pub lease_time: u32,
    pub host_routes: Vec<HostRoute>,
    /// Whether MACs without a host entry get an address from the rest of the subnet.
    /// Off by default: Neutron allocates every port's address itself.
    pub serve_unknown: bool,
    /// Inclusive ranges unknown MACs get addresses from (Neutron's `allocation_pools`),
    /// in order; empty: the whole subnet.
    pub pools: Vec<(Ipv4Addr, Ipv4Addr)>,
}

impl SubnetConfig {
    /// A subnet with no gateway, DNS, domain or routes, the default lease time, serving
    /// only known MACs.
    pub fn new(cidr: Ipv4Cidr, server_ip: Ipv4Addr, server_mac: [u8; 6]) -> Self {
        SubnetConfig {
            cidr,
            gateway: None,
            server_ip,
            server_mac,
            dns_servers: Vec::new(),
            domain: None,
            mtu: None,
            lease_time: DEFAULT_LEASE_TIME,
            host_routes: Vec::new(),
            serve_unknown: false,
            pools: Vec::new(),
        }
    }
}

/// A port: its MAC, the fixed IP Neutron gave it, and what else DHCP tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostConfig {
    pub mac: [u8; 6],
    /// The data-plane port the host is plugged into here: its messages are answered only
    /// when they come in on it, so that no VM can ask, renew, release or decline in
    /// another port's name by putting that port's MAC in `chaddr`. `None`: the port is
    /// not on this host (another host's server answers it), so nobody here is.
    pub port: Option<PortId>,
    pub ip: Ipv4Addr,
    pub hostname: Option<String>,
    pub extra_options: Vec<ExtraOption>,
}

/// Everything one server (one network's broadcast domain) serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhcpConfig {
    pub subnets: Vec<SubnetConfig>,
    /// A host is served from the subnet that contains its IP; of two entries for one MAC
    /// the first wins.
    pub hosts: Vec<HostConfig>,
    pub per_client_limit: BucketConfig,
    pub global_limit: BucketConfig,
    /// Seed of the per-client limiter's hash; `None` picks one at random so a flooder
    /// cannot choose hardware addresses that share a victim's bucket.
    pub limiter_seed: Option<u32>,
    /// Most dynamic leases (offered or bound) the clients behind one port may hold.
    pub leases_per_port: u32,
}

impl Default for DhcpConfig {
    fn default() -> Self {
        DhcpConfig {
            subnets: Vec::new(),
            hosts: Vec::new(),
            per_client_limit: DEFAULT_PER_CLIENT,
            global_limit: DEFAULT_GLOBAL,
            limiter_seed: None,
            leases_per_port: DEFAULT_LEASES_PER_PORT,
        }
    }
}

/// A reply and where it goes: the caller wraps `bytes` in UDP (67 → `dst_port`), IPv4
/// (`src_ip` → `dst_ip`) and Ethernet (`src_mac` → `dst_mac`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub bytes: Vec<u8>,
    pub message_type: MessageType,
    pub src_ip: Ipv4Addr,
    pub src_mac: [u8; 6],
    pub dst_ip: Ipv4Addr,
    pub dst_mac: [u8; 6],
    pub dst_port: u16,
    /// Sent to 255.255.255.255 and ff:ff:ff:ff:ff:ff.
    pub broadcast: bool,
}

/// What the server did, for metrics (drops are counted by the caller from [`Discard`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DhcpStats {
    pub offers: u64,
    pub acks: u64,
    pub naks: u64,
    pub informs: u64,
    pub releases: u64,
    pub declines: u64,
    /// REQUESTs that chose another server.
    pub other_server: u64,
}

/// Which address a client gets, from which subnet, and its host entry if it has one.
#[derive(Clone, Copy, Debug)]
struct Binding {
    subnet: usize,
    ip: Ipv4Addr,
    host: Option<usize>,
}

/// The server of one network.
#[derive(Debug)]
pub struct DhcpServer {
    config: DhcpConfig,
    hosts: HashMap<[u8; 6], usize>,
    host_ips: HashSet<Ipv4Addr>,
    leases: LeaseTable,
    per_client: KeyedLimiter<LIMITER_BUCKETS>,
    global: TokenBucket,
    stats: DhcpStats,
}

fn random_seed() -> u32 {
    RandomState::new().hash_one(0x706f_6c6c_7578_u64) as u32
}

fn mac_key(mac: &[u8; 6]) -> u32 {
    // Folding keeps every byte in the key; the limiter hashes it with its seed.
    u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]])
        ^ u32::from(mac[0]) << 24
        ^ u32::from(mac[1]) << 16
}

impl DhcpServer {
    pub fn new(config: DhcpConfig) -> Self {
        Self::with_leases(config, LeaseTable::new())
    }

    /// A server that resumes from restored leases; leases the configuration no longer
    /// backs are dropped.
    pub fn with_leases(config: DhcpConfig, leases: LeaseTable) -> Self {
        let seed = config.limiter_seed.unwrap_or_else(random_seed);
        let mut s = DhcpServer {
            per_client: KeyedLimiter::new(config.per_client_limit, seed),
            global: TokenBucket::new(config.global_limit),
            config: DhcpConfig::default(),
            hosts: HashMap::new(),
            host_ips: HashSet::new(),
            leases,
            stats: DhcpStats::default(),
        };
        s.install(config);
        s
    }

    /// Swaps in a new configuration, effective from the next message: a host whose IP
    /// changed loses its lease (a RENEWING client gets NAK and starts over), a removed
    /// host's lease ends.
    pub fn reconfigure(&mut self, config: DhcpConfig) {
        // Every change of the desired state reconfigures every network's server; most
        // are unchanged, and reinstalling the same configuration keeps the same leases
        // (the server only hands out what it allows), so there is nothing to do.
        if config == self.config {
            return;
        }
        if config.per_client_limit != self.config.per_client_limit
            || config.limiter_seed != self.config.limiter_seed
        {
            let seed = config.limiter_seed.unwrap_or_else(random_seed);
            self.per_client = KeyedLimiter::new(config.per_client_limit, seed);
        }
        if config.global_limit != self.config.global_limit {
            self.global = TokenBucket::new(config.global_limit);
        }
        self.install(config);
    }

    fn install(&mut self, config: DhcpConfig) {
        let mut hosts = HashMap::new();
        for (i, h) in config.hosts.iter().enumerate() {
            hosts.entry(h.mac).or_insert(i);
        }
        self.host_ips = config.hosts.iter().map(|h| h.ip).collect();
        self.hosts = hosts;
        self.config = config;
        let (cfg, hosts, host_ips) = (&self.config, &self.hosts, &self.host_ips);
        self.leases.retain(|l| match hosts.get(&l.mac) {
            Some(&h) => cfg.hosts.get(h).is_some_and(|h| h.ip == l.ip),
            None => {
                !host_ips.contains(&l.ip)
                    && cfg
                        .subnets
                        .iter()
                        .any(|s| s.serve_unknown && s.cidr.contains(l.ip))
            }
        });
    }

    pub fn config(&self) -> &DhcpConfig {
        &self.config
    }

    pub fn leases(&self) -> &LeaseTable {
        &self.leases
    }

    /// For expiry and persistence by the caller.
    pub fn leases_mut(&mut self) -> &mut LeaseTable {
        &mut self.leases
    }

    pub fn stats(&self) -> DhcpStats {
        self.stats
    }

    /// Handles one message from a client (the UDP payload) that came in on data-plane
    /// port `port`, at `now` (seconds).
    pub fn handle(&mut self, msg: &[u8], now: u64, port: PortId) -> Result<Option<Reply>, Discard> {
        let m = Message::parse(msg)?;
        if m.op != BOOTREQUEST {
            return Err(Discard::NotBootRequest);
        }
        let mac = m.chaddr;
        if mac[0] & 1 != 0 || mac == [0; 6] {
            return Err(Discard::BadClientMac);
        }
        if m.giaddr != Ipv4Addr::UNSPECIFIED {
            return Err(Discard::Relayed);
        }
        // Before the limiter: a message in another port's name must not spend that
        // client's budget either.
        self.check_client_port(&mac, port, now)?;
        // chaddr is the client's claim, so the caller should also limit per port; keyed
        // here it still keeps one honest-but-looping client from starving the rest.
        let now_ns = now.saturating_mul(1_000_000_000);
        if !self.per_client.allow(mac_key(&mac), now_ns) || !self.global.allow(now_ns) {
            return Err(Discard::RateLimited);
        }
        match m.message_type {
            MessageType::Discover => self.discover(&m, now, port).map(Some),
            MessageType::Request => self.request(&m, now, port),
            MessageType::Decline => self.decline(&m, now),
            MessageType::Release => self.release(&m),
            MessageType::Inform => self.inform(&m).map(Some),
            MessageType::Offer | MessageType::Ack | MessageType::Nak => {
                Err(Discard::UnexpectedMessageType)
            }
        }
    }

    /// Whether a message with client hardware address `mac` may come in on `port`: a
    /// port's MAC only on that port, a dynamic lease's client only on the port it first
    /// came in on; anyone else is a new client of `port`.
    fn check_client_port(&self, mac: &[u8; 6], port: PortId, now: u64) -> Result<(), Discard> {
        if let Some(&h) = self.hosts.get(mac) {
            return match self.config.hosts.get(h).and_then(|h| h.port) {
                Some(p) if p == port => Ok(()),
                _ => Err(Discard::ForeignClient),
            };
        }
        match self.leases.get_valid(mac, now).and_then(|l| l.port) {
            Some(p) if p != port => Err(Discard::ForeignClient),
            _ => Ok(()),
        }
    }

    fn is_ours(&self, server_id: Ipv4Addr) -> bool {
        self.config.subnets.iter().any(|s| s.server_ip == server_id)
    }

    fn subnet_of(&self, ip: Ipv4Addr) -> Option<usize> {
        self.config.subnets.iter().position(|s| s.cidr.contains(ip))
    }

    /// The address `mac` has: its host entry's, or a live dynamic lease.
    fn resolve(&self, mac: &[u8; 6], now: u64) -> Result<Option<Binding>, Discard> {
        if let Some(&h) = self.hosts.get(mac) {
            let ip = self.config.hosts.get(h).ok_or(Discard::NoSubnet)?.ip;
            let subnet = self.subnet_of(ip).ok_or(Discard::NoSubnet)?;
            return Ok(Some(Binding {
                subnet,
                ip,
                host: Some(h),
            }));
        }
        let Some(l) = self.leases.get_valid(mac, now) else {
            return Ok(None);
        };
        Ok(self
            .config
            .subnets
            .iter()
            .position(|s| s.serve_unknown && s.cidr.contains(l.ip))
            .map(|subnet| Binding {
                subnet,
                ip: l.ip,
                host: None,
            }))
    }

    fn is_free(
        &self,
        s: &SubnetConfig,
        ip: Ipv4Addr,
        leased: &HashSet<Ipv4Addr>,
        now: u64,
    ) -> bool {
        let has_bcast = s.cidr.prefix < 31;
        let in_pool = s.pools.is_empty()
            || s.pools
                .iter()
                .any(|&(first, last)| (first..=last).contains(&ip));
        s.cidr.contains(ip)
            && in_pool
            && !(has_bcast && (ip == s.cidr.addr || ip == s.cidr.broadcast()))
            && ip != s.server_ip
            && Some(ip) != s.gateway
            && !self.host_ips.contains(&ip)
            && !leased.contains(&ip)
            && !self.leases.is_declined(ip, now)
    }

    /// A free address for an unknown MAC that came in on `port`: the one it asks for if
    /// free, else the lowest; refused when the port's clients hold
    /// [`DhcpConfig::leases_per_port`] live dynamic leases already.
    fn allocate(
        &self,
        mac: &[u8; 6],
        wanted: Option<Ipv4Addr>,
        now: u64,
        port: PortId,
    ) -> Result<Binding, Discard> {
        // One pass over the leases: the addresses taken, and the port's dynamic leases.
        let mut leased = HashSet::new();
        let mut held_by_port = 0usize;
        for l in self.leases.iter() {
            if &l.mac == mac || l.expires <= now {
                continue;
            }
            leased.insert(l.ip);
            if l.port == Some(port) && !self.hosts.contains_key(&l.mac) {
                held_by_port += 1;
            }
        }
        if held_by_port >= self.config.leases_per_port as usize {
            return Err(Discard::PortLeaseLimit);
        }
        let mut any = false;
        for (i, s) in self.config.subnets.iter().enumerate() {
            if !s.serve_unknown {
                continue;
            }
            any = true;
            if let Some(ip) = wanted.filter(|&ip| self.is_free(s, ip, &leased, now)) {
                return Ok(Binding {
                    subnet: i,
                    ip,
                    host: None,
                });
            }
            let whole = [(s.cidr.addr, s.cidr.broadcast())];
            let ranges = if s.pools.is_empty() {
                &whole[..]
            } else {
                &s.pools[..]
            };
            let mut budget = MAX_SCAN;
            for &(first, last) in ranges {
                let (first, last) = (u32::from(first), u32::from(last));
                let count = (u64::from(last.saturating_sub(first)) + 1).min(u64::from(budget));
                budget -= count as u32;
                for n in 0..count as u32 {
                    let ip = Ipv4Addr::from(first + n);
                    if self.is_free(s, ip, &leased, now) {
                        return Ok(Binding {
                            subnet: i,
                            ip,
                            host: None,
                        });
                    }
                }
            }
        }
        Err(if any {
            Discard::PoolExhausted
        } else {
            Discard::UnknownClient
        })
    }

    fn lease_hostname(&self, b: &Binding, m: &Message<'_>) -> Option<String> {
        b.host
            .and_then(|h| self.config.hosts.get(h))
            .and_then(|h| h.hostname.clone())
            .or_else(|| {
                m.hostname
                    .map(|n| String::from_utf8_lossy(n).chars().take(63).collect())
            })
    }

    fn discover(&mut self, m: &Message<'_>, now: u64, port: PortId) -> Result<Reply, Discard> {
        let b = match self.resolve(&m.chaddr, now)? {
            Some(b) => b,
            None => self.allocate(&m.chaddr, m.requested_ip, now, port)?,
        };
        let reply = self.reply(m, MessageType::Offer, &b)?;
        // A client that rebooted into DISCOVER keeps its bound lease; otherwise the offer
        // is remembered so a dynamic address is not offered to two clients at once.
        let bound = self
            .leases
            .get_valid(&m.chaddr, now)
            .is_some_and(|l| l.state == LeaseState::Bound && l.ip == b.ip);
        if !bound {
            let hostname = self.lease_hostname(&b, m);
            self.leases.insert(Lease {
                mac: m.chaddr,
                ip: b.ip,
                hostname,
                expires: now.saturating_add(OFFER_HOLD_SECS),
                state: LeaseState::Offered,
                port: Some(port),
            });
        }
        self.stats.offers += 1;
        Ok(reply)
    }

    fn request(
        &mut self,
        m: &Message<'_>,
        now: u64,
        port: PortId,
    ) -> Result<Option<Reply>, Discard> {
        let ciaddr = (m.ciaddr != Ipv4Addr::UNSPECIFIED).then_some(m.ciaddr);
        let (b, wanted) = if let Some(sid) = m.server_id {
            // SELECTING: the client names the server it chose.
            if !self.is_ours(sid) {
                if self
                    .leases
                    .get(&m.chaddr)
                    .is_some_and(|l| l.state == LeaseState::Offered)
                {
                    self.leases.remove(&m.chaddr);
                }
                self.stats.other_server += 1;
                return Ok(None);
            }
            let b = self
                .resolve(&m.chaddr, now)?
                .ok_or(Discard::UnknownClient)?;
            let ok = self.config.subnets.get(b.subnet).map(|s| s.server_ip) == Some(sid);
            (b, m.requested_ip.or(ciaddr).filter(|_| ok))
        } else if let (Some(req), None) = (m.requested_ip, ciaddr) {
            // INIT-REBOOT: a client that remembers its address; silence if we do not
            // know it, as another server may.
            let b = self
                .resolve(&m.chaddr, now)?
                .ok_or(Discard::UnknownClient)?;
            (b, Some(req))
        } else if let Some(ci) = ciaddr {
            // RENEWING (unicast) or REBINDING (broadcast).
            let b = self
                .resolve(&m.chaddr, now)?
                .ok_or(Discard::UnknownClient)?;
            (b, Some(ci))
        } else {
            return Err(Discard::BadRequest);
        };
        if wanted != Some(b.ip) {
            self.stats.naks += 1;
            return self.nak(m, b.subnet).map(Some);
        }
        let reply = self.reply(m, MessageType::Ack, &b)?;
        let lease_time = self
            .config
            .subnets
            .get(b.subnet)
            .map_or(DEFAULT_LEASE_TIME, |s| s.lease_time);
        let hostname = self.lease_hostname(&b, m);
        self.leases.insert(Lease {
            mac: m.chaddr,
            ip: b.ip,
            hostname,
            expires: now.saturating_add(u64::from(lease_time)),
            state: LeaseState::Bound,
            port: Some(port),
        });
        self.stats.acks += 1;
        Ok(Some(reply))
    }

    fn decline(&mut self, m: &Message<'_>, now: u64) -> Result<Option<Reply>, Discard> {
        let ip = m.requested_ip.ok_or(Discard::BadRequest)?;
        if m.server_id.is_some_and(|sid| !self.is_ours(sid)) {
            return Ok(None);
        }
        // Only the address this client was given may be declined by it; otherwise any VM
        // could quarantine its neighbours' addresses.
        let given = self.resolve(&m.chaddr, now)?.map(|b| b.ip);
        if given != Some(ip) {
            return Ok(None);
        }
        self.leases
            .decline(ip, now.saturating_add(DECLINE_HOLD_SECS));
        if self.leases.get(&m.chaddr).is_some_and(|l| l.ip == ip) {
            self.leases.remove(&m.chaddr);
        }
        self.stats.declines += 1;
        Ok(None)
    }

    fn release(&mut self, m: &Message<'_>) -> Result<Option<Reply>, Discard> {
        if m.server_id.is_some_and(|sid| !self.is_ours(sid)) {
            return Ok(None);
        }
        if self.leases.get(&m.chaddr).is_some_and(|l| l.ip == m.ciaddr) {
            self.leases.remove(&m.chaddr);
            self.stats.releases += 1;
        }
        Ok(None)
    }

    fn inform(&mut self, m: &Message<'_>) -> Result<Reply, Discard> {
        if m.ciaddr == Ipv4Addr::UNSPECIFIED {
            return Err(Discard::BadRequest);
        }
        let subnet = self.subnet_of(m.ciaddr).ok_or(Discard::NoSubnet)?;
        let host = self.hosts.get(&m.chaddr).copied();
        let serves = self
            .config
            .subnets
            .get(subnet)
            .is_some_and(|s| s.serve_unknown);
        if host.is_none() && !serves {
            return Err(Discard::UnknownClient);
        }
        let b = Binding {
            subnet,
            ip: Ipv4Addr::UNSPECIFIED,
            host,
        };
        let reply = self.reply(m, MessageType::Ack, &b)?;
        self.stats.informs += 1;
        Ok(reply)
    }

    fn nak(&self, m: &Message<'_>, subnet: usize) -> Result<Reply, Discard> {
        let s = self.config.subnets.get(subnet).ok_or(Discard::NoSubnet)?;
        let mut buf = [0u8; MAX_MESSAGE_LEN];
        let h = ReplyHeader {
            xid: m.xid,
            flags: m.flags,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: m.giaddr,
            chaddr: m.chaddr,
        };
        let mut w = ReplyBuilder::new(&mut buf, m.max_reply_len(), &h)
            .map_err(|_| Discard::ReplyTooLarge)?;
        w.option(opt::MESSAGE_TYPE, &[MessageType::Nak.to_u8()])
            .and_then(|()| w.option(opt::SERVER_ID, &s.server_ip.octets()))
            .map_err(|_| Discard::ReplyTooLarge)?;
        let _ = w.option(opt::MESSAGE, b"address not assigned to this client");
        let len = w.finish();
        // RFC 2131 §4.1: without a relay, a NAK is always broadcast, since the client's
        // idea of its address is what is wrong.
        Ok(Reply {
            bytes: buf.get(..len).unwrap_or_default().to_vec(),
            message_type: MessageType::Nak,
            src_ip: s.server_ip,
            src_mac: s.server_mac,
            dst_ip: Ipv4Addr::BROADCAST,
            dst_mac: [0xff; 6],
            dst_port: CLIENT_PORT,
            broadcast: true,
        })
    }

    /// The value of an option for a client, its host's extra options first.
    fn option_value(&self, code: u8, s: &SubnetConfig, host: Option<usize>) -> Option<Vec<u8>> {
        let host = host.and_then(|h| self.config.hosts.get(h));
        if !PROTOCOL_CODES.contains(&code) {
            if let Some(x) = host.and_then(|h| h.extra_options.iter().find(|x| x.code == code)) {
                return Some(x.value.clone());
            }
        }
        match code {
            opt::SUBNET_MASK => Some(s.cidr.mask().to_be_bytes().to_vec()),
            opt::ROUTER => s.gateway.map(|g| g.octets().to_vec()),
            opt::DNS_SERVERS if !s.dns_servers.is_empty() => {
                Some(s.dns_servers.iter().flat_map(|d| d.octets()).collect())
            }
            opt::HOSTNAME => host
                .and_then(|h| h.hostname.as_ref())
                .filter(|n| !n.is_empty())
                .map(|n| n.as_bytes().to_vec()),
            opt::DOMAIN_NAME => s
                .domain
                .as_ref()
                .filter(|d| !d.is_empty())
                .map(|d| d.as_bytes().to_vec()),
            // RFC 2132 §5.1: 68 is the smallest legal MTU.
            opt::INTERFACE_MTU => s.mtu.filter(|&m| m >= 68).map(|m| m.to_be_bytes().to_vec()),
            opt::BROADCAST_ADDRESS if s.cidr.prefix < 31 => {
                Some(s.cidr.broadcast().octets().to_vec())
            }
            opt::CLASSLESS_ROUTES => classless_routes(s),
            _ => None,
        }
    }

    fn reply(&self, m: &Message<'_>, kind: MessageType, b: &Binding) -> Result<Reply, Discard> {
        let s = self.config.subnets.get(b.subnet).ok_or(Discard::NoSubnet)?;
        let inform = m.message_type == MessageType::Inform;
        let mut buf = [0u8; MAX_MESSAGE_LEN];
        // A configured MTU below the client's stated maximum caps it too, but never below
        // the 576 bytes every client accepts.
        let mut limit = m.max_reply_len();
        if let Some(mtu) = s.mtu {
            let by_mtu = usize::from(mtu).saturating_sub(wire::IP_UDP_HEADERS);
            limit = limit
                .min(by_mtu.max(usize::from(wire::MIN_MAX_MESSAGE_SIZE) - wire::IP_UDP_HEADERS));
        }
        let h = ReplyHeader {
            xid: m.xid,
            flags: m.flags,
            ciaddr: if kind == MessageType::Ack {
                m.ciaddr
            } else {
                Ipv4Addr::UNSPECIFIED
            },
            yiaddr: b.ip,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: m.giaddr,
            chaddr: m.chaddr,
        };
        let mut w = ReplyBuilder::new(&mut buf, limit, &h).map_err(|_| Discard::ReplyTooLarge)?;
        let mut sent: Vec<u8> = Vec::with_capacity(16);
        let mut must = |w: &mut ReplyBuilder<'_>, code: u8, v: &[u8]| {
            sent.push(code);
            w.option(code, v).map_err(|_| Discard::ReplyTooLarge)
        };
        must(&mut w, opt::MESSAGE_TYPE, &[kind.to_u8()])?;
        must(&mut w, opt::SERVER_ID, &s.server_ip.octets())?;
        // RFC 2131 table 3: no lease time in the answer to INFORM, which leases nothing.
        if !inform {
            must(&mut w, opt::LEASE_TIME, &s.lease_time.to_be_bytes())?;
            if s.lease_time != u32::MAX {
                let t1 = (u64::from(s.lease_time) / 2) as u32;
                let t2 = (u64::from(s.lease_time) * 7 / 8) as u32;
                must(&mut w, opt::RENEWAL_TIME, &t1.to_be_bytes())?;
                must(&mut w, opt::REBINDING_TIME, &t2.to_be_bytes())?;
            }
        }
        for code in [opt::SUBNET_MASK, opt::ROUTER] {
            if let Some(v) = self.option_value(code, s, b.host) {
                must(&mut w, code, &v)?;
            }
        }
        // The rest in the client's order, as RFC 2131 §4.3.1 suggests; without a list,
        // everything there is. Options that do not fit are left out rather than the reply.
        let host_extra: Vec<u8> = b
            .host
            .and_then(|h| self.config.hosts.get(h))
            .map(|h| h.extra_options.iter().map(|x| x.code).collect())
            .unwrap_or_default();
        let wanted: Vec<u8> = if m.parameter_request_list.is_empty() {
            DEFAULT_OPTIONAL
                .iter()
                .chain(&host_extra)
                .copied()
                .collect()
        } else {
            m.parameter_request_list.to_vec()
        };
        for code in wanted {
            if sent.contains(&code) || PROTOCOL_CODES.contains(&code) {
                continue;
            }
            sent.push(code);
            if let Some(v) = self.option_value(code, s, b.host) {
                let _ = w.option(code, &v);
            }
        }
        let len = w.finish();
        let bytes = buf.get(..len).unwrap_or_default().to_vec();
        // RFC 2131 §4.1, giaddr being zero: to ciaddr if the client has one, broadcast if
        // it asked, else unicast to the address being handed out at the client's MAC.
        let (dst_ip, dst_mac) = if m.ciaddr != Ipv4Addr::UNSPECIFIED {
            (m.ciaddr, m.chaddr)
        } else if m.broadcast() || b.ip == Ipv4Addr::UNSPECIFIED {
            (Ipv4Addr::BROADCAST, [0xff; 6])
        } else {
            (b.ip, m.chaddr)
        };
        Ok(Reply {
            bytes,
            message_type: kind,
            src_ip: s.server_ip,
            src_mac: s.server_mac,
            dst_ip,
            dst_mac,
            dst_port: CLIENT_PORT,
            broadcast: dst_ip == Ipv4Addr::BROADCAST,
        })
    }
}

/// Option 121: the host routes plus the default route via the gateway, since a client
/// that accepts 121 ignores option 3 (RFC 3442). `None` without host routes: option 3
/// says it all then.
fn classless_routes(s: &SubnetConfig) -> Option<Vec<u8>> {
    if s.host_routes.is_empty() {
        return None;
    }
    let mut v = Vec::with_capacity(9 * (s.host_routes.len() + 1));
    let has_default = s.host_routes.iter().any(|r| r.destination.prefix == 0);
    if let (Some(gw), false) = (s.gateway, has_default) {
        wire::push_classless_route(&mut v, Ipv4Addr::UNSPECIFIED, 0, gw);
    }
    for r in &s.host_routes {
        wire::push_classless_route(&mut v, r.destination.addr, r.destination.prefix, r.nexthop);
    }
    Some(v)
}
