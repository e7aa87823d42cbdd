//! The tap driver on a tap in a private network namespace. Needs root (it creates a
//! namespace and tap devices) and fails, never skips, without it.
//!
//! - Frames queued with `tx_burst` arrive on the tap's netdev byte for byte (read with an
//!   AF_PACKET socket there), and frames sent on the netdev come out of `rx_burst` byte
//!   for byte, virtio-net header stripped.
//! - A tap the port created disappears when the port closes; a persistent one it attached
//!   to (`ip tuntap add ... vnet_hdr multi_queue`) stays.
//! - Closing with reads posted cancels and drains them: nothing stays in flight.
//!
//! Only link-layer frames with a local-experimental EtherType (0x88b5) are used; the taps
//! live only in the kit's namespace, deleted (with them) on every exit path.

use std::ffi::CString;
use std::time::{Duration, Instant};

use pollux_dataplane::buf::FramePool;
use pollux_dataplane::packet::{Batch, Packet};
use pollux_dataplane::port::Port;
use pollux_drivers::tap::{Origin, TapDevice, TapPort, TapPortConfig};
use pollux_testkit::netns::{self, Topology};
use pollux_testkit::packet_socket::PacketSocket;

const ETHERTYPE: [u8; 2] = [0x88, 0xb5];

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

/// One namespace of the kit (deleted on drop, with every tap in it).
fn namespace() -> Topology {
    netns::require_root();
    let mut topo = Topology::new();
    topo.add_ns("x").expect("namespace");
    topo
}

/// Runs `f` on a thread that has entered the namespace of `topo`.
fn enter<T: Send>(topo: &Topology, f: impl FnOnce() -> T + Send) -> T {
    let ns = topo.ns("x").expect("namespace");
    ns.run_in(f).expect("entering the namespace")
}

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether interface `name` exists in this thread's namespace (not via /sys, which shows
/// the namespace it was mounted in).
fn exists(name: &str) -> bool {
    let c = CString::new(name).unwrap();
    // SAFETY: `c` is NUL-terminated and outlives the call, which only reads it.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

/// Whether the created tap `name` is gone within five seconds. The kernel
/// tears an io_uring instance down on a workqueue after its fd closes, so the
/// ring's reference to the tap's file (and the tap with it) may outlive the
/// port's drop by a moment.
fn removed_soon(name: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while exists(name) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    !exists(name)
}

/// A broadcast test frame carrying `i`, `len` bytes long.
fn frame(i: usize, len: usize) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend([0x02, 0, 0, 0, 0, 0x0a]);
    f.extend(ETHERTYPE);
    f.extend(format!("pollux-tap #{i}").bytes());
    while f.len() < len {
        f.push((f.len() % 251) as u8);
    }
    f
}

fn extra(port: &TapPort, name: &str) -> u64 {
    port.stats()
        .extra
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, v)| v)
        .unwrap_or_else(|| panic!("no counter {name}"))
}

/// Receives until `want` packets came (or 5 s passed), returning their bytes in order.
fn rx_until(port: &mut TapPort, pool: &mut FramePool, want: usize) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    let mut batch = Batch::with_capacity(64);
    while got.len() < want && Instant::now() < deadline {
        batch.clear();
        let (_, allocs) = counting(|| {
            port.rx_burst(0, pool, &mut batch);
            port.housekeeping(pool);
        });
        assert_eq!(allocs, 0, "rx_burst and housekeeping allocate nothing");
        for pkt in batch.as_slice() {
            let data = pool.data(pkt).to_vec();
            pool.free(pkt.frame);
            if data.len() >= 14 && data[12..14] == ETHERTYPE {
                got.push(data);
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    got
}

#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn frames_cross_a_created_tap_both_ways_and_the_tap_goes_with_the_port() {
    let topo = namespace();
    enter(&topo, || {
        assert!(!exists("ptap0"));
        let device = TapDevice::open("ptap0").unwrap();
        assert_eq!(device.origin, Origin::Created);
        let mut pool = FramePool::with_frames(1024).unwrap();
        let mut port = TapPort::new(device, pool.max_data_len(), TapPortConfig::default()).unwrap();
        assert_eq!(extra(&port, "rx_posted"), 256, "every read is posted ahead");
        ip(&["link", "set", "ptap0", "up"]);
        let sock = PacketSocket::open("ptap0");

        // Transmit: three bursts of 50, sizes from the minimum to a full 1500-byte MTU.
        let frames: Vec<Vec<u8>> = (0..150).map(|i| frame(i, 60 + (i * 97) % 1455)).collect();
        for chunk in frames.chunks(50) {
            let pkts: Vec<Packet> = chunk
                .iter()
                .map(|f| {
                    let (id, off) = pool.alloc_with(f).unwrap();
                    Packet::received(id, off, f.len() as u16)
                })
                .collect();
            let (sent, allocs) = counting(|| port.tx_burst(0, &mut pool, &pkts));
            assert_eq!(sent, pkts.len());
            assert_eq!(allocs, 0, "tx_burst allocates nothing");
        }
        assert_eq!(
            pool.available(),
            1024,
            "transmit frees the pool frames at once"
        );
        let seen = sock.recv_ethertype(ETHERTYPE, frames.len(), Duration::from_secs(5));
        assert_eq!(
            seen, frames,
            "the netdev received every frame, byte for byte, in order"
        );
        let stats = port.stats();
        assert_eq!(stats.tx_packets, 150);
        assert_eq!(
            stats.tx_bytes,
            frames.iter().map(|f| f.len() as u64).sum::<u64>()
        );
        assert_eq!(extra(&port, "tx_errors"), 0);

        // Receive: frames sent on the netdev come out of rx_burst.
        let inbound: Vec<Vec<u8>> = (0..100).map(|i| frame(1000 + i, 64 + i * 13)).collect();
        for f in &inbound {
            sock.send(f);
        }
        let got = rx_until(&mut port, &mut pool, inbound.len());
        assert_eq!(got, inbound);
        assert_eq!(extra(&port, "rx_gso_dropped"), 0);
        assert_eq!(
            extra(&port, "rx_posted"),
            256,
            "every slot's read is posted again"
        );
        assert_eq!(pool.available(), 1024);

        // Closing cancels the posted reads and waits for them; the tap goes with it.
        assert!(port.close().is_empty(), "a tap port holds no pool frames");
        assert_eq!(extra(&port, "rx_posted"), 0);
        drop(port);
        assert!(removed_soon("ptap0"), "the created tap is removed");
    });
}

#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn an_existing_persistent_tap_is_attached_to_and_left_in_place() {
    let topo = namespace();
    enter(&topo, || {
        ip(&[
            "tuntap",
            "add",
            "dev",
            "ptap1",
            "mode",
            "tap",
            "vnet_hdr",
            "multi_queue",
        ]);
        let device = TapDevice::open("ptap1").unwrap();
        assert_eq!(device.origin, Origin::Attached { multi_queue: true });
        let mut pool = FramePool::with_frames(512).unwrap();
        let mut port = TapPort::new(device, pool.max_data_len(), TapPortConfig::default()).unwrap();
        ip(&["link", "set", "ptap1", "up"]);
        let sock = PacketSocket::open("ptap1");
        let f = frame(7, 200);
        sock.send(&f);
        assert_eq!(rx_until(&mut port, &mut pool, 1), vec![f]);
        drop(port);
        assert!(exists("ptap1"), "an attached tap stays");
        // The namespace's deletion would remove it too; delete it explicitly all the same.
        ip(&["link", "del", "ptap1"]);
    });
}

#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn a_device_that_is_not_a_tap_is_refused() {
    let topo = namespace();
    enter(&topo, || {
        ip(&["tuntap", "add", "dev", "ptun2", "mode", "tun"]);
        let err = TapDevice::open("ptun2").unwrap_err();
        assert!(err.to_string().contains("not a tap"), "{err}");
        let err = TapDevice::open("lo").unwrap_err();
        assert!(err.to_string().contains("not a tap"), "{err}");
        ip(&["link", "del", "ptun2"]);
    });
}

#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn a_port_opened_on_one_thread_closes_on_another_while_the_first_sleeps() {
    let topo = namespace();
    enter(&topo, || {
        let pool = FramePool::with_frames(64).unwrap();
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let max = pool.max_data_len();
        // The opener (the worker, in polluxd) posts the reads, then blocks.
        let opener = std::thread::spawn(move || {
            let device = TapDevice::open("ptap3").unwrap();
            let port = TapPort::new(device, max, TapPortConfig::default()).unwrap();
            port_tx.send(port).unwrap();
            let _ = done_rx.recv();
        });
        let mut port = port_rx.recv().unwrap();
        assert_eq!(extra(&port, "rx_posted"), 256);
        let started = Instant::now();
        assert!(port.close().is_empty());
        let took = started.elapsed();
        eprintln!("close with the opener asleep: {took:?}");
        assert_eq!(extra(&port, "rx_posted"), 0, "every posted read was reaped");
        assert!(took < Duration::from_millis(500), "close took {took:?}");
        drop(port);
        done_tx.send(()).unwrap();
        opener.join().unwrap();
        assert!(removed_soon("ptap3"), "the created tap is removed");
    });
}

#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn a_deleted_tap_is_counted_not_spun_on() {
    let topo = namespace();
    enter(&topo, || {
        ip(&["tuntap", "add", "dev", "ptap4", "mode", "tap", "vnet_hdr"]);
        let device = TapDevice::open("ptap4").unwrap();
        assert_eq!(device.origin, Origin::Attached { multi_queue: false });
        let mut pool = FramePool::with_frames(256).unwrap();
        let mut port = TapPort::new(device, pool.max_data_len(), TapPortConfig::default()).unwrap();
        ip(&["link", "del", "ptap4"]);
        let mut batch = Batch::with_capacity(64);
        for _ in 0..200 {
            batch.clear();
            assert_eq!(port.rx_burst(0, &mut pool, &mut batch), 0);
            port.housekeeping(&mut pool);
            std::thread::sleep(Duration::from_micros(100));
        }
        let errors = extra(&port, "rx_errors");
        assert!(
            errors >= 256,
            "every posted read failed and was counted: {errors}"
        );
        assert!(
            errors < 256 + 400,
            "after the first failures, one probe per round at most: {errors}"
        );
        assert!(extra(&port, "rx_posted") <= 1);
        assert!(port.close().is_empty());
        assert_eq!(pool.available(), 256);
    });
}
