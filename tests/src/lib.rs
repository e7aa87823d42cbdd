//! Helpers shared by the Pollux integration tests and benchmarks: frame builders, an
//! in-memory switch (one worker, `mem` ports, a publisher) that a test drives by hand, a
//! `polluxd` wrapper, and `vm_lab` (namespaces as VMs plugged into polluxd's namespace). The namespace kit (namespaces, probes, DHCP clients, the Open
//! vSwitch peer) is `pollux-testkit`, re-exported here under its old paths.

pub mod daemon;
pub mod etcd;
pub mod frames;
pub mod harness;
pub mod neutron_iptables;
pub mod port_lab;
pub mod router_lab;
pub mod sg_matrix;
pub mod vm_lab;
pub mod workers;

pub use pollux_testkit::{dhcp, netns, ovs};
