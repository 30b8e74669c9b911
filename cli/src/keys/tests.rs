//! `outrider keys` on temp directories, and `publish-root` against a minimal
//! in-process repository that, like the real one, accepts only successors.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use outrider_signing::{
    Channel, Error as SigningError, ManifestPolicy, ReleaseManifest, make_manifest,
    verify_manifest, walk_roots,
};

use super::*;

fn opts(root_keys: u32, threshold: u32, release_threshold: u32) -> InitOptions {
    InitOptions {
        root_keys,
        threshold,
        release_threshold,
    }
}

fn usage(err: &anyhow::Error) -> &str {
    &err.downcast_ref::<UsageError>()
        .unwrap_or_else(|| panic!("not a usage error: {err:#}"))
        .0
}

fn root_json(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join(ROOT_FILE)).unwrap()
}

fn version_file(dir: &Path, version: u64) -> Vec<u8> {
    std::fs::read(dir.join(ROOTS_DIR).join(format!("{version}.json"))).unwrap()
}

/// What a client installed with version 1 trusts after walking `dir`'s chain.
fn walk_from_first(dir: &Path) -> TrustedRoot {
    let first = TrustedRoot::from_bytes_self_signed(&version_file(dir, 1), now_unix()).unwrap();
    walk_roots(
        &first,
        |v| {
            Ok::<_, std::io::Error>(
                std::fs::read(dir.join(ROOTS_DIR).join(format!("{v}.json"))).ok(),
            )
        },
        now_unix(),
    )
    .unwrap()
}

fn key_in(dir: &Path, id: &KeyId) -> KeyPair {
    let (local, _) = local_keys(dir).unwrap();
    local
        .into_iter()
        .find(|l| l.key.key_id() == *id)
        .unwrap()
        .key
}

#[test]
fn init_creates_a_verifiable_root_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    init(&keys, &opts(1, 1, 1)).unwrap();
    let root_key = KeyPair::read(&keys.join(ROOT_KEY_FILE)).unwrap();
    let release_key = KeyPair::read(&keys.join(RELEASE_KEY_FILE)).unwrap();
    let trusted = load_root(&keys, now_unix()).unwrap();
    assert!(trusted.root().root_keys.contains_key(&root_key.key_id()));
    assert!(
        trusted
            .root()
            .release_keys
            .contains_key(&release_key.key_id())
    );
    assert_eq!(root_json(&keys), version_file(&keys, 1));

    let err = init(&keys, &opts(1, 1, 1)).unwrap_err();
    assert!(usage(&err).contains("refusing to overwrite"), "{err:#}");
    list(&keys).unwrap();
}

#[test]
fn init_with_thresholds_writes_every_key() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), &opts(3, 2, 2)).unwrap();
    let root = load_root(dir.path(), now_unix()).unwrap();
    let r = root.root();
    assert_eq!((r.root_keys.len(), r.root_threshold), (3, 2));
    assert_eq!((r.release_keys.len(), r.release_threshold), (2, 2));
    for i in 1..=3 {
        let key = KeyPair::read(&dir.path().join(format!("root-{i}.key"))).unwrap();
        assert!(r.root_keys.contains_key(&key.key_id()));
    }
    assert_eq!(local_keys(dir.path()).unwrap().0.len(), 5);

    for bad in [opts(0, 1, 1), opts(2, 3, 1), opts(2, 0, 1), opts(1, 1, 0)] {
        let other = tempfile::tempdir().unwrap();
        let err = init(other.path(), &bad).unwrap_err();
        usage(&err);
    }
}

#[test]
fn add_and_revoke_release_keys() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    init(dir, &opts(1, 1, 1)).unwrap();
    let first = KeyPair::read(&dir.join(RELEASE_KEY_FILE)).unwrap();
    let err = revoke_release_key(dir, first.key_id().as_str(), None).unwrap_err();
    assert!(usage(&err).contains("only release key"), "{err:#}");

    let added = add_release_key(dir, 30, None).unwrap();
    assert!(
        dir.join(format!("release-{}.key", &added.as_str()[..SHORT_ID_LEN]))
            .exists()
    );
    assert_eq!(root_json(dir), version_file(dir, 2));
    let walked = walk_from_first(dir);
    assert_eq!(walked.root().version, 2);

    // A manifest signed by the new key verifies after the walk.
    let channel: Channel = "stable".parse().unwrap();
    let policy = ManifestPolicy {
        channel: &channel,
        now_unix: now_unix(),
        floor: None,
    };
    let manifest = ReleaseManifest::new(
        channel.clone(),
        1,
        now_unix() + DAY_SECS,
        Default::default(),
    );
    let by_added = make_manifest(&manifest, &[&key_in(dir, &added)])
        .unwrap()
        .to_bytes();
    verify_manifest(&walked, &by_added, &policy).unwrap();

    // Revoke the first key by a prefix of its id: version 3, and its
    // manifests no longer verify.
    let prefix = first.key_id().as_str()[..10].to_owned();
    revoke_release_key(dir, &prefix, None).unwrap();
    let walked = walk_from_first(dir);
    assert_eq!(walked.root().version, 3);
    assert!(!walked.root().release_keys.contains_key(&first.key_id()));
    let by_first = make_manifest(&manifest, &[&first]).unwrap().to_bytes();
    let err = verify_manifest(&walked, &by_first, &policy).unwrap_err();
    assert!(
        matches!(err, SigningError::BelowThreshold { have: 0, .. }),
        "{err:?}"
    );
    // The revoked key file stays, flagged by `list`.
    assert!(dir.join(RELEASE_KEY_FILE).exists());
    list(dir).unwrap();

    let err = revoke_release_key(dir, "ffffffffffff", None).unwrap_err();
    assert!(usage(&err).contains("no release key"), "{err:#}");
    let err = add_release_key(dir, 30, Some(3)).unwrap_err();
    assert!(usage(&err).contains("impossible"), "{err:#}");
    // Nothing was written by the refused commands.
    assert!(!dir.join(ROOTS_DIR).join("4.json").exists());
}

#[test]
fn rotate_root_needs_old_and_new_thresholds() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    init(dir, &opts(1, 1, 1)).unwrap();
    let old = KeyPair::read(&dir.join(ROOT_KEY_FILE)).unwrap();

    // 1-of-{old} → 2-of-{new a, new b}.
    rotate_root(dir, 2, &[old.key_id().as_str()[..12].to_owned()], Some(2)).unwrap();
    let walked = walk_from_first(dir);
    let r = walked.root();
    assert_eq!((r.version, r.root_threshold, r.root_keys.len()), (2, 2, 2));
    assert!(!r.root_keys.contains_key(&old.key_id()));
    for id in r.root_keys.keys() {
        assert!(
            dir.join(format!("root-{}.key", &id.as_str()[..SHORT_ID_LEN]))
                .exists()
        );
    }

    // Lose one of the new root keys: below the threshold of the current root.
    let lost = r.root_keys.keys().next().unwrap().clone();
    std::fs::remove_file(dir.join(format!("root-{}.key", &lost.as_str()[..SHORT_ID_LEN]))).unwrap();
    let err = rotate_root(dir, 1, &[], None).unwrap_err();
    assert!(
        usage(&err).contains("current root (version 2) needs 2"),
        "{err:#}"
    );
    let err = add_release_key(dir, 30, None).unwrap_err();
    usage(&err);
    assert!(!dir.join(ROOTS_DIR).join("3.json").exists());

    let err = rotate_root(dir, 0, &[], None).unwrap_err();
    assert!(usage(&err).contains("nothing to rotate"), "{err:#}");
    let err = rotate_root(dir, 0, &[], Some(3)).unwrap_err();
    assert!(usage(&err).contains("impossible"), "{err:#}");
}

#[test]
fn load_chain_repairs_an_interrupted_write_and_refuses_a_broken_chain() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    init(dir, &opts(1, 1, 1)).unwrap();
    let v1 = root_json(dir);
    add_release_key(dir, 30, None).unwrap();
    let v2 = root_json(dir);

    // roots/2.json written, root.json not yet: brought up to date.
    std::fs::write(dir.join(ROOT_FILE), &v1).unwrap();
    assert_eq!(load_chain(dir).unwrap().newest.root().version, 2);
    assert_eq!(root_json(dir), v2);

    // A directory from before roots/ existed gets roots/1.json.
    let legacy = tempfile::tempdir().unwrap();
    init(legacy.path(), &opts(1, 1, 1)).unwrap();
    std::fs::remove_dir_all(legacy.path().join(ROOTS_DIR)).unwrap();
    assert_eq!(load_chain(legacy.path()).unwrap().envelopes.len(), 1);
    assert!(legacy.path().join(ROOTS_DIR).join("1.json").exists());

    // A version 2 not signed by version 1's keys breaks the chain.
    let other = tempfile::tempdir().unwrap();
    init(other.path(), &opts(1, 1, 1)).unwrap();
    add_release_key(other.path(), 30, None).unwrap();
    std::fs::write(
        dir.join(ROOTS_DIR).join("2.json"),
        version_file(other.path(), 2),
    )
    .unwrap();
    let err = load_chain(dir).unwrap_err();
    assert!(usage(&err).contains("does not follow"), "{err:#}");
}

/// A repository on loopback serving `GET /v1/updates/root.json` and
/// accepting `PUT /api/v1/releases/root` only for the successor of its
/// current root, like the update server. Returns the base URL and the
/// stored versions.
fn fake_server(initial: Option<Vec<u8>>) -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let roots = Arc::new(Mutex::new(initial.into_iter().collect::<Vec<_>>()));
    let stored = roots.clone();
    // Detached on purpose: it blocks in accept() until the test process exits.
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let (mut len, mut header) = (0usize, String::new());
            while reader.read_line(&mut header).unwrap() > 2 {
                if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                header.clear();
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            let mut roots = stored.lock().unwrap();
            let (status, reply) = if line.starts_with("GET /v1/updates/root.json") {
                match roots.last() {
                    Some(bytes) => ("200 OK", bytes.clone()),
                    None => ("404 Not Found", b"{\"error\":\"none\"}".to_vec()),
                }
            } else if line.starts_with("PUT /api/v1/releases/root") {
                let accepted = match roots.last() {
                    None => TrustedRoot::from_bytes_self_signed(&body, now_unix()).map(drop),
                    Some(current) => TrustedRoot::from_bytes_self_signed(current, 0)
                        .and_then(|c| c.successor(&body))
                        .map(drop),
                };
                match accepted {
                    Ok(()) => {
                        roots.push(body);
                        ("200 OK", b"{\"ok\":true}".to_vec())
                    }
                    Err(e) => (
                        "400 Bad Request",
                        serde_json::to_vec(&serde_json::json!({ "error": e.to_string() })).unwrap(),
                    ),
                }
            } else {
                ("404 Not Found", b"{}".to_vec())
            };
            drop(roots);
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                reply.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&reply);
        }
    });
    (base, roots)
}

#[test]
fn publish_root_uploads_every_missing_version_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    init(dir, &opts(1, 1, 1)).unwrap();
    add_release_key(dir, 30, None).unwrap();
    rotate_root(dir, 1, &[], Some(2)).unwrap();
    add_release_key(dir, 30, None).unwrap();

    // The server is at version 2; the keys directory at 4.
    let (base, stored) = fake_server(Some(version_file(dir, 1)));
    stored.lock().unwrap().push(version_file(dir, 2));
    let client = ApiClient::new(&base, "token".to_owned());
    publish_root(dir, &client).unwrap();
    let expected: Vec<Vec<u8>> = (1..=4).map(|v| version_file(dir, v)).collect();
    assert_eq!(*stored.lock().unwrap(), expected);
    // Again: nothing to do.
    publish_root(dir, &client).unwrap();
    assert_eq!(stored.lock().unwrap().len(), 4);

    // An empty server gets the whole chain; a foreign one is refused.
    let (base, stored) = fake_server(None);
    publish_root(dir, &ApiClient::new(&base, "t".to_owned())).unwrap();
    assert_eq!(*stored.lock().unwrap(), expected);
    let other = tempfile::tempdir().unwrap();
    init(other.path(), &opts(1, 1, 1)).unwrap();
    let (base, _) = fake_server(Some(version_file(other.path(), 1)));
    let err = publish_root(dir, &ApiClient::new(&base, "t".to_owned())).unwrap_err();
    assert!(usage(&err).contains("another keys directory"), "{err:#}");
}
