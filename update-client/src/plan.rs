//! Deciding what to install from a verified manifest (pure, no IO).
//!
//! | in rollout cohort | runs a build | decision                                   |
//! |-------------------|--------------|--------------------------------------------|
//! | yes               | the target   | up to date                                 |
//! | yes               | another one  | install the target (delta if one matches)  |
//! | yes               | none         | install the target (full)                  |
//! | no                | any          | keep it                                    |
//! | no                | none         | install `previous`, else the target        |
//!
//! A manifest without `rollout` puts every client in the cohort; that is
//! also how an operator rollback reaches everyone: a higher sequence whose
//! target is the older build.
//!
//! Which delta: of the target's `deltas` and `more_deltas` entries for the
//! client's build, the smallest in a format the client can apply
//! ([`pick_delta`]). Clients released before `more_deltas` existed see only
//! `deltas`, which publishers fill with formats every client knows, so a
//! newer format never costs an older client its delta.

use outrider_signing::{Artifact, Delta, DeltaFormat, Sha256, Target, VerifiedManifest};

use crate::UpdateError;

/// What the client knows about itself.
#[derive(Clone, Debug)]
pub struct ClientView<'a> {
    /// Target triple, e.g. `x86_64-linux`.
    pub triple: &'a str,
    /// ABI major the client can load.
    pub abi_major: u32,
    /// The agent's fingerprint, when its identity exists; without one the
    /// client is outside every partial rollout.
    pub fingerprint: Option<&'a str>,
    /// SHA-256 of the library it runs, if any.
    pub current: Option<Sha256>,
}

/// What to install.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Install {
    pub version: String,
    pub artifact: Artifact,
    /// A delta from the client's current build, if the manifest has one in
    /// a format this client knows.
    pub delta: Option<Delta>,
}

/// The decision of one update check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// The client runs the build it should.
    UpToDate { version: String },
    /// The client keeps its build (outside the rollout cohort).
    Stay,
    /// The client should install this build.
    Install(Install),
}

/// Decides, per the table in the module docs, for a client that applies the
/// delta formats of this build ([`outrider_delta::SUPPORTED`]).
///
/// Fails when the manifest has no build for `client.triple` or its build
/// speaks another ABI major.
pub fn plan(manifest: &VerifiedManifest, client: &ClientView<'_>) -> Result<Plan, UpdateError> {
    plan_with_formats(manifest, client, &outrider_delta::SUPPORTED)
}

/// [`plan`] for a client that can apply only `formats`.
///
/// # Errors
///
/// As [`plan`].
pub fn plan_with_formats(
    manifest: &VerifiedManifest,
    client: &ClientView<'_>,
    formats: &[DeltaFormat],
) -> Result<Plan, UpdateError> {
    let target = manifest
        .manifest
        .targets
        .get(client.triple)
        .ok_or_else(|| UpdateError::NoTarget {
            triple: client.triple.to_owned(),
        })?;
    if target.abi_major != client.abi_major {
        return Err(UpdateError::AbiMajor {
            version: target.version.clone(),
            got: target.abi_major,
            ours: client.abi_major,
        });
    }
    if client.current == Some(target.artifact.sha256) {
        return Ok(Plan::UpToDate {
            version: target.version.clone(),
        });
    }
    let in_cohort = match &target.rollout {
        None => true,
        Some(rollout) => client.fingerprint.is_some_and(|fp| rollout.includes(fp)),
    };
    if !in_cohort {
        if client.current.is_some() {
            return Ok(Plan::Stay);
        }
        if let Some(previous) = &target.previous {
            return Ok(Plan::Install(Install {
                version: previous.version.clone(),
                artifact: previous.artifact.clone(),
                delta: None,
            }));
        }
    }
    let delta = client
        .current
        .and_then(|base| pick_delta(target, &base, formats))
        .cloned();
    Ok(Plan::Install(Install {
        version: target.version.clone(),
        artifact: target.artifact.clone(),
        delta,
    }))
}

/// The smallest delta from `base` to `target` in one of `formats`: the
/// `deltas` entry first, then `more_deltas` in order, the earliest winning a
/// tie. [`DeltaFormat::Unknown`] (a format newer than this client) is never
/// picked, whatever `formats` says.
pub fn pick_delta<'t>(
    target: &'t Target,
    base: &Sha256,
    formats: &[DeltaFormat],
) -> Option<&'t Delta> {
    let offered = target.deltas.get(base).into_iter();
    let more = target.more_deltas.get(base).into_iter().flatten();
    offered
        .chain(more)
        .filter(|d| d.format != DeltaFormat::Unknown && formats.contains(&d.format))
        .reduce(|best, d| if d.size < best.size { d } else { best })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use outrider_signing::{PreviousBuild, ReleaseManifest, Rollout, rollout_bucket, sha256};

    use super::*;

    fn artifact(n: u8) -> Artifact {
        Artifact {
            sha256: sha256(&[n]),
            size: 10,
            zstd_sha256: sha256(&[n, n]),
            zstd_size: 5,
        }
    }

    fn manifest(target: Target) -> VerifiedManifest {
        let m = ReleaseManifest::new(
            "stable".parse().unwrap(),
            1,
            u64::MAX,
            BTreeMap::from([("x86_64-linux".to_owned(), target)]),
        );
        VerifiedManifest {
            manifest: m,
            payload_sha256: sha256(b"p"),
        }
    }

    fn view(fp: Option<&str>, current: Option<Sha256>) -> ClientView<'_> {
        ClientView {
            triple: "x86_64-linux",
            abi_major: 1,
            fingerprint: fp,
            current,
        }
    }

    /// A fingerprint inside (or outside) a 50% rollout with salt "s".
    fn fingerprint(inside: bool) -> String {
        (0u32..)
            .map(|i| format!("{i:020x}"))
            .find(|fp| (rollout_bucket(fp, "s") < 5000) == inside)
            .unwrap()
    }

    fn staged(target: Target) -> Target {
        Target {
            rollout: Some(Rollout {
                basis_points: 5000,
                salt: "s".into(),
                paused: false,
            }),
            previous: Some(PreviousBuild {
                version: "1".into(),
                artifact: artifact(1),
            }),
            ..target
        }
    }

    #[test]
    fn full_rollout_installs_target_with_matching_delta() {
        let mut target = Target::full("2".into(), 1, artifact(2));
        let delta = Delta {
            format: DeltaFormat::BsdiffZstd,
            sha256: sha256(b"d"),
            size: 3,
        };
        target.deltas.insert(artifact(1).sha256, delta.clone());
        let m = manifest(target);
        let Plan::Install(i) = plan(&m, &view(None, Some(artifact(1).sha256))).unwrap() else {
            panic!()
        };
        assert_eq!((i.version.as_str(), i.delta), ("2", Some(delta)));
        // No delta from an unrelated build; fresh installs take the full build.
        let Plan::Install(i) = plan(&m, &view(None, Some(artifact(7).sha256))).unwrap() else {
            panic!()
        };
        assert_eq!(i.delta, None);
        assert_eq!(
            plan(&m, &view(None, Some(artifact(2).sha256))).unwrap(),
            Plan::UpToDate {
                version: "2".into()
            }
        );
    }

    #[test]
    fn unknown_delta_formats_are_skipped() {
        let mut target = Target::full("2".into(), 1, artifact(2));
        target.deltas.insert(
            artifact(1).sha256,
            Delta {
                format: DeltaFormat::Unknown,
                sha256: sha256(b"d"),
                size: 3,
            },
        );
        let Plan::Install(i) =
            plan(&manifest(target), &view(None, Some(artifact(1).sha256))).unwrap()
        else {
            panic!()
        };
        assert_eq!(i.delta, None);
    }

    /// A manifest as a publisher of this build writes it, offering all three
    /// formats from build 1: `bsdiff-zstd` in `deltas` (every client knows
    /// it), `zstd-patch-from` and the smaller `elf-x86-64-bsdiff-zstd` in
    /// `more_deltas`, plus one from a format newer than this client.
    fn all_three() -> VerifiedManifest {
        let base = artifact(1).sha256;
        let delta = |format: &str, n: u8, size: u64| serde_json::json!({"format": format, "sha256": sha256(&[n]), "size": size});
        let target = serde_json::json!({
            "version": "2", "abi_major": 1, "artifact": artifact(2),
            "deltas": {base.to_string(): delta("bsdiff-zstd", 10, 500)},
            "more_deltas": {base.to_string(): [
                delta("zstd-patch-from", 11, 520),
                delta("elf-x86-64-bsdiff-zstd", 12, 200),
                delta("from-the-future", 13, 50),
            ]},
        });
        manifest(serde_json::from_value(target).unwrap())
    }

    /// The format and size of the delta a client that applies `formats` picks.
    type Picked = Option<(DeltaFormat, u64)>;

    fn picked(m: &VerifiedManifest, formats: &[DeltaFormat]) -> Picked {
        let client = view(None, Some(artifact(1).sha256));
        let Plan::Install(i) = plan_with_formats(m, &client, formats).unwrap() else {
            panic!()
        };
        assert_eq!(i.artifact, artifact(2));
        i.delta.map(|d| (d.format, d.size))
    }

    #[test]
    fn a_manifest_offering_three_formats_gives_each_client_one_it_knows() {
        use DeltaFormat::{BsdiffZstd, ElfX86BsdiffZstd, ZstdPatchFrom};
        let m = all_three();
        let table: [(&[DeltaFormat], Picked); 5] = [
            // This build: the smallest it can apply; the future one is Unknown.
            (&outrider_delta::SUPPORTED, Some((ElfX86BsdiffZstd, 200))),
            // A client of the first release with deltas: what `deltas` offers.
            (&outrider_delta::FIRST_FORMATS, Some((BsdiffZstd, 500))),
            (&[ZstdPatchFrom], Some((ZstdPatchFrom, 520))),
            (&[BsdiffZstd, ZstdPatchFrom], Some((BsdiffZstd, 500))),
            // A client that applies no delta at all takes the full build.
            (&[], None),
        ];
        for (formats, expected) in table {
            assert_eq!(picked(&m, formats), expected, "{formats:?}");
        }
        assert_eq!(
            plan(&m, &view(None, Some(artifact(1).sha256))).unwrap(),
            plan_with_formats(
                &m,
                &view(None, Some(artifact(1).sha256)),
                &outrider_delta::SUPPORTED
            )
            .unwrap()
        );
    }

    /// What a stub released before `more_deltas` and the ELF format does
    /// with the same manifest: its `Target` has no `more_deltas`, so the
    /// field lands among the unknown fields, and its plan reads `deltas`
    /// only, through the filter it shipped with (known, not `Unknown`).
    #[test]
    fn a_stub_from_before_the_elf_format_still_finds_its_delta() {
        let m = all_three();
        let mut old = serde_json::to_value(&m.manifest.targets["x86_64-linux"]).unwrap();
        let more = old.as_object_mut().unwrap().remove("more_deltas").unwrap();
        let mut old: Target = serde_json::from_value(old).unwrap();
        old.extra.insert("more_deltas".into(), more);
        let base = artifact(1).sha256;
        let first_release = old
            .deltas
            .get(&base)
            .filter(|d| d.format != DeltaFormat::Unknown);
        assert_eq!(
            first_release.map(|d| d.format),
            Some(DeltaFormat::BsdiffZstd)
        );
        // Had the publisher put the ELF patch in `deltas`, that stub parses
        // its format as Unknown (`serde(other)`) and takes the full build.
        let unknown: Delta = serde_json::from_value(serde_json::json!(
            {"format": "format-of-a-later-release", "sha256": sha256(b"x"), "size": 1}
        ))
        .unwrap();
        assert_eq!(unknown.format, DeltaFormat::Unknown);
        let mut target = Target::full("2".into(), 1, artifact(2));
        target.deltas.insert(base, unknown);
        let m = manifest(target);
        assert_eq!(picked(&m, &outrider_delta::SUPPORTED), None);
    }

    #[test]
    fn staged_rollout_splits_by_cohort() {
        let m = manifest(staged(Target::full("2".into(), 1, artifact(2))));
        let (inside, outside) = (fingerprint(true), fingerprint(false));
        let current = Some(artifact(1).sha256);
        assert!(
            matches!(plan(&m, &view(Some(&inside), current)).unwrap(), Plan::Install(i) if i.version == "2")
        );
        assert_eq!(
            plan(&m, &view(Some(&outside), current)).unwrap(),
            Plan::Stay
        );
        // A fresh install outside the cohort (or without an identity) gets the previous build.
        for fp in [Some(outside.as_str()), None] {
            let Plan::Install(i) = plan(&m, &view(fp, None)).unwrap() else {
                panic!()
            };
            assert_eq!(i.version, "1");
        }
    }

    #[test]
    fn paused_rollout_admits_nobody_new_but_keeps_those_on_it() {
        let mut target = staged(Target::full("2".into(), 1, artifact(2)));
        target.rollout.as_mut().unwrap().paused = true;
        let m = manifest(target);
        let inside = fingerprint(true);
        assert_eq!(
            plan(&m, &view(Some(&inside), Some(artifact(1).sha256))).unwrap(),
            Plan::Stay
        );
        assert_eq!(
            plan(&m, &view(Some(&inside), Some(artifact(2).sha256))).unwrap(),
            Plan::UpToDate {
                version: "2".into()
            }
        );
    }

    #[test]
    fn wrong_platform_or_abi_is_refused() {
        let m = manifest(Target::full("2".into(), 2, artifact(2)));
        assert!(matches!(
            plan(&m, &view(None, None)),
            Err(UpdateError::AbiMajor {
                got: 2,
                ours: 1,
                ..
            })
        ));
        let other = ClientView {
            triple: "aarch64-linux",
            ..view(None, None)
        };
        assert!(matches!(
            plan(&m, &other),
            Err(UpdateError::NoTarget { .. })
        ));
    }
}
