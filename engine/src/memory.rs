//! Process memory: the one allocator setting a long restore needs.

/// Makes glibc's malloc give freed memory back to the system once more than
/// 1 MiB of it is free at the top of a heap. Call it once, early in `main`;
/// it is safe at any time and does nothing on other C libraries.
///
/// glibc raises its trim threshold to twice the largest freed block that it
/// had mapped on its own (here the megabytes of a ranged pack read), and then
/// keeps that much freed memory in every thread's arena. A restore of 2 GiB
/// peaked at 223 MB resident, half of it freed memory; with this call, at
/// 105 MB and the same speed (benches/RESULTS.md). A program that uses
/// another global allocator does not need it.
#[allow(unsafe_code)]
pub fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter, under the allocator's
    // own lock; the option and value are valid.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 20);
    }
}
