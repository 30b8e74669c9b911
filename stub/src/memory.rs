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

/// One mapping of `/proc/self/smaps`, with the figures that decide whether
/// its pages can be given back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: usize,
    pub end: usize,
    /// `rwxp` as the kernel prints it.
    pub perms: String,
    /// The file, or `[heap]`, `[stack]` …; empty for anonymous memory.
    pub path: String,
    pub rss_kib: u64,
    pub shared_kib: u64,
    pub anonymous_kib: u64,
}

/// Parses `/proc/PID/smaps`. Lines it does not know are skipped, so newer
/// kernels' extra fields do not matter; a mapping without its figures
/// counts as all zero (and is then never released).
pub fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            let perms = fields.next().unwrap_or("").to_string();
            // offset, device, inode, then the path (which may hold spaces).
            let path = fields.skip(3).collect::<Vec<_>>().join(" ");
            out.push(Mapping {
                start,
                end,
                perms,
                path,
                rss_kib: 0,
                shared_kib: 0,
                anonymous_kib: 0,
            });
            continue;
        }
        let (Some(last), Some(kib)) = (out.last_mut(), fields.next()) else {
            continue;
        };
        let Ok(kib) = kib.parse::<u64>() else {
            continue;
        };
        match first {
            "Rss:" => last.rss_kib = kib,
            "Shared_Clean:" | "Shared_Dirty:" => last.shared_kib += kib,
            "Anonymous:" => last.anonymous_kib = kib,
            _ => {}
        }
    }
    out
}

/// Whether `m`'s resident pages can be dropped from this process without
/// changing anything it reads and with memory actually freed: pages of a
/// file (the stub's binary, the loaded library copy) that nobody can write
/// through this mapping, none of them copied-on-write (the relocated
/// RELRO data, a debugger's breakpoint: those exist only here and would be
/// lost), and none shared with another process (libc's pages stay
/// resident for every other process anyway; dropping them here would only
/// move a number). Such pages are the file's page cache, exactly what the
/// kernel's reclaim may unmap at any time (a copy written moments ago and
/// not yet on disk included: the page cache holds its bytes) and map
/// again on the next touch.
pub fn releasable(m: &Mapping) -> bool {
    m.path.starts_with('/')
        && !m.path.ends_with(" (deleted)")
        && !m.perms.contains('w')
        && m.anonymous_kib == 0
        && m.shared_kib == 0
        && m.rss_kib > 0
}

/// What [`release_idle_pages`] gave back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Released {
    /// Resident KiB of the file mappings dropped.
    pub file_kib: u64,
    /// Mappings dropped.
    pub mappings: usize,
    /// Whether `malloc_trim` returned heap memory to the kernel.
    pub heap_trimmed: bool,
}

/// Gives back what the running agent no longer touches once it has
/// settled: the code and read-only data pages of the stub and the library
/// that only start-up, a swap or an update check used (see
/// [`releasable`]), and the allocator's free pages in every arena.
///
/// Why: the kernel maps up to 16 pages around every code page fault
/// (fault-around), so after start-up nearly all of both images' `.text`
/// and `.rodata` is mapped, ~1 MB more than the idle agent touches again
/// (docs/benchmarks.md, "Lean agent"). The pages stay in the page cache;
/// the next touch is a minor fault. Reading `/proc/self/smaps` and the
/// `madvise` calls take a few milliseconds, once per settle.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn release_idle_pages() -> std::io::Result<Released> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut released = Released::default();
    for m in parse_smaps(&smaps).iter().filter(|m| releasable(m)) {
        // SAFETY: the range is a whole mapping of this process, read-only
        // and file-backed with no private copies (checked above), so its
        // contents after MADV_DONTNEED are the file's, as they are now; no
        // Rust object lives in it. It is still the mapping smaps showed:
        // file mappings of this process are removed only by dlclose, which
        // the stub calls from this same thread (the supervisor's), never
        // while this runs; one added meanwhile (glibc loading an NSS module
        // for a DNS lookup on another thread) is not in the list.
        let rc = unsafe {
            libc::madvise(
                m.start as *mut libc::c_void,
                m.end - m.start,
                libc::MADV_DONTNEED,
            )
        };
        if rc == 0 {
            released.file_kib += m.rss_kib;
            released.mappings += 1;
        }
    }
    released.heap_trimmed = trim_heap();
    Ok(released)
}

/// Not Linux: nothing to give back.
#[cfg(not(target_os = "linux"))]
pub fn release_idle_pages() -> std::io::Result<Released> {
    Ok(Released::default())
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim_heap() -> bool {
    // SAFETY: malloc_trim only returns free memory of glibc's arenas.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(all(target_os = "linux", not(target_env = "gnu")))]
fn trim_heap() -> bool {
    false
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

    const SMAPS: &str = "\
55c2e5ec2000-55c2e60a3000 r-xp 00109000 fe:00 10747952                   /opt/outrider/bin/outrider-agent
Size:               1924 kB
Rss:                1860 kB
Pss:                1860 kB
Shared_Clean:          0 kB
Shared_Dirty:          0 kB
Private_Clean:      1860 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me sd
7fe24294f000-7fe242971000 r--p 0034d000 fe:00 10748963                   /var/lib/outrider/run/agent.b1.1.so
Rss:                 136 kB
Shared_Clean:          0 kB
Private_Dirty:       136 kB
Anonymous:           136 kB
7fe23c000000-7fe23c0c6000 rw-p 00000000 00:00 0 
Rss:                 760 kB
Private_Dirty:       760 kB
Anonymous:           760 kB
7fe242af8000-7fe242c4e000 r-xp 00026000 fe:00 326279                     /usr/lib/x86_64-linux-gnu/lib c.so.6
Rss:                1176 kB
Shared_Clean:       1176 kB
Anonymous:             0 kB
";

    #[test]
    fn smaps_is_parsed_per_mapping() {
        let maps = parse_smaps(SMAPS);
        assert_eq!(maps.len(), 4);
        assert_eq!(
            maps[0],
            Mapping {
                start: 0x55c2e5ec2000,
                end: 0x55c2e60a3000,
                perms: "r-xp".into(),
                path: "/opt/outrider/bin/outrider-agent".into(),
                rss_kib: 1860,
                shared_kib: 0,
                anonymous_kib: 0,
            }
        );
        assert_eq!((maps[1].rss_kib, maps[1].anonymous_kib), (136, 136));
        assert_eq!(maps[2].path, "");
        // A path with a space stays whole.
        assert_eq!(maps[3].path, "/usr/lib/x86_64-linux-gnu/lib c.so.6");
        assert_eq!(maps[3].shared_kib, 1176);
        assert!(parse_smaps("").is_empty());
        assert!(parse_smaps("Rss: 4 kB\ngarbage\n").is_empty());
    }

    #[test]
    fn only_private_clean_read_only_file_pages_are_releasable() {
        let base = Mapping {
            start: 0x1000,
            end: 0x9000,
            perms: "r-xp".into(),
            path: "/opt/outrider/bin/outrider-agent".into(),
            rss_kib: 32,
            shared_kib: 0,
            anonymous_kib: 0,
        };
        let with = |f: &dyn Fn(&mut Mapping)| {
            let mut m = base.clone();
            f(&mut m);
            m
        };
        let table: [(&str, Mapping, bool); 9] = [
            ("code of our own image", base.clone(), true),
            ("read-only data", with(&|m| m.perms = "r--p".into()), true),
            ("writable data", with(&|m| m.perms = "rw-p".into()), false),
            (
                "RELRO: relocated copies",
                with(&|m| m.anonymous_kib = 8),
                false,
            ),
            (
                "libc, shared with others",
                with(&|m| m.shared_kib = 4),
                false,
            ),
            ("anonymous memory", with(&|m| m.path = String::new()), false),
            ("heap", with(&|m| m.path = "[heap]".into()), false),
            (
                "deleted file",
                with(&|m| m.path.push_str(" (deleted)")),
                false,
            ),
            ("nothing resident", with(&|m| m.rss_kib = 0), false),
        ];
        for (what, m, want) in table {
            assert_eq!(releasable(&m), want, "{what}");
        }
    }

    fn mapping_rss_kib(addr: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        parse_smaps(&smaps)
            .into_iter()
            .find(|m| m.start <= addr && addr < m.end)
            .map(|m| m.rss_kib)
            .unwrap()
    }

    /// The real thing on this test process: a read-only private mapping of
    /// a file is dropped and reads back the same bytes; a private mapping
    /// that was written (as the loader writes relocations) and then made
    /// read-only keeps its pages and its written bytes.
    #[test]
    #[allow(unsafe_code)]
    fn released_pages_read_back_the_file_and_written_copies_are_kept() {
        use std::os::fd::AsRawFd;
        const LEN: usize = 64 * 4096;
        // Beside the test binary: on the build's disk, not a tmpfs /tmp
        // (whose pages the kernel counts as dirty shared memory).
        let exe = std::env::current_exe().unwrap();
        let dir = tempfile::tempdir_in(exe.parent().unwrap()).unwrap();
        let path = dir.path().join("image");
        let content: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let map = |prot| {
            // SAFETY: a fresh private mapping of a file this test owns.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    LEN,
                    prot,
                    libc::MAP_PRIVATE,
                    file.as_raw_fd(),
                    0,
                )
            };
            assert_ne!(p, libc::MAP_FAILED);
            p.cast::<u8>()
        };
        let clean = map(libc::PROT_READ);
        let relro = map(libc::PROT_READ | libc::PROT_WRITE);
        // SAFETY: both mappings are LEN bytes long and stay mapped until
        // the munmap at the end; `relro` is written while writable.
        unsafe {
            let sum: u64 = (0..LEN)
                .step_by(4096)
                .map(|i| u64::from(*clean.add(i)))
                .sum();
            assert!(sum > 0);
            for i in (0..LEN).step_by(4096) {
                *relro.add(i) = 0xAB;
            }
            assert_eq!(libc::mprotect(relro.cast(), LEN, libc::PROT_READ), 0);
        }
        assert!(mapping_rss_kib(clean as usize) >= 4);

        let released = release_idle_pages().unwrap();
        assert!(released.mappings >= 1, "{released:?}");
        assert!(released.file_kib >= 4, "{released:?}");
        assert_eq!(
            mapping_rss_kib(clean as usize),
            0,
            "the clean mapping was released"
        );
        assert_eq!(
            mapping_rss_kib(relro as usize),
            LEN as u64 / 1024,
            "written copies stay"
        );
        // SAFETY: as above.
        unsafe {
            let clean_now = std::slice::from_raw_parts(clean, LEN);
            assert_eq!(
                clean_now,
                &content[..],
                "released pages read back from the file"
            );
            for i in (0..LEN).step_by(4096) {
                assert_eq!(*relro.add(i), 0xAB, "written byte at {i} kept");
            }
            libc::munmap(clean.cast(), LEN);
            libc::munmap(relro.cast(), LEN);
        }
    }
}
