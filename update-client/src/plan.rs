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

use outrider_signing::{Artifact, Delta, DeltaFormat, Sha256, VerifiedManifest};

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

/// Decides, per the table in the module docs.
///
/// Fails when the manifest has no build for `client.triple` or its build
/// speaks another ABI major.
pub fn plan(manifest: &VerifiedManifest, client: &ClientView<'_>) -> Result<Plan, UpdateError> {
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
        .and_then(|base| target.deltas.get(&base))
        .filter(|d| d.format != DeltaFormat::Unknown)
        .cloned();
    Ok(Plan::Install(Install {
        version: target.version.clone(),
        artifact: target.artifact.clone(),
        delta,
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use outrider_signing::{
        PreviousBuild, ReleaseManifest, Rollout, Target, rollout_bucket, sha256,
    };

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
