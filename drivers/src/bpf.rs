//! Thin safe wrappers over the bpf(2) syscall, without libbpf.
//!
//! Only what the AF_XDP driver needs: create a map (an `XSKMAP`), update and delete its
//! elements, load a program from raw 8-byte instructions, and attach it to an interface
//! with a BPF link. The `bpf_attr` union is modelled by one `#[repr(C)]` struct per
//! command holding just the leading members that command reads; the kernel treats the
//! bytes we do not pass as zero.
//!
//! Every kernel object is held as an [`OwnedFd`] and closed on drop. Closing the last fd
//! of a link detaches its program, so a process that dies (even by `SIGKILL`) leaves no
//! program behind on the interface.
//!
//! Errors are [`io::Error`]s that say which call failed and on what; [`os_error`] recovers
//! the errno through that context.

use std::error::Error;
use std::ffi::CStr;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

// bpf(2) commands (enum bpf_cmd).
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;

/// `BPF_MAP_TYPE_XSKMAP` (enum bpf_map_type): key = rx queue index, value = AF_XDP socket fd.
pub const BPF_MAP_TYPE_XSKMAP: u32 = 17;
/// `BPF_PROG_TYPE_XDP` (enum bpf_prog_type).
pub const BPF_PROG_TYPE_XDP: u32 = 6;
/// `BPF_XDP` (enum bpf_attach_type): attach an XDP program to a netdev via a link.
pub const BPF_XDP: u32 = 37;
/// `XDP_FLAGS_SKB_MODE`: generic XDP, run by the core stack after the skb is built.
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
/// `XDP_FLAGS_DRV_MODE`: native XDP, run by the driver before any skb exists.
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
/// `BPF_ANY`: create the element or replace it.
pub const BPF_ANY: u64 = 0;

/// License passed with every program. GPL-compatible, so GPL-only helpers are allowed.
const LICENSE: &CStr = c"Dual MIT/GPL";

/// Verifier log buffer for the retry after a rejected load (the kernel caps it at 16 MiB).
const LOG_SIZE: usize = 1 << 20;
/// `log_level` 1: the verifier explains its decision.
const LOG_LEVEL: u32 = 1;

/// The error of a failed call, with what was being done; the errno stays reachable.
#[derive(Debug)]
struct Context {
    what: String,
    source: io::Error,
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.source)
    }
}

impl Error for Context {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.source)
    }
}

/// Wraps `source` with a description of the failed operation, keeping its kind and errno.
pub fn context(source: io::Error, what: impl Into<String>) -> io::Error {
    io::Error::new(
        source.kind(),
        Context {
            what: what.into(),
            source,
        },
    )
}

/// The errno behind `err`, looking through any [`context`] wrappers.
pub fn os_error(err: &io::Error) -> Option<i32> {
    let mut err = err;
    loop {
        if let Some(code) = err.raw_os_error() {
            return Some(code);
        }
        err = &err.get_ref()?.downcast_ref::<Context>()?.source;
    }
}

/// Issues one bpf(2) command.
///
/// # Safety
///
/// `attr` must be the attribute layout the kernel reads for `cmd`, and every pointer it
/// holds must be valid for the reads (and, for a log buffer, writes) that `cmd` performs
/// with the lengths given beside it, for the duration of the call.
unsafe fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    let size = std::mem::size_of::<T>() as libc::c_long;
    // SAFETY: bpf(2) reads and writes at most `size` bytes at `attr`, which is a live,
    // exclusively borrowed `T` of exactly that size; the pointers inside it are valid per
    // this function's contract. The syscall does not retain `attr` after returning.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Takes ownership of an fd that a successful bpf(2) call just returned.
fn owned_fd(ret: libc::c_long) -> OwnedFd {
    let raw = RawFd::try_from(ret).expect("bpf(2) returned an fd out of range");
    // SAFETY: the kernel has just installed `raw` as a new fd of this process (bpf(2)
    // returns a fresh, O_CLOEXEC fd on success) and nothing else knows its number, so we
    // are its only owner.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

/// An object name (`BPF_OBJ_NAME_LEN` = 16 with the NUL): the kernel accepts only ASCII
/// alphanumerics, `_` and `.`; others become `_` and the name is cut to 15 bytes.
fn obj_name(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (slot, b) in out.iter_mut().take(15).zip(name.bytes()) {
        *slot = if b.is_ascii_alphanumeric() || b == b'_' || b == b'.' {
            b
        } else {
            b'_'
        };
    }
    out
}

fn fd_u32(fd: BorrowedFd<'_>) -> u32 {
    // Fds are non-negative, so this never wraps.
    fd.as_raw_fd() as u32
}

/// `bpf_attr` for `BPF_MAP_CREATE` (leading members only).
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// `bpf_attr` for `BPF_MAP_*_ELEM`: `key` and `value` are user pointers.
#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `bpf_attr` for `BPF_PROG_LOAD` (leading members only); no implicit padding.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `bpf_attr` for `BPF_LINK_CREATE` (the members an XDP link uses).
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

/// A BPF map, closed on drop.
#[derive(Debug)]
pub struct BpfMap {
    fd: OwnedFd,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
}

impl BpfMap {
    /// `BPF_MAP_CREATE` of a map with fixed-size keys and values.
    pub fn create(
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        name: &str,
    ) -> io::Result<Self> {
        let mut attr = MapCreateAttr {
            map_type,
            key_size,
            value_size,
            max_entries,
            map_name: obj_name(name),
            ..Default::default()
        };
        // SAFETY: `MapCreateAttr` is the leading part of the BPF_MAP_CREATE layout and
        // holds no pointers.
        let ret = unsafe { sys_bpf(BPF_MAP_CREATE, &mut attr) }.map_err(|e| {
            context(
                e,
                format!("BPF_MAP_CREATE (type {map_type}, name {name:?}, {max_entries} entries)"),
            )
        })?;
        Ok(BpfMap {
            fd: owned_fd(ret),
            key_size,
            value_size,
            max_entries,
        })
    }

    /// An `XSKMAP` with `max_entries` slots: key u32 = rx queue, value u32 = AF_XDP socket fd.
    pub fn create_xskmap(name: &str, max_entries: u32) -> io::Result<Self> {
        Self::create(BPF_MAP_TYPE_XSKMAP, 4, 4, max_entries, name)
    }

    /// Slots in the map.
    pub fn max_entries(&self) -> u32 {
        self.max_entries
    }

    /// `BPF_MAP_UPDATE_ELEM`: `key` and `value` must be exactly the map's sizes.
    pub fn update(&self, key: &[u8], value: &[u8], flags: u64) -> io::Result<()> {
        self.check_len("key", key.len(), self.key_size)?;
        self.check_len("value", value.len(), self.value_size)?;
        let mut attr = MapElemAttr {
            map_fd: fd_u32(self.fd.as_fd()),
            key: key.as_ptr() as u64,
            value: value.as_ptr() as u64,
            flags,
            ..Default::default()
        };
        // SAFETY: the layout matches BPF_MAP_UPDATE_ELEM; the kernel reads `key_size` bytes
        // at `key` and `value_size` bytes at `value`, and both slices were checked above to
        // be exactly that long and stay borrowed for the call.
        unsafe { sys_bpf(BPF_MAP_UPDATE_ELEM, &mut attr) }
            .map_err(|e| context(e, format!("BPF_MAP_UPDATE_ELEM (key {key:02x?})")))?;
        Ok(())
    }

    /// `BPF_MAP_DELETE_ELEM`: `key` must be exactly the map's key size.
    pub fn delete(&self, key: &[u8]) -> io::Result<()> {
        self.check_len("key", key.len(), self.key_size)?;
        let mut attr = MapElemAttr {
            map_fd: fd_u32(self.fd.as_fd()),
            key: key.as_ptr() as u64,
            ..Default::default()
        };
        // SAFETY: the layout matches BPF_MAP_DELETE_ELEM; the kernel reads `key_size` bytes
        // at `key`, a live slice checked above to be exactly that long.
        unsafe { sys_bpf(BPF_MAP_DELETE_ELEM, &mut attr) }
            .map_err(|e| context(e, format!("BPF_MAP_DELETE_ELEM (key {key:02x?})")))?;
        Ok(())
    }

    /// Sets `key` to `value` in a map of u32 keys and values.
    pub fn update_u32(&self, key: u32, value: u32) -> io::Result<()> {
        self.update(&key.to_ne_bytes(), &value.to_ne_bytes(), BPF_ANY)
    }

    /// Removes `key` from a map of u32 keys.
    pub fn delete_u32(&self, key: u32) -> io::Result<()> {
        self.delete(&key.to_ne_bytes())
    }

    fn check_len(&self, what: &str, len: usize, want: u32) -> io::Result<()> {
        if len == want as usize {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("BPF map {what} is {len} bytes, the map's {what} size is {want}"),
            ))
        }
    }
}

impl AsFd for BpfMap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A loaded BPF program, unloaded when its last fd (and link) is gone.
#[derive(Debug)]
pub struct BpfProgram {
    fd: OwnedFd,
}

impl BpfProgram {
    /// `BPF_PROG_LOAD` of `insns` (raw 8-byte `struct bpf_insn`s) under the license
    /// "Dual MIT/GPL". If the verifier rejects the program, the load is repeated with a
    /// log buffer and the error carries the verifier's log.
    pub fn load(
        prog_type: u32,
        expected_attach_type: u32,
        name: &str,
        insns: &[[u8; 8]],
    ) -> io::Result<Self> {
        let insn_cnt = u32::try_from(insns.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "BPF program too long"))?;
        let mut attr = ProgLoadAttr {
            prog_type,
            insn_cnt,
            insns: insns.as_ptr() as u64,
            license: LICENSE.as_ptr() as u64,
            prog_name: obj_name(name),
            expected_attach_type,
            ..Default::default()
        };
        // SAFETY: the layout matches BPF_PROG_LOAD; the kernel reads `insn_cnt` * 8 bytes
        // at `insns` (exactly the borrowed slice) and a NUL-terminated string at `license`
        // (a static C string). No log buffer is passed (log_level 0, log_size 0).
        let first = unsafe { sys_bpf(BPF_PROG_LOAD, &mut attr) };
        let err = match first {
            Ok(ret) => return Ok(BpfProgram { fd: owned_fd(ret) }),
            Err(err) => err,
        };
        // Retry with the verifier's log to say why.
        let mut log = vec![0u8; LOG_SIZE];
        attr.log_level = LOG_LEVEL;
        attr.log_size = LOG_SIZE as u32;
        attr.log_buf = log.as_mut_ptr() as u64;
        // SAFETY: as above, plus the kernel writes at most `log_size` bytes to `log_buf`,
        // which points to a live, exclusively owned buffer of exactly LOG_SIZE bytes.
        let second = unsafe { sys_bpf(BPF_PROG_LOAD, &mut attr) };
        match second {
            // Loaded on the retry (a transient failure, e.g. memory): keep it.
            Ok(ret) => Ok(BpfProgram { fd: owned_fd(ret) }),
            Err(retry_err) => {
                let len = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                let text = String::from_utf8_lossy(&log[..len]);
                let text = text.trim_end();
                // The first error is the real one (the retry may add ENOSPC for a full log).
                let err = if text.is_empty() { retry_err } else { err };
                Err(context(
                    err,
                    format!(
                        "BPF_PROG_LOAD of {name:?} ({insn_cnt} instructions), verifier log:\n{}",
                        if text.is_empty() { "(empty)" } else { text }
                    ),
                ))
            }
        }
    }
}

impl AsFd for BpfProgram {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A BPF link; closing it (drop, exit or crash) detaches the program.
#[derive(Debug)]
pub struct BpfLink {
    fd: OwnedFd,
}

impl BpfLink {
    /// `BPF_LINK_CREATE` with attach type `BPF_XDP` on interface `ifindex` in the current
    /// network namespace; `flags` is one `XDP_FLAGS_*_MODE` or 0 (the kernel's choice).
    ///
    /// Fails with `EBUSY` or `EEXIST` if the interface already has an XDP program.
    pub fn create_xdp(prog: &BpfProgram, ifindex: u32, flags: u32) -> io::Result<Self> {
        let mut attr = LinkCreateAttr {
            prog_fd: fd_u32(prog.as_fd()),
            target_ifindex: ifindex,
            attach_type: BPF_XDP,
            flags,
        };
        // SAFETY: the layout matches BPF_LINK_CREATE for a netdev target and holds no
        // pointers; `prog_fd` is borrowed from `prog`, alive for the call.
        let ret = unsafe { sys_bpf(BPF_LINK_CREATE, &mut attr) }.map_err(|e| {
            context(
                e,
                format!("BPF_LINK_CREATE (XDP, ifindex {ifindex}, flags {flags:#x})"),
            )
        })?;
        Ok(BpfLink { fd: owned_fd(ret) })
    }
}

impl AsFd for BpfLink {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_layouts_match_the_kernel() {
        use std::mem::{offset_of, size_of};
        assert_eq!(size_of::<MapElemAttr>(), 32);
        assert_eq!(offset_of!(MapElemAttr, key), 8);
        assert_eq!(offset_of!(MapElemAttr, flags), 24);
        assert_eq!(size_of::<ProgLoadAttr>(), 72);
        assert_eq!(offset_of!(ProgLoadAttr, insns), 8);
        assert_eq!(offset_of!(ProgLoadAttr, log_buf), 32);
        assert_eq!(offset_of!(ProgLoadAttr, prog_name), 48);
        assert_eq!(offset_of!(ProgLoadAttr, expected_attach_type), 68);
        assert_eq!(offset_of!(MapCreateAttr, map_name), 28);
        assert_eq!(size_of::<LinkCreateAttr>(), 16);
    }

    #[test]
    fn obj_names_are_sanitised_and_cut() {
        assert_eq!(&obj_name("pollux_xsk")[..11], b"pollux_xsk\0");
        assert_eq!(&obj_name("a-b c")[..6], b"a_b_c\0");
        let long = obj_name("abcdefghijklmnopqrstuvwxyz");
        assert_eq!(&long[..15], b"abcdefghijklmno");
        assert_eq!(long[15], 0);
    }

    #[test]
    fn os_error_sees_through_context() {
        let err = context(io::Error::from_raw_os_error(libc::EBUSY), "outer");
        let err = context(err, "outermost");
        assert_eq!(os_error(&err), Some(libc::EBUSY));
        assert!(err.to_string().starts_with("outermost: outer: "));
        let plain = io::Error::other("no errno");
        assert_eq!(os_error(&plain), None);
    }
}
