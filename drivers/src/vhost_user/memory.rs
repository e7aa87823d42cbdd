//! The guest's memory as the front end shared it (`SET_MEM_TABLE`): each region mapped
//! from its file descriptor, and translation of guest-physical addresses (descriptors) and
//! front-end virtual addresses (ring locations) into this process, always with the length
//! checked against the region.
//!
//! The guest writes this memory concurrently and is not trusted: nothing here hands out a
//! Rust reference into it, only raw pointers that the rings read with volatile loads or
//! copy from with `ptr::copy_nonoverlapping`, each range checked first.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::ptr::NonNull;

/// One region as the front end describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionSpec {
    /// Guest-physical address of the region's first byte.
    pub guest_phys_addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// The front end's virtual address of the first byte (ring addresses use these).
    pub user_addr: u64,
    /// Where the region starts in its file.
    pub mmap_offset: u64,
}

#[derive(Debug)]
struct Region {
    spec: RegionSpec,
    /// The first byte of the region in this process (the mapping plus `mmap_offset`).
    host: NonNull<u8>,
    map: NonNull<u8>,
    map_len: usize,
}

/// Mapped guest memory. Unmapped when dropped: holders keep it in an `Arc`, so a worker
/// still using a table keeps it mapped (see `mailbox`).
#[derive(Debug)]
pub struct GuestMemory {
    regions: Vec<Region>,
}

// SAFETY: the mappings are shared memory owned by this value; it hands out raw pointers
// only, and every access through them is a volatile load/store or a byte copy that tolerates
// concurrent writers (the guest writes the same memory from another process anyway).
unsafe impl Send for GuestMemory {}
// SAFETY: as for `Send`; `&GuestMemory` allows translation only, which reads `regions`.
unsafe impl Sync for GuestMemory {}

/// Regions the front end may share at most (QEMU's vhost-user limit is 8 without
/// `CONFIGURE_MEM_SLOTS`, which Pollux does not negotiate).
pub const MAX_REGIONS: usize = 8;

impl GuestMemory {
    /// Maps `specs[i]` from `files[i]`, shared and read-write. Refuses zero-sized,
    /// overflowing or overlapping regions.
    pub fn map(specs: &[RegionSpec], files: &[File]) -> io::Result<GuestMemory> {
        let invalid = |m: &str| io::Error::new(io::ErrorKind::InvalidInput, m.to_string());
        if specs.len() != files.len() || specs.is_empty() || specs.len() > MAX_REGIONS {
            return Err(invalid(
                "memory table: regions and descriptors do not match",
            ));
        }
        for (i, a) in specs.iter().enumerate() {
            let bad = a.size == 0
                || a.guest_phys_addr.checked_add(a.size).is_none()
                || a.user_addr.checked_add(a.size).is_none()
                || a.mmap_offset.checked_add(a.size).is_none();
            if bad {
                return Err(invalid("memory table: a region is empty or wraps around"));
            }
            for b in &specs[..i] {
                let gpa_overlap = a.guest_phys_addr < b.guest_phys_addr + b.size
                    && b.guest_phys_addr < a.guest_phys_addr + a.size;
                let uva_overlap =
                    a.user_addr < b.user_addr + b.size && b.user_addr < a.user_addr + a.size;
                if gpa_overlap || uva_overlap {
                    return Err(invalid("memory table: regions overlap"));
                }
            }
        }
        let mut regions = Vec::with_capacity(specs.len());
        for (spec, file) in specs.iter().zip(files) {
            let map_len = usize::try_from(spec.mmap_offset + spec.size)
                .map_err(|_| invalid("memory table: region too large"))?;
            // Pages past the end of the file would fault (SIGBUS) when touched: refuse a
            // region the file does not hold. (A front end that shrinks the file later can
            // still do that to itself, as with any vhost-user back end.)
            let file_len = file.metadata()?.len();
            if file_len < spec.mmap_offset + spec.size {
                return Err(invalid(
                    "memory table: a region extends past the end of its file",
                ));
            }
            // SAFETY: a fresh shared mapping of `file` chosen by the kernel (no address
            // hint), so it cannot alias any Rust object; it is unmapped in `Drop` only.
            let map = unsafe {
                rustix::mm::mmap(
                    std::ptr::null_mut(),
                    map_len,
                    rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                    rustix::mm::MapFlags::SHARED,
                    file.as_fd(),
                    0,
                )
            }
            .map_err(io::Error::from)?;
            let map = NonNull::new(map.cast::<u8>()).ok_or_else(|| invalid("mmap gave null"))?;
            // SAFETY: `mmap_offset < map_len` (the size is non-zero), inside the mapping.
            let host = unsafe { map.add(spec.mmap_offset as usize) };
            regions.push(Region {
                spec: *spec,
                host,
                map,
                map_len,
            });
        }
        Ok(GuestMemory { regions })
    }

    /// The regions, as given.
    pub fn specs(&self) -> impl Iterator<Item = &RegionSpec> {
        self.regions.iter().map(|r| &r.spec)
    }

    /// Guest-physical `addr`: the host pointer and how many bytes from `addr` lie in the
    /// same region (at most `len`), or `None` when `addr` is in no region.
    #[inline]
    pub fn gpa_prefix(&self, addr: u64, len: u32) -> Option<(*mut u8, u32)> {
        for r in &self.regions {
            let off = addr.wrapping_sub(r.spec.guest_phys_addr);
            if off < r.spec.size {
                let avail = (r.spec.size - off).min(u64::from(len)) as u32;
                // SAFETY: `off < size`, so the pointer stays inside the mapped region.
                return Some((unsafe { r.host.as_ptr().add(off as usize) }, avail));
            }
        }
        None
    }

    /// Guest-physical `addr` with `len` bytes, wholly inside one region: its host
    /// pointer; `None` otherwise.
    pub fn gpa_range(&self, addr: u64, len: u64) -> Option<*mut u8> {
        self.regions.iter().find_map(|r| {
            let off = addr.checked_sub(r.spec.guest_phys_addr)?;
            (off.checked_add(len)? <= r.spec.size)
                // SAFETY: `off + len <= size`: the range lies inside the mapped region.
                .then(|| unsafe { r.host.as_ptr().add(off as usize) })
        })
    }

    /// Front-end virtual `addr` with `len` bytes, wholly inside one region and aligned
    /// to `align`; `None` otherwise.
    pub fn uva(&self, addr: u64, len: u64, align: u64) -> Option<*mut u8> {
        if !addr.is_multiple_of(align) {
            return None;
        }
        self.regions.iter().find_map(|r| {
            let off = addr.checked_sub(r.spec.user_addr)?;
            (off.checked_add(len)? <= r.spec.size)
                // SAFETY: `off + len <= size`: the range lies inside the mapped region.
                .then(|| unsafe { r.host.as_ptr().add(off as usize) })
        })
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        for r in &self.regions {
            // SAFETY: `map`/`map_len` are exactly what `mmap` returned; every pointer into
            // the mapping is derived from `self`, which is going away (holders share it in
            // an `Arc`, so no ring still points into it).
            let _ = unsafe { rustix::mm::munmap(r.map.as_ptr().cast(), r.map_len) };
        }
    }
}
