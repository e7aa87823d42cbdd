//! SIGINT, SIGTERM and SIGHUP turned into a flag, so that a long-running user of the kit
//! (the benchmark harness, `pollux-netns`) unwinds on them and its guards delete what it
//! made, instead of dying with its namespaces left behind.

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs SIGINT/SIGTERM/SIGHUP handlers that only set a flag: every loop checks
/// [`interrupted`] and unwinds. Without `SA_RESTART`, so a blocking `read` returns
/// `EINTR` and its caller gets to look at the flag.
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: `sigaction` with a zeroed struct plus a handler address is the documented
        // way to install a handler; `on_signal` is async-signal-safe (one atomic store) and
        // lives for the whole program. The old action is not needed (null pointer).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

/// True once SIGINT, SIGTERM or SIGHUP arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}
