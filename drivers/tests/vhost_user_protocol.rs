//! The vhost-user protocol thread against a front end played with the `vhost` crate's
//! own front-end side (no QEMU), in both modes: feature negotiation (only what is
//! offered), the memory table and rings handed to a worker thread (a frame crosses),
//! GET_VRING_BASE answering with the worker's index, refused requests that keep the
//! session, a front end that goes away (counted; the port waits for the next) and a
//! second session that resumes where the first stopped.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use pollux_dataplane::buf::FramePool;
use pollux_dataplane::packet::Batch;
use pollux_dataplane::port::Port;
use pollux_drivers::vhost_user::backend::{
    F_EVENT_IDX, F_INDIRECT_DESC, F_MQ, F_MRG_RXBUF, F_PROTOCOL_FEATURES, F_VERSION_1,
};
use pollux_drivers::vhost_user::{Mailbox, Mode, VhostUserBackend, VhostUserPort};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::EventFd;

mod vu_guest;

use vu_guest::*;

/// A worker thread running the port: housekeeping (the mailbox) and receive bursts, the
/// frames it received kept for the test.
struct Worker {
    stop: Arc<AtomicBool>,
    got: Arc<Mutex<Vec<Vec<u8>>>>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    fn start(mailbox: Arc<Mailbox>) -> Worker {
        let stop = Arc::new(AtomicBool::new(false));
        let got = Arc::new(Mutex::new(Vec::new()));
        let (s, g) = (Arc::clone(&stop), Arc::clone(&got));
        let thread = thread::spawn(move || {
            let mut port = VhostUserPort::new("vu-proto", mailbox);
            let mut pool = FramePool::with_frames(256).unwrap();
            let mut batch = Batch::with_capacity(64);
            while !s.load(Ordering::Relaxed) {
                port.housekeeping(&mut pool);
                batch.clear();
                port.rx_burst(0, &mut pool, &mut batch);
                for p in batch.as_slice() {
                    g.lock().unwrap().push(pool.data(p).to_vec());
                    pool.free(p.frame);
                }
                thread::sleep(Duration::from_micros(100));
            }
        });
        Worker {
            stop,
            got,
            thread: Some(thread),
        }
    }

    fn wait_frames(&self, n: usize) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let got = self.got.lock().unwrap().clone();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn wait(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

fn socket_path(tag: &str) -> String {
    format!("/tmp/pollux-vu-{}-{tag}.sock", std::process::id())
}

/// One front-end session: negotiate, set up both rings from `base`, check a frame the
/// guest sends arrives, stop the rings and return the transmit queue's index.
fn session(
    front: &mut Frontend,
    g: &mut Guest,
    worker: &Worker,
    mailbox: &Mailbox,
    base: u16,
) -> u32 {
    front.set_owner().unwrap();
    let features = front.get_features().unwrap();
    assert_eq!(
        features,
        F_VERSION_1 | F_MRG_RXBUF | F_MQ | F_INDIRECT_DESC | F_EVENT_IDX | F_PROTOCOL_FEATURES
    );
    let protocol = front.get_protocol_features().unwrap();
    assert_eq!(
        protocol,
        VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::MQ
    );
    front.set_protocol_features(protocol).unwrap();
    // A checksum offload was not offered: refused (noted as the last error), and the
    // session goes on.
    front.set_features(features | 1).unwrap();
    wait("the refusal", || {
        mailbox
            .status()
            .last_error
            .is_some_and(|e| e.contains("features that were not offered"))
    });
    assert_eq!(mailbox.status().features, 0);
    front.set_features(features).unwrap();
    let region = VhostUserMemoryRegionInfo {
        guest_phys_addr: GPA,
        memory_size: SIZE as u64,
        userspace_addr: UVA,
        mmap_offset: 0,
        mmap_handle: g.file.as_raw_fd(),
    };
    front.set_mem_table(&[region]).unwrap();
    // Non-blocking: a missing interrupt fails the wait below instead of hanging.
    let call = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let kick = EventFd::new(0).unwrap();
    for q in 0..2 {
        let a = Guest::addrs(q);
        front.set_vring_num(q, QSIZE).unwrap();
        front
            .set_vring_addr(
                q,
                &VringConfigData {
                    queue_max_size: QSIZE,
                    queue_size: QSIZE,
                    flags: 0,
                    desc_table_addr: a.desc,
                    used_ring_addr: a.used,
                    avail_ring_addr: a.avail,
                    log_addr: None,
                },
            )
            .unwrap();
        front.set_vring_base(q, base).unwrap();
        front.set_vring_call(q, &call).unwrap();
        front.set_vring_kick(q, &kick).unwrap();
    }
    assert!(
        !mailbox.status().running,
        "rings started before they were enabled"
    );
    for q in 0..2 {
        front.set_vring_enable(q, true).unwrap();
    }
    wait("the rings to run", || mailbox.status().running);
    let before = worker.got.lock().unwrap().len();
    let payload = vec![0xabu8; 60 + usize::from(base)];
    let mut hdr_and_frame = vec![0u8; HDR];
    hdr_and_frame.extend_from_slice(&payload);
    let head = base % QSIZE;
    let addr = BUF + 0x1000 * u64::from(head);
    g.write(addr, &hdr_and_frame);
    g.desc(1, head, GPA + addr, hdr_and_frame.len() as u32, 0, 0);
    // EVENT_IDX is negotiated: the guest asks for an interrupt at this entry.
    g.write(
        Guest::q(1) + AVAIL + 4 + 2 * u64::from(QSIZE),
        &base.to_le_bytes(),
    );
    g.make_available(1, head);
    let got = worker.wait_frames(before + 1);
    assert_eq!(
        got.get(before),
        Some(&payload),
        "the guest's frame did not arrive"
    );
    wait("the interrupt", || call.read().is_ok());
    let status = mailbox.status();
    assert!(status.connected && status.running, "{status:?}");
    assert_eq!(status.queue_sizes, [QSIZE, QSIZE]);
    assert_eq!(status.features, features);
    front.get_vring_base(0).unwrap();
    let stopped_at = front.get_vring_base(1).unwrap();
    assert!(!mailbox.status().running);
    stopped_at
}

/// Removes the socket file on drop, whatever happened.
struct SocketFile(String);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn run(mode: Mode, tag: &str) {
    let path = socket_path(tag);
    let _ = std::fs::remove_file(&path);
    let _cleanup = SocketFile(path.clone());
    // Client mode: the test listens, as QEMU with server=on would.
    let listener = (mode == Mode::Client).then(|| UnixListener::bind(&path).unwrap());
    let mailbox = Mailbox::new();
    let worker = Worker::start(Arc::clone(&mailbox));
    let backend = VhostUserBackend::start("vu-proto", &path, mode, Arc::clone(&mailbox)).unwrap();
    let connect = || match &listener {
        Some(l) => Frontend::from_stream(l.accept().unwrap().0, 2),
        None => Frontend::connect(&path, 2).unwrap(),
    };
    let mut g = Guest::new();
    let mut front = connect();
    assert_eq!(session(&mut front, &mut g, &worker, &mailbox, 0), 1);
    // The VM's process goes away: counted, state dropped, the next session starts over.
    drop(front);
    wait("the disconnect", || {
        let s = mailbox.status();
        !s.connected && s.disconnects == 1
    });
    let mut front = connect();
    wait("the reconnection", || mailbox.status().connected);
    // The front end restores the index it got (QEMU does across a reconnect).
    assert_eq!(session(&mut front, &mut g, &worker, &mailbox, 1), 2);
    assert_eq!(mailbox.broken(), 0);
    drop(front);
    drop(backend);
    if mode == Mode::Server {
        assert!(
            !std::path::Path::new(&path).exists(),
            "the server socket outlived its port"
        );
    }
    drop(listener);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn server_mode_negotiates_runs_stops_and_takes_a_second_session() {
    run(Mode::Server, "server");
}

#[test]
fn client_mode_connects_and_reconnects_to_the_front_end() {
    run(Mode::Client, "client");
}

/// Sets up ring `q` at [`Guest::addrs`] from index 0.
fn setup_ring(front: &mut Frontend, q: usize, call: &EventFd, kick: &EventFd) {
    let a = Guest::addrs(q);
    front.set_vring_num(q, QSIZE).unwrap();
    let config = VringConfigData {
        queue_max_size: QSIZE,
        queue_size: QSIZE,
        flags: 0,
        desc_table_addr: a.desc,
        used_ring_addr: a.used,
        avail_ring_addr: a.avail,
        log_addr: None,
    };
    front.set_vring_addr(q, &config).unwrap();
    front.set_vring_base(q, 0).unwrap();
    front.set_vring_call(q, call).unwrap();
    front.set_vring_kick(q, kick).unwrap();
}

#[test]
fn a_second_pair_runs_while_enabled() {
    let path = socket_path("mq");
    let _ = std::fs::remove_file(&path);
    let _cleanup = SocketFile(path.clone());
    let mailbox = Mailbox::new();
    let worker = Worker::start(Arc::clone(&mailbox));
    let _backend =
        VhostUserBackend::start("vu-mq", &path, Mode::Server, Arc::clone(&mailbox)).unwrap();
    let mut front = Frontend::connect(&path, 4).unwrap();
    let g = Guest::new();
    front.set_owner().unwrap();
    let features = front.get_features().unwrap();
    assert_ne!(features & F_MQ, 0);
    let protocol = front.get_protocol_features().unwrap();
    front.set_protocol_features(protocol).unwrap();
    assert_eq!(front.get_queue_num().unwrap(), 8);
    front.set_features(features).unwrap();
    let region = VhostUserMemoryRegionInfo {
        guest_phys_addr: GPA,
        memory_size: SIZE as u64,
        userspace_addr: UVA,
        mmap_offset: 0,
        mmap_handle: g.file.as_raw_fd(),
    };
    front.set_mem_table(&[region]).unwrap();
    let call = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let kick = EventFd::new(0).unwrap();
    for q in 0..4 {
        setup_ring(&mut front, q, &call, &kick);
    }
    for q in 0..2 {
        front.set_vring_enable(q, true).unwrap();
    }
    let running = |qs: &[u16]| mailbox.status().running && mailbox.status().queues_running == qs;
    wait("the first pair to run alone", || running(&[0, 1]));
    for q in 2..4 {
        front.set_vring_enable(q, true).unwrap();
    }
    wait("both pairs to run", || running(&[0, 1, 2, 3]));
    assert_eq!(mailbox.status().queue_sizes, [QSIZE; 4]);
    // A frame on the second pair's transmit queue arrives.
    let mut g = g;
    let send = |g: &mut Guest, i: u16, byte: u8| {
        let mut bytes = vec![0u8; HDR];
        bytes.extend_from_slice(&[byte; 60]);
        let addr = BUF + 0x1000 * u64::from(i);
        g.write(addr, &bytes);
        g.desc(3, i, GPA + addr, bytes.len() as u32, 0, 0);
        g.make_available(3, i);
    };
    send(&mut g, 0, 0x33);
    assert_eq!(worker.wait_frames(1), vec![vec![0x33; 60]]);
    // Disabled, it is not polled; enabled again, it resumes where it was.
    front.set_vring_enable(3, false).unwrap();
    wait("the second pair's transmit queue to stop", || {
        running(&[0, 1, 2])
    });
    send(&mut g, 1, 0x44);
    thread::sleep(Duration::from_millis(100));
    assert_eq!(
        worker.got.lock().unwrap().len(),
        1,
        "a disabled queue was polled"
    );
    front.set_vring_enable(3, true).unwrap();
    assert_eq!(worker.wait_frames(2)[1], vec![0x44; 60]);
    assert_eq!(g.used_idx(3), 2);
    assert_eq!(mailbox.broken(), 0);
}
