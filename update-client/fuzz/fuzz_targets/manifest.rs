//! `cargo fuzz run manifest`: the client's manifest step
//! (`UpdateClient::fetch_manifest`) and the plan made from what it accepts
//! (`plan`), with the fixed keys of `signing/fuzz/src/lib.rs`.
//!
//! Input: `[mode][rest]`. Even mode: `rest` is the manifest envelope the
//! repository serves; only the two manifests the fixed release key signed
//! for this channel may be accepted. Odd mode: `rest` is a manifest
//! payload, signed here with the trusted release key, so the fuzzer reaches
//! the payload parser and the planner behind the signature check: neither
//! may panic, a parsed manifest survives re-serialising, and a plan only
//! ever names builds and deltas the manifest lists.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outrider_signing::{Envelope, ReleaseManifest, Sha256, VerifiedManifest, sha256};
use outrider_signing_fuzz::{CHANNEL, NOW, TRIPLE, fixtures};
use outrider_update_client::{ClientView, Plan, UpdateClient, plan};
use outrider_update_client_fuzz::Memory;

fn check_plans(verified: &VerifiedManifest) {
    let again: ReleaseManifest =
        serde_json::from_slice(&serde_json::to_vec(&verified.manifest).expect("serialises"))
            .expect("a re-serialised manifest parses");
    assert_eq!(again, verified.manifest, "manifest round trip");
    let Some(target) = verified.manifest.targets.get(TRIPLE) else {
        return;
    };
    let mut currents: Vec<Option<Sha256>> = vec![None, Some(target.artifact.sha256)];
    currents.extend(target.deltas.keys().take(2).copied().map(Some));
    for current in currents {
        for fingerprint in [None, Some("0123456789abcdef0123"), Some("")] {
            for abi_major in [target.abi_major, target.abi_major.wrapping_add(1)] {
                let view = ClientView {
                    triple: TRIPLE,
                    abi_major,
                    fingerprint,
                    current,
                };
                let Ok(Plan::Install(install)) = plan(verified, &view) else {
                    continue;
                };
                let listed = install.artifact == target.artifact
                    || target
                        .previous
                        .as_ref()
                        .is_some_and(|p| p.artifact == install.artifact);
                assert!(listed, "plan names a build the manifest does not list");
                if let Some(delta) = &install.delta {
                    let base = current.expect("a delta needs a current build");
                    assert_eq!(
                        target.deltas.get(&base),
                        Some(delta),
                        "plan names an unlisted delta"
                    );
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let f = fixtures();
    let signed = mode & 1 == 1;
    let envelope = if signed {
        Envelope::sign(rest.to_vec(), &[&f.release1]).to_bytes()
    } else {
        rest.to_vec()
    };
    let mut repo = Memory::default();
    repo.0
        .insert(format!("channels/{CHANNEL}/manifest.json"), envelope);
    let downloads = std::env::temp_dir().join("outrider-fuzz-unused-downloads");
    let client = UpdateClient::new(repo, CHANNEL.parse().expect("channel"), &downloads);
    let Ok(verified) = client.fetch_manifest(&f.trusted, None, NOW) else {
        return;
    };
    if signed {
        assert_eq!(verified.payload_sha256, sha256(rest));
    } else {
        let payload = Envelope::from_bytes(rest)
            .expect("accepted envelope parses")
            .payload()
            .to_vec();
        assert!(
            f.manifest_payloads[..2].contains(&payload),
            "accepted a manifest nobody signed"
        );
    }
    check_plans(&verified);
});
