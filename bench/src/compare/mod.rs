//! `pollux-bench compare`: RFC 2544 throughput (NDR, PDR) and latency of Pollux, a bare
//! AF_XDP forwarder on Pollux's driver, Open vSwitch (afxdp), OVN on it, the Linux bridge
//! or router and an XDP redirect (the ceiling) on one veth
//! topology, in one run, with one generator and one CPU placement. See bench/README.md,
//! "Benchmark harness".

pub mod dut;
pub mod frame;
pub mod ovn;
pub mod pacing;
pub mod placement;
pub mod pvp_traffic;
pub mod report;
pub mod run;
pub mod scenario;
pub mod search;
pub mod seq;
pub mod sys;
pub mod throughput;
pub mod topology;
pub mod traffic;
pub mod vhost_duts;
pub mod vhost_front;
pub mod xsk_fwd;
