//! A guest played by a test: one shared memfd holding up to four split rings (queue 0:
//! the guest's receive queue, queue 1: its transmit queue; 2 and 3 a second pair) and
//! buffers, written as a virtio-net
//! driver would. Shared by the vhost-user tests (each uses a part of it).
#![allow(dead_code)]

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use pollux_drivers::vhost_user::memory::{GuestMemory, RegionSpec};
use pollux_drivers::vhost_user::ring::VringAddrs;

pub const GPA: u64 = 0x1_0000;
pub const UVA: u64 = 0x7000_0000_0000;
pub const SIZE: usize = 1 << 20;
pub const QSIZE: u16 = 256;
/// Ring parts of queue q at these offsets (plus q * 0x4000).
pub const DESC: u64 = 0x0;
pub const AVAIL: u64 = 0x1000;
pub const USED: u64 = 0x2000;
/// Buffers from here.
pub const BUF: u64 = 0x10000;
pub const HDR: usize = 12;

/// The guest's view: the same memfd, mapped again.
pub struct Guest {
    base: *mut u8,
    pub file: File,
    avail_idx: [u16; 4],
}

impl Guest {
    pub fn new() -> Guest {
        // SAFETY: a plain memfd_create with a NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"pollux-vu-test".as_ptr(), 0) };
        assert!(fd >= 0, "memfd_create");
        // SAFETY: `fd` is a fresh descriptor this File now owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(SIZE as u64).unwrap();
        // SAFETY: a new shared mapping of the whole file, unmapped in Drop.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        Guest {
            base: base.cast(),
            file,
            avail_idx: [0; 4],
        }
    }

    pub fn memory(&self) -> Arc<GuestMemory> {
        let spec = RegionSpec {
            guest_phys_addr: GPA,
            size: SIZE as u64,
            user_addr: UVA,
            mmap_offset: 0,
        };
        Arc::new(GuestMemory::map(&[spec], &[self.file.try_clone().unwrap()]).unwrap())
    }

    pub fn write(&self, off: u64, bytes: &[u8]) {
        assert!(off as usize + bytes.len() <= SIZE);
        // SAFETY: in bounds of this mapping (checked above).
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.add(off as usize), bytes.len())
        }
    }

    pub fn read(&self, off: u64, len: usize) -> Vec<u8> {
        assert!(off as usize + len <= SIZE);
        let mut v = vec![0; len];
        // SAFETY: in bounds of this mapping (checked above).
        unsafe { std::ptr::copy_nonoverlapping(self.base.add(off as usize), v.as_mut_ptr(), len) }
        v
    }

    pub fn q(q: usize) -> u64 {
        q as u64 * 0x4000
    }

    pub fn desc(&self, q: usize, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.write(Self::q(q) + DESC + 16 * u64::from(i), &d);
    }

    pub fn make_available(&mut self, q: usize, head: u16) {
        let idx = self.avail_idx[q];
        let slot = u64::from(idx % QSIZE);
        self.write(Self::q(q) + AVAIL + 4 + 2 * slot, &head.to_le_bytes());
        self.avail_idx[q] = idx.wrapping_add(1);
        self.set_avail_idx(q, self.avail_idx[q]);
    }

    pub fn set_avail_idx(&self, q: usize, idx: u16) {
        self.write(Self::q(q) + AVAIL + 2, &idx.to_le_bytes());
    }

    pub fn used_idx(&self, q: usize) -> u16 {
        let b = self.read(Self::q(q) + USED + 2, 2);
        u16::from_le_bytes([b[0], b[1]])
    }

    pub fn used(&self, q: usize, i: u16) -> (u32, u32) {
        let b = self.read(Self::q(q) + USED + 4 + 8 * u64::from(i % QSIZE), 8);
        (
            u32::from_le_bytes(b[..4].try_into().unwrap()),
            u32::from_le_bytes(b[4..].try_into().unwrap()),
        )
    }

    pub fn addrs(q: usize) -> VringAddrs {
        VringAddrs {
            size: QSIZE,
            desc: UVA + Self::q(q) + DESC,
            avail: UVA + Self::q(q) + AVAIL,
            used: UVA + Self::q(q) + USED,
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `new`.
        unsafe { libc::munmap(self.base.cast(), SIZE) };
    }
}
