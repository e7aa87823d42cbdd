//! The metadata proxy (Neutron's metadata agent and its haproxy, in one): a VM's TCP
//! connection to 169.254.169.254:80 ends in a userspace TCP/IP stack here, and its HTTP
//! request goes on to the configured metadata server (Nova's) with the instance's
//! identity, taken from the port the request came in on.
//!
//! - `http`: the request parser (bounded, one request per connection), the upstream
//!   request with Neutron's headers, the error answers.
//! - `sign`: `X-Instance-ID-Signature`, HMAC-SHA256 of the instance id.
//! - `stack`: one smoltcp interface per network (its own address space: two networks may
//!   hold the same VM address), its connections and their upstream sockets.
//! - `service`: the slow-path service: punted frames in, frames to inject out, driven by
//!   the `pollux-slowpath` thread without ever blocking it.
//!
//! What the proxy knows of the desired state ([`MetadataTable`]) is compiled by
//! `pollux_control` and swapped in whole on every change.

pub mod http;
pub mod service;
pub mod sign;
pub mod stack;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use pollux_dataplane::port::PortId;
use pollux_dataplane::snapshot::NetworkUid;

pub use service::{MetadataPunt, MetadataService, MetadataStats};

/// The proxy's bounds (`[metadata]` in the desired state).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open connections in all.
    pub max_connections: usize,
    /// Open connections of one port.
    pub max_connections_per_port: usize,
    /// Bytes of a request (head and body).
    pub max_request_bytes: usize,
    /// Bytes of an answer from the metadata server; a longer one is cut (the VM sees a
    /// reset).
    pub max_response_bytes: usize,
    /// How long a VM has to send its whole request (408 after).
    pub client_timeout: Duration,
    /// How long the metadata server has to accept the connection (502 after).
    pub connect_timeout: Duration,
    /// How long the metadata server has to finish its answer once asked (504 when
    /// nothing came yet; a reset when the answer had begun).
    pub response_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_connections_per_port: 16,
            max_request_bytes: 8192,
            max_response_bytes: 1 << 20,
            client_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(30),
        }
    }
}

/// Where requests go and how they are signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// The metadata server (`nova_metadata_host`, `nova_metadata_port`).
    pub addr: SocketAddr,
    /// `metadata_proxy_shared_secret`.
    pub secret: String,
}

/// A network the proxy serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkMetadata {
    /// The network's id (`X-Neutron-Network-ID` in the isolated case).
    pub network_id: String,
    /// The routers with an interface on it: their MAC and id. A request sent to one of
    /// these MACs names that router (`X-Neutron-Router-ID`), and its answer comes from it.
    pub routers: Vec<([u8; 6], String)>,
}

/// Who a VM port is, for the headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortIdentity {
    /// Its network.
    pub network: NetworkUid,
    /// `device_id`: the instance.
    pub device_id: String,
    /// `project_id`.
    pub project_id: String,
    /// Its fixed IPv4 addresses, in order.
    pub fixed_ips: Vec<Ipv4Addr>,
}

/// Everything the proxy knows of the desired state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetadataTable {
    /// The metadata server; `None` when `[metadata]` is not configured (nothing is
    /// punted then, and whatever is gets reset).
    pub upstream: Option<Upstream>,
    /// The bounds.
    pub limits: Limits,
    /// The networks served, by stable identity.
    pub networks: HashMap<NetworkUid, NetworkMetadata>,
    /// The VM ports of those networks.
    pub ports: HashMap<PortId, PortIdentity>,
}

impl PortIdentity {
    /// The address to name in `X-Forwarded-For`: the one the VM used when it is one of the
    /// port's (port security has already vouched for it), else the port's first.
    pub fn forwarded_for(&self, source: Ipv4Addr) -> Option<Ipv4Addr> {
        if self.fixed_ips.contains(&source) {
            Some(source)
        } else {
            self.fixed_ips.first().copied()
        }
    }
}
