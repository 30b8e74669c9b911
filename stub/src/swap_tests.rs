//! Hot swaps of the real agent library (`liboutrider_agent.so`, built as a
//! dev-dependency) through the real generation code: sockets lent by the
//! stub (`sockets.rs`) and collector processes handed from one generation
//! to the next (ABI 1.2), with a real collectd and real StatsD datagrams;
//! and the test library of ABI 1.0 (`legacy`) started after it, as a
//! rollback to an old build would.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use outrider_abi::socket_kind;

use crate::config::StubConfig;
use crate::generation::{Generation, Loaded};
use crate::layout::Layout;
use crate::swap_support::{
    children_with, free_port, seed_state, spooled_sum, statsd_sender, wait_for,
};
use crate::update::Build;

/// `target/<profile>/deps/`, where this test binary lives and where cargo
/// builds the dev-dependencies' cdylibs (it copies them up a level only
/// when they are built for themselves, so that copy may be stale).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().to_owned()
}

fn build_of(path: &Path, version: &str) -> Build {
    use sha2::Digest;
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Build {
        sha256: outrider_signing::Sha256::from_bytes(sha2::Sha256::digest(&bytes).into()),
        version: version.into(),
        path: path.to_owned(),
        manifest_sha256: None,
        fresh: false,
    }
}

struct Host {
    _dir: tempfile::TempDir,
    layout: Layout,
    config: StubConfig,
    statsd: SocketAddr,
    graphite_port: u16,
}

impl Host {
    fn new() -> Host {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::under_prefix(dir.path());
        layout.prepare().unwrap();
        std::fs::create_dir_all(&layout.config_dir).unwrap();
        let dead = free_port();
        let (statsd, graphite) = (free_port(), free_port());
        std::fs::write(
            &layout.agent_toml,
            format!(
                "server_url = \"http://127.0.0.1:{dead}\"\n\
                 [listeners]\nstatsd = \"127.0.0.1:{statsd}\"\n\
                 graphite = \"127.0.0.1:{graphite}\"\nflush_secs = 1\n"
            ),
        )
        .unwrap();
        Host {
            config: StubConfig::load(&layout.agent_toml).unwrap(),
            statsd: SocketAddr::from(([127, 0, 0, 1], statsd)),
            graphite_port: graphite,
            layout,
            _dir: dir,
        }
    }

    fn start(&self, build: &Build, number: u64, state: Vec<u8>) -> Generation {
        Loaded::load(&self.layout, build, number)
            .unwrap()
            .start(&self.layout, &self.config, state, &[])
            .unwrap()
    }

    /// The sum of the `name` samples in the spool.
    fn spooled_sum(&self, name: &str) -> f64 {
        spooled_sum(&self.layout.data_dir, name)
    }
}

#[test]
fn a_hot_swap_keeps_collectd_running_and_loses_no_datagram() {
    let host = Host::new();
    let agent = build_of(&target_dir().join("liboutrider_agent.so"), "swap-test");
    let collectors_dir = host.layout.data_dir.join("collectors").join("swaptest");
    // The running collectd (`-f -C .../collectd.conf`), not its validation
    // (`-T -C .../collectd.conf.new`).
    let needle = format!(
        "-f\0-C\0{}\0",
        collectors_dir.join("collectd.conf").display()
    );

    let _table = crate::sockets::TEST_LOCK
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let first = host.start(
        &agent,
        1,
        seed_state("swaptest", &["load"], host.graphite_port),
    );
    let collectd = wait_for("collectd to run under the first generation", || {
        children_with(&needle).first().copied()
    });
    let key = (socket_kind::UDP, host.statsd);
    wait_for("the StatsD socket to be lent", || {
        crate::sockets::held().contains(&key).then_some(())
    });

    let (stop, sent) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    // About 5,000 datagrams a second: a steady stream, not a flood.
    let sending = statsd_sender(host.statsd, "swap.count", 5_000, stop.clone(), sent.clone());
    wait_for("datagrams before the swap", || {
        (sent.load(Ordering::SeqCst) >= 1000).then_some(())
    });

    // The swap, as `Supervisor::swap` does it for a library of ABI >= 1.2.
    first.allow_hand_over();
    let stopped = first.stop(Duration::from_secs(30)).unwrap();
    assert_eq!(stopped.status, outrider_abi::status::OK);
    let blob: serde_json::Value = serde_json::from_slice(&stopped.state).unwrap();
    assert_eq!(
        blob["collectors"][0]["process"]["pid"].as_u64(),
        Some(u64::from(collectd.0)),
        "the blob hands collectd over: {blob}"
    );
    let state = stopped.state.clone();
    let _ = stopped.unload();
    // Between generations: collectd runs on, datagrams wait in the socket.
    assert_eq!(children_with(&needle), vec![collectd]);
    let at_swap = sent.load(Ordering::SeqCst);
    let second = host.start(&agent, 2, state);
    wait_for("datagrams after the swap", || {
        (sent.load(Ordering::SeqCst) >= at_swap + 1000).then_some(())
    });
    stop.store(true, Ordering::SeqCst);
    sending.join().unwrap();
    let total = sent.load(Ordering::SeqCst);
    // Same pid, same start time: adopted, not restarted.
    assert_eq!(children_with(&needle), vec![collectd]);

    // Not handing over (the process ends): collectd is stopped.
    let last = second.stop(Duration::from_secs(30)).unwrap();
    assert_eq!(last.status, outrider_abi::status::OK);
    let blob: serde_json::Value = serde_json::from_slice(&last.state).unwrap();
    assert!(blob.get("collectors").is_none(), "{blob}");
    assert!(children_with(&needle).is_empty());
    let state = last.state.clone();
    let _ = last.unload();
    assert_eq!(host.spooled_sum("swap.count"), total as f64);
    assert_eq!(
        host.spooled_sum("outrider.listener.statsd.datagrams"),
        total as f64
    );

    // An old library (ABI 1.0, `legacy`) binds its own listeners: the stub
    // lets go of the port before it starts.
    assert!(crate::sockets::held().contains(&key));
    let legacy = legacy_testlib(host.layout.data_dir.as_path());
    let old = host.start(&legacy, 3, state);
    assert!(crate::sockets::held().is_empty());
    UdpSocket::bind(host.statsd).expect("the old library could bind the port");
    let old = old.stop(Duration::from_secs(10)).unwrap();
    assert_eq!(old.status, outrider_abi::status::OK);
    let _ = old.unload();
}

/// A copy of the test library that behaves as one built before ABI 1.1.
fn legacy_testlib(dir: &Path) -> Build {
    use std::io::Write;
    let path = dir.join("libtestlib.legacy.so");
    std::fs::copy(target_dir().join("liboutrider_testlib.so"), &path).unwrap();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    write!(file, "\n#OUTRIDER-TESTLIB:legacy:old\n").unwrap();
    build_of(&path, "legacy")
}
