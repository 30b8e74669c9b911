//! Manifest verification against each attack of DESIGN §5.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use outrider_signing::{
    Envelope, Error, KeyPair, KeyRole, MAX_METADATA_BYTES, ManifestPolicy, SequenceFloor,
    make_root, sha256, verify_manifest,
};

use crate::{DAY, NOW, Repo};

#[test]
fn a_good_manifest_verifies_and_yields_its_floor() {
    let repo = Repo::new(1, NOW + DAY);
    let bytes = repo.sign(&repo.manifest(5), &[&repo.release_a]);
    let verified = verify_manifest(&repo.root, &bytes, &repo.policy()).unwrap();
    assert_eq!(verified.manifest, repo.manifest(5));
    let envelope = Envelope::from_bytes(&bytes).unwrap();
    assert_eq!(
        verified.floor(),
        SequenceFloor {
            sequence: 5,
            payload_sha256: sha256(envelope.payload())
        }
    );
    assert!(verified.target("x86_64-linux").is_ok());
    assert!(matches!(
        verified.target("riscv64-linux"),
        Err(Error::NoTarget { .. })
    ));
}

#[test]
fn tampered_payload_is_a_bad_signature() {
    let repo = Repo::new(1, NOW + DAY);
    let bytes = repo.sign(&repo.manifest(5), &[&repo.release_a]);
    let mut wire: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let payload = BASE64.decode(wire["payload"].as_str().unwrap()).unwrap();
    let tampered = String::from_utf8(payload)
        .unwrap()
        .replace("1.0.5", "6.6.6");
    wire["payload"] = BASE64.encode(tampered).into();
    let err = verify_manifest(
        &repo.root,
        &serde_json::to_vec(&wire).unwrap(),
        &repo.policy(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::BadSignature { keyid } if *keyid == repo.release_a.key_id()),
        "{err:?}"
    );
}

#[test]
fn signature_by_unknown_key_is_not_counted() {
    let repo = Repo::new(1, NOW + DAY);
    let stranger = KeyPair::generate(KeyRole::Release).unwrap();
    let bytes = repo.sign(&repo.manifest(5), &[&stranger]);
    let err = verify_manifest(&repo.root, &bytes, &repo.policy()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::BelowThreshold {
                role: KeyRole::Release,
                have: 0,
                need: 1
            }
        ),
        "{err:?}"
    );
}

#[test]
fn same_key_twice_does_not_meet_a_threshold_of_two() {
    let repo = Repo::new(2, NOW + DAY);
    let bytes = repo.sign(&repo.manifest(5), &[&repo.release_a, &repo.release_a]);
    let err = verify_manifest(&repo.root, &bytes, &repo.policy()).unwrap_err();
    assert!(
        matches!(&err, Error::DuplicateKey { keyid } if *keyid == repo.release_a.key_id()),
        "{err:?}"
    );
    // Two distinct keys do meet it.
    let bytes = repo.sign(&repo.manifest(5), &[&repo.release_a, &repo.release_b]);
    verify_manifest(&repo.root, &bytes, &repo.policy()).unwrap();
}

#[test]
fn one_of_two_required_signatures_is_below_threshold() {
    let repo = Repo::new(2, NOW + DAY);
    let stranger = KeyPair::generate(KeyRole::Release).unwrap();
    let bytes = repo.sign(&repo.manifest(5), &[&repo.release_a, &stranger]);
    let err = verify_manifest(&repo.root, &bytes, &repo.policy()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::BelowThreshold {
                role: KeyRole::Release,
                have: 1,
                need: 2
            }
        ),
        "{err:?}"
    );
}

#[test]
fn expired_release_key_is_not_counted() {
    let repo = Repo::new(1, NOW - 1);
    let bytes = repo.sign(&repo.manifest(5), &[&repo.release_b]);
    let err = verify_manifest(&repo.root, &bytes, &repo.policy()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::BelowThreshold {
                role: KeyRole::Release,
                have: 0,
                need: 1
            }
        ),
        "{err:?}"
    );
}

#[test]
fn expired_manifest_is_refused() {
    let repo = Repo::new(1, NOW + DAY);
    let mut manifest = repo.manifest(5);
    manifest.expires_unix = NOW;
    let bytes = repo.sign(&manifest, &[&repo.release_a]);
    let err = verify_manifest(&repo.root, &bytes, &repo.policy()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Expired {
                what: "release manifest",
                expired_at: NOW,
                now: NOW
            }
        ),
        "{err:?}"
    );
}

#[test]
fn expired_root_freezes_everything() {
    let repo = Repo::new(1, NOW + 10 * 365 * DAY);
    let bytes = repo.sign(&repo.manifest(5), &[&repo.release_a]);
    let later = ManifestPolicy {
        now_unix: NOW + 6 * 365 * DAY,
        ..repo.policy()
    };
    let err = verify_manifest(&repo.root, &bytes, &later).unwrap_err();
    assert!(
        matches!(err, Error::Expired { what: "root", .. }),
        "{err:?}"
    );
}

#[test]
fn lower_sequence_is_a_rollback() {
    let repo = Repo::new(1, NOW + DAY);
    let bytes = repo.sign(&repo.manifest(4), &[&repo.release_a]);
    let floor = SequenceFloor {
        sequence: 5,
        payload_sha256: sha256(b"whatever"),
    };
    let policy = ManifestPolicy {
        floor: Some(floor),
        ..repo.policy()
    };
    let err = verify_manifest(&repo.root, &bytes, &policy).unwrap_err();
    assert!(
        matches!(err, Error::Rollback { seen: 5, got: 4 }),
        "{err:?}"
    );
}

#[test]
fn same_sequence_different_content_is_a_replay_and_same_content_is_fine() {
    let repo = Repo::new(1, NOW + DAY);
    let first = repo.sign(&repo.manifest(5), &[&repo.release_a]);
    let floor = verify_manifest(&repo.root, &first, &repo.policy())
        .unwrap()
        .floor();
    let policy = ManifestPolicy {
        floor: Some(floor),
        ..repo.policy()
    };
    verify_manifest(&repo.root, &first, &policy).unwrap();

    let mut other = repo.manifest(5);
    other.targets.get_mut("x86_64-linux").unwrap().version = "0.9.0".to_owned();
    let second = repo.sign(&other, &[&repo.release_a]);
    let err = verify_manifest(&repo.root, &second, &policy).unwrap_err();
    assert!(matches!(err, Error::Replay { sequence: 5 }), "{err:?}");
}

#[test]
fn manifest_for_another_channel_is_refused() {
    let repo = Repo::new(1, NOW + DAY);
    let mut manifest = repo.manifest(5);
    manifest.channel = "beta".parse().unwrap();
    let bytes = repo.sign(&manifest, &[&repo.release_a]);
    let err = verify_manifest(&repo.root, &bytes, &repo.policy()).unwrap_err();
    assert!(
        matches!(&err, Error::WrongChannel { expected, got } if expected.as_str() == "stable" && got.as_str() == "beta"),
        "{err:?}"
    );
}

#[test]
fn root_envelope_is_not_a_manifest() {
    let repo = Repo::new(1, NOW + DAY);
    let root_bytes = repo.root.envelope_bytes();
    let err = verify_manifest(&repo.root, root_bytes, &repo.policy()).unwrap_err();
    assert!(
        matches!(&err, Error::WrongPayloadType { expected, got } if expected == "release" && got == "root"),
        "{err:?}"
    );
}

#[test]
fn manifest_is_not_a_root() {
    let repo = Repo::new(1, NOW + DAY);
    let bytes = repo.sign(&repo.manifest(5), &[&repo.release_a]);
    let err = outrider_signing::TrustedRoot::from_bytes_self_signed(&bytes, NOW).unwrap_err();
    assert!(matches!(err, Error::WrongPayloadType { .. }), "{err:?}");
}

#[test]
fn payload_type_relabelled_by_the_signer_of_another_role_fails() {
    // An attacker relabels a root payload as "release" to slip it past the
    // type check: the root key's signature is not a release signature.
    let root_key = KeyPair::generate(KeyRole::Root).unwrap();
    let release = KeyPair::generate(KeyRole::Release).unwrap();
    let root_env = make_root(&[&root_key], &[(&release, NOW + DAY)], 1, 1, NOW + DAY).unwrap();
    let mut wire: serde_json::Value = serde_json::from_slice(&root_env.to_bytes()).unwrap();
    let payload = String::from_utf8(root_env.payload().to_vec())
        .unwrap()
        .replace("\"root\"", "\"release\"");
    wire["payload"] = BASE64.encode(payload).into();
    let trusted =
        outrider_signing::TrustedRoot::from_bytes_self_signed(&root_env.to_bytes(), NOW).unwrap();
    let channel = "stable".parse().unwrap();
    let policy = ManifestPolicy {
        channel: &channel,
        now_unix: NOW,
        floor: None,
    };
    let err = verify_manifest(&trusted, &serde_json::to_vec(&wire).unwrap(), &policy).unwrap_err();
    // The root key is not a release key: nothing counts.
    assert!(
        matches!(err, Error::BelowThreshold { have: 0, .. }),
        "{err:?}"
    );
}

#[test]
fn oversized_envelope_is_refused_before_parsing() {
    let repo = Repo::new(1, NOW + DAY);
    let huge = vec![b' '; MAX_METADATA_BYTES + 1];
    let err = verify_manifest(&repo.root, &huge, &repo.policy()).unwrap_err();
    assert!(
        matches!(err, Error::TooLarge { limit, got, .. } if limit == MAX_METADATA_BYTES as u64 && got == limit + 1),
        "{err:?}"
    );
}

#[test]
fn garbage_is_malformed() {
    let repo = Repo::new(1, NOW + DAY);
    let err = verify_manifest(&repo.root, b"{\"payload\": 3}", &repo.policy()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Malformed {
                what: "envelope",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn root_key_cannot_sign_a_manifest() {
    let repo = Repo::new(1, NOW + DAY);
    let err = outrider_signing::make_manifest(&repo.manifest(1), &[&repo.root_key]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::WrongKeyRole {
                expected: KeyRole::Release,
                got: KeyRole::Root,
                ..
            }
        ),
        "{err:?}"
    );
}
