//! CPU placement, applied identically for every device under test and printed with the
//! results.
//!
//! On veth, the receive work for frames entering an interface runs on the CPU that sent
//! them unless it is moved. We move the receive work of the DUT's ingress veth onto the
//! DUT's CPU two ways, so that it lands there whatever the device does with the frames:
//!
//! - threaded NAPI (`/sys/class/net/IF/threaded` = 1) with the interface's NAPI threads
//!   (`napi/IF-ID`) pinned to the DUT's CPU: this is the path when an XDP program is
//!   attached (Pollux, OVS afxdp, the XDP redirect), where veth receives in NAPI;
//! - RPS on the interface's rx queue (`rps_cpus`) to the DUT's CPU: the path of plain
//!   skbs without XDP (the kernel bridge), which veth hands to the backlog.
//!
//! The generator and sink thread runs on the generator's CPU. The sink's veth receives
//! what the DUT sends on the sending CPU, the DUT's, for every device.

use super::sys::{pids_named, run, set_fifo, set_nice, threads_named, write_in};
use super::topology::Topology;

/// Where things run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpus {
    /// Generator and sink thread.
    pub gen: usize,
    /// Device under test (worker, PMD) and its ingress receive work.
    pub dut: usize,
    /// Move the ingress veth's receive work onto the DUT's CPU (else it stays on the
    /// sending CPU, the generator's: the kernel's default).
    pub ingress_on_dut: bool,
    /// Raise the priority of the benchmark's threads over other work on the machine: the
    /// NAPI threads and `ksoftirqd` of the DUT's CPU under SCHED_FIFO (they sleep when
    /// idle, and preempt the DUT's threads as softirq work would), the generator and the
    /// DUT's datapath threads (which spin, so real-time would trip RT throttling) at
    /// nice -20.
    pub realtime: bool,
}

/// SCHED_FIFO priority of the NAPI threads and `ksoftirqd` on the DUT's CPU.
pub const NAPI_PRIO: u32 = 50;
/// Nice value of the generator and of the DUT's datapath threads.
pub const DATAPATH_NICE: i32 = -20;
/// Names of the DUT datapath threads given `DATAPATH_NICE` (polluxd's worker, xsk-fwd's
/// forwarding thread, OVS's PMD, DPDK's worker lcores: testpmd's forwarding one, named
/// `rte-worker-N` by Debian's 22.11, `lcore-worker-N` or `dpdk-worker<N>` by others).
const DATAPATH_THREADS: [&str; 6] = [
    "pollux-worker",
    super::xsk_fwd::THREAD_NAME,
    "pmd-c",
    "rte-worker",
    "lcore-worker",
    "dpdk-worker",
];

/// The datapath threads (thread id, name) of the device's processes `dut_pids`.
pub fn datapath_threads(dut_pids: &[u32]) -> Vec<(u32, String)> {
    DATAPATH_THREADS
        .iter()
        .flat_map(|prefix| threads_named(prefix, dut_pids))
        .collect()
}

/// Moves the ingress receive work onto the DUT's CPU (after the DUT attached whatever
/// it attaches, since NAPI instances come and go with XDP programs); returns what was
/// done, one line each.
/// `dut_pids` are the device's processes, whose datapath threads get their priority
/// raised (no other process's threads are touched).
pub fn apply(topo: &Topology, cpus: Cpus, dut_pids: &[u32]) -> Result<Vec<String>, String> {
    let mut lines = Vec::new();
    let dev = &topo.ingress;
    if !cpus.ingress_on_dut {
        let _ = write_in(&topo.sw_ns, &format!("/sys/class/net/{dev}/threaded"), "0");
        write_in(
            &topo.sw_ns,
            &format!("/sys/class/net/{dev}/queues/rx-0/rps_cpus"),
            "0",
        )?;
        lines.push(format!(
            "{dev} receive: not moved (runs on the sending CPU, {})",
            cpus.gen
        ));
        return Ok(lines);
    }
    let mask = format!("{:x}", 1u64 << cpus.dut);
    // Fails (EIO) when the interface has no NAPI instance (no XDP program): then the
    // frames go to the backlog, which RPS moves.
    let _ = write_in(&topo.sw_ns, &format!("/sys/class/net/{dev}/threaded"), "1");
    write_in(
        &topo.sw_ns,
        &format!("/sys/class/net/{dev}/queues/rx-0/rps_cpus"),
        &mask,
    )?;
    let threads = pids_named(&format!("napi/{dev}-"));
    for (pid, _) in &threads {
        run(&["taskset", "-p", &mask, &pid.to_string()])?;
        if cpus.realtime {
            set_fifo(*pid, NAPI_PRIO)?;
        }
    }
    if cpus.realtime {
        let mut named = Vec::new();
        for (tid, name) in datapath_threads(dut_pids) {
            set_nice(tid, DATAPATH_NICE)?;
            named.push(name);
        }
        if !named.is_empty() {
            lines.push(format!(
                "datapath threads {} at nice {DATAPATH_NICE}",
                named.join(",")
            ));
        }
    }
    if threads.is_empty() {
        lines.push(format!(
            "{dev} receive: no NAPI thread (no XDP program: skbs to the backlog), RPS rx-0 → CPU {}",
            cpus.dut
        ));
    } else {
        let names: Vec<&str> = threads.iter().map(|(_, n)| n.as_str()).collect();
        lines.push(format!(
            "{dev} receive: threaded NAPI {} pinned to CPU {}{}; RPS rx-0 → CPU {}",
            names.join(","),
            cpus.dut,
            if cpus.realtime {
                format!(", SCHED_FIFO {NAPI_PRIO}")
            } else {
                String::new()
            },
            cpus.dut
        ));
    }
    Ok(lines)
}

/// The sink's receive work (its veth's NAPI: the sink's XDP program and AF_XDP copy) is
/// left where the kernel puts it: in softirq on the CPU that sends into it, the DUT's, for
/// every device alike (a NAPI thread of its own would compete with the DUT's threads at
/// equal priority, and on the generator's CPU it would limit the generator). Returns the
/// placement line.
pub fn apply_sink(topo: &Topology, cpus: Cpus) -> Result<String, String> {
    let _ = write_in(&topo.sink_ns, "/sys/class/net/eth0/threaded", "0");
    Ok(format!(
        "sink veth receive work (XDP, AF_XDP copy): softirq on the sending CPU, the DUT's (CPU {})",
        cpus.dut
    ))
}

/// The placement lines common to every device.
pub fn describe(topo: &Topology, cpus: Cpus) -> Vec<String> {
    vec![
        format!(
            "generator + sink: one thread pinned to CPU {} (AF_XDP copy mode on {}/eth0 and {}/eth0)",
            cpus.gen, topo.gen_ns, topo.sink_ns
        ),
        if cpus.ingress_on_dut {
            format!(
                "device under test: CPU {} (polluxd's worker, xsk-fwd's thread, OVS's PMD thread); the ingress veth {}'s receive work moved there (threaded NAPI pinned, or RPS)",
                cpus.dut, topo.ingress
            )
        } else {
            format!(
                "device under test: CPU {} (polluxd's worker, xsk-fwd's thread, OVS's PMD thread); the ingress veth {}'s receive work left on the sending CPU {}",
                cpus.dut, topo.ingress, cpus.gen
            )
        },
        if cpus.realtime {
            format!(
                "priorities: generator thread and DUT datapath threads nice {DATAPATH_NICE}; NAPI threads and ksoftirqd of CPU {} SCHED_FIFO {NAPI_PRIO} (as softirq, they preempt the DUT's threads; other work on the machine preempts none of them)",
                cpus.dut
            )
        } else {
            "priorities: not raised (every thread SCHED_OTHER, nice 0)".to_string()
        },
    ]
}

/// With autogroup scheduling (`kernel.sched_autogroup_enabled`), a thread's nice value
/// weighs only against the threads of its own autogroup (its session): against another
/// session's build, the harness's nice -20 threads get one autogroup's share, like any
/// other session, and the figures fall with the load of the machine. Raising the nice of
/// the autogroups of the harness and of the DUT's processes (which may start a session of
/// their own, as the detached ovs-vswitchd does) gives those threads back the weight the
/// placement says they have. The old values are written back when dropped.
#[derive(Debug, Default)]
pub struct AutogroupPriority {
    /// `(pid, autogroup, nice before)` of each autogroup raised.
    saved: Vec<(u32, String, i32)>,
}

/// `/proc/PID/autogroup`: `/autogroup-65 nice 0`.
fn autogroup_of(pid: u32) -> Option<(String, i32)> {
    parse_autogroup(&std::fs::read_to_string(format!("/proc/{pid}/autogroup")).ok()?)
}

fn parse_autogroup(text: &str) -> Option<(String, i32)> {
    let mut words = text.split_whitespace();
    let name = words.next()?.to_string();
    let nice = (words.next()? == "nice")
        .then(|| words.next())??
        .parse()
        .ok()?;
    Some((name, nice))
}

impl AutogroupPriority {
    /// Raises the autogroup of every process in `pids` to [`DATAPATH_NICE`] if
    /// `cpus.realtime` and autogroup scheduling is on; `skip` are autogroups already
    /// raised (by another guard).
    pub fn raise(cpus: Cpus, pids: &[u32], skip: &[String]) -> AutogroupPriority {
        let mut guard = AutogroupPriority::default();
        let enabled = std::fs::read_to_string("/proc/sys/kernel/sched_autogroup_enabled")
            .is_ok_and(|s| s.trim() == "1");
        if !cpus.realtime || !enabled {
            return guard;
        }
        for &pid in pids {
            let Some((name, nice)) = autogroup_of(pid) else {
                continue;
            };
            if skip.contains(&name) || guard.saved.iter().any(|s| s.1 == name) {
                continue;
            }
            let path = format!("/proc/{pid}/autogroup");
            if std::fs::write(&path, DATAPATH_NICE.to_string()).is_ok() {
                guard.saved.push((pid, name, nice));
            }
        }
        guard
    }

    /// The autogroups raised.
    pub fn names(&self) -> Vec<String> {
        self.saved.iter().map(|s| s.1.clone()).collect()
    }

    /// The placement line, if anything was raised.
    pub fn describe(&self) -> Option<String> {
        (!self.saved.is_empty()).then(|| {
            format!(
                "autogroup {} at nice {DATAPATH_NICE} (autogroup scheduling is on: without it \
                 the nice values above weigh only inside the harness's own session)",
                self.names().join(",")
            )
        })
    }
}

impl Drop for AutogroupPriority {
    fn drop(&mut self) {
        for (pid, _, nice) in &self.saved {
            // The process may be gone, and its autogroup with it.
            let _ = std::fs::write(format!("/proc/{pid}/autogroup"), nice.to_string());
        }
    }
}

/// `ksoftirqd/DUT` under SCHED_FIFO for the run (softirq work deferred there, such as the
/// kernel bridge's forwarding, must not wait behind other work on the machine); restored
/// to SCHED_OTHER when dropped.
#[derive(Debug)]
pub struct SoftirqPriority {
    pids: Vec<(u32, String)>,
}

impl SoftirqPriority {
    /// Raises `ksoftirqd/DUT` if `cpus.realtime`.
    pub fn raise(cpus: Cpus) -> Result<SoftirqPriority, String> {
        let mut guard = SoftirqPriority { pids: Vec::new() };
        if !cpus.realtime {
            return Ok(guard);
        }
        let name = format!("ksoftirqd/{}", cpus.dut);
        for (pid, comm) in pids_named(&name) {
            if comm == name {
                set_fifo(pid, NAPI_PRIO)?;
                guard.pids.push((pid, comm));
            }
        }
        Ok(guard)
    }

    /// The placement line, if anything was raised.
    pub fn describe(&self) -> Option<String> {
        (!self.pids.is_empty()).then(|| {
            let names: Vec<&str> = self.pids.iter().map(|(_, n)| n.as_str()).collect();
            format!("{} SCHED_FIFO {NAPI_PRIO} for the run", names.join(","))
        })
    }
}

impl Drop for SoftirqPriority {
    fn drop(&mut self) {
        for (pid, _) in &self.pids {
            let _ = set_fifo(*pid, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn autogroup_lines_parse() {
        assert_eq!(
            parse_autogroup("/autogroup-65 nice 0\n"),
            Some(("/autogroup-65".to_string(), 0))
        );
        assert_eq!(
            parse_autogroup("/autogroup-7 nice -20"),
            Some(("/autogroup-7".to_string(), -20))
        );
        assert_eq!(parse_autogroup("/autogroup-7"), None);
    }
}
