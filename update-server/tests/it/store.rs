//! [`ReleaseStore`] on a real directory.

use outrider_signing::{Channel, Envelope, KeyPair, KeyRole, make_root, now_unix, sha256};
use outrider_update_server::{Error, ReleaseStore};

use crate::{DAY, Keys, build};

fn stable() -> Channel {
    "stable".parse().unwrap()
}

#[test]
fn publishes_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::generate();
    let blob = b"zstd blob one".to_vec();
    let manifest = keys.manifest("stable", 1, &blob);
    {
        let store = ReleaseStore::open(dir.path()).unwrap();
        assert_eq!(store.root().unwrap(), None);
        store.put_root(&keys.root_json).unwrap();
        store.put_root(&keys.root_json).unwrap(); // idempotent
        store.put_blob(&sha256(&blob), &blob).unwrap();
        store.put_blob(&sha256(&blob), &blob).unwrap(); // idempotent
        assert_eq!(store.put_manifest(&stable(), &manifest).unwrap(), 1);
        assert_eq!(store.put_manifest(&stable(), &manifest).unwrap(), 1); // same bytes again: no-op
    }
    let store = ReleaseStore::open(dir.path()).unwrap();
    assert_eq!(store.root().unwrap().unwrap(), keys.root_json);
    assert_eq!(store.manifest(&stable()).unwrap().unwrap(), manifest);
    let path = store.blob_path(&sha256(&blob)).unwrap();
    assert_eq!(std::fs::read(path).unwrap(), blob);
    assert_eq!(store.blob_path(&sha256(b"other")), None);

    let channels = store.channels().unwrap();
    assert_eq!(channels.len(), 1);
    assert_eq!(channels[0].channel, stable());
    assert_eq!(channels[0].sequence, 1);
    assert_eq!(channels[0].versions["x86_64-linux"], "1.0.1");
}

#[test]
fn manifest_needs_root_blobs_and_higher_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let store = ReleaseStore::open(dir.path()).unwrap();
    let keys = Keys::generate();
    let blob = b"blob".to_vec();

    let err = store
        .put_manifest(&stable(), &keys.manifest("stable", 1, &blob))
        .unwrap_err();
    assert!(matches!(err, Error::NoRoot), "{err:?}");

    store.put_root(&keys.root_json).unwrap();
    let err = store
        .put_manifest(&stable(), &keys.manifest("stable", 1, &blob))
        .unwrap_err();
    assert!(
        matches!(err, Error::MissingBlob { sha256: s } if s == sha256(&blob)),
        "{err:?}"
    );

    store.put_blob(&sha256(&blob), &blob).unwrap();
    assert_eq!(
        store
            .put_manifest(&stable(), &keys.manifest("stable", 2, &blob))
            .unwrap(),
        2
    );
    let err = store
        .put_manifest(&stable(), &keys.manifest("stable", 2, b"other content"))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::StaleSequence {
                current: 2,
                got: 2,
                ..
            }
        ),
        "{err:?}"
    );
    let err = store
        .put_manifest(&stable(), &keys.manifest("stable", 1, &blob))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::StaleSequence {
                current: 2,
                got: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        store
            .put_manifest(&stable(), &keys.manifest("stable", 3, &blob))
            .unwrap(),
        3
    );

    // A manifest for "beta" uploaded to the "stable" path.
    let err = store
        .put_manifest(&stable(), &keys.manifest("beta", 9, &blob))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Signing(outrider_signing::Error::WrongChannel { .. })
        ),
        "{err:?}"
    );

    // A manifest signed by a key the root does not trust.
    let stranger = Keys::generate();
    let err = store
        .put_manifest(&stable(), &stranger.manifest("stable", 4, &blob))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Signing(outrider_signing::Error::BelowThreshold { .. })
        ),
        "{err:?}"
    );
}

#[test]
fn blob_must_hash_to_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = ReleaseStore::open(dir.path()).unwrap();
    let err = store.put_blob(&sha256(b"expected"), b"actual").unwrap_err();
    assert!(
        matches!(err, Error::HashMismatch { expected, actual } if expected == sha256(b"expected") && actual == sha256(b"actual")),
        "{err:?}"
    );
    assert_eq!(store.blob_path(&sha256(b"expected")), None);
}

#[test]
fn leftover_temp_files_are_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    drop(ReleaseStore::open(dir.path()).unwrap());
    let leftover = dir.path().join("blobs").join(".tmp-half-written");
    std::fs::write(&leftover, b"partial").unwrap();
    drop(ReleaseStore::open(dir.path()).unwrap());
    assert!(!leftover.exists());
}

#[test]
fn root_rotation_is_a_verified_chain_step() {
    let dir = tempfile::tempdir().unwrap();
    let store = ReleaseStore::open(dir.path()).unwrap();
    let keys = Keys::generate();
    store.put_root(&keys.root_json).unwrap();
    let now = now_unix();
    let new_root = KeyPair::generate(KeyRole::Root).unwrap();
    let release = [(&keys.release, now + DAY)];

    // Signed only by the new key: the old root's threshold is not met.
    let v2_new_only = make_root(&[&new_root], &release, 1, 2, now + DAY).unwrap();
    let err = store.put_root(&v2_new_only.to_bytes()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Signing(outrider_signing::Error::BelowThreshold { have: 0, .. })
        ),
        "{err:?}"
    );

    // A different version-1 root: a rollback/replacement.
    let other_v1 = make_root(&[&keys.root], &release, 1, 1, now + DAY).unwrap();
    let err = store.put_root(&other_v1.to_bytes()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Signing(outrider_signing::Error::Rollback { seen: 1, got: 1 })
        ),
        "{err:?}"
    );

    // Signed by old and new: accepted and current.
    let v2 = Envelope::sign(v2_new_only.payload().to_vec(), &[&keys.root, &new_root]).to_bytes();
    store.put_root(&v2).unwrap();
    assert_eq!(store.root().unwrap().unwrap(), v2);

    // The first root is no longer a valid upload.
    let err = store.put_root(&keys.root_json).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Signing(outrider_signing::Error::Rollback { seen: 2, got: 1 })
        ),
        "{err:?}"
    );
}

#[test]
fn first_root_must_be_self_signed() {
    let dir = tempfile::tempdir().unwrap();
    let store = ReleaseStore::open(dir.path()).unwrap();
    let keys = Keys::generate();
    let stranger = KeyPair::generate(KeyRole::Root).unwrap();
    let env = Envelope::from_bytes(&keys.root_json).unwrap();
    let forged = Envelope::sign(env.payload().to_vec(), &[&stranger]).to_bytes();
    let err = store.put_root(&forged).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Signing(outrider_signing::Error::BelowThreshold { .. })
        ),
        "{err:?}"
    );
    assert_eq!(store.root().unwrap(), None);
}

#[test]
fn every_referenced_blob_must_be_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = ReleaseStore::open(dir.path()).unwrap();
    let keys = Keys::generate();
    store.put_root(&keys.root_json).unwrap();
    let (old, new, patch) = (
        b"old blob".to_vec(),
        b"new blob".to_vec(),
        b"patch".to_vec(),
    );
    store.put_blob(&sha256(&new), &new).unwrap();

    let mut target = build("2.0.0", b"lib two", &new);
    target.previous = Some(outrider_signing::PreviousBuild {
        version: "1.0.0".into(),
        artifact: build("1.0.0", b"lib one", &old).artifact,
    });
    let err = store
        .put_manifest(&stable(), &keys.manifest_with("stable", 1, target.clone()))
        .unwrap_err();
    assert!(
        matches!(err, Error::MissingBlob { sha256: s } if s == sha256(&old)),
        "{err:?}"
    );
    store.put_blob(&sha256(&old), &old).unwrap();

    target.deltas.insert(
        sha256(b"lib one"),
        outrider_signing::Delta {
            format: outrider_signing::DeltaFormat::BsdiffZstd,
            sha256: sha256(&patch),
            size: patch.len() as u64 + 1,
        },
    );
    store.put_blob(&sha256(&patch), &patch).unwrap();
    let err = store
        .put_manifest(&stable(), &keys.manifest_with("stable", 1, target.clone()))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::BlobSize {
                declared: 6,
                actual: 5,
                ..
            }
        ),
        "{err:?}"
    );
    target.deltas.values_mut().for_each(|d| d.size = 5);
    store
        .put_manifest(&stable(), &keys.manifest_with("stable", 1, target))
        .unwrap();
}

#[test]
fn builds_are_distinct_newest_first_per_triple() {
    let dir = tempfile::tempdir().unwrap();
    let store = ReleaseStore::open(dir.path()).unwrap();
    let keys = Keys::generate();
    store.put_root(&keys.root_json).unwrap();
    let blobs: Vec<Vec<u8>> = (0..3).map(|i| format!("blob {i}").into_bytes()).collect();
    for blob in &blobs {
        store.put_blob(&sha256(blob), blob).unwrap();
    }
    let target = |i: usize| {
        build(
            &format!("1.0.{i}"),
            format!("lib {i}").as_bytes(),
            &blobs[i],
        )
    };
    // 0, 1, 1 (rollout change), 2, then a rollback to 0.
    for (seq, i) in [(1, 0), (2, 1), (3, 1), (4, 2), (5, 0)] {
        store
            .put_manifest(&stable(), &keys.manifest_with("stable", seq, target(i)))
            .unwrap();
    }
    let builds = store.builds(&stable(), "x86_64-linux", 10).unwrap();
    let got: Vec<(&str, u64)> = builds
        .iter()
        .map(|b| (b.version.as_str(), b.sequence))
        .collect();
    assert_eq!(got, [("1.0.0", 5), ("1.0.2", 4), ("1.0.1", 3)]);
    assert_eq!(builds[1].artifact, target(2).artifact);
    assert_eq!(store.builds(&stable(), "x86_64-linux", 2).unwrap().len(), 2);
    assert!(
        store
            .builds(&stable(), "aarch64-linux", 10)
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .builds(&"beta".parse().unwrap(), "x86_64-linux", 10)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn the_manifest_hook_fires_once_per_new_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::generate();
    let blob = b"zstd blob".to_vec();
    let store = ReleaseStore::open(dir.path()).unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let hook = {
        let seen = seen.clone();
        Box::new(move |channel: &Channel, sequence: u64| {
            seen.lock().unwrap().push((channel.to_string(), sequence));
        })
    };
    assert!(store.on_manifest_stored(hook));
    assert!(!store.on_manifest_stored(Box::new(|_, _| {})), "set twice");
    store.put_root(&keys.root_json).unwrap();
    store.put_blob(&sha256(&blob), &blob).unwrap();
    let first = keys.manifest("stable", 1, &blob);
    store.put_manifest(&stable(), &first).unwrap();
    // The same bytes again store nothing new: no call.
    store.put_manifest(&stable(), &first).unwrap();
    // A refused manifest: no call.
    assert!(
        store
            .put_manifest(&stable(), &keys.manifest("stable", 1, b"x"))
            .is_err()
    );
    store
        .put_manifest(&"beta".parse().unwrap(), &keys.manifest("beta", 4, &blob))
        .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [("stable".to_owned(), 1), ("beta".to_owned(), 4)]
    );
}

#[test]
fn garbage_collection_spares_referenced_and_reuploaded_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let store = ReleaseStore::open(dir.path()).unwrap();
    let keys = Keys::generate();
    store.put_root(&keys.root_json).unwrap();
    let published = b"published".to_vec();
    let again = b"uploaded long ago, and again now".to_vec();
    let stray = b"uploaded long ago only".to_vec();
    for blob in [&published, &again, &stray] {
        store.put_blob(&sha256(blob), blob).unwrap();
        // First uploaded an hour ago.
        let path = store.blob_path(&sha256(blob)).unwrap();
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3_600))
            .unwrap();
    }
    store
        .put_manifest(&stable(), &keys.manifest("stable", 1, &published))
        .unwrap();
    store.put_blob(&sha256(&again), &again).unwrap();
    let report = store.collect_garbage(now_unix() - 60).unwrap();
    assert_eq!((report.blobs, report.bytes), (1, stray.len() as u64));
    assert_eq!(store.blob_path(&sha256(&stray)), None);
    assert!(store.blob_path(&sha256(&again)).is_some());
    assert!(store.blob_path(&sha256(&published)).is_some());
    // A temp file of an upload in flight is not a blob: left alone.
    std::fs::write(dir.path().join("blobs/.tmp-x"), b"partial").unwrap();
    assert_eq!(store.collect_garbage(now_unix() + 10).unwrap().blobs, 1);
    assert!(dir.path().join("blobs/.tmp-x").exists());
}
