//! How the process's C allocator treats the memory LibTorch frees.

/// Makes glibc's malloc keep the memory LibTorch frees for its next allocations instead of
/// returning it to the system; the memory the process holds then stays at its peak.
///
/// By default glibc serves every allocation above 32 MiB from a fresh `mmap`, unmaps it when
/// it is freed, and trims freed memory off the top of its heap. A GPT-2-sized training step
/// (attention probabilities of about 80 MB a layer, MLP activations of about 45 MB) then gets
/// new pages for its activations at every step, and the kernel zeroes every page on its first
/// touch. docs/BENCHMARKS.md ("Where the time goes") has the step times and page faults with
/// and without this. Called first thing in `main`; a no-op where the C library is not glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets glibc's allocation policy, for allocations made after it.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0); // no allocation is a mapping of its own
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1); // the heap's top is never trimmed
    }
}
