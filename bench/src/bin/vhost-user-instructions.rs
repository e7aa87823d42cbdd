//! Runs the vhost-user port's receive or transmit path for a given number of rounds of 64
//! frames, on a synthetic guest in a shared memfd (rings and buffers written as a
//! virtio-net driver would), for `bench/vhost-user-instructions.sh` to count instructions
//! of `VhostUserPort::rx_burst` / `tx_burst` under callgrind.
//! `vq-rx` and `vq-tx` run the same on the `virtio-queue` crate instead of the driver's
//! own ring, for the comparison.
//! Usage: `vhost-user-instructions rx|tx|vq-rx|vq-tx ROUNDS [FRAME_LEN]`.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;
use std::time::Duration;

use pollux_dataplane::buf::FramePool;
use pollux_dataplane::packet::{Batch, Packet};
use pollux_dataplane::port::Port;
use pollux_drivers::vhost_user::mailbox::{Command, Device, Mailbox, QueueSetup};
use pollux_drivers::vhost_user::memory::{GuestMemory, RegionSpec};
use pollux_drivers::vhost_user::ring::VringAddrs;
use pollux_drivers::vhost_user::VhostUserPort;

const GPA: u64 = 0x1_0000;
const UVA: u64 = 0x7000_0000_0000;
const SIZE: usize = 4 << 20;
const QSIZE: u16 = 256;
const BURST: u16 = 64;
const HDR: usize = 12;
/// Guest buffers from here, 2 KiB each, one per descriptor.
const BUF: u64 = 0x10000;

struct Guest {
    base: *mut u8,
    file: File,
    avail: [u16; 2],
}

impl Guest {
    fn new() -> Guest {
        // SAFETY: a plain memfd_create with a NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"pollux-vu-bench".as_ptr(), 0) };
        assert!(fd >= 0);
        // SAFETY: `fd` is fresh; the File owns it from here.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(SIZE as u64).unwrap();
        // SAFETY: a new shared mapping of the whole file, never unmapped (process end).
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
            avail: [0; 2],
        }
    }

    fn put<T: Copy>(&self, off: u64, v: T) {
        assert!(off as usize + std::mem::size_of::<T>() <= SIZE);
        // SAFETY: in bounds (checked above); unaligned write of plain data.
        unsafe { std::ptr::write_unaligned(self.base.add(off as usize).cast::<T>(), v) }
    }

    fn q(q: usize) -> u64 {
        q as u64 * 0x8000
    }

    /// Descriptor i of queue q points at its own 2 KiB buffer, `len` bytes.
    fn desc(&self, q: usize, i: u16, len: u32, flags: u16) {
        let d = Self::q(q) + 16 * u64::from(i);
        self.put(d, GPA + BUF + (q as u64 * 256 + u64::from(i)) * 2048);
        self.put(d + 8, len);
        self.put(d + 12, flags);
        self.put(d + 14, 0u16);
    }

    /// Makes `n` chains available on queue q (heads cycle over the table).
    fn post(&mut self, q: usize, n: u16) {
        for _ in 0..n {
            let idx = self.avail[q];
            self.put(
                Self::q(q) + 0x1000 + 4 + 2 * u64::from(idx % QSIZE),
                idx % QSIZE,
            );
            self.avail[q] = idx.wrapping_add(1);
        }
        self.put(Self::q(q) + 0x1000 + 2, self.avail[q]);
    }

    fn addrs(q: usize) -> VringAddrs {
        VringAddrs {
            size: QSIZE,
            desc: UVA + Self::q(q),
            avail: UVA + Self::q(q) + 0x1000,
            used: UVA + Self::q(q) + 0x2000,
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_default();
    let rounds: usize = args.next().and_then(|r| r.parse().ok()).unwrap_or(0);
    let len: usize = args.next().and_then(|r| r.parse().ok()).unwrap_or(64);
    if !["rx", "tx", "vq-rx", "vq-tx"].contains(&dir.as_str())
        || rounds == 0
        || !(60..=1514).contains(&len)
    {
        eprintln!("usage: vhost-user-instructions rx|tx|vq-rx|vq-tx ROUNDS [FRAME_LEN 60..=1514]");
        std::process::exit(2);
    }
    let mut g = Guest::new();
    let mem = GuestMemory::map(
        &[RegionSpec {
            guest_phys_addr: GPA,
            size: SIZE as u64,
            user_addr: UVA,
            mmap_offset: 0,
        }],
        &[g.file.try_clone().unwrap()],
    )
    .unwrap();
    // Guest transmit chains: header + frame; receive buffers: 2 KiB, device-writable.
    for i in 0..QSIZE {
        g.desc(1, i, (HDR + len) as u32, 0);
        g.desc(0, i, 2048, 2);
    }
    let mut pool = FramePool::with_frames(1024).unwrap();
    let mailbox = Mailbox::new();
    let mut port = VhostUserPort::new("vu-bench", Arc::clone(&mailbox));
    let setup = |q| QueueSetup {
        addrs: Guest::addrs(q),
        base: 0,
        call: None,
        err: None,
    };
    let dev = Device {
        mem: Arc::new(mem),
        queues: vec![Some(setup(0)), Some(setup(1))],
        hdr_len: HDR,
        mergeable: true,
        event_idx: false,
        indirect: false,
    };
    mailbox.send(Command::Start(Arc::new(dev)), Duration::ZERO);
    port.housekeeping(&mut pool);
    let frame = vec![0x5au8; len];
    let mut batch = Batch::with_capacity(usize::from(BURST));
    let mut pkts = Vec::with_capacity(usize::from(BURST));
    let mut moved = 0u64;
    let gm = vm_memory::GuestMemoryMmap::<()>::from_ranges_with_files([(
        vm_memory::GuestAddress(GPA),
        SIZE,
        Some(vm_memory::FileOffset::new(g.file.try_clone().unwrap(), 0)),
    )])
    .unwrap();
    let (mut vq_rx, mut vq_tx) = (vq_queue(1), vq_queue(0));
    for _ in 0..rounds {
        if dir == "vq-rx" {
            g.post(1, BURST);
            batch.clear();
            moved += vq_rx_burst(&mut vq_rx, &gm, &mut pool, &mut batch) as u64;
            for p in batch.as_slice() {
                pool.free(p.frame);
            }
        } else if dir == "vq-tx" {
            g.post(0, BURST);
            pkts.clear();
            for _ in 0..BURST {
                let (id, off) = pool.alloc_with(&frame).unwrap();
                pkts.push(Packet::received(id, off, len as u16));
            }
            let sent = vq_tx_burst(&mut vq_tx, &gm, &mut pool, &pkts);
            for p in &pkts[sent..] {
                pool.free(p.frame);
            }
            moved += sent as u64;
        } else if dir == "rx" {
            g.post(1, BURST);
            batch.clear();
            moved += port.rx_burst(0, &mut pool, &mut batch) as u64;
            for p in batch.as_slice() {
                pool.free(p.frame);
            }
        } else {
            g.post(0, BURST);
            pkts.clear();
            for _ in 0..BURST {
                let (id, off) = pool.alloc_with(&frame).unwrap();
                pkts.push(Packet::received(id, off, len as u16));
            }
            let sent = port.tx_burst(0, &mut pool, &pkts);
            for p in &pkts[sent..] {
                pool.free(p.frame);
            }
            moved += sent as u64;
        }
    }
    assert_eq!(moved, rounds as u64 * u64::from(BURST), "frames lost");
}

/// The same receive path written on the `virtio-queue` crate (rust-vmm), for the
/// comparison in bench/README.md: chains popped and checked by the crate, each
/// descriptor copied with `vm-memory`'s `read_slice`.
#[inline(never)]
fn vq_rx_burst(
    q: &mut virtio_queue::Queue,
    gm: &vm_memory::GuestMemoryMmap,
    pool: &mut FramePool,
    batch: &mut Batch,
) -> usize {
    use virtio_queue::QueueT;
    use vm_memory::{Bytes, GuestAddress};
    let headroom = usize::from(pool.headroom());
    let max = pool.max_data_len();
    let mut n = 0;
    while batch.remaining() > 0 {
        let Some(chain) = q.pop_descriptor_chain(gm) else {
            break;
        };
        let head = chain.head_index();
        let Some(frame) = pool.alloc() else { break };
        let (mut skip, mut len) = (HDR, 0usize);
        let buf = &mut pool.frame_mut(frame)[headroom..headroom + max];
        for d in chain {
            let dl = d.len() as usize;
            if skip >= dl {
                skip -= dl;
                continue;
            }
            let take = (dl - skip).min(max - len);
            if gm
                .read_slice(
                    &mut buf[len..len + take],
                    GuestAddress(d.addr().0 + skip as u64),
                )
                .is_err()
            {
                break;
            }
            len += take;
            skip = 0;
        }
        let _ = q.add_used(gm, head, 0);
        let _ = batch.push(Packet::received(frame, headroom as u16, len as u16));
        n += 1;
    }
    if n > 0 && q.needs_notification(gm).unwrap_or(true) {
        std::hint::black_box(());
    }
    n
}

/// The same transmit path on the `virtio-queue` crate: one chain per frame, header and
/// frame written with `write_slice` (mergeable buffers left out, which only favours it).
#[inline(never)]
fn vq_tx_burst(
    q: &mut virtio_queue::Queue,
    gm: &vm_memory::GuestMemoryMmap,
    pool: &mut FramePool,
    pkts: &[Packet],
) -> usize {
    use virtio_queue::QueueT;
    use vm_memory::{Bytes, GuestAddress};
    let mut hdr = [0u8; HDR];
    hdr[10] = 1;
    let mut sent = 0;
    for pkt in pkts {
        let Some(chain) = q.pop_descriptor_chain(gm) else {
            break;
        };
        let head = chain.head_index();
        let data = pool.data(pkt);
        let mut parts: [&[u8]; 2] = [&hdr, data];
        let mut written = 0u32;
        for d in chain {
            let mut room = d.len() as usize;
            let mut at = d.addr().0;
            for part in parts.iter_mut() {
                let n = room.min(part.len());
                if n == 0 {
                    continue;
                }
                if gm.write_slice(&part[..n], GuestAddress(at)).is_err() {
                    break;
                }
                *part = &part[n..];
                room -= n;
                at += n as u64;
                written += n as u32;
            }
        }
        let _ = q.add_used(gm, head, written);
        pool.free(pkt.frame);
        sent += 1;
    }
    if sent > 0 && q.needs_notification(gm).unwrap_or(true) {
        std::hint::black_box(());
    }
    sent
}

fn vq_queue(q: usize) -> virtio_queue::Queue {
    use virtio_queue::QueueT;
    let mut queue = virtio_queue::Queue::new(QSIZE).unwrap();
    queue.set_size(QSIZE);
    let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
    // The crate takes guest-physical ring addresses (the rings sit at GPA + offset).
    let (lo, hi) = split(GPA + Guest::q(q));
    queue.set_desc_table_address(lo, hi);
    let (lo, hi) = split(GPA + Guest::q(q) + 0x1000);
    queue.set_avail_ring_address(lo, hi);
    let (lo, hi) = split(GPA + Guest::q(q) + 0x2000);
    queue.set_used_ring_address(lo, hi);
    queue.set_ready(true);
    queue
}
