//! The false-alarm suite's "200 hot swaps → 0 notifications", with the
//! real agent library swapped in a real stub.
//!
//! Every swap is a Goodbye and a reconnect (`server/src/alerts.rs`,
//! "Goodbyes"), so it could end an open incident, open it again, or call
//! the agent down. Two builds of the library (the same bytes with a
//! different trailer, as `bench/swap.sh` makes them) are published
//! alternately as `s1`, `s2`, …; each is waited for before the next.
//!
//! Time per swap in this harness (debug binaries, 2 shared cores), from
//! publish to `state.json` naming the build current: 0.95–1.12 s (a debug
//! `outrider release publish` ≈ 0.3 s, then the stub's poll at
//! `update_interval_secs = 1`, download, verification and the swap), so
//! [`SWAPS`] = 200 takes 3–4 minutes (225 s in one run). That holds only
//! because the builds are the library without debug info (15 MB instead of
//! 32 MB) published at `--zstd-level 1`: at the default level the debug CLI
//! spends about 3 s per publish, and 200 swaps would take 14 minutes.

use std::io::Write;
use std::process::Command;
use std::time::Instant;

use outrider_tests::{Keys, TestAgent, agent_library, secs, wait_until};

use super::{connected, flag_check, server, wait_decided};

/// Hot swaps of one agent.
const SWAPS: usize = 200;

/// An agent with an open, notified incident is hot-swapped [`SWAPS`] times:
/// nothing is resolved, re-opened or called down. Witnesses: the
/// incidents' real resolves after the swaps, then a second agent killed
/// after the last swap, whose page comes after any a swap could have made.
#[test]
fn two_hundred_hot_swaps_page_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path());
    let keys = Keys::init();
    let flag = dir.path().join("broken");
    std::fs::write(&flag, "").unwrap();
    let check = flag_check(dir.path(), &flag);
    server.add_check("disk", 1, &[&check]);

    // Two builds: the library without its debug info (`strip`, binutils),
    // once as is and once with a trailer, so each has its own SHA-256.
    let libs = tempfile::tempdir().unwrap();
    let builds: Vec<String> = ["a", "b"]
        .iter()
        .map(|name| {
            let lib = libs.path().join(format!("{name}.so"));
            let status = Command::new("strip")
                .arg("--strip-debug")
                .arg("-o")
                .arg(&lib)
                .arg(agent_library())
                .status()
                .expect("run strip (binutils)");
            assert!(status.success(), "strip failed");
            if *name == "b" {
                let mut file = std::fs::OpenOptions::new().append(true).open(&lib).unwrap();
                file.write_all(b"\n# build b\n").unwrap();
            }
            lib.to_str().unwrap().to_owned()
        })
        .collect();
    let keys_dir = keys.dir.path().to_str().unwrap().to_owned();
    let publish = |n: usize| {
        let version = format!("s{n}");
        server.cli(&[
            "release",
            "publish",
            "--channel",
            "swap",
            "--keys",
            &keys_dir,
            "--deltas",
            "0",
            "--zstd-level",
            "1",
            "--version",
            &version,
            &builds[n % 2],
        ]);
        version
    };
    publish(0);
    server.publish_as(&keys, "dev", &agent_library(), "witness");
    let swapping = TestAgent::start_with(
        &server,
        &keys,
        "swap",
        "tags = [\"swapping\"]\nupdate_interval_secs = 1\nprobation_secs = 30",
    );
    let witness = TestAgent::start_with(&server, &keys, "dev", "tags = [\"witness\"]");
    let swapping_fp = connected(&server, "swapping");
    let witness_fp = connected(&server, "witness");
    let current = |version: &str| {
        wait_until(&format!("{version} is current"), secs(60), || {
            swapping
                .state()
                .filter(|s| s["current"]["version"] == version)
        })
    };
    current("s0");
    let mut firing = wait_decided(&server, 2, secs(60));
    firing.sort();
    let disk = |fp: &str, kind: &str| (format!("check/{fp}/disk"), kind.to_owned());
    let mut want = vec![disk(&swapping_fp, "firing"), disk(&witness_fp, "firing")];
    want.sort();
    assert_eq!(firing, want);

    let started = Instant::now();
    for n in 1..=SWAPS {
        current(&publish(n));
    }
    let took = started.elapsed();
    eprintln!(
        "{SWAPS} hot swaps took {took:?} ({:?} per swap)",
        took / SWAPS as u32
    );
    let pid_log = swapping.proc.log();
    assert_eq!(
        pid_log.matches("hot swap starting").count(),
        SWAPS,
        "every swap was a hot swap in the same process"
    );
    connected(&server, "swapping");

    // The real resolves, then a real outage started after the last swap.
    std::fs::remove_file(&flag).unwrap();
    let d = wait_decided(&server, 4, secs(60));
    let mut before = d[..2].to_vec();
    before.sort();
    assert_eq!(before, firing, "nothing between the firings: {d:#?}");
    let mut resolved = d[2..].to_vec();
    resolved.sort();
    let mut want = vec![
        disk(&swapping_fp, "resolved"),
        disk(&witness_fp, "resolved"),
    ];
    want.sort();
    assert_eq!(resolved, want, "{d:#?}");
    witness.proc.signal(libc::SIGKILL);
    let d = wait_decided(&server, 5, secs(60));
    assert_eq!(
        d[4..],
        [(format!("agent/{witness_fp}"), "firing".to_owned())],
        "{d:#?}"
    );
}
