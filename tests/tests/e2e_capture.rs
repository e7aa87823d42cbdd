//! End to end: `polluxctl capture` on a real `polluxd` AF_XDP port, read back with tcpdump.
//!
//! ```text
//!   namespace a1: 198.18.30.11 ──veth── <P>a1 ┐  (captured: rx, tx, drop)
//!   namespace a2: 198.18.30.12 ──veth── <P>a2 ├ polluxd (namespace host)
//!   namespace a3: 198.18.30.13 ──veth── <P>a3 ┘
//! ```
//!
//! While `polluxctl capture --port vm-a1 -w FILE` runs, a1 pings a2 (received from a1,
//! replies sent to a1) and then pings a3 from a2's address (dropped by port security).
//! tcpdump reads the file and shows the echo requests and replies and the forged
//! requests; the forged ones are in the file as drops, each with its stage and reason as
//! its pcapng comment.
//!
//! Needs root and `ip`, `ping`, `tcpdump`; fails, never skips, when any is missing.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::Duration;

use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption;
use pcap_file::pcapng::{Block, PcapNgReader};
use pollux_tests::daemon;
use pollux_tests::netns::{self, ping};
use pollux_tests::vm_lab::{Vm, VmLab};

const TOOLS: &[&str] = &["ip", "ping", "tcpdump"];
const CONFIG: &str = "e2e-port-security.toml";

const A1: Vm = Vm {
    role: "a1",
    mac: "fa:16:3e:1e:00:11",
    ip: "198.18.30.11",
};
const A2: Vm = Vm {
    role: "a2",
    mac: "fa:16:3e:1e:00:12",
    ip: "198.18.30.12",
};
const A3: Vm = Vm {
    role: "a3",
    mac: "fa:16:3e:1e:00:13",
    ip: "198.18.30.13",
};

/// The capture file's directory, removed on drop.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// (comment, data) of every packet in the pcapng file.
fn packets(path: &Path) -> Vec<(Option<String>, Vec<u8>)> {
    let bytes = std::fs::read(path).expect("read the capture");
    let mut reader = PcapNgReader::new(&bytes[..]).expect("a pcapng file");
    let mut out = Vec::new();
    while let Some(block) = reader.next_block() {
        if let Block::EnhancedPacket(epb) = block.expect("a block") {
            let comment = epb.options.iter().find_map(|o| match o {
                EnhancedPacketOption::Comment(c) => Some(c.to_string()),
                _ => None,
            });
            out.push((comment, epb.data.to_vec()));
        }
    }
    out
}

/// Runs `polluxctl capture` of everything on vm-a1 into `file` for `secs` seconds, and
/// waits until it says the capture is armed (as tcpdump says "listening on").
fn start_capture(
    polluxctl: &Path,
    lab: &VmLab,
    file: &Path,
    secs: &str,
) -> (Child, BufReader<ChildStderr>) {
    let mut capture = Command::new(polluxctl)
        .arg("--socket")
        .arg(lab.polluxd.socket())
        .args([
            "capture",
            "--port",
            "vm-a1",
            "--direction",
            "rx,tx,drop",
            "--count",
            "10000",
            "--duration",
            secs,
            "-w",
        ])
        .arg(file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run polluxctl capture");
    let mut stderr = BufReader::new(capture.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).expect("polluxctl's first line");
    assert!(line.contains("capturing rx,tx,drop of vm-a1"), "{line}");
    (capture, stderr)
}

/// tcpdump's reading of `file`.
fn tcpdump(file: &Path) -> String {
    let dump = Command::new("tcpdump")
        .args(["-n", "-r"])
        .arg(file)
        .output()
        .expect("run tcpdump");
    assert!(dump.status.success(), "{dump:?}");
    String::from_utf8_lossy(&dump.stdout).into_owned()
}

fn ipv4_addrs(frame: &[u8]) -> Option<([u8; 4], [u8; 4], u8)> {
    (frame.get(12..14)? == [0x08, 0x00]).then_some(())?;
    Some((
        frame.get(26..30)?.try_into().ok()?,
        frame.get(30..34)?.try_into().ok()?,
        *frame.get(23)?,
    ))
}

#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn polluxctl_capture_writes_what_tcpdump_reads_with_drop_reasons() {
    let _serial = netns::exclusive(TOOLS);
    daemon::polluxd_path();
    let polluxctl = daemon::polluxctl_path();
    let lab = VmLab::start(CONFIG, &[&A1, &A2, &A3]);
    let a1 = lab.vm(&A1);
    let dir = Dir(std::env::temp_dir().join(format!("pollux-cap-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let file = dir.0.join("a1.pcap");

    let (capture, mut stderr) = start_capture(polluxctl, &lab, &file, "5");

    let r = ping(a1, A2.ip, 3, Duration::from_secs(4)).unwrap();
    assert!(r.all_received(), "a1 -> a2: {r:?}");

    // a1 can forge a2's address towards a3 (a3's neighbour entry set by hand).
    a1.ip(&["addr", "add", &format!("{}/32", A2.ip), "dev", "eth0"])
        .unwrap();
    a1.ip(&[
        "neigh",
        "replace",
        A3.ip,
        "lladdr",
        A3.mac,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ])
    .unwrap();

    let _ = a1.exec_timeout(
        "ping",
        &[
            "-n", "-q", "-c", "3", "-i", "0.2", "-W", "1", "-w", "2", "-I", A2.ip, A3.ip,
        ],
        Duration::from_secs(6),
    );

    let out = capture.wait_with_output().expect("polluxctl capture ends");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut rest = String::new();
    let _ = stderr.read_to_string(&mut rest);
    assert!(out.status.success(), "polluxctl capture: {stdout} {rest}");
    assert!(stdout.contains("ended by duration"), "{stdout}");
    eprintln!("polluxctl: {stdout}");

    // tcpdump reads the file: the echo requests from a1, the replies sent to it, and
    // the forged requests (in the file as received, and again as dropped).
    let text = tcpdump(&file);
    eprintln!("tcpdump -n -r:\n{text}");
    let count = |needle: &str| text.lines().filter(|l| l.contains(needle)).count();
    let request = format!("{} > {}: ICMP echo request", A1.ip, A2.ip);
    let reply = format!("{} > {}: ICMP echo reply", A2.ip, A1.ip);
    let forged = format!("{} > {}: ICMP echo request", A2.ip, A3.ip);
    assert_eq!(count(&request), 3, "{text}");
    assert_eq!(count(&reply), 3, "{text}");
    // ping sends until its deadline when no reply comes: at least 3, each received and
    // dropped.
    let forged = count(&forged);
    assert!(forged >= 6 && forged % 2 == 0, "{text}");

    // The drops carry their reason.
    let drops: Vec<_> = packets(&file)
        .into_iter()
        .filter(|(comment, _)| comment.is_some())
        .collect();
    assert_eq!(drops.len(), forged / 2, "{drops:?}");
    for (comment, frame) in &drops {
        assert_eq!(comment.as_deref(), Some("drop: port_security/spoofed_ip"));
        assert_eq!(
            ipv4_addrs(frame),
            Some(([198, 18, 30, 12], [198, 18, 30, 13], 1)),
            "{frame:02x?}"
        );
    }

    // Ctrl-C ends a capture cleanly: the file holds what came, and the daemon stops the
    // capture (the next one starts).
    for round in 0..2 {
        let file = dir.0.join(format!("interrupted-{round}.pcap"));
        let (capture, mut stderr) = start_capture(polluxctl, &lab, &file, "60");
        let r = ping(lab.vm(&A3), A1.ip, 1, Duration::from_secs(4)).unwrap();
        assert!(r.all_received(), "a3 -> a1: {r:?}");
        // Frames on their way to polluxctl when it is interrupted are lost with it, as
        // tcpdump's are: let the daemon's stream (polled every 5 ms) deliver them first.
        std::thread::sleep(Duration::from_secs(1));
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(capture.id() as i32, libc::SIGINT) }, 0);
        let out = capture.wait_with_output().expect("polluxctl capture ends");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut rest = String::new();
        let _ = stderr.read_to_string(&mut rest);
        assert!(out.status.success(), "interrupted capture: {stdout} {rest}");
        assert!(stdout.contains("ended by interrupt"), "{stdout}");
        let text = tcpdump(&file);
        let request = format!("{} > {}: ICMP echo request", A3.ip, A1.ip);
        assert_eq!(
            text.lines().filter(|l| l.contains(&request)).count(),
            1,
            "{text}"
        );
    }
}
