//! Scenarios for the Pollux pipeline benchmarks, shared by the criterion benchmark and
//! the callgrind instruction counter so both measure exactly the same work.
//!
//! Each scenario is one worker on `mem` ports with a frame that takes one path through
//! the pipeline. A round offers one burst of 64 identical 64-byte frames, runs one worker
//! pass (receive copy-in, classify, L2, output, transmit copy-out), and empties the
//! output rings outside the measured pass.

pub mod lpm;

use pollux_dataplane::packet::MAX_BURST;
use pollux_dataplane::port::PortId;
use pollux_dataplane::snapshot::{NetworkUid, PhysnetId, Segment, SnapshotBuilder};
use pollux_tests::frames::{frame, mac, BROADCAST};
use pollux_tests::harness::MemSwitch;

/// One forwarding path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// VM port to VM port on one network, destination MAC static.
    AccessToAccess,
    /// VM port to a MAC learned behind the uplink: 802.1Q push.
    AccessToUplink,
    /// Uplink (tagged) to a VM port: 802.1Q pop, source learning refresh.
    UplinkToAccess,
    /// Broadcast from a VM port to 8 other ports of its network (7 VMs and the uplink).
    Flood8,
}

impl Scenario {
    /// Every scenario.
    pub const ALL: [Scenario; 4] = [
        Scenario::AccessToAccess,
        Scenario::AccessToUplink,
        Scenario::UplinkToAccess,
        Scenario::Flood8,
    ];

    /// Name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::AccessToAccess => "access_to_access",
            Scenario::AccessToUplink => "access_to_uplink_push",
            Scenario::UplinkToAccess => "uplink_to_access_pop",
            Scenario::Flood8 => "flood_8_ports",
        }
    }

    /// The scenario with this name.
    pub fn from_name(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// Frame size of every scenario (without FCS), the RFC 2544 minimum.
pub const FRAME_LEN: usize = 60;
/// Frames offered per round.
pub const BURST: usize = MAX_BURST;

const UPLINK: u16 = 0;
const OUTSIDE_MAC: u8 = 200;

/// A ready-to-run scenario.
#[derive(Debug)]
pub struct Bench {
    sw: MemSwitch,
    input: u16,
    frame: Vec<u8>,
    /// Frames each round emits (BURST, or BURST * 8 for the flood).
    pub emitted_per_round: usize,
}

impl Bench {
    /// Sets up `scenario` and warms it up (learning done, caches and rings primed).
    pub fn new(scenario: Scenario) -> Self {
        let phys = PhysnetId(1);
        let net = NetworkUid(1);
        let mut b = SnapshotBuilder::new();
        b.network(
            net,
            Segment::Vlan {
                physnet: phys,
                vid: 100,
            },
        )
        .uplink(PortId(UPLINK), phys);
        for p in 1..=8u16 {
            b.access_port(PortId(p), net, &[mac(p as u8)]);
        }
        let ports: Vec<u16> = (0..=8).collect();
        let mut sw = MemSwitch::new(&b, &ports);
        // Learn the outside MAC on the uplink, as real traffic would have.
        sw.send(
            UPLINK,
            &frame(BROADCAST, mac(OUTSIDE_MAC), Some(100), 0, FRAME_LEN),
        );
        sw.run();
        sw.collect();
        let (input, frame, fanout) = match scenario {
            Scenario::AccessToAccess => (1, frame(mac(2), mac(1), None, 0, FRAME_LEN), 1),
            Scenario::AccessToUplink => (1, frame(mac(OUTSIDE_MAC), mac(1), None, 0, FRAME_LEN), 1),
            Scenario::UplinkToAccess => (
                UPLINK,
                frame(mac(2), mac(OUTSIDE_MAC), Some(100), 0, FRAME_LEN),
                1,
            ),
            Scenario::Flood8 => (1, frame(BROADCAST, mac(1), None, 0, FRAME_LEN), 8),
        };
        let mut bench = Bench {
            sw,
            input,
            frame,
            emitted_per_round: BURST * fanout,
        };
        for _ in 0..100 {
            bench.round();
        }
        bench.sw.assert_conserved();
        bench
    }

    /// Offers one burst outside the measured code.
    #[inline]
    pub fn offer(&mut self) {
        let n = self
            .sw
            .wires
            .get_mut(&self.input)
            .expect("input port")
            .send_repeated(&self.frame, BURST);
        assert_eq!(n, BURST);
    }

    /// One worker pass: the measured code.
    #[inline]
    pub fn poll(&mut self) -> usize {
        self.sw.worker.poll(self.sw.now_ns)
    }

    /// Empties every output ring outside the measured code; returns frames taken.
    #[inline]
    pub fn drain(&mut self) -> usize {
        self.sw
            .wires
            .values_mut()
            .map(|w| w.drain(usize::MAX, |_| {}))
            .sum()
    }

    /// offer + poll + drain, checking that the whole burst went where it should.
    pub fn round(&mut self) {
        self.offer();
        let received = self.poll();
        let emitted = self.drain();
        assert_eq!((received, emitted), (BURST, self.emitted_per_round));
    }
}
