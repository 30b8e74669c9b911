//! Each attack on the client side of an update, asserting the exact error
//! variant (and that nothing usable is returned), plus the happy paths they
//! guard: delta, full, resume, operator rollback.

use outrider_signing::{
    DeltaFormat, Error as SigningError, PreviousBuild, Rollout, SequenceFloor, Target,
    rollout_bucket, sha256,
};
use outrider_update_client::{
    ClientView, FileTransport, HttpTransport, Install, Plan, UpdateClient, UpdateError, Via,
    next_time_floor, plan, tls, trusted_now,
};

use std::sync::Arc;

use crate::repo::{NOW, Repo};
use crate::server::{Fault, FaultyServer};

const SIZE: usize = 300_000;

/// Where the tests let the client write the library.
fn dest(repo: &Repo) -> std::path::PathBuf {
    repo.path().join("out.so")
}

/// The library the client wrote.
fn written(repo: &Repo) -> Vec<u8> {
    std::fs::read(dest(repo)).unwrap()
}

fn file_client(repo: &Repo) -> UpdateClient<FileTransport> {
    UpdateClient::new(
        FileTransport::new(repo.path()),
        "stable".parse().unwrap(),
        &repo.downloads(),
    )
}

fn http_client(repo: &Repo, server: &FaultyServer) -> UpdateClient<HttpTransport> {
    UpdateClient::new(
        HttpTransport::new(&server.url, tls::client_config(&[]).unwrap()),
        "stable".parse().unwrap(),
        &repo.downloads(),
    )
}

fn view(current: Option<outrider_signing::Sha256>) -> ClientView<'static> {
    ClientView {
        triple: Box::leak(outrider_signing::host_triple().into_boxed_str()),
        abi_major: 1,
        fingerprint: None,
        current,
    }
}

fn install_of(
    client: &UpdateClient<FileTransport>,
    repo: &Repo,
    current: Option<outrider_signing::Sha256>,
) -> Install {
    let m = client.fetch_manifest(&repo.root, None, NOW).unwrap();
    match plan(&m, &view(current)).unwrap() {
        Plan::Install(i) => i,
        other => panic!("expected an install, got {other:?}"),
    }
}

#[test]
fn delta_update_rebuilds_the_exact_library() {
    let mut repo = Repo::new();
    let v1 = repo.build(1, SIZE);
    let v2 = repo.edit(&v1);
    let delta = repo.delta(&v1, &v2);
    assert!(
        delta.size < v2.artifact.zstd_size / 5,
        "delta {} vs full {}",
        delta.size,
        v2.artifact.zstd_size
    );
    let mut target = Target::full("2".into(), 1, v2.artifact.clone());
    target.deltas.insert(v1.artifact.sha256, delta.clone());
    repo.publish("stable", target);

    let client = file_client(&repo);
    let install = install_of(&client, &repo, Some(v1.artifact.sha256));
    assert_eq!(install.delta.as_ref(), Some(&delta));
    let fetched = client
        .fetch(&install, Some(&v1.library), &dest(&repo))
        .unwrap();
    assert_eq!(fetched.via, Via::Delta(delta.format));
    assert!(fetched.delta_failure.is_none());
    assert_eq!(written(&repo), v2.library);
}

#[test]
fn tampered_artifact_is_a_hash_mismatch() {
    let mut repo = Repo::new();
    let v1 = repo.build(1, SIZE);
    repo.publish("stable", Target::full("1".into(), 1, v1.artifact.clone()));
    let path = repo.blob_path(&v1.artifact.zstd_sha256);
    let mut blob = std::fs::read(&path).unwrap();
    let mid = blob.len() / 2;
    blob[mid] ^= 0x40;
    std::fs::write(&path, blob).unwrap();

    let client = file_client(&repo);
    let install = install_of(&client, &repo, None);
    let err = client.fetch(&install, None, &dest(&repo)).unwrap_err();
    assert!(
        matches!(
            err,
            UpdateError::HashMismatch {
                what: "compressed build",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        !repo
            .downloads()
            .join(format!("{}.part", v1.artifact.zstd_sha256))
            .exists(),
        "poisoned part deleted"
    );
    assert!(!dest(&repo).exists(), "nothing written at the destination");
}

#[test]
fn tampered_delta_falls_back_to_the_full_build() {
    let mut repo = Repo::new();
    let v1 = repo.build(1, SIZE);
    let v2 = repo.edit(&v1);
    let delta = repo.delta(&v1, &v2);
    let mut patch = std::fs::read(repo.blob_path(&delta.sha256)).unwrap();
    patch[10] ^= 1;
    std::fs::write(repo.blob_path(&delta.sha256), patch).unwrap();
    let mut target = Target::full("2".into(), 1, v2.artifact.clone());
    target.deltas.insert(v1.artifact.sha256, delta.clone());
    repo.publish("stable", target);

    let client = file_client(&repo);
    let err = client
        .fetch_delta(&v2.artifact, &delta, &v1.library, &dest(&repo))
        .unwrap_err();
    assert!(
        matches!(err, UpdateError::HashMismatch { what: "delta", .. }),
        "{err:?}"
    );
    let install = install_of(&client, &repo, Some(v1.artifact.sha256));
    let fetched = client
        .fetch(&install, Some(&v1.library), &dest(&repo))
        .unwrap();
    assert_eq!(fetched.via, Via::Full);
    assert!(matches!(
        fetched.delta_failure,
        Some(UpdateError::HashMismatch { what: "delta", .. })
    ));
    assert_eq!(written(&repo), v2.library);
}

/// `elf-x86-64-bsdiff-zstd` end to end on x86-64 ELF builds (the fixture
/// of `delta/tests/it/elf.rs`: a release that inserts functions, so most of
/// the code moves), offered in `more_deltas`: a client of this build takes
/// it and rebuilds the exact library; a tampered copy is refused by its hash
/// before it is applied, and the client falls back to the full build.
#[test]
fn elf_delta_from_more_deltas_rebuilds_the_library_and_tampering_is_caught() {
    let mut repo = Repo::new();
    let old = crate::elf::Build::new(3000, 7);
    let v1 = repo.store_build(old.elf());
    let v2 = repo.store_build(old.with_inserted(100, &[4, 9]).elf());
    let elf = repo.delta_in(DeltaFormat::ElfX86BsdiffZstd, &v1, &v2);
    let mut target = Target::full("2".into(), 1, v2.artifact.clone());
    target
        .more_deltas
        .insert(v1.artifact.sha256, vec![elf.clone()]);
    repo.publish("stable", target);

    let client = file_client(&repo);
    let install = install_of(&client, &repo, Some(v1.artifact.sha256));
    assert_eq!(install.delta.as_ref(), Some(&elf));
    let fetched = client
        .fetch(&install, Some(&v1.library), &dest(&repo))
        .unwrap();
    assert_eq!(fetched.via, Via::Delta(DeltaFormat::ElfX86BsdiffZstd));
    assert!(
        written(&repo) == v2.library,
        "the ELF delta did not rebuild v2"
    );

    let mut patch = std::fs::read(repo.blob_path(&elf.sha256)).unwrap();
    patch[10] ^= 1;
    std::fs::write(repo.blob_path(&elf.sha256), patch).unwrap();
    std::fs::remove_file(dest(&repo)).unwrap();
    let err = client
        .fetch_delta(&v2.artifact, &elf, &v1.library, &dest(&repo))
        .unwrap_err();
    assert!(
        matches!(err, UpdateError::HashMismatch { what: "delta", .. }),
        "{err:?}"
    );
    assert!(
        !dest(&repo).exists(),
        "nothing written from a tampered patch"
    );
    let fetched = client
        .fetch(&install, Some(&v1.library), &dest(&repo))
        .unwrap();
    assert_eq!(fetched.via, Via::Full);
    assert!(written(&repo) == v2.library);
}

#[test]
fn delta_against_the_wrong_base_is_caught_by_the_result_hash() {
    let repo = Repo::new();
    let v1 = repo.build(1, SIZE);
    let v2 = repo.edit(&v1);
    let delta = repo.delta(&v1, &v2);
    let other = repo.build(9, SIZE);
    let client = file_client(&repo);
    let err = client
        .fetch_delta(&v2.artifact, &delta, &other.library, &dest(&repo))
        .unwrap_err();
    assert!(
        matches!(
            err,
            UpdateError::HashMismatch {
                what: "library rebuilt from delta",
                ..
            } | UpdateError::Delta { .. }
        ),
        "{err:?}"
    );
}

#[test]
fn zstd_bomb_stops_at_the_declared_size() {
    let mut repo = Repo::new();
    let bomb = zstd::encode_all(&vec![0u8; 20 << 20][..], 19).unwrap();
    let sha = repo.put_blob(&bomb);
    let artifact = outrider_signing::Artifact {
        sha256: sha256(b"whatever"),
        size: 1_000,
        zstd_sha256: sha,
        zstd_size: bomb.len() as u64,
    };
    repo.publish("stable", Target::full("bomb".into(), 1, artifact.clone()));
    let err = file_client(&repo)
        .fetch_full(&artifact, &dest(&repo))
        .unwrap_err();
    assert!(
        matches!(
            err,
            UpdateError::TooLarge {
                what: "decompressed build",
                limit: 1_000
            }
        ),
        "{err:?}"
    );
}

#[test]
fn endless_data_is_cut_at_the_declared_size() {
    let mut repo = Repo::new();
    let v1 = repo.build(1, SIZE);
    repo.publish("stable", Target::full("1".into(), 1, v1.artifact.clone()));
    let server = FaultyServer::start(repo.path().to_owned(), Fault::Endless(1 << 20));
    let err = http_client(&repo, &server)
        .fetch_full(&v1.artifact, &dest(&repo))
        .unwrap_err();
    assert!(
        matches!(
            err,
            UpdateError::TooLarge {
                what: "compressed build",
                ..
            }
        ),
        "{err:?}"
    );
    // Metadata is capped too: an endless manifest stops at 1 MiB.
    let err = http_client(&repo, &server)
        .fetch_manifest(&repo.root, None, NOW)
        .unwrap_err();
    assert!(
        matches!(
            err,
            UpdateError::TooLarge {
                what: "manifest",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn interrupted_download_resumes_with_a_range_request() {
    let mut repo = Repo::new();
    let v1 = repo.build(1, SIZE);
    repo.publish("stable", Target::full("1".into(), 1, v1.artifact.clone()));
    let cut = (v1.artifact.zstd_size / 3) as usize;
    let server = FaultyServer::start(repo.path().to_owned(), Fault::CutOnceAfter(cut));
    let client = http_client(&repo, &server);
    let err = client.fetch_full(&v1.artifact, &dest(&repo)).unwrap_err();
    assert!(err.is_transient(), "a cut connection is transient: {err:?}");
    client.fetch_full(&v1.artifact, &dest(&repo)).unwrap();
    assert_eq!(written(&repo), v1.library);
    assert_eq!(
        *server.ranges_seen.lock().unwrap(),
        vec![cut as u64],
        "resumed from the cut"
    );
}

#[test]
fn a_source_ignoring_ranges_restarts_the_download() {
    let mut repo = Repo::new();
    let v1 = repo.build(1, SIZE);
    repo.publish("stable", Target::full("1".into(), 1, v1.artifact.clone()));
    // A stale partial file from an earlier attempt.
    let blob = std::fs::read(repo.blob_path(&v1.artifact.zstd_sha256)).unwrap();
    std::fs::create_dir_all(repo.downloads()).unwrap();
    std::fs::write(
        repo.downloads()
            .join(format!("{}.part", v1.artifact.zstd_sha256)),
        &blob[..1000],
    )
    .unwrap();
    let server = FaultyServer::start(repo.path().to_owned(), Fault::IgnoreRange);
    http_client(&repo, &server)
        .fetch_full(&v1.artifact, &dest(&repo))
        .unwrap();
    assert_eq!(written(&repo), v1.library);
    // It asked to resume, got the whole blob instead, and used it in one request.
    assert_eq!(*server.ranges_seen.lock().unwrap(), vec![1000]);
    assert_eq!(server.requests.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn rollback_and_replay_of_manifests_are_refused() {
    let mut repo = Repo::new();
    let v1 = repo.build(1, SIZE);
    let old = repo.publish("stable", Target::full("1".into(), 1, v1.artifact.clone()));
    let client = file_client(&repo);
    let first = client.fetch_manifest(&repo.root, None, NOW).unwrap();
    let v2 = repo.build(2, SIZE);
    repo.publish("stable", Target::full("2".into(), 1, v2.artifact.clone()));
    let second = client
        .fetch_manifest(&repo.root, Some(first.floor()), NOW)
        .unwrap();
    assert_eq!(second.manifest.sequence, 2);

    // A mirror serving the old manifest again: rollback.
    repo.write_manifest("stable", &old);
    let err = client
        .fetch_manifest(&repo.root, Some(second.floor()), NOW)
        .unwrap_err();
    assert!(
        matches!(
            err,
            UpdateError::Manifest(SigningError::Rollback { seen: 2, got: 1 })
        ),
        "{err:?}"
    );

    // Same sequence, different content: replay.
    let floor = SequenceFloor {
        sequence: 1,
        payload_sha256: sha256(b"something else"),
    };
    let err = client
        .fetch_manifest(&repo.root, Some(floor), NOW)
        .unwrap_err();
    assert!(
        matches!(
            err,
            UpdateError::Manifest(SigningError::Replay { sequence: 1 })
        ),
        "{err:?}"
    );
}

#[test]
fn operator_rollback_is_a_higher_sequence_pointing_at_an_older_build() {
    let mut repo = Repo::new();
    let v1 = repo.build(1, SIZE);
    let v2 = repo.edit(&v1);
    repo.publish("stable", Target::full("1".into(), 1, v1.artifact.clone()));
    repo.publish("stable", Target::full("2".into(), 1, v2.artifact.clone()));
    let client = file_client(&repo);
    let on_v2 = client.fetch_manifest(&repo.root, None, NOW).unwrap();
    // v2 is bad: the operator publishes sequence 3 naming v1, with a delta back.
    let mut back = Target::full("1".into(), 1, v1.artifact.clone());
    back.deltas.insert(v2.artifact.sha256, repo.delta(&v2, &v1));
    repo.publish("stable", back);
    let m = client
        .fetch_manifest(&repo.root, Some(on_v2.floor()), NOW)
        .unwrap();
    assert_eq!(m.manifest.sequence, 3);
    let Plan::Install(install) = plan(&m, &view(Some(v2.artifact.sha256))).unwrap() else {
        panic!()
    };
    assert_eq!(install.version, "1");
    let fetched = client
        .fetch(&install, Some(&v2.library), &dest(&repo))
        .unwrap();
    assert!(matches!(
        fetched.via,
        Via::Delta(DeltaFormat::BsdiffZstd | DeltaFormat::ZstdPatchFrom)
    ));
    assert_eq!(written(&repo), v1.library);
}

#[test]
fn staged_rollout_reaches_only_its_cohort() {
    let mut repo = Repo::new();
    let v1 = repo.build(1, SIZE);
    let v2 = repo.edit(&v1);
    let mut target = Target::full("2".into(), 1, v2.artifact.clone());
    target.rollout = Some(Rollout {
        basis_points: 1000,
        salt: "wave-1".into(),
        paused: false,
    });
    target.previous = Some(PreviousBuild {
        version: "1".into(),
        artifact: v1.artifact.clone(),
    });
    repo.publish("stable", target);
    let m = file_client(&repo)
        .fetch_manifest(&repo.root, None, NOW)
        .unwrap();
    let fleet: Vec<String> = (0..2000u32).map(|i| format!("{i:020x}")).collect();
    let updating = fleet
        .iter()
        .filter(|fp| {
            let v = ClientView {
                fingerprint: Some(fp.as_str()),
                ..view(Some(v1.artifact.sha256))
            };
            matches!(plan(&m, &v).unwrap(), Plan::Install(_))
        })
        .count();
    let expected = fleet
        .iter()
        .filter(|fp| rollout_bucket(fp, "wave-1") < 1000)
        .count();
    assert_eq!(updating, expected);
    assert!(
        (150..250).contains(&updating),
        "about 10% of 2000: {updating}"
    );
}

#[test]
fn a_client_three_root_rotations_behind_catches_up() {
    use outrider_signing::{KeyPair, KeyRole};
    let mut repo = Repo::new();
    let trusted_v1 = repo.root.clone();
    let old_release = KeyPair::generate(KeyRole::Release).unwrap();
    repo.rotate_root(2, &old_release, false);
    repo.rotate_root(3, &old_release, false);
    // Root v4 also replaces the release key.
    let new_release = KeyPair::generate(KeyRole::Release).unwrap();
    repo.rotate_root(4, &new_release, false);
    let v1 = repo.build(1, SIZE);
    repo.release_key = new_release;
    repo.publish("stable", Target::full("1".into(), 1, v1.artifact.clone()));

    let client = file_client(&repo);
    // Without walking the chain the new release key is unknown.
    let err = client.fetch_manifest(&trusted_v1, None, NOW).unwrap_err();
    assert!(
        matches!(
            err,
            UpdateError::Manifest(SigningError::BelowThreshold { .. })
        ),
        "{err:?}"
    );
    let latest = client.refresh_root(&trusted_v1, NOW).unwrap();
    assert_eq!(latest.root().version, 4);
    assert!(client.fetch_manifest(&latest, None, NOW).is_ok());
}

#[test]
fn a_root_not_signed_by_its_predecessor_breaks_the_chain() {
    use outrider_signing::{KeyPair, KeyRole};
    let mut repo = Repo::new();
    let trusted_v1 = repo.root.clone();
    let release = KeyPair::generate(KeyRole::Release).unwrap();
    repo.rotate_root(2, &release, true);
    let err = file_client(&repo)
        .refresh_root(&trusted_v1, NOW)
        .unwrap_err();
    assert!(
        matches!(err, UpdateError::Root(SigningError::BelowThreshold { .. })),
        "{err:?}"
    );
}

#[test]
fn an_expired_manifest_stays_expired_when_the_clock_is_set_back() {
    let repo = Repo::new();
    let v1 = repo.build(1, SIZE);
    let manifest = outrider_signing::ReleaseManifest::new(
        "stable".parse().unwrap(),
        1,
        NOW + 100,
        std::collections::BTreeMap::from([(
            outrider_signing::host_triple(),
            Target::full("1".into(), 1, v1.artifact.clone()),
        )]),
    );
    let bytes = outrider_signing::make_manifest(&manifest, &[&repo.release_key])
        .unwrap()
        .to_bytes();
    repo.write_manifest("stable", &bytes);
    let client = file_client(&repo);

    let expiry = Some(NOW + 100);
    // Checked while valid: accepted; the floor follows the clock.
    let now = trusted_now(NOW, None);
    assert!(client.fetch_manifest(&repo.root, None, now).is_ok());
    let floor = next_time_floor(None, now, expiry);
    // After expiry: refused (freeze attack); the floor stops at the expiry.
    let now = trusted_now(NOW + 200, floor);
    let err = client.fetch_manifest(&repo.root, None, now).unwrap_err();
    assert!(
        matches!(err, UpdateError::Manifest(SigningError::Expired { .. })),
        "{err:?}"
    );
    let floor = next_time_floor(floor, now, expiry);
    assert_eq!(floor, Some(NOW + 100));
    // The clock is set back to before the expiry: still refused.
    let now = trusted_now(NOW, floor);
    let err = client.fetch_manifest(&repo.root, None, now).unwrap_err();
    assert!(
        matches!(err, UpdateError::Manifest(SigningError::Expired { .. })),
        "{err:?}"
    );
    // Without the floor the set-back clock would have accepted it.
    assert!(client.fetch_manifest(&repo.root, None, NOW).is_ok());
    // A clock far ahead cannot push the floor past the newest expiry, so a
    // re-signed manifest expiring later is accepted once the clock is fixed.
    assert_eq!(
        next_time_floor(floor, 9_999_999_999, expiry),
        Some(NOW + 100)
    );
}

/// A CA, and a server configuration for `localhost` whose certificate it
/// signed.
fn private_ca() -> (
    rustls::pki_types::CertificateDer<'static>,
    Arc<rustls::ServerConfig>,
) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
    )
    .unwrap();
    (ca.der().clone(), Arc::new(server))
}

#[test]
fn https_trusts_the_operator_s_ca_and_refuses_an_unknown_one() {
    let mut repo = Repo::new();
    let v1 = repo.build(1, SIZE);
    repo.publish("stable", Target::full("1".into(), 1, v1.artifact.clone()));
    let (ca, server_config) = private_ca();
    let server = FaultyServer::start_tls(repo.path().to_owned(), server_config);
    let client = |extra: &[rustls::pki_types::CertificateDer<'static>]| {
        UpdateClient::new(
            HttpTransport::new(&server.url, tls::client_config(extra).unwrap()),
            "stable".parse().unwrap(),
            &repo.downloads(),
        )
    };

    // The system store does not know this CA: refused before any byte.
    let err = client(&[])
        .fetch_manifest(&repo.root, None, NOW)
        .unwrap_err();
    match &err {
        UpdateError::Transport { reason, .. } => {
            assert!(reason.contains("UnknownIssuer"), "{reason}");
        }
        other => panic!("expected a transport error, got {other:?}"),
    }

    // With it (agent.toml's `tls_ca_file`), the manifest and build come over TLS.
    let trusted = client(&[ca]);
    trusted.fetch_manifest(&repo.root, None, NOW).unwrap();
    trusted.fetch_full(&v1.artifact, &dest(&repo)).unwrap();
    assert_eq!(written(&repo), v1.library);
}
