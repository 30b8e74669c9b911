//! The portable build (`packaging/build`): links against glibc 2.17 symbol
//! versions only, and runs on an older distribution than the one it was
//! built on — Debian 11 (glibc 2.31), in a `debootstrap` root, against the
//! real server on loopback (a chroot keeps the host's network): the real
//! `install.sh` installs the stub there (verifying with python3, as
//! OpenSSL 1.1.1 cannot verify Ed25519), the stub installs the published
//! build, the agent registers, reports a check run inside the root, and
//! takes one hot swap.

use std::path::Path;
use std::process::Command;

use outrider_tests::portable::{MAX_GLIBC, bullseye_root, glibc_needs, portable_build};
use outrider_tests::{ENROLLMENT_TOKEN, Keys, TestServer, secs, wait_until};
use serde_json::Value;

#[test]
fn portable_artefacts_need_at_most_glibc_2_17() {
    let dist = portable_build();
    for name in ["outrider-agent", "liboutrider_agent.so", "outrider"] {
        let needs = glibc_needs(&dist.join(name));
        assert!(
            !needs.versions.is_empty(),
            "{name}: no GLIBC_ version needs read; is it dynamically linked against glibc?"
        );
        assert!(!needs.private, "{name} needs GLIBC_PRIVATE");
        let above = needs.above(MAX_GLIBC);
        assert!(
            above.is_empty(),
            "{name} needs glibc symbol versions newer than {MAX_GLIBC}: {}",
            above
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

/// The shipped library is built by itself (`packaging/build`, one `cargo
/// build -p` per artefact), so it gets only the tokio features it asks for:
/// no multi-thread scheduler, whose statistics were its only use of libm
/// (`pow`). Linking it back costs every agent the scheduler's code and
/// libm's pages, ~330 KiB of idle RSS (docs/benchmarks.md, "Lean agent").
#[test]
fn the_portable_library_needs_no_libm() {
    let lib = portable_build().join("liboutrider_agent.so");
    let out = Command::new("readelf")
        .arg("-dW")
        .arg(&lib)
        .output()
        .expect("run readelf");
    assert!(out.status.success(), "readelf -d {}", lib.display());
    let dynamic = String::from_utf8_lossy(&out.stdout);
    let needed: Vec<&str> = dynamic
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split('[').nth(1)?.split(']').next())
        .collect();
    assert!(
        needed.contains(&"libc.so.6"),
        "read no NEEDED entries: {needed:?}"
    );
    assert!(
        !needed.iter().any(|n| n.starts_with("libm.")),
        "the agent library links libm again: {needed:?}"
    );
}

/// The portable stub installed inside the Debian 11 root by the real,
/// served `install.sh` into a prefix, and started by it (`--service-manager
/// none`: a background process). Everything runs under `chroot` in a
/// private mount namespace with the root's /proc mounted (the stub reads
/// `/proc/self/maps` after a swap); the namespace lives as long as the
/// agent does. The root's OpenSSL 1.1.1 cannot verify Ed25519, so the
/// installer verifies with the root's python3. Killed when dropped.
struct ChrootAgent {
    work: tempfile::TempDir,
    /// What the installer printed.
    install_log: String,
}

impl ChrootAgent {
    fn install(
        root: &Path,
        work: tempfile::TempDir,
        server: &TestServer,
        root_sha256: &str,
    ) -> ChrootAgent {
        let script = ureq::get(&format!("{}/install.sh", server.url))
            .call()
            .expect("GET /install.sh")
            .into_string()
            .unwrap();
        std::fs::write(work.path().join("install.sh"), script).unwrap();
        let inside = Path::new("/tmp").join(work.path().file_name().unwrap());
        let steps = format!(
            "set -eu\nmount -t proc proc {root}/proc\n\
             exec chroot {root} sh {inside}/install.sh --token {ENROLLMENT_TOKEN} --channel dev \
             --prefix {inside}/outrider --root-sha256 {root_sha256} --service-manager none\n",
            root = root.display(),
            inside = inside.display(),
        );
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &steps])
            .env("OUTRIDER_LOG", "debug")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run unshare (util-linux)");
        let agent = ChrootAgent {
            work,
            install_log: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        assert!(
            out.status.success(),
            "install.sh inside the Debian 11 root failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            agent.install_log
        );
        agent
    }

    /// The prefix as the host sees it.
    fn prefix(&self) -> std::path::PathBuf {
        self.work.path().join("outrider")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.prefix().join("log/stdout.log")).unwrap_or_default()
    }

    fn state(&self) -> Option<Value> {
        let text = std::fs::read_to_string(self.prefix().join("state.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The stub's pid, from the installer's pid file.
    fn pid(&self) -> u32 {
        std::fs::read_to_string(self.prefix().join("outrider-agent.pid"))
            .expect("the installer wrote the pid file")
            .trim()
            .parse()
            .unwrap()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal}");
    }
}

impl Drop for ChrootAgent {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.prefix().join("outrider-agent.pid")) {
            let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
        }
    }
}

fn wait_current(agent: &ChrootAgent, sha: &str) {
    let deadline = std::time::Instant::now() + secs(120);
    while agent.state().is_none_or(|s| s["current"]["sha256"] != sha) {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent in the Debian 11 root never ran {sha}; its log:\n{}",
            agent.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn the_portable_agent_installs_registers_reports_and_swaps_on_debian_11() {
    assert_eq!(
        current_uid(),
        0,
        "debootstrap and chroot need root (CI runs as root)"
    );
    let root = bullseye_root();
    assert!(
        std::fs::read_to_string(root.join("etc/debian_version"))
            .unwrap()
            .starts_with("11."),
        "the root is Debian 11"
    );
    let dist = portable_build();
    let server = TestServer::start();
    let keys = Keys::init();
    let v1 = server.publish_as(&keys, "dev", &dist.join("liboutrider_agent.so"), "1.0.0");

    // Everything the agent sees lives inside the root: the prefix at
    // /tmp/<work> and the plugin in the standard Nagios directory, which the
    // default local policy allows (agent-lib/src/policy.rs), named after the
    // work directory so runs sharing the cached root never collide.
    let work = tempfile::tempdir_in(root.join("tmp")).unwrap();
    let nagios = Path::new("usr/lib/nagios/plugins");
    std::fs::create_dir_all(root.join(nagios)).unwrap();
    let name = format!(
        "check_{}",
        work.path().file_name().unwrap().to_str().unwrap()
    );
    let plugin = outrider_tests::script(&root.join(nagios), &name, BULLSEYE_PLUGIN);
    let _remove_plugin = RemoveOnDrop(plugin.clone());
    let plugin_inside = Path::new("/").join(nagios).join(&name);
    server.add_check("bullseye", 1, &[plugin_inside.to_str().unwrap()]);
    let stub = dist.join("outrider-agent");
    server.cli(&[
        "release",
        "publish-stub",
        "--channel",
        "dev",
        "--keys",
        keys.dir.path().to_str().unwrap(),
        stub.to_str().unwrap(),
    ]);
    let root_sha256 = outrider_tests::sha256_file(&keys.root_json());
    let agent = ChrootAgent::install(root, work, &server, &root_sha256);
    assert!(
        agent
            .install_log
            .contains("verifying signatures with python3"),
        "OpenSSL 1.1.1 cannot verify Ed25519: the installer says it used python3:\n{}",
        agent.install_log
    );
    assert_eq!(
        outrider_tests::sha256_file(&agent.prefix().join("bin/outrider-agent")),
        outrider_tests::sha256_file(&stub),
        "the installed stub is the published portable one"
    );

    // The stub installed and loaded the published build, the agent
    // registered and reported a check run inside the root.
    wait_current(&agent, &v1);
    let row = wait_until("the agent registers", secs(60), || {
        server
            .agents()
            .into_iter()
            .find(|a| a["presence"] == "connected" && a["build_sha256"] == v1.as_str())
    });
    let installed: Vec<_> = std::fs::read_dir(agent.prefix().join("versions"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        installed,
        vec![v1.clone()],
        "the build is installed under versions/"
    );
    let result = wait_until("a check result from Debian 11", secs(60), || {
        server
            .latest_results()
            .into_iter()
            .find(|r| r["check"] == "bullseye")
    });
    assert_eq!(result["state"], "OK", "{result}");
    assert!(
        result["summary"]
            .as_str()
            .unwrap_or_default()
            .contains("debian 11."),
        "the plugin ran inside the root: {result}"
    );

    // One hot swap: a second build (the same code with a trailer, so a
    // different sha256), found at once after SIGHUP.
    let libs = tempfile::tempdir().unwrap();
    let v2_path = libs.path().join("liboutrider_agent.so");
    let mut bytes = std::fs::read(dist.join("liboutrider_agent.so")).unwrap();
    bytes.extend_from_slice(b"\n#second build\n");
    std::fs::write(&v2_path, bytes).unwrap();
    let v2 = server.publish_as(&keys, "dev", &v2_path, "1.0.1");
    let pid = agent.pid();
    agent.signal("-HUP");
    wait_current(&agent, &v2);
    wait_until("the swapped agent reports the new build", secs(60), || {
        server
            .agents()
            .into_iter()
            .find(|a| {
                a["fingerprint"] == row["fingerprint"]
                    && a["presence"] == "connected"
                    && a["build_sha256"] == v2.as_str()
            })
            .map(|_| ())
    });
    assert_eq!(agent.pid(), pid, "swapped in the same process");
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the installer's agent still runs"
    );
    let log = agent.log();
    assert!(
        !log.contains("GLIBC_"),
        "no glibc version errors in the agent's output:\n{log}"
    );
}

/// Reports the root's Debian version: proof the check ran inside it.
const BULLSEYE_PLUGIN: &str = r#"echo "OK - debian $(cat /etc/debian_version)"
exit 0"#;

/// The real user id, from `id -u`.
fn current_uid() -> u32 {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Removes a file left in the shared, cached Debian 11 root when dropped.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
