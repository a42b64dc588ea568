//! glibc malloc thresholds for a process that moves large buffers.
//!
//! Bus records are up to 4 MiB (a page of encrypted pushes); the worker encodes each one and
//! librdkafka copies it. With glibc's defaults, buffers that size come from a fresh `mmap` or
//! from an arena top that was trimmed back to the kernel after the last one, so every 4 KiB of
//! them faults in again: a third of a cluster worker's async-thread CPU, 2 µs per push
//! (BENCHMARKS.md, issue 4's fifth pass). Fixed thresholds keep them in the arenas for reuse.

/// Applies the thresholds. Call before any other thread starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub(crate) fn keep_large_buffers() {
    /// Largest allocation served from the arenas rather than its own `mmap`: above any record.
    const MMAP_THRESHOLD: libc::c_int = 8 << 20;
    /// Free memory an arena's top keeps before giving it back: room for a few such records.
    const TRIM_THRESHOLD: libc::c_int = 64 << 20;
    // SAFETY: mallopt only sets two of glibc's allocator parameters; it is called from `main`
    // before any thread exists, and a refused value (return 0) leaves the default in place.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

/// Other C libraries keep their own policies.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn keep_large_buffers() {}
