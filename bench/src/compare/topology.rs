//! The topology every device under test is measured on:
//!
//! ```text
//!  ns PREFIXgen            ns PREFIXsw (device under test)            ns PREFIXsink
//!  eth0 ─────── veth ─────── PREFIXg   [DUT]   PREFIXk ─────── veth ─────── eth0
//!  (generator, CPU 0)        (ingress)          (egress)        (sink, AF_XDP)
//! ```
//!
//! Names carry a per-run prefix (`pb` and the process id in hex); [`Topology`] deletes the
//! namespaces (and with them the veths, bridges and XDP programs in them) when dropped,
//! which happens on every exit path: errors unwind to it, and SIGINT/SIGTERM only set a
//! flag that every loop checks.

use std::collections::BTreeMap;

use pollux_control::validate::fmt_mac;

use super::sys::{run, run_in, write_in};

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
    created: Vec<String>,
}

impl Topology {
    /// Builds the topology with names starting with `prefix`.
    pub fn create(prefix: &str) -> Result<Topology, String> {
        let mut t = Topology {
            prefix: prefix.to_string(),
            gen_ns: format!("{prefix}gen"),
            sw_ns: format!("{prefix}sw"),
            sink_ns: format!("{prefix}sink"),
            ingress: format!("{prefix}g"),
            egress: format!("{prefix}k"),
            created: Vec::new(),
        };
        for ns in [t.gen_ns.clone(), t.sw_ns.clone(), t.sink_ns.clone()] {
            run(&["ip", "netns", "add", &ns])?;
            t.created.push(ns.clone());
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            for key in ["all", "default"] {
                write_in(
                    &ns,
                    &format!("/proc/sys/net/ipv6/conf/{key}/disable_ipv6"),
                    "1",
                )?;
            }
        }
        let (sw, gen, sink) = (&t.sw_ns, &t.gen_ns, &t.sink_ns);
        run(&[
            "ip", "-n", sw, "link", "add", &t.ingress, "type", "veth", "peer", "name", "eth0",
            "netns", gen,
        ])?;
        run(&[
            "ip", "-n", sw, "link", "add", &t.egress, "type", "veth", "peer", "name", "eth0",
            "netns", sink,
        ])?;
        run(&[
            "ip",
            "-n",
            gen,
            "link",
            "set",
            "eth0",
            "address",
            &fmt_mac(GEN_MAC),
        ])?;
        run(&[
            "ip",
            "-n",
            sink,
            "link",
            "set",
            "eth0",
            "address",
            &fmt_mac(SINK_MAC),
        ])?;
        for (ns, dev) in [
            (sw, &t.ingress),
            (sw, &t.egress),
            (gen, &"eth0".to_string()),
            (sink, &"eth0".to_string()),
        ] {
            run(&["ip", "-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(t)
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

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.created.drain(..).rev() {
            if let Err(e) = run(&["ip", "netns", "del", &ns]) {
                eprintln!("pollux-bench: cleanup: {e}");
            }
        }
    }
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
