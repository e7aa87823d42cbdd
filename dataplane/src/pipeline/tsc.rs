//! The time-stamp counter, read for the per-stage runtime. One instruction and no system
//! call, so the accounting can stay on in production; converted to nanoseconds by a
//! calibration the control plane does once (the data plane makes no system calls).

/// The time-stamp counter now, in cycles; 0 on architectures without one.
#[inline(always)]
pub fn now() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC exists on every x86_64 CPU and has no preconditions; it only reads
        // a counter.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        0
    }
}
