//! A raw AF_PACKET socket on one interface, for tests that put frames on a wire and read
//! what comes back without any protocol stack in between (the driver tests on veth and
//! tap devices).

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::net::sockopt::Timeout;
use rustix::net::{RecvFlags, SendFlags};

/// The index of interface `name` in the calling thread's namespace; panics naming it
/// when there is none.
pub fn ifindex(name: &str) -> u32 {
    let c = CString::new(name).unwrap();
    // SAFETY: `c` is NUL-terminated and outlives the call, which only reads it.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(
        index,
        0,
        "no interface {name}: {}",
        io::Error::last_os_error()
    );
    index
}

/// An AF_PACKET socket bound to one interface, seeing every frame on it.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// Opens the socket on `ifname` with a 50 ms receive timeout; panics on failure.
    pub fn open(ifname: &str) -> PacketSocket {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        assert!(raw >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain data for which all-zero is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex(ifname) as i32;
        // SAFETY: `sll` is a valid sockaddr_ll of the length passed, read during the call.
        let ret = unsafe {
            libc::bind(
                raw,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(
            ret,
            0,
            "bind AF_PACKET to {ifname}: {}",
            io::Error::last_os_error()
        );
        rustix::net::sockopt::set_socket_timeout(
            &fd,
            Timeout::Recv,
            Some(Duration::from_millis(50)),
        )
        .unwrap();
        PacketSocket { fd }
    }

    /// Sends `frame` out of the interface, whole.
    pub fn send(&self, frame: &[u8]) {
        let n = rustix::net::send(&self.fd, frame, SendFlags::empty()).unwrap();
        assert_eq!(n, frame.len());
    }

    /// The frames of EtherType `ethertype` seen within `timeout`, until `want` arrived.
    pub fn recv_ethertype(
        &self,
        ethertype: [u8; 2],
        want: usize,
        timeout: Duration,
    ) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4096];
        while got.len() < want && Instant::now() < deadline {
            match rustix::net::recv(&self.fd, &mut buf[..], RecvFlags::empty()) {
                Ok((n, _)) if n >= 14 && buf[12..14] == ethertype => got.push(buf[..n].to_vec()),
                Ok(_) => {} // IPv6 autoconfiguration and the like.
                Err(e) if e == rustix::io::Errno::AGAIN || e == rustix::io::Errno::INTR => {}
                Err(e) => panic!("recv AF_PACKET: {e}"),
            }
        }
        got
    }
    /// Every frame that arrived on the interface (not those sent from it) until `quiet`
    /// passed without one or `limit` frames were read.
    pub fn recv_incoming(&self, quiet: Duration, limit: usize) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4096];
        let mut last = Instant::now();
        while got.len() < limit && last.elapsed() < quiet {
            // SAFETY: sockaddr_ll is plain data for which all-zero is valid.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: `buf` and `from` are valid for writes of the lengths passed and
            // outlive the call; the fd is open.
            let n = unsafe {
                libc::recvfrom(
                    std::os::fd::AsRawFd::as_raw_fd(&self.fd),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut from_len,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => continue,
                    _ => panic!("recvfrom AF_PACKET: {e}"),
                }
            }
            if from.sll_pkttype != libc::PACKET_OUTGOING {
                got.push(buf[..n as usize].to_vec());
                last = Instant::now();
            }
        }
        got
    }
}
