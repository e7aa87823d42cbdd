//! The topology every device under test is measured on, built with the namespace kit
//! (`pollux_testkit::netns`):
//!
//! ```text
//!  ns PREFIX-gen            ns PREFIX-sw (device under test)           ns PREFIX-sink
//!  eth0 ─────── veth ─────── PREFIXg   [DUT]   PREFIXk ─────── veth ─────── eth0
//!  (generator, CPU 0)        (ingress)          (egress)        (sink, AF_XDP)
//! ```
//!
//! Names carry a per-run prefix (`pbn`, the process id in hex, `t` and a counter; see the
//! kit's naming scheme). The DUT's interfaces carry it too, so their NAPI threads
//! (`napi/PREFIXg-*`) are told apart from any other run's. The kit deletes the namespaces
//! (and with them the veths, bridges and XDP programs in them) when [`Topology`] is
//! dropped, which happens on every exit path: errors unwind to it, SIGINT/SIGTERM only set
//! a flag that every loop checks, and a panic hook deletes them where panics abort.

use std::collections::BTreeMap;

use pollux_control::validate::fmt_mac;
use pollux_testkit::netns::{self, Netns, Prefix, VethOptions};

use super::sys::{run, run_in};

/// Root of every name the harness gives (the kit's tests use `plx`).
pub const PREFIX_ROOT: &str = "pbn";

/// MAC of the generator's interface.
pub const GEN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
/// MAC of the sink's interface.
pub const SINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x02];

/// The three namespaces and two veth pairs of one run.
#[derive(Debug)]
pub struct Topology {
    /// Per-run prefix of every name.
    pub prefix: String,
    /// Generator's namespace.
    pub gen_ns: String,
    /// Device under test's namespace.
    pub sw_ns: String,
    /// Sink's namespace.
    pub sink_ns: String,
    /// The DUT's interface towards the generator.
    pub ingress: String,
    /// The DUT's interface towards the sink.
    pub egress: String,
    kit: netns::Topology,
}

impl Topology {
    /// Builds the topology under a fresh prefix, after deleting what dead runs left.
    pub fn create() -> Result<Topology, String> {
        let e = |e: netns::Error| e.to_string();
        let removed = netns::remove_stale(PREFIX_ROOT).map_err(e)?;
        if !removed.is_empty() {
            eprintln!("pollux-bench: removed namespaces of dead runs: {removed:?}");
        }
        let prefix = Prefix::next_under(PREFIX_ROOT).map_err(e)?;
        let mut kit = netns::Topology::with_prefix(prefix.clone());
        for role in ["gen", "sw", "sink"] {
            kit.add_ns(role).map_err(e)?.disable_ipv6().map_err(e)?;
        }
        let (ingress, egress) = (
            prefix.ifname("g").map_err(e)?,
            prefix.ifname("k").map_err(e)?,
        );
        for (dut_if, peer, mac) in [(&ingress, "gen", GEN_MAC), (&egress, "sink", SINK_MAC)] {
            let opts = VethOptions {
                mac_b: Some(fmt_mac(mac)),
                ..VethOptions::default()
            };
            kit.veth_with("sw", dut_if, peer, "eth0", &opts)
                .map_err(e)?;
        }
        let name = |role| kit.ns(role).map(|ns| ns.name().to_string()).map_err(e);
        Ok(Topology {
            prefix: prefix.to_string(),
            gen_ns: name("gen")?,
            sw_ns: name("sw")?,
            sink_ns: name("sink")?,
            ingress,
            egress,
            kit,
        })
    }

    /// The namespace of `role` (`gen`, `sw`, `sink`).
    pub fn ns(&self, role: &str) -> &Netns {
        self.kit.ns(role).expect("the three roles exist")
    }

    /// Detaches any XDP program a device left on the DUT's interfaces (Open vSwitch
    /// attaches through netlink, which outlives its process), so the next device can
    /// attach its own.
    pub fn detach_xdp(&self) {
        for dev in [&self.ingress, &self.egress] {
            for mode in ["xdp", "xdpgeneric", "xdpdrv"] {
                let _ = run(&[
                    "ip",
                    "-n",
                    &self.sw_ns,
                    "link",
                    "set",
                    "dev",
                    dev,
                    mode,
                    "off",
                ]);
            }
        }
    }

    /// Counters of every interface on the path: `ip -s link` (rx/tx packets and drops) and,
    /// for the DUT's veths, `ethtool -S` (XDP drops and errors), keyed `ns/dev/counter`.
    pub fn path_counters(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for (label, ns, dev) in [
            ("gen", &self.gen_ns, "eth0"),
            ("sw", &self.sw_ns, self.ingress.as_str()),
            ("sw", &self.sw_ns, self.egress.as_str()),
            ("sink", &self.sink_ns, "eth0"),
        ] {
            let Ok(text) = run(&["ip", "-n", ns, "-s", "-j", "link", "show", "dev", dev]) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            let name = if dev == "eth0" {
                label.to_string()
            } else {
                dev.trim_start_matches(&self.prefix).to_string()
            };
            let stats = &v[0]["stats64"];
            for dir in ["rx", "tx"] {
                for field in ["packets", "dropped", "errors"] {
                    if let Some(n) = stats[dir][field].as_u64() {
                        out.insert(format!("{name}/{dir}_{field}"), n);
                    }
                }
            }
            if label == "sw" {
                if let Ok(text) = run_in(ns, &["ethtool", "-S", dev]) {
                    for line in text.lines().skip(1) {
                        let Some((k, v)) = line.trim().split_once(':') else {
                            continue;
                        };
                        let k = k.trim();
                        if (k.contains("drop") || k.contains("err")) && !k.starts_with("peer") {
                            if let Ok(n) = v.trim().parse::<u64>() {
                                out.insert(format!("{name}/{k}"), n);
                            }
                        }
                    }
                }
            }
        }
        out
    }
}

/// `after - before` for every counter that changed.
pub fn counter_delta(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(k, &a)| {
            let d = a.saturating_sub(before.get(k).copied().unwrap_or(0));
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_keep_only_changes() {
        let before = BTreeMap::from([("a".to_string(), 5), ("b".to_string(), 7)]);
        let after = BTreeMap::from([
            ("a".to_string(), 5),
            ("b".to_string(), 9),
            ("c".to_string(), 1),
        ]);
        let d = counter_delta(&before, &after);
        assert_eq!(
            d,
            BTreeMap::from([("b".to_string(), 2), ("c".to_string(), 1)])
        );
        assert_eq!(fmt_mac(GEN_MAC), "02:00:00:00:01:01");
    }
}
