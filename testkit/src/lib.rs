//! The test kit that the end-to-end tests (`pollux-tests`) and the benchmark harness
//! (`pollux-bench compare`) share: network namespaces and topologies deleted on drop,
//! processes killed and reaped on drop, bounded probes (`ping`, `arping`, `iperf3`,
//! `tcpdump`, DHCP clients), a private Open vSwitch peer and temporary directories.
//!
//! It knows nothing of Pollux (no dependency on its crates), so the harness and shell
//! scripts can use it without building test code; everything Pollux-specific (frame
//! builders, the in-memory switch, the `polluxd` wrapper) stays in `pollux-tests`.

pub mod dhcp;
pub mod netns;
pub mod ovs;
pub mod packet_socket;
pub mod signal;
pub mod tempdir;
pub mod thread_stop;

pub use tempdir::TempDir;
