//! The forwarding path never allocates: a counting global allocator watches the worker
//! while it switches known unicast, VLAN push and pop, floods, and learns.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use pollux_dataplane::pipeline::capture::{capture, CaptureSpec, Directions};
use pollux_dataplane::pipeline::trace::TraceMatch;
use pollux_dataplane::port::PortId;
use pollux_dataplane::qos::PortQos;
use pollux_dataplane::ratelimit::ByteRate;
use pollux_dataplane::snapshot::{NetworkUid, PhysnetId, Segment, SnapshotBuilder};
use pollux_tests::frames::{arp, frame, ipv4, mac, udp, vxlan, BROADCAST};
use pollux_tests::harness::MemSwitch;

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to the system allocator with the caller's arguments
// unchanged, so `Counting` upholds `GlobalAlloc`'s contract exactly as `System` does; the
// counting itself only touches atomics and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged; `ptr` came from `System` via `alloc` above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged; the caller upholds `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The counter is global: the tests take turns, so one's set-up is not counted in
/// another's forwarding.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn forwarding_does_not_allocate() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let phys = PhysnetId(1);
    let mut b = SnapshotBuilder::new();
    b.network(
        NetworkUid(1),
        Segment::Vlan {
            physnet: phys,
            vid: 100,
        },
    )
    .uplink(PortId(0), phys);
    for p in 1..=8u16 {
        b.access_port(PortId(p), NetworkUid(1), &[mac(p as u8)]);
    }
    let ports: Vec<u16> = (0..=8).collect();
    let mut sw = MemSwitch::new(&b, &ports);
    let scenarios: Vec<(u16, Vec<u8>)> = vec![
        (1, frame(mac(2), mac(1), None, 0, 64)), // known unicast
        (0, frame(mac(1), mac(100), Some(100), 0, 64)), // pop, learning
        (1, frame(mac(100), mac(1), None, 0, 64)), // push to a learned MAC
        (3, frame(BROADCAST, mac(3), None, 0, 64)), // flood to 8 ports
    ];
    // Warm up: learn, and let every lazily sized structure reach its size.
    for (port, f) in &scenarios {
        sw.wires.get_mut(port).unwrap().send_repeated(f, 64);
    }
    sw.run();
    sw.collect();

    COUNTING.store(true, Ordering::SeqCst);
    for _ in 0..20 {
        for (port, f) in &scenarios {
            sw.wires.get_mut(port).unwrap().send_repeated(f, 64);
        }
        while sw.worker.poll(sw.now_ns) > 0 {}
        for wire in sw.wires.values_mut() {
            wire.drain(usize::MAX, |_| {});
        }
    }
    COUNTING.store(false, Ordering::SeqCst);
    assert_eq!(
        ALLOCATIONS.load(Ordering::SeqCst),
        0,
        "the forwarding path allocated"
    );
    assert!(sw.counters().tx_packets.get() > 20 * 64 * 10);
    sw.assert_conserved();
}

#[test]
fn capturing_does_not_allocate() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut b = SnapshotBuilder::new();
    b.network(NetworkUid(1), Segment::Local);
    for p in 1..=3u16 {
        b.access_port(PortId(p), NetworkUid(1), &[mac(p as u8)]);
    }
    let mut sw = MemSwitch::new(&b, &[1, 2, 3]);
    // Set up off the packet path: the ring is allocated here.
    let (capturer, mut reader) = capture(CaptureSpec {
        port: PortId(1),
        directions: Directions::ALL,
        snaplen: 2048,
        count: u64::MAX,
        filter: TraceMatch::default(),
    });
    sw.worker.capture_start(Box::new(capturer)).unwrap();
    let scenarios: Vec<(u16, Vec<u8>)> = vec![
        (1, frame(mac(2), mac(1), None, 0, 64)),    // received on 1
        (2, frame(mac(1), mac(2), None, 0, 64)),    // sent on 1
        (1, frame(mac(1), mac(1), None, 0, 64)),    // dropped on 1 (hairpin)
        (3, frame(BROADCAST, mac(3), None, 0, 64)), // flooded, sent on 1
    ];
    for (port, f) in &scenarios {
        sw.wires.get_mut(port).unwrap().send_repeated(f, 64);
    }
    sw.run();
    sw.collect();
    reader.drain(usize::MAX, |_| true);

    COUNTING.store(true, Ordering::SeqCst);
    let mut copied = 0;
    for _ in 0..20 {
        for (port, f) in &scenarios {
            sw.wires.get_mut(port).unwrap().send_repeated(f, 64);
        }
        while sw.worker.poll(sw.now_ns) > 0 {}
        for wire in sw.wires.values_mut() {
            wire.drain(usize::MAX, |_| {});
        }
        copied += reader.drain(usize::MAX, |_| true);
    }
    COUNTING.store(false, Ordering::SeqCst);
    assert_eq!(
        ALLOCATIONS.load(Ordering::SeqCst),
        0,
        "the capturing path allocated"
    );
    // Per round: 64 received + 64 dropped, 64 sent + 64 flooded to port 1 (and the
    // hairpins were received too).
    assert_eq!(copied, 20 * (64 * 2 + 64 + 64 * 2));
    assert_eq!(reader.lost(), 0);
    sw.assert_conserved();
}

#[test]
fn overlay_forwarding_does_not_allocate() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let local = [198, 18, 0, 1];
    let remote = [198, 18, 0, 2];
    let remote_mac = [0x02, 0xbb, 0, 0, 0, 2];
    let vtep = pollux_dataplane::overlay::vtep_mac(local.into());
    let mut b = SnapshotBuilder::new();
    b.network(NetworkUid(1), Segment::Vxlan { vni: 100 })
        .uplink(PortId(0), PhysnetId(1))
        .tunnel_endpoint(pollux_dataplane::overlay::EndpointSpec {
            uplink: PortId(0),
            local_ip: local.into(),
        })
        .access_port(PortId(1), NetworkUid(1), &[mac(1)])
        .access_port(PortId(2), NetworkUid(1), &[mac(2)])
        .tunnel_port(PortId(10), remote.into())
        .remote_port(NetworkUid(1), PortId(10), &[mac(9)])
        .arp_entry(NetworkUid(1), [203, 0, 113, 9].into(), mac(9));
    // A Geneve network (port 3) and a GRE one (port 4) to the same remote host.
    b.network(NetworkUid(2), Segment::Geneve { vni: 100 })
        .network(NetworkUid(3), Segment::Gre { key: 100 })
        .access_port(PortId(3), NetworkUid(2), &[mac(3)])
        .access_port(PortId(4), NetworkUid(3), &[mac(4)])
        .remote_port(NetworkUid(2), PortId(10), &[mac(10)])
        .remote_port(NetworkUid(3), PortId(10), &[mac(11)]);
    let mut sw = MemSwitch::new(&b, &[0, 1, 2, 3, 4]);
    let scenarios: Vec<(u16, Vec<u8>)> = vec![
        // The remote endpoint resolves the local one (and so becomes known).
        (0, arp(1, BROADCAST, remote_mac, remote, [0; 6], local)),
        (1, frame(mac(9), mac(1), None, 0, 64)), // encapsulated to the remote host
        (1, frame(BROADCAST, mac(1), None, 0, 64)), // flooded here and replicated there
        (
            0,
            vxlan(
                vtep,
                remote_mac,
                remote,
                local,
                100,
                &frame(mac(1), mac(9), None, 0, 64),
            ),
        ),
        (
            0,
            vxlan(
                vtep,
                remote_mac,
                remote,
                local,
                100,
                &frame(mac(1), mac(77), None, 0, 64),
            ),
        ), // learned remote MAC
        (
            2,
            arp(
                1,
                BROADCAST,
                mac(2),
                [203, 0, 113, 2],
                [0; 6],
                [203, 0, 113, 9],
            ),
        ), // ARP responder
        (3, frame(mac(10), mac(3), None, 0, 64)), // Geneve-encapsulated
        (4, frame(mac(11), mac(4), None, 0, 64)), // GRE-encapsulated
        (
            0,
            pollux_tests::frames::geneve(
                vtep,
                remote_mac,
                remote,
                local,
                100,
                &[0, 1, 2, 0],
                &frame(mac(3), mac(10), None, 0, 64),
            ),
        ),
        (
            0,
            pollux_tests::frames::gre(
                vtep,
                remote_mac,
                remote,
                local,
                100,
                true,
                Some(1),
                &frame(mac(4), mac(11), None, 0, 64),
            ),
        ),
    ];
    for (port, f) in &scenarios {
        sw.wires.get_mut(port).unwrap().send_repeated(f, 64);
        sw.run();
    }
    sw.collect();

    COUNTING.store(true, Ordering::SeqCst);
    for _ in 0..20 {
        for (port, f) in &scenarios {
            sw.wires.get_mut(port).unwrap().send_repeated(f, 64);
        }
        while sw.worker.poll(sw.now_ns) > 0 {}
        for wire in sw.wires.values_mut() {
            wire.drain(usize::MAX, |_| {});
        }
    }
    COUNTING.store(false, Ordering::SeqCst);
    assert_eq!(
        ALLOCATIONS.load(Ordering::SeqCst),
        0,
        "the overlay path allocated"
    );
    let c = sw.counters();
    assert!(c.vxlan_encapsulated.get() >= 20 * 64 * 2);
    assert!(c.vxlan_decapsulated.get() >= 20 * 64 * 2);
    assert!(c.arp_responder_replies.get() >= 20 * 64);
    for kind in [
        &c.geneve_encapsulated,
        &c.geneve_decapsulated,
        &c.gre_encapsulated,
        &c.gre_decapsulated,
    ] {
        assert!(kind.get() >= 20 * 64);
    }
    sw.assert_conserved();
}

/// Policing (passing and dropping, both directions) and DSCP marking do not allocate.
#[test]
fn qos_does_not_allocate() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rate = ByteRate {
        max_kbps: 1000,
        burst_kbit: 100,
    };
    let mut b = SnapshotBuilder::new();
    b.network(NetworkUid(1), Segment::Local);
    for p in 1..=3u16 {
        b.access_port(PortId(p), NetworkUid(1), &[mac(p as u8)]);
    }
    b.qos(
        PortId(1),
        PortQos {
            egress: Some(rate),
            ingress: None,
            dscp: Some(46),
        },
    )
    .qos(
        PortId(3),
        PortQos {
            ingress: Some(rate),
            ..PortQos::default()
        },
    );
    let mut sw = MemSwitch::new(&b, &[1, 2, 3]);
    let udp4 = |from: u8, to: u8| {
        let (s, d) = ([198, 18, 1, from], [198, 18, 1, to]);
        ipv4(
            mac(to),
            mac(from),
            None,
            s,
            d,
            64,
            17,
            &udp(s, d, 1, 2, &[0; 32]),
        )
    };
    let scenarios = [(1u16, udp4(1, 2)), (2, udp4(2, 3))];
    let round = |sw: &mut MemSwitch| {
        for (port, f) in &scenarios {
            sw.wires.get_mut(port).unwrap().send_repeated(f, 64);
        }
        while sw.worker.poll(sw.now_ns) > 0 {}
        for wire in sw.wires.values_mut() {
            wire.drain(usize::MAX, |_| {});
        }
        sw.now_ns += 1_000_000;
    };
    round(&mut sw);
    COUNTING.store(true, Ordering::SeqCst);
    for _ in 0..20 {
        round(&mut sw);
    }
    COUNTING.store(false, Ordering::SeqCst);
    assert_eq!(
        ALLOCATIONS.load(Ordering::SeqCst),
        0,
        "the QoS stages allocated"
    );
    let c = sw.counters();
    assert!(c.port(PortId(1)).unwrap().policed_egress_packets.get() > 0);
    assert!(c.port(PortId(3)).unwrap().policed_ingress_packets.get() > 0);
    assert!(c.port(PortId(1)).unwrap().dscp_marked.get() > 0);
    sw.assert_conserved();
}
