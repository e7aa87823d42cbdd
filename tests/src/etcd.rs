//! A private etcd (Debian's `etcd-server`) on the loopback of a test's namespace, and the
//! key operations the tests of the Pollux agent make, through etcd's HTTP gateway with
//! Debian's `python3-etcd3gw` (the client the mechanism driver uses too).

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::netns::{Netns, Proc};

/// etcd's client URL inside the namespace.
pub const CLIENT_URL: &str = "http://127.0.0.1:2379";
const PEER_URL: &str = "http://127.0.0.1:2380";
/// Longest etcd may take to answer after it starts.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
const OP_TIMEOUT: Duration = Duration::from_secs(10);

const SCRIPT: &str = r#"
import json, sys
from etcd3gw.client import Etcd3Client
c = Etcd3Client(host='127.0.0.1', port=2379, api_path='/v3/', timeout=3)
op, key = sys.argv[1], sys.argv[2]
if op == 'keys':
    items = c.get_prefix(key)
    print(json.dumps([m['key'].decode() if isinstance(m['key'], bytes) else m['key'] for _, m in items]))
elif op == 'exists':
    print(json.dumps(len(c.get(key)) > 0))
elif op == 'put':
    c.put(key, sys.argv[3])
    print('true')
elif op == 'delete':
    print(json.dumps(c.delete(key)))
"#;

/// etcd running in a namespace with its data in `data_dir`; killed on drop (the data
/// directory is the caller's).
#[derive(Debug)]
pub struct Etcd {
    proc: Option<Proc>,
    ns: String,
    data_dir: PathBuf,
}

impl Etcd {
    /// Starts etcd in `ns` on `data_dir` and waits (at most [`START_TIMEOUT`]) until it
    /// answers.
    pub fn start(ns: &Netns, data_dir: &Path) -> Result<Etcd, String> {
        let mut etcd = Etcd {
            proc: None,
            ns: ns.name().to_owned(),
            data_dir: data_dir.to_path_buf(),
        };
        etcd.restart(ns)?;
        Ok(etcd)
    }

    /// Starts it again (after [`Etcd::kill`]) on the same data.
    pub fn restart(&mut self, ns: &Netns) -> Result<(), String> {
        let data = self
            .data_dir
            .to_str()
            .ok_or("etcd's data directory is not UTF-8")?;
        let proc = ns
            .spawn(
                "etcd",
                &[
                    "--name",
                    "pollux",
                    "--data-dir",
                    data,
                    "--listen-client-urls",
                    CLIENT_URL,
                    "--advertise-client-urls",
                    CLIENT_URL,
                    "--listen-peer-urls",
                    PEER_URL,
                    "--initial-advertise-peer-urls",
                    PEER_URL,
                    "--initial-cluster",
                    &format!("pollux={PEER_URL}"),
                ],
            )
            .map_err(|e| format!("cannot start etcd in {}: {e}", ns.name()))?;
        self.proc = Some(proc);
        let end = Instant::now() + START_TIMEOUT;
        while self.keys(ns, "/").is_err() {
            if Instant::now() >= end {
                return Err(format!(
                    "etcd did not answer within {START_TIMEOUT:?}:\n{}",
                    self.proc
                        .as_ref()
                        .map(Proc::stderr_so_far)
                        .unwrap_or_default()
                ));
            }
            thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    /// SIGKILLs it (a crash or an outage, for the agent).
    pub fn kill(&mut self) {
        if let Some(p) = self.proc.take() {
            let _ = p.stop(Duration::ZERO);
        }
    }

    fn op(&self, ns: &Netns, args: &[&str]) -> Result<Value, String> {
        debug_assert_eq!(ns.name(), self.ns);
        let mut full = vec!["-c", SCRIPT];
        full.extend_from_slice(args);
        let out = ns
            .exec_timeout("/usr/bin/python3", &full, OP_TIMEOUT)
            .map_err(|e| format!("etcd {args:?}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "etcd {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("etcd {args:?}: {e}"))
    }

    /// The keys under `prefix`, in key order.
    pub fn keys(&self, ns: &Netns, prefix: &str) -> Result<Vec<String>, String> {
        let v = self.op(ns, &["keys", prefix])?;
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    /// Whether `key` exists.
    pub fn exists(&self, ns: &Netns, key: &str) -> Result<bool, String> {
        let v = self.op(ns, &["exists", key])?;
        v.as_bool().ok_or_else(|| format!("etcd exists {key}: {v}"))
    }

    /// Puts `value` (JSON) at `key`.
    pub fn put(&self, ns: &Netns, key: &str, value: &Value) -> Result<(), String> {
        self.op(ns, &["put", key, &value.to_string()]).map(|_| ())
    }

    /// Deletes `key`.
    pub fn delete(&self, ns: &Netns, key: &str) -> Result<(), String> {
        self.op(ns, &["delete", key]).map(|_| ())
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
