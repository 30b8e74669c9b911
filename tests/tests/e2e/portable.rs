//! The portable build (`packaging/build`): links against glibc 2.17 symbol
//! versions only, and runs on an older distribution than the one it was
//! built on — Debian 11 (glibc 2.31), in a `debootstrap` root, against the
//! real server on loopback (a chroot keeps the host's network).

use std::path::Path;
use std::process::Command;

use outrider_tests::portable::{MAX_GLIBC, bullseye_root, glibc_needs, portable_build};
use outrider_tests::{ENROLLMENT_TOKEN, Keys, TestServer, secs, sha256_file, wait_until};
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

/// An agent installed by the real installer inside the Debian 11 root, with
/// the root's /proc mounted in a private mount namespace (the stub reads
/// `/proc/self/maps` after a swap). Killed when dropped.
struct ChrootAgent {
    work: tempfile::TempDir,
}

impl ChrootAgent {
    /// The prefix as the host sees it.
    fn prefix(&self) -> std::path::PathBuf {
        self.work.path().join("outrider")
    }

    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.prefix().join("outrider-agent.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn state(&self) -> Option<Value> {
        let text = std::fs::read_to_string(self.prefix().join("state.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn signal(&self, signal: &str) {
        let pid = self.pid().expect("the installer wrote the agent's pid");
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }
}

impl Drop for ChrootAgent {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

fn wait_current(agent: &ChrootAgent, sha: &str) {
    wait_until(
        &format!("the agent in the Debian 11 root runs {sha}"),
        secs(120),
        || {
            agent
                .state()
                .filter(|s| s["current"]["sha256"] == sha)
                .map(|_| ())
        },
    );
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
    let keys_dir = keys.dir.path().to_str().unwrap();
    let v1 = server.publish_as(&keys, "dev", &dist.join("liboutrider_agent.so"), "1.0.0");
    let stub = dist.join("outrider-agent").to_string_lossy().into_owned();
    server.cli(&[
        "release",
        "publish-stub",
        "--channel",
        "dev",
        "--keys",
        keys_dir,
        &stub,
    ]);

    // Everything the agent sees lives inside the root: the installer, the
    // prefix and the plugin, at /tmp/<work>/… from within.
    let work = tempfile::tempdir_in(root.join("tmp")).unwrap();
    let inside = Path::new("/tmp").join(work.path().file_name().unwrap());
    let plugin = outrider_tests::script(work.path(), "check_bullseye", BULLSEYE_PLUGIN);
    let plugin_inside = inside.join(plugin.file_name().unwrap());
    server.add_check("bullseye", 1, &[plugin_inside.to_str().unwrap()]);
    let installer = ureq::get(&format!("{}/install.sh", server.url))
        .call()
        .expect("GET /install.sh")
        .into_string()
        .unwrap();
    std::fs::write(work.path().join("install.sh"), installer).unwrap();
    let root_sha = sha256_file(&keys.root_json());

    let agent = ChrootAgent { work };
    let steps = format!(
        r#"set -eu
mount -t proc proc {root}/proc
exec chroot {root} sh {inside}/install.sh --token {ENROLLMENT_TOKEN} --channel dev \
    --prefix {inside}/outrider --root-sha256 {root_sha} --service-manager none
"#,
        root = root.display(),
        inside = inside.display(),
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &steps])
        .output()
        .expect("run unshare (util-linux)");
    assert!(
        out.status.success(),
        "install.sh in the Debian 11 root failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Installed, loaded the published build, registered, reported a check.
    wait_current(&agent, &v1);
    let row = wait_until("the agent registers", secs(60), || {
        server
            .agents()
            .into_iter()
            .find(|a| a["presence"] == "connected" && a["build_sha256"] == v1.as_str())
    });
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
    let log = std::fs::read_to_string(agent.prefix().join("log/stdout.log")).unwrap_or_default();
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
