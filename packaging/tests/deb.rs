//! The Debian package, end to end: `packaging/build-deb.sh` packs the debug binaries this
//! test build already made (a release build would cost CI minutes and test nothing more
//! of the packaging), `dpkg -i` installs it, and the test checks the files, the units
//! (`systemd-analyze verify`), the `pollux` group, the manual pages and completions. It
//! then runs the installed polluxd the way its unit does, in a namespace of its own:
//! with only the unit's capability bounding set and group `pollux`, on an AF_XDP port
//! (XDP program attached) and a tap device it creates, and the installed polluxctl talks
//! to it as an unprivileged member of `pollux` and is refused as a non-member. Last,
//! `dpkg -r` and `dpkg --purge` leave no file and no group behind.
//!
//! The test installs into the machine's root file system, so it refuses to run where
//! `pollux` is installed already or a group or state directory of that name exists
//! (the purge would take them).

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use pollux_testkit::netns::{self, Prefix, Topology};

const LIMIT: Duration = Duration::from_secs(120);
/// Bound of the cargo build, a no-op after the test build but for a cold one.
const BUILD_LIMIT: Duration = Duration::from_secs(20 * 60);
const UNITS: [&str; 2] = [
    "/lib/systemd/system/polluxd.service",
    "/lib/systemd/system/pollux-agent.service",
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("packaging/ lives in the workspace")
        .to_path_buf()
}

fn command(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args);
    c
}

fn run(cmd: Command) -> Output {
    let line = format!("{cmd:?}");
    netns::run_bounded(cmd, LIMIT).unwrap_or_else(|e| panic!("{line}: {e}"))
}

/// Runs `cmd`, panics with its output unless it succeeds; its stdout.
fn ok(cmd: Command) -> String {
    let line = format!("{cmd:?}");
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{line}: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn group_id(name: &str) -> Option<u32> {
    let out = run(command("getent", &["group", name]));
    if !out.status.success() {
        return None;
    }
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    line.split(':').nth(2).and_then(|g| g.trim().parse().ok())
}

/// dpkg's status of package pollux: `None` when dpkg knows nothing of it (never
/// installed, or purged).
fn package_status() -> Option<String> {
    let out = run(command("dpkg-query", &["-W", "-f=${Status}", "pollux"]));
    let status = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !status.is_empty() && !status.ends_with("not-installed"))
        .then_some(status)
}

/// Purges the package (and removes the scratch directory) on every exit path.
struct Installed {
    scratch: PathBuf,
}

impl Drop for Installed {
    fn drop(&mut self) {
        if package_status().is_some() {
            let _ = netns::run_bounded(command("dpkg", &["--purge", "pollux"]), LIMIT);
        }
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// The capabilities the installed polluxd unit keeps, as `setpriv --bounding-set` takes
/// them (`-all,+net_admin,...`).
fn unit_bounding_set(unit: &str) -> String {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("polluxd.service sets CapabilityBoundingSet");
    let mut set = String::from("-all");
    for cap in line.split_whitespace() {
        let cap = cap.strip_prefix("CAP_").expect("CAP_ names").to_lowercase();
        set.push_str(",+");
        set.push_str(&cap);
    }
    set
}

#[test]
#[ignore = "needs root: installs a package, network namespaces (run with --include-ignored as root)"]
fn the_package_installs_runs_polluxd_with_the_units_capabilities_and_purges_cleanly() {
    let started = Instant::now();
    let _guard = netns::exclusive(&[
        "dpkg-deb",
        "dpkg",
        "systemd-analyze",
        "setpriv",
        "objcopy",
        "objdump",
        "man",
    ]);
    assert!(
        package_status().is_none()
            && group_id("pollux").is_none()
            && !Path::new("/var/lib/pollux").exists(),
        "package pollux, group pollux or /var/lib/pollux exists on this machine: this test \
         installs and purges the package, which would take them; run it elsewhere"
    );

    // The three binaries in the build's profile directory, next to pollux-gen-docs.
    let gen_docs = PathBuf::from(env!("CARGO_BIN_EXE_pollux-gen-docs"));
    let bin_dir = gen_docs.parent().expect("a directory").to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = command(&cargo, &[]);
    build.current_dir(workspace_root()).args([
        "build",
        "-q",
        "-p",
        "pollux-control",
        "--bin",
        "polluxd",
        "--bin",
        "polluxctl",
        "-p",
        "pollux-agent",
        "--bin",
        "pollux-agent",
    ]);
    let line = format!("{build:?}");
    let out = netns::run_bounded(build, BUILD_LIMIT).unwrap_or_else(|e| panic!("{line}: {e}"));
    assert!(
        out.status.success(),
        "{line}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let built = Instant::now();

    let prefix = Prefix::next_under("pk").expect("prefix");
    let scratch = std::env::temp_dir().join(format!("{prefix}-deb"));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).expect("scratch directory");
    let guard = Installed {
        scratch: scratch.clone(),
    };
    let deb = ok(command(
        workspace_root().join("packaging/build-deb.sh"),
        &[
            "--bin-dir",
            bin_dir.to_str().unwrap(),
            "--gen-docs",
            gen_docs.to_str().unwrap(),
            "--out",
            scratch.to_str().unwrap(),
            "--compress",
            "none",
        ],
    ));
    let deb = deb.trim().to_owned();
    let packed = Instant::now();
    let fields = ok(command("dpkg-deb", &["-f", &deb]));
    assert!(fields.contains("Package: pollux\n"), "{fields}");
    assert!(fields.contains("Depends: libc6 (>= 2."), "{fields}");

    ok(command("dpkg", &["-i", &deb]));
    let files: BTreeSet<String> = ok(command("dpkg", &["-L", "pollux"]))
        .lines()
        .map(str::to_owned)
        .collect();
    for want in [
        "/usr/bin/polluxd",
        "/usr/bin/polluxctl",
        "/usr/bin/pollux-agent",
        UNITS[0],
        UNITS[1],
        "/etc/default/polluxd",
        "/etc/default/pollux-agent",
        "/usr/share/man/man1/polluxd.1.gz",
        "/usr/share/man/man1/polluxctl.1.gz",
        "/usr/share/man/man1/polluxctl-apply.1.gz",
        "/usr/share/man/man1/polluxctl-show-ports.1.gz",
        "/usr/share/man/man1/pollux-agent.1.gz",
        "/usr/share/bash-completion/completions/polluxctl",
        "/usr/share/zsh/vendor-completions/_polluxd",
        "/usr/share/fish/vendor_completions.d/pollux-agent.fish",
        "/usr/share/doc/pollux/copyright",
    ] {
        assert!(files.contains(want), "{want} not in the package: {files:?}");
    }
    for bin in ["polluxd", "polluxctl", "pollux-agent"] {
        let path = format!("/usr/bin/{bin}");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755, "{path}");
        let version = ok(command(&path, &["--version"]));
        assert!(version.starts_with(bin), "{path} --version: {version}");
    }
    // The pages are rendered from the binaries' own clap definitions.
    let page = ok(command("man", &["-P", "cat", "polluxctl-apply"]));
    assert!(page.contains("--dry-run"), "{page}");
    let page = ok(command("man", &["-P", "cat", "polluxd"]));
    assert!(page.contains("--state-dir"), "{page}");
    let completion =
        std::fs::read_to_string("/usr/share/bash-completion/completions/polluxctl").unwrap();
    assert!(
        completion.contains("rollback"),
        "bash completion lacks subcommands"
    );
    let verify = run(command("systemd-analyze", &["verify", UNITS[0], UNITS[1]]));
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}\n{}",
        verify.status,
        String::from_utf8_lossy(&verify.stderr)
    );
    let gid = group_id("pollux").expect("postinst made group pollux");
    assert!(gid < 1000, "pollux is a system group: gid {gid}");

    // polluxd as its unit runs it: the unit's bounding set, group pollux.
    let unit = std::fs::read_to_string(UNITS[0]).unwrap();
    let caps = unit_bounding_set(&unit);
    assert_eq!(caps, "-all,+net_admin,+net_raw,+bpf,+ipc_lock");
    let mut topo = Topology::with_prefix(prefix.clone());
    topo.add_ns("host").expect("namespace");
    let xsk = prefix.ifname("x").unwrap();
    let peer = prefix.ifname("y").unwrap();
    let tap = prefix.ifname("t").unwrap();
    topo.veth("host", &xsk, "host", &peer).expect("veth");
    let run_dir = scratch.join("run");
    std::fs::create_dir(&run_dir).unwrap();
    // As RuntimeDirectory=pollux with RuntimeDirectoryMode=0750 and Group=pollux.
    std::os::unix::fs::chown(&run_dir, Some(0), Some(gid)).unwrap();
    std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = scratch.join("state.toml");
    std::fs::write(
        &config,
        format!(
            r#"[[networks]]
id = "net-a"
network_type = "local"

[[ports]]
id = "vm-x"
network_id = "net-a"
mac_address = "fa:16:3e:00:00:01"
port_security_enabled = false
binding = {{ driver = "afxdp", interface = "{xsk}" }}

[[ports]]
id = "vm-t"
network_id = "net-a"
mac_address = "fa:16:3e:00:00:02"
port_security_enabled = false
binding = {{ driver = "tap", interface = "{tap}" }}
"#
        ),
    )
    .unwrap();
    let socket = run_dir.join("polluxd.sock");
    let state_dir = scratch.join("state");
    let cpu = std::thread::available_parallelism().map_or(1, |n| n.get()) - 1;
    let ns = topo.ns("host").unwrap();
    let mut polluxd = ns
        .spawn(
            "setpriv",
            &[
                "--bounding-set",
                &caps,
                "--inh-caps",
                "-all",
                "--regid",
                "pollux",
                "--clear-groups",
                "/usr/bin/polluxd",
                "--config",
                config.to_str().unwrap(),
                "--socket",
                socket.to_str().unwrap(),
                "--state-dir",
                state_dir.to_str().unwrap(),
                "--cores",
                &cpu.to_string(),
            ],
        )
        .expect("start polluxd");
    assert!(
        polluxd.wait_stderr_contains("polluxd: ready", Duration::from_secs(20)),
        "polluxd with the unit's capabilities did not start: {}",
        polluxd.stderr_so_far()
    );
    let link = ns.ip(&["-d", "link", "show", &xsk]).unwrap();
    assert!(link.contains("prog/xdp"), "no XDP program on {xsk}: {link}");
    ns.ip(&["link", "show", &tap])
        .expect("polluxd created the tap device");
    let status = std::fs::read_to_string(format!("/proc/{}/status", polluxd.pid())).unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim()
        .to_owned();
    // CAP_NET_ADMIN 12, CAP_NET_RAW 13, CAP_IPC_LOCK 14, CAP_BPF 39.
    assert_eq!(eff, "0000008000007000", "polluxd's effective capabilities");
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(
        (meta.gid(), meta.mode() & 0o777),
        (gid, 0o660),
        "the socket"
    );

    // A member of pollux reaches the socket, anybody else does not.
    let polluxctl = |groups: &str| {
        run(command(
            "setpriv",
            &[
                "--reuid",
                "nobody",
                "--regid",
                "nogroup",
                "--groups",
                groups,
                "/usr/bin/polluxctl",
                "--socket",
                socket.to_str().unwrap(),
                "--timeout",
                "5",
                "show",
                "ports",
            ],
        ))
    };
    let member = polluxctl(&gid.to_string());
    let text = String::from_utf8_lossy(&member.stdout).into_owned();
    assert!(
        member.status.success() && text.contains("vm-x") && text.contains("vm-t"),
        "polluxctl as a member of pollux: {}\n{text}{}",
        member.status,
        String::from_utf8_lossy(&member.stderr)
    );
    let outsider = polluxctl("nogroup");
    assert_eq!(
        outsider.status.code(),
        Some(3),
        "polluxctl outside pollux must not reach the socket: {}",
        String::from_utf8_lossy(&outsider.stderr)
    );
    polluxd.signal(libc::SIGTERM);
    let _ = polluxd.wait_timeout(Duration::from_secs(10));
    drop(polluxd);
    drop(topo);
    let ran = Instant::now();

    // Remove: the files go, the configuration and the group stay until the purge.
    ok(command("dpkg", &["-r", "pollux"]));
    assert!(!Path::new("/usr/bin/polluxd").exists());
    assert!(
        Path::new("/etc/default/polluxd").exists(),
        "conffiles stay until purge"
    );
    ok(command("dpkg", &["--purge", "pollux"]));
    let left: Vec<&String> = files
        .iter()
        .filter(|f| {
            let p = Path::new(f.as_str());
            // Directories the package shares with the system (/usr/bin, /etc) stay.
            p.exists() && !p.is_dir()
        })
        .collect();
    assert!(left.is_empty(), "left after the purge: {left:?}");
    for dir in ["/usr/share/doc/pollux", "/var/lib/pollux", "/run/pollux"] {
        assert!(!Path::new(dir).exists(), "{dir} left after the purge");
    }
    assert_eq!(
        group_id("pollux"),
        None,
        "group pollux left after the purge"
    );
    assert_eq!(package_status(), None);
    drop(guard);
    eprintln!(
        "package test: cargo build {:.1?}, build-deb.sh {:.1?}, install and checks and \
         polluxd {:.1?}, remove and purge {:.1?}; total {:.1?}",
        built - started,
        packed - built,
        ran - packed,
        started.elapsed() - (ran - started),
        started.elapsed()
    );
}
