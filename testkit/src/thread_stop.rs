//! Stopping one thread of a child process while its other threads run, as a debugger
//! does (`PTRACE_SEIZE` + `PTRACE_INTERRUPT`), to test how a daemon copes with one of its
//! threads standing still. A signal cannot do this: SIGSTOP stops the whole process.

use std::io;

/// One thread held in a ptrace stop; it runs again when this is dropped. Must be dropped
/// on the thread that made it (a ptrace tracer is a thread, not a process).
#[derive(Debug)]
pub struct StoppedThread {
    tid: libc::pid_t,
}

impl StoppedThread {
    /// Stops thread `tid` (a thread of a child of this process, or any thread as root).
    pub fn stop(tid: u32) -> io::Result<StoppedThread> {
        let tid = libc::pid_t::try_from(tid).map_err(|_| io::Error::other("thread id"))?;
        // SAFETY: ptrace with PTRACE_SEIZE takes no pointers (addr and data are 0: no
        // options); it only makes this thread the tracer of `tid`.
        if unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let stopped = StoppedThread { tid };
        // SAFETY: PTRACE_INTERRUPT on a thread this thread has seized; no pointers.
        if unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut status = 0;
        // SAFETY: waits for the traced thread's stop (__WALL: it is not a child process
        // of ours in the waitpid sense); `status` is a valid out-pointer for the call.
        if unsafe { libc::waitpid(tid, &mut status, libc::__WALL) } != tid {
            return Err(io::Error::last_os_error());
        }
        Ok(stopped)
    }
}

impl Drop for StoppedThread {
    fn drop(&mut self) {
        // SAFETY: detaching a thread this thread traces lets it run on; no pointers. If it
        // is gone already the call fails harmlessly.
        unsafe {
            libc::ptrace(libc::PTRACE_DETACH, self.tid, 0, 0);
        }
    }
}

/// The id of the thread of process `pid` named `name` (its `comm`), if there is one.
pub fn thread_named(pid: u32, name: &str) -> Option<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .find(|task| {
            std::fs::read_to_string(task.path().join("comm")).is_ok_and(|c| c.trim() == name)
        })
        .and_then(|task| task.file_name().to_str()?.parse().ok())
}
