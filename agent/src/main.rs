//! `pollux-agent`: the host agent between etcd and one `polluxd`.
//!
//! It keeps `<prefix>/agents/<host>` alive under an etcd lease (the mechanism driver
//! binds ports only on hosts whose key exists), reads `<prefix>/hosts/<host>/`, applies
//! all of it to polluxd (one `config.apply`), then watches the prefix from the next
//! revision and applies each change as one object method (`ports.put`, `ports.delete`,
//! ...). A lost watch, a lost lease or a generation changed behind its back sends it back
//! to a full resynchronisation. It reports the ports polluxd holds under
//! `<prefix>/status/<host>/ports/<id>` (`{"status": "ACTIVE"}`), which the driver turns
//! into the ports' status in Neutron, and removes the key of a port polluxd no longer
//! has (deleted, or refused). While etcd is unreachable polluxd keeps the state it has:
//! the agent only retries.

mod apply;
mod keys;

use std::collections::BTreeSet;
use std::time::Duration;

use clap::Parser;
use etcd_client::{Client, EventType, GetOptions, PutOptions, WatchOptions};
use serde_json::Value;

use apply::Applier;
use keys::ObjectKey;
use pollux_agent::cli::Cli;

/// Why a session with etcd ended.
#[derive(Debug)]
enum SessionEnd {
    /// etcd failed or went away (connection, lease, watch): resynchronise once back.
    Etcd(String),
    /// polluxd's generation moved under the agent, or an apply failed in a way a
    /// resynchronisation repairs.
    Resync(String),
}

fn log(msg: impl AsRef<str>) {
    eprintln!("pollux-agent: {}", msg.as_ref());
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    let mut backoff = Duration::from_millis(200);
    loop {
        match session(&cli).await {
            SessionEnd::Etcd(why) => {
                log(format!(
                    "etcd: {why}; polluxd keeps its state, retrying in {backoff:?}"
                ));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            SessionEnd::Resync(why) => {
                log(format!("resynchronising: {why}"));
                backoff = Duration::from_millis(200);
            }
        }
    }
}

/// One connection to etcd: lease, full read and apply, then the watch until anything
/// fails.
async fn session(cli: &Cli) -> SessionEnd {
    let etcd = |e: etcd_client::Error| SessionEnd::Etcd(e.to_string());
    let mut client = match Client::connect(&cli.endpoints, None).await {
        Ok(c) => c,
        Err(e) => return etcd(e),
    };
    let lease = match client.lease_grant(cli.lease_ttl, None).await {
        Ok(l) => l.id(),
        Err(e) => return etcd(e),
    };
    let agent_key = keys::agent_key(&cli.prefix, &cli.host);
    let announce = serde_json::json!({ "host": cli.host, "pid": std::process::id() });
    if let Err(e) = client
        .put(
            agent_key.as_str(),
            announce.to_string(),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
    {
        return etcd(e);
    }
    let (keeper, keep_stream) = match client.lease_keep_alive(lease).await {
        Ok(k) => k,
        Err(e) => return etcd(e),
    };
    // A task of its own, so that the lease is renewed while an apply waits on polluxd.
    let period = Duration::from_secs((cli.lease_ttl / 3).max(1) as u64);
    let mut lease_task = AbortOnDrop(tokio::spawn(keep_lease(keeper, keep_stream, period)));

    let prefix = keys::host_prefix(&cli.prefix, &cli.host);
    let snapshot = match client
        .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
        .await
    {
        Ok(r) => r,
        Err(e) => return etcd(e),
    };
    let revision = snapshot.header().map_or(0, |h| h.revision());
    let mut objects: Vec<(ObjectKey, Value)> = Vec::new();
    for kv in snapshot.kvs() {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        match decode(&prefix, &key, kv.value()) {
            Some(object) => objects.push(object),
            None => log(format!(
                "ignoring key {key}: not an object of a known collection"
            )),
        }
    }
    let count = objects.len();
    let applier = Applier::new(cli.socket.clone());
    let (mut applier, outcome) = off_thread(applier, move |a| a.resync(&objects)).await;
    if let Err(why) = outcome {
        // polluxd is away or broken: nothing to watch for until it is back.
        tokio::time::sleep(Duration::from_secs(1)).await;
        return SessionEnd::Resync(why);
    }
    log(format!(
        "in sync with etcd revision {revision}: {count} objects"
    ));
    let status_prefix = keys::port_status_prefix(&cli.prefix, &cli.host);
    let mut reported = match client
        .get(
            status_prefix.as_str(),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
    {
        Ok(r) => r
            .kvs()
            .iter()
            .filter_map(|kv| {
                String::from_utf8_lossy(kv.key())
                    .strip_prefix(status_prefix.as_str())
                    .map(str::to_owned)
            })
            .collect(),
        Err(e) => return etcd(e),
    };
    if let Err(e) = report(&mut client, &status_prefix, &mut reported, applier.ports()).await {
        return etcd(e);
    }

    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let mut watch = match client.watch(prefix.as_str(), Some(options)).await {
        Ok(w) => w,
        Err(e) => return etcd(e),
    };
    loop {
        tokio::select! {
            lost = &mut lease_task.0 => {
                return SessionEnd::Etcd(lost.unwrap_or_else(|e| format!("lease task: {e}")));
            }
            message = watch.message() => {
                let response = match message {
                    Ok(Some(r)) => r,
                    Ok(None) => return SessionEnd::Etcd("watch stream closed".into()),
                    Err(e) => return etcd(e),
                };
                if response.canceled() || response.compact_revision() > 0 {
                    return SessionEnd::Resync(format!(
                        "watch cancelled (compacted at revision {})",
                        response.compact_revision()
                    ));
                }
                let mut changes = Vec::new();
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    match event.event_type() {
                        EventType::Put => match decode(&prefix, &key, kv.value()) {
                            Some((k, object)) => changes.push(Change::Put(k, object)),
                            None => log(format!(
                                "ignoring key {key}: not an object of a known collection"
                            )),
                        },
                        EventType::Delete => {
                            if let Some(k) = keys::parse_key(&prefix, &key) {
                                changes.push(Change::Delete(k));
                            }
                        }
                    }
                }
                let (back, outcome) = off_thread(applier, move |a| {
                    changes.into_iter().try_for_each(|c| match c {
                        Change::Put(k, object) => a.put(&k, object),
                        Change::Delete(k) => a.delete(&k),
                    })
                })
                .await;
                applier = back;
                if let Err(e) = report(&mut client, &status_prefix, &mut reported, applier.ports()).await {
                    return etcd(e);
                }
                if let Err(why) = outcome {
                    return SessionEnd::Resync(why);
                }
            }
        }
    }
}

/// Brings the status keys (`reported`: the ports they name) to the ports polluxd holds.
async fn report(
    client: &mut Client,
    status_prefix: &str,
    reported: &mut BTreeSet<String>,
    held: &BTreeSet<String>,
) -> Result<(), etcd_client::Error> {
    let status = serde_json::json!({ "status": "ACTIVE" }).to_string();
    for id in held.difference(reported).cloned().collect::<Vec<_>>() {
        client
            .put(format!("{status_prefix}{id}"), status.as_str(), None)
            .await?;
        reported.insert(id);
    }
    for id in reported.difference(held).cloned().collect::<Vec<_>>() {
        client.delete(format!("{status_prefix}{id}"), None).await?;
        reported.remove(&id);
    }
    Ok(())
}

/// One watched change, in revision order.
#[derive(Debug)]
enum Change {
    Put(ObjectKey, Value),
    Delete(ObjectKey),
}

/// Runs `f` (blocking calls on polluxd's socket) on tokio's blocking pool, so that the
/// lease task goes on meanwhile.
async fn off_thread<T: Send + 'static>(
    mut applier: Applier,
    f: impl FnOnce(&mut Applier) -> T + Send + 'static,
) -> (Applier, T) {
    tokio::task::spawn_blocking(move || {
        let out = f(&mut applier);
        (applier, out)
    })
    .await
    .expect("an apply does not panic")
}

/// Renews the lease every `period` until it fails; returns why.
async fn keep_lease(
    mut keeper: etcd_client::LeaseKeeper,
    mut replies: etcd_client::LeaseKeepAliveStream,
    period: Duration,
) -> String {
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        if let Err(e) = keeper.keep_alive().await {
            return e.to_string();
        }
        match replies.message().await {
            Ok(Some(r)) if r.ttl() > 0 => {}
            Ok(Some(_)) => return "the agent's lease expired".into(),
            Ok(None) => return "keep-alive stream closed".into(),
            Err(e) => return e.to_string(),
        }
    }
}

/// A task aborted when its session ends, whichever way.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A key and its JSON value as an object of a collection; `None` (logged by the caller)
/// for anything else.
fn decode(prefix: &str, key: &str, value: &[u8]) -> Option<(ObjectKey, Value)> {
    let k = keys::parse_key(prefix, key)?;
    match serde_json::from_slice::<Value>(value) {
        Ok(v @ Value::Object(_)) if v.get("id").and_then(Value::as_str) == Some(&k.id) => {
            Some((k, v))
        }
        _ => None,
    }
}
