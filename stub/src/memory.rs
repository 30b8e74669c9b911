//! Process-wide allocator settings, applied once at start by `main`.
//!
//! The stub owns the process, so it, not the library, decides how glibc's
//! malloc behaves. Two defaults cost an idle agent resident memory it never
//! gives back:
//!
//! - **Dynamic mmap threshold.** glibc serves a block above
//!   `M_MMAP_THRESHOLD` (128 KiB) with its own `mmap`, returned to the kernel
//!   on free — but freeing such a block *raises* the threshold to its size
//!   (up to 32 MiB) and the trim threshold to twice that. After one swap has
//!   hashed, patched and decompressed multi-megabyte builds, later buffers of
//!   that size come from the heap and stay resident after they are freed:
//!   the 13–18 MB seen on hosts after a few swaps. Setting both thresholds
//!   explicitly turns the adjustment off.
//! - **One arena per thread.** Every thread that allocates (the generation
//!   thread, tokio's blocking pool, a re-exec's helper) may get its own
//!   arena, each with its own free memory that no other thread reuses, up
//!   to 8 × cores. Two arenas are plenty for a process whose work is one
//!   I/O thread.
//!
//! Only on glibc; elsewhere (musl) this does nothing.

/// Blocks above this size get their own mapping, returned on free (glibc's
/// initial default, now fixed).
pub const MMAP_THRESHOLD_BYTES: i32 = 128 * 1024;
/// Free memory at the top of a heap above this is returned to the kernel.
pub const TRIM_THRESHOLD_BYTES: i32 = 128 * 1024;
/// Most malloc arenas.
pub const ARENA_MAX: i32 = 2;

/// Applies the settings above; returns whether glibc accepted all three.
/// Call before any other thread exists.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn tune() -> bool {
    [
        (libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
        (libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
        (libc::M_ARENA_MAX, ARENA_MAX),
    ]
    .into_iter()
    // SAFETY: mallopt only changes allocator parameters; glibc serialises
    // it against allocations, and it is called before other threads start.
    .all(|(param, value)| unsafe { libc::mallopt(param, value) } == 1)
}

/// Not glibc: nothing to tune.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune() -> bool {
    true
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    fn rss_anon_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// What a swap does: build-sized buffers, filled and freed, several
    /// times. With the thresholds fixed none of it stays resident; with
    /// glibc's defaults the second and later buffers come from the heap and
    /// up to a whole buffer stays (this test's own process: the harness's
    /// other tests allocate little next to 8 MiB).
    #[test]
    fn freed_build_sized_buffers_go_back_to_the_kernel() {
        assert!(tune());
        let before = rss_anon_kib();
        for round in 0..4u8 {
            let buffer = vec![round | 1; 8 << 20];
            assert_eq!(buffer[buffer.len() - 1], round | 1);
            drop(buffer);
        }
        let grown = rss_anon_kib().saturating_sub(before);
        assert!(grown < 2048, "{grown} KiB stayed resident");
    }
}
