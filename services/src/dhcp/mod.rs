//! The protocol core of the built-in DHCPv4 server (RFC 2131, options from RFC 2132 and
//! RFC 3442), which replaces Neutron's DHCP agent and its dnsmasq per network.
//!
//! - `wire`: a zero-copy view of a DHCP message and a builder that writes a reply into a
//!   caller's buffer.
//! - `server`: [`DhcpServer`], the state machine, fed one message at a time with the time
//!   supplied by the caller, answering with the bytes and where to send them.
//! - `leases`: the lease table, its expiry and its persistence (the only I/O here).
//! - `options`: the options a port may add (`extra_dhcp_opts`), by dnsmasq's names, and
//!   their encodings.
//! - `service`: the thread that serves every network's server on the punt/inject rings.
//!
//! Each network's [`DhcpConfig`] is compiled from the validated desired state by
//! `pollux_control::compile::dhcp`.
//!
//! Neutron allocates addresses itself, so the server mostly hands each known MAC its fixed
//! IP; serving unknown MACs from the rest of the subnet is opt-in per subnet.

pub mod leases;
pub mod options;
pub mod server;
pub mod service;

pub use leases::{Lease, LeaseError, LeaseInfo, LeaseState, LeaseTable};
pub use pollux_dataplane::wire::dhcp::{DhcpError, DhcpPacket, Message, MessageType, ReplyBuilder};
pub use server::{
    DhcpConfig, DhcpServer, DhcpStats, ExtraOption, HostConfig, HostRoute, Reply, SubnetConfig,
};

/// Why a message got no reply. Every malformed or unwanted input ends as one of these, so
/// the caller can count drops by reason; protocol outcomes that are silent by design
/// (RELEASE, DECLINE, a REQUEST choosing another server) are `Ok(None)` instead.
///
/// Not called `Drop`, which would shadow the prelude's `Drop` wherever it is imported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Discard {
    /// Shorter than the fixed header and magic cookie (240 bytes).
    Truncated,
    /// Longer than any DHCP message a client on this link may send.
    Oversized,
    /// `op` is not BOOTREQUEST: a server or relay reply looped back, or garbage.
    NotBootRequest,
    /// `htype`/`hlen` are not Ethernet's (1/6): the hardware address cannot be a MAC.
    BadHardwareType,
    /// The client hardware address is a multicast, broadcast or all-zero MAC.
    BadClientMac,
    /// The magic cookie is not 99.130.83.99: BOOTP or not DHCP at all.
    BadMagicCookie,
    /// An option's length byte or value runs past the end of the message.
    OptionTruncated,
    /// The options end without the End option (255).
    MissingEnd,
    /// An option the server reads has the wrong length (message type, addresses, ...).
    BadOptionLength,
    /// No DHCP message type option (53): a plain BOOTP request, not served.
    MissingMessageType,
    /// A message type a client does not send (OFFER, ACK, ...) or an unknown one.
    UnexpectedMessageType,
    /// Arrived through a relay agent (`giaddr` set); Neutron networks have none.
    Relayed,
    /// The sender's budget (per client or global) is spent.
    RateLimited,
    /// The MAC has no host entry and no lease, and its subnet serves only known MACs.
    UnknownClient,
    /// The host's address is in none of the configured subnets.
    NoSubnet,
    /// A subnet serving unknown MACs has no free address left.
    PoolExhausted,
    /// A REQUEST in no RFC 2131 state, a DECLINE without an address, an INFORM without
    /// `ciaddr`.
    BadRequest,
    /// The mandatory options did not fit the client's maximum message size.
    ReplyTooLarge,
    /// `chaddr` is another port's MAC (or a dynamic client of another port): a VM
    /// speaking in someone else's name.
    ForeignClient,
    /// The port's clients already hold `[dhcp] leases_per_port` dynamic leases.
    PortLeaseLimit,
}

impl Discard {
    /// Every reason, for pre-registering counters.
    pub const ALL: [Discard; 20] = [
        Discard::Truncated,
        Discard::Oversized,
        Discard::NotBootRequest,
        Discard::BadHardwareType,
        Discard::BadClientMac,
        Discard::BadMagicCookie,
        Discard::OptionTruncated,
        Discard::MissingEnd,
        Discard::BadOptionLength,
        Discard::MissingMessageType,
        Discard::UnexpectedMessageType,
        Discard::Relayed,
        Discard::RateLimited,
        Discard::UnknownClient,
        Discard::NoSubnet,
        Discard::PoolExhausted,
        Discard::BadRequest,
        Discard::ReplyTooLarge,
        Discard::ForeignClient,
        Discard::PortLeaseLimit,
    ];

    /// A stable snake_case name, for metric labels and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Discard::Truncated => "truncated",
            Discard::Oversized => "oversized",
            Discard::NotBootRequest => "not_boot_request",
            Discard::BadHardwareType => "bad_hardware_type",
            Discard::BadClientMac => "bad_client_mac",
            Discard::BadMagicCookie => "bad_magic_cookie",
            Discard::OptionTruncated => "option_truncated",
            Discard::MissingEnd => "missing_end",
            Discard::BadOptionLength => "bad_option_length",
            Discard::MissingMessageType => "missing_message_type",
            Discard::UnexpectedMessageType => "unexpected_message_type",
            Discard::Relayed => "relayed",
            Discard::RateLimited => "rate_limited",
            Discard::UnknownClient => "unknown_client",
            Discard::NoSubnet => "no_subnet",
            Discard::PoolExhausted => "pool_exhausted",
            Discard::BadRequest => "bad_request",
            Discard::ReplyTooLarge => "reply_too_large",
            Discard::ForeignClient => "foreign_client",
            Discard::PortLeaseLimit => "port_lease_limit",
        }
    }
}

impl std::fmt::Display for Discard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<DhcpError> for Discard {
    fn from(e: DhcpError) -> Self {
        match e {
            DhcpError::Truncated => Discard::Truncated,
            DhcpError::Oversized => Discard::Oversized,
            DhcpError::BadHardwareType => Discard::BadHardwareType,
            DhcpError::BadMagicCookie => Discard::BadMagicCookie,
            DhcpError::OptionTruncated => Discard::OptionTruncated,
            DhcpError::MissingEnd => Discard::MissingEnd,
            DhcpError::BadOptionLength => Discard::BadOptionLength,
            DhcpError::MissingMessageType => Discard::MissingMessageType,
            DhcpError::UnexpectedMessageType => Discard::UnexpectedMessageType,
        }
    }
}
