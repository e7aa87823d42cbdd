//! Where a compile's time goes: the control thread's CPU time per part, logged at debug
//! level with the change's steps (`PUT_COST_PHASES=1` in `put_cost`, `--log-level debug`
//! in polluxd). CPU time rather than wall time, so that a loaded machine (other builds,
//! the busy-polling worker) does not blur which part costs what.

use std::fmt::Write as _;

/// The calling thread's CPU time in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time per named part, marked as each ends; free when not `on`.
#[derive(Debug)]
pub struct Spans {
    on: bool,
    last: u64,
    took: Vec<(&'static str, u64)>,
}

impl Spans {
    /// Spans that measure when debug logging is on.
    pub fn start() -> Spans {
        let on = pollux_services::log::enabled(pollux_services::log::Level::Debug);
        Spans {
            on,
            last: if on { thread_cpu_ns() } else { 0 },
            took: Vec::new(),
        }
    }

    /// Ends the part `name`, which began at the previous mark.
    pub fn mark(&mut self, name: &'static str) {
        if self.on {
            let now = thread_cpu_ns();
            self.took.push((name, now.saturating_sub(self.last)));
            self.last = now;
        }
    }

    /// `name 0.12 ms, ...`, or `None` when not measuring.
    pub fn summary(&self) -> Option<String> {
        if !self.on {
            return None;
        }
        let mut out = String::new();
        for (i, (name, ns)) in self.took.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let _ = write!(out, "{sep}{name} {:.3} ms", *ns as f64 / 1e6);
        }
        Some(out)
    }
}
