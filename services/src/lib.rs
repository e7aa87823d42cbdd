//! Slow-path services of Pollux: protocols above the data plane, served on the control side
//! of the workers' punt/inject rings. `dispatch` is the thread that drains the rings and
//! hands each frame to the service its ring header names; today the one service is the
//! DHCP server (`dhcp`) and the metadata proxy (`metadata`).
//!
//! The design's rule: this crate knows protocols, never drivers; it depends on
//! `pollux-dataplane` (rings, wire formats, identities) and nothing else of Pollux.
//! `pollux-control` composes it.
//!
//! Underneath: `addr` parses and prints addresses (IPv4, prefixes, MACs, DNS names) for
//! every crate that reads or prints them, `private_fs` creates the files only polluxd may
//! read (lease files here, the state directory in `control`), and `log` is the daemon's log.

pub mod addr;
pub mod dhcp;
pub mod dispatch;
pub mod log;
pub mod metadata;
pub mod private_fs;
