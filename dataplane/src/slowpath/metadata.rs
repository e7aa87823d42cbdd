//! The metadata proxy's entry in the slow path: TCP to 169.254.169.254:80 from a VM port.
//!
//! Two ways reach it, both decided when the snapshot is built so that a network without
//! the proxy pays nothing: on a network a router serves, frames to the router's MAC go
//! through the slow-path stage first (the snapshot's `metadata_via_router`), which takes
//! the metadata ones before routing (Neutron's `qrouter` redirect); on a network whose
//! DHCP server carries the proxy (Neutron's isolated metadata, the VM routed to it by DHCP
//! option 121), its service table lists the metadata match beside DHCP's.

use std::net::Ipv4Addr;

use crate::drop::DropReason;
use crate::port::PortId;
use crate::snapshot::{PortRole, Snapshot};
use crate::wire::IpProtocol;

use super::service::{ServiceId, ServiceKind, ServiceMatch};

/// The metadata address every cloud image asks.
pub const METADATA_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// Its HTTP port.
pub const METADATA_PORT: u16 = 80;

/// What the metadata proxy takes: TCP to 169.254.169.254:80, and nothing else.
pub const MATCH: ServiceMatch = ServiceMatch {
    protocol: IpProtocol::TCP,
    dst_port: METADATA_PORT,
    dst_addr: Some(METADATA_ADDR),
};

/// The metadata proxy's line in [`super::service::SERVICES`].
pub const KIND: ServiceKind = ServiceKind {
    id: ServiceId::METADATA,
    name: "metadata",
    admit,
    rate_limited: DropReason::MetadataRateLimited,
};

/// Only a VM port has an instance behind it: the proxy names the instance by the port a
/// request came in on, so a frame from an uplink or a tunnel has no identity to proxy with.
fn admit(
    snap: &Snapshot,
    _slot: crate::ident::NetworkSlot,
    port: PortId,
    _l3: &[u8],
) -> Option<DropReason> {
    match snap.port(port) {
        PortRole::Access { .. } => None,
        _ => Some(DropReason::MetadataNotFromVm),
    }
}
