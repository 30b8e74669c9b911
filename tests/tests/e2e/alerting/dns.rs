//! The false-alarm suite's DNS cases, with the real stub, the real agent
//! library and glibc's resolver.
//!
//! The agent's `server_url` names the server by [`SERVER_NAME`], and the
//! stub runs in a private mount namespace (`unshare --mount`, as in
//! `portable.rs`) where `/etc/hosts` and `/etc/resolv.conf` are bind mounts
//! of files the test owns. The resolver is pointed at a loopback port where
//! nothing listens, so a lookup that misses `/etc/hosts` fails at once; glibc
//! reads `/etc/hosts` on every lookup, so rewriting it (in place: the bind
//! mount follows the inode) breaks and heals DNS for the agent alone.
//!
//! The agent resolves the name only when it dials (`agent-lib/src/dns.rs`),
//! so each change is followed by a server crash and restart (SIGKILL),
//! which makes it dial again: with DNS broken it comes back through its
//! last good address and reports `outrider.dns` CRITICAL; with DNS healed
//! it reports OK. The crash comes moments after the report, before the
//! engine's state is written (`server/src/alerts.rs`, `missed_results`):
//! a report sent only on change must survive that too.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use outrider_tests::{
    ENROLLMENT_TOKEN, Keys, LISTENERS_OFF, TestServer, agent_library, bin_dir, secs, test_policy,
    wait_until,
};
use serde_json::{Value, json};

use super::{connected, decided, history, wait_decided};

/// The server's name as the agent knows it.
const SERVER_NAME: &str = "outrider-server.test";
/// `down_for` here, which is also the resolver check's duration gate
/// (`alerting/src/config.rs`, `rules_for`): longer than the two reconnects
/// a short outage takes, short enough for a test.
const DOWN_FOR_MS: u64 = 12_000;

/// A stub whose view of DNS the test controls.
struct DnsAgent {
    prefix: tempfile::TempDir,
    child: Child,
}

impl DnsAgent {
    /// Installs an agent whose `server_url` uses [`SERVER_NAME`] and starts
    /// its stub in a private mount namespace, with DNS working.
    fn start(server: &TestServer, keys: &Keys, tag: &str) -> DnsAgent {
        let prefix = tempfile::tempdir().unwrap();
        let root = prefix.path();
        let port = server.url.rsplit(':').next().unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("bin")).unwrap();
        let toml = format!(
            "server_url = \"http://{SERVER_NAME}:{port}\"\nenrollment_token = \"{ENROLLMENT_TOKEN}\"\n\
             channel = \"dev\"\n{LISTENERS_OFF}\npolicy = {}\ntags = [\"{tag}\"]\nallow_plain_ws = true\n",
            test_policy()
        );
        std::fs::write(root.join("etc/agent.toml"), toml).unwrap();
        std::fs::copy(keys.root_json(), root.join("etc/root.json")).unwrap();
        std::fs::copy(
            bin_dir().join("outrider-agent"),
            root.join("bin/outrider-agent"),
        )
        .unwrap();
        std::fs::write(
            root.join("resolv.conf"),
            "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
        )
        .unwrap();
        let hosts = root.join("hosts");
        write_hosts(&hosts, true);
        let steps = format!(
            "mount --bind {hosts} /etc/hosts && mount --bind {resolv} /etc/resolv.conf && \
             exec {stub} --prefix {root}",
            hosts = hosts.display(),
            resolv = root.join("resolv.conf").display(),
            stub = root.join("bin/outrider-agent").display(),
            root = root.display(),
        );
        let log = std::fs::File::create(root.join("stub.log")).unwrap();
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &steps])
            .env("OUTRIDER_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("run unshare (util-linux)");
        DnsAgent { prefix, child }
    }

    /// Makes [`SERVER_NAME`] resolve for this agent, or not.
    fn set_dns(&self, working: bool) {
        write_hosts(&self.prefix.path().join("hosts"), working);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.prefix.path().join("stub.log")).unwrap_or_default()
    }
}

/// Writes the agent's `/etc/hosts`, with or without [`SERVER_NAME`]. In
/// place, never renamed: the bind mount holds the file's inode.
fn write_hosts(path: &Path, working: bool) {
    let mut hosts = "127.0.0.1 localhost\n".to_owned();
    if working {
        hosts.push_str(&format!("127.0.0.1 {SERVER_NAME}\n"));
    }
    std::fs::write(path, hosts).unwrap();
}

impl Drop for DnsAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a server on this file's `down_for`.
fn server(dir: &Path) -> TestServer {
    let settings = dir.join("alerting.json");
    let config = json!({
        "down_for_ms": DOWN_FOR_MS,
        "restart_grace_extra_ms": 10_000,
        "group": {"group_wait_ms": 300, "group_interval_ms": 1_000, "repeat_interval_ms": 3_600_000}
    });
    std::fs::write(&settings, config.to_string()).unwrap();
    TestServer::start_args(&[
        "--alerting-config",
        settings.to_str().unwrap(),
        "--alert-tick-ms",
        "50",
        "--ping-interval-secs",
        "1",
        "--down-after-secs",
        "2",
    ])
}

/// Waits for the agent's resolver check to be reported in `state` by a
/// result started after `since_ms`; returns that result.
fn dns_result(
    server: &TestServer,
    agent: &DnsAgent,
    fp: &str,
    state: &str,
    since_ms: i64,
) -> Value {
    let deadline = Instant::now() + secs(60);
    loop {
        let found = server.latest_results().into_iter().find(|r| {
            r["agent"] == fp
                && r["check"] == "outrider.dns"
                && r["state"] == state
                && r["started_at_ms"].as_i64().unwrap() >= since_ms
        });
        if let Some(found) = found {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no outrider.dns {state} from {fp}; stub log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// DNS failing for less than `down_for` pages nobody; failing past it
/// pages once, saying "DNS broken", and resolves once when it heals. The
/// long failure is the witness for the short one: it started later, so its
/// page comes after the one the short failure would have made.
#[test]
fn dns_broken_shorter_than_down_for_pages_nobody_and_past_it_pages_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = server(dir.path());
    let keys = Keys::init();
    server.publish(&keys, "dev", &agent_library());
    let agent = DnsAgent::start(&server, &keys, "dns");
    let fp = connected(&server, "dns");
    // The agent keeps the address it connected to as its fallback before
    // it logs the connection (`agent-lib/src/connection.rs`).
    wait_until("the agent's fallback address", secs(30), || {
        agent.log().contains("connected to ws://").then_some(())
    });
    let key = format!("check/{fp}/outrider.dns");

    // A short failure: broken at one reconnect, healed at the next.
    let broke = now_ms();
    agent.set_dns(false);
    server.restart();
    let critical = dns_result(&server, &agent, &fp, "CRITICAL", broke);
    let summary = critical["summary"].as_str().unwrap();
    assert!(
        summary.contains(&format!("cannot resolve {SERVER_NAME}")),
        "{summary}"
    );
    // Broken for half of down_for (scaled down from a minute against 2 min).
    let half =
        (critical["started_at_ms"].as_i64().unwrap() + DOWN_FOR_MS as i64 / 2 - now_ms()).max(0);
    std::thread::sleep(Duration::from_millis(half as u64));
    let healed = now_ms();
    agent.set_dns(true);
    server.restart();
    let ok = dns_result(&server, &agent, &fp, "OK", healed);
    let lasted =
        ok["started_at_ms"].as_i64().unwrap() - critical["started_at_ms"].as_i64().unwrap();
    assert!(
        lasted < DOWN_FOR_MS as i64,
        "the short failure lasted {lasted} ms, not shorter than down_for: the test proves nothing"
    );
    assert_eq!(decided(&server), []);

    // A long failure.
    let broke = now_ms();
    let broke_at = Instant::now();
    agent.set_dns(false);
    server.restart();
    dns_result(&server, &agent, &fp, "CRITICAL", broke);
    let d = wait_decided(&server, 1, secs(60));
    assert!(
        broke_at.elapsed() >= Duration::from_millis(DOWN_FOR_MS),
        "paged {:?} after DNS broke, before down_for",
        broke_at.elapsed()
    );
    assert_eq!(d, [(key.clone(), "firing".to_owned())]);
    let note = &history(&server)[0]["notifications"][0];
    assert_eq!(note["title"], format!("DNS broken on {fp}"));
    let text = note["summary"].as_str().unwrap();
    assert!(
        text.contains(&format!("cannot resolve {SERVER_NAME}")),
        "{text}"
    );
    assert!(
        note["incident_started_ms"].as_i64().unwrap() >= broke,
        "the page is for the long failure, not the short one: {note}"
    );

    // DNS heals: exactly one resolve.
    let healed = now_ms();
    agent.set_dns(true);
    server.restart();
    dns_result(&server, &agent, &fp, "OK", healed);
    let d = wait_decided(&server, 2, secs(60));
    assert_eq!(
        d,
        [
            (key.clone(), "firing".to_owned()),
            (key, "resolved".to_owned())
        ]
    );
    assert_eq!(server.api_get("alerts"), json!([]), "nothing left open");
}
