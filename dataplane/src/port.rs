//! The interface every driver implements.

use crate::buf::{FrameId, FramePool};
use crate::packet::{Batch, Packet};

pub use crate::ident::PortId;

/// Counters a driver keeps about its own queues (what the pipeline cannot see).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Frames handed to the pipeline.
    pub rx_packets: u64,
    /// Bytes handed to the pipeline.
    pub rx_bytes: u64,
    /// Frames the driver dropped before the pipeline saw them (e.g. larger than a frame).
    pub rx_dropped: u64,
    /// Frames the driver accepted for transmission.
    pub tx_packets: u64,
    /// Bytes the driver accepted for transmission.
    pub tx_bytes: u64,
    /// Driver-specific counters (kernel socket statistics and the like), by name.
    pub extra: Vec<(&'static str, u64)>,
}

/// A port driver: a source and sink of frames for one worker.
///
/// Frames live in the worker's [`FramePool`]. `rx_burst` fills frames from the pool (or
/// hands over frames the hardware already filled) and `tx_burst` takes ownership of the
/// frames it accepts, returning them to the pool when their transmission has completed.
pub trait Port: Send {
    /// Name for logs and the CLI (usually the kernel interface).
    fn name(&self) -> &str;

    /// Receives up to `batch.remaining()` frames from `queue` into `batch` and returns how
    /// many it added. Never blocks.
    fn rx_burst(&mut self, queue: u16, pool: &mut FramePool, batch: &mut Batch) -> usize;

    /// Queues a prefix of `pkts` for transmission on `queue` and returns its length. The
    /// port owns the frames of that prefix from now on; the caller keeps the rest.
    fn tx_burst(&mut self, queue: u16, pool: &mut FramePool, pkts: &[Packet]) -> usize;

    /// Whether the port takes TCP super-frames whole (a TAP port that negotiated TSO): the
    /// output stage segments them for every port that does not (see [`crate::gso`]).
    fn takes_gso(&self) -> bool {
        false
    }

    /// Periodic work off the per-packet path: reaping transmit completions, refilling
    /// receive rings, reading kernel statistics. Called every few microseconds when busy
    /// and on every idle loop.
    fn housekeeping(&mut self, _pool: &mut FramePool) {}

    /// Driver counters.
    fn stats(&self) -> PortStats;

    /// Returns every frame the port holds to `pool` (used before the worker stops).
    fn release_frames(&mut self, _pool: &mut FramePool) {}

    /// Closes the port away from the worker, which has already let go of it (see
    /// `Worker::take_port`): releases kernel resources, which may sleep (closing an AF_XDP
    /// socket waits for an RCU grace period), and returns the pool frames the port still
    /// held, for the worker to take back (`Worker::free_frames`). A port that holds no
    /// frames between calls, like the default, returns none.
    fn close(&mut self) -> Vec<FrameId> {
        Vec::new()
    }
}
