//! Several workers on mem ports: every port polled by one worker, frames for a port
//! another worker polls handed to it, nothing lost or reordered within a flow, every
//! frame accounted for once summed over the workers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pollux_dataplane::port::PortId;
use pollux_dataplane::routing::{InterfaceSpec, RouteSpec, RouterSpec, RouterUid};
use pollux_dataplane::snapshot::{NetworkUid, PhysnetId, Segment, SnapshotBuilder};
use pollux_drivers::mem::{MemPortConfig, MemWire};
use pollux_tests::frames::{
    arp, frame, icmp_echo, ipv4, l3_offset, mac, seq_of, vid_of, BROADCAST,
};
use pollux_tests::workers::{assert_conserved, MultiSwitch};

const NET: NetworkUid = NetworkUid(1);
const PORTS: u16 = 8;
/// Frames in flight at most: below a handoff ring's depth, so that a worker the
/// scheduler put aside (the tests run more workers than CPUs) cannot make another's
/// ring overflow, and "no loss" is what the design promises, not luck.
const WINDOW: u64 = 512;

fn topology() -> SnapshotBuilder {
    let mut b = SnapshotBuilder::new();
    b.network(NET, Segment::Local);
    for p in 0..PORTS {
        b.access_port(PortId(p), NET, &[port_mac(p)]);
    }
    b
}

fn port_mac(p: u16) -> [u8; 6] {
    mac(p as u8 + 1)
}

fn port_of_mac(m: &[u8]) -> u16 {
    u16::from(m[5]) - 1
}

/// Every port sends `per_flow` frames to the next port and as many to the one after;
/// checks that each arrives once, in order within its flow, then conservation.
fn flows_cross_workers(workers: u16, per_flow: u32) {
    let ports: Vec<u16> = (0..PORTS).collect();
    let snapshot = topology().build(1).expect("valid");
    let ring = MemPortConfig {
        depth: 2048,
        ..MemPortConfig::default()
    };
    let mut sw = MultiSwitch::start_with(snapshot, &ports, workers, ring);
    let flows: Vec<(u16, u16)> = ports
        .iter()
        .flat_map(|&p| [(p, (p + 1) % PORTS), (p, (p + 2) % PORTS)])
        .collect();
    let cross = flows
        .iter()
        .filter(|(a, b)| sw.owners[a] != sw.owners[b])
        .count();
    assert!(cross > 0, "some flows cross workers");
    let total = flows.len() as u64 * u64::from(per_flow);
    // Next sequence number to send and to expect, per flow.
    let mut next_seq: BTreeMap<(u16, u16), u32> = flows.iter().map(|&f| (f, 0)).collect();
    let mut expect: BTreeMap<(u16, u16), u32> = next_seq.clone();
    let (mut sent, mut received) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(60);
    while received < total {
        assert!(
            Instant::now() < deadline,
            "{received} of {total} frames arrived"
        );
        for &(src, dst) in &flows {
            let seq = next_seq.get_mut(&(src, dst)).expect("flow");
            if *seq < per_flow && sent - received < WINDOW {
                let f = frame(port_mac(dst), port_mac(src), None, *seq, 64);
                if sw.wires.get_mut(&src).expect("port").send(&f) {
                    *seq += 1;
                    sent += 1;
                }
            }
        }
        for (&port, wire) in sw.wires.iter_mut() {
            while let Some(f) = wire.recv() {
                let src = port_of_mac(&f[6..12]);
                assert_eq!(port_of_mac(&f[..6]), port, "delivered to its destination");
                let want = expect.get_mut(&(src, port)).expect("a flow of the test");
                assert_eq!(seq_of(&f), *want, "flow {src}->{port} in order, none lost");
                *want += 1;
                received += 1;
            }
        }
        std::thread::yield_now();
    }
    assert_eq!(sent, total);
    let (stopped, mut wires) = sw.stop();
    for wire in wires.values_mut() {
        assert!(wire.recv().is_none(), "no frame beyond those sent");
    }
    assert_conserved(&stopped);
    let handed: u64 = stopped.iter().map(|w| w.counters().handoffs.get()).sum();
    assert_eq!(
        handed,
        cross as u64 * u64::from(per_flow),
        "exactly the frames of the flows that cross workers were handed off"
    );
    for w in &stopped {
        let c = w.counters();
        assert_eq!(
            c.dropped_total(),
            0,
            "worker {}: {:?}",
            w.id(),
            c.drop_summary()
        );
        assert_eq!(c.handoff_drops.get(), 0);
        assert!(c.rx_packets.get() > 0, "worker {} polled its ports", w.id());
        // Each port is polled by exactly one worker: only it counts receives there.
        for p in 0..PORTS {
            let rx = c.port(PortId(p)).map_or(0, |pc| pc.rx_packets.get());
            if rx > 0 {
                assert_eq!(
                    p as usize % usize::from(workers),
                    usize::from(w.id()),
                    "port {p} is polled by its owner only"
                );
            }
        }
    }
}

#[test]
fn two_workers_hand_frames_over_without_loss_or_reordering() {
    flows_cross_workers(2, 2_000);
}

#[test]
fn four_workers_hand_frames_over_without_loss_or_reordering() {
    flows_cross_workers(4, 1_000);
}

#[test]
fn a_flood_reaches_ports_of_every_worker_once() {
    let ports: Vec<u16> = (0..PORTS).collect();
    let mut sw = MultiSwitch::start(topology().build(1).expect("valid"), &ports, 4);
    let f = frame(BROADCAST, port_mac(0), None, 7, 64);
    assert!(sw.wires.get_mut(&0).expect("port 0").send(&f));
    let mut got: BTreeMap<u16, Vec<Vec<u8>>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.values().map(Vec::len).sum::<usize>() < usize::from(PORTS) - 1 {
        assert!(Instant::now() < deadline, "flood copies missing: {got:?}");
        for (&p, wire) in sw.wires.iter_mut() {
            while let Some(frame) = wire.recv() {
                got.entry(p).or_default().push(frame);
            }
        }
        std::thread::yield_now();
    }
    // Give a stray duplicate the time to show up.
    std::thread::sleep(Duration::from_millis(50));
    let (stopped, mut wires) = sw.stop();
    for (&p, wire) in wires.iter_mut() {
        got.entry(p).or_default().extend(wire.recv_all());
    }
    assert!(
        !got.contains_key(&0) || got[&0].is_empty(),
        "never back to the sender"
    );
    for p in 1..PORTS {
        assert_eq!(got[&p], vec![f.clone()], "port {p} gets one copy");
    }
    assert_conserved(&stopped);
    // Port 0's worker made the copies and handed those for other workers' ports over.
    let c = stopped[0].counters();
    assert_eq!(c.replicas.get(), u64::from(PORTS) - 2);
    assert_eq!(c.handoffs.get(), 6, "the copies for ports 1-3 and 5-7");
}

/// Waits until `port`'s wire emits a frame.
fn next_frame(sw: &mut MultiSwitch, port: u16) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(f) = sw.wires.get_mut(&port).expect("port").recv() {
            return f;
        }
        assert!(Instant::now() < deadline, "nothing left port {port}");
        std::thread::yield_now();
    }
}

fn send(sw: &mut MultiSwitch, port: u16, frame: &[u8]) {
    let wire: &mut MemWire = sw.wires.get_mut(&port).expect("port");
    assert!(wire.send(frame));
}

/// A router between a VM port polled by worker 0 and an uplink polled by worker 1: the
/// neighbours one worker learns from ARP reach the other, which was waiting for them.
#[test]
fn neighbours_learned_on_one_worker_release_packets_waiting_on_another() {
    const NET_A: NetworkUid = NetworkUid(10);
    const NET_EXT: NetworkUid = NetworkUid(30);
    const PHYS: PhysnetId = PhysnetId(1);
    const EXT_VID: u16 = 300;
    const VM1: u16 = 1;
    const UPLINK: u16 = 9;
    const VM1_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 1];
    const EXT_GW_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 1];
    const ROUTER_MAC: [u8; 6] = [0x02, 0x70, 0x6c, 0, 0, 1];
    const VM1_IP: [u8; 4] = [198, 18, 1, 10];
    const GW_A: [u8; 4] = [198, 18, 1, 1];
    const ROUTER_EXT: [u8; 4] = [203, 0, 113, 10];
    const EXT_GW: [u8; 4] = [203, 0, 113, 1];
    const INTERNET: [u8; 4] = [203, 0, 113, 200];
    let iface = |network, ip: [u8; 4], prefix_len| InterfaceSpec {
        network,
        ip: ip.into(),
        prefix_len,
        mtu: 1500,
    };
    let mut b = SnapshotBuilder::new();
    b.network(NET_A, Segment::Local)
        .network(
            NET_EXT,
            Segment::Vlan {
                physnet: PHYS,
                vid: EXT_VID,
            },
        )
        .access_port(PortId(VM1), NET_A, &[VM1_MAC])
        .uplink(PortId(UPLINK), PHYS)
        .router(RouterSpec {
            uid: RouterUid(1),
            mac: ROUTER_MAC,
            interfaces: vec![iface(NET_A, GW_A, 24), iface(NET_EXT, ROUTER_EXT, 25)],
            external: Some(1),
            enable_snat: false,
            floating_ips: Vec::new(),
            metering: Vec::new(),
            routes: vec![RouteSpec {
                destination: [0, 0, 0, 0].into(),
                prefix_len: 0,
                nexthop: EXT_GW.into(),
            }],
        });
    let mut sw = MultiSwitch::start(b.build(1).expect("valid"), &[VM1, UPLINK], 2);
    assert_eq!((sw.owners[&VM1], sw.owners[&UPLINK]), (0, 1));

    // Worker 0 routes VM1's ping and asks for the gateway on the uplink (worker 1's).
    let out = ipv4(
        ROUTER_MAC,
        VM1_MAC,
        None,
        VM1_IP,
        INTERNET,
        64,
        1,
        &icmp_echo(false, 7, 1),
    );
    send(&mut sw, VM1, &out);
    let request = next_frame(&mut sw, UPLINK);
    assert_eq!(vid_of(&request), Some(EXT_VID));
    assert_eq!(
        &request[42..46],
        &EXT_GW,
        "asks for the default route's next hop"
    );
    // The answer comes in on worker 1; worker 0 hears of it and its packet goes.
    let mut answer = arp(2, ROUTER_MAC, EXT_GW_MAC, EXT_GW, ROUTER_MAC, ROUTER_EXT);
    answer.splice(12..12, [0x81, 0x00, (EXT_VID >> 8) as u8, EXT_VID as u8]);
    send(&mut sw, UPLINK, &answer);
    let routed = next_frame(&mut sw, UPLINK);
    assert_eq!(&routed[..6], &EXT_GW_MAC);
    let l3 = l3_offset(&routed);
    assert_eq!(routed[l3 + 8], 63, "TTL decremented once");

    // The reply comes in on worker 1, which asks for VM1 (on worker 0's port).
    let back = ipv4(
        ROUTER_MAC,
        EXT_GW_MAC,
        Some(EXT_VID),
        INTERNET,
        VM1_IP,
        50,
        1,
        &icmp_echo(true, 7, 1),
    );
    send(&mut sw, UPLINK, &back);
    let request = next_frame(&mut sw, VM1);
    assert_eq!(&request[..6], &BROADCAST);
    assert_eq!(&request[38..42], &VM1_IP);
    send(
        &mut sw,
        VM1,
        &arp(2, ROUTER_MAC, VM1_MAC, VM1_IP, ROUTER_MAC, GW_A),
    );
    let routed = next_frame(&mut sw, VM1);
    assert_eq!(&routed[..6], &VM1_MAC);
    assert_eq!(vid_of(&routed), None);

    // Both workers now know both neighbours: the next packets need no ARP.
    send(&mut sw, VM1, &out);
    assert_eq!(&next_frame(&mut sw, UPLINK)[..6], &EXT_GW_MAC);
    send(&mut sw, UPLINK, &back);
    assert_eq!(&next_frame(&mut sw, VM1)[..6], &VM1_MAC);

    let (stopped, _wires) = sw.stop();
    assert_conserved(&stopped);
    for w in &stopped {
        let c = w.counters();
        assert_eq!(
            c.neighbor_news.get(),
            1,
            "worker {} heard of one neighbour",
            w.id()
        );
        assert_eq!(c.originated.get(), 1, "worker {} asked once", w.id());
        assert_eq!(c.dropped_total(), 0, "{:?}", c.drop_summary());
    }
}

/// What a worker sends to a port whose queue is moving (see `Worker::hold_port`) waits in
/// the worker, in order, and goes out once the port is back; beyond `MAX_HELD` frames the
/// rest are counted drops (`queue_move_hold_full`), never lost silently.
#[test]
fn frames_to_a_moving_port_are_held_in_order_then_sent() {
    use pollux_dataplane::drop::DropReason;
    use pollux_dataplane::output::MAX_HELD;
    use pollux_tests::harness::MemSwitch;

    use pollux_dataplane::worker::WorkerConfig;
    let mut sw = MemSwitch::with(
        &topology(),
        &[0, 1],
        WorkerConfig::default(),
        MemPortConfig::default(),
        2 * MAX_HELD as u32,
    );
    let port = sw.worker.take_port(PortId(1)).expect("port 1 attached");
    sw.worker.hold_port(PortId(1));
    let n = MAX_HELD as u32 + 10;
    let mut sent = 0u32;
    while sent < n {
        // The rx ring is smaller than MAX_HELD: offer a ring's worth, then run.
        for _ in 0..512.min(n - sent) {
            sw.send(0, &frame(port_mac(1), port_mac(0), None, sent, 64));
            sent += 1;
        }
        sw.run();
    }
    assert_eq!(sw.worker.ports().held(), MAX_HELD);
    let c = sw.counters();
    assert_eq!(
        c.drops[DropReason::QueueMoveHoldFull as usize].get(),
        10,
        "the frames beyond the hold, counted"
    );
    // The port comes back (as on the worker a queue moved to): the held frames go out
    // first, in order, then new ones.
    sw.worker.attach(PortId(1), port, &[0]);
    sw.worker.release_held(PortId(1), None);
    sw.send(0, &frame(port_mac(1), port_mac(0), None, n, 64));
    sw.run();
    let mut seqs = Vec::new();
    let wire = sw.wires.get_mut(&1).expect("wire 1");
    while let Some(f) = wire.recv() {
        seqs.push(seq_of(&f));
    }
    let want: Vec<u32> = (0..MAX_HELD as u32).chain([n]).collect();
    assert_eq!(seqs, want);
    assert_eq!(sw.worker.ports().held(), 0);
    sw.assert_conserved();
}
