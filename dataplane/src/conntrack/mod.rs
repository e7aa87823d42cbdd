//! The connection table of one worker: tracked flows and NAT sessions.
//!
//! Modelled on VPP's NAT44-ED and Linux conntrack, scaled to one worker that owns its
//! table outright (no locks, no atomics; another worker's flows arrive over a handoff
//! ring, see [`owner_worker`]). All memory is allocated when the table is built; the
//! packet path ([`ConnTable::lookup`], [`ConnTable::touch`], [`ConnTable::insert`],
//! [`ConnTable::alloc_snat`]) allocates nothing and cannot panic on any input.
//!
//! - **Sessions** live in a fixed array; a [`SessionId`] is the slot. Each session has two
//!   keys, the original direction (as the first packet was seen) and the reply direction
//!   (what a reply carries after translation). NAT is the difference between the reply
//!   key and the reversed original key, as in Linux: nothing else is stored, and SNAT,
//!   DNAT or both are the same thing to the table ([`Session::rewrite`]).
//! - **Index**: both keys of every session in one open-addressing table of 8-byte slots
//!   (32 hash bits and `slot << 1 | direction`), at most half full, with backward-shift
//!   deletion, so a miss reads one or two cache lines and no session, and deletions leave
//!   no tombstones. The hash is two folded 64×64→128 multiplies of the key with a seed
//!   that the control plane should pick at random ([`ConnConfig::hash_seed`]) so that
//!   outside hosts cannot aim their flows at one probe run.
//! - **Expiry**: a session's deadline (`expires`) follows its protocol state
//!   ([`Timeouts`]). A lookup treats a session past its deadline as gone, so expiry is
//!   exact to the second whatever the sweep is doing. Memory comes back through a
//!   one-second timer wheel (see `wheel.rs`): [`ConnTable::expire`] examines at most
//!   `budget` sessions per call, so housekeeping never stalls the worker. An insert
//!   whose key is held by an expired, not yet swept, session reclaims it on the spot.
//! - **Bounds**: capacity is fixed; each owner (a VM port, a router) may hold at most
//!   [`ConnConfig::owner_quota`] sessions (default capacity / 8, so at least eight owners
//!   always fit), so one busy or hostile VM cannot take the table from the others.
//!   Refusals are counted by kind in [`ConnStats`].
//! - **SNAT ports** ([`ConnTable::alloc_snat`]) are endpoint-dependent, as in NAT44-ED: a
//!   port is free if the reply key it would create is unused, so one external port
//!   serves many remotes. The original port is kept when free (as Linux does); otherwise
//!   a bounded number of pseudo-random candidates are tried, only from this worker's
//!   slice of the port range, so replies can be steered back to this worker by port.
//!
//! TCP state follows the flags (for timeouts and the "established/related" decision);
//! a caller that filters (the security groups) also checks each segment against the
//! connection's sequence windows ([`ConnTable::tcp_window`], see `window.rs`), which
//! refuses forged RSTs and out-of-window segments as `nf_conntrack` does.

mod index;
mod owners;
mod snat;
mod wheel;
mod window;

#[cfg(test)]
mod tests;

use crate::wire::{IpProtocol, TcpFlags};

use index::KeyIndex;
use owners::OwnerCounts;
use wheel::Wheel;

pub use snat::{owner_worker, worker_for_external_port, PortRange};
pub use window::{TcpSegment, Window};

/// Zones of the entries that admit or translate the later fragments of a datagram whose
/// first fragment passed (same source, destination, protocol and identification), as
/// conntrack's defragmentation would: the owner's zone (a port's or a router's) with this
/// bit. Neither a port's zone nor a router's uid (24 bits) has it.
pub const FRAGMENT_ZONE: u32 = 1 << 30;

const TCP: u8 = IpProtocol::TCP.0;
const UDP: u8 = IpProtocol::UDP.0;
const ICMP: u8 = IpProtocol::ICMP.0;
const ICMPV6: u8 = 58;

// Constants of wyhash: odd, with well-spread bits.
const K0: u64 = 0xa076_1d64_78bd_642f;
const K1: u64 = 0xe703_7ed1_a0b4_28db;
const K2: u64 = 0x8ebc_6af0_9c88_c6e3;
const K3: u64 = 0x5899_65cc_7537_4cc3;

/// The 64×64→128 multiply folded to 64 bits: one multiply mixes every input bit into
/// most output bits (the step wyhash and foldhash are built on).
#[inline]
fn fold(a: u64, b: u64) -> u64 {
    let m = u128::from(a) * u128::from(b);
    (m as u64) ^ ((m >> 64) as u64)
}

/// The 5-tuple of one direction of a flow, in the zone that separates tenants.
///
/// Addresses are IPv4 in host byte order. For ICMP echo, `sport` and `dport` both hold the
/// identifier, so that a key and its reverse describe request and reply alike.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Tenant scope: a router id for NAT, a port for security groups.
    pub zone: u32,
    /// IP protocol number.
    pub proto: u8,
    /// Source address.
    pub src: u32,
    /// Destination address.
    pub dst: u32,
    /// Source port (ICMP: identifier).
    pub sport: u16,
    /// Destination port (ICMP: identifier).
    pub dport: u16,
}

impl FlowKey {
    /// The key of a packet going the other way, untranslated.
    #[inline]
    pub const fn reversed(&self) -> FlowKey {
        FlowKey {
            zone: self.zone,
            proto: self.proto,
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
        }
    }

    /// The reply key when this (original) flow leaves with source `ip:port` (for ICMP,
    /// `port` is the new identifier).
    #[inline]
    pub const fn snat_reply(&self, ip: u32, port: u16) -> FlowKey {
        FlowKey {
            zone: self.zone,
            proto: self.proto,
            src: self.dst,
            dst: ip,
            sport: if self.proto == ICMP { port } else { self.dport },
            dport: port,
        }
    }

    #[inline]
    fn hash(&self, seed: u64) -> u64 {
        let a = (u64::from(self.src) << 32) | u64::from(self.dst);
        let b =
            (u64::from(self.zone) << 32) | (u64::from(self.sport) << 16) | u64::from(self.dport);
        fold(fold(a ^ seed ^ K0, b ^ K1) ^ u64::from(self.proto) ^ K2, K3)
    }
}

/// A key the table indexes: one direction of a flow. The table is generic over it so
/// that IPv6 flows get a table of their own (a wider key) while the IPv4 table, its
/// index and its sessions stay exactly as narrow as before.
pub trait ConnKey: Copy + Eq + core::fmt::Debug {
    /// The key of an unused slot.
    const EMPTY: Self;
    /// The family's ICMP protocol number (ICMP, ICMPv6), for the timeouts.
    const ICMP: u8;
    /// The seeded hash the index files the key under.
    fn hash_with(&self, seed: u64) -> u64;
    /// IP protocol number.
    fn proto(&self) -> u8;
    /// The key of a packet going the other way, untranslated.
    fn reverse(&self) -> Self;
}

impl ConnKey for FlowKey {
    const ICMP: u8 = ICMP;
    const EMPTY: Self = FlowKey {
        zone: 0,
        proto: 0,
        src: 0,
        dst: 0,
        sport: 0,
        dport: 0,
    };

    #[inline(always)]
    fn hash_with(&self, seed: u64) -> u64 {
        self.hash(seed)
    }

    #[inline(always)]
    fn proto(&self) -> u8 {
        self.proto
    }

    #[inline(always)]
    fn reverse(&self) -> Self {
        self.reversed()
    }
}

/// The 5-tuple of one direction of an IPv6 flow, in its zone (the same zones as
/// [`FlowKey`]'s). Addresses are the 16 octets read as one big-endian number; for
/// ICMPv6 queries, `sport` and `dport` hold the identifier as for ICMP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey6 {
    /// Tenant scope: a port for security groups.
    pub zone: u32,
    /// Upper-layer protocol (after the extension headers).
    pub proto: u8,
    /// Source port (ICMPv6: identifier).
    pub sport: u16,
    /// Destination port (ICMPv6: identifier).
    pub dport: u16,
    /// Source address.
    pub src: u128,
    /// Destination address.
    pub dst: u128,
}

impl FlowKey6 {
    /// The key of a packet going the other way.
    #[inline]
    pub const fn reversed(&self) -> FlowKey6 {
        FlowKey6 {
            zone: self.zone,
            proto: self.proto,
            sport: self.dport,
            dport: self.sport,
            src: self.dst,
            dst: self.src,
        }
    }
}

impl ConnKey for FlowKey6 {
    const ICMP: u8 = ICMPV6;
    const EMPTY: Self = FlowKey6 {
        zone: 0,
        proto: 0,
        sport: 0,
        dport: 0,
        src: 0,
        dst: 0,
    };

    #[inline]
    fn hash_with(&self, seed: u64) -> u64 {
        let a = fold(self.src as u64 ^ seed ^ K0, (self.src >> 64) as u64 ^ K1);
        let b = fold(self.dst as u64 ^ K2, (self.dst >> 64) as u64 ^ seed ^ K3);
        let c =
            (u64::from(self.zone) << 32) | (u64::from(self.sport) << 16) | u64::from(self.dport);
        fold(fold(a ^ c ^ K1, b ^ u64::from(self.proto) ^ K2), K3)
    }

    #[inline(always)]
    fn proto(&self) -> u8 {
        self.proto
    }

    #[inline(always)]
    fn reverse(&self) -> Self {
        self.reversed()
    }
}

/// Which of a session's two keys a packet matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Dir {
    /// The direction of the packet that created the session.
    Original = 0,
    /// The reply direction.
    Reply = 1,
}

impl Dir {
    /// 0 for [`Dir::Original`], 1 for [`Dir::Reply`].
    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The other direction.
    #[inline]
    pub const fn reverse(self) -> Dir {
        match self {
            Dir::Original => Dir::Reply,
            Dir::Reply => Dir::Original,
        }
    }

    #[inline]
    const fn from_bit(bit: u32) -> Dir {
        if bit & 1 == 0 {
            Dir::Original
        } else {
            Dir::Reply
        }
    }
}

/// A session's slot in its table. Valid from the `insert` that returned it until the
/// session is removed or expired; a caller that keeps one across an
/// [`ConnTable::expire`] must look the flow up again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u32);

impl SessionId {
    /// The slot as an index.
    #[inline]
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

/// TCP connection state, from the flags seen in each direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TcpState {
    /// Created, no packet seen yet.
    #[default]
    New,
    /// SYN from the originator.
    SynSent,
    /// SYN (normally SYN-ACK) from the responder.
    SynReceived,
    /// Handshake completed, or picked up mid-stream (a first packet without SYN, e.g.
    /// after a restart); timed as transitory until the reply direction has been seen.
    Established,
    /// FIN seen from one side.
    FinWait,
    /// FIN seen from both sides.
    TimeWait,
    /// RST seen.
    Closed,
}

impl TcpState {
    /// Stable lowercase name, for `sessions.list`.
    pub const fn name(self) -> &'static str {
        match self {
            TcpState::New => "new",
            TcpState::SynSent => "syn_sent",
            TcpState::SynReceived => "syn_received",
            TcpState::Established => "established",
            TcpState::FinWait => "fin_wait",
            TcpState::TimeWait => "time_wait",
            TcpState::Closed => "closed",
        }
    }

    /// The state after a segment with `flags` in direction `dir`; `fins` holds one bit per
    /// direction that has sent a FIN and is updated.
    fn next(self, dir: Dir, flags: TcpFlags, fins: &mut u8) -> TcpState {
        use TcpState::*;
        let syn = flags.contains(TcpFlags::SYN);
        let ack = flags.contains(TcpFlags::ACK);
        if flags.contains(TcpFlags::RST) {
            return Closed;
        }
        if syn && !ack && dir == Dir::Original && matches!(self, TimeWait | Closed) {
            // The client reuses the ports for a new connection (Linux does the same).
            *fins = 0;
            return SynSent;
        }
        if flags.contains(TcpFlags::FIN) {
            *fins |= 1 << dir.index();
            return match self {
                Closed => Closed,
                _ if *fins == 0b11 => TimeWait,
                _ => FinWait,
            };
        }
        match (self, dir) {
            (New, Dir::Original) if syn && !ack => SynSent,
            (New, _) => Established,
            (SynSent, Dir::Reply) if syn => SynReceived,
            (SynReceived, Dir::Original) if ack && !syn => Established,
            (s, _) => s,
        }
    }
}

/// Idle timeouts in seconds. Defaults follow VPP's NAT (TCP established 7440 s, as RFC
/// 5382 asks of a NAT: at least 2 h 4 min) and Linux conntrack elsewhere. Every value must
/// be at least 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP handshake (`new`, `syn_sent`, `syn_received`), and an established connection
    /// whose responder has never answered: 120 s (Linux's `syn_sent`).
    pub tcp_transitory: u32,
    /// TCP established in both directions: 7440 s.
    pub tcp_established: u32,
    /// TCP with a FIN from one side (a half-closed connection may still carry data, and
    /// every packet restarts the timer): 120 s (Linux's `fin_wait`).
    pub tcp_fin_wait: u32,
    /// TCP with FINs from both sides, or an RST: 10 s (Linux's `close`), short because the
    /// connection is over and a closed NAT port should be reusable soon.
    pub tcp_closed: u32,
    /// UDP with no reply yet: 30 s (Linux's `udp_timeout`), so one-way scans and lost
    /// queries do not hold slots for long.
    pub udp_unreplied: u32,
    /// UDP once a reply has been seen: 300 s (VPP's default and RFC 4787's recommendation
    /// for NAT mappings; Linux uses 120 s).
    pub udp_replied: u32,
    /// ICMP echo: 30 s (Linux).
    pub icmp: u32,
    /// Any other protocol: 600 s (Linux's generic timeout).
    pub other: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_transitory: 120,
            tcp_established: 7440,
            tcp_fin_wait: 120,
            tcp_closed: 10,
            udp_unreplied: 30,
            udp_replied: 300,
            icmp: 30,
            other: 600,
        }
    }
}

impl Timeouts {
    #[inline]
    /// The timeout of a session of `proto` (`icmp`: the family's ICMP protocol number).
    fn of(&self, proto: u8, icmp: u8, tcp: TcpState, replied: bool) -> u32 {
        match proto {
            TCP => match tcp {
                TcpState::Established if replied => self.tcp_established,
                TcpState::New
                | TcpState::SynSent
                | TcpState::SynReceived
                | TcpState::Established => self.tcp_transitory,
                TcpState::FinWait => self.tcp_fin_wait,
                TcpState::TimeWait | TcpState::Closed => self.tcp_closed,
            },
            UDP if replied => self.udp_replied,
            UDP => self.udp_unreplied,
            p if p == icmp => self.icmp,
            _ => self.other,
        }
    }

    fn all(&self) -> [u32; 8] {
        [
            self.tcp_transitory,
            self.tcp_established,
            self.tcp_fin_wait,
            self.tcp_closed,
            self.udp_unreplied,
            self.udp_replied,
            self.icmp,
            self.other,
        ]
    }
}

/// How a table is built. [`ConnConfig::default`] is sized for 256 Ki sessions (about
/// 51 MiB: per session 104 bytes of session, 36 of TCP windows, 16 of timer links, 32 of index and 16 of
/// owner counts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnConfig {
    /// Sessions the table can hold, at most 2^26.
    pub capacity: usize,
    /// Sessions one owner may hold (at least 1). Default: capacity / 8.
    pub owner_quota: usize,
    /// Idle timeouts by protocol and state.
    pub timeouts: Timeouts,
    /// Ports (and ICMP identifiers) SNAT allocates from, split among the workers.
    pub snat_ports: PortRange,
    /// This worker's index among `workers`: it allocates from its slice of `snat_ports`.
    pub worker: usize,
    /// Number of workers sharing `snat_ports`.
    pub workers: usize,
    /// Candidates [`ConnTable::alloc_snat`] tries after the hint before giving up.
    pub snat_probes: u32,
    /// Buckets of the timer wheel (a power of two; one per second). Deadlines further
    /// out cost one extra visit per revolution.
    pub wheel_slots: usize,
    /// Seed of the key hash; the control plane should pass a random one.
    pub hash_seed: u64,
}

impl ConnConfig {
    /// Defaults for a table of `capacity` sessions, one worker.
    pub fn with_capacity(capacity: usize) -> Self {
        ConnConfig {
            capacity,
            owner_quota: (capacity / 8).max(1),
            timeouts: Timeouts::default(),
            snat_ports: PortRange::DEFAULT,
            worker: 0,
            workers: 1,
            snat_probes: 64,
            wheel_slots: 4096,
            hash_seed: 0x243f_6a88_85a3_08d3,
        }
    }

    /// Checks the configuration, naming the first problem.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.capacity == 0 || self.capacity > 1 << 26 {
            return Err("capacity must be between 1 and 2^26 sessions");
        }
        if self.owner_quota == 0 {
            return Err("owner_quota must be at least 1");
        }
        if self.timeouts.all().contains(&0) {
            return Err("every timeout must be at least 1 second");
        }
        if self.snat_ports.slice(self.worker, self.workers).is_none() {
            return Err("this worker's slice of snat_ports is empty");
        }
        if !self.wheel_slots.is_power_of_two() || !(2..=1 << 20).contains(&self.wheel_slots) {
            return Err("wheel_slots must be a power of two between 2 and 2^20");
        }
        Ok(())
    }
}

impl Default for ConnConfig {
    fn default() -> Self {
        ConnConfig::with_capacity(256 * 1024)
    }
}

/// Why [`ConnTable::insert`] refused a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InsertError {
    /// Every slot is in use.
    TableFull,
    /// The owner already holds its quota of sessions.
    QuotaExceeded,
    /// A live session already has one of the two keys.
    Exists,
}

/// Counters of one table, written only by its worker. Copied out by [`ConnTable::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// Sessions held now (including expired ones not yet swept).
    pub sessions: u64,
    /// Sessions the table can hold.
    pub capacity: u64,
    /// Owners holding at least one session now.
    pub owners: u64,
    /// Sessions created.
    pub created: u64,
    /// Sessions reclaimed after their timeout (by the sweep or by an insert of their key).
    pub expired: u64,
    /// Sessions removed by [`ConnTable::remove`] or [`ConnTable::remove_owner`].
    pub deleted: u64,
    /// Inserts refused: [`InsertError::TableFull`].
    pub table_full: u64,
    /// Inserts refused: [`InsertError::QuotaExceeded`].
    pub quota_exceeded: u64,
    /// Inserts refused: [`InsertError::Exists`].
    pub exists: u64,
    /// [`ConnTable::alloc_snat`] calls that found no free port.
    pub nat_ports_exhausted: u64,
}

/// The NAT translation of one direction: the header fields a packet must carry after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rewrite {
    /// Source address.
    pub src: u32,
    /// Source port (ICMP: identifier, equal to `dport`).
    pub sport: u16,
    /// Destination address.
    pub dst: u32,
    /// Destination port (ICMP: identifier).
    pub dport: u16,
}

/// `flags` bits.
const REPLIED: u8 = 1 << 2;
const FINS: u8 = 0b11;

/// One tracked connection. Read-only outside the table: the keys are indexed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session<K: ConnKey = FlowKey> {
    keys: [K; 2],
    expires: u64,
    last_seen: u64,
    packets: [u64; 2],
    bytes: [u64; 2],
    owner: u32,
    tag: u32,
    tcp: TcpState,
    /// FIN seen per direction (bits 0, 1), [`REPLIED`].
    flags: u8,
}

impl<K: ConnKey> Session<K> {
    const EMPTY: Session<K> = Session {
        keys: [K::EMPTY; 2],
        expires: 0,
        last_seen: 0,
        packets: [0; 2],
        bytes: [0; 2],
        owner: 0,
        tag: 0,
        tcp: TcpState::New,
        flags: 0,
    };

    /// The key packets in direction `dir` carry.
    #[inline]
    pub fn key(&self, dir: Dir) -> &K {
        &self.keys[dir.index()]
    }

    /// The owner charged for the session.
    #[inline]
    pub fn owner(&self) -> u32 {
        self.owner
    }

    /// The caller's tag (e.g. the security-group rule or the router that admitted it).
    #[inline]
    pub fn tag(&self) -> u32 {
        self.tag
    }

    /// The TCP state, `None` for other protocols.
    #[inline]
    pub fn tcp_state(&self) -> Option<TcpState> {
        (self.keys[0].proto() == TCP).then_some(self.tcp)
    }

    /// Whether a packet has been seen in the reply direction.
    #[inline]
    pub fn replied(&self) -> bool {
        self.flags & REPLIED != 0
    }

    /// When the last packet was seen (the creation time before any).
    #[inline]
    pub fn last_seen(&self) -> u64 {
        self.last_seen
    }

    /// The second from which the session counts as gone.
    #[inline]
    pub fn expires(&self) -> u64 {
        self.expires
    }

    /// Whether the session has timed out at `now`.
    #[inline]
    pub fn is_expired(&self, now: u64) -> bool {
        self.expires <= now
    }

    /// Packets seen in direction `dir`.
    #[inline]
    pub fn packets(&self, dir: Dir) -> u64 {
        self.packets[dir.index()]
    }

    /// Bytes seen in direction `dir`.
    #[inline]
    pub fn bytes(&self, dir: Dir) -> u64 {
        self.bytes[dir.index()]
    }
}

/// NAT is IPv4 only.
impl Session<FlowKey> {
    /// The key a packet in direction `dir` carries after translation: the reverse of the
    /// other direction's key.
    #[inline]
    pub fn translated(&self, dir: Dir) -> FlowKey {
        self.keys[dir.reverse().index()].reversed()
    }

    /// What to write into a packet in direction `dir`; `None` when it passes unchanged
    /// (a plain tracked flow). Under SNAT the original direction gets a new source and
    /// the reply a new destination; a DNAT session is the mirror image.
    #[inline]
    pub fn rewrite(&self, dir: Dir) -> Option<Rewrite> {
        let t = self.translated(dir);
        let k = &self.keys[dir.index()];
        if t.src == k.src && t.dst == k.dst && t.sport == k.sport && t.dport == k.dport {
            return None;
        }
        Some(Rewrite {
            src: t.src,
            sport: t.sport,
            dst: t.dst,
            dport: t.dport,
        })
    }

    /// What a session of these keys would write into a packet of its original direction
    /// (for an explained packet, whose session is not created).
    pub fn planned_rewrite(original: FlowKey, reply: FlowKey) -> Option<Rewrite> {
        Session {
            keys: [original, reply],
            ..Session::EMPTY
        }
        .rewrite(Dir::Original)
    }

    /// Whether the session translates addresses or ports.
    #[inline]
    pub fn is_nat(&self) -> bool {
        self.rewrite(Dir::Original).is_some()
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct ConnTable<K: ConnKey = FlowKey> {
    sessions: Box<[Session<K>]>,
    /// TCP sequence windows by session slot, apart from the sessions so that the lookup
    /// path (and NAT, which does not check windows) reads no more than before.
    windows: Box<[Window]>,
    index: KeyIndex,
    wheel: Wheel,
    owners: OwnerCounts,
    len: usize,
    quota: u32,
    timeouts: Timeouts,
    snat_slice: PortRange,
    snat_probes: u32,
    seed: u64,
    /// Mixed into SNAT candidate sequences so that flows with the same hint and remote
    /// (many VMs keeping source port 123 towards one NTP server) do not all walk the
    /// same sequence.
    snat_salt: u64,
    stats: ConnStats,
}

impl<K: ConnKey> ConnTable<K> {
    /// A table as `config` describes, all of its memory allocated now.
    ///
    /// # Panics
    ///
    /// If `config` fails [`ConnConfig::validate`].
    pub fn new(config: ConnConfig) -> Self {
        if let Err(e) = config.validate() {
            panic!("invalid connection table configuration: {e}");
        }
        let cap = config.capacity;
        ConnTable {
            sessions: vec![Session::EMPTY; cap].into_boxed_slice(),
            windows: vec![Window::NEW; cap].into_boxed_slice(),
            index: KeyIndex::with_max_len(2 * cap),
            wheel: Wheel::new(cap, config.wheel_slots),
            owners: OwnerCounts::new(cap),
            len: 0,
            quota: config.owner_quota.min(u32::MAX as usize) as u32,
            timeouts: config.timeouts,
            snat_slice: config
                .snat_ports
                .slice(config.worker, config.workers)
                .unwrap_or(config.snat_ports),
            snat_probes: config.snat_probes,
            seed: config.hash_seed,
            snat_salt: 0,
            stats: ConnStats {
                capacity: cap as u64,
                ..ConnStats::default()
            },
        }
    }

    /// Sessions held (including expired ones not yet swept).
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no session is held.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sessions the table can hold.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.sessions.len()
    }

    /// The ports this worker's SNAT allocates from.
    pub fn snat_ports(&self) -> PortRange {
        self.snat_slice
    }

    /// Sessions `owner` holds.
    pub fn owner_sessions(&self, owner: u32) -> u32 {
        self.owners.get(owner)
    }

    /// A copy of the counters.
    pub fn stats(&self) -> ConnStats {
        ConnStats {
            sessions: self.len as u64,
            owners: self.owners.len() as u64,
            ..self.stats
        }
    }

    /// Where the index holds `key`, live or expired.
    #[inline]
    fn find(&self, key: &K) -> Option<(u32, Dir)> {
        let tag = (key.hash_with(self.seed) >> 32) as u32;
        let sessions = &self.sessions;
        self.index
            .find(tag, |val| {
                sessions[(val >> 1) as usize].keys[(val & 1) as usize] == *key
            })
            .map(|val| (val >> 1, Dir::from_bit(val)))
    }

    /// The live session `key` belongs to and the direction it matched.
    #[inline]
    pub fn lookup(&self, key: &K, now: u64) -> Option<(SessionId, Dir)> {
        let (id, dir) = self.find(key)?;
        if self.sessions[id as usize].expires <= now {
            return None;
        }
        Some((SessionId(id), dir))
    }

    /// The session in slot `id`, which must come from a lookup or insert since the last
    /// expire or remove (an id out of range panics; a stale id reads whatever the slot
    /// holds now).
    #[inline]
    pub fn session(&self, id: SessionId) -> &Session<K> {
        &self.sessions[id.index()]
    }

    /// The session in slot `id`, if the slot is in use (live or expired, not yet swept).
    pub fn get(&self, id: SessionId) -> Option<&Session<K>> {
        self.wheel.is_live(id.0).then(|| &self.sessions[id.index()])
    }

    /// Accounts a packet of `bytes` in direction `dir` with TCP `flags` (ignored for other
    /// protocols) at `now`: counters, protocol state, and the deadline that follows.
    #[inline]
    pub fn touch(&mut self, id: SessionId, dir: Dir, flags: TcpFlags, bytes: u32, now: u64) {
        let s = &mut self.sessions[id.index()];
        let d = dir.index();
        s.packets[d] += 1;
        s.bytes[d] += u64::from(bytes);
        s.last_seen = now;
        if dir == Dir::Reply {
            s.flags |= REPLIED;
        }
        let proto = s.keys[0].proto();
        if proto == TCP {
            let mut fins = s.flags & FINS;
            s.tcp = s.tcp.next(dir, flags, &mut fins);
            s.flags = (s.flags & !FINS) | fins;
        }
        let expires = now.saturating_add(u64::from(self.timeouts.of(
            proto,
            K::ICMP,
            s.tcp,
            s.flags & REPLIED != 0,
        )));
        s.expires = expires;
        // A later deadline is noticed when the wheel reaches the old one (lazy); only an
        // earlier one must move now, or a closed connection would hold its slot.
        if expires < self.wheel.sched(id.0) {
            self.wheel.reschedule(id.0, expires);
        }
    }

    /// Whether TCP segment `seg` in direction `dir` lies within session `id`'s sequence
    /// windows (updating them if so). A new SYN from the originator of a closed
    /// connection starts the windows afresh, as the state does.
    #[inline]
    pub fn tcp_window(&mut self, id: SessionId, dir: Dir, seg: &TcpSegment) -> bool {
        let window = &mut self.windows[id.index()];
        if dir == Dir::Original
            && seg.flags.contains(TcpFlags::SYN)
            && !seg.flags.contains(TcpFlags::ACK)
            && matches!(
                self.sessions[id.index()].tcp,
                TcpState::TimeWait | TcpState::Closed
            )
        {
            *window = Window::NEW;
        }
        window.accept(dir.index(), seg)
    }

    /// Sets the caller's tag of session `id`.
    pub fn set_tag(&mut self, id: SessionId, tag: u32) {
        self.sessions[id.index()].tag = tag;
    }

    /// Reclaims the expired session holding `key`, if any; true when `key` is held by a
    /// live session.
    #[inline]
    fn key_in_use(&mut self, key: &K, now: u64) -> bool {
        match self.find(key) {
            Some((id, _)) if self.sessions[id as usize].expires <= now => {
                self.forget(id);
                self.stats.expired += 1;
                false
            }
            Some(_) => true,
            None => false,
        }
    }

    /// Creates a session for a flow first seen as `original`, whose replies carry `reply`
    /// (`original.reversed()` for a plain tracked flow, [`FlowKey::snat_reply`] under
    /// SNAT), charged to `owner`. No packet is counted: touch it with the first one. The
    /// new session times out as a new flow of its protocol until then.
    #[inline]
    pub fn insert(
        &mut self,
        original: K,
        reply: K,
        owner: u32,
        tag: u32,
        now: u64,
    ) -> Result<SessionId, InsertError> {
        if self.key_in_use(&original, now) || self.key_in_use(&reply, now) {
            self.stats.exists += 1;
            return Err(InsertError::Exists);
        }
        if self.owners.get(owner) >= self.quota {
            self.stats.quota_exceeded += 1;
            return Err(InsertError::QuotaExceeded);
        }
        let Some(id) = self.wheel.alloc() else {
            self.stats.table_full += 1;
            return Err(InsertError::TableFull);
        };
        let expires = now.saturating_add(u64::from(self.timeouts.of(
            original.proto(),
            K::ICMP,
            TcpState::New,
            false,
        )));
        self.windows[id as usize] = Window::NEW;
        self.sessions[id as usize] = Session {
            keys: [original, reply],
            expires,
            last_seen: now,
            owner,
            tag,
            ..Session::EMPTY
        };
        self.index
            .insert((original.hash_with(self.seed) >> 32) as u32, id << 1);
        // A flow to itself (same address and port both ends) has one key for both
        // directions; indexing it twice would leave a lookup ambiguous.
        if reply != original {
            self.index
                .insert((reply.hash_with(self.seed) >> 32) as u32, (id << 1) | 1);
        }
        self.owners.inc(owner);
        self.wheel.schedule(id, expires);
        self.len += 1;
        self.stats.created += 1;
        Ok(SessionId(id))
    }

    /// Drops session `id` from the index and owner counts and frees its slot.
    fn forget(&mut self, id: u32) {
        let s = &self.sessions[id as usize];
        let [original, reply] = s.keys;
        let owner = s.owner;
        let removed = self
            .index
            .remove((original.hash_with(self.seed) >> 32) as u32, id << 1);
        debug_assert!(removed, "original key of session {id} not indexed");
        if reply != original {
            let removed = self
                .index
                .remove((reply.hash_with(self.seed) >> 32) as u32, (id << 1) | 1);
            debug_assert!(removed, "reply key of session {id} not indexed");
        }
        self.owners.dec(owner);
        self.wheel.release(id);
        self.len -= 1;
    }

    /// Removes session `id`; false if the slot holds none.
    pub fn remove(&mut self, id: SessionId) -> bool {
        if !self.wheel.is_live(id.0) {
            return false;
        }
        self.forget(id.0);
        self.stats.deleted += 1;
        true
    }

    /// Removes every session of `owner` (a port being deleted). O(capacity): control path.
    pub fn remove_owner(&mut self, owner: u32) -> usize {
        let mut n = 0;
        for id in 0..self.sessions.len() as u32 {
            if self.wheel.is_live(id) && self.sessions[id as usize].owner == owner {
                self.forget(id);
                n += 1;
            }
        }
        self.stats.deleted += n as u64;
        n
    }

    /// Frees sessions whose deadline is at or before `now`, examining at most `budget`
    /// sessions (each one either freed or filed under its later deadline) and skipping at
    /// most one wheel revolution of empty seconds; returns how many it freed. Called from
    /// housekeeping; sessions it has not reached yet are already invisible to lookups.
    pub fn expire(&mut self, now: u64, budget: usize) -> usize {
        let mut freed = 0;
        for _ in 0..budget {
            let Some(id) = self.wheel.next_due(now) else {
                break;
            };
            let expires = self.sessions[id as usize].expires;
            if expires <= now {
                self.forget(id);
                freed += 1;
            } else {
                self.wheel.refile(id, expires);
            }
        }
        self.stats.expired += freed as u64;
        freed
    }

    /// Every session held, live or expired-but-unswept (filter with
    /// [`Session::is_expired`]). O(capacity): for `sessions.list`, not the packet path.
    pub fn iter(&self) -> impl Iterator<Item = (SessionId, &Session<K>)> + '_ {
        self.sessions
            .iter()
            .enumerate()
            .filter(|&(i, _)| self.wheel.is_live(i as u32))
            .map(|(i, s)| (SessionId(i as u32), s))
    }

    /// What [`ConnTable::insert`] would answer now, changing nothing (for an explained
    /// packet): a key held by an expired session counts as free, as insert would sweep it.
    pub fn check_insert(
        &self,
        original: &K,
        reply: &K,
        owner: u32,
        now: u64,
    ) -> Result<(), InsertError> {
        let live = |key: &K| {
            self.find(key)
                .is_some_and(|(id, _)| self.sessions[id as usize].expires > now)
        };
        if live(original) || live(reply) {
            return Err(InsertError::Exists);
        }
        if self.owners.get(owner) >= self.quota {
            return Err(InsertError::QuotaExceeded);
        }
        if self.len >= self.capacity() {
            return Err(InsertError::TableFull);
        }
        Ok(())
    }

    /// Whether TCP segment `seg` in direction `dir` lies within session `id`'s windows,
    /// as [`ConnTable::tcp_window`] answers, changing nothing.
    pub fn tcp_window_check(&self, id: SessionId, dir: Dir, seg: &TcpSegment) -> bool {
        let mut window = self.windows[id.index()];
        if dir == Dir::Original
            && seg.flags.contains(TcpFlags::SYN)
            && !seg.flags.contains(TcpFlags::ACK)
            && matches!(
                self.sessions[id.index()].tcp,
                TcpState::TimeWait | TcpState::Closed
            )
        {
            window = Window::NEW;
        }
        window.accept(dir.index(), seg)
    }
}

/// SNAT is IPv4 only.
impl ConnTable<FlowKey> {
    /// A source port (for ICMP, identifier) for a flow in `zone` leaving from `external_ip`
    /// towards `remote_ip:remote_port` such that the reply key
    /// (`remote → external_ip:port`) is not in the table, from this worker's slice of the
    /// SNAT range: `hint` (the original port) when it is free and in the slice, else the
    /// first free one of up to [`ConnConfig::snat_probes`] pseudo-random candidates.
    /// `None` (counted as `nat_ports_exhausted`) when all tried are taken. A port held by
    /// an expired session not yet swept counts as taken.
    ///
    /// The port is not reserved: insert the session before allocating again.
    pub fn alloc_snat(
        &mut self,
        zone: u32,
        proto: u8,
        external_ip: u32,
        remote_ip: u32,
        remote_port: u16,
        hint: u16,
    ) -> Option<u16> {
        let port = self.probe_snat(zone, proto, external_ip, remote_ip, remote_port, hint);
        // The hint is only ever returned when it was free: any other outcome probed
        // candidates under the next salt.
        if port != Some(hint) {
            self.snat_salt = self.snat_salt.wrapping_add(1);
        }
        if port.is_none() {
            self.stats.nat_ports_exhausted += 1;
        }
        port
    }

    /// The port [`ConnTable::alloc_snat`] would pick now, changing nothing (for an
    /// explained packet).
    pub fn probe_snat(
        &self,
        zone: u32,
        proto: u8,
        external_ip: u32,
        remote_ip: u32,
        remote_port: u16,
        hint: u16,
    ) -> Option<u16> {
        let reply = |port: u16| FlowKey {
            zone,
            proto,
            src: remote_ip,
            dst: external_ip,
            sport: if proto == ICMP { port } else { remote_port },
            dport: port,
        };
        if self.snat_slice.contains(hint) && self.find(&reply(hint)).is_none() {
            return Some(hint);
        }
        let salt = self.snat_salt.wrapping_add(1);
        let h = FlowKey {
            zone,
            proto,
            src: remote_ip,
            dst: external_ip,
            sport: remote_port,
            dport: hint,
        }
        .hash(self.seed ^ salt.wrapping_mul(K1));
        snat::candidates(self.snat_slice, h, self.snat_probes)
            .find(|&port| self.find(&reply(port)).is_none())
    }
}
