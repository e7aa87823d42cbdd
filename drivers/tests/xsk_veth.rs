//! AF_XDP on veth pairs in a private network namespace. Needs root (it creates a
//! namespace, veth pairs and AF_XDP sockets) and fails, never skips, without it.
//!
//! - TX: frames queued with `tx_burst` arrive on the veth peer byte for byte (read with an
//!   AF_PACKET socket), on two ports whose sockets share one UMEM (`XDP_SHARED_UMEM`);
//!   every completion comes back and `release_frames` returns the whole pool.
//! - RX: with the XDP redirect program attached and the socket in its `XSKMAP`, frames
//!   sent from the peer come out of `rx_burst` byte for byte.
//!
//! Only link-layer frames with a local-experimental EtherType (0x88b5) are used; nothing
//! leaves the namespace, which is deleted on every exit path.

use std::time::{Duration, Instant};

use pollux_dataplane::buf::FramePool;
use pollux_dataplane::packet::{Batch, Packet};
use pollux_dataplane::port::Port;
use pollux_drivers::xdp::{XdpMode, XdpProgram};
use pollux_drivers::xsk::{AfXdpPort, BindMode, Umem, XskConfig, XskSocket};
use pollux_testkit::netns::{self, Topology};
use pollux_testkit::packet_socket::PacketSocket;

const ETHERTYPE: [u8; 2] = [0x88, 0xb5];

/// One namespace (the kit's, deleted on drop) holding the veth pairs `pairs`, all up.
/// Checks for root first: the tests fail, never skip, without it.
fn veths(pairs: &[(&str, &str)]) -> Topology {
    netns::require_root();
    let mut topo = Topology::new();
    topo.add_ns("x").expect("namespace");
    for (a, b) in pairs {
        topo.veth("x", a, "x", b).expect("veth pair");
    }
    topo
}

/// Runs `f` on a thread that has entered the namespace of `topo`.
fn enter<T: Send>(topo: &Topology, f: impl FnOnce() -> T + Send) -> T {
    let ns = topo.ns("x").expect("namespace");
    ns.run_in(f).expect("entering the namespace")
}

/// A broadcast test frame carrying `tag` and `i`, `len` bytes long.
fn frame(tag: &str, i: usize, len: usize) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend([0x02, 0, 0, 0, 0, 0x0a]);
    f.extend(ETHERTYPE);
    f.extend(format!("pollux-xsk {tag} #{i}").bytes());
    while f.len() < len {
        f.push((f.len() % 251) as u8);
    }
    f
}

fn small_config() -> XskConfig {
    XskConfig {
        rx_size: 256,
        tx_size: 256,
        fill_size: 256,
        comp_size: 256,
        bind_mode: BindMode::Auto,
        need_wakeup: true,
        ..XskConfig::default()
    }
}

/// Calls housekeeping until every transmitted frame has completed.
fn wait_completions(port: &mut AfXdpPort, pool: &mut FramePool, sent: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        port.housekeeping(pool);
        let done = extra(port, "tx_completed");
        if done >= sent {
            assert_eq!(done, sent);
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: only {done} of {sent} completions",
            port.name()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn extra(port: &AfXdpPort, name: &str) -> u64 {
    port.stats()
        .extra
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, v)| v)
        .unwrap_or_else(|| panic!("no counter {name}"))
}

#[test]
#[ignore = "needs root: XDP programs and AF_XDP sockets (run with --include-ignored as root)"]
fn tx_reaches_the_peer_byte_for_byte_on_two_ports_sharing_one_umem() {
    let topo = veths(&[("pxa", "pxb"), ("pxc", "pxd")]);
    enter(&topo, || {
        let mut pool = FramePool::with_frames(2048).unwrap();
        // SAFETY: `pool` outlives both ports, which are released (sockets closed) below
        // before it drops, and the test touches only frames it owns.
        let umem = unsafe { Umem::new(&pool) }.unwrap();
        let sock_a = XskSocket::new(&umem, "pxa", 0, &small_config()).unwrap();
        let sock_c = XskSocket::new(&umem, "pxc", 0, &small_config()).unwrap();
        eprintln!("pxa: {} ({})", sock_a.mode(), sock_a.mode_note());
        eprintln!("pxc: {} ({})", sock_c.mode(), sock_c.mode_note());
        assert!(!sock_a.is_shared());
        assert!(sock_c.is_shared(), "second socket shares the UMEM");
        assert_eq!(umem.sockets(), 2);
        let mut port_a = AfXdpPort::new("pxa", vec![sock_a], &mut pool).unwrap();
        let mut port_c = AfXdpPort::new("pxc", vec![sock_c], &mut pool).unwrap();
        let filled = 2 * 256;
        assert_eq!(port_a.frames_held() + port_c.frames_held(), filled);

        let peer_b = PacketSocket::open("pxb");
        let peer_d = PacketSocket::open("pxd");
        // 100 frames (more than one 32-frame copy-mode kick, more than one burst of 64),
        // of varied sizes up to a full 1514-byte Ethernet frame.
        let n = 100;
        for (port, peer, tag) in [(&mut port_a, &peer_b, "a"), (&mut port_c, &peer_d, "c")] {
            let frames: Vec<Vec<u8>> = (0..n).map(|i| frame(tag, i, 60 + i * 14)).collect();
            let pkts: Vec<Packet> = frames
                .iter()
                .map(|f| {
                    let (id, off) = pool.alloc_with(f).unwrap();
                    Packet::received(id, off, f.len() as u16)
                })
                .collect();
            let mut sent = 0;
            for chunk in pkts.chunks(64) {
                sent += port.tx_burst(0, &mut pool, chunk);
            }
            assert_eq!(sent, n, "the tx ring has room for every frame");
            let got = peer.recv_ethertype(ETHERTYPE, n, Duration::from_secs(5));
            assert_eq!(got.len(), n, "frames seen on the peer of {}", port.name());
            for (i, (g, f)) in got.iter().zip(&frames).enumerate() {
                assert_eq!(g, f, "frame {i} from {} differs", port.name());
            }
            wait_completions(port, &mut pool, n as u64);
            let stats = port.stats();
            assert_eq!(stats.tx_packets, n as u64);
            assert_eq!(
                stats.tx_bytes,
                frames.iter().map(|f| f.len() as u64).sum::<u64>()
            );
            assert_eq!(extra(port, "xdp_tx_invalid_descs"), 0);
            assert_eq!(extra(port, "tx_bad_completions"), 0);
        }
        assert_eq!(port_a.frames_held() + port_c.frames_held(), filled);
        port_a.release_frames(&mut pool);
        port_c.release_frames(&mut pool);
        assert_eq!(port_a.frames_held() + port_c.frames_held(), 0);
        assert_eq!(
            pool.available(),
            pool.capacity() as usize,
            "no frame leaked"
        );
        assert_eq!(umem.sockets(), 0, "release_frames closed the sockets");
        let mut batch = Batch::with_capacity(64);
        assert_eq!(port_a.rx_burst(0, &mut pool, &mut batch), 0);
    });
}

#[test]
#[ignore = "needs root: XDP programs and AF_XDP sockets (run with --include-ignored as root)"]
fn rx_via_xdp_redirect_returns_the_frames_byte_for_byte() {
    let topo = veths(&[("pxa", "pxb")]);
    enter(&topo, || {
        let mut pool = FramePool::with_frames(1024).unwrap();
        // SAFETY: as in the tx test: released before the pool drops.
        let umem = unsafe { Umem::new(&pool) }.unwrap();
        let sock = XskSocket::new(&umem, "pxa", 0, &small_config()).unwrap();
        eprintln!("pxa: {} ({})", sock.mode(), sock.mode_note());
        let xdp = XdpProgram::attach("pxa", XdpMode::Auto, 1).unwrap();
        eprintln!("XDP program on pxa in {} mode", xdp.mode());
        xdp.register(0, sock.fd()).unwrap();
        let mut port = AfXdpPort::new("pxa", vec![sock], &mut pool).unwrap();

        let peer = PacketSocket::open("pxb");
        let n = 100;
        let frames: Vec<Vec<u8>> = (0..n).map(|i| frame("rx", i, 60 + i * 14)).collect();
        for f in &frames {
            peer.send(f);
        }
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut offsets = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut batch = Batch::with_capacity(64);
        while got.len() < n && Instant::now() < deadline {
            batch.clear();
            if port.rx_burst(0, &mut pool, &mut batch) == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            for pkt in batch.as_slice() {
                let data = pool.data(pkt);
                if data.len() >= 14 && data[12..14] == ETHERTYPE {
                    got.push(data.to_vec());
                    offsets.push(pkt.offset);
                }
                pool.free(pkt.frame);
            }
        }
        assert_eq!(got.len(), n, "frames received through rx_burst");
        for (i, (g, f)) in got.iter().zip(&frames).enumerate() {
            assert_eq!(g, f, "received frame {i} differs");
        }
        assert!(
            offsets.iter().all(|&o| o >= pool.headroom()),
            "rx data starts after the pool's headroom: {offsets:?}"
        );
        let stats = port.stats();
        assert!(stats.rx_packets >= n as u64);
        assert_eq!(extra(&port, "rx_bad_descs"), 0);
        drop(xdp);
        port.release_frames(&mut pool);
        assert_eq!(
            pool.available(),
            pool.capacity() as usize,
            "no frame leaked"
        );
    });
}
