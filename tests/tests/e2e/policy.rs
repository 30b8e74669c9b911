//! The host's `[policy]` against a server that wants to run a shell: what
//! a stolen admin token allows, through the real binaries (see
//! `agent-lib/src/policy.rs` and `docs/updates.md`).

use outrider_tests::{
    ENROLLMENT_TOKEN, Keys, LISTENERS_OFF, TestAgent, TestServer, agent_library, secs, wait_until,
};
use serde_json::Value;

/// The connected agent tagged `tag`.
fn fingerprint_of(server: &TestServer, tag: &str) -> String {
    wait_until("the agent registers", secs(90), || {
        server.agents().into_iter().find_map(|a| {
            let tagged = a["tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t == tag));
            (tagged && a["presence"] == "connected")
                .then(|| a["fingerprint"].as_str().unwrap().to_owned())
        })
    })
}

fn agent_toml(server: &TestServer, tag: &str, policy: &str) -> String {
    format!(
        "server_url = \"{}\"\nenrollment_token = \"{ENROLLMENT_TOKEN}\"\nchannel = \"dev\"\n\
         {LISTENERS_OFF}\ntags = [\"{tag}\"]\n{policy}",
        server.url
    )
}

/// `outrider run FP ARGS…` as JSON, or its stderr when it fails.
fn run_now(server: &TestServer, fp: &str, args: &[&str]) -> Result<Value, String> {
    let mut all = vec!["--json", "run", fp];
    all.extend_from_slice(args);
    let out = server.cli_output(&all);
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).expect("JSON answer"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn default_policy_refuses_a_shell_from_the_server_and_adhoc_scripts() {
    let server = TestServer::start();
    let keys = Keys::init();
    server.publish(&keys, "dev", &agent_library());
    let work = tempfile::tempdir().unwrap();
    let pwned = work.path().join("pwned");
    let touch = format!("touch {}", pwned.display());
    // What the holder of the admin token does: a check running a shell on
    // every host.
    server.add_check("attack", 1, &["/bin/sh", "-c", &touch]);
    let script = work.path().join("adhoc.sh");
    std::fs::write(&script, format!("{touch}.adhoc\n")).unwrap();
    let script = script.to_str().unwrap();

    // A host installed with the defaults: no [policy] in agent.toml.
    let victim = TestAgent::start_toml(&keys, &agent_toml(&server, "victim", ""), &[]);
    let fp = fingerprint_of(&server, "victim");
    let scheduled = wait_until("the attack check reports", secs(60), || {
        server
            .latest_results()
            .into_iter()
            .find(|r| r["agent"] == fp.as_str() && r["check"] == "attack")
    });
    assert_eq!(scheduled["state"], "UNKNOWN", "{scheduled}");
    let summary = scheduled["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("refused by local policy: \"/bin/sh\""),
        "{scheduled}"
    );
    // Run now: refused the same way.
    let now = run_now(&server, &fp, &["attack"]).expect("run-now answers");
    assert_eq!(now["result"]["state"], "UNKNOWN", "{now}");
    assert!(
        now["result"]["summary"]
            .as_str()
            .unwrap()
            .starts_with("refused by local policy"),
        "{now}"
    );
    // Ad-hoc: the server allows it, the host does not; the answer says why.
    server.cli(&["agents", "allow-adhoc", &fp, "on"]);
    let adhoc = run_now(&server, &fp, &["--script", script]).unwrap_err();
    assert!(
        adhoc.contains("refused by local policy") && adhoc.contains("allow_adhoc"),
        "{adhoc}"
    );
    drop(victim);
    assert!(!pwned.exists(), "the check's shell never ran");
    assert!(
        !work.path().join("pwned.adhoc").exists(),
        "the ad-hoc script never ran"
    );

    // The same server orders on a host whose policy allows them do run:
    // the refusals above are the policy's doing.
    let policy = "[policy]\nallow_adhoc = true\nallowed_commands = [\"/bin\", \"/usr/bin\"]\n";
    let _open = TestAgent::start_toml(&keys, &agent_toml(&server, "open", policy), &[]);
    let fp = fingerprint_of(&server, "open");
    wait_until("the permitted check runs", secs(60), || {
        pwned.exists().then_some(())
    });
    server.cli(&["agents", "allow-adhoc", &fp, "on"]);
    let ran = run_now(&server, &fp, &["--script", script]).expect("the script runs");
    assert_eq!(ran["result"]["state"], "OK", "{ran}");
    assert!(work.path().join("pwned.adhoc").exists());
}
