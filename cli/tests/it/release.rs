//! `outrider release`: publish with deltas and rollout, the channel
//! operations, status and a static export served by a plain file server.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use outrider_signing::{Envelope, sha256};
use serde_json::{Value, json};

use crate::{Repo, fetch, noise, write};

const TRIPLE: &str = "x86_64-linux";

/// The current manifest payload of `channel`.
fn manifest(repo: &Repo, channel: &str) -> Value {
    let bytes = repo.get(&format!("/v1/updates/channels/{channel}/manifest.json"));
    serde_json::from_slice(Envelope::from_bytes(&bytes).unwrap().payload()).unwrap()
}

#[test]
fn channel_lifecycle_status_and_static_export() {
    let lib1 = noise(200_000, 1);
    let mut lib2 = lib1.clone();
    lib2[1000..1100].copy_from_slice(&noise(100, 2));
    let repo = Repo::start(json!([
        {"agent_version": "0.1.0", "build_sha256": sha256(&lib1).to_string(), "build_version": "1.0.0"},
        {"agent_version": "0.1.0", "build_sha256": sha256(&lib2).to_string(), "build_version": "2.0.0"},
        {"agent_version": "0.1.0", "build_sha256": sha256(&lib2).to_string(), "build_version": "2.0.0"},
    ]));
    let work = tempfile::tempdir().unwrap();
    let (p1, p2) = (
        write(work.path(), "lib1.so", &lib1),
        write(work.path(), "lib2.so", &lib2),
    );
    let keys = repo.keys();
    let keys = keys.to_str().unwrap();
    repo.cli(&["keys", "init", "--dir", keys]);
    let common = ["--keys", keys, "--target", TRIPLE];

    // 1. Publish 1.0.0, then 2.0.0 to 5%: previous, rollout and a delta.
    repo.cli(
        &[
            &[
                "release",
                "publish",
                "--channel",
                "beta",
                "--version",
                "1.0.0",
            ][..],
            &common,
            &[&p1],
        ]
        .concat(),
    );
    repo.cli(
        &[
            &[
                "release",
                "publish",
                "--channel",
                "beta",
                "--version",
                "2.0.0",
                "--percent",
                "5",
            ][..],
            &common,
            &[&p2],
        ]
        .concat(),
    );
    let m = manifest(&repo, "beta");
    let t = &m["targets"][TRIPLE];
    assert_eq!(m["sequence"], 2);
    assert_eq!(t["version"], "2.0.0");
    assert_eq!(t["previous"]["version"], "1.0.0");
    assert_eq!(t["rollout"]["basis_points"], 500);
    let salt = t["rollout"]["salt"].as_str().unwrap().to_owned();
    let delta = &t["deltas"][sha256(&lib1).to_string()];
    assert!(
        delta["size"].as_u64().unwrap() < t["artifact"]["zstd_size"].as_u64().unwrap() / 10,
        "{t:#}"
    );
    let patch = repo.get(&format!(
        "/v1/updates/blobs/{}",
        delta["sha256"].as_str().unwrap()
    ));
    assert_eq!(patch.len() as u64, delta["size"].as_u64().unwrap());

    // 2. Grow the rollout with the same cohort, then pause it.
    repo.cli(&[
        "release",
        "rollout",
        "--channel",
        "beta",
        "--percent",
        "50.5",
        "--keys",
        keys,
    ]);
    let t = manifest(&repo, "beta")["targets"][TRIPLE].clone();
    assert_eq!(
        t["rollout"],
        json!({"basis_points": 5050, "salt": salt, "paused": false})
    );
    repo.cli(&["release", "pause", "--channel", "beta", "--keys", keys]);
    let m = manifest(&repo, "beta");
    assert_eq!(m["sequence"], 4);
    assert_eq!(m["targets"][TRIPLE]["rollout"]["paused"], true);

    // 3. Promote beta to a new stable channel at 100%.
    repo.cli(&[
        "release", "promote", "--from", "beta", "--to", "stable", "--keys", keys,
    ]);
    let s = manifest(&repo, "stable");
    assert_eq!(s["sequence"], 1);
    assert_eq!(s["targets"][TRIPLE]["version"], "2.0.0");
    assert_eq!(s["targets"][TRIPLE]["rollout"], Value::Null);
    assert_eq!(
        s["targets"][TRIPLE]["deltas"],
        m["targets"][TRIPLE]["deltas"]
    );

    // 4. Roll beta back: higher sequence, older build, a delta from the bad one.
    repo.cli(&["release", "rollback", "--channel", "beta", "--keys", keys]);
    let m = manifest(&repo, "beta");
    let t = &m["targets"][TRIPLE];
    assert_eq!(m["sequence"], 5);
    assert_eq!(t["version"], "1.0.0");
    assert_eq!(t["artifact"]["sha256"], sha256(&lib1).to_string());
    assert_eq!(t["rollout"], Value::Null);
    assert!(t["deltas"][sha256(&lib2).to_string()].is_object(), "{t:#}");
    // Nothing older than 1.0.0 is recorded now.
    let out = repo.cli_output(&["release", "rollback", "--channel", "beta", "--keys", keys]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--to"));
    repo.cli(&[
        "release",
        "rollback",
        "--channel",
        "beta",
        "--to",
        "2.0.0",
        "--keys",
        keys,
    ]);
    assert_eq!(
        manifest(&repo, "beta")["targets"][TRIPLE]["version"],
        "2.0.0"
    );

    // 5. Status: versions, shares and agents per build.
    let status: Value =
        serde_json::from_str(&repo.cli(&["--json", "release", "status", "--keys", keys])).unwrap();
    let channels = status["channels"].as_array().unwrap();
    assert_eq!(channels.len(), 2);
    let beta = &channels[0];
    assert_eq!(
        (beta["channel"].as_str(), beta["sequence"].as_u64()),
        (Some("beta"), Some(6))
    );
    assert_eq!(beta["verified"], true);
    assert_eq!(beta["targets"][0]["version"], "2.0.0");
    assert_eq!(beta["targets"][0]["agents"], 2);
    assert_eq!(status["agents_by_version"], json!({"1.0.0": 1, "2.0.0": 2}));
    let text = repo.cli(&["release", "status", "--keys", keys]);
    assert!(text.contains("stable") && text.contains("2.0.0"), "{text}");

    // 6. Bad input is one sentence and exit code 64.
    let out = repo.cli_output(&[
        "release",
        "rollout",
        "--channel",
        "beta",
        "--percent",
        "0",
        "--keys",
        keys,
    ]);
    assert_eq!(out.status.code(), Some(2), "clap rejects the value");
    assert!(String::from_utf8_lossy(&out.stderr).contains("percentage"));

    // 7. Export, serve with a plain static file server, compare bytes.
    let export = tempfile::tempdir().unwrap();
    let dir = export.path().to_str().unwrap();
    let first = repo.cli(&["release", "export", "--keys", keys, dir]);
    let again = repo.cli(&["release", "export", "--keys", keys, dir]);
    assert!(again.contains("0 fetched"), "{first}\n{again}");
    let mut python = Command::new("python3")
        .args([
            "-u",
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "--directory",
            dir,
            "0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    BufReader::new(python.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
    let port: u16 = line
        .split_whitespace()
        .skip_while(|w| *w != "port")
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    let mirror = format!("http://127.0.0.1:{port}");
    for path in [
        "/v1/updates/root.json".to_owned(),
        "/v1/updates/channels/beta/manifest.json".to_owned(),
        "/v1/updates/channels/stable/manifest.json".to_owned(),
        format!("/v1/updates/blobs/{}", delta["sha256"].as_str().unwrap()),
        format!(
            "/v1/updates/blobs/{}",
            t["artifact"]["zstd_sha256"].as_str().unwrap()
        ),
    ] {
        assert_eq!(fetch(&format!("{mirror}{path}")), repo.get(&path), "{path}");
    }
    // The root chain, once the server serves it, is mirrored too.
    if let Ok(resp) = ureq::get(&format!("{}/v1/updates/roots/1.json", repo.url())).call() {
        let mut chain = Vec::new();
        std::io::Read::read_to_end(&mut resp.into_reader(), &mut chain).unwrap();
        assert_eq!(fetch(&format!("{mirror}/v1/updates/roots/1.json")), chain);
    }
    python.kill().unwrap();
    python.wait().unwrap();
}

/// `envelope` with its payload's target for [`TRIPLE`] changed to `version`
/// and `artifact`, the signatures kept: a server editing its stored history.
fn doctor(envelope: &[u8], version: &str, artifact: &Value) -> Vec<u8> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut wire: Value = serde_json::from_slice(envelope).unwrap();
    let mut payload: Value =
        serde_json::from_slice(&b64.decode(wire["payload"].as_str().unwrap()).unwrap()).unwrap();
    payload["targets"][TRIPLE]["version"] = version.into();
    payload["targets"][TRIPLE]["artifact"] = artifact.clone();
    wire["payload"] = b64.encode(serde_json::to_vec(&payload).unwrap()).into();
    serde_json::to_vec(&wire).unwrap()
}

/// An attacker who controls the server (its store, its answers) lists a build
/// of its own: in a doctored history manifest, in the unsigned builds
/// listing, as the current manifest. `rollback --to` and `promote` refuse
/// each, naming the build, and sign nothing; the genuine history from the
/// CLI's local record still works.
#[test]
fn rollback_and_promote_refuse_builds_nobody_signed() {
    let lib1 = noise(50_000, 11);
    let lib2 = noise(50_000, 12);
    let evil = noise(50_000, 666);
    let repo = Repo::start(json!([]));
    let work = tempfile::tempdir().unwrap();
    let keys = repo.keys();
    let keys = keys.to_str().unwrap();
    repo.cli(&["keys", "init", "--dir", keys]);
    for (version, lib) in [("1.0.0", &lib1), ("2.0.0", &lib2)] {
        let path = write(work.path(), &format!("{version}.so"), lib);
        repo.cli(&[
            "release",
            "publish",
            "--channel",
            "beta",
            "--version",
            version,
            "--keys",
            keys,
            "--target",
            TRIPLE,
            &path,
        ]);
    }
    // The attacker's build, uploaded as a blob so every fetch of it works.
    let blob = zstd::stream::encode_all(&evil[..], 3).unwrap();
    let evil_artifact = json!({
        "sha256": sha256(&evil).to_string(),
        "size": evil.len(),
        "zstd_sha256": sha256(&blob).to_string(),
        "zstd_size": blob.len(),
    });
    ureq::put(&format!(
        "{}/api/v1/releases/blobs/{}",
        repo.url(),
        sha256(&blob)
    ))
    .send_bytes(&blob)
    .unwrap();

    // 1. The stored history says sequence 1 was 6.6.6; the builds listing
    //    adds 7.7.7, which is in no manifest at all.
    let history: Vec<String> =
        serde_json::from_slice(&repo.get("/api/v1/releases/channels/beta/manifests")).unwrap();
    assert_eq!(history.len(), 2, "the real server serves its history");
    let forged = doctor(history[1].as_bytes(), "6.6.6", &evil_artifact);
    let forged_history = vec![
        history[0].clone(),
        String::from_utf8(forged.clone()).unwrap(),
    ];
    repo.serve_instead(
        "/api/v1/releases/channels/beta/manifests",
        serde_json::to_vec(&forged_history).unwrap(),
    );
    let mut listing: Vec<Value> = serde_json::from_slice(&repo.get(&format!(
        "/api/v1/releases/channels/beta/builds?target={TRIPLE}"
    )))
    .unwrap();
    for version in ["6.6.6", "7.7.7"] {
        listing.push(json!({"version": version, "abi_major": 1, "artifact": evil_artifact}));
    }
    repo.serve_instead(
        "/api/v1/releases/channels/beta/builds",
        serde_json::to_vec(&listing).unwrap(),
    );
    let rollback = |to: &str| {
        repo.cli_output(&[
            "release",
            "rollback",
            "--channel",
            "beta",
            "--to",
            to,
            "--keys",
            keys,
        ])
    };
    for (to, expect) in [
        (
            "6.6.6",
            "appears only in manifest sequence 1, which does not verify",
        ),
        (
            "7.7.7",
            "no manifest that verifies against the local root.json contains it",
        ),
    ] {
        let out = rollback(to);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{to} was signed: {stderr}");
        assert!(
            stderr.contains(&format!("refusing build {to} of channel beta"))
                && stderr.contains(expect),
            "{to}: {stderr}"
        );
        assert_eq!(manifest(&repo, "beta")["sequence"], 2, "nothing signed");
    }

    // 2. 1.0.0 is still signed: the local record has the genuine sequence 1.
    repo.cli(&[
        "release",
        "rollback",
        "--channel",
        "beta",
        "--to",
        "1.0.0",
        "--keys",
        keys,
    ]);
    let m = manifest(&repo, "beta");
    assert_eq!(m["sequence"], 3);
    assert_eq!(m["targets"][TRIPLE]["version"], "1.0.0");
    assert_eq!(
        m["targets"][TRIPLE]["artifact"]["sha256"],
        sha256(&lib1).to_string()
    );

    // 3. A doctored current manifest: promote refuses to copy its build.
    let current = repo.get("/v1/updates/channels/beta/manifest.json");
    repo.serve_instead(
        "/v1/updates/channels/beta/manifest.json",
        doctor(&current, "6.6.6", &evil_artifact),
    );
    let out = repo.cli_output(&[
        "release", "promote", "--from", "beta", "--to", "stable", "--keys", keys,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("refusing the current manifest of channel beta (sequence 3, build(s) 6.6.6 for x86_64-linux)"),
        "{stderr}"
    );
    let stable = ureq::get(&format!(
        "{}/v1/updates/channels/stable/manifest.json",
        repo.url()
    ))
    .call();
    assert!(
        matches!(stable, Err(ureq::Error::Status(404, _))),
        "promote signed nothing"
    );
}
