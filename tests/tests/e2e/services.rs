//! The installer's service definitions and its service-manager detection,
//! for each of systemd, OpenRC, SysV and none.
//!
//! Each case is a real root install by the served `install.sh`, in a
//! private mount namespace: tmpfs over `/opt`, `/var/log` and `/run`, and
//! `/etc` behind an overlay, so nothing of the host changes. The detection
//! inputs are faked: the service directories live under a fake tree
//! (`OUTRIDER_TEST_SERVICE_ROOT`, see `set_service_paths` in
//! `packaging/install.sh`), and the managers' tools are scripts on PATH
//! that record how they were called. The SysV script is the real one and
//! really runs the agent; the written systemd unit goes through
//! `systemd-analyze verify`, the OpenRC and SysV scripts through
//! shellcheck.
//!
//! A root install runs the agent as the system user `outrider` (made in
//! the overlaid `/etc`): the systemd unit sandboxes it, the OpenRC script
//! names it, and under the real SysV script the stub, an uploaded plugin
//! and the built-in checks run as it, with nothing they execute writable by
//! another user.

use std::path::Path;
use std::process::Command;

use outrider_tests::{ENROLLMENT_TOKEN, Keys, TestServer, agent_library, bin_dir, script};

/// One detection case: what exists, and what the installer must pick.
struct Case {
    expect: &'static str,
    /// Directories under the fake service root.
    dirs: &'static [&'static str],
    /// Tools put on PATH (each records its arguments).
    tools: &'static [&'static str],
}

/// `update-rc.d` is faked in every case: the host's real one would register
/// the script in the host's runlevels.
const CASES: &[Case] = &[
    Case {
        expect: "systemd",
        dirs: &["run/systemd/system", "etc/systemd/system", "etc/init.d"],
        tools: &["systemctl", "update-rc.d"],
    },
    Case {
        expect: "openrc",
        dirs: &["etc/init.d"],
        tools: &["openrc-run", "rc-update", "rc-service", "update-rc.d"],
    },
    Case {
        expect: "sysv",
        dirs: &["etc/init.d"],
        tools: &["update-rc.d"],
    },
    Case {
        expect: "none",
        dirs: &[],
        tools: &["update-rc.d"],
    },
];

#[test]
fn the_installer_detects_each_service_manager_and_writes_valid_definitions() {
    assert_eq!(current_uid(), 0, "the root install runs as root (CI does)");
    let server = TestServer::start();
    let keys = Keys::init();
    server.publish_as(&keys, "dev", &agent_library(), "1.0.0-services");
    let stub = bin_dir().join("outrider-agent");
    server.cli(&[
        "release",
        "publish-stub",
        "--channel",
        "dev",
        "--keys",
        keys.dir.path().to_str().unwrap(),
        stub.to_str().unwrap(),
    ]);
    let root_sha = outrider_tests::sha256_file(&keys.root_json());
    // What the SysV case proves runs unprivileged: a plugin that says who
    // runs it, and the built-in checks.
    let plugins = tempfile::tempdir().unwrap();
    let whoami = script(
        plugins.path(),
        "check_whoami",
        "echo \"OK - running as $(id -un)\"",
    );
    server.cli(&["plugins", "add", whoami.to_str().unwrap()]);
    server.cli(&[
        "checks",
        "add",
        "whoami",
        "--plugin",
        "check_whoami",
        "--interval-secs",
        "1",
    ]);
    for builtin in BUILTINS {
        server.add_check(builtin, 1, &[&format!("builtin:{builtin}")]);
    }
    let work = tempfile::tempdir().unwrap();
    let installer = work.path().join("install.sh");
    let text = ureq::get(&format!("{}/install.sh", server.url))
        .call()
        .expect("GET /install.sh")
        .into_string()
        .unwrap();
    std::fs::write(&installer, text).unwrap();

    for case in CASES {
        let dir = tempfile::tempdir_in(work.path()).unwrap();
        let fake = dir.path().join("root");
        for d in case.dirs {
            std::fs::create_dir_all(fake.join(d)).unwrap();
        }
        let tools = dir.path().join("bin");
        std::fs::create_dir_all(&tools).unwrap();
        let calls = dir.path().join("calls.log");
        for tool in case.tools {
            script(
                &tools,
                tool,
                &format!("echo \"{tool} $*\" >>{}", calls.display()),
            );
        }
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(case_steps(case, dir.path(), &installer, &server, &root_sha))
            .output()
            .expect("run unshare (util-linux)");
        let calls = std::fs::read_to_string(&calls).unwrap_or_default();
        assert!(
            out.status.success(),
            "{}: install/uninstall in a mount namespace failed:\n{}{}\ntool calls:\n{calls}",
            case.expect,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let record = std::fs::read_to_string(dir.path().join("install.record")).unwrap();
        assert!(
            record
                .lines()
                .any(|l| l == format!("service_manager={}", case.expect)),
            "{}: the installer picked another manager: {record}",
            case.expect
        );
        let expected_calls: &[&str] = match case.expect {
            "systemd" => &[
                "systemctl daemon-reload",
                "systemctl enable outrider-agent.service",
                "systemctl restart outrider-agent.service",
                "systemctl disable --now outrider-agent.service",
            ],
            "openrc" => &[
                "rc-update add outrider-agent default",
                "rc-service outrider-agent restart",
                "rc-service outrider-agent stop",
                "rc-update del outrider-agent default",
            ],
            "sysv" => &[
                "update-rc.d outrider-agent defaults",
                "update-rc.d -f outrider-agent remove",
            ],
            _ => &[],
        };
        let lines: Vec<&str> = calls.lines().collect();
        for call in expected_calls {
            assert!(
                lines.contains(call),
                "{}: expected the call `{call}`; calls were:\n{calls}",
                case.expect
            );
        }
        if case.expect == "none" {
            assert!(calls.is_empty(), "none calls no manager: {calls}");
        }
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
        match case.expect {
            "systemd" => {
                let unit = read("service");
                for line in [
                    "User=outrider",
                    "Group=outrider",
                    "NoNewPrivileges=yes",
                    "ProtectSystem=strict",
                    "ReadWritePaths=/etc/outrider /opt/outrider /var/log/outrider",
                    "PrivateTmp=yes",
                    "ProtectHome=read-only",
                ] {
                    assert!(
                        unit.lines().any(|l| l == line),
                        "the unit lacks {line}:\n{unit}"
                    );
                }
            }
            "openrc" => {
                let script = read("service");
                assert!(
                    script.contains("command_user=\"outrider:outrider\""),
                    "{script}"
                );
            }
            "sysv" => check_sysv_runs_unprivileged(dir.path()),
            _ => {}
        }
        assert_eq!(
            read("user.after"),
            "gone\n",
            "{}: uninstall removes the user it made",
            case.expect
        );
    }
}

/// The shell steps of one case, run inside the private mount namespace.
/// The written service definition is copied to `dir/service` for the
/// checks below, which run inside too (the unit's ExecStart must exist).
fn case_steps(
    case: &Case,
    dir: &Path,
    installer: &Path,
    server: &TestServer,
    root_sha: &str,
) -> String {
    let check = match case.expect {
        "systemd" => format!(
            r#"unit=$OUTRIDER_TEST_SERVICE_ROOT/etc/systemd/system/outrider-agent.service
systemd-analyze verify "$unit"
# The verifier is not vacuous: the same unit with a missing program fails.
sed 's|^ExecStart=.*|ExecStart=/nonexistent/outrider-agent|' "$unit" >{dir}/broken.service
if systemd-analyze verify {dir}/broken.service 2>/dev/null; then echo "verify passed a broken unit" >&2; exit 5; fi
cp "$unit" {dir}/service
"#,
            dir = dir.display()
        ),
        "openrc" => format!(
            "script=$OUTRIDER_TEST_SERVICE_ROOT/etc/init.d/outrider-agent\nshellcheck --shell=sh --severity=style \"$script\"\ncp \"$script\" {dir}/service\n",
            dir = dir.display()
        ),
        "sysv" => format!(
            r#"script=$OUTRIDER_TEST_SERVICE_ROOT/etc/init.d/outrider-agent
shellcheck --shell=sh --severity=style "$script"
# The real SysV script started the agent: it connects, and says so.
i=0
until curl -sf -H "Authorization: Bearer {admin}" {url}/api/v1/agents | grep -q '"connected"'; do
    i=$((i + 1)); [ "$i" -lt 600 ] || {{ echo "the agent under the SysV script never connected" >&2; exit 4; }}
    sleep 0.1
done
"$script" status
# Who runs the stub (the supervising loop's child), and a result of each check.
stat -c %U "/proc/$(pgrep -P "$(cat /run/outrider-agent.pid)" | head -n 1)" >{dir}/stub.user
all_results() {{
    r=$(curl -sf -H "Authorization: Bearer {admin}" {url}/api/v1/results/latest) || return 1
    for c in whoami {builtins}; do
        printf '%s' "$r" | grep -q "\"check\":\"$c\"" || return 1
    done
    printf '%s' "$r" >{dir}/results.json
}}
i=0
until all_results; do
    i=$((i + 1)); [ "$i" -lt 600 ] || {{ echo "no result of every check from the SysV agent" >&2; exit 6; }}
    sleep 0.1
done
# Nothing under the agent's paths is writable by group or others, and all
# of it is root's or the agent's; the stub is root's.
find /etc/outrider /opt/outrider /var/log/outrider ! -type l \( -perm /022 -o \( ! -user root ! -user outrider \) \) >{dir}/loose.txt
stat -c %U /opt/outrider/bin/outrider-agent >{dir}/bin.owner
"#,
            admin = server.admin_token,
            url = server.url,
            builtins = BUILTINS.join(" "),
            dir = dir.display(),
        ),
        _ => String::new(),
    };
    format!(
        r#"set -eu
mkdir -p {dir}/ovl
mount -t tmpfs none {dir}/ovl
mkdir -p {dir}/ovl/upper {dir}/ovl/work
mount -t overlay overlay -o lowerdir=/etc,upperdir={dir}/ovl/upper,workdir={dir}/ovl/work /etc
mount -t tmpfs none /opt
mount -t tmpfs none /var/log
mount -t tmpfs none /run
export OUTRIDER_TEST_SERVICE_ROOT={fake}
export PATH={tools}:$PATH
stop_all() {{
    for f in /opt/outrider/outrider-agent.pid /run/outrider-agent.pid; do
        [ -f "$f" ] && kill -KILL "$(cat "$f")" 2>/dev/null
    done
    return 0
}}
trap stop_all EXIT
sh {installer} --token {ENROLLMENT_TOKEN} --channel dev --root-sha256 {root_sha}
cp /opt/outrider/install.record {dir}/install.record
{check}
sh {installer} --uninstall
test ! -e /opt/outrider
test ! -e "$OUTRIDER_TEST_SERVICE_ROOT/etc/systemd/system/outrider-agent.service"
test ! -e "$OUTRIDER_TEST_SERVICE_ROOT/etc/init.d/outrider-agent"
if id -u outrider >/dev/null 2>&1; then echo present; else echo gone; fi >{dir}/user.after
"#,
        dir = dir.display(),
        fake = dir.join("root").display(),
        tools = dir.join("bin").display(),
        installer = installer.display(),
    )
}

/// The real user id, from `id -u`.
fn current_uid() -> u32 {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The built-in checks that must keep working unprivileged.
const BUILTINS: &[&str] = &[
    "cpu",
    "memory",
    "swap",
    "disk",
    "load",
    "network",
    "processes",
    "uptime",
];

/// What the SysV case recorded: the stub runs as `outrider`, so do the
/// plugin and the built-ins (each reports, none refused), and the agent's
/// files are its own or root's, writable by no one else.
fn check_sysv_runs_unprivileged(dir: &Path) {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    assert_eq!(
        read("stub.user").trim(),
        "outrider",
        "the stub runs as outrider"
    );
    assert_eq!(
        read("bin.owner").trim(),
        "root",
        "the stub binary is root's"
    );
    assert_eq!(read("loose.txt"), "", "files writable by another user");
    let results: serde_json::Value = serde_json::from_str(&read("results.json")).unwrap();
    let of = |check: &str| {
        results
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["check"] == check)
            .cloned()
            .unwrap_or_else(|| panic!("no result of {check}: {results}"))
    };
    let whoami = of("whoami");
    assert_eq!(whoami["state"], "OK", "{whoami}");
    assert!(
        whoami["summary"]
            .as_str()
            .unwrap_or_default()
            .contains("running as outrider"),
        "plugins run as outrider: {whoami}"
    );
    for builtin in BUILTINS {
        let result = of(builtin);
        assert_ne!(
            result["state"], "UNKNOWN",
            "{builtin} works unprivileged: {result}"
        );
    }
}
