//! Port drivers: implementations of [`pollux_dataplane::port::Port`].
//!
//! Drivers know kernels, sockets and rings; they know nothing of networks or routers.

pub mod bpf;
pub mod mem;
pub mod netdev;
pub mod tap;
pub mod vhost_user;
pub mod xdp;
pub mod xsk;
