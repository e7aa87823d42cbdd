//! DHCPv4 clients in network namespaces, for the end-to-end tests of polluxd's DHCP
//! server: busybox `udhcpc`, ISC `dhclient` and `dhcpcd`, each kept off the host's files.
//!
//! # Keeping the host untouched
//!
//! A client always runs through `ip netns exec` in a namespace the test made, on an
//! interface named explicitly, and never with its distribution's scripts (those write
//! `/etc/resolv.conf`, and set the host name, which the namespace shares with the host):
//!
//! - every client runs an event script written here into its own directory
//!   ([`ClientDir`], removed on drop). The script configures the interface (address,
//!   MTU, the routes of option 121 or else a default route by option 3; `dhcpcd` sets
//!   addresses and routes itself), writes the DNS servers and domain to `resolv.conf` *in
//!   that directory*, and appends one line per event to `events` there, after applying it;
//! - `dhclient` gets `-d` (never forks) and its configuration, leases, PID file and
//!   script in that directory (`-cf`, `-lf`, `-pf`, `-sf`);
//! - `dhcpcd` gets `-B` (never forks), `-f` and `-c` in that directory, and runs in a
//!   private mount namespace (`unshare --mount`) with a tmpfs over `/run` and the
//!   directory's `run/` and `db/` bind-mounted on `/run/dhcpcd` and `/var/lib/dhcpcd`:
//!   its PID file, control socket, lease, DUID and secret never reach the host's
//!   directories, and later `dhcpcd -N`/`-k` calls find the same socket and PID file.
//!
//! Each client is a [`Proc`] whose process group is killed on drop; a process that left
//! the group is still inside the client's namespace, which [`crate::netns::Netns`]
//! empties before deleting it. Every command and every wait is bounded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use crate::netns::{self, Error, Netns, Proc, Result};

/// The tools these clients need (for [`netns::require_tools`]).
pub const TOOLS: &[&str] = &[
    "ip", "sh", "udhcpc", "dhclient", "dhcpcd", "unshare", "mount",
];

/// Longest a client may take to get a lease, and to answer a renew or release.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);
/// Upper bound of one-shot client commands (`dhclient -r`, `dhcpcd -N`, ...).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

/// Which client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// busybox `udhcpc`.
    Udhcpc,
    /// ISC `dhclient` (isc-dhcp-client).
    Dhclient,
    /// `dhcpcd` (dhcpcd5).
    Dhcpcd,
}

impl Kind {
    /// Every client.
    pub const ALL: [Kind; 3] = [Kind::Udhcpc, Kind::Dhclient, Kind::Dhcpcd];

    /// The program's name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Udhcpc => "udhcpc",
            Kind::Dhclient => "dhclient",
            Kind::Dhcpcd => "dhcpcd",
        }
    }
}

/// One line of a client's `events` file: the event (lower case: `bound`, `renew`,
/// `reboot`, `deconfig`, `nak`, `release`, `stop` ...) and what the client was told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The event, lower case.
    pub reason: String,
    /// `ip`, `router`, `dns`, `domain`, `hostname`, `mtu`, `routes` (option 121 as
    /// `dst/len gw` pairs, space separated), `ntp`, `server`, `lease`; empty when absent.
    pub vars: BTreeMap<String, String>,
}

impl Event {
    /// The value of `key`, empty if the client was not given one.
    pub fn get(&self, key: &str) -> &str {
        self.vars.get(key).map_or("", String::as_str)
    }
}

/// Parses an `events` file: one event per line, the reason then tab-separated
/// `key=value` fields.
pub fn parse_events(text: &str) -> Vec<Event> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut fields = line.split('\t');
            let reason = fields.next().unwrap_or_default().to_owned();
            let vars = fields
                .filter_map(|f| f.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            Event { reason, vars }
        })
        .collect()
}

/// A client's private directory `<tmp>/<name>-dhcp`, removed (with everything in it) on
/// drop.
#[derive(Debug)]
pub struct ClientDir {
    path: PathBuf,
}

impl ClientDir {
    /// A fresh, empty directory for client `name`.
    pub fn new(name: &str) -> Result<ClientDir> {
        let path = std::env::temp_dir().join(format!("{name}-dhcp"));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).map_err(|source| Error::Io {
            what: format!("creating {}", path.display()),
            source,
        })?;
        Ok(ClientDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `text` to `name` in the directory (mode 0755 when `executable`) and
    /// returns its path.
    fn write(&self, name: &str, text: &str, executable: bool) -> Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.path.join(name);
        let io = |source| Error::Io {
            what: format!("writing {}", path.display()),
            source,
        };
        std::fs::write(&path, text).map_err(io)?;
        if executable {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).map_err(io)?;
        }
        Ok(path)
    }

    /// Every event the client's script recorded so far.
    pub fn events(&self) -> Vec<Event> {
        parse_events(&std::fs::read_to_string(self.path.join("events")).unwrap_or_default())
    }

    /// The `resolv.conf` the script wrote from the last lease, if any.
    pub fn resolv_conf(&self) -> Option<String> {
        std::fs::read_to_string(self.path.join("resolv.conf")).ok()
    }
}

impl Drop for ClientDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn utf8(path: &Path) -> Result<&str> {
    path.to_str()
        .ok_or_else(|| Error::Invalid(format!("path {} is not UTF-8", path.display())))
}

/// Shell functions every event script starts with. `@OUT@` is the client's directory.
const SCRIPT_HEAD: &str = r#"#!/bin/sh
# Event script of a pollux-tests DHCP client. It changes only its own namespace's
# interface and files under its own directory (never /etc/resolv.conf or the host name).
OUT='@OUT@'
E_IP=; E_ROUTER=; E_DNS=; E_DOMAIN=; E_HOSTNAME=; E_MTU=; E_ROUTES=; E_NTP=; E_SERVER=; E_LEASE=
write_resolv() {
    : > "$OUT/resolv.conf.tmp"
    if [ -n "$1" ]; then echo "search $1" >> "$OUT/resolv.conf.tmp"; fi
    for d in $2; do echo "nameserver $d" >> "$OUT/resolv.conf.tmp"; done
    mv "$OUT/resolv.conf.tmp" "$OUT/resolv.conf"
}
# $1: option 121 as "dst/len gw" pairs; $2: option 3, used only without option 121.
apply_routes() {
    if [ -n "$1" ]; then
        set -- $1
        while [ $# -ge 2 ]; do
            ip route replace "$1" via "$2" dev "$interface"
            shift 2
        done
    elif [ -n "$2" ]; then
        set -- $2
        ip route replace default via "$1" dev "$interface"
    fi
}
record() {
    printf '%s\tip=%s\trouter=%s\tdns=%s\tdomain=%s\thostname=%s\tmtu=%s\troutes=%s\tntp=%s\tserver=%s\tlease=%s\n' \
        "$1" "$E_IP" "$E_ROUTER" "$E_DNS" "$E_DOMAIN" "$E_HOSTNAME" "$E_MTU" "$E_ROUTES" \
        "$E_NTP" "$E_SERVER" "$E_LEASE" >> "$OUT/events"
}
"#;

/// udhcpc: the event is `$1`, the lease in `ip`, `mask` (a prefix length), `router`,
/// `dns`, `domain`, `hostname`, `mtu`, `staticroutes` (option 121 as pairs), `ntpsrv`.
const UDHCPC_SCRIPT: &str = r#"
E_IP="$ip"; E_ROUTER="$router"; E_DNS="$dns"; E_DOMAIN="$domain"; E_HOSTNAME="$hostname"
E_MTU="$mtu"; E_ROUTES="$staticroutes"; E_NTP="$ntpsrv"; E_SERVER="$serverid"; E_LEASE="$lease"
case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set dev "$interface" up
    ;;
bound|renew)
    ip addr replace "$ip/$mask" dev "$interface"
    if [ -n "$mtu" ]; then ip link set dev "$interface" mtu "$mtu"; fi
    apply_routes "$staticroutes" "$router"
    write_resolv "$domain" "$dns"
    ;;
esac
record "$1"
exit 0
"#;

/// dhclient: the event in `reason`, the lease in `new_*`; option 121 arrives as the raw
/// bytes (`new_rfc3442_classless_static_routes`, declared in the configuration).
const DHCLIENT_SCRIPT: &str = r#"
rfc3442_pairs() {
    out=""
    while [ $# -ge 5 ]; do
        w=$1; shift
        n=$(( (w + 7) / 8 ))
        a=0; b=0; c=0; d=0
        if [ "$n" -ge 1 ]; then a=$1; shift; fi
        if [ "$n" -ge 2 ]; then b=$1; shift; fi
        if [ "$n" -ge 3 ]; then c=$1; shift; fi
        if [ "$n" -ge 4 ]; then d=$1; shift; fi
        [ $# -ge 4 ] || break
        out="$out${out:+ }$a.$b.$c.$d/$w $1.$2.$3.$4"
        shift 4
    done
    echo "$out"
}
event=$(echo "$reason" | tr 'A-Z' 'a-z')
E_IP="$new_ip_address"; E_ROUTER="$new_routers"; E_DNS="$new_domain_name_servers"
E_DOMAIN="$new_domain_name"; E_HOSTNAME="$new_host_name"; E_MTU="$new_interface_mtu"
E_ROUTES=$(rfc3442_pairs $new_rfc3442_classless_static_routes)
E_NTP="$new_ntp_servers"; E_SERVER="$new_dhcp_server_identifier"; E_LEASE="$new_dhcp_lease_time"
case "$event" in
preinit)
    ip link set dev "$interface" up
    ;;
bound|renew|rebind|reboot)
    if [ -n "$old_ip_address" ] && [ "$old_ip_address" != "$new_ip_address" ]; then
        ip -4 addr flush dev "$interface"
    fi
    ip addr replace "$new_ip_address/$new_subnet_mask" dev "$interface"
    if [ -n "$new_interface_mtu" ]; then ip link set dev "$interface" mtu "$new_interface_mtu"; fi
    apply_routes "$E_ROUTES" "$new_routers"
    write_resolv "$new_domain_name" "$new_domain_name_servers"
    ;;
expire|fail|release|stop)
    ip -4 addr flush dev "$interface"
    ;;
esac
record "$event"
exit 0
"#;

/// dhcpcd sets the address and routes itself; the script sets the MTU (the job of its
/// `10-mtu` hook) and writes `resolv.conf`.
const DHCPCD_SCRIPT: &str = r#"
event=$(echo "$reason" | tr 'A-Z' 'a-z')
E_IP="$new_ip_address"; E_ROUTER="$new_routers"; E_DNS="$new_domain_name_servers"
E_DOMAIN="$new_domain_name"; E_HOSTNAME="$new_host_name"; E_MTU="$new_interface_mtu"
E_ROUTES="$new_classless_static_routes"; E_NTP="$new_ntp_servers"
E_SERVER="$new_dhcp_server_identifier"; E_LEASE="$new_dhcp_lease_time"
case "$event" in
bound|renew|rebind|reboot|reconfigure)
    if [ -n "$new_interface_mtu" ]; then ip link set dev "$interface" mtu "$new_interface_mtu"; fi
    write_resolv "$new_domain_name" "$new_domain_name_servers"
    ;;
esac
record "$event"
exit 0
"#;

/// dhclient's configuration: option 121 declared (ISC dhclient does not know it by
/// default) and everything the tests check requested; one try of 10 s.
const DHCLIENT_CONF: &str = "\
option rfc3442-classless-static-routes code 121 = array of unsigned integer 8;
request subnet-mask, broadcast-address, routers, domain-name, domain-name-servers, host-name,
        interface-mtu, rfc3442-classless-static-routes, ntp-servers;
timeout 10;
retry 1;
";

/// dhcpcd's configuration: IPv4 only, no link-local fallback, no ARP probing (which
/// would add seconds), no udev, and the options the tests check.
const DHCPCD_CONF: &str = "\
ipv4only
noipv4ll
noarp
nodev
timeout 10
option domain_name_servers, domain_name, host_name, classless_static_routes, interface_mtu, ntp_servers
";

/// Runs in the private mount namespace `unshare --mount` made: hides the host's `/run`
/// under a tmpfs, then puts the client's own directories where dhcpcd keeps its state.
/// `$1` and `$2` are those directories; the rest is dhcpcd's command line.
const DHCPCD_WRAPPER: &str = r#"run=$1; db=$2; shift 2
mount -t tmpfs -o mode=0755,size=1m pollux-dhcpcd /run || exit 97
mkdir /run/dhcpcd && mount --bind "$run" /run/dhcpcd || exit 97
if [ ! -d /var/lib/dhcpcd ]; then mount -t tmpfs -o mode=0755,size=1m pollux-dhcpcd /var/lib || exit 98; mkdir /var/lib/dhcpcd || exit 98; fi
mount --bind "$db" /var/lib/dhcpcd || exit 98
exec dhcpcd "$@""#;

/// A DHCP client running on one interface of one namespace; killed on drop, its
/// directory removed.
#[derive(Debug)]
pub struct DhcpClient {
    kind: Kind,
    netns: String,
    ifname: String,
    /// Dropped before `dir`: the process dies before its files go.
    proc: Option<Proc>,
    dir: ClientDir,
    script: PathBuf,
    /// Output of earlier processes of this client (dhclient runs again to renew).
    earlier_output: String,
}

impl DhcpClient {
    /// Starts `kind` on `ifname` in `ns` in the background, in the foreground mode of
    /// each client (it keeps running and renewing until released or killed).
    pub fn start(kind: Kind, ns: &Netns, ifname: &str) -> Result<DhcpClient> {
        let mut c = DhcpClient::prepare(kind, ns, ifname)?;
        c.spawn_daemon()?;
        Ok(c)
    }

    /// `udhcpc -n -q` with `tries` DISCOVERs one second apart: it exits after binding
    /// (status 0) or after the last try without a lease (status 1).
    pub fn udhcpc_once(ns: &Netns, ifname: &str, tries: u32) -> Result<DhcpClient> {
        if !(1..=10).contains(&tries) {
            return Err(Error::Invalid(format!(
                "udhcpc tries {tries} not in 1..=10"
            )));
        }
        let mut c = DhcpClient::prepare(Kind::Udhcpc, ns, ifname)?;
        let tries = tries.to_string();
        let mut args = c.udhcpc_args();
        args.extend(["-n", "-q", "-t", &tries].map(str::to_owned));
        let proc = c.spawn_in_ns("udhcpc", &args)?;
        c.proc = Some(proc);
        Ok(c)
    }

    fn prepare(kind: Kind, ns: &Netns, ifname: &str) -> Result<DhcpClient> {
        if ifname.is_empty() || ifname.len() > netns::IFNAMSIZ_MAX {
            return Err(Error::Invalid(format!("bad interface name `{ifname}`")));
        }
        let dir = ClientDir::new(&format!("{}-{ifname}-{}", ns.name(), kind.name()))?;
        let body = match kind {
            Kind::Udhcpc => UDHCPC_SCRIPT,
            Kind::Dhclient => DHCLIENT_SCRIPT,
            Kind::Dhcpcd => DHCPCD_SCRIPT,
        };
        let out = utf8(dir.path())?.to_owned();
        if out.contains('\'') {
            return Err(Error::Invalid(format!(
                "temporary directory {out} has a quote"
            )));
        }
        let script_text = SCRIPT_HEAD.replace("@OUT@", &out) + body;
        let script = dir.write("event-script", &script_text, true)?;
        match kind {
            Kind::Udhcpc => {}
            Kind::Dhclient => {
                dir.write("dhclient.conf", DHCLIENT_CONF, false)?;
            }
            Kind::Dhcpcd => {
                dir.write("dhcpcd.conf", DHCPCD_CONF, false)?;
                for sub in ["run", "db"] {
                    let p = dir.path().join(sub);
                    std::fs::create_dir_all(&p).map_err(|source| Error::Io {
                        what: format!("creating {}", p.display()),
                        source,
                    })?;
                }
            }
        }
        Ok(DhcpClient {
            kind,
            netns: ns.name().to_owned(),
            ifname: ifname.to_owned(),
            proc: None,
            dir,
            script,
            earlier_output: String::new(),
        })
    }

    fn command_in_ns(&self, program: &str, args: &[String]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns, program]).args(args);
        c
    }

    fn spawn_in_ns(&self, program: &str, args: &[String]) -> Result<Proc> {
        Proc::spawn(self.command_in_ns(program, args))
    }

    /// Runs a one-shot command of this client in the namespace, bounded; its output
    /// whatever the status.
    fn run_in_ns(&self, program: &str, args: &[String]) -> Result<std::process::Output> {
        netns::run_bounded(self.command_in_ns(program, args), COMMAND_TIMEOUT)
    }

    fn path_arg(&self, name: &str) -> Result<String> {
        Ok(utf8(&self.dir.path().join(name))?.to_owned())
    }

    fn udhcpc_args(&self) -> Vec<String> {
        let script = self.script.to_string_lossy().into_owned();
        [
            "-f",
            "-i",
            &self.ifname,
            "-s",
            &script,
            "-T",
            "1",
            "-O",
            "mtu",
            "-O",
            "staticroutes",
            "-O",
            "ntpsrv",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// dhclient's files: configuration, script, leases, PID file.
    fn dhclient_files(&self) -> Result<Vec<String>> {
        Ok(vec![
            "-cf".into(),
            self.path_arg("dhclient.conf")?,
            "-sf".into(),
            utf8(&self.script)?.to_owned(),
            "-lf".into(),
            self.path_arg("dhclient.leases")?,
            "-pf".into(),
            self.path_arg("dhclient.pid")?,
        ])
    }

    /// `unshare ... sh -c WRAPPER dhcpcd-wrap RUN DB -4 -B -f CONF -c SCRIPT ARGS IFNAME`:
    /// every dhcpcd call carries the same restricting flags, so control calls find the
    /// running instance, and the same configuration and script, so a call that finds
    /// none starts one that still touches nothing of the host.
    fn dhcpcd_args(&self, action: &[&str]) -> Result<Vec<String>> {
        let mut args: Vec<String> = [
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            DHCPCD_WRAPPER,
            "dhcpcd-wrap",
        ]
        .map(str::to_owned)
        .to_vec();
        args.push(self.path_arg("run")?);
        args.push(self.path_arg("db")?);
        args.extend(["-4", "-B", "-f"].map(str::to_owned));
        args.push(self.path_arg("dhcpcd.conf")?);
        args.push("-c".into());
        args.push(utf8(&self.script)?.to_owned());
        args.extend(action.iter().map(|a| (*a).to_owned()));
        args.push(self.ifname.clone());
        Ok(args)
    }

    fn spawn_daemon(&mut self) -> Result<()> {
        let proc = match self.kind {
            Kind::Udhcpc => {
                let mut args = self.udhcpc_args();
                // Retry forever, a second apart, never exit on failure.
                args.extend(["-t", "3", "-A", "1"].map(str::to_owned));
                self.spawn_in_ns("udhcpc", &args)?
            }
            Kind::Dhclient => {
                let mut args: Vec<String> = ["-4", "-d", "-v", "-1"].map(str::to_owned).to_vec();
                args.extend(self.dhclient_files()?);
                args.push(self.ifname.clone());
                self.spawn_in_ns("dhclient", &args)?
            }
            Kind::Dhcpcd => {
                let args = self.dhcpcd_args(&[])?;
                self.spawn_in_ns("unshare", &args)?
            }
        };
        self.proc = Some(proc);
        Ok(())
    }

    /// Which client this is.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The interface it runs on.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Its private directory.
    pub fn dir(&self) -> &ClientDir {
        &self.dir
    }

    /// Every event its script recorded so far.
    pub fn events(&self) -> Vec<Event> {
        self.dir.events()
    }

    /// The `resolv.conf` its script wrote, if any.
    pub fn resolv_conf(&self) -> Option<String> {
        self.dir.resolv_conf()
    }

    /// Everything the client printed so far, and its events, for failure messages.
    pub fn log(&self) -> String {
        let mut s = format!(
            "{} on {}:\n{}",
            self.kind.name(),
            self.ifname,
            self.earlier_output
        );
        if let Some(p) = &self.proc {
            s.push_str(&p.stdout_so_far());
            s.push_str(&p.stderr_so_far());
        }
        s.push_str("events:\n");
        s.push_str(&std::fs::read_to_string(self.dir.path().join("events")).unwrap_or_default());
        s
    }

    /// Whether its main process still runs.
    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Proc::is_running)
    }

    /// Waits up to `limit` for its process to exit by itself; `None` if it still runs.
    pub fn wait_exit(&mut self, limit: Duration) -> Result<Option<ExitStatus>> {
        match self.proc.as_mut() {
            Some(p) => p.wait_timeout(limit),
            None => Err(Error::Invalid("no client process".into())),
        }
    }

    /// Waits up to `limit` for the first event at index `from` or later whose reason is
    /// one of `reasons`.
    pub fn wait_event(&mut self, from: usize, reasons: &[&str], limit: Duration) -> Result<Event> {
        let end = Instant::now() + limit;
        loop {
            if let Some(e) = self
                .events()
                .into_iter()
                .skip(from)
                .find(|e| reasons.contains(&e.reason.as_str()))
            {
                return Ok(e);
            }
            if Instant::now() >= end {
                return Err(Error::Timeout {
                    cmd: format!("{} on {} in {}", self.kind.name(), self.ifname, self.netns),
                    after: limit,
                    stderr: format!("no event {reasons:?}; {}", self.log()),
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (at most [`CLIENT_TIMEOUT`]) until it has bound a lease; the event.
    pub fn wait_bound(&mut self) -> Result<Event> {
        self.wait_event(0, &["bound"], CLIENT_TIMEOUT)
    }

    /// Renews the lease and waits (at most [`CLIENT_TIMEOUT`]) for the client's event:
    /// udhcpc gets SIGUSR1 (a unicast REQUEST, `renew`); dhcpcd gets `dhcpcd -N`
    /// (`renew`); dhclient, which has no renew command, is stopped (SIGTERM, which
    /// releases nothing) and started again on its lease file, so it asks for its address
    /// in INIT-REBOOT (`reboot`).
    pub fn renew(&mut self) -> Result<Event> {
        let from = self.start_renewal()?;
        let reasons: &[&str] = match self.kind {
            Kind::Dhclient => &["reboot", "bound"],
            Kind::Udhcpc | Kind::Dhcpcd => &["renew"],
        };
        self.wait_event(from, reasons, CLIENT_TIMEOUT)
    }

    /// Starts a renewal as [`DhcpClient::renew`] does, without waiting for its outcome;
    /// returns the index of the first event it can cause (for [`DhcpClient::wait_event`]).
    pub fn start_renewal(&mut self) -> Result<usize> {
        let from = self.events().len();
        self.require_running()?;
        match self.kind {
            Kind::Udhcpc => self.signal(libc::SIGUSR1),
            Kind::Dhclient => {
                let proc = self.proc.take().expect("checked running");
                let out = proc.stop(Duration::from_secs(5))?;
                self.earlier_output
                    .push_str(&String::from_utf8_lossy(&out.stdout));
                self.earlier_output
                    .push_str(&String::from_utf8_lossy(&out.stderr));
                self.spawn_daemon()?;
            }
            Kind::Dhcpcd => {
                let args = self.dhcpcd_args(&["-N"])?;
                self.checked("unshare", &args)?;
            }
        }
        Ok(from)
    }

    /// Releases the lease (udhcpc: SIGUSR2; dhclient: `dhclient -r`, which also stops
    /// the running one; dhcpcd: `dhcpcd -k`, which then exits) and waits (at most
    /// [`CLIENT_TIMEOUT`]) for the client to deconfigure; the event.
    pub fn release(&mut self) -> Result<Event> {
        let from = self.events().len();
        self.require_running()?;
        match self.kind {
            Kind::Udhcpc => self.signal(libc::SIGUSR2),
            Kind::Dhclient => {
                let mut args: Vec<String> = ["-4", "-r", "-v"].map(str::to_owned).to_vec();
                args.extend(self.dhclient_files()?);
                args.push(self.ifname.clone());
                self.checked("dhclient", &args)?;
            }
            Kind::Dhcpcd => {
                let args = self.dhcpcd_args(&["-k"])?;
                self.checked("unshare", &args)?;
            }
        }
        let reasons: &[&str] = match self.kind {
            Kind::Udhcpc => &["deconfig"],
            Kind::Dhclient => &["release"],
            Kind::Dhcpcd => &["stop", "release"],
        };
        self.wait_event(from, reasons, CLIENT_TIMEOUT)
    }

    fn require_running(&mut self) -> Result<()> {
        if self.is_running() {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "{} is not running; {}",
                self.kind.name(),
                self.log()
            )))
        }
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(p) = &self.proc {
            p.signal(sig);
        }
    }

    fn checked(&self, program: &str, args: &[String]) -> Result<()> {
        let out = self.run_in_ns(program, args)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::Failed {
                cmd: format!("ip netns exec {} {program} {}", self.netns, args.join(" ")),
                status: out.status,
                stderr: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            })
        }
    }

    /// Stops the client without releasing (SIGTERM, then SIGKILL after 2 s).
    pub fn stop(&mut self) {
        if let Some(p) = self.proc.take() {
            if let Ok(out) = p.stop(Duration::from_secs(2)) {
                self.earlier_output
                    .push_str(&String::from_utf8_lossy(&out.stdout));
                self.earlier_output
                    .push_str(&String::from_utf8_lossy(&out.stderr));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_parse_with_empty_and_spaced_values() {
        let text = "deconfig\tip=\trouter=\n\
                    bound\tip=198.18.30.11\troutes=0.0.0.0/0 198.18.30.1 198.19.0.0/16 198.18.30.2\n";
        let events = parse_events(text);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].reason, "deconfig");
        assert_eq!(events[0].get("ip"), "");
        assert_eq!(events[1].get("ip"), "198.18.30.11");
        assert_eq!(
            events[1].get("routes"),
            "0.0.0.0/0 198.18.30.1 198.19.0.0/16 198.18.30.2"
        );
        assert_eq!(events[1].get("missing"), "");
    }
}
