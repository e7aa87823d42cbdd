//! The metadata proxy as a slow-path service: frames punted with
//! [`ServiceId::METADATA`] feed the network's [`Stack`]; every round of the slow-path
//! thread moves the connections on and hands their packets, as Ethernet frames, to the
//! inject ring of the worker that holds the VM's port.
//!
//! The control thread only swaps the [`MetadataTable`] (what the desired state says);
//! the stacks, their sockets and their upstream connections live on the slow-path thread
//! alone, so nothing here locks.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use pollux_dataplane::slowpath::{RingHeader, ServiceId, MAX_RING_FRAME, RING_HEADER_LEN};
use pollux_dataplane::snapshot::NetworkUid;

use super::stack::{Event, Origin, Outgoing, Stack};
use super::MetadataTable;

/// Bytes of the Ethernet header put in front of the stack's IPv4 packets.
const ETHERNET_HEADER: usize = 14;

#[derive(Debug, Default)]
struct Counters {
    events: [AtomicU64; Event::ALL.len()],
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    frames_lost: AtomicU64,
    /// Punted frames the proxy could not take: malformed, or for a network it does not
    /// serve (a configuration change on the way).
    frames_ignored: AtomicU64,
    open_connections: AtomicU64,
}

/// The proxy's counters (`stats.get` → `metadata`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetadataStats {
    /// By name: each [`Event`], and `frames_in`, `frames_out`, `frames_lost` (the inject
    /// ring was full), `frames_ignored`, `open_connections` (a gauge).
    pub counts: BTreeMap<&'static str, u64>,
}

/// The proxy as the control thread holds it.
#[derive(Debug)]
pub struct MetadataService {
    table: Arc<ArcSwap<MetadataTable>>,
    counters: Arc<Counters>,
}

impl MetadataService {
    /// A proxy serving `table`; frames reach it once its [`MetadataService::punt_handler`]
    /// is registered with the slow-path thread (there is one handler).
    pub fn new(table: MetadataTable) -> MetadataService {
        MetadataService {
            table: Arc::new(ArcSwap::from_pointee(table)),
            counters: Arc::new(Counters::default()),
        }
    }

    /// Serves `table` from now on (connections already open keep going).
    pub fn reconfigure(&self, table: MetadataTable) {
        self.table.store(Arc::new(table));
    }

    /// The table served.
    pub fn table(&self) -> Arc<MetadataTable> {
        self.table.load_full()
    }

    /// The handler to register with the slow-path thread.
    pub fn punt_handler(&self) -> MetadataPunt {
        MetadataPunt {
            table: Arc::clone(&self.table),
            counters: Arc::clone(&self.counters),
            stacks: HashMap::new(),
            epoch: Instant::now(),
            seed: RandomState::new().hash_one(0u8),
            out: Vec::new(),
            queued: Vec::new(),
            events: Vec::new(),
            entry: Vec::with_capacity(MAX_RING_FRAME + RING_HEADER_LEN),
        }
    }

    /// The counters.
    pub fn stats(&self) -> MetadataStats {
        stats_of(&self.counters)
    }

    /// A function that reads the counters, for the metrics endpoint's thread.
    pub fn stats_fn(&self) -> impl Fn() -> MetadataStats + Send + Sync + 'static {
        let counters = Arc::clone(&self.counters);
        move || stats_of(&counters)
    }
}

fn stats_of(c: &Counters) -> MetadataStats {
    let mut counts = BTreeMap::new();
    for (event, n) in Event::ALL.iter().zip(&c.events) {
        counts.insert(event.as_str(), n.load(Ordering::Relaxed));
    }
    for (name, n) in [
        ("frames_in", &c.frames_in),
        ("frames_out", &c.frames_out),
        ("frames_lost", &c.frames_lost),
        ("frames_ignored", &c.frames_ignored),
        ("open_connections", &c.open_connections),
    ] {
        counts.insert(name, n.load(Ordering::Relaxed));
    }
    MetadataStats { counts }
}

/// The proxy's side of the slow path, on the slow-path thread.
pub struct MetadataPunt {
    table: Arc<ArcSwap<MetadataTable>>,
    counters: Arc<Counters>,
    stacks: HashMap<NetworkUid, Stack>,
    epoch: Instant,
    seed: u64,
    out: Vec<Outgoing>,
    /// Packets made while frames were fed, sent at the next poll.
    queued: Vec<(NetworkUid, Outgoing)>,
    events: Vec<Event>,
    entry: Vec<u8>,
}

impl std::fmt::Debug for MetadataPunt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataPunt")
            .field("stacks", &self.stacks.len())
            .finish()
    }
}

impl MetadataPunt {
    fn count(&self, event: Event) {
        let i = Event::ALL.iter().position(|e| *e == event).unwrap_or(0);
        self.counters.events[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Feeds one punt ring entry that came from `worker`.
    fn take(&mut self, worker: usize, entry: &[u8]) -> bool {
        let Some((header, frame)) = RingHeader::read(entry) else {
            return false;
        };
        let table = self.table.load();
        if table.upstream.is_none() || !table.networks.contains_key(&header.network) {
            return false;
        }
        let l3 = usize::from(header.l3_offset);
        let (Some(eth), Some(ip)) = (frame.get(..12), frame.get(l3..)) else {
            return false;
        };
        // Trim the Ethernet padding of short frames: the stack reads the IP length.
        let total = ip
            .get(2..4)
            .map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
        let Some(packet) = ip.get(..total) else {
            return false;
        };
        let mut vm_mac = [0u8; 6];
        let mut our_mac = [0u8; 6];
        our_mac.copy_from_slice(&eth[..6]);
        vm_mac.copy_from_slice(&eth[6..12]);
        let origin = Origin {
            worker,
            port: header.port,
            vm_mac,
            our_mac,
        };
        let limits = table.limits;
        let total_open: usize = self.stacks.values().map(Stack::connections).sum();
        let (epoch, seed) = (self.epoch, self.seed ^ u64::from(header.network.0));
        let stack = self
            .stacks
            .entry(header.network)
            .or_insert_with(|| Stack::new(epoch, seed));
        let open = total_open < limits.max_connections
            && stack.connections_of(header.port) < limits.max_connections_per_port;
        if let Some(event) = stack.input(origin, packet, open, Instant::now(), &mut self.out) {
            self.count(event);
        }
        let uid = header.network;
        self.queued.extend(self.out.drain(..).map(|o| (uid, o)));
        true
    }
}

impl crate::dispatch::PuntService for MetadataPunt {
    fn id(&self) -> ServiceId {
        ServiceId::METADATA
    }

    fn handle(&mut self, entry: &[u8], reply: &mut Vec<u8>) -> bool {
        self.handle_on(0, entry, reply)
    }

    fn handle_on(&mut self, worker: usize, entry: &[u8], _reply: &mut Vec<u8>) -> bool {
        self.counters.frames_in.fetch_add(1, Ordering::Relaxed);
        if !self.take(worker, entry) {
            self.counters.frames_ignored.fetch_add(1, Ordering::Relaxed);
        }
        // Answers go out from `poll`, with the frames the connections make on their own.
        false
    }

    fn replied(&mut self, _sent: bool) {}

    fn poll(&mut self, send: &mut dyn FnMut(usize, &[u8]) -> bool) -> bool {
        // What the frames fed since the last round made (SYN-ACKs, resets) goes first.
        for (uid, o) in std::mem::take(&mut self.queued) {
            emit(uid, &o, &mut self.entry, &self.counters, send);
        }
        let table = self.table.load_full();
        let now = Instant::now();
        self.stacks
            .retain(|uid, stack| stack.connections() > 0 || table.networks.contains_key(uid));
        let mut open = 0;
        for (uid, stack) in &mut self.stacks {
            if stack.connections() == 0 {
                continue;
            }
            let network_id = table
                .networks
                .get(uid)
                .map_or("", |n| n.network_id.as_str());
            stack.poll(&table, network_id, now, &mut self.out, &mut self.events);
            open += stack.connections();
            for o in self.out.drain(..) {
                emit(*uid, &o, &mut self.entry, &self.counters, send);
            }
        }
        for event in std::mem::take(&mut self.events) {
            self.count(event);
        }
        self.counters
            .open_connections
            .store(open as u64, Ordering::Relaxed);
        open > 0
    }
}

/// Sends one of the stack's packets for network `uid`, as a frame from the MAC the VM
/// sent to, on the inject ring of the worker that holds its port.
fn emit(
    uid: NetworkUid,
    o: &Outgoing,
    entry: &mut Vec<u8>,
    counters: &Counters,
    send: &mut dyn FnMut(usize, &[u8]) -> bool,
) {
    if o.packet.len() + ETHERNET_HEADER > MAX_RING_FRAME {
        counters.frames_lost.fetch_add(1, Ordering::Relaxed);
        return;
    }
    entry.clear();
    entry.resize(RING_HEADER_LEN, 0);
    RingHeader {
        port: o.origin.port,
        network: uid,
        service: ServiceId::METADATA,
        l3_offset: 0,
    }
    .write(entry);
    entry.extend_from_slice(&o.origin.vm_mac);
    entry.extend_from_slice(&o.origin.our_mac);
    entry.extend_from_slice(&[0x08, 0x00]);
    entry.extend_from_slice(&o.packet);
    let counter = if send(o.origin.worker, entry) {
        &counters.frames_out
    } else {
        &counters.frames_lost
    };
    counter.fetch_add(1, Ordering::Relaxed);
}
