//! `pollux-netns`: builds a topology with the namespace kit for a shell script, and holds
//! it until the script lets go.
//!
//! ```text
//! pollux-netns [--root ROOT] ns=ROLE... veth=ROLE/IF[@MAC],ROLE/IF[@MAC]...
//! ```
//!
//! `ns=ROLE` makes namespace `<prefix>-ROLE` (loopback up, IPv6 off); `veth=` a veth pair
//! with its ends in two namespaces, both up, each optionally with a MAC. A `%` in an
//! interface name stands for the prefix (for names that must be unique on the host, such
//! as those that name NAPI threads). Once everything exists it prints one line of shell
//! assignments, `PREFIX=… NS_<ROLE>=…`, and then holds the topology until its standard
//! input reaches end of file (the script closed it, or died) or SIGINT, SIGTERM or SIGHUP
//! arrives; then the kit deletes every namespace, killing what still runs inside. Names
//! are `<ROOT><pid-hex>t<n>-<role>` (ROOT default `pbn`, as the benchmark harness); the
//! namespaces of earlier runs whose process died are deleted first.
//!
//! From bash:
//!
//! ```text
//! coproc TOPO { exec pollux-netns ns=a ns=b veth=a/eth0,b/eth0; }
//! read -r names <&"${TOPO[0]}"; eval "$names"     # NS_A, NS_B, PREFIX
//! ...
//! exec {TOPO[1]}>&-; wait "$TOPO_PID"             # deleted
//! ```

use std::io::Write;
use std::process::ExitCode;

use pollux_testkit::netns::{self, Prefix, Topology, VethOptions};
use pollux_testkit::signal::{install_signal_handlers, interrupted};

/// One end of a `veth=` argument.
struct End {
    role: String,
    ifname: String,
    mac: Option<String>,
}

fn parse_end(text: &str, prefix: &Prefix) -> Result<End, String> {
    let (role, rest) = text
        .split_once('/')
        .ok_or_else(|| format!("`{text}`: a veth end is ROLE/IF[@MAC]"))?;
    let (ifname, mac) = match rest.split_once('@') {
        Some((i, m)) => (i, Some(m.to_string())),
        None => (rest, None),
    };
    Ok(End {
        role: role.to_string(),
        ifname: ifname.replace('%', prefix.as_str()),
        mac,
    })
}

fn build(root: &str, specs: &[String]) -> Result<(Topology, String), String> {
    let e = |e: netns::Error| e.to_string();
    let removed = netns::remove_stale(root).map_err(e)?;
    if !removed.is_empty() {
        eprintln!("pollux-netns: removed namespaces of dead runs: {removed:?}");
    }
    let prefix = Prefix::next_under(root).map_err(e)?;
    let mut topo = Topology::with_prefix(prefix.clone());
    let mut names = format!("PREFIX={prefix}");
    for spec in specs {
        if let Some(role) = spec.strip_prefix("ns=") {
            let ns = topo.add_ns(role).map_err(e)?;
            ns.disable_ipv6().map_err(e)?;
            names.push_str(&format!(" NS_{}={}", role.to_uppercase(), ns.name()));
        } else if let Some(pair) = spec.strip_prefix("veth=") {
            let (a, b) = pair
                .split_once(',')
                .ok_or_else(|| format!("`{spec}`: veth=ROLE/IF[@MAC],ROLE/IF[@MAC]"))?;
            let (a, b) = (parse_end(a, &prefix)?, parse_end(b, &prefix)?);
            let opts = VethOptions {
                mac_a: a.mac,
                mac_b: b.mac,
                ..VethOptions::default()
            };
            topo.veth_with(&a.role, &a.ifname, &b.role, &b.ifname, &opts)
                .map_err(e)?;
        } else {
            return Err(format!("`{spec}`: expected ns=ROLE or veth=..."));
        }
    }
    Ok((topo, names))
}

/// Blocks until standard input reaches end of file, fails, or a signal sets the flag.
fn hold() {
    let mut buf = [0u8; 256];
    while !interrupted() {
        // SAFETY: reads into a buffer this function owns, of the length passed.
        let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
        if n == 0 {
            return;
        }
        if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return;
        }
    }
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut root = "pbn".to_string();
    if args.first().map(String::as_str) == Some("--root") && args.len() > 1 {
        root = args.remove(1);
        args.remove(0);
    }
    if args.is_empty() || args.iter().any(|a| a == "-h" || a == "--help") {
        eprintln!(
            "usage: pollux-netns [--root ROOT] ns=ROLE... veth=ROLE/IF[@MAC],ROLE/IF[@MAC]...\n\
             prints PREFIX=... NS_<ROLE>=..., holds the namespaces until stdin closes or a \
             signal arrives, then deletes them"
        );
        return ExitCode::from(2);
    }
    install_signal_handlers();
    let (topo, names) = match build(&root, &args) {
        Ok(built) => built,
        Err(e) => {
            eprintln!("pollux-netns: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout();
    if writeln!(out, "{names}").and_then(|()| out.flush()).is_ok() {
        hold();
    }
    drop(topo);
    ExitCode::SUCCESS
}
