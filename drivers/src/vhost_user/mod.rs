//! The `vhost-user` driver: VMs' virtio-net devices plugged in without the kernel.
//!
//! - `memory`: the guest memory the front end shares, mapped and bounds-checked;
//! - `ring`: a split virtqueue over it, every guest value checked;
//! - `mailbox`: what the protocol thread and the worker share (commands, acknowledgement,
//!   status);
//! - `backend`: the protocol (rust-vmm's `vhost` crate) on a thread per port;
//! - `port`: the worker's [`Port`](pollux_dataplane::port::Port).

pub mod backend;
pub mod mailbox;
pub mod memory;
pub mod port;
pub mod ring;

pub use backend::{Mode, VhostUserBackend};
pub use mailbox::{Mailbox, Status};
pub use port::{VhostUserPort, MAX_FRAME};
