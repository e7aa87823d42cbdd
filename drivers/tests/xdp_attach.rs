//! XDP attach/detach on a veth pair in a throwaway network namespace. Needs root (it
//! creates namespaces and loads BPF programs) and fails, never skips, without it.
//!
//! The namespace comes from the namespace kit (`pollux-testkit`). The test process itself
//! never changes namespace: every attach runs on a fresh thread that `setns`es into the
//! test namespace and exits afterwards. The attachment (plain fds)
//! is then used and dropped from the test thread.

use std::io::{self, BufRead, BufReader};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};

use pollux_drivers::bpf::{os_error, BpfProgram, BPF_PROG_TYPE_XDP, BPF_XDP};
use pollux_drivers::xdp::{encode, BpfInsn, XdpAttachment, XdpMode, XdpProgram};
use pollux_testkit::netns::{self, Netns, Topology};

/// Env var that makes `detaches_when_the_owner_is_killed` play its own child process.
const CHILD_NS_ENV: &str = "POLLUX_XDP_CHILD_NS";
const CHILD_READY: &str = "POLLUX-XDP-CHILD-ATTACHED";

/// A network namespace (the kit's) holding a veth pair `a` <-> `b`, deleted on drop.
struct TestNs {
    topo: Topology,
}

impl TestNs {
    fn new() -> Self {
        let mut topo = Topology::new();
        topo.add_ns("x").expect("namespace");
        topo.veth("x", "a", "x", "b").expect("veth a/b");
        TestNs { topo }
    }

    fn ns(&self) -> &Netns {
        self.topo.ns("x").expect("namespace")
    }

    /// `ip -d link show dev a`.
    fn show_a(&self) -> String {
        self.ns()
            .ip(&["-d", "link", "show", "dev", "a"])
            .expect("ip link show")
    }

    /// Runs `f` on a new thread that has entered this namespace.
    fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.ns().run_in(f).expect("entering the namespace")
    }

    fn attach(&self, mode: XdpMode) -> io::Result<XdpAttachment> {
        self.enter(|| XdpProgram::attach("a", mode, 1))
    }
}

/// Whether `ip -d link show` output reports an XDP program (`prog/xdp id N`).
fn has_xdp(show: &str) -> bool {
    show.contains("prog/xdp")
}

/// The `ip link` keyword for a mode: `xdp` (native) or `xdpgeneric`.
fn ip_keyword(mode: XdpMode) -> &'static str {
    match mode {
        XdpMode::Native => "xdp ",
        XdpMode::Generic => "xdpgeneric",
        XdpMode::Auto => panic!("an attachment never reports Auto"),
    }
}

#[test]
#[ignore = "needs root: XDP programs and AF_XDP sockets (run with --include-ignored as root)"]
fn attach_detach_reattach_and_refuse_a_second_program() {
    netns::require_root();
    let ns = TestNs::new();
    assert!(!has_xdp(&ns.show_a()), "fresh veth already has XDP");

    let att = ns.attach(XdpMode::Auto).expect("attach in auto mode");
    let mode = att.mode();
    assert_ne!(mode, XdpMode::Auto);
    eprintln!("veth attach mode: {mode}");
    assert_eq!(att.ifname(), "a");
    assert_eq!(att.queues(), 1);
    let show = ns.show_a();
    eprintln!("{show}");
    assert!(has_xdp(&show), "no XDP program on a after attach:\n{show}");
    assert!(
        show.contains(ip_keyword(mode)),
        "mode {mode} not shown:\n{show}"
    );

    // The XSKMAP refuses what is not an AF_XDP socket, and out-of-range queues.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp socket");
    let err = att.register(0, udp.as_fd()).unwrap_err();
    eprintln!("register(udp): {err}");
    assert!(err.to_string().contains("queue 0"), "{err}");
    let err = att.register(1, udp.as_fd()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
    att.unregister(0).expect("unregister an empty slot");

    // A second program on the same interface: a clear error, whatever the mode asked.
    for second in [XdpMode::Auto, XdpMode::Native, XdpMode::Generic] {
        let err = ns.attach(second).expect_err("second attach must fail");
        let msg = err.to_string();
        eprintln!("second attach ({second}): {msg}");
        assert!(
            msg.contains("interface a ") && msg.contains("already has an XDP program"),
            "unclear error for second attach in {second} mode: {msg}"
        );
        assert!(
            matches!(os_error(&err), Some(libc::EBUSY | libc::EEXIST)),
            "{err:?}"
        );
    }
    assert!(has_xdp(&ns.show_a()), "the failed attach removed the first");

    drop(att);
    let show = ns.show_a();
    assert!(!has_xdp(&show), "XDP still attached after drop:\n{show}");

    // Attach again with nothing cleaned up by hand.
    let again = ns.attach(XdpMode::Auto).expect("re-attach after drop");
    assert_eq!(again.mode(), mode);
    assert!(has_xdp(&ns.show_a()));
    again.detach();
    assert!(!has_xdp(&ns.show_a()));

    // Generic mode explicitly.
    let generic = ns.attach(XdpMode::Generic).expect("attach in generic mode");
    assert_eq!(generic.mode(), XdpMode::Generic);
    assert!(ns.show_a().contains("xdpgeneric"));
    drop(generic);
    assert!(!has_xdp(&ns.show_a()));
}

#[test]
#[ignore = "needs root: XDP programs and AF_XDP sockets (run with --include-ignored as root)"]
fn attach_by_index_names_the_interface() {
    netns::require_root();
    let ns = TestNs::new();
    let att = ns
        .enter(|| {
            let index = pollux_drivers_ifindex("a");
            XdpProgram::attach(index, XdpMode::Generic, 4)
        })
        .expect("attach by index");
    assert_eq!(att.ifname(), "a");
    assert_eq!(att.queues(), 4);
    let err = ns
        .enter(|| XdpProgram::attach("nope0", XdpMode::Auto, 1))
        .unwrap_err();
    assert!(err.to_string().contains("nope0"), "{err}");
}

fn pollux_drivers_ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(index, 0, "no interface {name}");
    index
}

#[test]
#[ignore = "needs root: XDP programs and AF_XDP sockets (run with --include-ignored as root)"]
fn verifier_rejection_carries_the_log() {
    netns::require_root();
    // `exit` with r0 never written: the verifier refuses ("R0 !read_ok").
    let insns = encode(&[BpfInsn::exit()]);
    let err = BpfProgram::load(BPF_PROG_TYPE_XDP, BPF_XDP, "bad", &insns).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("BPF_PROG_LOAD"), "{msg}");
    assert!(msg.contains("R0 !read_ok"), "verifier log missing: {msg}");
    assert_eq!(os_error(&err), Some(libc::EACCES), "{err:?}");
}

/// A process that attaches and is then killed (no destructors run) leaves nothing behind:
/// the link fd is closed by the kernel and the program detached.
#[test]
#[ignore = "needs root: XDP programs and AF_XDP sockets (run with --include-ignored as root)"]
fn detaches_when_the_owner_is_killed() {
    if let Ok(ns) = std::env::var(CHILD_NS_ENV) {
        attach_and_wait_to_be_killed(&ns);
    }
    netns::require_root();
    let ns = TestNs::new();
    let exe = std::env::current_exe().expect("test executable");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "detaches_when_the_owner_is_killed",
            "--include-ignored",
            "--nocapture",
        ])
        .env(CHILD_NS_ENV, ns.ns().name())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let ready = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.starts_with(CHILD_READY));
    if !ready {
        let status = child.wait();
        panic!("child did not attach (status {status:?})");
    }
    assert!(has_xdp(&ns.show_a()), "child's program not attached");
    child.kill().expect("SIGKILL child");
    let status = child.wait().expect("reap child");
    assert!(!status.success());
    let show = ns.show_a();
    assert!(!has_xdp(&show), "XDP left behind by killed owner:\n{show}");
    let att = ns
        .attach(XdpMode::Auto)
        .expect("attach after the owner died");
    drop(att);
}

/// The child process of `detaches_when_the_owner_is_killed` (the same test, re-run with
/// the namespace in the environment): attaches, reports, and waits to be killed.
fn attach_and_wait_to_be_killed(name: &str) -> ! {
    // No TestNs guard here: the namespace belongs to the parent.
    let att = netns::run_in_named(name, || XdpProgram::attach("a", XdpMode::Auto, 1))
        .expect("entering the parent's namespace")
        .expect("child attach");
    println!("{CHILD_READY} mode={}", att.mode());
    // Wait to be killed; the parent holds our stdin open until then.
    let mut line = String::new();
    let _ = io::stdin().read_line(&mut line);
    // Reached only if the parent went away without killing us (stdin closed). Exit
    // without running destructors, as a crash would (and without a core dump).
    std::process::exit(1);
}
