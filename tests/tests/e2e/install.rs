//! The one-line installer (issue: install, service and release): the real
//! `packaging/install.sh`, as the server serves it, run with `sh` against a
//! real server into a temporary prefix, without a service manager.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use outrider_tests::{ENROLLMENT_TOKEN, Keys, TestServer, bin_dir, secs, sha256_file, wait_until};
use serde_json::Value;

/// A server with a release on channel `dev`, made the way operators make
/// one: `packaging/release --with-stub` (here without building: the test
/// publishes the workspace's debug build).
fn server_with_release() -> (TestServer, Keys) {
    let server = TestServer::start();
    let keys = Keys::init();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/release");
    let target_dir = bin_dir().parent().unwrap().to_owned();
    let out = Command::new("sh")
        .arg(&script)
        .args(["--channel", "dev", "--keys"])
        .arg(keys.dir.path())
        .args(["--version", "1.0.0-e2e", "--deltas", "0", "--with-stub"])
        // The 30 MB debug build: a quick level, not the shipping one.
        .args(["--no-build", "--profile", "dev", "--zstd-level", "3"])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("OUTRIDER_SERVER", &server.url)
        .env("OUTRIDER_TOKEN", &server.admin_token)
        .env_remove("OUTRIDER_TOKEN_FILE")
        .output()
        .expect("run packaging/release");
    assert!(
        out.status.success(),
        "packaging/release failed: {}",
        stderr(&out)
    );
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.contains("1.0.0-e2e"),
        "release status shows the build: {status}"
    );
    (server, keys)
}

/// Where the installer puts things, and a guard that stops a background
/// agent it started, whatever the test's outcome.
struct Install {
    prefix: PathBuf,
    _dir: tempfile::TempDir,
}

impl Install {
    fn new() -> Install {
        let dir = tempfile::tempdir().unwrap();
        Install {
            prefix: dir.path().join("outrider"),
            _dir: dir,
        }
    }

    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.prefix.join("outrider-agent.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Install {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// `curl -sSf SERVER/install.sh | sh -s -- ARGS`, with the script fetched
/// from the server (so the served copy, with its URL filled in, is tested).
fn run_installer(server: &TestServer, args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = fetch_installer(server, dir.path());
    Command::new("sh")
        .arg(&path)
        .args(args)
        .output()
        .expect("run sh install.sh")
}

/// Saves the server's `/install.sh` (with its URL filled in) into `dir`.
fn fetch_installer(server: &TestServer, dir: &Path) -> PathBuf {
    let script = ureq::get(&format!("{}/install.sh", server.url))
        .call()
        .expect("GET /install.sh")
        .into_string()
        .expect("script text");
    let path = dir.join("install.sh");
    std::fs::write(&path, script).unwrap();
    path
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn root_sha256(server: &TestServer) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("root.json");
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut ureq::get(&format!("{}/v1/updates/root.json", server.url))
            .call()
            .unwrap()
            .into_reader(),
        &mut bytes,
    )
    .unwrap();
    std::fs::write(&path, bytes).unwrap();
    sha256_file(&path)
}

fn install_args<'a>(install: &'a Install, root: &'a str, tags: &'a str) -> Vec<&'a str> {
    vec![
        "--token",
        ENROLLMENT_TOKEN,
        "--channel",
        "dev",
        "--tags",
        tags,
        "--prefix",
        install.prefix.to_str().unwrap(),
        "--root-sha256",
        root,
        "--service-manager",
        "none",
    ]
}

fn only_agent(server: &TestServer) -> Value {
    let agents = server.agents();
    assert_eq!(agents.len(), 1, "exactly one agent registered: {agents:?}");
    agents[0].clone()
}

fn wait_presence(server: &TestServer, presence: &str) -> Value {
    wait_until(&format!("the agent is {presence}"), secs(90), || {
        server
            .agents()
            .into_iter()
            .find(|a| a["presence"] == presence)
    })
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn install_registers_rerun_is_idempotent_uninstall_deregisters() {
    let (server, _keys) = server_with_release();
    let root = root_sha256(&server);
    let install = Install::new();

    let out = run_installer(&server, &install_args(&install, &root, "web,eu"));
    assert!(out.status.success(), "install failed: {}", stderr(&out));
    let toml = std::fs::read_to_string(install.prefix.join("etc/agent.toml")).unwrap();
    assert!(
        toml.contains(&format!("server_url = \"{}\"", server.url)),
        "{toml}"
    );
    assert!(toml.contains("tags = [\"web\", \"eu\"]"), "{toml}");
    let mode = std::fs::metadata(install.prefix.join("etc/agent.toml")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o077,
        0,
        "agent.toml holds the token: not readable by others"
    );
    assert_eq!(
        sha256_file(&install.prefix.join("bin/outrider-agent")),
        sha256_file(&bin_dir().join("outrider-agent")),
        "the installed stub is the published one"
    );
    let registered = wait_presence(&server, "connected");
    let fingerprint = registered["fingerprint"].clone();
    let pid = install.pid().expect("the installer started the agent");

    // Same settings again: nothing changes, the running agent is left alone.
    let out = run_installer(&server, &install_args(&install, &root, "web,eu"));
    assert!(out.status.success(), "re-run failed: {}", stderr(&out));
    assert_eq!(
        install.pid(),
        Some(pid),
        "an unchanged re-run restarts nothing"
    );
    let agent = only_agent(&server);
    assert_eq!(agent["fingerprint"], fingerprint);
    assert_eq!(agent["presence"], "connected");

    // New settings: written, the agent restarted with the same identity.
    let out = run_installer(&server, &install_args(&install, &root, "web"));
    assert!(out.status.success(), "re-run failed: {}", stderr(&out));
    let toml = std::fs::read_to_string(install.prefix.join("etc/agent.toml")).unwrap();
    assert!(toml.contains("tags = [\"web\"]"), "{toml}");
    assert_ne!(
        install.pid(),
        Some(pid),
        "changed settings restart the agent"
    );
    wait_until("the restarted agent reconnects", secs(90), || {
        let agent = only_agent(&server);
        (agent["presence"] == "connected" && agent["fingerprint"] == fingerprint).then_some(())
    });

    let out = run_installer(
        &server,
        &["--uninstall", "--prefix", install.prefix.to_str().unwrap()],
    );
    assert!(out.status.success(), "uninstall failed: {}", stderr(&out));
    let agent = wait_presence(&server, "deregistered");
    assert_eq!(agent["fingerprint"], fingerprint);
    assert!(
        !install.prefix.exists(),
        "uninstall removes everything it installed: {:?}",
        files_under(&install.prefix)
    );
}

#[test]
fn tampered_stub_or_wrong_root_installs_nothing() {
    let (server, _keys) = server_with_release();
    let root = root_sha256(&server);

    // A root.json other than the pinned one is refused.
    let install = Install::new();
    let wrong = "0".repeat(64);
    let out = run_installer(&server, &install_args(&install, &wrong, "web"));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not the pinned"), "{}", stderr(&out));
    assert!(
        !install.prefix.exists(),
        "{:?}",
        files_under(&install.prefix)
    );

    // Flip one byte of the uncompressed stub in the server's blob store.
    let stub_sha = sha256_file(&bin_dir().join("outrider-agent"));
    let blob = server.data_dir().join("releases/blobs").join(&stub_sha);
    let mut bytes = std::fs::read(&blob).expect("the uncompressed stub is a blob");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();

    let out = run_installer(&server, &install_args(&install, &root, "web"));
    assert!(
        !out.status.success(),
        "a tampered stub must fail the install"
    );
    let err = stderr(&out);
    assert!(
        err.contains("does not match the signed manifest") && err.contains("nothing was installed"),
        "{err}"
    );
    assert!(
        !install.prefix.exists(),
        "{:?}",
        files_under(&install.prefix)
    );
    assert!(server.agents().is_empty(), "no agent registered");
}

#[test]
fn scripts_are_posix_shellcheck_clean_and_truncation_safe() {
    let packaging = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging");
    for name in ["install.sh", "release"] {
        let script = packaging.join(name);
        let text = std::fs::read_to_string(&script).unwrap();
        assert_eq!(
            text.trim_end().lines().last(),
            Some("main \"$@\" || exit 1"),
            "{name}: a truncated download must not run anything: main is called on the last line"
        );
        let out = Command::new("shellcheck")
            .args(["--shell=sh", "--severity=style"])
            .arg(&script)
            .output()
            .expect("shellcheck is installed (tests/deps installs it)");
        assert!(
            out.status.success(),
            "{name}: shellcheck findings:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        // /bin/sh (dash on Debian) must parse it.
        let out = Command::new("sh").arg("-n").arg(&script).output().unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A root install writes the system paths of DESIGN.md §2. Run in a private
/// mount namespace with fresh tmpfs over `/opt`, `/var/log` and
/// `/etc/outrider`, so the host's own directories are never touched.
#[test]
fn root_install_uses_the_system_paths_and_uninstall_removes_them() {
    assert_eq!(
        current_uid(),
        0,
        "the root install test runs as root (CI does)"
    );
    let (server, _keys) = server_with_release();
    let root = root_sha256(&server);
    let dir = tempfile::tempdir().unwrap();
    let installer = fetch_installer(&server, dir.path());
    let etc_existed = Path::new("/etc/outrider").exists();
    let steps = format!(
        r#"set -eu
mount -t tmpfs -o mode=0755 none /opt
mount -t tmpfs -o mode=0755 none /var/log
mkdir -p /etc/outrider
mount -t tmpfs -o mode=0755 none /etc/outrider
trap 'kill -KILL "$(cat /opt/outrider/outrider-agent.pid 2>/dev/null)" 2>/dev/null || true' EXIT
sh {installer} --token {token} --channel dev --root-sha256 {root} --service-manager none
test -x /opt/outrider/bin/outrider-agent
test -f /etc/outrider/agent.toml
test -f /etc/outrider/root.json
i=0
until [ -f /etc/outrider/identity.key ] && [ -d /var/log/outrider ]; do
    i=$((i + 1)); [ "$i" -lt 200 ] || {{ echo "no identity.key or log dir" >&2; exit 3; }}
    sleep 0.1
done
i=0
until curl -sf -H "Authorization: Bearer {admin}" {url}/api/v1/agents | grep -q '"connected"'; do
    i=$((i + 1)); [ "$i" -lt 600 ] || {{ echo "the agent never connected" >&2; exit 4; }}
    sleep 0.1
done
sh {installer} --uninstall --service-manager none
test ! -e /opt/outrider
test ! -e /var/log/outrider
test -z "$(ls -A /etc/outrider)"
"#,
        installer = installer.display(),
        token = outrider_tests::ENROLLMENT_TOKEN,
        admin = server.admin_token,
        url = server.url,
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &steps])
        .output()
        .expect("run unshare (util-linux)");
    if !etc_existed {
        let _ = std::fs::remove_dir("/etc/outrider");
    }
    assert!(
        out.status.success(),
        "root install in a mount namespace failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    // The uninstall's SIGTERM made the agent say goodbye.
    wait_presence(&server, "deregistered");
}

/// The real user id, from `id -u`.
fn current_uid() -> u32 {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn uninstall_from_a_prefix_that_existed_keeps_what_was_there() {
    let (server, _keys) = server_with_release();
    let root = root_sha256(&server);
    let install = Install::new();
    std::fs::create_dir_all(&install.prefix).unwrap();
    std::fs::write(install.prefix.join("notes.txt"), "mine").unwrap();

    let out = run_installer(&server, &install_args(&install, &root, "web"));
    assert!(out.status.success(), "install failed: {}", stderr(&out));
    wait_presence(&server, "connected");
    let out = run_installer(
        &server,
        &["--uninstall", "--prefix", install.prefix.to_str().unwrap()],
    );
    assert!(out.status.success(), "uninstall failed: {}", stderr(&out));
    wait_presence(&server, "deregistered");
    assert_eq!(
        files_under(&install.prefix),
        vec!["notes.txt".to_owned()],
        "only the installer's own files are removed"
    );
}

#[test]
fn a_rerun_with_a_root_older_than_the_host_trusts_is_refused() {
    let (server, _keys) = server_with_release();
    let root = root_sha256(&server);
    let install = Install::new();
    let mut args = install_args(&install, &root, "web");
    args.push("--no-service");
    let out = run_installer(&server, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    let root_json = install.prefix.join("etc/root.json");
    let before = std::fs::read(&root_json).unwrap();

    // The stub has since walked the root chain to version 7 (state.json
    // records the highest root it ever trusted); the server still serves 1.
    std::fs::write(
        install.prefix.join("state.json"),
        r#"{"version": 1, "root_version": 7}"#,
    )
    .unwrap();
    let out = run_installer(&server, &args);
    assert!(
        !out.status.success(),
        "an older root must be refused: {}",
        stderr(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains("root.json from")
            && err.contains("is version 1, older than version 7 this host already trusts")
            && err.contains("nothing was installed"),
        "{err}"
    );
    assert_eq!(std::fs::read(&root_json).unwrap(), before, "kept");
}
