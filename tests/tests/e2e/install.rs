//! The one-line installer: the real
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
    // Enrolled, the agent removed its spent token from agent.toml.
    let toml_path = install.prefix.join("etc/agent.toml");
    wait_until("the agent removed its enrollment token", secs(30), || {
        let text = std::fs::read_to_string(&toml_path).unwrap();
        (!text.contains("enrollment_token")).then_some(())
    });

    // Same settings again (the same token included): nothing changes, the
    // running agent is left alone, the spent token is not written back.
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
    let text = std::fs::read_to_string(&toml_path).unwrap();
    assert!(!text.contains("enrollment_token"), "{text}");

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

/// A root install writes the system paths of `docs/operations.md` and runs
/// the agent as the system user `outrider` it creates. Run in a private
/// mount namespace with fresh tmpfs over `/opt` and `/var/log` and `/etc`
/// behind an overlay (the user lands there), so the host's own directories
/// and users are never touched.
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
    let steps = format!(
        r#"set -eu
mkdir -p {dir}/ovl
mount -t tmpfs -o mode=0755 none {dir}/ovl
mkdir -p {dir}/ovl/upper {dir}/ovl/work
mount -t overlay overlay -o lowerdir=/etc,upperdir={dir}/ovl/upper,workdir={dir}/ovl/work /etc
rm -rf /etc/outrider
mount -t tmpfs -o mode=0755 none /opt
mount -t tmpfs -o mode=0755 none /var/log
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
# The agent runs as the user the installer made, and owns what it writes.
test "$(stat -c %U "/proc/$(cat /opt/outrider/outrider-agent.pid)")" = outrider
test "$(stat -c %U /etc/outrider/identity.key)" = outrider
test "$(stat -c %U /opt/outrider/bin/outrider-agent)" = root
i=0
until [ -n "$(ls /opt/outrider/versions 2>/dev/null)" ]; do
    i=$((i + 1)); [ "$i" -lt 600 ] || {{ echo "the agent installed no build" >&2; exit 5; }}
    sleep 0.1
done
loose=$(find /etc/outrider /opt/outrider /var/log/outrider ! -type l \( -perm /022 -o \( ! -user root ! -user outrider \) \))
[ -z "$loose" ] || {{ echo "writable by another user: $loose" >&2; exit 6; }}
sh {installer} --uninstall --service-manager none
test ! -e /opt/outrider
test ! -e /var/log/outrider
test ! -e /etc/outrider
! id -u outrider 2>/dev/null
"#,
        dir = dir.path().display(),
        installer = installer.display(),
        token = outrider_tests::ENROLLMENT_TOKEN,
        admin = server.admin_token,
        url = server.url,
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &steps])
        .output()
        .expect("run unshare (util-linux)");
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
fn further_servers_are_written_as_extra_server_urls_and_the_agent_starts_with_them() {
    let (server, _keys) = server_with_release();
    let root = root_sha256(&server);
    let install = Install::new();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let other = format!("http://{closed}");
    let mut args = install_args(&install, &root, "web");
    args.extend(["--server", server.url.as_str(), "--server", other.as_str()]);
    let out = run_installer(&server, &args);
    assert!(out.status.success(), "install failed: {}", stderr(&out));
    let toml = std::fs::read_to_string(install.prefix.join("etc/agent.toml")).unwrap();
    assert!(
        toml.contains(&format!(
            "server_url = \"{}\"\nextra_server_urls = [\"{other}\"]\n",
            server.url
        )),
        "{toml}"
    );
    // The library accepts what the installer wrote, and registers.
    wait_presence(&server, "connected");
    let out = run_installer(
        &server,
        &["--uninstall", "--prefix", install.prefix.to_str().unwrap()],
    );
    assert!(out.status.success(), "uninstall failed: {}", stderr(&out));
    wait_presence(&server, "deregistered");
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

/// A re-run trusts the root this host already has, not whatever the
/// server serves: a server with another root (other keys, same version)
/// is refused without `--root-sha256`, the installed files untouched; the
/// right server is accepted, also after a real root rotation, which the
/// installer follows through the signed chain (`roots/2.json`).
#[test]
fn a_rerun_verifies_against_the_installed_root_not_the_served_one() {
    let (server, keys) = server_with_release();
    let (other, _other_keys) = server_with_release();
    let root = root_sha256(&server);
    let install = Install::new();
    let mut args = install_args(&install, &root, "web");
    args.push("--no-service");
    let out = run_installer(&server, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    let root_json = install.prefix.join("etc/root.json");
    let toml = install.prefix.join("etc/agent.toml");
    let (root_before, toml_before) = (
        std::fs::read(&root_json).unwrap(),
        std::fs::read(&toml).unwrap(),
    );

    // The same installer options, without the pin, against a server with
    // another update root: refused, nothing changed.
    let prefix = install.prefix.to_str().unwrap();
    let unpinned = |url: &str| {
        vec![
            "--token".to_owned(),
            ENROLLMENT_TOKEN.to_owned(),
            "--server".to_owned(),
            url.to_owned(),
            "--channel".to_owned(),
            "dev".to_owned(),
            "--tags".to_owned(),
            "db".to_owned(),
            "--prefix".to_owned(),
            prefix.to_owned(),
            "--no-service".to_owned(),
        ]
    };
    let run = |url: &str| {
        let args = unpinned(url);
        run_installer(
            &server,
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    };
    let out = run(&other.url);
    let err = stderr(&out);
    assert!(!out.status.success(), "another root must be refused: {err}");
    assert!(
        err.contains("is not the update root this host trusts")
            && err.contains("--root-sha256")
            && err.contains("Nothing was installed"),
        "{err}"
    );
    assert_eq!(std::fs::read(&root_json).unwrap(), root_before, "root kept");
    assert_eq!(std::fs::read(&toml).unwrap(), toml_before, "settings kept");

    // The right server, unpinned: its root is the installed one.
    let out = run(&server.url);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is the one this host trusts"),
        "{}",
        stderr(&out)
    );

    // The operator rotates the root (version 2, signed by the old root
    // keys and the new): a re-run walks the chain and installs version 2.
    let dir = keys.dir.path().to_str().unwrap();
    server.cli(&["keys", "rotate-root", "--dir", dir, "--add", "1"]);
    server.cli(&["keys", "publish-root", "--dir", dir]);
    let out = run(&server.url);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(&root_json).unwrap(),
        std::fs::read(keys.root_json()).unwrap(),
        "the rotated root is installed"
    );
    // And the other server stays refused against the rotated root too.
    let out = run(&other.url);
    assert!(!out.status.success(), "{}", stderr(&out));
}

/// Plain http:// would hand the enrollment token and every result to the
/// network: only https://, or http:// to this host, is accepted.
#[test]
fn only_https_or_loopback_http_server_urls_are_accepted() {
    let refused = "--server must be an https:// URL";
    let userinfo = "must not carry a user name";
    let cases: &[(&str, Option<&str>)] = &[
        ("http://example.com", Some(refused)),
        ("http://example.com:8470/", Some(refused)),
        ("http://10.0.0.1:8470", Some(refused)),
        ("http://127.0.0.1.example.com", Some(refused)),
        ("http://127.0.0.256", Some(refused)),
        ("http://[::2]:8470", Some(refused)),
        ("http://localhost.example.com", Some(refused)),
        ("ftp://127.0.0.1", Some(refused)),
        ("example.com", Some(refused)),
        ("http://127.0.0.1@example.com", Some(userinfo)),
        ("https://user:pw@example.com", Some(userinfo)),
        ("https://example.invalid", None),
        ("http://127.0.0.1:9", None),
        ("http://127.1.2.3:9/", None),
        ("http://localhost:9", None),
        ("http://[::1]:9", None),
        ("http://[::1]", None),
    ];
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/install.sh");
    let dir = tempfile::tempdir().unwrap();
    for (url, expect) in cases {
        let prefix = dir.path().join("p");
        let out = Command::new("sh")
            .arg(&script)
            .args(["--token", "t", "--server", url, "--prefix"])
            .arg(&prefix)
            .args(["--service-manager", "none"])
            .output()
            .unwrap();
        let err = stderr(&out);
        assert!(!out.status.success(), "{url}: nothing serves it: {err}");
        match expect {
            Some(message) => assert!(err.contains(message), "{url} must be refused: {err}"),
            // Accepted: the installer goes on to download, and fails there.
            None => assert!(
                err.contains("cannot download") && !err.contains(refused),
                "{url} must be accepted: {err}"
            ),
        }
        assert!(!prefix.exists(), "{url}: nothing installed");
    }
    // Further `--server`s (the server's other nodes, `extra_server_urls`):
    // each passes the same check, and none may repeat another.
    let twice = "is given twice";
    let several: &[(&[&str], Option<&str>)] = &[
        (&["https://a.invalid", "http://example.com"], Some(refused)),
        (
            &["https://a.invalid", "https://u@b.invalid"],
            Some(userinfo),
        ),
        (&["https://a.invalid", "https://a.invalid/"], Some(twice)),
        (
            &[
                "https://a.invalid",
                "https://b.invalid",
                "https://b.invalid",
            ],
            Some(twice),
        ),
        (&["https://a.invalid", "https://b .invalid"], Some("spaces")),
        (&["https://a.invalid", "http://[::2]:9"], Some(refused)),
        (
            &[
                "https://a.invalid",
                "http://127.0.0.1:9",
                "http://[::1]:9",
                "https://b*?.invalid",
            ],
            None,
        ),
    ];
    for (urls, expect) in several {
        let prefix = dir.path().join("p");
        let mut command = Command::new("sh");
        command
            .arg(&script)
            .args(["--token", "t", "--prefix"])
            .arg(&prefix);
        for url in *urls {
            command.args(["--server", url]);
        }
        let out = command
            .args(["--service-manager", "none"])
            .output()
            .unwrap();
        let err = stderr(&out);
        assert!(
            !out.status.success(),
            "{urls:?}: nothing serves them: {err}"
        );
        match expect {
            Some(message) => assert!(err.contains(message), "{urls:?} must be refused: {err}"),
            // Accepted: the download from the first fails.
            None => assert!(
                err.contains("cannot download https://a.invalid/"),
                "{urls:?} must be accepted: {err}"
            ),
        }
        assert!(!prefix.exists(), "{urls:?}: nothing installed");
    }
}

#[test]
fn keys_init_prints_the_root_pin() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let out = Command::new(bin_dir().join("outrider"))
        .args(["keys", "init", "--dir"])
        .arg(&keys)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let pin = sha256_file(&keys.join("root.json"));
    assert!(
        text.contains(&format!("--root-sha256 {pin}")),
        "keys init prints the pin of the root.json it wrote ({pin}):\n{text}"
    );
}

/// The URL the served installer names, over a real socket: `--public-url`
/// wins; forwarded headers count only from a `--trusted-proxy`.
#[test]
fn the_served_installer_names_the_public_url_and_trusts_only_configured_proxies() {
    let named = |server: &TestServer, forwarded: bool| {
        let mut request = ureq::get(&format!("{}/install.sh", server.url));
        if forwarded {
            request = request
                .set("X-Forwarded-Proto", "https")
                .set("X-Forwarded-Host", "mon.example.com");
        }
        let text = request.call().unwrap().into_string().unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("DEFAULT_SERVER="))
            .expect("the script sets DEFAULT_SERVER")
            .to_owned()
    };
    let plain = TestServer::start();
    assert_eq!(named(&plain, false), format!("'{}'", plain.url));
    assert_eq!(
        named(&plain, true),
        format!("'{}'", plain.url),
        "forwarded headers from an untrusted peer are ignored"
    );
    let proxied = TestServer::start_args(&["--trusted-proxy", "127.0.0.1"]);
    assert_eq!(named(&proxied, true), "'https://mon.example.com'");
    assert_eq!(named(&proxied, false), format!("'{}'", proxied.url));
    let public = TestServer::start_args(&["--public-url", "https://outrider.example.com/"]);
    assert_eq!(named(&public, true), "'https://outrider.example.com'");
    // And the install command it prints at start names it too.
    public.proc.wait_for_log(
        "curl -sSf https://outrider.example.com/install.sh | sh -s -- --token TOKEN --root-sha256",
        secs(10),
    );
}

/// Hosts without `useradd`: the installer makes the agent's user with
/// Debian's `adduser --system` (the real one) or BusyBox's `adduser -S`
/// (Alpine), and uninstall removes it with `deluser`. Debian's busybox has
/// no user applets, so BusyBox's are stand-ins with BusyBox's exact command
/// line (short options only, `-S` and `-D` required, long options refused
/// as BusyBox refuses them), doing the work with the shadow tools. Each in a private mount namespace
/// with `/etc` behind an overlay; `useradd` and `userdel` are kept off PATH
/// (only `/usr/bin` and `/bin`, which hold neither, plus the tools below).
#[test]
fn a_root_install_creates_the_user_without_useradd() {
    assert_eq!(current_uid(), 0, "the root install test runs as root");
    let (server, _keys) = server_with_release();
    let root = root_sha256(&server);
    let dir = tempfile::tempdir().unwrap();
    let installer = fetch_installer(&server, dir.path());
    let tools: &[(&str, &[(&str, &str)])] = &[
        (
            "debian",
            &[
                ("adduser", "exec /usr/sbin/adduser \"$@\""),
                ("deluser", "exec /usr/sbin/deluser \"$@\""),
            ],
        ),
        (
            "busybox",
            &[
                ("adduser", BUSYBOX_ADDUSER),
                ("addgroup", BUSYBOX_ADDGROUP),
                (
                    "deluser",
                    "[ $# -eq 1 ] || exit 1\nexec /usr/sbin/userdel -f \"$1\"",
                ),
                (
                    "delgroup",
                    "[ $# -eq 1 ] || exit 1\nexec /usr/sbin/groupdel \"$1\"",
                ),
            ],
        ),
    ];
    for (name, fakes) in tools {
        let case = dir.path().join(name);
        let bin = case.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for (tool, body) in *fakes {
            outrider_tests::script(&bin, tool, body);
        }
        let steps = format!(
            r#"set -eu
mkdir -p {case}/ovl
mount -t tmpfs none {case}/ovl
mkdir -p {case}/ovl/upper {case}/ovl/work
mount -t overlay overlay -o lowerdir=/etc,upperdir={case}/ovl/upper,workdir={case}/ovl/work /etc
rm -rf /etc/outrider
mount -t tmpfs none /opt
mount -t tmpfs none /var/log
export PATH={bin}:/usr/bin:/bin
! command -v useradd
sh {installer} --token {token} --channel dev --root-sha256 {root} --no-service
id outrider
getent passwd outrider | cut -d: -f6,7 >{case}/passwd
stat -c %U /opt/outrider /etc/outrider/agent.toml >{case}/owners
sh {installer} --uninstall
if id -u outrider 2>/dev/null; then echo present; else echo gone; fi >{case}/after
"#,
            case = case.display(),
            bin = bin.display(),
            installer = installer.display(),
            token = ENROLLMENT_TOKEN,
        );
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &steps])
            .output()
            .expect("run unshare (util-linux)");
        assert!(
            out.status.success(),
            "{name}: root install in a mount namespace failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(&out)
        );
        let read = |f: &str| std::fs::read_to_string(case.join(f)).unwrap();
        let passwd = read("passwd");
        assert!(
            passwd.starts_with("/opt/outrider:") && passwd.contains("nologin"),
            "{name}: a system user without a login shell: {passwd}"
        );
        assert_eq!(read("owners"), "outrider\noutrider\n", "{name}");
        assert_eq!(
            read("after"),
            "gone\n",
            "{name}: uninstall removes the user"
        );
    }
}

/// BusyBox `adduser [-h DIR] [-g GECOS] [-s SHELL] [-G GRP] [-S] [-D] [-H]
/// [-u UID] [-k SKEL] USER`, as Alpine ships it.
const BUSYBOX_ADDUSER: &str = r#"for a in "$@"; do case $a in --*) echo "adduser: unrecognized option '$a'" >&2; exit 1 ;; esac; done
system=no; nopass=no; home=/home; shell=/bin/sh; group=
while getopts h:g:s:G:SDHu:k: o; do
    case $o in
        h) home=$OPTARG ;; s) shell=$OPTARG ;; G) group=$OPTARG ;;
        S) system=yes ;; D) nopass=yes ;; H) ;; g | u | k) ;;
        *) exit 1 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -eq 1 ] && [ "$system" = yes ] && [ "$nopass" = yes ] || { echo "adduser: want -S -D USER" >&2; exit 1; }
exec /usr/sbin/useradd --system --no-create-home --home-dir "$home" --shell "$shell" ${group:+--gid "$group"} "$1""#;

/// BusyBox `addgroup -S GROUP`.
const BUSYBOX_ADDGROUP: &str = r#"[ $# -eq 2 ] && [ "$1" = -S ] || { echo "addgroup: want -S GROUP" >&2; exit 1; }
exec /usr/sbin/groupadd --system "$2""#;

/// `--allow-adhoc` writes the local policy table `[policy]` with
/// `allow_adhoc = true` into a valid `agent.toml`; without it there is no
/// policy table (the agent's default, refused, applies), also on a re-run
/// that drops the flag.
#[test]
fn allow_adhoc_writes_the_local_policy_and_its_absence_writes_none() {
    let (server, _keys) = server_with_release();
    let root = root_sha256(&server);
    let install = Install::new();
    let mut args = install_args(&install, &root, "web");
    args.push("--no-service");
    let parse = || -> toml::Table {
        let text = std::fs::read_to_string(install.prefix.join("etc/agent.toml")).unwrap();
        text.parse()
            .unwrap_or_else(|e| panic!("agent.toml is not TOML: {e}\n{text}"))
    };

    let mut with_flag = args.clone();
    with_flag.push("--allow-adhoc");
    let out = run_installer(&server, &with_flag);
    assert!(out.status.success(), "{}", stderr(&out));
    let toml = parse();
    assert_eq!(
        toml["policy"]["allow_adhoc"].as_bool(),
        Some(true),
        "{toml:?}"
    );
    assert_eq!(
        toml["policy"].as_table().unwrap().len(),
        1,
        "only allow_adhoc"
    );
    assert_eq!(toml["server_url"].as_str(), Some(server.url.as_str()));
    assert_eq!(
        toml["channel"].as_str(),
        Some("dev"),
        "top-level keys stay top-level"
    );

    let out = run_installer(&server, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    let toml = parse();
    assert!(!toml.contains_key("policy"), "{toml:?}");
    assert_eq!(toml["channel"].as_str(), Some("dev"));
}
