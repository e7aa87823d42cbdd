//! One network's userspace TCP/IP stack (smoltcp) and the connections it holds.
//!
//! One interface per network, not per worker: a network is an address space of its own
//! (two networks may hold the same VM address and port), so the 4-tuple that names a TCP
//! connection is unique only within one. The interface works on IP packets (smoltcp's
//! `Medium::Ip`): the punted frame's Ethernet header is taken off on the way in, and the
//! way out puts back the one the VM's own frame implies (to its MAC, from the MAC it sent
//! to: the router's, or the DHCP server's in the isolated case), so no ARP is ever needed.
//!
//! A connection belongs to the port its SYN came in on, and only segments from that port
//! reach it afterwards: a VM without port security that borrows a neighbour's address and
//! port cannot speak into the neighbour's connection.
//!
//! Everything here is non-blocking: the upstream sockets are `mio` streams tried once per
//! round of the slow-path thread, so a slow or absent metadata server costs a bounded
//! number of connections waiting on their timers, never a blocked thread.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::Ipv4Addr;
use std::time::Instant;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration as SmolDuration, Instant as SmolInstant};
use smoltcp::wire::{HardwareAddress, IpCidr};

use pollux_dataplane::port::PortId;
use pollux_dataplane::slowpath::{METADATA_ADDR, METADATA_PORT};

use super::http::{self, Identity, Request};
use super::sign::sign_instance_id;
use super::MetadataTable;

/// Receive buffer of a connection: a request beyond `max_request_bytes` is refused anyway,
/// and TCP flow control holds the rest back.
const RX_BUFFER: usize = 8192;
/// Send buffer of a connection: the answer streams through it as the VM acknowledges.
const TX_BUFFER: usize = 32 * 1024;
/// Bytes read from the metadata server at a time (held until the VM's send buffer takes
/// them: the server is read no faster than the VM reads).
const UPSTREAM_CHUNK: usize = 16 * 1024;
/// A VM that stops acknowledging (or vanishes) is given up on after this.
const SOCKET_TIMEOUT_SECS: u64 = 10;
/// Beyond its timers' sum, a connection is reset whatever it is doing.
const LINGER_SECS: u64 = 30;

/// Where a frame came from, and so where the answers to it go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The worker whose punt ring it came on (the one that holds the port).
    pub worker: usize,
    /// The VM port.
    pub port: PortId,
    /// The VM's MAC (the frame's source).
    pub vm_mac: [u8; 6],
    /// The MAC it sent to: answers come from it.
    pub our_mac: [u8; 6],
}

/// What happened to a frame or a connection, for the service's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Event {
    /// A connection was accepted.
    Accepted,
    /// A SYN was refused (reset): the port or the proxy holds its most connections.
    ConnectionLimit,
    /// A segment for another port's connection, dropped.
    ForeignSegment,
    /// A request went upstream.
    Proxied,
    /// The metadata server's whole answer went to the VM.
    Answered,
    /// A request refused with a 4xx/5xx of the proxy's own (bad, too large, ...).
    BadRequest,
    /// The VM did not send its whole request within `client_timeout` (408).
    ClientTimeout,
    /// The metadata server could not be reached (502).
    UpstreamError,
    /// The metadata server did not answer in time (504).
    UpstreamTimeout,
    /// The answer passed `max_response_bytes`, or broke off, after it had begun: reset.
    ResponseCut,
    /// The port has no identity (not a VM port the proxy knows): 404.
    UnknownPort,
}

impl Event {
    /// Every event, for pre-registering counters.
    pub const ALL: [Event; 11] = [
        Event::Accepted,
        Event::ConnectionLimit,
        Event::ForeignSegment,
        Event::Proxied,
        Event::Answered,
        Event::BadRequest,
        Event::ClientTimeout,
        Event::UpstreamError,
        Event::UpstreamTimeout,
        Event::ResponseCut,
        Event::UnknownPort,
    ];

    /// A stable snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Event::Accepted => "accepted",
            Event::ConnectionLimit => "connection_limit",
            Event::ForeignSegment => "foreign_segment",
            Event::Proxied => "proxied",
            Event::Answered => "answered",
            Event::BadRequest => "bad_request",
            Event::ClientTimeout => "client_timeout",
            Event::UpstreamError => "upstream_error",
            Event::UpstreamTimeout => "upstream_timeout",
            Event::ResponseCut => "response_cut",
            Event::UnknownPort => "unknown_port",
        }
    }
}

/// The device smoltcp polls: the one packet being fed in, the packets it sends.
#[derive(Debug, Default)]
struct Queue {
    rx: Option<Vec<u8>>,
    tx: Vec<Vec<u8>>,
}

struct RxBuf(Vec<u8>);
struct TxSlot<'a>(&'a mut Vec<Vec<u8>>);

impl smoltcp::phy::RxToken for RxBuf {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl smoltcp::phy::TxToken for TxSlot<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        self.0.push(buf);
        r
    }
}

impl Device for Queue {
    type RxToken<'a> = RxBuf;
    type TxToken<'a> = TxSlot<'a>;

    fn receive(&mut self, _now: SmolInstant) -> Option<(RxBuf, TxSlot<'_>)> {
        let packet = self.rx.take()?;
        Some((RxBuf(packet), TxSlot(&mut self.tx)))
    }

    fn transmit(&mut self, _now: SmolInstant) -> Option<TxSlot<'_>> {
        Some(TxSlot(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        // The worker carries frames of up to a ring slot; stay well inside any VM MTU a
        // network may have (the MSS follows from it).
        caps.max_transmission_unit = 1280;
        caps
    }
}

/// Where a connection is in its one request and answer.
enum Phase {
    /// Reading the request.
    Reading,
    /// Asking the metadata server.
    Upstream(Box<UpstreamConn>),
    /// Sending an answer of the proxy's own, then closing.
    Answering { answer: Vec<u8>, sent: usize },
    /// Closed on our side; waiting for the VM's end.
    Done,
}

struct UpstreamConn {
    stream: mio::net::TcpStream,
    connected: bool,
    request: Vec<u8>,
    written: usize,
    started: Instant,
    /// Read from the server, not yet in the VM's send buffer.
    pending: Vec<u8>,
    pending_at: usize,
    received: usize,
    eof: bool,
}

struct Conn {
    origin: Origin,
    /// The VM's address and port.
    remote: (Ipv4Addr, u16),
    opened: Instant,
    request: Vec<u8>,
    phase: Phase,
}

/// One network's stack.
pub struct Stack {
    iface: Interface,
    sockets: SocketSet<'static>,
    device: Queue,
    listener: Option<SocketHandle>,
    conns: HashMap<SocketHandle, Conn>,
    by_remote: HashMap<(Ipv4Addr, u16), SocketHandle>,
    epoch: Instant,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("connections", &self.conns.len())
            .finish()
    }
}

/// An IPv4 packet the stack sent, with where it goes.
#[derive(Debug)]
pub struct Outgoing {
    /// Where the VM is.
    pub origin: Origin,
    /// The packet.
    pub packet: Vec<u8>,
}

impl Stack {
    /// A stack answering at 169.254.169.254, created at `epoch` with `seed` for its
    /// initial sequence numbers.
    pub fn new(epoch: Instant, seed: u64) -> Stack {
        let mut device = Queue::default();
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = seed;
        let mut iface = Interface::new(config, &mut device, SmolInstant::from_micros(0));
        iface.update_ip_addrs(|addrs| {
            // Capacity for one address: the push cannot fail.
            let _ = addrs.push(IpCidr::new(METADATA_ADDR.into(), 32));
        });
        // Every VM is "elsewhere": one default route, whose gateway is never looked up
        // on an IP medium.
        let _ = iface
            .routes_mut()
            .add_default_ipv4_route(Ipv4Addr::new(169, 254, 169, 253));
        Stack {
            iface,
            sockets: SocketSet::new(Vec::new()),
            device,
            listener: None,
            conns: HashMap::new(),
            by_remote: HashMap::new(),
            epoch,
        }
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Open connections of `port`.
    pub fn connections_of(&self, port: PortId) -> usize {
        self.conns
            .values()
            .filter(|c| c.origin.port == port)
            .count()
    }

    fn now(&self, now: Instant) -> SmolInstant {
        SmolInstant::from_micros(now.saturating_duration_since(self.epoch).as_micros() as i64)
    }

    fn ensure_listener(&mut self) -> SocketHandle {
        if let Some(h) = self.listener {
            return h;
        }
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; RX_BUFFER]),
            tcp::SocketBuffer::new(vec![0; TX_BUFFER]),
        );
        socket.set_timeout(Some(SmolDuration::from_secs(SOCKET_TIMEOUT_SECS)));
        // A fresh socket listens on a valid endpoint: this cannot fail.
        let _ = socket.listen(METADATA_PORT);
        let h = self.sockets.add(socket);
        self.listener = Some(h);
        h
    }

    /// Feeds one IPv4 `packet` from `origin` (`open` says whether a new connection may be
    /// accepted: the limits are the caller's). Returns the event it caused, if any.
    pub fn input(
        &mut self,
        origin: Origin,
        packet: &[u8],
        open: bool,
        now: Instant,
        out: &mut Vec<Outgoing>,
    ) -> Option<Event> {
        let (src, sport, syn) = tcp_of(packet)?;
        let mut event = None;
        match self.by_remote.get(&(src, sport)) {
            Some(h)
                if self
                    .conns
                    .get(h)
                    .is_some_and(|c| c.origin.port != origin.port) =>
            {
                return Some(Event::ForeignSegment);
            }
            Some(_) => {}
            None if syn && !open => {
                // No listener while this SYN is read: smoltcp resets it, so the VM
                // hears "refused" at once rather than retrying into a full proxy.
                if let Some(h) = self.listener.take() {
                    self.sockets.remove(h);
                }
                event = Some(Event::ConnectionLimit);
            }
            None if syn => {
                self.ensure_listener();
            }
            None => {}
        }
        self.device.rx = Some(packet.to_vec());
        let ts = self.now(now);
        self.iface.poll(ts, &mut self.device, &mut self.sockets);
        if let Some(h) = self.listener {
            let socket = self.sockets.get::<tcp::Socket>(h);
            if socket.state() != tcp::State::Listen {
                // The SYN took the listener: it is this connection from now on.
                self.listener = None;
                self.conns.insert(
                    h,
                    Conn {
                        origin,
                        remote: (src, sport),
                        opened: now,
                        request: Vec::new(),
                        phase: Phase::Reading,
                    },
                );
                self.by_remote.insert((src, sport), h);
                event = Some(Event::Accepted);
            }
        }
        self.collect(Some(origin), out);
        event
    }

    /// Moves every connection on (requests read, upstream driven, answers written,
    /// timers), then lets smoltcp send. Returns what happened.
    pub fn poll(
        &mut self,
        table: &MetadataTable,
        network_id: &str,
        now: Instant,
        out: &mut Vec<Outgoing>,
        events: &mut Vec<Event>,
    ) {
        let ts = self.now(now);
        self.iface.poll(ts, &mut self.device, &mut self.sockets);
        let handles: Vec<SocketHandle> = self.conns.keys().copied().collect();
        for h in handles {
            let Some(conn) = self.conns.get_mut(&h) else {
                continue;
            };
            let socket = self.sockets.get_mut::<tcp::Socket>(h);
            let gone = matches!(socket.state(), tcp::State::Closed | tcp::State::TimeWait);
            let limits = &table.limits;
            let lifetime = limits.client_timeout
                + limits.connect_timeout
                + limits.response_timeout
                + std::time::Duration::from_secs(LINGER_SECS);
            if gone || now.saturating_duration_since(conn.opened) > lifetime {
                socket.abort();
                continue;
            }
            drive(conn, socket, table, network_id, now, events);
        }
        self.iface.poll(ts, &mut self.device, &mut self.sockets);
        // Sockets that reached their end (and the aborted, once their reset went out).
        let ended: Vec<SocketHandle> = self
            .conns
            .keys()
            .copied()
            .filter(|&h| {
                matches!(
                    self.sockets.get::<tcp::Socket>(h).state(),
                    tcp::State::Closed | tcp::State::TimeWait
                )
            })
            .collect();
        self.collect(None, out);
        for h in ended {
            if let Some(conn) = self.conns.remove(&h) {
                self.by_remote.remove(&conn.remote);
            }
            self.sockets.remove(h);
        }
    }

    /// The packets smoltcp sent, each with where its VM is: the connection's origin, or
    /// for a reset to a segment that has none, the origin of the packet just fed.
    fn collect(&mut self, fed: Option<Origin>, out: &mut Vec<Outgoing>) {
        for packet in self.device.tx.drain(..) {
            let origin = dst_of(&packet)
                .and_then(|key| self.by_remote.get(&key))
                .and_then(|h| self.conns.get(h))
                .map(|c| c.origin)
                .or(fed);
            if let Some(origin) = origin {
                out.push(Outgoing { origin, packet });
            }
        }
    }
}

/// Moves one connection on.
fn drive(
    conn: &mut Conn,
    socket: &mut tcp::Socket<'_>,
    table: &MetadataTable,
    network_id: &str,
    now: Instant,
    events: &mut Vec<Event>,
) {
    let limits = &table.limits;
    if let Phase::Reading = conn.phase {
        let mut chunk = [0u8; 2048];
        while socket.can_recv() && conn.request.len() < limits.max_request_bytes {
            let room = (limits.max_request_bytes - conn.request.len()).min(chunk.len());
            match socket.recv_slice(&mut chunk[..room]) {
                Ok(0) | Err(_) => break,
                Ok(n) => conn.request.extend_from_slice(&chunk[..n]),
            }
        }
        match http::parse_request(&conn.request, limits.max_request_bytes) {
            Ok(Some(req)) => {
                conn.phase = start_upstream(conn, &req, table, network_id, now, events);
            }
            Ok(None) if socket.state() == tcp::State::CloseWait => {
                // The VM closed its side before the request was whole (`may_recv` is
                // false before the handshake ends too: not a close).
                socket.close();
                conn.phase = Phase::Done;
            }
            Ok(None) => {
                if now.saturating_duration_since(conn.opened) > limits.client_timeout {
                    events.push(Event::ClientTimeout);
                    conn.phase = answer(408);
                }
            }
            Err(e) => {
                events.push(Event::BadRequest);
                conn.phase = answer(e.status());
            }
        }
    }
    if let Phase::Upstream(up) = &mut conn.phase {
        if let Some(next) = drive_upstream(up, socket, table, now, events) {
            conn.phase = next;
        }
    }
    if let Phase::Answering { answer, sent } = &mut conn.phase {
        if let Ok(n) = socket.send_slice(&answer[*sent..]) {
            *sent += n;
        }
        if *sent == answer.len() {
            socket.close();
            conn.phase = Phase::Done;
        }
    }
}

fn answer(status: u16) -> Phase {
    Phase::Answering {
        answer: http::error_response(status),
        sent: 0,
    }
}

/// Opens the connection to the metadata server for `req`, or the error answer.
fn start_upstream(
    conn: &Conn,
    req: &Request,
    table: &MetadataTable,
    network_id: &str,
    now: Instant,
    events: &mut Vec<Event>,
) -> Phase {
    let Some(upstream) = &table.upstream else {
        events.push(Event::UpstreamError);
        return answer(503);
    };
    let Some(port) = table.ports.get(&conn.origin.port) else {
        events.push(Event::UnknownPort);
        return answer(404);
    };
    let Some(address) = port.forwarded_for(conn.remote.0) else {
        events.push(Event::UnknownPort);
        return answer(404);
    };
    let via = table
        .networks
        .get(&port.network)
        .and_then(|n| {
            n.routers
                .iter()
                .find(|(mac, _)| *mac == conn.origin.our_mac)
        })
        .map_or(("X-Neutron-Network-ID", network_id), |(_, id)| {
            ("X-Neutron-Router-ID", id.as_str())
        });
    let signature = sign_instance_id(upstream.secret.as_bytes(), &port.device_id);
    let who = Identity {
        address,
        instance_id: &port.device_id,
        project_id: &port.project_id,
        signature: &signature,
        via,
    };
    let request = http::upstream_request(req, &who, &upstream.addr.to_string());
    match mio::net::TcpStream::connect(upstream.addr) {
        Ok(stream) => {
            events.push(Event::Proxied);
            Phase::Upstream(Box::new(UpstreamConn {
                stream,
                connected: false,
                request,
                written: 0,
                started: now,
                pending: Vec::new(),
                pending_at: 0,
                received: 0,
                eof: false,
            }))
        }
        Err(_) => {
            events.push(Event::UpstreamError);
            answer(502)
        }
    }
}

/// Moves the exchange with the metadata server on; `Some(phase)` when it ended.
fn drive_upstream(
    up: &mut UpstreamConn,
    socket: &mut tcp::Socket<'_>,
    table: &MetadataTable,
    now: Instant,
    events: &mut Vec<Event>,
) -> Option<Phase> {
    let limits = &table.limits;
    let waited = now.saturating_duration_since(up.started);
    // Fails the exchange: an error answer while the VM has had nothing, else a reset.
    let fail = |socket: &mut tcp::Socket<'_>, received: usize, status: u16| {
        if received == 0 {
            Some(answer(status))
        } else {
            socket.abort();
            Some(Phase::Done)
        }
    };
    if !up.connected {
        match up.stream.take_error() {
            Ok(Some(_)) | Err(_) => {
                events.push(Event::UpstreamError);
                return fail(socket, 0, 502);
            }
            Ok(None) => {}
        }
        match up.stream.peer_addr() {
            Ok(_) => up.connected = true,
            Err(e) if e.kind() == ErrorKind::NotConnected => {
                if waited > limits.connect_timeout {
                    events.push(Event::UpstreamError);
                    return fail(socket, 0, 502);
                }
                return None;
            }
            Err(_) => {
                events.push(Event::UpstreamError);
                return fail(socket, 0, 502);
            }
        }
    }
    while up.written < up.request.len() {
        match up.stream.write(&up.request[up.written..]) {
            Ok(n) => up.written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                events.push(Event::UpstreamError);
                return fail(socket, up.received, 502);
            }
        }
    }
    loop {
        if up.pending_at < up.pending.len() {
            match socket.send_slice(&up.pending[up.pending_at..]) {
                Ok(n) => up.pending_at += n,
                Err(_) => {
                    // The VM is gone; its socket's state ends the connection.
                    return Some(Phase::Done);
                }
            }
            if up.pending_at < up.pending.len() {
                break;
            }
        }
        if up.eof {
            events.push(Event::Answered);
            socket.close();
            return Some(Phase::Done);
        }
        up.pending.resize(UPSTREAM_CHUNK, 0);
        up.pending_at = 0;
        match up.stream.read(&mut up.pending) {
            Ok(0) => {
                up.pending.clear();
                up.eof = true;
            }
            Ok(n) => {
                up.pending.truncate(n);
                up.received += n;
                if up.received > limits.max_response_bytes {
                    events.push(Event::ResponseCut);
                    socket.abort();
                    return Some(Phase::Done);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                up.pending.clear();
                break;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => up.pending.clear(),
            Err(_) => {
                up.pending.clear();
                let received = up.received;
                events.push(if received == 0 {
                    Event::UpstreamError
                } else {
                    Event::ResponseCut
                });
                return fail(socket, received, 502);
            }
        }
    }
    if waited > limits.response_timeout {
        events.push(if up.received == 0 {
            Event::UpstreamTimeout
        } else {
            Event::ResponseCut
        });
        return fail(socket, up.received, 504);
    }
    None
}

/// The source address and port of a TCP segment, and whether it is a SYN (without ACK).
fn tcp_of(packet: &[u8]) -> Option<(Ipv4Addr, u16, bool)> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    if packet.get(9) != Some(&6) {
        return None;
    }
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let tcp = packet.get(ihl..ihl + 14)?;
    let flags = tcp[13];
    Some((
        src,
        u16::from_be_bytes([tcp[0], tcp[1]]),
        flags & 0x12 == 0x02,
    ))
}

/// The destination address and port of a TCP segment.
fn dst_of(packet: &[u8]) -> Option<(Ipv4Addr, u16)> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    let dst = packet.get(16..20)?;
    let tcp = packet.get(ihl..ihl + 4)?;
    Some((
        Ipv4Addr::new(dst[0], dst[1], dst[2], dst[3]),
        u16::from_be_bytes([tcp[2], tcp[3]]),
    ))
}
