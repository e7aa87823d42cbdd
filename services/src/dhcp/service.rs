//! The DHCP server as polluxd runs it: a service of the slow path (the frames punted with
//! [`ServiceId::DHCP`]), one [`DhcpServer`] per network with DHCP, leases persisted in the
//! state directory.
//!
//! The slow-path thread ([`crate::dispatch`]) hands this service its frames through
//! [`DhcpService::punt_handler`]. The `pollux-leases` thread expires leases and writes the
//! changed lease tables once per [`SAVE_INTERVAL`] (and the service once more when
//! stopped), from copies taken under the lock, so that an fsync on a slow disk never holds
//! up an answer.
//!
//! The engine hands it a new configuration after every apply; a server keeps its leases
//! across the change unless the port they belong to is gone or its address changed (the
//! client then gets a NAK at its next renewal and starts over with the new address).

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pollux_dataplane::slowpath::{
    RingHeader, ServiceId, DHCP_SERVER_PORT, MAX_RING_FRAME, RING_HEADER_LEN,
};
use pollux_dataplane::snapshot::NetworkUid;
use pollux_dataplane::wire::{
    EtherType, EthernetAddress, EthernetFrame, EthernetRepr, IpProtocol, Ipv4Packet, Ipv4Repr,
    UdpPacket, UdpRepr,
};

use super::server::{DhcpConfig, DhcpServer, DhcpStats, Reply};
use super::{Discard, LeaseInfo, LeaseTable};

/// How often changed lease tables are written.
pub const SAVE_INTERVAL: Duration = Duration::from_secs(1);
const UDP_HEADER_LEN: usize = 8;

/// Why a punted frame got no reply before it reached a server: malformed below DHCP, or
/// for a network whose server is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrameDrop {
    /// The ring entry, IPv4 header or UDP header is truncated or inconsistent.
    BadHeaders,
    /// The IPv4 header checksum is wrong.
    BadIpChecksum,
    /// The network has no DHCP server (any more).
    NoServer,
    /// The reply did not fit a ring slot or the inject ring was full.
    InjectFull,
}

impl FrameDrop {
    /// Every reason.
    pub const ALL: [FrameDrop; 4] = [
        FrameDrop::BadHeaders,
        FrameDrop::BadIpChecksum,
        FrameDrop::NoServer,
        FrameDrop::InjectFull,
    ];

    /// A stable snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            FrameDrop::BadHeaders => "bad_headers",
            FrameDrop::BadIpChecksum => "bad_ip_checksum",
            FrameDrop::NoServer => "no_server",
            FrameDrop::InjectFull => "inject_full",
        }
    }
}

/// One network's server and where its leases live.
#[derive(Debug)]
struct NetworkServer {
    network_id: String,
    server: DhcpServer,
    file: Option<PathBuf>,
    /// Leases changed since the last save.
    dirty: bool,
}

/// Counters of the whole service, for metrics and `stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceStats {
    /// Messages taken off the punt rings.
    pub received: u64,
    /// Replies put on the inject rings.
    pub replies: u64,
    /// Protocol outcomes, summed over the networks (including removed ones).
    pub server: DhcpStats,
    /// Messages a server refused, by reason.
    pub drops: BTreeMap<&'static str, u64>,
    /// Lease files that could not be written (the error is logged).
    pub save_errors: u64,
    /// Leases held now (offered or bound), over all networks.
    pub leases: u64,
}

/// The state the DHCP thread and the control thread share.
#[derive(Debug, Default)]
struct Shared {
    servers: HashMap<NetworkUid, NetworkServer>,
    /// Stats of servers already removed, so totals never go backwards.
    retired: DhcpStats,
    stats: ServiceStats,
}

/// One network's server configuration, as the engine computes it from the desired state.
#[derive(Clone, Debug)]
pub struct NetworkDhcp {
    /// The network's stable identity (what the worker puts on the punt ring).
    pub uid: NetworkUid,
    /// The network's id, for lease listings and file names.
    pub network_id: String,
    /// What its server serves.
    pub config: DhcpConfig,
}

/// A lease as `leases.list` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRow {
    /// The network's id.
    pub network_id: String,
    /// The lease.
    pub lease: LeaseInfo,
}

/// The running DHCP service.
#[derive(Debug)]
pub struct DhcpService {
    shared: Arc<Mutex<Shared>>,
    /// Held while lease files are written or removed, so that a table copied just before
    /// its network was removed cannot be written after its file was deleted.
    files: Arc<Mutex<()>>,
    lease_dir: Option<PathBuf>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// Wall-clock seconds: lease expiry times are persisted, so they must survive a restart.
pub fn wall_clock_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic on a DHCP thread must not take the control thread down with it.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// File name of a network's leases: the id hex-encoded, so any id is a safe name.
fn lease_file(dir: &Path, network_id: &str) -> PathBuf {
    let hex: String = network_id.bytes().map(|b| format!("{b:02x}")).collect();
    dir.join(format!("{hex}.json"))
}

/// Loads a lease file; a missing file is an empty table, an unreadable one is moved aside
/// (kept for inspection) with a warning. Addresses are Neutron's, fixed per port, so a
/// lost table costs clients nothing but a NAK-free re-request.
fn load_leases(path: &Path) -> LeaseTable {
    if !path.exists() {
        return LeaseTable::new();
    }
    match LeaseTable::load(path) {
        Ok(table) => table,
        Err(e) => {
            let aside = path.with_extension("json.corrupt");
            let moved = std::fs::rename(path, &aside).is_ok();
            crate::warn!(
                "{e}; starting that network's leases empty{}",
                if moved {
                    format!(" (the file is kept as {})", aside.display())
                } else {
                    String::new()
                }
            );
            LeaseTable::new()
        }
    }
}

impl DhcpService {
    /// Starts the service (its lease thread) serving `networks`, with leases kept in
    /// `lease_dir` (created if missing) when given. Frames reach it once its
    /// [`DhcpService::punt_handler`] is registered with the slow-path thread.
    pub fn start(
        lease_dir: Option<PathBuf>,
        networks: Vec<NetworkDhcp>,
    ) -> std::io::Result<DhcpService> {
        if let Some(dir) = &lease_dir {
            if let Some(note) = crate::private_fs::ensure_dir(dir)? {
                crate::warn!("DHCP leases: {note}");
            }
        }
        let mut service = DhcpService {
            shared: Arc::new(Mutex::new(Shared::default())),
            files: Arc::new(Mutex::new(())),
            lease_dir,
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        service.reconfigure(networks);
        let (shared, files, stop) = (
            Arc::clone(&service.shared),
            Arc::clone(&service.files),
            Arc::clone(&service.stop),
        );
        service.threads.push(
            std::thread::Builder::new()
                .name("pollux-leases".into())
                .spawn(move || keep_leases(&shared, &files, &stop))?,
        );
        Ok(service)
    }

    /// Serves `networks` from now on: new networks get a server (with the leases in their
    /// file), removed ones lose theirs and their file, the others are reconfigured.
    pub fn reconfigure(&mut self, networks: Vec<NetworkDhcp>) {
        let mut shared = lock(&self.shared);
        let mut old = std::mem::take(&mut shared.servers);
        for net in networks {
            let uid = net.uid;
            let entry = self.configured(old.remove(&uid), net);
            shared.servers.insert(uid, entry);
        }
        let mut removed = Vec::new();
        for (_, gone) in old {
            add_stats(&mut shared.retired, gone.server.stats());
            removed.extend(gone.file);
        }
        drop(shared);
        if removed.is_empty() {
            return;
        }
        let _files = lock(&self.files);
        for file in removed {
            if let Err(e) = std::fs::remove_file(&file) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    crate::warn!("removing {}: {e}", file.display());
                }
            }
        }
    }

    /// Reconfigures the servers of `networks` only (creating those that are new) and
    /// leaves every other server as it is: a change to a few ports costs what their
    /// networks are, not what the host is.
    pub fn update(&mut self, networks: Vec<NetworkDhcp>) {
        let mut shared = lock(&self.shared);
        for net in networks {
            let uid = net.uid;
            let entry = self.configured(shared.servers.remove(&uid), net);
            shared.servers.insert(uid, entry);
        }
    }

    /// The server of `net`: `old` reconfigured, or a new one with the leases in its file.
    fn configured(&self, old: Option<NetworkServer>, net: NetworkDhcp) -> NetworkServer {
        match old {
            Some(mut s) => {
                let before = s.server.leases().len();
                s.server.reconfigure(net.config);
                s.dirty |= s.server.leases().len() != before;
                s.network_id = net.network_id;
                s
            }
            None => {
                let file = self
                    .lease_dir
                    .as_deref()
                    .map(|d| lease_file(d, &net.network_id));
                let leases = file.as_deref().map(load_leases).unwrap_or_default();
                let before = leases.len();
                let server = DhcpServer::with_leases(net.config, leases);
                let dirty = server.leases().len() != before;
                NetworkServer {
                    network_id: net.network_id,
                    server,
                    file,
                    dirty,
                }
            }
        }
    }

    /// Every lease, by network id then address.
    pub fn leases(&self) -> Vec<LeaseRow> {
        let now = wall_clock_secs();
        let shared = lock(&self.shared);
        let mut rows: Vec<LeaseRow> = shared
            .servers
            .values()
            .flat_map(|s| {
                s.server
                    .leases()
                    .list(now)
                    .into_iter()
                    .map(|lease| LeaseRow {
                        network_id: s.network_id.clone(),
                        lease,
                    })
            })
            .collect();
        rows.sort_by(|a, b| (&a.network_id, a.lease.ip).cmp(&(&b.network_id, b.lease.ip)));
        rows
    }

    /// What the slow-path thread hands this service's frames to.
    pub fn punt_handler(&self) -> DhcpPunt {
        DhcpPunt {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The service's counters.
    pub fn stats(&self) -> ServiceStats {
        stats_of(&self.shared)
    }

    /// A function that reads the counters, for the metrics endpoint's thread.
    pub fn stats_fn(&self) -> impl Fn() -> ServiceStats + Send + Sync + 'static {
        let shared = Arc::clone(&self.shared);
        move || stats_of(&shared)
    }

    /// Stops the thread and writes every changed lease table.
    pub fn stop(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let name = thread.thread().name().unwrap_or("DHCP").to_string();
            if thread.join().is_err() {
                crate::warn!("the {name} thread panicked");
            }
        }
        save_dirty(&self.shared, &self.files, wall_clock_secs());
    }
}

impl std::ops::Drop for DhcpService {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

fn stats_of(shared: &Mutex<Shared>) -> ServiceStats {
    let shared = lock(shared);
    let mut stats = shared.stats.clone();
    stats.server = shared.retired;
    for s in shared.servers.values() {
        add_stats(&mut stats.server, s.server.stats());
        stats.leases += s.server.leases().len() as u64;
    }
    stats
}

fn add_stats(total: &mut DhcpStats, s: DhcpStats) {
    total.offers += s.offers;
    total.acks += s.acks;
    total.naks += s.naks;
    total.informs += s.informs;
    total.releases += s.releases;
    total.declines += s.declines;
    total.other_server += s.other_server;
}

/// The DHCP server's side of the slow path: answers the frames punted for
/// [`ServiceId::DHCP`], on the slow-path thread.
#[derive(Debug)]
pub struct DhcpPunt {
    shared: Arc<Mutex<Shared>>,
}

impl crate::dispatch::PuntService for DhcpPunt {
    fn id(&self) -> ServiceId {
        ServiceId::DHCP
    }

    fn handle(&mut self, entry: &[u8], reply: &mut Vec<u8>) -> bool {
        let mut guard = lock(&self.shared);
        let shared = &mut *guard;
        shared.stats.received += 1;
        match handle_entry(&mut shared.servers, entry, wall_clock_secs(), reply) {
            Ok(answered) => answered,
            Err(reason) => {
                count_drop(&mut shared.stats, reason);
                false
            }
        }
    }

    fn replied(&mut self, sent: bool) {
        let mut shared = lock(&self.shared);
        if sent {
            shared.stats.replies += 1;
        } else {
            count_drop(&mut shared.stats, FrameDrop::InjectFull.as_str());
        }
    }
}

fn count_drop(stats: &mut ServiceStats, reason: &'static str) {
    *stats.drops.entry(reason).or_default() += 1;
}

/// The lease thread's loop: every [`SAVE_INTERVAL`], expire and write what changed.
fn keep_leases(shared: &Mutex<Shared>, files: &Mutex<()>, stop: &AtomicBool) {
    let mut last_save = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        // Short naps, so that a stop is noticed quickly.
        std::thread::sleep(Duration::from_millis(50));
        if last_save.elapsed() >= SAVE_INTERVAL {
            save_dirty(shared, files, wall_clock_secs());
            last_save = Instant::now();
        }
    }
}

/// Expires leases at `now` and writes every table that changed since its last write:
/// copies are taken under the shared lock, written outside it.
fn save_dirty(shared: &Mutex<Shared>, files: &Mutex<()>, now: u64) {
    let _files = lock(files);
    let copies: Vec<(PathBuf, LeaseTable)> = {
        let mut shared = lock(shared);
        shared
            .servers
            .values_mut()
            .filter_map(|s| {
                s.dirty |= s.server.leases_mut().expire(now) > 0;
                if !std::mem::take(&mut s.dirty) {
                    return None;
                }
                Some((s.file.clone()?, s.server.leases().clone()))
            })
            .collect()
    };
    for (file, table) in copies {
        if let Err(e) = table.save(&file) {
            crate::warn!("{e}");
            let mut shared = lock(shared);
            shared.stats.save_errors += 1;
            // Try again at the next round, if the network is still there.
            if let Some(s) = shared
                .servers
                .values_mut()
                .find(|s| s.file.as_ref() == Some(&file))
            {
                s.dirty = true;
            }
        }
    }
}

/// Handles one punt ring entry: finds the network's server, hands it the DHCP message and,
/// when it answers, writes the inject ring entry into `out`. Returns whether there is a
/// reply, or the reason the entry was dropped (a [`FrameDrop`] or a server's [`Discard`]).
fn handle_entry(
    servers: &mut HashMap<NetworkUid, NetworkServer>,
    entry: &[u8],
    now: u64,
    out: &mut Vec<u8>,
) -> Result<bool, &'static str> {
    let (header, frame) = RingHeader::read(entry).ok_or(FrameDrop::BadHeaders.as_str())?;
    let payload = dhcp_payload(frame, usize::from(header.l3_offset)).map_err(FrameDrop::as_str)?;
    let server = servers
        .get_mut(&header.network)
        .ok_or(FrameDrop::NoServer.as_str())?;
    match server.server.handle(payload, now, header.port) {
        Ok(Some(reply)) => {
            // Any answer may have made or moved a lease.
            server.dirty = true;
            out.clear();
            out.resize(RING_HEADER_LEN, 0);
            RingHeader {
                port: header.port,
                network: header.network,
                service: ServiceId::DHCP,
                l3_offset: 0,
            }
            .write(out);
            write_reply_frame(&reply, out);
            if out.len() > RING_HEADER_LEN + MAX_RING_FRAME {
                return Err(FrameDrop::InjectFull.as_str());
            }
            Ok(true)
        }
        Ok(None) => {
            // RELEASE and DECLINE end or block leases without an answer.
            server.dirty = true;
            Ok(false)
        }
        Err(drop) => Err(Discard::as_str(drop)),
    }
}

/// The UDP payload of the IPv4 packet at `l3` in `frame`: headers checked for length and
/// consistency, the IPv4 header checksum verified. The UDP checksum is not: clients on a
/// veth with checksum offload leave it unfinished, and Ethernet's FCS already covered it.
fn dhcp_payload(frame: &[u8], l3: usize) -> Result<&[u8], FrameDrop> {
    let ip = frame
        .get(l3..)
        .and_then(|b| Ipv4Packet::new_checked(b).ok())
        .ok_or(FrameDrop::BadHeaders)?;
    if ip.protocol() != IpProtocol::UDP {
        return Err(FrameDrop::BadHeaders);
    }
    if !ip.verify_checksum() {
        return Err(FrameDrop::BadIpChecksum);
    }
    // `new_checked` held `header_len <= total_len <= buffer`, so these slices are in range.
    let ip_payload = &frame[l3 + ip.header_len()..l3 + usize::from(ip.total_len())];
    let udp = UdpPacket::new_checked(ip_payload).map_err(|_| FrameDrop::BadHeaders)?;
    // `new_checked` held `8 <= length <= buffer`.
    Ok(&ip_payload[UDP_HEADER_LEN..usize::from(udp.length())])
}

/// Appends the Ethernet/IPv4/UDP frame carrying `reply` to `out`.
fn write_reply_frame(reply: &Reply, out: &mut Vec<u8>) {
    let (dst_mac, dst_ip) = if reply.broadcast {
        ([0xff; 6], Ipv4Addr::BROADCAST)
    } else {
        (reply.dst_mac, reply.dst_ip)
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress(reply.src_mac),
        dst_addr: EthernetAddress(dst_mac),
        ethertype: EtherType::IPV4,
    };
    let udp = UdpRepr {
        src_port: DHCP_SERVER_PORT,
        dst_port: reply.dst_port,
        payload_len: reply.bytes.len(),
    };
    let ip = Ipv4Repr {
        src_addr: reply.src_ip,
        dst_addr: dst_ip,
        protocol: IpProtocol::UDP,
        payload_len: udp.buffer_len(),
        ttl: pollux_dataplane::wire::ipv4::DEFAULT_TTL,
        dscp: 0,
        ecn: 0,
        ident: 0,
        dont_frag: false,
        more_frags: false,
        frag_offset: 0,
    };
    let start = out.len();
    out.resize(start + eth.buffer_len() + ip.buffer_len(), 0);
    let (eth_bytes, rest) = out[start..].split_at_mut(eth.buffer_len());
    eth.emit(&mut EthernetFrame::new_unchecked(eth_bytes));
    let (ip_bytes, udp_bytes) = rest.split_at_mut(ip.header_len());
    ip.emit(&mut Ipv4Packet::new_unchecked(ip_bytes));
    let mut datagram = UdpPacket::new_unchecked(udp_bytes);
    udp.emit(&mut datagram);
    datagram.payload_mut().copy_from_slice(&reply.bytes);
    datagram.fill_checksum(reply.src_ip, dst_ip);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::Ipv4Cidr;
    use crate::dhcp::server::SubnetConfig;
    use crate::dhcp::{DhcpPacket, HostConfig, LeaseState, MessageType};
    use crate::dispatch::SlowPathThread;
    use pollux_dataplane::port::PortId;
    use pollux_dataplane::ring::{ring, Consumer, Producer};
    use pollux_dataplane::slowpath::{SlowPathEnds, RING_SLOT_SIZE};
    use pollux_dataplane::wire::checksum;
    use proptest::prelude::*;

    const NET: NetworkUid = NetworkUid(7);
    const VM: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 1];
    const SERVER_MAC: [u8; 6] = [0x02, 0x70, 0x64, 0, 0, 7];
    const VM_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
    const SERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 254);

    fn network() -> NetworkDhcp {
        let mut subnet = SubnetConfig::new(
            Ipv4Cidr::new(Ipv4Addr::new(198, 18, 1, 0), 24),
            SERVER_IP,
            SERVER_MAC,
        );
        subnet.gateway = Some(Ipv4Addr::new(198, 18, 1, 1));
        NetworkDhcp {
            uid: NET,
            network_id: "net-a".into(),
            config: DhcpConfig {
                subnets: vec![subnet],
                hosts: vec![HostConfig {
                    mac: VM,
                    port: Some(PortId(3)),
                    ip: VM_IP,
                    hostname: Some("vm1".into()),
                    extra_options: Vec::new(),
                }],
                limiter_seed: Some(1),
                ..DhcpConfig::default()
            },
        }
    }

    /// A client message of type `kind` from VM (with `extra` options), as a punt ring
    /// entry: ring header, then Ethernet/IPv4/UDP from 0.0.0.0:68 to 255.255.255.255:67.
    fn entry(kind: u8, extra: &[u8]) -> Vec<u8> {
        let mut dhcp = vec![0u8; 240];
        dhcp[..3].copy_from_slice(&[1, 1, 6]);
        dhcp[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        dhcp[10] = 0x80; // broadcast flag
        dhcp[28..34].copy_from_slice(&VM);
        dhcp[236..240].copy_from_slice(&[99, 130, 83, 99]);
        dhcp.extend_from_slice(&[53, 1, kind]);
        dhcp.extend_from_slice(extra);
        dhcp.push(255);
        let reply = Reply {
            bytes: dhcp,
            message_type: MessageType::Discover,
            src_ip: Ipv4Addr::UNSPECIFIED,
            src_mac: VM,
            dst_ip: Ipv4Addr::BROADCAST,
            dst_mac: [0xff; 6],
            dst_port: 67,
            broadcast: true,
        };
        let mut out = vec![0u8; RING_HEADER_LEN];
        RingHeader {
            port: PortId(3),
            network: NET,
            service: ServiceId::DHCP,
            l3_offset: 14,
        }
        .write(&mut out);
        write_reply_frame(&reply, &mut out);
        // write_reply_frame writes server-to-client ports; make it client-to-server.
        let udp = RING_HEADER_LEN + 14 + 20;
        out[udp..udp + 2].copy_from_slice(&68u16.to_be_bytes());
        out[udp + 2..udp + 4].copy_from_slice(&67u16.to_be_bytes());
        out
    }

    /// Checks an inject ring entry all the way down and returns the DHCP message.
    fn parse_reply(entry: &[u8]) -> (RingHeader, Vec<u8>) {
        let (header, frame) = RingHeader::read(entry).expect("header");
        assert_eq!(&frame[12..14], &[0x08, 0x00]);
        let ip = &frame[14..];
        assert_eq!(checksum::checksum(&ip[..20]), 0, "IPv4 header checksum");
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        assert_eq!(total, ip.len());
        let udp = &ip[20..total];
        let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        let pseudo = checksum::pseudo_header_v4(src, dst, 17, udp.len() as u16);
        assert_eq!(
            checksum::combine(&[pseudo, checksum::sum(udp)]),
            0xffff,
            "UDP checksum"
        );
        assert_eq!(&udp[0..4], &[0, 67, 0, 68]);
        (header, udp[8..].to_vec())
    }

    fn servers() -> HashMap<NetworkUid, NetworkServer> {
        let n = network();
        HashMap::from([(
            n.uid,
            NetworkServer {
                network_id: n.network_id,
                server: DhcpServer::new(n.config),
                file: None,
                dirty: false,
            },
        )])
    }

    #[test]
    fn a_discover_entry_gets_an_offer_frame_back_to_its_port() {
        let mut servers = servers();
        let mut out = Vec::new();
        assert_eq!(
            handle_entry(&mut servers, &entry(1, &[]), 1_000, &mut out),
            Ok(true)
        );
        let (header, dhcp) = parse_reply(&out);
        assert_eq!(header.port, PortId(3));
        assert_eq!(header.network, NET);
        assert_eq!(&out[RING_HEADER_LEN..RING_HEADER_LEN + 6], &[0xff; 6]);
        assert_eq!(&out[RING_HEADER_LEN + 6..RING_HEADER_LEN + 12], &SERVER_MAC);
        let p = DhcpPacket::new_checked(&dhcp[..]).unwrap();
        assert_eq!(p.yiaddr(), VM_IP);
        assert!(servers[&NET].dirty);
    }

    #[test]
    fn entries_that_are_not_dhcp_or_not_ours_are_counted_by_reason() {
        let mut servers = servers();
        let mut out = Vec::new();
        let mut e = entry(1, &[]);
        e[RING_HEADER_LEN + 14 + 10] ^= 0xff; // IPv4 checksum
        assert_eq!(
            handle_entry(&mut servers, &e, 1, &mut out),
            Err("bad_ip_checksum")
        );
        let mut e = entry(1, &[]);
        e[4..8].copy_from_slice(&99u32.to_le_bytes()); // another network
        assert_eq!(
            handle_entry(&mut servers, &e, 1, &mut out),
            Err("no_server")
        );
        let e = entry(1, &[]);
        assert_eq!(
            handle_entry(&mut servers, &e[..RING_HEADER_LEN + 30], 1, &mut out),
            Err("bad_headers")
        );
        // A DHCPOFFER from a client is the server core's to refuse.
        assert_eq!(
            handle_entry(&mut servers, &entry(2, &[]), 1, &mut out),
            Err("unexpected_message_type")
        );
    }

    proptest! {
        #[test]
        fn arbitrary_entries_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            let mut servers = servers();
            let mut out = Vec::new();
            let _ = handle_entry(&mut servers, &bytes, 1_000, &mut out);
        }

        #[test]
        fn mutated_requests_never_panic_and_replies_are_well_formed(
            kind in 1u8..9,
            flips in proptest::collection::vec((0usize..600, any::<u8>()), 0..6),
            cut in 0usize..600,
        ) {
            let mut servers = servers();
            let mut e = entry(kind, &[50, 4, 198, 18, 1, 10, 54, 4, 198, 18, 1, 254]);
            // Keep the ring header, so the mutation reaches the parsers.
            for (at, value) in flips {
                let at = RING_HEADER_LEN + at % (e.len() - RING_HEADER_LEN);
                e[at] = value;
            }
            e.truncate(RING_HEADER_LEN + cut.max(1));
            let mut out = Vec::new();
            if let Ok(true) = handle_entry(&mut servers, &e, 1_000, &mut out) {
                let (_, dhcp) = parse_reply(&out);
                prop_assert!(DhcpPacket::new_checked(&dhcp[..]).is_ok());
            }
        }
    }

    fn rings() -> (Producer, Consumer, SlowPathEnds) {
        let (punt_tx, punt_rx) = ring(16, RING_SLOT_SIZE);
        let (inject_tx, inject_rx) = ring(16, RING_SLOT_SIZE);
        (
            punt_tx,
            inject_rx,
            SlowPathEnds {
                punt: punt_rx,
                inject: inject_tx,
            },
        )
    }

    fn await_reply(inject: &mut Consumer) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut out = Vec::new();
        while !inject.pop_into(&mut out) {
            assert!(Instant::now() < deadline, "no reply within 5 s");
            std::thread::sleep(Duration::from_millis(1));
        }
        out
    }

    struct TempDir(PathBuf);
    impl std::ops::Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn the_service_answers_over_the_rings_and_its_leases_survive_a_restart() {
        let dir = TempDir(std::env::temp_dir().join(format!(
            "pollux-dhcp-service-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        )));
        let (mut punt, mut inject, ends) = rings();
        let service = DhcpService::start(Some(dir.0.clone()), vec![network()]).unwrap();
        let slow_path =
            SlowPathThread::start(vec![ends], vec![Box::new(service.punt_handler())]).unwrap();
        assert!(punt.push(&entry(1, &[])));
        let (_, offer) = parse_reply(&await_reply(&mut inject));
        assert_eq!(DhcpPacket::new_checked(&offer[..]).unwrap().yiaddr(), VM_IP);
        assert!(punt.push(&entry(3, &[50, 4, 198, 18, 1, 10, 54, 4, 198, 18, 1, 254])));
        let (_, ack) = parse_reply(&await_reply(&mut inject));
        assert_eq!(DhcpPacket::new_checked(&ack[..]).unwrap().yiaddr(), VM_IP);
        let leases = service.leases();
        assert_eq!(leases.len(), 1);
        assert_eq!(leases[0].network_id, "net-a");
        assert_eq!(leases[0].lease.state, LeaseState::Bound);
        let stats = service.stats();
        assert_eq!((stats.received, stats.replies), (2, 2));
        assert_eq!(
            (stats.server.offers, stats.server.acks, stats.leases),
            (1, 1, 1)
        );
        let dispatched = slow_path.stats();
        assert_eq!(dispatched.services.len(), 1);
        assert_eq!(dispatched.services[0].0, "dhcp");
        assert_eq!(
            (
                dispatched.services[0].1.received,
                dispatched.services[0].1.replies
            ),
            (2, 2)
        );
        slow_path.stop();
        service.stop();
        let file = lease_file(&dir.0, "net-a");
        assert!(file.exists(), "leases written on stop");

        // A new service on the same directory starts with the lease.
        let mut service = DhcpService::start(Some(dir.0.clone()), vec![network()]).unwrap();
        assert_eq!(service.leases().len(), 1);
        // The network goes: its server, leases and file with it.
        service.reconfigure(Vec::new());
        assert!(service.leases().is_empty());
        assert!(!file.exists());
        service.stop();
    }

    #[test]
    fn a_corrupt_lease_file_is_kept_aside_and_the_network_starts_empty() {
        let dir = TempDir(std::env::temp_dir().join(format!(
            "pollux-dhcp-corrupt-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        )));
        std::fs::create_dir_all(&dir.0).unwrap();
        let file = lease_file(&dir.0, "net-a");
        std::fs::write(&file, b"{ not json").unwrap();
        let service = DhcpService::start(Some(dir.0.clone()), vec![network()]).unwrap();
        assert!(service.leases().is_empty());
        assert_eq!(
            std::fs::read(file.with_extension("json.corrupt")).unwrap(),
            b"{ not json"
        );
        service.stop();
    }
}
