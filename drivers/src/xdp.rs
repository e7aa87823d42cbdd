//! The XDP half of the AF_XDP driver: a redirect program, its `XSKMAP`, and the link that
//! attaches it to an interface. No libbpf, no BTF, no clang: the program is assembled here
//! from a handful of instructions.
//!
//! The program sends each frame to the AF_XDP socket registered for the frame's rx queue
//! and passes it to the kernel stack when no socket is registered there:
//!
//! ```text
//! r2 = *(u32 *)(r1 + 16)          ; ctx->rx_queue_index
//! r1 = map_fd (xskmap)            ; ld_imm64, src_reg = BPF_PSEUDO_MAP_FD
//! r3 = XDP_PASS                   ; flags: the action when the slot is empty
//! call bpf_redirect_map
//! exit
//! ```
//!
//! [`XdpProgram::attach`] creates the map, loads the program and links it to the interface;
//! the [`XdpAttachment`] it returns registers sockets per queue and detaches on drop (or
//! when the process dies, since the link is an fd).

pub use crate::netdev::Interface;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use crate::bpf::{
    context, os_error, BpfLink, BpfMap, BpfProgram, BPF_PROG_TYPE_XDP, BPF_XDP, XDP_FLAGS_DRV_MODE,
    XDP_FLAGS_SKB_MODE,
};

/// Opcode fields (`include/uapi/linux/bpf_common.h`, `bpf.h`).
pub mod op {
    /// Class: non-standard loads (`ld_imm64`).
    pub const BPF_LD: u8 = 0x00;
    /// Class: loads from memory into a register.
    pub const BPF_LDX: u8 = 0x01;
    /// Class: 64-bit jumps (and calls, exit).
    pub const BPF_JMP: u8 = 0x05;
    /// Class: 64-bit arithmetic.
    pub const BPF_ALU64: u8 = 0x07;
    /// Size: 32 bits.
    pub const BPF_W: u8 = 0x00;
    /// Size: 16 bits.
    pub const BPF_H: u8 = 0x08;
    /// Size: 8 bits.
    pub const BPF_B: u8 = 0x10;
    /// Size: 64 bits.
    pub const BPF_DW: u8 = 0x18;
    /// Mode: immediate.
    pub const BPF_IMM: u8 = 0x00;
    /// Mode: memory at `src + off`.
    pub const BPF_MEM: u8 = 0x60;
    /// Source: the immediate.
    pub const BPF_K: u8 = 0x00;
    /// Source: the `src` register.
    pub const BPF_X: u8 = 0x08;
    /// ALU op: move.
    pub const BPF_MOV: u8 = 0xb0;
    /// Jump op: helper call.
    pub const BPF_CALL: u8 = 0x80;
    /// Jump op: return r0.
    pub const BPF_EXIT: u8 = 0x90;
    /// `src_reg` of an `ld_imm64` whose immediate is a map fd.
    pub const BPF_PSEUDO_MAP_FD: u8 = 1;
}

/// Register numbers.
pub mod reg {
    /// Return value; first scratch.
    pub const R0: u8 = 0;
    /// First argument (the context on entry).
    pub const R1: u8 = 1;
    /// Second argument.
    pub const R2: u8 = 2;
    /// Third argument.
    pub const R3: u8 = 3;
    /// Frame pointer (read-only).
    pub const R10: u8 = 10;
}

/// `bpf_redirect_map` (enum bpf_func_id).
pub const BPF_FUNC_REDIRECT_MAP: i32 = 51;
/// XDP action: hand the frame to the kernel stack.
pub const XDP_PASS: i32 = 2;
/// Offset of `rx_queue_index` in `struct xdp_md`.
pub const XDP_MD_RX_QUEUE_INDEX: i16 = 16;

/// One `struct bpf_insn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BpfInsn {
    /// Opcode: class | size/op | mode/source.
    pub code: u8,
    /// Registers: `dst` in the low nibble, `src` in the high nibble.
    pub regs: u8,
    /// Signed offset.
    pub off: i16,
    /// Signed immediate.
    pub imm: i32,
}

impl BpfInsn {
    /// An instruction from its fields. Panics if a register number does not fit (0..=10).
    pub const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Self {
        assert!(
            dst <= reg::R10 && src <= reg::R10,
            "BPF register out of range"
        );
        BpfInsn {
            code,
            regs: (src << 4) | dst,
            off,
            imm,
        }
    }

    /// Destination register.
    pub const fn dst(&self) -> u8 {
        self.regs & 0x0f
    }

    /// Source register.
    pub const fn src(&self) -> u8 {
        self.regs >> 4
    }

    /// `dst = *(size *)(src + off)`, `size` one of `BPF_W`, `BPF_H`, `BPF_B`, `BPF_DW`.
    pub const fn ldx_mem(size: u8, dst: u8, src: u8, off: i16) -> Self {
        Self::new(op::BPF_LDX | size | op::BPF_MEM, dst, src, off, 0)
    }

    /// `dst = imm` (sign-extended to 64 bits).
    pub const fn mov64_imm(dst: u8, imm: i32) -> Self {
        Self::new(op::BPF_ALU64 | op::BPF_MOV | op::BPF_K, dst, 0, 0, imm)
    }

    /// `dst = src`.
    pub const fn mov64_reg(dst: u8, src: u8) -> Self {
        Self::new(op::BPF_ALU64 | op::BPF_MOV | op::BPF_X, dst, src, 0, 0)
    }

    /// `dst = imm64`: two slots, the second carrying the upper 32 bits with code 0.
    /// `src` is 0 for a plain constant or a pseudo source such as `BPF_PSEUDO_MAP_FD`.
    pub const fn ld_imm64(dst: u8, src: u8, imm: u64) -> [Self; 2] {
        [
            Self::new(
                op::BPF_LD | op::BPF_DW | op::BPF_IMM,
                dst,
                src,
                0,
                imm as u32 as i32,
            ),
            Self::new(0, 0, 0, 0, (imm >> 32) as u32 as i32),
        ]
    }

    /// `dst = &map` for the map with fd `fd` (the verifier swaps in the map's address).
    pub const fn ld_map_fd(dst: u8, fd: RawFd) -> [Self; 2] {
        Self::ld_imm64(dst, op::BPF_PSEUDO_MAP_FD, fd as u32 as u64)
    }

    /// `call helper` (r1..r5 arguments, result in r0).
    pub const fn call(helper: i32) -> Self {
        Self::new(op::BPF_JMP | op::BPF_CALL, 0, 0, 0, helper)
    }

    /// `exit` (return r0).
    pub const fn exit() -> Self {
        Self::new(op::BPF_JMP | op::BPF_EXIT, 0, 0, 0, 0)
    }

    /// The kernel's encoding on this host: bitfields and integers in host order.
    pub const fn to_bytes(&self) -> [u8; 8] {
        // `__u8 dst_reg:4, src_reg:4` puts dst in the low nibble on little-endian hosts
        // and in the high nibble on big-endian ones.
        let regs = if cfg!(target_endian = "little") {
            self.regs
        } else {
            self.regs.rotate_left(4)
        };
        let off = self.off.to_ne_bytes();
        let imm = self.imm.to_ne_bytes();
        [
            self.code, regs, off[0], off[1], imm[0], imm[1], imm[2], imm[3],
        ]
    }
}

/// Encodes a program for [`BpfProgram::load`].
pub fn encode(insns: &[BpfInsn]) -> Vec<[u8; 8]> {
    insns.iter().map(BpfInsn::to_bytes).collect()
}

/// Where XDP runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum XdpMode {
    /// Native (driver) mode if the driver supports it, else generic. Never reported by
    /// [`XdpAttachment::mode`].
    Auto,
    /// Native (driver) mode: `XDP_FLAGS_DRV_MODE`.
    Native,
    /// Generic (SKB) mode: `XDP_FLAGS_SKB_MODE`.
    Generic,
}

impl XdpMode {
    fn flags(self) -> u32 {
        match self {
            XdpMode::Auto => 0,
            XdpMode::Native => XDP_FLAGS_DRV_MODE,
            XdpMode::Generic => XDP_FLAGS_SKB_MODE,
        }
    }
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpMode::Auto => "auto",
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        })
    }
}

/// The AF_XDP redirect program.
#[derive(Debug)]
pub struct XdpProgram;

impl XdpProgram {
    /// The program's instructions for an `XSKMAP` with fd `xskmap_fd`.
    pub fn instructions(xskmap_fd: RawFd) -> Vec<BpfInsn> {
        use reg::*;
        let mut prog = vec![BpfInsn::ldx_mem(op::BPF_W, R2, R1, XDP_MD_RX_QUEUE_INDEX)];
        prog.extend(BpfInsn::ld_map_fd(R1, xskmap_fd));
        prog.push(BpfInsn::mov64_imm(R3, XDP_PASS));
        prog.push(BpfInsn::call(BPF_FUNC_REDIRECT_MAP));
        prog.push(BpfInsn::exit());
        prog
    }

    /// Attaches the redirect program to `interface` (resolved in the calling thread's
    /// network namespace) with an `XSKMAP` of `queues` slots, for rx queues
    /// `0..queues`. [`XdpMode::Auto`] tries native mode and falls back to generic.
    ///
    /// An interface that already has an XDP program (another process's, or an earlier
    /// attachment still alive) is an error naming the interface; it is not replaced.
    pub fn attach(
        interface: impl Into<Interface>,
        mode: XdpMode,
        queues: u32,
    ) -> io::Result<XdpAttachment> {
        let (ifname, ifindex) = interface.into().resolve()?;
        if queues == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("XDP attach to {ifname}: at least one queue is needed"),
            ));
        }
        let map = BpfMap::create_xskmap("pollux_xsks", queues)
            .map_err(|e| context(e, format!("XDP attach to {ifname}")))?;
        let insns = encode(&Self::instructions(map.as_fd().as_raw_fd()));
        let prog = BpfProgram::load(BPF_PROG_TYPE_XDP, BPF_XDP, "pollux_xsk", &insns)
            .map_err(|e| context(e, format!("XDP attach to {ifname}")))?;
        let link_in = |mode: XdpMode| {
            BpfLink::create_xdp(&prog, ifindex, mode.flags()).map_err(|e| {
                let what = if matches!(os_error(&e), Some(libc::EBUSY | libc::EEXIST)) {
                    format!(
                        "interface {ifname} (ifindex {ifindex}) already has an XDP program \
                         attached (by another process or attachment); not replacing it \
                         (see `ip -d link show dev {ifname}`)"
                    )
                } else {
                    format!("XDP attach to {ifname} (ifindex {ifindex}) in {mode} mode")
                };
                context(e, what)
            })
        };
        let (link, mode) = match mode {
            XdpMode::Native | XdpMode::Generic => (link_in(mode)?, mode),
            XdpMode::Auto => match link_in(XdpMode::Native) {
                Ok(link) => (link, XdpMode::Native),
                Err(e) if matches!(os_error(&e), Some(libc::EBUSY | libc::EEXIST)) => {
                    return Err(e)
                }
                Err(native) => match link_in(XdpMode::Generic) {
                    Ok(link) => (link, XdpMode::Generic),
                    Err(generic) => {
                        return Err(context(
                            generic,
                            format!("after native mode failed ({native})"),
                        ))
                    }
                },
            },
        };
        Ok(XdpAttachment {
            link,
            prog,
            map,
            ifname,
            ifindex,
            mode,
            queues,
        })
    }
}

/// The redirect program attached to one interface. Dropping it detaches the program.
#[derive(Debug)]
pub struct XdpAttachment {
    // Declaration order is drop order: detach first, then release program and map.
    link: BpfLink,
    prog: BpfProgram,
    map: BpfMap,
    ifname: String,
    ifindex: u32,
    mode: XdpMode,
    queues: u32,
}

impl XdpAttachment {
    /// The mode in use: [`XdpMode::Native`] or [`XdpMode::Generic`].
    pub fn mode(&self) -> XdpMode {
        self.mode
    }

    /// The interface's name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The interface's index (in the namespace it was attached in).
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Queues the `XSKMAP` has slots for.
    pub fn queues(&self) -> u32 {
        self.queues
    }

    /// The link's fd (e.g. for `BPF_OBJ_GET_INFO_BY_FD`).
    pub fn link_fd(&self) -> BorrowedFd<'_> {
        self.link.as_fd()
    }

    /// The program's fd.
    pub fn prog_fd(&self) -> BorrowedFd<'_> {
        self.prog.as_fd()
    }

    /// Sends frames arriving on rx `queue` to the AF_XDP `socket`, replacing any socket
    /// registered there. The socket must be an AF_XDP socket (the kernel refuses others).
    pub fn register(&self, queue: u32, socket: BorrowedFd<'_>) -> io::Result<()> {
        self.check_queue(queue)?;
        let fd = u32::try_from(socket.as_raw_fd()).expect("fds are non-negative");
        self.map.update_u32(queue, fd).map_err(|e| {
            context(
                e,
                format!("register AF_XDP socket for {} queue {queue}", self.ifname),
            )
        })
    }

    /// Stops redirecting rx `queue`: its frames go to the kernel stack again. Not an error
    /// if no socket was registered.
    pub fn unregister(&self, queue: u32) -> io::Result<()> {
        self.check_queue(queue)?;
        match self.map.delete_u32(queue) {
            Err(e) if os_error(&e) == Some(libc::ENOENT) => Ok(()),
            other => other.map_err(|e| {
                context(
                    e,
                    format!("unregister AF_XDP socket for {} queue {queue}", self.ifname),
                )
            }),
        }
    }

    /// Detaches the program (the same as dropping the attachment).
    pub fn detach(self) {
        drop(self);
    }

    fn check_queue(&self, queue: u32) -> io::Result<()> {
        if queue < self.queues {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: queue {queue} out of range (the XSKMAP has {} slots)",
                    self.ifname, self.queues
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::reg::*;
    use super::*;

    #[test]
    fn exit_is_0x95_with_zero_fields() {
        assert_eq!(BpfInsn::exit().to_bytes(), [0x95, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn call_carries_the_helper_id_in_imm() {
        assert_eq!(BpfInsn::call(51).to_bytes(), [0x85, 0, 0, 0, 51, 0, 0, 0]);
    }

    #[test]
    fn ldx_mem_w_encodes_dst_low_src_high_and_offset() {
        // r2 = *(u32 *)(r1 + 16)
        let insn = BpfInsn::ldx_mem(op::BPF_W, R2, R1, 16);
        assert_eq!(insn.to_bytes(), [0x61, 0x12, 16, 0, 0, 0, 0, 0]);
        assert_eq!((insn.dst(), insn.src()), (R2, R1));
        // Other sizes and a negative offset: r0 = *(u64 *)(r10 - 8)
        assert_eq!(
            BpfInsn::ldx_mem(op::BPF_DW, R0, R10, -8).to_bytes(),
            [0x79, 0xa0, 0xf8, 0xff, 0, 0, 0, 0]
        );
        assert_eq!(BpfInsn::ldx_mem(op::BPF_H, R0, R1, 0).code, 0x69);
        assert_eq!(BpfInsn::ldx_mem(op::BPF_B, R0, R1, 0).code, 0x71);
    }

    #[test]
    fn mov64_encodings() {
        assert_eq!(
            BpfInsn::mov64_imm(R3, 2).to_bytes(),
            [0xb7, 0x03, 0, 0, 2, 0, 0, 0]
        );
        assert_eq!(
            BpfInsn::mov64_imm(R0, -1).to_bytes(),
            [0xb7, 0x00, 0, 0, 0xff, 0xff, 0xff, 0xff]
        );
        assert_eq!(
            BpfInsn::mov64_reg(R1, R10).to_bytes(),
            [0xbf, 0xa1, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn ld_imm64_splits_the_constant_over_two_slots() {
        let [lo, hi] = BpfInsn::ld_imm64(R1, 0, 0x1122_3344_5566_7788);
        assert_eq!(lo.to_bytes(), [0x18, 0x01, 0, 0, 0x88, 0x77, 0x66, 0x55]);
        assert_eq!(hi.to_bytes(), [0x00, 0x00, 0, 0, 0x44, 0x33, 0x22, 0x11]);
    }

    #[test]
    fn ld_map_fd_uses_pseudo_map_fd_src() {
        let [lo, hi] = BpfInsn::ld_map_fd(R1, 7);
        assert_eq!(lo.to_bytes(), [0x18, 0x11, 0, 0, 7, 0, 0, 0]);
        assert_eq!(hi.to_bytes(), [0; 8]);
    }

    #[test]
    #[should_panic(expected = "register out of range")]
    fn register_11_is_rejected() {
        let _ = BpfInsn::mov64_imm(11, 0);
    }

    #[test]
    fn redirect_program_is_exactly_six_slots() {
        let prog = encode(&XdpProgram::instructions(5));
        assert_eq!(
            prog,
            vec![
                [0x61, 0x12, 16, 0, 0, 0, 0, 0], // r2 = ctx->rx_queue_index
                [0x18, 0x11, 0, 0, 5, 0, 0, 0],  // r1 = map fd 5 (pseudo)
                [0x00, 0x00, 0, 0, 0, 0, 0, 0],  //      (upper half)
                [0xb7, 0x03, 0, 0, 2, 0, 0, 0],  // r3 = XDP_PASS
                [0x85, 0x00, 0, 0, 51, 0, 0, 0], // call bpf_redirect_map
                [0x95, 0x00, 0, 0, 0, 0, 0, 0],  // exit
            ]
        );
    }

    #[test]
    fn modes_map_to_kernel_flags() {
        assert_eq!(XdpMode::Native.flags(), 4);
        assert_eq!(XdpMode::Generic.flags(), 2);
        assert_eq!(XdpMode::Auto.flags(), 0);
    }

    #[test]
    fn unknown_interface_is_a_clear_error() {
        let err = XdpProgram::attach("pxt-no-such-if", XdpMode::Auto, 1).unwrap_err();
        assert!(err.to_string().contains("pxt-no-such-if"), "{err}");
    }
}
