//! The Pollux data plane: everything a worker does to a packet.
//!
//! This crate performs no I/O, spawns no threads and makes no system calls, so every
//! part of it can be exercised from byte arrays in tests. Drivers implement [`port::Port`]
//! and the control crate composes workers, ports and snapshots into a running switch.
//!
//! A packet's path: a driver's `rx_burst` fills a [`packet::Batch`] with frames from the
//! worker's [`buf::FramePool`]; [`classify`] parses the L2 headers once and picks the
//! network; [`l2`] learns and picks the output; [`slowpath`] hands DHCP to the control
//! plane through a punt ring (and sends its replies from the inject ring); [`l3`] routes;
//! [`output`] encapsulates, replicates and batches per output port; the port's
//! `tx_burst` takes the frames. Every frame ends in exactly one of: sent, consumed (taken
//! by the worker or the slow path), or dropped with a [`drop::DropReason`].

pub mod buf;
pub mod classify;
pub mod conntrack;
pub mod counters;
pub mod drop;
pub mod flow_owner;
pub mod frag;
pub mod gso;
pub mod handoff;
pub mod icmp_error;
pub mod ident;
pub mod l2;
pub mod l3;
pub mod lpm;
pub mod metering;
pub mod offload;
pub mod output;
pub mod overlay;
pub mod packet;
pub mod pipeline;
pub mod port;
pub mod port_security;
pub mod publish;
pub mod qos;
pub mod ratelimit;
pub mod ring;
pub mod routing;
pub mod secgroup;
pub mod slowpath;
pub mod snapshot;
mod table;
pub mod trunk;
pub mod wire;
pub mod worker;
