//! The portable build (`packaging/build`): links against glibc 2.17 symbol
//! versions only, and runs on an older distribution than the one it was
//! built on — Debian 11 (glibc 2.31), in a `debootstrap` root, against the
//! real server on loopback (a chroot keeps the host's network): the stub
//! installs the published build, the agent registers, reports a check run
//! inside the root, and takes one hot swap.

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

/// The portable stub installed into a prefix inside the Debian 11 root
/// (agent.toml, root.json, the binary, as install.sh lays them out) and run
/// there: `chroot` in a private mount namespace with the root's /proc
/// mounted (the stub reads `/proc/self/maps` after a swap). `sh` and
/// `chroot` exec, so the child is the stub itself. Killed when dropped.
///
/// Not through install.sh: it verifies signatures with `openssl pkeyutl
/// -rawin`, which Debian 11's OpenSSL 1.1.1 does not have, and refuses to
/// install there (it says so).
struct ChrootAgent {
    work: tempfile::TempDir,
    child: std::process::Child,
}

impl ChrootAgent {
    fn start(
        root: &Path,
        work: tempfile::TempDir,
        stub: &Path,
        agent_toml: &str,
        root_json: &Path,
    ) -> ChrootAgent {
        let prefix = work.path().join("outrider");
        std::fs::create_dir_all(prefix.join("etc")).unwrap();
        std::fs::create_dir_all(prefix.join("bin")).unwrap();
        std::fs::write(prefix.join("etc/agent.toml"), agent_toml).unwrap();
        std::fs::copy(root_json, prefix.join("etc/root.json")).unwrap();
        std::fs::copy(stub, prefix.join("bin/outrider-agent")).unwrap();
        let inside = Path::new("/tmp")
            .join(work.path().file_name().unwrap())
            .join("outrider");
        let steps = format!(
            "set -eu\nmount -t proc proc {root}/proc\nexec chroot {root} {inside}/bin/outrider-agent --prefix {inside}\n",
            root = root.display(),
            inside = inside.display(),
        );
        let log = std::fs::File::create(work.path().join("stub.log")).unwrap();
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &steps])
            .env("OUTRIDER_LOG", "debug")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("run unshare (util-linux)");
        ChrootAgent { work, child }
    }

    /// The prefix as the host sees it.
    fn prefix(&self) -> std::path::PathBuf {
        self.work.path().join("outrider")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.work.path().join("stub.log")).unwrap_or_default()
    }

    fn state(&self) -> Option<Value> {
        let text = std::fs::read_to_string(self.prefix().join("state.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal}");
    }
}

impl Drop for ChrootAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

    // Everything the agent sees lives inside the root: the prefix and the
    // plugin, at /tmp/<work>/… from within.
    let work = tempfile::tempdir_in(root.join("tmp")).unwrap();
    let inside = Path::new("/tmp").join(work.path().file_name().unwrap());
    let plugin = outrider_tests::script(work.path(), "check_bullseye", BULLSEYE_PLUGIN);
    let plugin_inside = inside.join(plugin.file_name().unwrap());
    server.add_check("bullseye", 1, &[plugin_inside.to_str().unwrap()]);
    // The plugin lives in /tmp inside the root, outside the default policy.
    let toml = format!(
        "server_url = \"{}\"\nenrollment_token = \"{ENROLLMENT_TOKEN}\"\nchannel = \"dev\"\n\
         [policy]\nallowed_commands = [\"builtin:\", \"plugin:\", \"/tmp\"]\n",
        server.url
    );
    let agent = ChrootAgent::start(
        root,
        work,
        &dist.join("outrider-agent"),
        &toml,
        &keys.root_json(),
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
    let pid = agent.child.id();
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
    assert_eq!(agent.child.id(), pid, "swapped in the same process");
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
