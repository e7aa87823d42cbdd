//! Worker threads: one per configured core, pinned, polling until told to stop.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Instant;

use pollux_dataplane::snapshot::snapshots_freed_on_this_thread;
use pollux_dataplane::worker::Worker;

/// A running worker thread.
#[derive(Debug)]
pub struct WorkerThread {
    stop: Arc<AtomicBool>,
    /// Whether the worker releases its ports' frames when it stops (false: a pause).
    release: Arc<AtomicBool>,
    handle: JoinHandle<StoppedWorker>,
}

/// What a worker thread hands back when it stops.
#[derive(Debug)]
pub struct StoppedWorker {
    /// The worker, holding no snapshot; after [`WorkerThread::stop`] its ports hold no
    /// frames either, after [`WorkerThread::pause`] they are still open.
    pub worker: Worker,
    /// Snapshots freed on the worker's thread; always 0 unless reclamation is broken
    /// (the control thread frees every snapshot).
    pub snapshots_freed: u64,
}

/// Starts `worker` on a new thread named `pollux-worker-N`, pinned to `core` when given.
/// Fails when the thread cannot be created or pinned (a pinning failure is reported, not
/// ignored: an unpinned poll-mode thread silently halves throughput).
pub fn spawn(mut worker: Worker, id: u16, core: Option<usize>) -> io::Result<WorkerThread> {
    let stop = Arc::new(AtomicBool::new(false));
    let release = Arc::new(AtomicBool::new(true));
    let (pinned_tx, pinned_rx) = std::sync::mpsc::channel();
    let thread_stop = Arc::clone(&stop);
    let thread_release = Arc::clone(&release);
    let handle = thread::Builder::new()
        .name(format!("pollux-worker-{id}"))
        .spawn(move || {
            let pinned = core.map_or(Ok(()), pin_current_thread);
            let ok = pinned.is_ok();
            let _ = pinned_tx.send(pinned);
            if ok {
                let epoch = Instant::now();
                // Release builds unwind (so that the control socket can survive a panicking
                // method), but a worker that panicked would leave a daemon that answers
                // and does not forward: end the process as an abort would have.
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    worker.run(&thread_stop, || epoch.elapsed().as_nanos() as u64)
                }));
                if run.is_err() {
                    eprintln!("polluxd: worker {id} panicked; aborting");
                    std::process::abort();
                }
            }
            if thread_release.load(Ordering::Relaxed) {
                worker.park();
            } else {
                worker.suspend();
            }
            StoppedWorker {
                worker,
                snapshots_freed: snapshots_freed_on_this_thread(),
            }
        })?;
    match pinned_rx.recv() {
        Ok(Ok(())) => Ok(WorkerThread {
            stop,
            release,
            handle,
        }),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        Err(_) => Err(io::Error::other("worker thread died before it started")),
    }
}

impl WorkerThread {
    /// Asks the worker to stop after its current pass and waits for it; its ports release
    /// their frames (and close).
    pub fn stop(self) -> thread::Result<StoppedWorker> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join()
    }

    /// Asks the worker to stop after its current pass and waits for it, leaving its ports
    /// open, so that ports can be changed and the worker started again with [`spawn`].
    pub fn pause(self) -> thread::Result<StoppedWorker> {
        self.release.store(false, Ordering::Relaxed);
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join()
    }
}

/// Pins the calling thread to one CPU.
pub fn pin_current_thread(core: usize) -> io::Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    if core >= rustix::thread::CpuSet::MAX_CPU {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("CPU {core} is out of range"),
        ));
    }
    set.set(core);
    rustix::thread::sched_setaffinity(None, &set)
        .map_err(|e| io::Error::other(format!("cannot pin to CPU {core}: {e}")))
}

/// Parses a CPU list such as `0,2-3` into CPU numbers.
pub fn parse_cpu_list(list: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let parse = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| format!("'{s}' in CPU list '{list}' is not a CPU number"))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (parse(a)?, parse(b)?);
                if a > b {
                    return Err(format!("range '{part}' in CPU list '{list}' is backwards"));
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(parse(part)?),
        }
    }
    if cpus.is_empty() {
        return Err(format!("CPU list '{list}' names no CPU"));
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0,2-3, 5").unwrap(), vec![0, 2, 3, 5]);
        assert_eq!(parse_cpu_list("1,1").unwrap(), vec![1]);
        assert!(parse_cpu_list("3-1").unwrap_err().contains("backwards"));
        assert!(parse_cpu_list("x").is_err());
        assert!(parse_cpu_list("").is_err());
    }

    #[test]
    fn pinning_to_a_missing_cpu_fails() {
        assert!(pin_current_thread(100_000).is_err());
    }
}
