//! The `tap` driver: a port on a Linux tap device, as Open vSwitch's userspace
//! `type=tap` ports, read and written in batches through io_uring.
//!
//! - [`device`]: attaching to (or creating) the tap and setting its queue up.
//! - [`vnet`]: the virtio-net header in front of every frame.
//! - [`slots`]: the ledger of which buffer the kernel owns.
//! - [`queue`]: io_uring, the buffers, cancel and drain on close.
//! - [`rx`]: the verdict on a completed read (frame, retry, or drop with a reason).
//! - [`port`]: the [`pollux_dataplane::port::Port`] implementation and its counters.

pub mod device;
pub mod port;
pub mod queue;
pub mod rx;
pub mod slots;
pub mod vnet;

pub use device::{Origin, TapDevice};
pub use port::{TapPort, TapPortConfig};
