//! Root thresholds, rotation, revocation and the chain walk: each attack on
//! the root asserts its exact error variant.

use outrider_signing::{
    Envelope, Error, KeyPair, KeyRole, MAX_ROOT_WALK, ManifestPolicy, RootBuilder, TrustedRoot,
    WalkError, make_manifest, walk_roots, walk_roots_with_limit,
};

use crate::{DAY, NOW, Repo};

const YEAR: u64 = 365 * DAY;

fn root_keys(n: usize) -> Vec<KeyPair> {
    (0..n)
        .map(|_| KeyPair::generate(KeyRole::Root).unwrap())
        .collect()
}

fn release_key() -> KeyPair {
    KeyPair::generate(KeyRole::Release).unwrap()
}

/// Version 1 trusting `roots` (threshold `k`) and `release` (threshold 1),
/// signed by all of `roots`.
fn first_root(roots: &[&KeyPair], k: u32, release: &KeyPair) -> TrustedRoot {
    let mut builder = RootBuilder::new(1, NOW + YEAR)
        .root_threshold(k)
        .add_release_key(release, NOW + YEAR)
        .unwrap();
    for key in roots {
        builder = builder.add_root_key(key).unwrap();
    }
    let bytes = builder.sign(roots).unwrap().to_bytes();
    TrustedRoot::from_bytes_self_signed(&bytes, NOW).unwrap()
}

/// The successor of `current` with its root keys replaced by `new`
/// (threshold `k`), expiring in a year.
fn rotated(current: &TrustedRoot, new: &[&KeyPair], k: u32) -> RootBuilder {
    let mut builder = RootBuilder::successor_of(current.root(), NOW + YEAR).root_threshold(k);
    for id in current.root().root_keys.keys() {
        builder = builder.remove_root_key(id);
    }
    for key in new {
        builder = builder.add_root_key(key).unwrap();
    }
    builder
}

/// A fetch over versions 2, 3, ... held in memory; `None` past the end.
fn serve(chain: &[Vec<u8>]) -> impl FnMut(u64) -> Result<Option<Vec<u8>>, std::io::Error> + '_ {
    move |version| Ok(chain.get((version - 2) as usize).cloned())
}

fn assert_root_below(err: &Error, have: u32, need: u32) {
    assert!(
        matches!(err, Error::BelowThreshold { role: KeyRole::Root, have: h, need: n } if *h == have && *n == need),
        "{err:?}"
    );
}

#[test]
fn two_of_three_root_accepts_exactly_two_signatures() {
    let keys = root_keys(3);
    let release = release_key();
    let builder = RootBuilder::new(1, NOW + DAY)
        .root_threshold(2)
        .add_root_key(&keys[0])
        .unwrap()
        .add_root_key(&keys[1])
        .unwrap()
        .add_root_key(&keys[2])
        .unwrap()
        .add_release_key(&release, NOW + DAY)
        .unwrap();
    let two = builder.clone().sign(&[&keys[0], &keys[2]]).unwrap();
    let trusted = TrustedRoot::from_bytes_self_signed(&two.to_bytes(), NOW).unwrap();
    assert_eq!(trusted.root().root_threshold, 2);
    assert_eq!(trusted.root().release_threshold, 1);

    let one = builder.sign(&[&keys[1]]).unwrap();
    let err = TrustedRoot::from_bytes_self_signed(&one.to_bytes(), NOW).unwrap_err();
    assert_root_below(&err, 1, 2);
}

#[test]
fn separate_thresholds_are_checked_when_signing() {
    let keys = root_keys(2);
    let release = release_key();
    let err = RootBuilder::new(1, NOW + DAY)
        .add_root_key(&keys[0])
        .unwrap()
        .add_root_key(&keys[1])
        .unwrap()
        .add_release_key(&release, NOW + DAY)
        .unwrap()
        .root_threshold(2)
        .release_threshold(2)
        .sign(&[&keys[0], &keys[1]])
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidThreshold {
                role: KeyRole::Release,
                threshold: 2,
                keys: 1
            }
        ),
        "{err:?}"
    );
    let err = RootBuilder::new(1, NOW + DAY)
        .add_root_key(&keys[0])
        .unwrap()
        .sign(&[&keys[0]])
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidThreshold {
                role: KeyRole::Release,
                threshold: 1,
                keys: 0
            }
        ),
        "{err:?}"
    );
    let err = RootBuilder::new(1, NOW + DAY)
        .add_root_key(&release)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::WrongKeyRole {
                expected: KeyRole::Root,
                got: KeyRole::Release,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn one_root_key_signing_twice_is_a_duplicate() {
    let keys = root_keys(2);
    let release = release_key();
    let builder = RootBuilder::new(1, NOW + DAY)
        .root_threshold(2)
        .add_root_key(&keys[0])
        .unwrap()
        .add_root_key(&keys[1])
        .unwrap()
        .add_release_key(&release, NOW + DAY)
        .unwrap();
    let env = builder.clone().sign(&[&keys[0]]).unwrap();
    let twice = Envelope::sign(env.payload().to_vec(), &[&keys[0], &keys[0]]);
    let err = TrustedRoot::from_bytes_self_signed(&twice.to_bytes(), NOW).unwrap_err();
    assert!(
        matches!(&err, Error::DuplicateKey { keyid } if *keyid == keys[0].key_id()),
        "{err:?}"
    );
    // The builder itself signs once per distinct key.
    let deduped = builder.sign(&[&keys[0], &keys[0], &keys[1]]).unwrap();
    assert_eq!(deduped.signatures().len(), 2);
    TrustedRoot::from_bytes_self_signed(&deduped.to_bytes(), NOW).unwrap();
}

#[test]
fn new_root_signed_by_old_keys_only_is_below_the_new_threshold() {
    let old = root_keys(3);
    let new = root_keys(3);
    let release = release_key();
    let v1 = first_root(&[&old[0], &old[1], &old[2]], 2, &release);
    let next = rotated(&v1, &[&new[0], &new[1], &new[2]], 2);
    // Only old keys.
    let env = next.clone().sign(&[&old[0], &old[1]]).unwrap();
    let err = v1.successor(&env.to_bytes()).unwrap_err();
    assert_root_below(&err, 0, 2);
    // The old threshold and one new key.
    let env = next.sign(&[&old[0], &old[1], &new[0]]).unwrap();
    let err = v1.successor(&env.to_bytes()).unwrap_err();
    assert_root_below(&err, 1, 2);
}

#[test]
fn new_root_signed_by_new_keys_only_is_below_the_old_threshold() {
    let old = root_keys(3);
    let new = root_keys(3);
    let release = release_key();
    let v1 = first_root(&[&old[0], &old[1], &old[2]], 2, &release);
    let next = rotated(&v1, &[&new[0], &new[1], &new[2]], 2);
    let env = next.clone().sign(&[&new[0], &new[1], &new[2]]).unwrap();
    let err = v1.successor(&env.to_bytes()).unwrap_err();
    assert_root_below(&err, 0, 2);
    let env = next.clone().sign(&[&old[2], &new[0], &new[1]]).unwrap();
    let err = v1.successor(&env.to_bytes()).unwrap_err();
    assert_root_below(&err, 1, 2);
    // A threshold of both is accepted.
    let env = next.sign(&[&old[0], &old[2], &new[1], &new[2]]).unwrap();
    let v2 = v1.successor(&env.to_bytes()).unwrap();
    assert_eq!(v2.root().version, 2);
    assert!(v2.root().root_keys.contains_key(&new[0].key_id()));
    assert!(!v2.root().root_keys.contains_key(&old[0].key_id()));
}

#[test]
fn a_key_kept_across_a_rotation_counts_for_old_and_new() {
    let keys = root_keys(3);
    let release = release_key();
    // 2-of-{0,1} → 2-of-{1,2}: key 1 is in both sets.
    let v1 = first_root(&[&keys[0], &keys[1]], 2, &release);
    let env = rotated(&v1, &[&keys[1], &keys[2]], 2)
        .sign(&[&keys[0], &keys[1], &keys[2]])
        .unwrap();
    assert_eq!(env.signatures().len(), 3);
    v1.successor(&env.to_bytes()).unwrap();
}

#[test]
fn skipping_a_version_is_refused_by_the_step_and_the_walk() {
    let keys = root_keys(1);
    let release = release_key();
    let v1 = first_root(&[&keys[0]], 1, &release);
    let mut v3 = RootBuilder::successor_of(v1.root(), NOW + YEAR);
    v3 = RootBuilder::successor_of(v3.root(), NOW + YEAR);
    let v3 = v3.sign(&[&keys[0]]).unwrap().to_bytes();
    let err = v1.successor(&v3).unwrap_err();
    assert!(
        matches!(err, Error::RootVersionSkipped { current: 1, got: 3 }),
        "{err:?}"
    );
    // A repository that answers version 2 with version 3.
    let chain = [v3];
    let err = walk_roots(&v1, serve(&chain), NOW).unwrap_err();
    assert!(
        matches!(
            err,
            WalkError::Verify {
                version: 2,
                source: Error::RootVersionSkipped { current: 1, got: 3 }
            }
        ),
        "{err:?}"
    );
    // And version 2 with version 1 again.
    let chain = [v1.envelope_bytes().to_vec()];
    let err = walk_roots(&v1, serve(&chain), NOW).unwrap_err();
    assert!(
        matches!(
            err,
            WalkError::Verify {
                version: 2,
                source: Error::Rollback { seen: 1, got: 1 }
            }
        ),
        "{err:?}"
    );
}

#[test]
fn revoked_release_key_no_longer_counts_after_the_walk() {
    let repo = Repo::new(1, NOW + YEAR);
    let manifest = repo.sign(&repo.manifest(5), &[&repo.release_a]);
    verify_manifest_ok(&repo.root, &manifest, &repo);

    // Version 2 revokes release key a; signed by the (unchanged) root key.
    let v2 = RootBuilder::successor_of(repo.root.root(), NOW + YEAR)
        .remove_release_key(&repo.release_a.key_id())
        .sign(&[&repo.root_key])
        .unwrap()
        .to_bytes();
    let chain = [v2];
    let walked = walk_roots(&repo.root, serve(&chain), NOW).unwrap();
    assert_eq!(walked.root().version, 2);
    let err = outrider_signing::verify_manifest(&walked, &manifest, &repo.policy()).unwrap_err();
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
    // The key that stayed still signs.
    let by_b = repo.sign(&repo.manifest(6), &[&repo.release_b]);
    verify_manifest_ok(&walked, &by_b, &repo);
}

#[test]
fn release_key_past_its_expiry_does_not_count() {
    let repo = Repo::new(1, NOW + DAY);
    let manifest = repo.sign(&repo.manifest(5), &[&repo.release_b]);
    verify_manifest_ok(&repo.root, &manifest, &repo);
    let later = ManifestPolicy {
        now_unix: NOW + DAY,
        ..repo.policy()
    };
    let mut renewed = repo.manifest(5);
    renewed.expires_unix = NOW + 60 * DAY;
    let manifest = repo.sign(&renewed, &[&repo.release_b]);
    let err = outrider_signing::verify_manifest(&repo.root, &manifest, &later).unwrap_err();
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
fn client_three_rotations_behind_catches_up_and_trusts_the_newest_release_key() {
    let repo = Repo::new(1, NOW + YEAR);
    let generations = [root_keys(3), root_keys(3), root_keys(3)];
    let newest_release = release_key();

    // v2, v3, v4: each replaces all root keys (2-of-3), signed by a
    // threshold of the previous keys and of the new ones; v4 also adds a
    // release key.
    let mut chain = Vec::new();
    let mut current = repo.root.clone();
    let mut previous: Vec<&KeyPair> = vec![&repo.root_key];
    let mut previous_k = 1;
    for (i, keys) in generations.iter().enumerate() {
        let new: Vec<&KeyPair> = keys.iter().collect();
        let mut builder = rotated(&current, &new, 2);
        if i == generations.len() - 1 {
            builder = builder
                .add_release_key(&newest_release, NOW + YEAR)
                .unwrap();
        }
        let mut signers = previous[..previous_k].to_vec();
        signers.extend(&new[1..]);
        let bytes = builder.sign(&signers).unwrap().to_bytes();
        current = current.successor(&bytes).unwrap();
        chain.push(bytes);
        previous = new;
        previous_k = 2;
    }

    let manifest = make_manifest(&repo.manifest(7), &[&newest_release])
        .unwrap()
        .to_bytes();
    // Still on version 1, the client does not know the new release key.
    let err = outrider_signing::verify_manifest(&repo.root, &manifest, &repo.policy()).unwrap_err();
    assert!(
        matches!(err, Error::BelowThreshold { have: 0, .. }),
        "{err:?}"
    );

    let mut asked = Vec::new();
    let walked = walk_roots(
        &repo.root,
        |v| {
            asked.push(v);
            serve(&chain)(v)
        },
        NOW,
    )
    .unwrap();
    assert_eq!(walked.root().version, 4);
    assert_eq!(walked.envelope_bytes(), &chain[2][..]);
    assert_eq!(asked, [2, 3, 4, 5]);
    verify_manifest_ok(&walked, &manifest, &repo);

    // A client already at the newest root asks once and stays.
    let same = walk_roots(&walked, serve(&chain), NOW).unwrap();
    assert_eq!(same.root().version, 4);
}

#[test]
fn walk_through_expired_roots_is_fine_but_ending_on_one_is_refused() {
    let keys = root_keys(1);
    let release = release_key();
    let v1 = first_root(&[&keys[0]], 1, &release);
    // v2 expired long ago; v3 is current.
    let v2 = RootBuilder::successor_of(v1.root(), NOW - DAY);
    let v3 = RootBuilder::successor_of(v2.root(), NOW + DAY)
        .sign(&[&keys[0]])
        .unwrap()
        .to_bytes();
    let v2 = v2.sign(&[&keys[0]]).unwrap().to_bytes();
    let chain = [v2.clone(), v3];
    assert_eq!(
        walk_roots(&v1, serve(&chain), NOW).unwrap().root().version,
        3
    );

    // The repository withholds v3 (freeze): the walk ends on expired v2.
    let frozen = [v2];
    let err = walk_roots(&v1, serve(&frozen), NOW).unwrap_err();
    assert!(
        matches!(
            err,
            WalkError::Verify {
                version: 2,
                source: Error::Expired {
                    what: "root",
                    now: NOW,
                    ..
                }
            }
        ),
        "{err:?}"
    );
    // Also when the trusted root itself expired and nothing newer exists.
    let err = walk_roots(&v1, serve(&[]), NOW + YEAR).unwrap_err();
    assert!(
        matches!(
            err,
            WalkError::Verify {
                version: 1,
                source: Error::Expired { what: "root", .. }
            }
        ),
        "{err:?}"
    );
}

#[test]
fn walk_reports_fetch_failures_with_the_version() {
    let keys = root_keys(1);
    let v1 = first_root(&[&keys[0]], 1, &release_key());
    let err = walk_roots(&v1, |_| Err(std::io::Error::other("connection reset")), NOW).unwrap_err();
    assert!(
        matches!(&err, WalkError::Fetch { version: 2, source } if source.to_string() == "connection reset"),
        "{err:?}"
    );
    assert!(err.verification().is_none());
}

#[test]
fn an_endless_chain_is_cut_off() {
    let keys = root_keys(1);
    let v1 = first_root(&[&keys[0]], 1, &release_key());
    let mut builder = RootBuilder::successor_of(v1.root(), NOW + YEAR);
    let mut fetched = 0u64;
    let err = walk_roots_with_limit(
        &v1,
        |version| {
            fetched += 1;
            assert_eq!(builder.root().version, version);
            let bytes = builder.clone().sign(&[&keys[0]]).unwrap().to_bytes();
            builder = RootBuilder::successor_of(builder.root(), NOW + YEAR);
            Ok::<_, std::io::Error>(Some(bytes))
        },
        NOW,
        8,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            WalkError::Verify {
                version: 10,
                source: Error::RootChainTooLong { from: 1, limit: 8 },
            }
        ),
        "{err:?}"
    );
    // Eight rotations verified, the ninth refused before verification.
    assert_eq!(fetched, 9);
    // The default cap is generous for real chains, finite for endless ones.
    assert_eq!(MAX_ROOT_WALK, 1024);
}

#[test]
fn unknown_root_fields_survive_a_rotation() {
    let keys = root_keys(1);
    let release = release_key();
    let base = RootBuilder::new(1, NOW + DAY)
        .add_root_key(&keys[0])
        .unwrap()
        .add_release_key(&release, NOW + DAY)
        .unwrap()
        .sign(&[&keys[0]])
        .unwrap();
    let mut value: serde_json::Value = serde_json::from_slice(base.payload()).unwrap();
    value["mirrors"] = serde_json::json!(["https://cdn.example"]);
    let v1 = Envelope::sign(serde_json::to_vec(&value).unwrap(), &[&keys[0]]);
    let v1 = TrustedRoot::from_bytes_self_signed(&v1.to_bytes(), NOW).unwrap();
    assert_eq!(v1.root().extra["mirrors"][0], "https://cdn.example");
    let v2 = RootBuilder::successor_of(v1.root(), NOW + DAY)
        .sign(&[&keys[0]])
        .unwrap();
    let v2 = v1.successor(&v2.to_bytes()).unwrap();
    assert_eq!(v2.root().extra["mirrors"][0], "https://cdn.example");
}

fn verify_manifest_ok(root: &TrustedRoot, manifest: &[u8], repo: &Repo) {
    outrider_signing::verify_manifest(root, manifest, &repo.policy()).unwrap();
}
