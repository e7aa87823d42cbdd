//! A bounded 64-byte UDP frame generator on AF_XDP, for the side-by-side benchmark.
//!
//! Usage: `pollux-gen IFACE DST_MAC SRC_MAC SECONDS [MAX_FRAMES [SRC_IP DST_IP]]`, run
//! inside the generator's network namespace. Sends identical minimum-size UDP frames
//! (by default 198.18.0.1:9 -> 198.18.99.99:9, an address assigned nowhere, so the sink's
//! kernel drops them without answering; both addresses must be in 198.18.0.0/15 or
//! 203.0.113.0/24) as fast as the socket takes them, for at most SECONDS and MAX_FRAMES,
//! and prints `sent N frames in S s (R Mpps)`.
//!
//! A veth that cannot take a frame pushes back on the sender instead of dropping it, so
//! what this reports as sent is what entered the wire.

use std::time::{Duration, Instant};

use pollux_dataplane::buf::FramePool;
use pollux_dataplane::packet::Packet;
use pollux_dataplane::port::Port;
use pollux_dataplane::wire::EthernetAddress;
use pollux_drivers::xsk::{AfXdpPort, Umem, XskConfig, XskSocket};

const BATCH: usize = 64;

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    s.parse::<EthernetAddress>().ok().map(|m| m.0)
}

/// A 60-byte Ethernet/IPv4/UDP frame (64 on the wire with the FCS).
fn udp_frame(dst: [u8; 6], src: [u8; 6], src_ip: [u8; 4], dst_ip: [u8; 4]) -> [u8; 60] {
    let mut f = [0u8; 60];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&46u16.to_be_bytes()); // 20 IP + 8 UDP + 18 payload
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src_ip);
    ip[16..20].copy_from_slice(&dst_ip);
    let sum = pollux_dataplane::wire::checksum::checksum(ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let udp = &mut f[34..42];
    udp[0..2].copy_from_slice(&9u16.to_be_bytes());
    udp[2..4].copy_from_slice(&9u16.to_be_bytes());
    udp[4..6].copy_from_slice(&26u16.to_be_bytes());
    // UDP checksum 0: none (allowed over IPv4).
    f
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        eprintln!("usage: pollux-gen IFACE DST_MAC SRC_MAC SECONDS [MAX_FRAMES [SRC_IP DST_IP]]");
        std::process::exit(2)
    };
    if args.len() < 5 {
        usage();
    }
    let iface = args[1].as_str();
    let (Some(dst), Some(src)) = (parse_mac(&args[2]), parse_mac(&args[3])) else {
        usage()
    };
    let seconds: f64 = args[4].parse().unwrap_or_else(|_| usage());
    let max_frames: u64 = args
        .get(5)
        .map_or(Ok(u64::MAX), |m| m.parse())
        .unwrap_or_else(|_| usage());
    let ip = |i: usize, default: [u8; 4]| -> [u8; 4] {
        args.get(i).map_or(default, |s| {
            s.parse::<std::net::Ipv4Addr>()
                .unwrap_or_else(|_| usage())
                .octets()
        })
    };
    let (src_ip, dst_ip) = (ip(6, [198, 18, 0, 1]), ip(7, [198, 18, 99, 99]));
    let in_test_range =
        |a: [u8; 4]| (a[0] == 198 && (a[1] & 0xfe) == 18) || (a[0..3] == [203, 0, 113]);
    if !in_test_range(src_ip) || !in_test_range(dst_ip) {
        eprintln!("pollux-gen: addresses must be in 198.18.0.0/15 or 203.0.113.0/24");
        std::process::exit(2);
    }
    let frame = udp_frame(dst, src, src_ip, dst_ip);

    let mut pool = FramePool::with_frames(8192).expect("frame pool");
    // SAFETY: the port (and with it every socket on this UMEM) is dropped before `pool`, at
    // the end of main in reverse declaration order; frames are only touched through
    // packets this program owns.
    let umem = unsafe { Umem::new(&pool) }.expect("UMEM");
    let config = XskConfig {
        rx_size: 64,
        fill_size: 64,
        ..XskConfig::default()
    };
    let socket = XskSocket::new(&umem, iface, 0, &config).unwrap_or_else(|e| {
        eprintln!("pollux-gen: {e}");
        std::process::exit(1)
    });
    let mut port = AfXdpPort::new(iface, vec![socket], &mut pool).expect("AF_XDP port");

    let deadline = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut sent = 0u64;
    let mut batch = Vec::with_capacity(BATCH);
    while sent < max_frames && start.elapsed() < deadline {
        batch.clear();
        while batch.len() < BATCH {
            let Some((id, offset)) = pool.alloc_with(&frame) else {
                break;
            };
            batch.push(Packet::received(id, offset, frame.len() as u16));
        }
        let n = port.tx_burst(0, &mut pool, &batch);
        for pkt in &batch[n..] {
            pool.free(pkt.frame);
        }
        sent += n as u64;
        if n == 0 {
            port.housekeeping(&mut pool);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    // Let the last completions arrive before the socket closes.
    for _ in 0..100 {
        port.housekeeping(&mut pool);
    }
    port.release_frames(&mut pool);
    println!(
        "sent {sent} frames in {elapsed:.3} s ({:.3} Mpps)",
        sent as f64 / elapsed / 1e6
    );
}
