//! Why a packet was dropped. Every drop names one of these, and each has a counter.

use std::fmt;

macro_rules! drop_reasons {
    ($($variant:ident => $name:literal, $help:literal;)*) => {
        /// The reason a packet left the pipeline without being sent.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum DropReason {
            $(#[doc = $help] $variant,)*
        }

        impl DropReason {
            /// Every reason, in counter order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)*];
            /// Number of reasons (the length of a per-reason counter array).
            pub const COUNT: usize = Self::ALL.len();

            /// Stable snake_case name, used in metrics labels and the CLI.
            pub const fn name(self) -> &'static str {
                match self { $(DropReason::$variant => $name,)* }
            }

            /// One-line explanation for humans.
            pub const fn help(self) -> &'static str {
                match self { $(DropReason::$variant => $help,)* }
            }
        }
    };
}

drop_reasons! {
    Runt => "runt", "Frame shorter than an Ethernet header.";
    TruncatedVlan => "truncated_vlan", "802.1Q tag announced but the frame ends inside it.";
    StackedVlan => "stacked_vlan", "QinQ (0x88a8) or a second 802.1Q tag: no network is mapped to stacked tags.";
    SrcMacMulticast => "src_mac_multicast", "Source MAC is a group address, which no station may send from.";
    PortNotConfigured => "port_not_configured", "Received on a port the active configuration does not have.";
    TaggedOnAccess => "tagged_on_access", "802.1Q-tagged frame on a VM port (VLAN transparency is off).";
    UnknownVlan => "unknown_vlan", "Tagged frame on an uplink whose VLAN ID no network of its physnet uses.";
    NoFlatNetwork => "no_flat_network", "Untagged frame on an uplink whose physnet has no flat network.";
    Hairpin => "hairpin", "Destination MAC is behind the port the frame came in on.";
    NoFloodTargets => "no_flood_targets", "Flooded frame in a network with no other port.";
    NoBuffers => "no_buffers", "Frame pool empty when a flooded frame needed a copy.";
    NoHeadroom => "no_headroom", "No room in front of the frame to push a VLAN tag.";
    PortNotAttached => "port_not_attached", "Output port is configured but this worker has no driver for it.";
    TxRingFull => "tx_ring_full", "Output port did not accept the frame (transmit ring full).";
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_indices_dense() {
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }
}
