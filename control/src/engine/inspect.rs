//! Reads of the running data plane for the socket's list methods: the FDB, neighbours,
//! NAT sessions, driver statistics and DHCP leases. Reads of the worker's tables run on
//! the worker as a job, between two passes.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::mpsc;

use pollux_dataplane::conntrack::{ConnKey, Dir, FlowKey, Session, TcpState};
use pollux_dataplane::l3::Neighbor;
use pollux_dataplane::l3::REACHABLE_SECS;
use pollux_dataplane::port::PortId;
use pollux_dataplane::secgroup::zone_port;
use pollux_dataplane::worker::{Mailbox, Worker};

use super::{ApplyError, Engine, WORKER_TIMEOUT};
use pollux_services::addr::fmt_mac;
use pollux_services::dhcp::service::{LeaseRow, ServiceStats};
use pollux_services::dispatch::DispatchStats;

impl Engine {
    /// Learned and static FDB entries: (network id, MAC, port key, learned, age in
    /// seconds). Learned entries come from the worker's table, read by a job.
    pub fn fdb(&self) -> Result<Vec<FdbEntry>, ApplyError> {
        // Each worker learns on its own: a MAC several learned is shown once, as the
        // worker that saw it last has it.
        let mut latest = BTreeMap::new();
        for (now, entries) in self.call_each(|w| {
            let entries: Vec<_> = w.macs().entries().collect();
            (w.now_secs(), entries)
        })? {
            for (key, entry) in entries {
                let (slot, mac) = (key.slot(), key.packed_mac());
                let age = now.saturating_sub(entry.seen);
                match latest.get(&(entry.uid, mac)) {
                    Some(&(_, _, a)) if a <= age => {}
                    _ => {
                        latest.insert((entry.uid, mac), (slot, entry, age));
                    }
                }
            }
        }
        let networks = self.active.identities.networks_by_uid();
        let ports = self.active.identities.ports_by_id();
        let snap = self.publisher.current();
        let mut out = Vec::new();
        for (key, port) in snap.static_macs() {
            let Some(net) = snap.network(key.slot()) else {
                continue;
            };
            if let (Some(&network_id), Some(&port)) = (networks.get(&net.uid.0), ports.get(&port.0))
            {
                out.push(FdbEntry {
                    network_id: network_id.to_string(),
                    mac: fmt_mac(key.mac().0),
                    port: port.to_string(),
                    learned: false,
                    age_secs: 0,
                });
            }
        }
        for ((_, mac), (_, entry, age_secs)) in latest {
            // Entries left by a removed network or port age out; they are not shown.
            if let (Some(&network_id), Some(&port)) =
                (networks.get(&entry.uid), ports.get(&entry.port.0))
            {
                out.push(FdbEntry {
                    network_id: network_id.to_string(),
                    mac: fmt_mac(mac.octets()),
                    port: port.to_string(),
                    learned: true,
                    age_secs,
                });
            }
        }
        out.sort_by(|a, b| (&a.network_id, &a.mac).cmp(&(&b.network_id, &b.mac)));
        Ok(out)
    }

    /// The routers' neighbours (ARP entries) as the worker holds them, read by a job,
    /// sorted by network and address. Entries of removed networks are not shown (they age
    /// out).
    pub fn neighbors(&self) -> Result<Vec<NeighborEntry>, ApplyError> {
        // Workers tell each other what ARP taught them, so their tables agree but for
        // entries still being asked for: each neighbour is shown once, the most
        // recently confirmed.
        let mut latest = BTreeMap::new();
        let mut now = 0;
        for (worker_now, entries) in self.call_each(|w| {
            let entries: Vec<_> = w.router().neighbors().entries().collect();
            (w.now_secs(), entries)
        })? {
            now = now.max(worker_now);
            for (uid, ip, n) in entries {
                let better =
                    latest
                        .get(&(uid.0, ip))
                        .is_none_or(|(_, _, old): &(_, _, Neighbor)| {
                            (n.mac().is_some(), n.confirmed) > (old.mac().is_some(), old.confirmed)
                        });
                if better {
                    latest.insert((uid.0, ip), (uid, ip, n));
                }
            }
        }
        let networks = self.active.identities.networks_by_uid();
        let mut out: Vec<NeighborEntry> = latest
            .into_values()
            .filter_map(|(uid, ip, n)| {
                let network_id = networks.get(&uid.0)?.to_string();
                let age_secs = now.saturating_sub(n.confirmed);
                let state = match n.mac() {
                    None => NeighborState::Incomplete,
                    Some(_) if age_secs >= REACHABLE_SECS => NeighborState::Stale,
                    Some(_) => NeighborState::Reachable,
                };
                Some(NeighborEntry {
                    network_id,
                    ip: Ipv4Addr::from(ip),
                    mac: n.mac().map(|m| fmt_mac(m.octets())),
                    state,
                    age_secs,
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.network_id, a.ip).cmp(&(&b.network_id, b.ip)));
        Ok(out)
    }

    /// The connections the worker tracks (live ones), read by a job, sorted by zone and
    /// original flow: the routers' NAT sessions and the security groups' connections.
    /// Those of removed routers and ports are not shown.
    pub fn sessions(&self) -> Result<Vec<SessionEntry>, ApplyError> {
        let per_worker = self.call_each(|w| {
            let now = u64::from(w.now_secs());
            let mut rows: Vec<SessionRow> = w
                .sessions()
                .iter()
                .filter(|(_, s)| !s.is_expired(now))
                .map(|(_, s)| SessionRow::of(s, |k| (k.zone, SessionFlow::from(*k))))
                .collect();
            rows.extend(
                w.sessions6()
                    .iter()
                    .filter(|(_, s)| !s.is_expired(now))
                    .map(|(_, s)| SessionRow::of(s, |k| (k.zone, SessionFlow::from(*k)))),
            );
            (now, rows)
        })?;
        let now = per_worker.iter().map(|(n, _)| *n).max().unwrap_or(0);
        let sessions = per_worker.into_iter().flat_map(|(_, rows)| rows);
        let routers = self.active.identities.routers_by_uid();
        let ports = self.active.identities.ports_by_id();
        let mut out: Vec<SessionEntry> = sessions
            .filter_map(|s| {
                let (zone, router_id) = match zone_port(s.zone) {
                    Some(port) => (ports.get(&port.0)?.to_string(), None),
                    None => {
                        let id = routers.get(&s.zone)?.to_string();
                        (format!("router:{id}"), Some(id))
                    }
                };
                let owner = u16::try_from(s.owner).ok();
                Some(SessionEntry {
                    zone,
                    router_id,
                    port: owner.and_then(|p| ports.get(&p)).map(|k| k.to_string()),
                    original: s.original,
                    reply: s.reply,
                    state: s.state,
                    idle_secs: now.saturating_sub(s.last_seen),
                    expires_in_secs: s.expires.saturating_sub(now),
                    packets: s.packets,
                    bytes: s.bytes,
                })
            })
            .collect();
        out.sort_by_key(|e| {
            let k = e.original;
            (e.zone.clone(), k.proto, k.src, k.sport, k.dst, k.dport)
        });
        Ok(out)
    }

    /// Every open port's driver name (its interface, for AF_XDP) and driver statistics,
    /// read by a job.
    pub fn driver_stats(&self) -> Result<Vec<DriverStats>, ApplyError> {
        // A port whose queues are on several workers has a part on each: one row, its
        // counters summed.
        let mut rows: BTreeMap<PortId, DriverStats> = BTreeMap::new();
        for parts in self.call_each(|w| {
            w.ports()
                .iter()
                .map(|(id, p)| DriverStats {
                    id,
                    name: p.name().to_string(),
                    extra: p.stats().extra,
                })
                .collect::<Vec<_>>()
        })? {
            for part in parts {
                match rows.get_mut(&part.id) {
                    None => {
                        rows.insert(part.id, part);
                    }
                    Some(row) => {
                        for (key, value) in part.extra {
                            match row.extra.iter_mut().find(|(k, _)| *k == key) {
                                Some((_, v)) => *v += value,
                                None => row.extra.push((key, value)),
                            }
                        }
                    }
                }
            }
        }
        Ok(rows.into_values().collect())
    }

    /// Every DHCP lease, by network id then address.
    pub fn leases(&self) -> Vec<LeaseRow> {
        self.dhcp.as_ref().map(|d| d.leases()).unwrap_or_default()
    }

    /// The DHCP server's counters.
    pub fn metadata_stats(&self) -> pollux_services::metadata::MetadataStats {
        self.metadata.stats()
    }

    /// The DHCP service's counters.
    pub fn dhcp_stats(&self) -> ServiceStats {
        self.dhcp.as_ref().map(|d| d.stats()).unwrap_or_default()
    }

    /// The slow-path thread's counters, per service.
    pub fn slow_path_stats(&self) -> DispatchStats {
        self.slow_path
            .as_ref()
            .map(|s| s.stats())
            .unwrap_or_default()
    }

    /// Worker `worker`'s mailbox, for work that outlives one request (a capture's end).
    pub(crate) fn mailbox_on(&self, worker: u16) -> Mailbox {
        self.workers[usize::from(worker)].mailbox.clone()
    }

    /// Runs `f` on worker `worker`'s thread and returns its result.
    pub(crate) fn call_on<R: Send + 'static>(
        &self,
        worker: u16,
        f: impl FnOnce(&mut Worker) -> R + Send + 'static,
    ) -> Result<R, ApplyError> {
        let link = self
            .workers
            .get(usize::from(worker))
            .ok_or_else(|| ApplyError::Internal(format!("no worker {worker}")))?;
        let (tx, rx) = mpsc::sync_channel(1);
        link.mailbox
            .post(move |w| {
                let _ = tx.send(f(w));
            })
            .map_err(|e| ApplyError::Internal(e.to_string()))?;
        rx.recv_timeout(WORKER_TIMEOUT).map_err(|_| {
            ApplyError::Internal(format!(
                "worker {worker} did not answer within {WORKER_TIMEOUT:?}"
            ))
        })
    }

    /// Runs `f` on every worker, in worker order; their results.
    pub(crate) fn call_each<R: Send + 'static>(
        &self,
        f: impl Fn(&mut Worker) -> R + Send + Clone + 'static,
    ) -> Result<Vec<R>, ApplyError> {
        (0..self.workers.len() as u16)
            .map(|w| self.call_on(w, f.clone()))
            .collect()
    }
}

/// One FDB entry for `fdb.list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdbEntry {
    /// The network.
    pub network_id: String,
    /// The MAC (`fa:16:3e:00:00:01`).
    pub mac: String,
    /// The port key (`port:ID`, `uplink:NAME`).
    pub port: String,
    /// Learned (true) or a VM port's own MAC (false).
    pub learned: bool,
    /// Seconds since last seen (learned entries).
    pub age_secs: u32,
}

/// How sure the router is of a neighbour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NeighborState {
    /// Asked for, no answer yet.
    Incomplete,
    /// Confirmed recently.
    Reachable,
    /// Still used, being asked again.
    Stale,
}

impl NeighborState {
    /// The name `neighbors.list` uses.
    pub fn name(self) -> &'static str {
        match self {
            NeighborState::Incomplete => "incomplete",
            NeighborState::Reachable => "reachable",
            NeighborState::Stale => "stale",
        }
    }
}

/// One neighbour for `neighbors.list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeighborEntry {
    /// The network.
    pub network_id: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its MAC, once resolved.
    pub mac: Option<String>,
    /// Resolution state.
    pub state: NeighborState,
    /// Seconds since it last confirmed its address.
    pub age_secs: u32,
}

/// One NAT session for `sessions.list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionEntry {
    /// Its conntrack zone: `router:ID` (a NAT session) or `port:ID` (a security-group
    /// connection of that VM port).
    pub zone: String,
    /// The router translating it (NAT sessions).
    pub router_id: Option<String>,
    /// The port that opened it (`port:ID`), if it still exists.
    pub port: Option<String>,
    /// The flow as its first packet arrived.
    pub original: SessionFlow,
    /// The flow as replies carry it (after translation).
    pub reply: SessionFlow,
    /// TCP state (TCP only).
    pub state: Option<&'static str>,
    /// Seconds since the last packet.
    pub idle_secs: u64,
    /// Seconds until it times out unless a packet comes.
    pub expires_in_secs: u64,
    /// Packets as originated, and as replied.
    pub packets: [u64; 2],
    /// Bytes as originated, and as replied.
    pub bytes: [u64; 2],
}

/// What the job copies out of a session of either table.
struct SessionRow {
    zone: u32,
    original: SessionFlow,
    reply: SessionFlow,
    owner: u32,
    state: Option<&'static str>,
    last_seen: u64,
    expires: u64,
    packets: [u64; 2],
    bytes: [u64; 2],
}

impl SessionRow {
    fn of<K: ConnKey>(s: &Session<K>, flow: impl Fn(&K) -> (u32, SessionFlow)) -> Self {
        let (zone, original) = flow(s.key(Dir::Original));
        let (_, reply) = flow(s.key(Dir::Reply));
        SessionRow {
            zone,
            original,
            reply,
            owner: s.owner(),
            state: s.tcp_state().map(TcpState::name),
            last_seen: s.last_seen(),
            expires: s.expires(),
            packets: [s.packets(Dir::Original), s.packets(Dir::Reply)],
            bytes: [s.bytes(Dir::Original), s.bytes(Dir::Reply)],
        }
    }
}

/// One direction of a listed connection, IPv4 or IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionFlow {
    /// IP protocol number.
    pub proto: u8,
    /// Source address.
    pub src: std::net::IpAddr,
    /// Source port (ICMP: identifier).
    pub sport: u16,
    /// Destination address.
    pub dst: std::net::IpAddr,
    /// Destination port (ICMP: identifier).
    pub dport: u16,
}

impl From<FlowKey> for SessionFlow {
    fn from(k: FlowKey) -> Self {
        SessionFlow {
            proto: k.proto,
            src: std::net::Ipv4Addr::from(k.src).into(),
            sport: k.sport,
            dst: std::net::Ipv4Addr::from(k.dst).into(),
            dport: k.dport,
        }
    }
}

impl From<pollux_dataplane::conntrack::FlowKey6> for SessionFlow {
    fn from(k: pollux_dataplane::conntrack::FlowKey6) -> Self {
        SessionFlow {
            proto: k.proto,
            src: std::net::Ipv6Addr::from(k.src).into(),
            sport: k.sport,
            dst: std::net::Ipv6Addr::from(k.dst).into(),
            dport: k.dport,
        }
    }
}

/// One port's driver statistics.
#[derive(Clone, Debug)]
pub struct DriverStats {
    /// The port.
    pub id: PortId,
    /// The driver's name for it (the interface of an AF_XDP port).
    pub name: String,
    /// Driver counters by name.
    pub extra: Vec<(&'static str, u64)>,
}
