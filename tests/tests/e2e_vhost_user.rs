//! End to end: a real Linux guest (QEMU, TCG) on a vhost-user port of the real `polluxd`
//! (release build), reaching a namespace on an AF_XDP port.
//!
//! ```text
//!   QEMU guest: eth0 (virtio-net-pci) ──vhost-user /tmp/<P>-v1.sock──┐
//!                         DHCP → 198.18.23.11                        ├ polluxd (namespace host)
//!   namespace x1: eth0 198.18.23.13 ──veth── <P>x1 (AF_XDP)          ┘
//! ```
//!
//! The guest is the kernel of Debian's `linux-image-amd64` with a busybox initramfs this
//! test builds (static busybox and the virtio-net modules of that kernel): its init takes
//! an address from polluxd's DHCP server, pings x1, prints what happened on the serial
//! console and waits; x1 then pings the guest. Guest memory is a memfd shared with
//! polluxd (`share=on`); the device has no MSI-X (`vectors=0`: QEMU 7.2 crashes in
//! `vhost_net_start` with it). One boot for the whole test (TCG is slow); QEMU is killed
//! on every exit path (its process group, when the handle drops), and a killed guest must
//! show as a disconnect in `ports.list`.
//!
//! Needs root and `ip`, `ping`, `qemu-system-x86_64`, `busybox` (static), `cpio`, `gzip`:
//! it fails, never skips, when any is missing.

use pollux_testkit::TempDir;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use pollux_tests::daemon::{self, ConfigFile, Polluxd};
use pollux_tests::netns::{ping, Netns, Proc};
use pollux_tests::vm_lab::{Vm, VmNet};
use serde_json::json;

const TOOLS: &[&str] = &[
    "ip",
    "ping",
    "qemu-system-x86_64",
    "busybox",
    "cpio",
    "gzip",
];
const CONFIG: &str = "e2e-vhost-user.toml";
const GUEST_MAC: &str = "fa:16:3e:17:00:11";
const GUEST_IP: &str = "198.18.23.11";
const X1_MAC: &str = "fa:16:3e:17:00:13";
const X1_IP: &str = "198.18.23.13";
/// The AF_XDP namespace beside the vhost-user ports.
const X1: Vm = Vm {
    role: "x1",
    mac: X1_MAC,
    ip: X1_IP,
};
/// Modules of the guest kernel, in load order (each after what it depends on).
const MODULES: &[&str] = &[
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
    "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
    "kernel/drivers/virtio/virtio_pci.ko",
    "kernel/net/core/failover.ko",
    "kernel/drivers/net/net_failover.ko",
    "kernel/drivers/net/virtio_net.ko",
];
/// From QEMU's start to the guest's ping results: boot under TCG (~5 s here), DHCP, ping.
const GUEST_DEADLINE: Duration = Duration::from_secs(120);

/// The guest's init: modules, DHCP, a ping to x1, markers on the console, then it waits
/// for the test (which kills QEMU) and powers off after a minute at most.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules.order); do insmod /lib/modules/$m || echo "VU-INSMOD-FAILED $m"; done
ip link set lo up
ip link set eth0 up
echo VU-BOOTED
udhcpc -i eth0 -n -q -f -t 30 -T 1 -s /udhcpc.sh || echo VU-DHCP-FAILED
ping -c 5 -W 2 @X1@
echo "VU-PING-EXIT $?"
echo VU-PINGED
sleep 60
poweroff -f
"#;

/// udhcpc's script: only the address (the test network has no router to use).
const UDHCPC: &str = r#"#!/bin/sh
case "$1" in
bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    echo "VU-DHCP $ip/$mask"
    ;;
esac
"#;

/// The installed `linux-image-amd64` kernel whose modules are present: (vmlinuz, modules
/// directory). The running kernel does not matter (the guest boots this one).
fn guest_kernel() -> (PathBuf, PathBuf) {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/boot").expect("/boot") {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(version) = name.strip_prefix("vmlinuz-") {
            let modules = PathBuf::from(format!("/lib/modules/{version}"));
            if modules.join(MODULES[MODULES.len() - 1]).exists() {
                found.push((PathBuf::from(format!("/boot/{name}")), modules));
            }
        }
    }
    found.sort();
    found.pop().expect(
        "no /boot/vmlinuz-* with virtio_net in /lib/modules: apt-get install linux-image-amd64",
    )
}

/// Builds the guest's initramfs in `dir` and returns its path.
fn build_initramfs(host: &Netns, dir: &Path, modules: &Path) -> PathBuf {
    let root = dir.join("root");
    let lib = root.join("lib/modules");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(&lib).unwrap();
    let busybox = root.join("bin/busybox");
    std::fs::copy("/usr/bin/busybox", &busybox).unwrap();
    let out = host
        .exec_timeout(
            "sh",
            &[
                "-c",
                &format!("file -L {0} 2>/dev/null || ldd {0} 2>&1", busybox.display()),
            ],
            Duration::from_secs(10),
        )
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    assert!(
        !out.contains("dynamically linked"),
        "/usr/bin/busybox is dynamically linked: apt-get install busybox-static ({out})"
    );
    let mut order = String::new();
    for m in MODULES {
        let name = Path::new(m).file_name().unwrap();
        std::fs::copy(modules.join(m), lib.join(name))
            .unwrap_or_else(|e| panic!("{}: {e}", modules.join(m).display()));
        order.push_str(&format!("{}\n", name.to_string_lossy()));
    }
    std::fs::write(root.join("modules.order"), order).unwrap();
    write_exec(&root.join("init"), &INIT.replace("@X1@", X1_IP));
    write_exec(&root.join("udhcpc.sh"), UDHCPC);
    let image = dir.join("initramfs.gz");
    let cmd = format!(
        "cd {} && find . | cpio -o -H newc --quiet | gzip -1 > {}",
        root.display(),
        image.display()
    );
    let out = host
        .exec_timeout("sh", &["-c", &cmd], Duration::from_secs(60))
        .unwrap();
    assert!(out.status.success(), "building the initramfs: {out:?}");
    image
}

fn write_exec(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A file removed on drop (the socket, should polluxd die before removing it).
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Starts QEMU with the guest on vhost-user socket `socket`; killed when dropped.
fn start_guest(host: &Netns, kernel: &Path, initramfs: &Path, socket: &str) -> Proc {
    let memory = "memory-backend-memfd,id=mem,size=256M,share=on";
    let chardev = format!("socket,id=c0,path={socket}");
    let device = format!("virtio-net-pci,netdev=n0,mac={GUEST_MAC},vectors=0");
    let kernel = kernel.display().to_string();
    let initrd = initramfs.display().to_string();
    host.spawn(
        "qemu-system-x86_64",
        &[
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
            "-accel",
            "tcg",
            "-smp",
            "1",
            "-m",
            "256M",
            "-object",
            memory,
            "-machine",
            "pc,memory-backend=mem",
            "-chardev",
            &chardev,
            "-netdev",
            "vhost-user,id=n0,chardev=c0",
            "-device",
            &device,
            "-kernel",
            &kernel,
            "-initrd",
            &initrd,
            "-append",
            "console=ttyS0 panic=-1 quiet",
        ],
    )
    .expect("start qemu-system-x86_64")
}

/// Waits until the guest's console shows `marker` (or QEMU exits, or the deadline).
fn wait_console(qemu: &mut Proc, marker: &str, deadline: Instant) -> String {
    loop {
        let out = qemu.stdout_so_far();
        if out.contains(marker) {
            return out;
        }
        if !qemu.is_running() || Instant::now() >= deadline {
            panic!(
                "the guest did not print {marker:?} (running: {}); console:\n{out}\nqemu stderr:\n{}",
                qemu.is_running(),
                qemu.stderr_so_far()
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "needs root: network namespaces, AF_XDP and QEMU (run with --include-ignored as root)"]
fn a_qemu_guest_on_a_vhost_user_port_gets_dhcp_and_pings_an_afxdp_namespace() {
    let _serial = daemon::setup(TOOLS);
    let started = Instant::now();
    let (kernel, modules) = guest_kernel();
    let net = VmNet::new(&[&X1]);
    let prefix = net.prefix().to_owned();
    let host = net.host();
    let dir = TempDir::new();
    let initramfs = build_initramfs(host, dir.path(), &modules);

    let config = ConfigFile::render(CONFIG, &prefix).unwrap();
    let socket = format!("/tmp/{prefix}-v1.sock");
    let _socket_file = TempFile(PathBuf::from(&socket));
    let polluxd =
        Polluxd::start(host, config.path(), &daemon::last_cpu()).unwrap_or_else(|e| panic!("{e}"));
    let before = polluxd.port("vm-v1");
    assert_eq!(before["driver"], "vhost-user", "{before}");
    assert_eq!(before["vhost_user"]["connected"], false, "{before}");
    assert!(
        Path::new(&socket).exists(),
        "polluxd did not create {socket}"
    );

    let mut qemu = start_guest(host, &kernel, &initramfs, &socket);
    let deadline = Instant::now() + GUEST_DEADLINE;
    let console = wait_console(&mut qemu, "VU-PINGED", deadline);
    eprintln!(
        "guest console after {:.1} s:\n{console}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        console.contains(&format!("VU-DHCP {GUEST_IP}/24")),
        "the guest did not get {GUEST_IP} from polluxd's DHCP server; polluxd stderr:\n{}",
        polluxd.stderr_so_far()
    );
    assert!(
        console.contains("5 packets transmitted, 5 packets received"),
        "the guest's pings to x1 were not all answered; polluxd stderr:\n{}",
        polluxd.stderr_so_far()
    );
    assert!(console.contains("VU-PING-EXIT 0"), "{console}");

    // And the other way: x1 pings the guest.
    let r = ping(net.vm(&X1), GUEST_IP, 5, Duration::from_secs(15)).unwrap();
    assert!(
        r.all_received(),
        "x1 -> guest: {r:?}; polluxd stderr:\n{}",
        polluxd.stderr_so_far()
    );

    let p = polluxd.port("vm-v1");
    eprintln!("vm-v1: {p}");
    let vu = &p["vhost_user"];
    assert_eq!(vu["connected"], true, "{p}");
    assert_eq!(vu["running"], true, "{p}");
    assert_eq!(vu["mode"], "server", "{p}");
    assert_eq!(vu["broken_queues"], 0, "{p}");
    assert_eq!(vu["queues"], json!([256, 256]), "{p}");
    let names = vu["feature_names"].as_array().unwrap();
    for f in ["VERSION_1", "MRG_RXBUF", "INDIRECT_DESC", "EVENT_IDX"] {
        assert!(names.contains(&json!(f)), "{f} not negotiated: {p}");
    }
    assert_eq!(p["state"], "up", "{p}");
    // DHCP (discover, request) and 5 + 5 pings each way at least, besides ARP.
    let rx = p["rx_packets"].as_u64().unwrap();
    let tx = p["tx_packets"].as_u64().unwrap();
    assert!(rx >= 12 && tx >= 12, "vm-v1 counters: {p}");
    let x1 = polluxd.port("vm-x1");
    assert!(
        x1["rx_packets"].as_u64().unwrap() >= 10,
        "vm-x1 counters: {x1}"
    );

    // The guest goes away: polluxd notices, counts it and stops the queues.
    drop(qemu);
    let p = polluxd.wait_port("vm-v1", "disconnected", Duration::from_secs(10), |p| {
        p["vhost_user"]["connected"] == false
    });
    assert_eq!(p["vhost_user"]["connected"], false, "{p}");
    assert_eq!(p["vhost_user"]["running"], false, "{p}");
    assert_eq!(p["vhost_user"]["disconnects"], 1, "{p}");

    let (status, stderr) = polluxd.stop().unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "polluxd exited with {status}:\n{stderr}");
    assert!(
        !Path::new(&socket).exists(),
        "polluxd left its socket {socket} behind"
    );
    eprintln!("e2e vhost-user: {:.1} s", started.elapsed().as_secs_f64());
}
