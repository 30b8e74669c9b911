//! The behaviour suite of release artefact storage
//! ([`outrider_update_server::ArtefactStore`]): every test is one generic
//! function given two "nodes" on one shared storage, and [`suite!`] runs
//! each against the directory store (two [`ReleaseStore`]s opened on one
//! temporary directory, as two processes would) and PostgreSQL (two
//! [`PgArtefacts`] with their own pools on one fresh database of the test
//! binary's private cluster, `outrider-pgtest`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use futures_util::StreamExt;
use outrider_signing::{
    Artifact, Channel, KeyPair, KeyRole, ReleaseManifest, Sha256, Target, make_manifest, make_root,
    now_unix, sha256,
};
use outrider_update_server::{ArtefactStore, BlobCaps, Error, ReleaseStore};

use super::{PgArtefacts, PgBackend, PgTls};

/// Caps small enough that tests reach them with small blobs.
const CAPS: BlobCaps = BlobCaps {
    max_blob_bytes: 4096,
    max_total_bytes: 10_000,
};

/// PostgreSQL chunk size in the suite: small, so every blob spans chunks.
const CHUNK: usize = 100;

const DAY: u64 = 86_400;

/// What keeps a store's storage alive for one test.
type Guard = Option<tempfile::TempDir>;

async fn directory() -> (Guard, Arc<ReleaseStore>, Arc<ReleaseStore>) {
    let dir = tempfile::tempdir().unwrap();
    let a = Arc::new(ReleaseStore::open_with_caps(dir.path(), CAPS).unwrap());
    let b = Arc::new(ReleaseStore::open_with_caps(dir.path(), CAPS).unwrap());
    (Some(dir), a, b)
}

async fn postgres() -> (Guard, PgArtefacts, PgArtefacts) {
    let db = outrider_pgtest::Cluster::shared()
        .unwrap_or_else(|e| panic!("{e}"))
        .database()
        .await
        .unwrap();
    let node = || async {
        let backend = PgBackend::with_config(db.config.clone(), PgTls::Disable, 4)
            .await
            .unwrap();
        PgArtefacts::new(backend, CAPS).with_chunk_bytes(CHUNK)
    };
    let a = node().await;
    let b = node().await;
    (None, a, b)
}

/// Instantiates each named generic test once per store.
macro_rules! suite {
    ($($test:ident),* $(,)?) => {
        mod directory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let (_guard, a, b) = super::directory().await;
                    super::$test(a, b).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let (_guard, a, b) = super::postgres().await;
                    super::$test(a, b).await;
                }
            )*
        }
    };
}

suite!(
    a_blob_put_on_one_node_is_served_by_the_other_byte_identical,
    ranges_of_a_blob_are_its_bytes,
    a_blob_that_does_not_hash_to_its_name_is_refused_and_not_stored,
    blobs_above_the_caps_are_refused_naming_the_cap,
    concurrent_puts_of_one_blob_from_two_nodes_store_it_once,
    manifests_need_a_root_their_blobs_and_a_higher_sequence,
    roots_are_shared_and_follow_the_chain,
    two_nodes_racing_to_publish_on_one_channel_never_both_win_a_sequence,
    garbage_collection_keeps_referenced_and_recent_blobs,
    channels_and_builds_come_from_the_stored_history,
    a_streamed_upload_is_stored_whole_or_not_at_all,
    concurrent_streamed_uploads_of_one_blob_from_two_nodes_store_it_once,
);

/// `len` bytes no compressor would shorten, different per `seed`.
fn noise(seed: u8, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut block = sha256(&[seed]);
    while out.len() < len {
        out.extend_from_slice(block.as_bytes());
        block = sha256(block.as_bytes());
    }
    out.truncate(len);
    out
}

async fn read_all<S: ArtefactStore>(s: &S, blob: &[u8], range: std::ops::Range<u64>) -> Vec<u8> {
    let mut stream = s
        .read_blob(sha256(blob), range)
        .await
        .unwrap()
        .expect("stored");
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

fn stable() -> Channel {
    "stable".parse().unwrap()
}

/// Offline keys and their self-signed root, version 1.
struct Keys {
    release: KeyPair,
    root_json: Vec<u8>,
}

impl Keys {
    fn generate() -> Keys {
        let root = KeyPair::generate(KeyRole::Root).unwrap();
        let release = KeyPair::generate(KeyRole::Release).unwrap();
        let now = now_unix();
        let root_json = make_root(&[&root], &[(&release, now + DAY)], 1, 1, now + 10 * DAY)
            .unwrap()
            .to_bytes();
        Keys { release, root_json }
    }

    /// A signed manifest of `channel` whose one build's zstd blob is `blob`.
    fn manifest(&self, channel: &str, sequence: u64, blob: &[u8]) -> Vec<u8> {
        self.manifest_declaring(channel, sequence, sha256(blob), blob.len() as u64)
    }

    /// A signed manifest of `channel` whose one build's zstd blob is
    /// declared as `sha` of `size` bytes.
    fn manifest_declaring(&self, channel: &str, sequence: u64, sha: Sha256, size: u64) -> Vec<u8> {
        let target = Target::full(
            format!("1.0.{sequence}"),
            1,
            Artifact {
                // A distinct library per blob: builds are told apart by it.
                sha256: sha256(sha.as_bytes()),
                size: 12,
                zstd_sha256: sha,
                zstd_size: size,
            },
        );
        let manifest = ReleaseManifest::new(
            channel.parse().unwrap(),
            sequence,
            now_unix() + DAY,
            BTreeMap::from([("x86_64-linux".to_owned(), target)]),
        );
        make_manifest(&manifest, &[&self.release])
            .unwrap()
            .to_bytes()
    }
}

async fn a_blob_put_on_one_node_is_served_by_the_other_byte_identical<S: ArtefactStore>(
    a: S,
    b: S,
) {
    let blob = noise(1, 3_333);
    assert_eq!(b.blob_len(sha256(&blob)).await.unwrap(), None);
    assert!(b.read_blob(sha256(&blob), 0..10).await.unwrap().is_none());
    a.put_blob(sha256(&blob), Bytes::from(blob.clone()))
        .await
        .unwrap();
    assert_eq!(b.blob_len(sha256(&blob)).await.unwrap(), Some(3_333));
    assert_eq!(read_all(&b, &blob, 0..u64::MAX).await, blob);
    assert_eq!(read_all(&a, &blob, 0..u64::MAX).await, blob);
    // An empty blob is a blob too.
    a.put_blob(sha256(b""), Bytes::new()).await.unwrap();
    assert_eq!(b.blob_len(sha256(b"")).await.unwrap(), Some(0));
    assert_eq!(read_all(&b, b"", 0..u64::MAX).await, b"");
}

async fn ranges_of_a_blob_are_its_bytes<S: ArtefactStore>(a: S, _b: S) {
    let blob = noise(2, 1_050);
    a.put_blob(sha256(&blob), Bytes::from(blob.clone()))
        .await
        .unwrap();
    // Chunk boundaries of the PostgreSQL suite are multiples of 100.
    for (range, expected) in [
        (0..1, 0..1),
        (99..101, 99..101),
        (100..200, 100..200),
        (250..1_050, 250..1_050),
        (1_000..5_000, 1_000..1_050),
        (1_049..1_050, 1_049..1_050),
        (1_050..1_060, 1_050..1_050),
        (7..7, 7..7),
    ] {
        assert_eq!(
            read_all(&a, &blob, range.clone()).await,
            blob[expected.start..expected.end],
            "{range:?}"
        );
    }
}

async fn a_blob_that_does_not_hash_to_its_name_is_refused_and_not_stored<S: ArtefactStore>(
    a: S,
    b: S,
) {
    let err = a
        .put_blob(sha256(b"expected"), Bytes::from_static(b"actual"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::HashMismatch { expected, actual } if expected == sha256(b"expected") && actual == sha256(b"actual")),
        "{err:?}"
    );
    assert_eq!(b.blob_len(sha256(b"expected")).await.unwrap(), None);
    assert_eq!(b.blob_len(sha256(b"actual")).await.unwrap(), None);
}

async fn blobs_above_the_caps_are_refused_naming_the_cap<S: ArtefactStore>(a: S, b: S) {
    let big = noise(3, 4_097);
    let err = a
        .put_blob(sha256(&big), Bytes::from(big.clone()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooLarge {
                what: "blob",
                limit: 4096,
                got: 4097
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("4096 bytes"), "{err}");
    assert_eq!(b.blob_len(sha256(&big)).await.unwrap(), None);

    // 4000 + 4000 fit in 10000; a third does not.
    let blobs: Vec<Vec<u8>> = (10..13).map(|seed| noise(seed, 4_000)).collect();
    for blob in &blobs[..2] {
        a.put_blob(sha256(blob), Bytes::from(blob.clone()))
            .await
            .unwrap();
    }
    let err = b
        .put_blob(sha256(&blobs[2]), Bytes::from(blobs[2].clone()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::StorageFull {
                limit: 10_000,
                used: 8_000,
                got: 4_000
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("10000 bytes"), "{err}");
    assert_eq!(a.blob_len(sha256(&blobs[2])).await.unwrap(), None);
    // A stored blob again is no new bytes: still accepted when full.
    b.put_blob(sha256(&blobs[0]), Bytes::from(blobs[0].clone()))
        .await
        .unwrap();
    // Collecting the unreferenced blobs makes room.
    let report = a.collect_garbage(now_unix() + 10).await.unwrap();
    assert_eq!((report.blobs, report.bytes), (2, 8_000));
    b.put_blob(sha256(&blobs[2]), Bytes::from(blobs[2].clone()))
        .await
        .unwrap();
}

async fn concurrent_puts_of_one_blob_from_two_nodes_store_it_once<S>(a: S, b: S)
where
    S: ArtefactStore + Clone + 'static,
{
    let blob = Bytes::from(noise(4, 4_000));
    let sha = sha256(&blob);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let node = if i % 2 == 0 { a.clone() } else { b.clone() };
        let blob = blob.clone();
        tasks.spawn(async move { node.put_blob(sha, blob).await });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap();
    }
    assert_eq!(read_all(&a, &blob, 0..u64::MAX).await, blob);
    assert_eq!(read_all(&b, &blob, 0..u64::MAX).await, blob);
    // Counted once against the 10000-byte total: another 4000 still fits,
    // a 2001-byte one then does not.
    let second = noise(5, 4_000);
    a.put_blob(sha256(&second), Bytes::from(second.clone()))
        .await
        .unwrap();
    let third = noise(6, 2_001);
    let err = b
        .put_blob(sha256(&third), Bytes::from(third.clone()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::StorageFull { used: 8_000, .. }),
        "{err:?}"
    );
}

async fn manifests_need_a_root_their_blobs_and_a_higher_sequence<S: ArtefactStore>(a: S, b: S) {
    let keys = Keys::generate();
    let blob = b"blob".to_vec();
    let err = a
        .put_manifest(stable(), keys.manifest("stable", 1, &blob))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoRoot), "{err:?}");

    a.put_root(keys.root_json.clone()).await.unwrap();
    let err = b
        .put_manifest(stable(), keys.manifest("stable", 1, &blob))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::MissingBlob { sha256: s } if s == sha256(&blob)),
        "{err:?}"
    );

    a.put_blob(sha256(&blob), Bytes::from(blob.clone()))
        .await
        .unwrap();
    let two = keys.manifest("stable", 2, &blob);
    assert_eq!(b.put_manifest(stable(), two.clone()).await.unwrap(), 2);
    // The same bytes again, on either node: a no-op.
    assert_eq!(a.put_manifest(stable(), two.clone()).await.unwrap(), 2);
    assert_eq!(a.manifest(stable()).await.unwrap(), Some(two.clone()));
    // Another manifest with the current sequence, and a replay of an older
    // one, are refused.
    for (sequence, content) in [(2, &b"other"[..]), (1, &blob[..])] {
        let err = a
            .put_manifest(stable(), keys.manifest("stable", sequence, content))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::StaleSequence { current: 2, got, .. } if got == sequence),
            "{sequence}: {err:?}"
        );
    }
    // A manifest declaring a stored blob with another size.
    let err = b
        .put_manifest(
            stable(),
            keys.manifest_declaring("stable", 3, sha256(&blob), 5),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::BlobSize {
                declared: 5,
                actual: 4,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        a.put_manifest(stable(), keys.manifest("stable", 3, &blob))
            .await
            .unwrap(),
        3
    );
    // A manifest for another channel uploaded to this one.
    let err = b
        .put_manifest(stable(), keys.manifest("beta", 9, &blob))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Signing(outrider_signing::Error::WrongChannel { .. })
        ),
        "{err:?}"
    );
    // Signed by a key the root does not trust.
    let err = b
        .put_manifest(stable(), Keys::generate().manifest("stable", 4, &blob))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Signing(outrider_signing::Error::BelowThreshold { .. })
        ),
        "{err:?}"
    );
    let history = b.manifest_history(stable(), 10).await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[1], two);
    assert_eq!(b.manifest_history(stable(), 1).await.unwrap().len(), 1);
    assert_eq!(b.manifest("beta".parse().unwrap()).await.unwrap(), None);
}

async fn roots_are_shared_and_follow_the_chain<S: ArtefactStore>(a: S, b: S) {
    assert_eq!(b.root().await.unwrap(), None);
    let keys = Keys::generate();
    a.put_root(keys.root_json.clone()).await.unwrap();
    b.put_root(keys.root_json.clone()).await.unwrap(); // same bytes: no-op
    assert_eq!(b.root().await.unwrap(), Some(keys.root_json.clone()));
    assert_eq!(
        b.root_version(1).await.unwrap(),
        Some(keys.root_json.clone())
    );
    assert_eq!(b.root_version(2).await.unwrap(), None);
    assert_eq!(b.root_version(u64::MAX).await.unwrap(), None);
    // Another self-signed root is not a successor of the stored one.
    let err = b.put_root(Keys::generate().root_json).await.unwrap_err();
    assert!(matches!(err, Error::Signing(_)), "{err:?}");
    assert_eq!(a.root().await.unwrap(), Some(keys.root_json));
}

async fn two_nodes_racing_to_publish_on_one_channel_never_both_win_a_sequence<S>(a: S, b: S)
where
    S: ArtefactStore + Clone + 'static,
{
    let keys = Arc::new(Keys::generate());
    a.put_root(keys.root_json.clone()).await.unwrap();
    let blobs = [b"blob a".to_vec(), b"blob b".to_vec()];
    for blob in &blobs {
        a.put_blob(sha256(blob), Bytes::from(blob.clone()))
            .await
            .unwrap();
    }
    // Each round both nodes publish a different manifest with the same
    // sequence at once: exactly one wins, the other is told it is stale.
    for sequence in 1..=8u64 {
        let ma = keys.manifest("stable", sequence, &blobs[0]);
        let mb = keys.manifest("stable", sequence, &blobs[1]);
        let (ra, rb) = tokio::join!(
            a.put_manifest(stable(), ma.clone()),
            b.put_manifest(stable(), mb.clone())
        );
        let winner = match (ra, rb) {
            (Ok(s), Err(Error::StaleSequence { current, got, .. }))
                if s == sequence && current == sequence && got == sequence =>
            {
                ma
            }
            (Err(Error::StaleSequence { current, got, .. }), Ok(s))
                if s == sequence && current == sequence && got == sequence =>
            {
                mb
            }
            other => panic!("sequence {sequence}: {other:?}"),
        };
        assert_eq!(b.manifest(stable()).await.unwrap(), Some(winner));
    }
    // Many publishes with shuffled sequences from both nodes at once: the
    // stored history is strictly increasing, and what was accepted is
    // exactly what is stored.
    let mut tasks = tokio::task::JoinSet::new();
    for (i, sequence) in [14u64, 9, 12, 10, 16, 11, 15, 13].into_iter().enumerate() {
        let node = if i % 2 == 0 { a.clone() } else { b.clone() };
        let envelope = keys.manifest("stable", sequence, &blobs[i % 2]);
        tasks.spawn(async move {
            (
                sequence,
                node.put_manifest(stable(), envelope).await.is_ok(),
            )
        });
    }
    let mut accepted = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (sequence, ok) = done.unwrap();
        if ok {
            accepted.push(sequence);
        }
    }
    accepted.sort_unstable();
    let history = a.manifest_history(stable(), 100).await.unwrap();
    let mut stored: Vec<u64> = history
        .iter()
        .map(|e| outrider_update_server::decode_manifest(e).unwrap().sequence)
        .collect();
    assert!(stored.windows(2).all(|w| w[0] > w[1]), "{stored:?}");
    stored.retain(|s| *s > 8);
    stored.sort_unstable();
    assert_eq!(stored, accepted);
    // Nothing can stop the highest sequence.
    assert!(accepted.contains(&16), "{accepted:?}");
}

async fn garbage_collection_keeps_referenced_and_recent_blobs<S: ArtefactStore>(a: S, b: S) {
    let keys = Keys::generate();
    a.put_root(keys.root_json.clone()).await.unwrap();
    let old_build = b"build one".to_vec();
    let new_build = b"build two".to_vec();
    let stray = b"uploaded, never published".to_vec();
    for blob in [&old_build, &new_build, &stray] {
        a.put_blob(sha256(blob), Bytes::from(blob.clone()))
            .await
            .unwrap();
    }
    a.put_manifest(stable(), keys.manifest("stable", 1, &old_build))
        .await
        .unwrap();
    b.put_manifest(stable(), keys.manifest("stable", 2, &new_build))
        .await
        .unwrap();
    // Nothing is old enough before the cutoff.
    assert_eq!(b.collect_garbage(0).await.unwrap().blobs, 0);
    let report = b.collect_garbage(now_unix() + 10).await.unwrap();
    assert_eq!((report.blobs, report.bytes), (1, stray.len() as u64));
    assert_eq!(a.blob_len(sha256(&stray)).await.unwrap(), None);
    // The current build and the one in the history stay.
    assert_eq!(read_all(&a, &old_build, 0..100).await, old_build);
    assert_eq!(read_all(&a, &new_build, 0..100).await, new_build);
    assert_eq!(b.collect_garbage(now_unix() + 10).await.unwrap().blobs, 0);
}

async fn channels_and_builds_come_from_the_stored_history<S: ArtefactStore>(a: S, b: S) {
    assert!(b.channels().await.unwrap().is_empty());
    let keys = Keys::generate();
    a.put_root(keys.root_json.clone()).await.unwrap();
    let one = b"build one".to_vec();
    let two = b"build two".to_vec();
    for blob in [&one, &two] {
        a.put_blob(sha256(blob), Bytes::from(blob.clone()))
            .await
            .unwrap();
    }
    // one, two, then back to one (a rollback), on two channels.
    for (sequence, blob) in [(1, &one), (2, &two), (3, &one)] {
        a.put_manifest(stable(), keys.manifest("stable", sequence, blob))
            .await
            .unwrap();
    }
    b.put_manifest("beta".parse().unwrap(), keys.manifest("beta", 7, &two))
        .await
        .unwrap();
    let channels = b.channels().await.unwrap();
    let summary: Vec<(String, u64, String)> = channels
        .iter()
        .map(|c| {
            (
                c.channel.to_string(),
                c.sequence,
                c.versions["x86_64-linux"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("beta".to_owned(), 7, "1.0.7".to_owned()),
            ("stable".to_owned(), 3, "1.0.3".to_owned())
        ]
    );
    assert!(channels[1].published_unix + 60 > now_unix());
    // Distinct builds, newest first, each with its newest sequence.
    let builds = b.builds(stable(), "x86_64-linux".into(), 10).await.unwrap();
    let listed: Vec<(u64, Sha256)> = builds
        .iter()
        .map(|b| (b.sequence, b.artifact.zstd_sha256))
        .collect();
    assert_eq!(listed, [(3, sha256(&one)), (2, sha256(&two))]);
    assert_eq!(
        a.builds(stable(), "x86_64-linux".into(), 1)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        a.builds(stable(), "aarch64-linux".into(), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// `blob` as an upload body in uneven pieces.
fn pieces(
    blob: &[u8],
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let parts: Vec<Bytes> = [0..7, 7..blob.len() / 2, blob.len() / 2..blob.len()]
        .into_iter()
        .map(|r| Bytes::copy_from_slice(&blob[r]))
        .collect();
    futures_util::stream::iter(parts.into_iter().map(Ok))
}

async fn a_streamed_upload_is_stored_whole_or_not_at_all<S: ArtefactStore>(a: S, b: S) {
    let blob = noise(20, 2_345);
    assert_eq!(
        a.put_blob_stream(sha256(&blob), pieces(&blob))
            .await
            .unwrap(),
        2_345
    );
    assert_eq!(read_all(&b, &blob, 0..u64::MAX).await, blob);
    // Again: a no-op.
    assert_eq!(
        b.put_blob_stream(sha256(&blob), pieces(&blob))
            .await
            .unwrap(),
        2_345
    );

    // Not what it claims to be.
    let other = noise(21, 1_000);
    let err = a
        .put_blob_stream(sha256(b"claimed"), pieces(&other))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::HashMismatch { .. }), "{err:?}");
    assert_eq!(b.blob_len(sha256(b"claimed")).await.unwrap(), None);

    // Past the cap: refused at the piece that passes it; the body is never
    // read further.
    let big = noise(22, 4_097);
    let body = pieces(&big).chain(futures_util::stream::once(async {
        panic!("read past the cap")
    }));
    let err = a.put_blob_stream(sha256(&big), body).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooLarge {
                limit: 4096,
                got: 4097,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(b.blob_len(sha256(&big)).await.unwrap(), None);

    // The client goes away mid-body.
    let broken = futures_util::stream::iter([
        Ok(Bytes::from_static(b"half of it")),
        Err(std::io::Error::other("connection reset")),
    ]);
    let err = a
        .put_blob_stream(sha256(b"half of it, and the rest"), broken)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Upload(reason) if reason.contains("connection reset")),
        "{err:?}"
    );

    // Over the total cap (10000; 2345 stored): refused, nothing kept.
    let full = noise(24, 4_000);
    a.put_blob_stream(sha256(&full), pieces(&full))
        .await
        .unwrap();
    let over = noise(25, 4_000);
    let err = b
        .put_blob_stream(sha256(&over), pieces(&over))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::StorageFull {
                limit: 10_000,
                used: 6_345,
                got: 4_000
            }
        ),
        "{err:?}"
    );
    assert_eq!(a.blob_len(sha256(&over)).await.unwrap(), None);
    // Nothing of the refused uploads takes room: a 3655-byte blob fits.
    let last = noise(26, 3_655);
    b.put_blob_stream(sha256(&last), pieces(&last))
        .await
        .unwrap();
}

async fn concurrent_streamed_uploads_of_one_blob_from_two_nodes_store_it_once<S>(a: S, b: S)
where
    S: ArtefactStore + Clone + 'static,
{
    let blob = noise(27, 4_000);
    let sha = sha256(&blob);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..6 {
        let node = if i % 2 == 0 { a.clone() } else { b.clone() };
        let body = pieces(&blob);
        tasks.spawn(async move { node.put_blob_stream(sha, body).await });
    }
    while let Some(done) = tasks.join_next().await {
        assert_eq!(done.unwrap().unwrap(), 4_000);
    }
    assert_eq!(read_all(&b, &blob, 0..u64::MAX).await, blob);
    // Counted once against the 10000-byte total: another 4000 fits, then
    // 2001 more do not.
    let second = noise(28, 4_000);
    a.put_blob_stream(sha256(&second), pieces(&second))
        .await
        .unwrap();
    let third = noise(29, 2_001);
    let err = b
        .put_blob_stream(sha256(&third), pieces(&third))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::StorageFull { used: 8_000, .. }),
        "{err:?}"
    );
}

/// PostgreSQL serves a blob chunk by chunk: no item of the stream is
/// larger than a stored chunk, so a build is never held whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_streams_a_blob_one_chunk_at_a_time() {
    let (_guard, a, b) = postgres().await;
    let blob = noise(7, 4_000);
    a.put_blob(sha256(&blob), Bytes::from(blob.clone()))
        .await
        .unwrap();
    let mut stream = b
        .read_blob(sha256(&blob), 0..u64::MAX)
        .await
        .unwrap()
        .unwrap();
    let mut items = 0;
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        assert!(chunk.len() <= CHUNK, "{}", chunk.len());
        out.extend_from_slice(&chunk);
        items += 1;
    }
    assert_eq!(items, 40);
    assert_eq!(out, blob);
}

/// Any node answers any update request: a blob and a manifest published
/// through node A's store are served over HTTP by node B's public routes,
/// byte-identical, whole and by range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_b_serves_over_http_what_node_a_stored() {
    let (_guard, a, b) = postgres().await;
    let keys = Keys::generate();
    let blob = noise(8, 3_210);
    let manifest = keys.manifest("stable", 1, &blob);
    let serve = |router: axum::Router| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        (addr, task)
    };
    let (admin_a, admin_task) = serve(outrider_update_server::admin_router(a)).await;
    let (addr, server) = serve(outrider_update_server::public_router(b)).await;
    let http = reqwest::Client::new();
    // Published through node A's upload routes.
    for (path, body) in [
        ("/api/v1/releases/root".to_owned(), keys.root_json.clone()),
        (
            format!("/api/v1/releases/blobs/{}", sha256(&blob)),
            blob.clone(),
        ),
        (
            "/api/v1/releases/channels/stable/manifest".to_owned(),
            manifest.clone(),
        ),
    ] {
        let resp = http
            .put(format!("http://{admin_a}{path}"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
    }
    let channels = http
        .get(format!("http://{admin_a}/api/v1/releases/channels"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let channels: serde_json::Value = serde_json::from_slice(&channels).unwrap();
    assert_eq!(channels[0]["sequence"], 1, "{channels}");
    admin_task.abort();
    let get = |path: String, range: Option<&'static str>| {
        let mut req = http.get(format!("http://{addr}{path}"));
        if let Some(range) = range {
            req = req.header("range", range);
        }
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.bytes().await.unwrap().to_vec())
        }
    };
    let path = format!("/v1/updates/blobs/{}", sha256(&blob));
    assert_eq!(get(path.clone(), None).await, (200, blob.clone()));
    assert_eq!(
        get(path.clone(), Some("bytes=150-2049")).await,
        (206, blob[150..2050].to_vec())
    );
    assert_eq!(
        get(path, Some("bytes=-10")).await,
        (206, blob[3_200..].to_vec())
    );
    assert_eq!(
        get("/v1/updates/channels/stable/manifest.json".into(), None).await,
        (200, manifest)
    );
    assert_eq!(
        get("/v1/updates/root.json".into(), None).await,
        (200, keys.root_json)
    );
    let missing = format!("/v1/updates/blobs/{}", sha256(b"missing"));
    assert_eq!(get(missing, None).await.0, 404);
    server.abort();
}

/// Plugin files: the same two-node suite over [`PluginFileStore`].
mod plugins {
    use axum::body::Bytes;
    use futures_util::StreamExt;
    use outrider_protocol::{MAX_PLUGIN_BYTES, PLUGIN_CHUNK_BYTES};
    use sha2::{Digest, Sha256};

    use crate::backend::{PgBackend, PgPluginFiles, PgTls, PluginFileStore};
    use crate::plugins::{PluginFiles, UploadError};

    /// What a store holds: (files, pieces of unfinished uploads).
    enum Inspect {
        Dir(tempfile::TempDir),
        Pg(PgBackend),
    }

    impl Inspect {
        async fn held(&self) -> (usize, usize) {
            match self {
                Inspect::Dir(dir) => {
                    let names: Vec<String> = std::fs::read_dir(dir.path())
                        .unwrap()
                        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                        .collect();
                    let stray = names.iter().filter(|n| n.starts_with(".upload-")).count();
                    (names.len() - stray, stray)
                }
                Inspect::Pg(backend) => {
                    let client = backend.client().await.unwrap();
                    let row = client
                        .query_one(
                            "SELECT (SELECT COUNT(*) FROM plugin_files),
                                    (SELECT COUNT(*) FROM plugin_file_chunks WHERE file_key LIKE 'upload-%')",
                            &[],
                        )
                        .await
                        .unwrap();
                    (row.get::<_, i64>(0) as usize, row.get::<_, i64>(1) as usize)
                }
            }
        }
    }

    async fn directory() -> (Inspect, PluginFiles, PluginFiles) {
        let dir = tempfile::tempdir().unwrap();
        let a = PluginFiles::open(dir.path()).unwrap();
        let b = PluginFiles::open(dir.path()).unwrap();
        (Inspect::Dir(dir), a, b)
    }

    async fn postgres() -> (Inspect, PgPluginFiles, PgPluginFiles) {
        let db = outrider_pgtest::Cluster::shared()
            .unwrap_or_else(|e| panic!("{e}"))
            .database()
            .await
            .unwrap();
        let backend = || async {
            PgBackend::with_config(db.config.clone(), PgTls::Disable, 4)
                .await
                .unwrap()
        };
        let a = backend().await;
        let b = backend().await;
        (
            Inspect::Pg(a.clone()),
            PgPluginFiles::new(a),
            // Node B writes smaller chunks: reads must follow each file's own.
            PgPluginFiles::new(b).with_chunk_bytes(100_000),
        )
    }

    macro_rules! plugin_suite {
        ($($test:ident),* $(,)?) => {
            mod directory {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $test() {
                        let (inspect, a, b) = super::directory().await;
                        super::$test(inspect, a, b).await;
                    }
                )*
            }
            mod postgres {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $test() {
                        let (inspect, a, b) = super::postgres().await;
                        super::$test(inspect, a, b).await;
                    }
                )*
            }
        };
    }

    plugin_suite!(
        a_file_stored_on_one_node_is_read_in_chunks_on_the_other,
        an_upload_over_the_limit_is_refused_while_streaming_and_leaves_nothing,
        concurrent_uploads_of_one_file_from_two_nodes_store_it_once,
    );

    fn body(
        parts: Vec<Vec<u8>>,
    ) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
        futures_util::stream::iter(parts.into_iter().map(|p| Ok(Bytes::from(p))))
    }

    async fn a_file_stored_on_one_node_is_read_in_chunks_on_the_other<P: PluginFileStore>(
        inspect: Inspect,
        a: P,
        b: P,
    ) {
        let bytes: Vec<u8> = (0..PLUGIN_CHUNK_BYTES * 2 + 10)
            .map(|i| (i % 251) as u8)
            .collect();
        // Arriving in uneven pieces, as an HTTP body does.
        let parts = vec![
            bytes[..7].to_vec(),
            bytes[7..300_000].to_vec(),
            bytes[300_000..].to_vec(),
        ];
        for (store, reader) in [(&b, &a), (&a, &b)] {
            let (sha, size) = store.store(body(parts.clone())).await.unwrap();
            assert_eq!(sha, hex::encode(Sha256::digest(&bytes)));
            assert_eq!(size, bytes.len() as u64);
            let mut read = Vec::new();
            while (read.len() as u64) < size {
                let (chunk, total) = reader.read_chunk(&sha, read.len() as u64).await.unwrap();
                assert_eq!(total, size);
                assert_eq!(
                    chunk.len(),
                    PLUGIN_CHUNK_BYTES.min(bytes.len() - read.len())
                );
                read.extend_from_slice(&chunk);
            }
            assert_eq!(read, bytes);
            assert_eq!(inspect.held().await, (1, 0));
            let err = reader.read_chunk(&sha, size + 1).await.unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
            let (empty, _) = reader.read_chunk(&sha, size).await.unwrap();
            assert!(empty.is_empty());
            let err = reader.read_chunk("../etc/passwd", 0).await.unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
            // Removed by one node: gone for the other.
            store.remove(&sha).await;
            let err = reader.read_chunk(&sha, 0).await.unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
            assert_eq!(inspect.held().await, (0, 0));
        }
        assert!(matches!(
            a.store(body(vec![])).await,
            Err(UploadError::Empty)
        ));
    }

    /// A file another node named again after this one's store called it
    /// orphaned is not removed.
    #[tokio::test]
    async fn postgres_keeps_a_file_a_plugin_names() {
        let (inspect, a, b) = postgres().await;
        let Inspect::Pg(backend) = &inspect else {
            unreachable!("postgres() inspects PostgreSQL")
        };
        let bytes = b"#!/bin/sh\necho OK\n".to_vec();
        let (sha, size) = a.store(body(vec![bytes.clone()])).await.unwrap();
        let client = backend.client().await.unwrap();
        client
            .execute(
                "INSERT INTO plugins (name, sha256, size, updated_at_ms) VALUES ('check_ok', $1, $2, 0)",
                &[&sha, &(size as i64)],
            )
            .await
            .unwrap();
        b.remove(&sha).await;
        let (read, total) = a.read_chunk(&sha, 0).await.unwrap();
        assert_eq!((read, total), (bytes, size));
        client
            .execute("DELETE FROM plugins WHERE name = 'check_ok'", &[])
            .await
            .unwrap();
        b.remove(&sha).await;
        let err = a.read_chunk(&sha, 0).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        assert_eq!(inspect.held().await, (0, 0));
    }

    async fn an_upload_over_the_limit_is_refused_while_streaming_and_leaves_nothing<
        P: PluginFileStore,
    >(
        inspect: Inspect,
        a: P,
        _b: P,
    ) {
        let mib = Bytes::from(vec![7u8; 1 << 20]);
        let chunks = (MAX_PLUGIN_BYTES >> 20) + 1;
        let body = futures_util::stream::iter(
            (0..chunks).map(move |_| Ok::<_, std::convert::Infallible>(mib.clone())),
        )
        // One more chunk than allowed, then one the store must never ask for.
        .chain(futures_util::stream::once(async {
            panic!("read past the limit")
        }));
        assert!(matches!(a.store(body).await, Err(UploadError::TooLarge)));
        assert_eq!(inspect.held().await, (0, 0));
    }

    async fn concurrent_uploads_of_one_file_from_two_nodes_store_it_once<P>(
        inspect: Inspect,
        a: P,
        b: P,
    ) where
        P: PluginFileStore + Clone + 'static,
    {
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 13) as u8).collect();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..6 {
            let node = if i % 2 == 0 { a.clone() } else { b.clone() };
            let parts = vec![bytes[..1000].to_vec(), bytes[1000..].to_vec()];
            tasks.spawn(async move { node.store(body(parts)).await });
        }
        let sha = hex::encode(Sha256::digest(&bytes));
        while let Some(done) = tasks.join_next().await {
            assert_eq!(done.unwrap().unwrap(), (sha.clone(), 300_000));
        }
        assert_eq!(inspect.held().await, (1, 0));
        let (first, total) = b.read_chunk(&sha, 0).await.unwrap();
        assert_eq!(total, 300_000);
        assert_eq!(first, bytes[..PLUGIN_CHUNK_BYTES]);
    }
}

/// Uploading a stored blob again restarts its grace: garbage collection
/// with a cutoff between its first and its latest upload keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_blob_uploaded_again_is_spared_by_garbage_collection() {
    let db = outrider_pgtest::Cluster::shared()
        .unwrap_or_else(|e| panic!("{e}"))
        .database()
        .await
        .unwrap();
    let backend = PgBackend::with_config(db.config, PgTls::Disable, 2)
        .await
        .unwrap();
    let store = PgArtefacts::new(backend.clone(), CAPS);
    let kept = b"uploaded long ago, and again now".to_vec();
    let dropped = b"uploaded long ago only".to_vec();
    for blob in [&kept, &dropped] {
        store
            .put_blob(sha256(blob), Bytes::from(blob.clone()))
            .await
            .unwrap();
    }
    // Both first uploaded an hour ago.
    let long_ago = now_unix() as i64 - 3_600;
    backend
        .client()
        .await
        .unwrap()
        .execute("UPDATE release_blobs SET stored_unix = $1", &[&long_ago])
        .await
        .unwrap();
    store
        .put_blob(sha256(&kept), Bytes::from(kept.clone()))
        .await
        .unwrap();
    let report = store.collect_garbage(now_unix() - 60).await.unwrap();
    assert_eq!((report.blobs, report.bytes), (1, dropped.len() as u64));
    assert_eq!(
        store.blob_len(sha256(&kept)).await.unwrap(),
        Some(kept.len() as u64)
    );
    assert_eq!(store.blob_len(sha256(&dropped)).await.unwrap(), None);
}

/// A refused or broken streamed upload leaves no chunk rows (PostgreSQL)
/// and no temp files (directory) behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_streamed_uploads_leave_nothing_behind() {
    async fn refuse<S: ArtefactStore>(s: &S) {
        let big = noise(30, 4_097);
        assert!(s.put_blob_stream(sha256(&big), pieces(&big)).await.is_err());
        let other = noise(31, 300);
        assert!(
            s.put_blob_stream(sha256(b"claimed"), pieces(&other))
                .await
                .is_err()
        );
        let broken = futures_util::stream::iter([
            Ok(Bytes::from(noise(32, 250))),
            Err(std::io::Error::other("reset")),
        ]);
        assert!(s.put_blob_stream(sha256(b"x"), broken).await.is_err());
    }
    let (guard, a, _b) = directory().await;
    refuse(&a).await;
    let blobs = guard.as_ref().unwrap().path().join("blobs");
    assert_eq!(std::fs::read_dir(&blobs).unwrap().count(), 0);

    let db = outrider_pgtest::Cluster::shared()
        .unwrap_or_else(|e| panic!("{e}"))
        .database()
        .await
        .unwrap();
    let backend = PgBackend::with_config(db.config, PgTls::Disable, 2)
        .await
        .unwrap();
    let store = PgArtefacts::new(backend.clone(), CAPS).with_chunk_bytes(CHUNK);
    refuse(&store).await;
    let rows: i64 = backend
        .client()
        .await
        .unwrap()
        .query_one(
            "SELECT (SELECT COUNT(*) FROM release_blob_chunks) + (SELECT COUNT(*) FROM release_blobs)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0);
}
