//! The lease table: which MAC holds which address until when, plus the addresses clients
//! declined. Times are the caller's seconds; for leases to survive a restart they must be
//! wall-clock (UNIX) seconds, since a restored lease keeps its absolute expiry.
//!
//! `save`/`load` are the only I/O of the DHCP module.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use pollux_dataplane::port::PortId;
use serde::{Deserialize, Serialize};

use crate::addr::{fmt_mac, parse_mac};
use crate::private_fs;

/// Where a lease is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    /// Offered, not yet requested: held briefly so a dynamic address is not offered twice.
    Offered,
    /// Acknowledged: the client uses the address.
    Bound,
}

impl LeaseState {
    pub const fn as_str(self) -> &'static str {
        match self {
            LeaseState::Offered => "offered",
            LeaseState::Bound => "bound",
        }
    }
}

/// One lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    pub hostname: Option<String>,
    /// Absolute time (caller's seconds) at which the lease ends.
    pub expires: u64,
    pub state: LeaseState,
    /// The data-plane port the client came in on (not persisted: port ids are per run).
    /// Only that port may renew, release or decline the lease, and it counts against the
    /// port's dynamic lease limit.
    pub port: Option<PortId>,
}

/// A lease as `leases.list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub mac: String,
    pub ip: Ipv4Addr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    pub expires_in_secs: u64,
    pub state: LeaseState,
}

/// Leases by MAC and declined addresses with the time their quarantine ends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseTable {
    leases: BTreeMap<[u8; 6], Lease>,
    declined: BTreeMap<Ipv4Addr, u64>,
}

/// The persisted form: absolute expiries, MACs as text so the file is greppable.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLease {
    mac: String,
    ip: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hostname: Option<String>,
    expires: u64,
    state: LeaseState,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseFile {
    version: u32,
    leases: Vec<FileLease>,
    #[serde(default)]
    declined: Vec<(Ipv4Addr, u64)>,
}

const FILE_VERSION: u32 = 1;

/// A lease file could not be written or read; `path` is the file concerned.
#[derive(Debug)]
pub struct LeaseError {
    pub path: PathBuf,
    pub op: &'static str,
    pub reason: String,
}

impl fmt::Display for LeaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "lease file {}: {}: {}",
            self.path.display(),
            self.op,
            self.reason
        )
    }
}

impl std::error::Error for LeaseError {}

fn err(path: &Path, op: &'static str, reason: impl fmt::Display) -> LeaseError {
    LeaseError {
        path: path.to_path_buf(),
        op,
        reason: reason.to_string(),
    }
}

impl LeaseTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// The lease of `mac`, expired or not.
    pub fn get(&self, mac: &[u8; 6]) -> Option<&Lease> {
        self.leases.get(mac)
    }

    /// The lease of `mac` if it has not expired at `now`.
    pub fn get_valid(&self, mac: &[u8; 6], now: u64) -> Option<&Lease> {
        self.leases.get(mac).filter(|l| l.expires > now)
    }

    /// Adds or replaces the lease of `lease.mac`.
    pub fn insert(&mut self, lease: Lease) {
        self.leases.insert(lease.mac, lease);
    }

    pub fn remove(&mut self, mac: &[u8; 6]) -> Option<Lease> {
        self.leases.remove(mac)
    }

    /// Keeps only the leases `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&Lease) -> bool) {
        self.leases.retain(|_, l| keep(l));
    }

    /// Whether a MAC other than `mac` holds `ip` at `now`.
    pub fn held_by_other(&self, ip: Ipv4Addr, mac: &[u8; 6], now: u64) -> bool {
        self.leases
            .values()
            .any(|l| l.ip == ip && &l.mac != mac && l.expires > now)
    }

    /// Quarantines `ip` until `until`: a client found it in use.
    pub fn decline(&mut self, ip: Ipv4Addr, until: u64) {
        self.declined.insert(ip, until);
    }

    pub fn is_declined(&self, ip: Ipv4Addr, now: u64) -> bool {
        self.declined.get(&ip).is_some_and(|&until| until > now)
    }

    /// Declined addresses and the end of their quarantine.
    pub fn declined(&self) -> impl Iterator<Item = (Ipv4Addr, u64)> + '_ {
        self.declined.iter().map(|(&ip, &until)| (ip, until))
    }

    /// Removes leases and quarantines that ended at or before `now`; returns how many
    /// leases ended.
    pub fn expire(&mut self, now: u64) -> usize {
        let before = self.leases.len();
        self.leases.retain(|_, l| l.expires > now);
        self.declined.retain(|_, &mut until| until > now);
        before - self.leases.len()
    }

    /// The leases in MAC order.
    pub fn iter(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }

    /// The leases as `leases.list` reports them at `now`.
    pub fn list(&self, now: u64) -> Vec<LeaseInfo> {
        self.iter()
            .map(|l| LeaseInfo {
                mac: fmt_mac(l.mac),
                ip: l.ip,
                hostname: l.hostname.clone(),
                expires_in_secs: l.expires.saturating_sub(now),
                state: l.state,
            })
            .collect()
    }

    /// Writes the table to `path` so that a crash leaves either the old file or the new
    /// one: temp file, fsync, rename, fsync of the directory.
    pub fn save(&self, path: &Path) -> Result<(), LeaseError> {
        let file = LeaseFile {
            version: FILE_VERSION,
            leases: self
                .iter()
                .map(|l| FileLease {
                    mac: fmt_mac(l.mac),
                    ip: l.ip,
                    hostname: l.hostname.clone(),
                    expires: l.expires,
                    state: l.state,
                })
                .collect(),
            declined: self.declined().collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| err(path, "serialize", e))?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(".tmp");
        let tmp = dir.join(tmp_name);
        let write = || -> io::Result<()> {
            let mut f = private_fs::create_new(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(err(&tmp, "write temp file", e));
        }
        if let Err(e) = fs::rename(&tmp, path) {
            let _ = fs::remove_file(&tmp);
            return Err(err(path, "rename temp file into place", e));
        }
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| err(&dir, "fsync directory", e))
    }

    /// Reads a table written by [`LeaseTable::save`]. A missing file is an empty table (a
    /// first start); a file that does not parse is refused rather than silently emptied,
    /// since serving from an empty table could hand a dynamic address out twice.
    pub fn load(path: &Path) -> Result<LeaseTable, LeaseError> {
        let bytes = match private_fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(LeaseTable::new()),
            Err(e) => return Err(err(path, "read", e)),
        };
        let file: LeaseFile = serde_json::from_slice(&bytes).map_err(|e| err(path, "parse", e))?;
        if file.version != FILE_VERSION {
            return Err(err(
                path,
                "parse",
                format!("unsupported version {}", file.version),
            ));
        }
        let mut table = LeaseTable::new();
        for l in file.leases {
            let mac = parse_mac(&l.mac).map_err(|e| err(path, "parse", e))?;
            if table.leases.contains_key(&mac) {
                return Err(err(path, "parse", format!("two leases for {}", l.mac)));
            }
            table.insert(Lease {
                mac,
                ip: l.ip,
                hostname: l.hostname,
                expires: l.expires,
                state: l.state,
                port: None,
            });
        }
        table.declined = file.declined.into_iter().collect();
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "pollux-dhcp-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn lease(last: u8, expires: u64, state: LeaseState) -> Lease {
        Lease {
            mac: [2, 0, 0, 0, 0, last],
            ip: Ipv4Addr::new(198, 18, 1, last),
            hostname: last.is_multiple_of(2).then(|| format!("vm{last}")),
            expires,
            state,
            port: None,
        }
    }

    #[test]
    fn dhcp_leases_expire_and_list() {
        let mut t = LeaseTable::new();
        t.insert(lease(10, 100, LeaseState::Bound));
        t.insert(lease(11, 50, LeaseState::Offered));
        t.decline(Ipv4Addr::new(198, 18, 1, 99), 60);
        assert!(t.is_declined(Ipv4Addr::new(198, 18, 1, 99), 59));
        let list = t.list(40);
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].mac, "02:00:00:00:00:0a");
        assert_eq!(list[0].expires_in_secs, 60);
        assert_eq!(list[0].hostname.as_deref(), Some("vm10"));
        assert_eq!(list[1].state, LeaseState::Offered);
        assert_eq!(t.expire(50), 1);
        assert_eq!(t.len(), 1);
        assert_eq!(t.expire(60), 0);
        assert!(!t.is_declined(Ipv4Addr::new(198, 18, 1, 99), 0));
        assert_eq!(t.expire(100), 1);
        assert!(t.is_empty());
    }

    /// A lease file is 0600 and written past, not through, a link planted at its temp
    /// name; a lease file that is a link is not read.
    #[test]
    fn lease_files_are_private_and_links_are_not_followed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("private");
        let path = dir.join("leases.json");
        let victim = dir.join("victim");
        fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("leases.json.tmp")).unwrap();
        let mut t = LeaseTable::new();
        t.insert(lease(10, 100, LeaseState::Bound));
        t.save(&path).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        let mode = fs::symlink_metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        assert!(
            LeaseTable::load(&path).is_err(),
            "a linked lease file was read"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn dhcp_leases_round_trip() {
        let dir = temp_dir("roundtrip");
        let path = dir.join("leases.json");
        let mut t = LeaseTable::new();
        t.insert(lease(10, 1_700_000_100, LeaseState::Bound));
        t.insert(lease(11, 1_700_000_050, LeaseState::Offered));
        t.decline(Ipv4Addr::new(203, 0, 113, 7), 1_700_000_600);
        t.save(&path).unwrap();
        assert!(!dir.join("leases.json.tmp").exists());
        let back = LeaseTable::load(&path).unwrap();
        assert_eq!(back, t);
        assert_eq!(
            back.get(&[2, 0, 0, 0, 0, 10]).unwrap().expires,
            1_700_000_100
        );
        // Saving again replaces the file.
        let mut t2 = back.clone();
        t2.remove(&[2, 0, 0, 0, 0, 10]);
        t2.save(&path).unwrap();
        assert_eq!(LeaseTable::load(&path).unwrap(), t2);
        // A missing file is a first start.
        assert!(LeaseTable::load(&dir.join("absent.json"))
            .unwrap()
            .is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dhcp_leases_refuse_corrupt_file() {
        let dir = temp_dir("corrupt");
        let path = dir.join("leases.json");
        for bad in [
            &b"{\"version\":1,\"leases\":[{\"mac\":\"02:00"[..],
            b"{\"version\":1,\"leases\":[{\"mac\":\"zz\",\"ip\":\"198.18.1.1\",\"expires\":1,\"state\":\"bound\"}]}",
            b"{\"version\":2,\"leases\":[]}",
            b"{\"version\":1,\"leases\":[{\"mac\":\"02:00:00:00:00:01\",\"ip\":\"198.18.1.1\",\"expires\":1,\"state\":\"weird\"}]}",
        ] {
            fs::write(&path, bad).unwrap();
            let e = LeaseTable::load(&path).unwrap_err();
            assert!(
                e.to_string().contains(&path.display().to_string()),
                "{e}"
            );
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
