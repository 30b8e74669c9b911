//! Variants of `liboutrider_testlib`, the purpose-built agent library for
//! the stub's swap and rollback tests, and the evidence it leaves behind.
//!
//! A variant is a copy of the built library with the trailer
//! `\n#OUTRIDER-TESTLIB:<behaviour>:<tag>\n` appended; the library reads it
//! from its own file in `run` and behaves accordingly (see the crate docs of
//! `stub/testlib`). Each (behaviour, tag) is therefore a distinct build with
//! its own SHA-256, publishable like any release. Running variants append
//! `<unix_ms> <tag>` lines to `<data_dir>/testlib-heartbeat.log` every 20 ms.
//! ```no_run
//! # use outrider_tests::{*, testlib::*};
//! # let (server, keys, dir) = (TestServer::start(), Keys::init(), tempfile::tempdir().unwrap());
//! server.publish(&keys, "dev", &testlib_variant(dir.path(), "healthy", "v1"));
//! ```

use std::path::{Path, PathBuf};

use crate::bin_dir;

/// The behaviours the test library understands.
const BEHAVIOURS: &[&str] = &[
    "healthy",
    "degraded",
    "legacy",
    "silent",
    "leak-thread",
    "pin",
    "panic",
    "fail-start",
    "abort",
    "stuck",
];

/// The library reads only this many bytes at the end of its file.
const TRAILER_WINDOW: usize = 256;

/// Path of the built test library (`target/<profile>/liboutrider_testlib.so`);
/// panics with a clear message if missing ("build the workspace first").
///
/// `cargo test` alone leaves the cdylib in `target/<profile>/deps/` (only
/// `cargo build` uplifts it), so the newer of the two copies wins.
pub fn testlib_path() -> PathBuf {
    let dir = bin_dir();
    let newest = [dir.clone(), dir.join("deps")]
        .into_iter()
        .map(|d| d.join("liboutrider_testlib.so"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max();
    match newest {
        Some((_, path)) => path,
        None => panic!(
            "{} is missing: build the workspace first (`cargo build --workspace`), as the README's test command does",
            dir.join("liboutrider_testlib.so").display()
        ),
    }
}

/// A copy of the test library in `dir` with the trailer for `behaviour` and
/// `tag` appended; returns its path. Different (behaviour, tag) → different
/// SHA-256.
///
/// The file is named after both (non-alphanumerics in the tag become `_`).
/// Panics on an unknown behaviour, on a tag with a newline, or when the
/// trailer would not fit the window the library reads.
pub fn testlib_variant(dir: &Path, behaviour: &str, tag: &str) -> PathBuf {
    assert!(
        BEHAVIOURS.contains(&behaviour),
        "unknown testlib behaviour {behaviour:?}; known: {BEHAVIOURS:?}"
    );
    let trailer = format!("\n#OUTRIDER-TESTLIB:{behaviour}:{tag}\n");
    assert!(
        !tag.is_empty() && !tag.contains('\n') && trailer.len() <= TRAILER_WINDOW,
        "testlib tag {tag:?} must be non-empty, one line and short"
    );
    let safe_tag: String = tag
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let path = dir.join(format!("liboutrider_testlib.{behaviour}.{safe_tag}.so"));
    let mut bytes = std::fs::read(testlib_path()).expect("read the test library");
    bytes.extend_from_slice(trailer.as_bytes());
    // Write beside and rename: a process may have the old file mapped.
    let tmp = path.with_extension("so.tmp");
    std::fs::write(&tmp, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
    std::fs::rename(&tmp, &path).unwrap_or_else(|e| panic!("renaming to {}: {e}", path.display()));
    path
}

/// Parses `<data_dir>/testlib-heartbeat.log` into (unix_ms, tag) pairs, in
/// file order; a missing file is no heartbeats. A last line still being
/// written (no newline yet) is skipped.
pub fn heartbeats(data_dir: &Path) -> Vec<(u64, String)> {
    let text = std::fs::read_to_string(data_dir.join("testlib-heartbeat.log")).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .map(|line| {
            let (ms, tag) = line
                .split_once(' ')
                .unwrap_or_else(|| panic!("bad heartbeat line {line:?}"));
            let ms = ms
                .parse()
                .unwrap_or_else(|e| panic!("bad heartbeat time in {line:?}: {e}"));
            (ms, tag.to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_are_parsed_and_a_partial_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        assert!(heartbeats(dir.path()).is_empty());
        std::fs::write(
            dir.path().join("testlib-heartbeat.log"),
            "1700000000000 v1\n1700000000020 v2\n17000000",
        )
        .unwrap();
        assert_eq!(
            heartbeats(dir.path()),
            [
                (1_700_000_000_000, "v1".to_owned()),
                (1_700_000_000_020, "v2".to_owned())
            ]
        );
    }
}
