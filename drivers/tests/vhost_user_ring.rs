//! The vhost-user port against a guest played by this test: rings and buffers written
//! into a shared memfd, as a virtio-net driver would, honest and hostile. A hostile chain
//! (loop, out-of-range address or index, oversized, indirect, an available index running
//! ahead) gives up its queue with a counter and never panics; honest frames cross byte
//! for byte in both directions, with mergeable buffers, and no pool frame leaks.

use std::sync::Arc;
use std::time::Duration;

use pollux_dataplane::buf::FramePool;
use pollux_dataplane::packet::{Batch, Packet};
use pollux_dataplane::port::Port;
use pollux_drivers::vhost_user::mailbox::{Command, Device, Mailbox, QueueSetup};
use pollux_drivers::vhost_user::memory::{GuestMemory, RegionSpec};
use pollux_drivers::vhost_user::{VhostUserPort, MAX_FRAME};
use proptest::prelude::*;

mod vu_guest;

/// Counts this thread's allocations, so the tests can check that bursts make none.
struct CountingAlloc;

thread_local! {
    static ALLOCATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

// SAFETY: defers every operation to the system allocator unchanged; the thread-local
// counter is const-initialised, so touching it never allocates (no recursion).
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded with the caller's own guarantees.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: forwarded with the caller's own guarantees.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Runs `f` and returns its result and how many allocations this thread made meanwhile.
fn counting<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let before = ALLOCATIONS.with(|c| c.get());
    let out = f();
    (out, ALLOCATIONS.with(|c| c.get()) - before)
}

use vu_guest::*;

/// A port with both queues started on `guest`'s rings.
fn started(guest: &Guest, mergeable: bool, pool: &mut FramePool) -> (VhostUserPort, Arc<Mailbox>) {
    started_with_err(guest, mergeable, pool, None)
}

/// An eventfd (non-blocking), as the front end passes for errors.
fn eventfd() -> std::fs::File {
    use std::os::fd::FromRawFd;
    // SAFETY: plain eventfd(2); the descriptor is owned by the File from here.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK) };
    assert!(fd >= 0);
    // SAFETY: `fd` is fresh and owned by nobody else.
    unsafe { std::fs::File::from_raw_fd(fd) }
}

/// As [`started`], the transmit queue with error eventfd `tx_err`.
fn started_with_err(
    guest: &Guest,
    mergeable: bool,
    pool: &mut FramePool,
    tx_err: Option<std::fs::File>,
) -> (VhostUserPort, Arc<Mailbox>) {
    started_as(guest, mergeable, false, pool, tx_err)
}

/// As [`started_with_err`], with `VIRTIO_RING_F_INDIRECT_DESC` negotiated or not.
fn started_as(
    guest: &Guest,
    mergeable: bool,
    indirect: bool,
    pool: &mut FramePool,
    tx_err: Option<std::fs::File>,
) -> (VhostUserPort, Arc<Mailbox>) {
    let mailbox = Mailbox::new();
    let mut port = VhostUserPort::new("vu-test", Arc::clone(&mailbox));
    let setup = |q| QueueSetup {
        addrs: Guest::addrs(q),
        base: 0,
        call: None,
        err: None,
    };
    let mut tx = setup(1);
    tx.err = tx_err;
    let dev = Device {
        mem: guest.memory(),
        queues: vec![Some(setup(0)), Some(tx)],
        hdr_len: HDR,
        mergeable,
        event_idx: false,
        indirect,
    };
    // Not acknowledged yet: the port takes it on its next housekeeping.
    assert!(!mailbox.send(Command::Start(Arc::new(dev)), Duration::ZERO));
    port.housekeeping(pool);
    (port, mailbox)
}

fn extra(port: &VhostUserPort, name: &str) -> u64 {
    port.stats()
        .extra
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(0, |(_, v)| *v)
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

/// The guest sends `bytes` (after a zeroed header) as one chain of one descriptor.
fn guest_sends(g: &mut Guest, i: u16, bytes: &[u8]) {
    let addr = BUF + 0x1000 * u64::from(i);
    let mut buf = vec![0u8; HDR];
    buf.extend_from_slice(bytes);
    g.write(addr, &buf);
    g.desc(1, i, GPA + addr, buf.len() as u32, 0, 0);
    g.make_available(1, i);
}

/// Every packet of a receive burst, whole (a chain's segments joined), freed after.
fn rx_all(port: &mut VhostUserPort, pool: &mut FramePool) -> Vec<Vec<u8>> {
    let mut batch = Batch::with_capacity(64);
    port.rx_burst(0, pool, &mut batch);
    let out = batch
        .as_slice()
        .iter()
        .map(|p| pool.segments(p).flatten().copied().collect())
        .collect();
    for p in batch.as_slice() {
        pool.free(p.frame);
    }
    out
}

#[test]
fn frames_from_the_guest_arrive_byte_for_byte() {
    let mut g = Guest::new();
    let mut pool = FramePool::with_frames(256).unwrap();
    let (mut port, _mb) = started(&g, true, &mut pool);
    let frames: Vec<Vec<u8>> = (0..5).map(|i| frame(60 + 100 * i, i as u8)).collect();
    for (i, f) in frames.iter().enumerate() {
        guest_sends(&mut g, i as u16, f);
    }
    // A chain in two descriptors: header alone, then the frame.
    let two = frame(1000, 99);
    g.desc(1, 10, GPA + BUF + 0x20000, HDR as u32, 1, 11);
    g.write(BUF + 0x21000, &two);
    g.desc(1, 11, GPA + BUF + 0x21000, two.len() as u32, 0, 0);
    g.make_available(1, 10);
    let got = rx_all(&mut port, &mut pool);
    let mut want = frames.clone();
    want.push(two);
    assert_eq!(got, want);
    assert_eq!(g.used_idx(1), 6);
    assert_eq!(g.used(1, 5).0, 10);
    assert_eq!(port.stats().rx_packets, 6);
    assert_eq!(pool.available(), 256);
    assert_eq!(extra(&port, "broken_queues"), 0);
}

/// A port moves between workers (`polluxd`'s `workers.pin`, `workers.rebalance`): it
/// goes to another thread with another frame pool between two bursts and carries on
/// where it stopped, holding no frame of the first pool.
#[test]
fn a_port_moved_to_another_thread_and_pool_carries_on() {
    let mut g = Guest::new();
    let mut pool_a = FramePool::with_frames(256).unwrap();
    let (mut port, _mb) = started(&g, true, &mut pool_a);
    let frames: Vec<Vec<u8>> = (0..6).map(|i| frame(60 + 90 * i, i as u8)).collect();
    for (i, f) in frames[..3].iter().enumerate() {
        guest_sends(&mut g, i as u16, f);
    }
    assert_eq!(rx_all(&mut port, &mut pool_a), frames[..3].to_vec());
    port.housekeeping(&mut pool_a);
    assert_eq!(
        pool_a.available(),
        256,
        "the port holds none of the first pool"
    );
    for (i, f) in frames[3..].iter().enumerate() {
        guest_sends(&mut g, 3 + i as u16, f);
    }
    let (got, back) = std::thread::spawn(move || {
        let mut pool_b = FramePool::with_frames(256).unwrap();
        port.housekeeping(&mut pool_b);
        let got = rx_all(&mut port, &mut pool_b);
        assert_eq!(pool_b.available(), 256);
        (got, port)
    })
    .join()
    .expect("the second thread");
    assert_eq!(
        got,
        frames[3..].to_vec(),
        "the rest, in order, on the new thread"
    );
    assert_eq!(g.used_idx(1), 6);
    assert_eq!(back.stats().rx_packets, 6);
    assert_eq!(extra(&back, "broken_queues"), 0);
}

#[test]
fn frames_to_the_guest_fill_its_buffers_and_merge_when_small() {
    let mut g = Guest::new();
    let mut pool = FramePool::with_frames(64).unwrap();
    let (mut port, _mb) = started(&g, true, &mut pool);
    // One big buffer, then three small ones.
    g.desc(0, 0, GPA + BUF, 2048, 2, 0);
    g.make_available(0, 0);
    for i in 1..4u16 {
        g.desc(0, i, GPA + BUF + 0x1000 * u64::from(i), 64, 2, 0);
        g.make_available(0, i);
    }
    let (a, b) = (frame(1514, 1), frame(150, 2));
    let pkts: Vec<Packet> = [&a, &b]
        .iter()
        .map(|f| {
            let (id, off) = pool.alloc_with(f).unwrap();
            Packet::received(id, off, f.len() as u16)
        })
        .collect();
    assert_eq!(port.tx_burst(0, &mut pool, &pkts), 2);
    assert_eq!(pool.available(), 64, "the port frees what it took");
    assert_eq!(g.used_idx(0), 4);
    assert_eq!(g.used(0, 0), (0, (HDR + a.len()) as u32));
    let hdr = g.read(BUF, HDR);
    assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 1, "num_buffers");
    assert_eq!(g.read(BUF + HDR as u64, a.len()), a);
    // 12 + 150 bytes over 64 + 64 + 34.
    assert_eq!(g.used(0, 1), (1, 64));
    assert_eq!(g.used(0, 2), (2, 64));
    assert_eq!(g.used(0, 3), (3, 34));
    let hdr = g.read(BUF + 0x1000, HDR);
    assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 3, "num_buffers");
    let mut got = g.read(BUF + 0x1000 + HDR as u64, 64 - HDR);
    got.extend(g.read(BUF + 0x2000, 64));
    got.extend(g.read(BUF + 0x3000, 34));
    assert_eq!(got, b);
    assert_eq!(port.stats().tx_packets, 2);
    // No buffer left: the next frame is refused (the caller keeps it).
    let (id, off) = pool.alloc_with(&a).unwrap();
    assert_eq!(
        port.tx_burst(0, &mut pool, &[Packet::received(id, off, 60)]),
        0
    );
    assert_eq!(extra(&port, "tx_no_buffers"), 1);
    pool.free(id);
}

#[test]
fn bursts_allocate_nothing() {
    let mut g = Guest::new();
    let mut pool = FramePool::with_frames(256).unwrap();
    let (mut port, _mb) = started(&g, true, &mut pool);
    for i in 0..64u16 {
        guest_sends(&mut g, i, &frame(100, i as u8));
        g.desc(0, i, GPA + BUF + 0x80000 + 0x800 * u64::from(i), 2048, 2, 0);
        g.make_available(0, i);
    }
    let mut batch = Batch::with_capacity(64);
    let (got, allocs) = counting(|| port.rx_burst(0, &mut pool, &mut batch));
    assert_eq!((got, allocs), (64, 0));
    let pkts: Vec<Packet> = batch.as_slice().to_vec();
    let (sent, allocs) = counting(|| port.tx_burst(0, &mut pool, &pkts));
    assert_eq!((sent, allocs), (64, 0));
    let (_, allocs) = counting(|| port.housekeeping(&mut pool));
    assert_eq!(allocs, 0);
    assert_eq!(g.used_idx(0), 64);
    assert_eq!(pool.available(), 256);
}

/// Builds a hostile transmit queue with `hostile`, then checks the port gives it up
/// with a counter, hands over no frame, leaks none and keeps refusing quietly.
fn assert_broken(hostile: impl FnOnce(&mut Guest)) {
    assert_broken_as(false, hostile)
}

/// As [`assert_broken`], with indirect descriptors negotiated or not.
fn assert_broken_as(indirect: bool, hostile: impl FnOnce(&mut Guest)) {
    let mut g = Guest::new();
    let mut pool = FramePool::with_frames(64).unwrap();
    let err = eventfd();
    let (mut port, mailbox) = started_as(
        &g,
        true,
        indirect,
        &mut pool,
        Some(err.try_clone().unwrap()),
    );
    hostile(&mut g);
    assert!(rx_all(&mut port, &mut pool).is_empty());
    assert_eq!(extra(&port, "broken_queues"), 1);
    let mut told = [0u8; 8];
    assert_eq!(
        std::io::Read::read(&mut &err, &mut told).unwrap(),
        8,
        "the front end's error eventfd was not signalled"
    );
    assert_eq!(u64::from_ne_bytes(told), 1);
    assert_eq!(mailbox.broken(), 1);
    assert_eq!(pool.available(), 64);
    // Given up: later bursts do nothing, even with an honest chain.
    guest_sends(&mut g, 50, &frame(60, 0));
    assert!(rx_all(&mut port, &mut pool).is_empty());
    assert_eq!(extra(&port, "broken_queues"), 1);
}

#[test]
fn a_descriptor_loop_breaks_the_queue() {
    assert_broken(|g| {
        g.desc(1, 0, GPA + BUF, 100, 1, 1);
        g.desc(1, 1, GPA + BUF, 100, 1, 0);
        g.make_available(1, 0);
    });
}

#[test]
fn a_self_loop_breaks_the_queue() {
    assert_broken(|g| {
        g.desc(1, 7, GPA + BUF, 100, 1, 7);
        g.make_available(1, 7);
    });
}

#[test]
fn an_address_outside_guest_memory_breaks_the_queue() {
    assert_broken(|g| {
        g.desc(1, 0, GPA + SIZE as u64 - 10, 100, 0, 0);
        g.make_available(1, 0);
    });
}

#[test]
fn an_address_below_guest_memory_breaks_the_queue() {
    assert_broken(|g| {
        g.desc(1, 0, 0x100, 100, 0, 0);
        g.make_available(1, 0);
    });
}

#[test]
fn a_head_beyond_the_table_breaks_the_queue() {
    assert_broken(|g| g.make_available(1, QSIZE));
}

#[test]
fn a_next_beyond_the_table_breaks_the_queue() {
    assert_broken(|g| {
        g.desc(1, 0, GPA + BUF, 100, 1, 60000);
        g.make_available(1, 0);
    });
}

#[test]
fn an_oversized_chain_breaks_the_queue() {
    assert_broken(|g| {
        for i in 0..100u16 {
            g.desc(1, i, GPA + BUF + u64::from(i), 1, 1, i + 1);
        }
        g.make_available(1, 0);
    });
}

#[test]
fn an_indirect_descriptor_breaks_the_queue() {
    assert_broken(|g| {
        g.desc(1, 0, GPA + BUF, 32, 4, 0);
        g.make_available(1, 0);
    });
}

/// Where the tests put indirect tables (guest offset).
const TABLE: u64 = BUF + 0x40000;

/// Writes an indirect table of `descs` (addr, len, flags, next) at guest offset `at`.
fn table(g: &Guest, at: u64, descs: &[(u64, u32, u16, u16)]) {
    for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        g.write(at + 16 * i as u64, &d);
    }
}

/// Head 0 of the transmit queue points to an indirect table at `TABLE` of `len` bytes
/// holding `descs`, and is made available.
fn indirect_head(g: &mut Guest, len: u32, descs: &[(u64, u32, u16, u16)]) {
    table(g, TABLE, descs);
    g.desc(1, 0, GPA + TABLE, len, 4, 0);
    g.make_available(1, 0);
}

#[test]
fn indirect_chains_cross_byte_for_byte_both_ways() {
    let mut g = Guest::new();
    let mut pool = FramePool::with_frames(64).unwrap();
    let (mut port, _mb) = started_as(&g, true, true, &mut pool, None);
    // From the guest: header and frame in two descriptors of a table, then the same
    // from a table that is not even 8-aligned, then a direct chain.
    let (a, b, c) = (frame(700, 1), frame(64, 2), frame(90, 3));
    g.write(BUF, &[0; HDR]);
    g.write(BUF + 0x1000, &a);
    indirect_head(
        &mut g,
        32,
        &[
            (GPA + BUF, HDR as u32, 1, 1),
            (GPA + BUF + 0x1000, a.len() as u32, 0, 0),
        ],
    );
    let mut one = vec![0u8; HDR];
    one.extend_from_slice(&b);
    g.write(BUF + 0x6000, &one);
    table(
        &g,
        TABLE + 0x103,
        &[(GPA + BUF + 0x6000, one.len() as u32, 0, 0)],
    );
    g.desc(1, 1, GPA + TABLE + 0x103, 16, 4, 0);
    g.make_available(1, 1);
    guest_sends(&mut g, 2, &c);
    assert_eq!(rx_all(&mut port, &mut pool), vec![a.clone(), b, c]);
    assert_eq!(g.used_idx(1), 3);
    assert_eq!(g.used(1, 0).0, 0);
    assert_eq!(g.used(1, 1).0, 1);
    // To the guest: a receive chain through a table of two writable buffers (the
    // indirect descriptor's own WRITE flag is ignored, as the spec says).
    table(
        &g,
        TABLE + 0x1000,
        &[
            (GPA + BUF + 0x8000, 100, 3, 1),
            (GPA + BUF + 0x9000, 2048, 2, 0),
        ],
    );
    g.desc(0, 0, GPA + TABLE + 0x1000, 32, 4 | 2, 0);
    g.make_available(0, 0);
    let (id, off) = pool.alloc_with(&a).unwrap();
    let pkt = Packet::received(id, off, a.len() as u16);
    assert_eq!(port.tx_burst(0, &mut pool, &[pkt]), 1);
    assert_eq!(g.used_idx(0), 1);
    assert_eq!(g.used(0, 0), (0, (HDR + a.len()) as u32));
    let mut got = g.read(BUF + 0x8000 + HDR as u64, 100 - HDR);
    got.extend(g.read(BUF + 0x9000, a.len() - (100 - HDR)));
    assert_eq!(got, a);
    assert_eq!(extra(&port, "broken_queues"), 0);
    assert_eq!(pool.available(), 64);
}

#[test]
fn an_indirect_descriptor_inside_a_table_breaks_the_queue() {
    assert_broken_as(true, |g| {
        indirect_head(g, 16, &[(GPA + TABLE, 16, 4, 0)]);
    });
}

#[test]
fn an_indirect_descriptor_with_next_breaks_the_queue() {
    assert_broken_as(true, |g| {
        table(g, TABLE, &[(GPA + BUF, 100, 0, 0)]);
        g.desc(1, 0, GPA + TABLE, 16, 4 | 1, 1);
        g.desc(1, 1, GPA + BUF, 100, 0, 0);
        g.make_available(1, 0);
    });
}

#[test]
fn an_indirect_table_of_partial_descriptors_breaks_the_queue() {
    assert_broken_as(true, |g| indirect_head(g, 24, &[(GPA + BUF, 100, 0, 0)]));
}

#[test]
fn an_empty_indirect_table_breaks_the_queue() {
    assert_broken_as(true, |g| indirect_head(g, 0, &[]));
}

#[test]
fn an_indirect_table_outside_guest_memory_breaks_the_queue() {
    assert_broken_as(true, |g| {
        g.desc(1, 0, GPA + SIZE as u64 - 16, 32, 4, 0);
        g.make_available(1, 0);
    });
}

#[test]
fn an_indirect_table_below_guest_memory_breaks_the_queue() {
    assert_broken_as(true, |g| {
        g.desc(1, 0, GPA - 16, 32, 4, 0);
        g.make_available(1, 0);
    });
}

#[test]
fn an_oversized_indirect_table_breaks_the_queue() {
    assert_broken_as(true, |g| {
        let descs: Vec<_> = (0..65u16)
            .map(|i| (GPA + BUF, 1, if i < 64 { 1 } else { 0 }, i + 1))
            .collect();
        indirect_head(g, 16 * 65, &descs);
    });
}

#[test]
fn a_huge_indirect_length_breaks_the_queue() {
    assert_broken_as(true, |g| {
        indirect_head(g, u32::MAX - 15, &[(GPA + BUF, 1, 0, 0)])
    });
}

#[test]
fn a_next_beyond_the_indirect_table_breaks_the_queue() {
    // Index 2 is inside the ring's table but not inside this two-entry table.
    assert_broken_as(true, |g| {
        indirect_head(g, 32, &[(GPA + BUF, 10, 1, 2), (GPA + BUF, 10, 0, 0)]);
    });
}

#[test]
fn a_loop_inside_an_indirect_table_breaks_the_queue() {
    assert_broken_as(true, |g| {
        indirect_head(g, 32, &[(GPA + BUF, 10, 1, 1), (GPA + BUF, 10, 1, 0)]);
    });
}

#[test]
fn a_writable_descriptor_in_a_transmit_indirect_table_breaks_the_queue() {
    assert_broken_as(true, |g| indirect_head(g, 16, &[(GPA + BUF, 100, 2, 0)]));
}

#[test]
fn a_buffer_outside_guest_memory_in_an_indirect_table_breaks_the_queue() {
    assert_broken_as(true, |g| {
        indirect_head(g, 16, &[(GPA + SIZE as u64 - 10, 100, 0, 0)]);
    });
}

#[test]
fn a_chain_too_long_across_an_indirect_table_breaks_the_queue() {
    // 40 direct descriptors, then a table of 40: 80 in all, over the bound of 64.
    assert_broken_as(true, |g| {
        let descs: Vec<_> = (0..40u16)
            .map(|i| (GPA + BUF, 1, if i < 39 { 1 } else { 0 }, i + 1))
            .collect();
        table(g, TABLE, &descs);
        for i in 0..40u16 {
            g.desc(1, i, GPA + BUF, 1, 1, i + 1);
        }
        g.desc(1, 40, GPA + TABLE, 16 * 40, 4, 0);
        g.make_available(1, 0);
    });
}

/// A port on a device with two queue pairs, pair 1 running or not.
fn started_two_pairs(g: &Guest, pool: &mut FramePool, second: bool) -> VhostUserPort {
    let mailbox = Mailbox::new();
    let mut port = VhostUserPort::new("vu-mq", Arc::clone(&mailbox));
    let setup = |q| {
        Some(QueueSetup {
            addrs: Guest::addrs(q),
            base: 0,
            call: None,
            err: None,
        })
    };
    let queues = if second {
        vec![setup(0), setup(1), setup(2), setup(3)]
    } else {
        vec![setup(0), setup(1), None, None]
    };
    let dev = Device {
        mem: g.memory(),
        queues,
        hdr_len: HDR,
        mergeable: true,
        event_idx: false,
        indirect: false,
    };
    mailbox.send(Command::Start(Arc::new(dev)), Duration::ZERO);
    port.housekeeping(pool);
    port
}

/// The guest sends `bytes` on transmit queue `q` from descriptor `i`.
fn guest_sends_on(g: &mut Guest, q: usize, i: u16, bytes: &[u8]) {
    let addr = BUF + 0x40000 + 0x1000 * (16 * q as u64 + u64::from(i));
    let mut buf = vec![0u8; HDR];
    buf.extend_from_slice(bytes);
    g.write(addr, &buf);
    g.desc(q, i, GPA + addr, buf.len() as u32, 0, 0);
    g.make_available(q, i);
}

#[test]
fn every_running_pair_is_polled_and_frames_to_the_guest_use_the_first() {
    let mut g = Guest::new();
    let mut pool = FramePool::with_frames(64).unwrap();
    let mut port = started_two_pairs(&g, &mut pool, true);
    let (a, b) = (frame(100, 1), frame(200, 2));
    guest_sends_on(&mut g, 1, 0, &a);
    guest_sends_on(&mut g, 3, 0, &b);
    let mut got = rx_all(&mut port, &mut pool);
    got.sort_by_key(Vec::len);
    assert_eq!(got, vec![a.clone(), b]);
    assert_eq!((g.used_idx(1), g.used_idx(3)), (1, 1));
    // Receive buffers on both pairs: the frame goes to pair 0's.
    for q in [0, 2] {
        g.desc(q, 0, GPA + BUF + 0x1000 * q as u64, 2048, 2, 0);
        g.make_available(q, 0);
    }
    let (id, off) = pool.alloc_with(&a).unwrap();
    assert_eq!(
        port.tx_burst(0, &mut pool, &[Packet::received(id, off, a.len() as u16)]),
        1
    );
    assert_eq!((g.used_idx(0), g.used_idx(2)), (1, 0));
    assert_eq!(g.read(BUF + HDR as u64, a.len()), a);
    assert_eq!(pool.available(), 64);
}

#[test]
fn a_pair_not_running_is_not_polled() {
    let mut g = Guest::new();
    let mut pool = FramePool::with_frames(64).unwrap();
    let mut port = started_two_pairs(&g, &mut pool, false);
    guest_sends_on(&mut g, 3, 0, &frame(100, 1));
    guest_sends_on(&mut g, 1, 0, &frame(60, 2));
    assert_eq!(rx_all(&mut port, &mut pool), vec![frame(60, 2)]);
    assert_eq!((g.used_idx(1), g.used_idx(3)), (1, 0));
}

#[test]
fn a_writable_descriptor_on_the_transmit_queue_breaks_it() {
    assert_broken(|g| {
        g.desc(1, 0, GPA + BUF, 100, 2, 0);
        g.make_available(1, 0);
    });
}

#[test]
fn an_available_index_running_ahead_breaks_the_queue() {
    assert_broken(|g| g.set_avail_idx(1, QSIZE + 1));
}

#[test]
fn a_ring_outside_guest_memory_is_given_up_at_start() {
    let g = Guest::new();
    let mut pool = FramePool::with_frames(64).unwrap();
    let mailbox = Mailbox::new();
    let mut port = VhostUserPort::new("vu-test", Arc::clone(&mailbox));
    let mut bad = Guest::addrs(1);
    bad.used = UVA + SIZE as u64 - 8;
    let dev = Device {
        mem: g.memory(),
        queues: vec![
            Some(QueueSetup {
                addrs: Guest::addrs(0),
                base: 0,
                call: None,
                err: None,
            }),
            Some(QueueSetup {
                addrs: bad,
                base: 0,
                call: None,
                err: None,
            }),
        ],
        hdr_len: HDR,
        mergeable: true,
        event_idx: false,
        indirect: false,
    };
    mailbox.send(Command::Start(Arc::new(dev)), Duration::ZERO);
    port.housekeeping(&mut pool);
    assert_eq!(extra(&port, "broken_queues"), 1);
    assert!(rx_all(&mut port, &mut pool).is_empty());
}

#[test]
fn with_event_idx_the_guest_is_interrupted_only_when_it_asked_and_never_asked_to_kick() {
    let mut g = Guest::new();
    let mut pool = FramePool::with_frames(64).unwrap();
    let call = eventfd();
    let mailbox = Mailbox::new();
    let mut port = VhostUserPort::new("vu-test", Arc::clone(&mailbox));
    let setup = |q| QueueSetup {
        addrs: Guest::addrs(q),
        base: 0,
        call: None,
        err: None,
    };
    let mut tx = setup(1);
    tx.call = Some(call.try_clone().unwrap());
    let dev = Device {
        mem: g.memory(),
        queues: vec![Some(setup(0)), Some(tx)],
        hdr_len: HDR,
        mergeable: true,
        event_idx: true,
        indirect: false,
    };
    mailbox.send(Command::Start(Arc::new(dev)), Duration::ZERO);
    port.housekeeping(&mut pool);
    let avail_event = |g: &Guest| {
        let b = g.read(Guest::q(1) + USED + 4 + 8 * u64::from(QSIZE), 2);
        u16::from_le_bytes([b[0], b[1]])
    };
    assert_eq!(avail_event(&g), u16::MAX, "kicks held from the start");
    // The guest wants to hear when used entry 1 (the second) is there.
    g.write(
        Guest::q(1) + AVAIL + 4 + 2 * u64::from(QSIZE),
        &1u16.to_le_bytes(),
    );
    guest_sends(&mut g, 0, &frame(60, 0));
    assert_eq!(rx_all(&mut port, &mut pool).len(), 1);
    assert_eq!(extra(&port, "calls"), 0, "used entry 0 was not asked for");
    guest_sends(&mut g, 1, &frame(60, 1));
    guest_sends(&mut g, 2, &frame(60, 2));
    assert_eq!(rx_all(&mut port, &mut pool).len(), 2);
    assert_eq!(extra(&port, "calls"), 1, "entry 1 was asked for");
    let mut n = [0u8; 8];
    assert_eq!(std::io::Read::read(&mut &call, &mut n).unwrap(), 8);
    assert_eq!(u64::from_ne_bytes(n), 1);
    assert_eq!(avail_event(&g), 2, "one behind the next entry to take");
    // Asked already: the next publish (entry 3) does not interrupt again.
    guest_sends(&mut g, 3, &frame(60, 3));
    assert_eq!(rx_all(&mut port, &mut pool).len(), 1);
    assert_eq!(extra(&port, "calls"), 1);
}

#[test]
fn a_memory_table_past_the_end_of_its_file_is_refused() {
    let g = Guest::new();
    let spec = |size: u64, mmap_offset: u64| RegionSpec {
        guest_phys_addr: GPA,
        size,
        user_addr: UVA,
        mmap_offset,
    };
    let file = || [g.file.try_clone().unwrap()];
    assert!(GuestMemory::map(&[spec(SIZE as u64, 0)], &file()).is_ok());
    assert!(GuestMemory::map(&[spec(SIZE as u64 + 4096, 0)], &file()).is_err());
    assert!(GuestMemory::map(&[spec(SIZE as u64, 4096)], &file()).is_err());
    assert!(GuestMemory::map(&[spec(0, 0)], &file()).is_err());
    assert!(GuestMemory::map(&[spec(u64::MAX, 0)], &file()).is_err());
}

#[test]
fn short_and_oversized_frames_are_counted_drops_not_breakage() {
    let mut g = Guest::new();
    let mut pool = FramePool::with_frames(64).unwrap();
    let (mut port, _mb) = started(&g, true, &mut pool);
    g.desc(1, 0, GPA + BUF, 4, 0, 0);
    g.make_available(1, 0);
    // Longer than the largest frame a port carries (a 9000-byte MTU's).
    g.desc(1, 1, GPA + BUF, (HDR + MAX_FRAME + 1) as u32, 0, 0);
    g.make_available(1, 1);
    guest_sends(&mut g, 2, &frame(64, 3));
    let got = rx_all(&mut port, &mut pool);
    assert_eq!(got, vec![frame(64, 3)]);
    assert_eq!(extra(&port, "rx_short"), 1);
    assert_eq!(extra(&port, "rx_oversize"), 1);
    assert_eq!(extra(&port, "broken_queues"), 0);
    assert_eq!(g.used_idx(1), 3, "dropped chains are returned to the guest");
}

#[test]
fn stopping_reports_where_the_queues_stopped() {
    let mut g = Guest::new();
    let mut pool = FramePool::with_frames(64).unwrap();
    let (mut port, mailbox) = started(&g, true, &mut pool);
    for i in 0..3 {
        guest_sends(&mut g, i, &frame(60, 0));
    }
    assert_eq!(rx_all(&mut port, &mut pool).len(), 3);
    mailbox.send(Command::Stop, Duration::ZERO);
    port.housekeeping(&mut pool);
    assert_eq!(mailbox.bases()[..2], [0, 3]);
    guest_sends(&mut g, 3, &frame(60, 0));
    assert!(
        rx_all(&mut port, &mut pool).is_empty(),
        "stopped queues are not polled"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the guest writes into its descriptor table and available ring, the port
    /// neither panics nor leaks a frame, and every frame it hands over is a copy of
    /// guest bytes no longer than the largest frame it carries.
    #[test]
    fn random_rings_never_panic_or_leak(
        descs in proptest::collection::vec((any::<u64>(), 0u32..12000, 0u16..8, 0u16..300), 1..64),
        heads in proptest::collection::vec(0u16..300, 0..64),
        idx_jump in 0u16..600,
        near in any::<bool>(),
    ) {
        let mut g = Guest::new();
        let mut pool = FramePool::with_frames(128).unwrap();
        let (mut port, _mb) = started(&g, true, &mut pool);
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            // Half the cases keep addresses near guest memory, where bounds matter.
            let addr = if near { GPA + addr % (SIZE as u64 + 0x2000) - 0x1000 } else { addr };
            g.desc(1, i as u16, addr, len, flags, next);
            g.desc(0, i as u16, addr, len, flags, next);
        }
        for &h in &heads {
            g.make_available(1, h);
            g.make_available(0, h);
        }
        if idx_jump > 300 {
            g.set_avail_idx(1, idx_jump);
        }
        for _ in 0..3 {
            let got = rx_all(&mut port, &mut pool);
            for f in &got {
                prop_assert!(f.len() <= MAX_FRAME);
            }
            let (id, off) = pool.alloc_with(&frame(100, 0)).unwrap();
            let taken = port.tx_burst(0, &mut pool, &[Packet::received(id, off, 100)]);
            if taken == 0 {
                pool.free(id);
            }
        }
        prop_assert_eq!(pool.available(), 128);
    }

    /// The same with indirect descriptors negotiated: heads point to random tables
    /// (random lengths, some inside guest memory) of random descriptors.
    #[test]
    fn random_indirect_tables_never_panic_or_leak(
        heads in proptest::collection::vec((0u64..0x3000, 0u32..2000, 0u16..16, 0u16..8), 1..32),
        entries in proptest::collection::vec((0u64..0x30000, 0u32..3000, 0u16..8, 0u16..80), 0..256),
    ) {
        let mut g = Guest::new();
        let mut pool = FramePool::with_frames(128).unwrap();
        let (mut port, _mb) = started_as(&g, true, true, &mut pool, None);
        let descs: Vec<_> = entries.iter().map(|&(a, l, f, n)| (GPA + BUF + a, l, f, n)).collect();
        table(&g, TABLE, &descs);
        for (i, &(at, len, flags, next)) in heads.iter().enumerate() {
            // Mostly indirect heads; the offset may run past the table, or past memory.
            let flags = if flags < 12 { 4 | (flags & 3) } else { flags & 7 };
            let addr = GPA + TABLE + at * 8 % 0x50000;
            g.desc(1, i as u16, addr, len, flags, next);
            g.desc(0, i as u16, addr, len, flags | 2, next);
            g.make_available(1, i as u16);
            g.make_available(0, i as u16);
        }
        for _ in 0..3 {
            let got = rx_all(&mut port, &mut pool);
            for f in &got {
                prop_assert!(f.len() <= MAX_FRAME);
            }
            let (id, off) = pool.alloc_with(&frame(100, 0)).unwrap();
            let taken = port.tx_burst(0, &mut pool, &[Packet::received(id, off, 100)]);
            if taken == 0 {
                pool.free(id);
            }
        }
        prop_assert_eq!(pool.available(), 128);
    }
}

// Jumbo frames: a frame larger than one pool frame crosses as a chain of pool frames.

/// The guest sends `bytes` (after a zeroed header) from `GUEST_TX`, as one chain of
/// descriptors of `piece` bytes each (the last shorter), heads from descriptor 0.
fn guest_sends_in_pieces(g: &mut Guest, bytes: &[u8], piece: usize) {
    let mut buf = vec![0u8; HDR];
    buf.extend_from_slice(bytes);
    g.write(GUEST_TX, &buf);
    let pieces = buf.len().div_ceil(piece);
    for i in 0..pieces {
        let len = piece.min(buf.len() - i * piece);
        let more = i + 1 < pieces;
        let next = if more { i as u16 + 1 } else { 0 };
        let addr = GPA + GUEST_TX + (i * piece) as u64;
        g.desc(1, i as u16, addr, len as u32, u16::from(more), next);
    }
    g.make_available(1, 0);
}

/// Guest memory for jumbo frames the guest sends and receives.
const GUEST_TX: u64 = BUF + 0x20000;
const GUEST_RX: u64 = BUF + 0x40000;

/// The guest posts `count` receive buffers of `size` bytes at `GUEST_RX`: with
/// `mergeable`, as `count` chains of one descriptor; without, as one chain of `count`
/// descriptors.
fn guest_posts(g: &mut Guest, count: u16, size: u32, mergeable: bool) {
    for i in 0..count {
        let addr = GPA + GUEST_RX + u64::from(i) * u64::from(size);
        let more = !mergeable && i + 1 < count;
        g.desc(
            0,
            i,
            addr,
            size,
            2 | u16::from(more),
            if more { i + 1 } else { 0 },
        );
        if mergeable || i == 0 {
            g.make_available(0, i);
        }
    }
}

/// What the guest received in its buffers at `GUEST_RX` (of `size` bytes, used from
/// entry `first`): the header's `num_buffers` and the frame after the header.
fn guest_received(g: &Guest, first: u16, size: u32, mergeable: bool) -> (u16, Vec<u8>) {
    let hdr = g.read(GUEST_RX, HDR);
    let num = u16::from_le_bytes([hdr[10], hdr[11]]);
    let total: usize = if mergeable {
        (0..num).map(|i| g.used(0, first + i).1 as usize).sum()
    } else {
        g.used(0, first).1 as usize
    };
    let _ = size;
    // The buffers lie one after another, so the frame is contiguous in guest memory.
    (num, g.read(GUEST_RX + HDR as u64, total - HDR))
}

/// A packet in `pool` holding `bytes` (chained when larger than a frame).
fn packet(pool: &mut FramePool, bytes: &[u8]) -> Packet {
    pool.alloc_packet(bytes).expect("pool frames")
}

#[test]
fn a_jumbo_frame_from_the_guest_arrives_as_a_chain_byte_for_byte() {
    for piece in [2048, 4096, HDR + MAX_FRAME] {
        let mut g = Guest::new();
        let mut pool = FramePool::with_frames(32).unwrap();
        let (mut port, _mb) = started(&g, true, &mut pool);
        let jumbo = frame(MAX_FRAME, piece as u8);
        guest_sends_in_pieces(&mut g, &jumbo, piece);
        let mut batch = Batch::with_capacity(64);
        let (got, allocs) = counting(|| port.rx_burst(0, &mut pool, &mut batch));
        assert_eq!((got, allocs), (1, 0), "pieces of {piece}");
        let pkt = batch.as_slice()[0];
        assert!(pkt.chained);
        assert_eq!(pool.packet_len(&pkt), MAX_FRAME);
        assert_eq!(
            pkt.len as usize,
            pool.max_data_len(),
            "the first frame is filled"
        );
        let bytes: Vec<u8> = pool.segments(&pkt).flatten().copied().collect();
        assert_eq!(bytes, jumbo);
        assert_eq!(g.used_idx(1), 1);
        assert_eq!(port.stats().rx_bytes, MAX_FRAME as u64);
        pool.free(pkt.frame);
        assert_eq!(pool.available(), 32, "the whole chain is freed");
        assert_eq!(extra(&port, "rx_oversize"), 0);
    }
}

#[test]
fn a_jumbo_frame_waits_in_the_ring_while_the_pool_is_short() {
    let mut g = Guest::new();
    let mut pool = FramePool::with_frames(16).unwrap();
    let (mut port, _mb) = started(&g, true, &mut pool);
    let jumbo = frame(MAX_FRAME, 5);
    let need = pool.frames_for(MAX_FRAME);
    let held: Vec<_> = (0..16 - (need - 1))
        .map(|_| pool.alloc().unwrap())
        .collect();
    guest_sends_in_pieces(&mut g, &jumbo, 4096);
    assert!(rx_all(&mut port, &mut pool).is_empty());
    assert_eq!(g.used_idx(1), 0, "left in the ring");
    assert_eq!(pool.available(), need - 1, "nothing taken");
    assert_eq!(port.stats().rx_dropped, 0);
    for f in held {
        pool.free(f);
    }
    assert_eq!(rx_all(&mut port, &mut pool), vec![jumbo]);
    assert_eq!(g.used_idx(1), 1);
    assert_eq!(pool.available(), 16);
}

#[test]
fn a_jumbo_frame_to_the_guest_crosses_byte_for_byte() {
    // (buffer size, buffers, mergeable): 2 KiB and 4 KiB buffers, merged or one chain.
    for (size, count, mergeable) in [
        (2048, 5, true),
        (4096, 3, true),
        (2048, 5, false),
        (4096, 3, false),
    ] {
        let mut g = Guest::new();
        let mut pool = FramePool::with_frames(32).unwrap();
        let (mut port, _mb) = started(&g, mergeable, &mut pool);
        guest_posts(&mut g, count, size, mergeable);
        // A frame of one pool frame first: the two paths mix in one burst.
        let small = frame(100, 1);
        let jumbo = frame(MAX_FRAME, size as u8);
        g.desc(0, 10, GPA + BUF, 2048, 2, 0);
        let pkts = [packet(&mut pool, &jumbo)];
        assert!(pkts[0].chained);
        let (sent, allocs) = counting(|| port.tx_burst(0, &mut pool, &pkts));
        assert_eq!((sent, allocs), (1, 0));
        assert_eq!(pool.available(), 32, "the port frees the whole chain");
        let (num, got) = guest_received(&g, 0, size, mergeable);
        assert_eq!(got, jumbo, "{size}-byte buffers, mergeable {mergeable}");
        if mergeable {
            assert_eq!(num, count, "num_buffers");
            assert_eq!(g.used_idx(0), count);
        } else {
            assert_eq!(g.used_idx(0), 1);
            assert_eq!(g.used(0, 0), (0, (HDR + MAX_FRAME) as u32));
        }
        assert_eq!(port.stats().tx_bytes, MAX_FRAME as u64);
        assert_eq!(extra(&port, "tx_too_big"), 0);
        // Then a one-frame packet and a jumbo one in the same burst: the small one to a
        // fresh buffer, the jumbo one refused for want of buffers (kept by the caller).
        g.make_available(0, 10);
        let pkts = [packet(&mut pool, &small), packet(&mut pool, &jumbo)];
        assert_eq!(port.tx_burst(0, &mut pool, &pkts), 1);
        assert_eq!(g.read(BUF + HDR as u64, small.len()), small);
        assert_eq!(extra(&port, "tx_no_buffers"), 1);
        pool.free(pkts[1].frame);
        assert_eq!(pool.available(), 32);
    }
}

#[test]
fn a_jumbo_frame_larger_than_an_unmerged_buffer_is_too_big() {
    let mut g = Guest::new();
    let mut pool = FramePool::with_frames(32).unwrap();
    let (mut port, _mb) = started(&g, false, &mut pool);
    // One 4 KiB buffer: not enough for 9018 bytes without mergeable buffers.
    guest_posts(&mut g, 1, 4096, false);
    let pkt = packet(&mut pool, &frame(MAX_FRAME, 0));
    assert_eq!(port.tx_burst(0, &mut pool, &[pkt]), 1);
    assert_eq!(extra(&port, "tx_too_big"), 1);
    assert_eq!(g.used_idx(0), 0, "the buffer stays for the next frame");
    assert_eq!(pool.available(), 32);
    // The next frame, small enough, takes it.
    let small = frame(1500, 3);
    let pkt = packet(&mut pool, &small);
    assert_eq!(port.tx_burst(0, &mut pool, &[pkt]), 1);
    assert_eq!(guest_received(&g, 0, 4096, false).1, small);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any frame length up to a 9000-byte MTU's crosses both ways byte for byte, in guest
    /// pieces of any size, into 2 KiB mergeable buffers, and no pool frame leaks.
    #[test]
    fn every_length_crosses_both_ways(len in 14usize..=MAX_FRAME, piece in 64usize..5000, seed: u8) {
        let mut g = Guest::new();
        let mut pool = FramePool::with_frames(32).unwrap();
        let (mut port, _mb) = started(&g, true, &mut pool);
        let bytes = frame(len, seed);
        // At most 60 descriptors: a chain may have 64.
        guest_sends_in_pieces(&mut g, &bytes, piece.max((HDR + len).div_ceil(60)));
        let mut batch = Batch::with_capacity(64);
        prop_assert_eq!(port.rx_burst(0, &mut pool, &mut batch), 1);
        let pkt = batch.as_slice()[0];
        prop_assert_eq!(pkt.chained, len > pool.max_data_len());
        guest_posts(&mut g, 5, 2048, true);
        prop_assert_eq!(port.tx_burst(0, &mut pool, &[pkt]), 1);
        prop_assert_eq!(pool.available(), 32);
        let (num, got) = guest_received(&g, 0, 2048, true);
        prop_assert_eq!(usize::from(num), (HDR + len).div_ceil(2048));
        prop_assert_eq!(got, bytes);
    }
}
