//! Opening a tap: attaching to an existing one by name, or creating it.
//!
//! Like Open vSwitch's userspace `type=tap` ports, the port owns a queue file descriptor
//! of the tap. When a tap of that name exists in polluxd's network namespace (made with
//! `ip tuntap add dev tapX mode tap vnet_hdr multi_queue`, or by a VM manager), the port
//! attaches a queue to it and leaves the device as it found it: the device outlives the
//! port. Otherwise the port creates it, not persistent, so the kernel deletes it when the
//! port's descriptor closes, whatever way polluxd exits: the port never deletes a device
//! it did not create, and never leaves behind one it did.
//!
//! The descriptor keeps working when the netdev is moved to another namespace (`ip link
//! set tapX netns NS`, the usual case for a container): the name is only looked up once,
//! here, in polluxd's namespace.

use std::ffi::c_int;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use super::vnet::VNET_HDR_LEN;
use crate::netdev::Interface;

/// `IFF_*` bits of `TUNSETIFF`.
const IFF_TAP: c_int = libc::IFF_TAP;
const IFF_NO_PI: c_int = libc::IFF_NO_PI;
const IFF_VNET_HDR: c_int = libc::IFF_VNET_HDR;
const IFF_MULTI_QUEUE: c_int = libc::IFF_MULTI_QUEUE;

/// How the port came by its tap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// An existing device; it is left in place when the port closes.
    Attached {
        /// Whether the device was made with `multi_queue`.
        multi_queue: bool,
    },
    /// Created by the port, not persistent: the kernel removes it with the descriptor.
    Created,
}

/// An open tap queue.
#[derive(Debug)]
pub struct TapDevice {
    /// The queue's descriptor, non-blocking.
    pub fd: OwnedFd,
    /// The device's name.
    pub name: String,
    /// How the port came by it.
    pub origin: Origin,
    /// Whether TSO was negotiated (`TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 |
    /// TUN_F_TSO_ECN`): the kernel hands over TCP super-frames with a partial checksum,
    /// and takes them back whole.
    pub tso: bool,
}

/// The offloads a TSO port negotiates: checksums left partial, TCP segmentation over
/// IPv4 and IPv6 (with ECN). Not UFO nor USO: UDP super-frames would need a segmenter
/// of their own.
pub const TSO_OFFLOADS: libc::c_ulong = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;

// <linux/if_tun.h>, which the libc crate does not carry.
const TUN_F_CSUM: libc::c_ulong = 0x01;
const TUN_F_TSO4: libc::c_ulong = 0x02;
const TUN_F_TSO6: libc::c_ulong = 0x04;
const TUN_F_TSO_ECN: libc::c_ulong = 0x08;

/// `struct ifreq` as `TUNSETIFF` reads it: the name and `ifr_flags`, padded to 40 bytes.
#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IF_NAMESIZE],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl TapDevice {
    /// Attaches a queue to tap `name` or creates it (see the module documentation), with
    /// `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` (and `IFF_MULTI_QUEUE` when an existing device
    /// has it; a created one gets it too, so more queues can join later), a 12-byte
    /// little-endian virtio-net header, and TSO ([`TSO_OFFLOADS`]) when `tso` (else no
    /// offloads: the kernel checksums and segments before handing frames over).
    pub fn open_with(name: &str, tso: bool) -> io::Result<TapDevice> {
        if name.is_empty() || name.len() >= libc::IF_NAMESIZE || name.contains(['/', '\0']) {
            return Err(invalid(format!("{name:?} is not an interface name")));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| io::Error::new(e.kind(), format!("/dev/net/tun: {e}")))?;
        let fd = OwnedFd::from(file);
        // Looked up by index, not in /sys: sysfs shows the namespace it was mounted in,
        // which need not be this thread's.
        let exists = Interface::from(name).resolve().is_ok();
        let base = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        // The kernel attaches only with the device's own IFF_MULTI_QUEUE setting and
        // answers EINVAL otherwise (and for a device that is not a tap): try both.
        let origin = match set_iff(&fd, name, base | IFF_MULTI_QUEUE) {
            Ok(()) if exists => Origin::Attached { multi_queue: true },
            // Created with multi_queue, so more queues can join later.
            Ok(()) => Origin::Created,
            Err(e) if exists && e.raw_os_error() == Some(libc::EINVAL) => {
                match set_iff(&fd, name, base) {
                    Ok(()) => Origin::Attached { multi_queue: false },
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        return Err(invalid(format!(
                            "interface {name} exists and is not a tap (a tun, or another kind)"
                        )))
                    }
                    Err(e) => return Err(context(e, &format!("TUNSETIFF {name}"))),
                }
            }
            Err(e) => return Err(context(e, &format!("TUNSETIFF {name}"))),
        };
        set_int(
            &fd,
            libc::TUNSETVNETHDRSZ,
            VNET_HDR_LEN as c_int,
            "TUNSETVNETHDRSZ",
        )?;
        set_int(&fd, libc::TUNSETVNETLE, 1, "TUNSETVNETLE")?;
        // Set either way: an attached device may have had other offloads on (a VM
        // manager sets them, UFO among them), which the port could not take.
        let offloads = if tso { TSO_OFFLOADS } else { 0 };
        set_uint(&fd, libc::TUNSETOFFLOAD, offloads, "TUNSETOFFLOAD")?;
        Ok(TapDevice {
            fd,
            name: name.to_string(),
            origin,
            tso,
        })
    }

    /// [`TapDevice::open_with`] TSO on: what a port gets by default.
    pub fn open(name: &str) -> io::Result<TapDevice> {
        Self::open_with(name, true)
    }
}

/// `TUNSETIFF` on `fd` for device `name` with `flags`.
fn set_iff(fd: &OwnedFd, name: &str, flags: c_int) -> io::Result<()> {
    let mut req = IfReqFlags {
        name: [0; libc::IF_NAMESIZE],
        flags: flags as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` is a 40-byte
    // `#[repr(C)]` struct with the same layout for the fields it touches (the
    // NUL-terminated name, then the flags at offset 16), valid for the duration of the
    // call.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn context(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn set_int(fd: &OwnedFd, req: libc::Ioctl, value: c_int, what: &str) -> io::Result<()> {
    let mut v = value;
    // SAFETY: these TUNSET* requests read one `int` through the pointer, which points at
    // `v`, live for the call.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), req, &mut v) };
    check(ret, what)
}

fn set_uint(fd: &OwnedFd, req: libc::Ioctl, value: libc::c_ulong, what: &str) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long), no pointer.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), req, value) };
    check(ret, what)
}

fn check(ret: c_int, what: &str) -> io::Result<()> {
    if ret < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<IfReqFlags>(), 40);
        assert_eq!(std::mem::offset_of!(IfReqFlags, flags), 16);
    }

    #[test]
    fn bad_names_are_refused_before_any_syscall() {
        for name in ["", "a-name-of-16-byt", "a/b"] {
            assert_eq!(
                TapDevice::open(name).unwrap_err().kind(),
                io::ErrorKind::InvalidInput,
                "{name:?}"
            );
        }
    }
}
