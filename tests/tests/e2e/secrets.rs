//! Files and secrets through the real binaries: the server refuses a token
//! file others can read and keeps its data directory private, reads
//! tokens from files, and the CLI never prints an agent's control
//! characters raw (see `server/src/auth.rs`, `cli/src/output.rs`).

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use outrider_tests::{
    Keys, TestAgent, TestServer, agent_library, bin_dir, script, secs, wait_until,
};
use serde_json::Value;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Runs `outrider-server` on `data` until it exits (bounded) or writes its
/// ready file; returns its output if it exited, after killing it if not.
fn server_run(
    data: &std::path::Path,
    ready: &std::path::Path,
    env: &[(&str, &str)],
) -> Option<Output> {
    let mut child = Command::new(bin_dir().join("outrider-server"))
        .arg("--data-dir")
        .arg(data)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--dashboard-listen",
            "127.0.0.1:0",
        ])
        .arg("--ready-file")
        .arg(ready)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run outrider-server");
    let deadline = Instant::now() + secs(20);
    loop {
        if child.try_wait().unwrap().is_some() {
            return Some(child.wait_with_output().unwrap());
        }
        if ready.exists() {
            child.kill().unwrap();
            child.wait().unwrap();
            return None;
        }
        assert!(
            Instant::now() < deadline,
            "the server neither started nor exited"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_token_file_others_can_read_stops_the_server_and_its_data_dir_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let admin = data.join("admin.token");
    std::fs::write(&admin, "an-admin-token-that-leaked\n").unwrap();
    std::fs::set_permissions(&admin, std::fs::Permissions::from_mode(0o644)).unwrap();
    // The enrollment token comes from a file named in the environment.
    let given = dir.path().join("enroll.token");
    std::fs::write(&given, "from-a-file\n").unwrap();
    std::fs::set_permissions(&given, std::fs::Permissions::from_mode(0o600)).unwrap();
    let env = [("OUTRIDER_ENROLLMENT_TOKEN_FILE", given.to_str().unwrap())];
    let ready = dir.path().join("ready");

    let out = server_run(&data, &ready, &env).expect("the server refuses to start");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&admin.display().to_string())
            && stderr.contains("mode 0644")
            && stderr.contains("chmod 600"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(&admin).unwrap(),
        "an-admin-token-that-leaked\n",
        "nothing stored is lost"
    );

    std::fs::set_permissions(&admin, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(
        server_run(&data, &ready, &env).is_none(),
        "starts once fixed"
    );
    assert_eq!(mode(&data), 0o700, "the data directory was made private");
    assert_eq!(
        std::fs::read_to_string(data.join("enrollment.token"))
            .unwrap()
            .trim(),
        "from-a-file"
    );
    assert_eq!(mode(&data.join("enrollment.token")), 0o600);
}

#[test]
fn the_cli_prints_an_agents_control_characters_neutralised() {
    let server = TestServer::start();
    let keys = Keys::init();
    server.publish(&keys, "dev", &agent_library());
    let plugins = tempfile::tempdir().unwrap();
    // ESC sequences (colour, clear screen), a CR rewriting the line, an
    // 8-bit CSI and a right-to-left override.
    let plugin = script(
        plugins.path(),
        "check_hostile",
        r"printf 'OK \033[31mred\033[0m\033[2J fake\rCRITICAL \302\23331m \342\200\256desrever\n'",
    );
    server.add_check("hostile", 1, &[plugin.to_str().unwrap()]);
    let _agent = TestAgent::start(&server, &keys, "dev");
    wait_until("the hostile result", secs(60), || {
        server
            .latest_results()
            .into_iter()
            .find(|r| r["check"] == "hostile")
    });
    let table = server.cli(&["checks", "results"]);
    let line = table
        .lines()
        .find(|l| l.contains("hostile"))
        .expect("a row for the check");
    assert!(
        line.contains("OK ?[31mred?[0m?[2J fake?CRITICAL ?31m ?desrever"),
        "{line:?}"
    );
    let raw_control = |text: &str| {
        text.chars()
            .any(|c| (c.is_control() && c != '\n') || c == '\u{202e}')
    };
    assert!(!raw_control(&table), "{table:?}");
    // JSON keeps the data exactly, escaped.
    let json = server.cli(&["--json", "checks", "results"]);
    assert!(!raw_control(&json), "{json:?}");
    let rows: Value = serde_json::from_str(&json).unwrap();
    let summary = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["check"] == "hostile")
        .unwrap()["summary"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        summary.contains('\u{1b}') && summary.contains('\u{202e}'),
        "{summary:?}"
    );
}
