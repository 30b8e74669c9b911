//! Writes seed inputs for the `manifest` and `roots` targets into
//! `corpus/manifest/` and `corpus/roots/`, from the fixtures of
//! `signing/fuzz/src/lib.rs`: every manifest envelope (as served, and its
//! payload for the signing mode), and root chains: v2; v2, v3; v3 alone
//! (a skipped version); v2 twice (a replay).
//!
//! `cargo run --manifest-path update-client/fuzz/Cargo.toml --example seeds`

use std::path::Path;

use outrider_signing::Envelope;
use outrider_signing_fuzz::fixtures;

fn main() {
    let f = fixtures();
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifests = here.join("corpus/manifest");
    std::fs::create_dir_all(&manifests).expect("create corpus dir");
    for (i, bytes) in f.manifests.iter().enumerate() {
        let mut served = vec![0u8];
        served.extend_from_slice(bytes);
        std::fs::write(manifests.join(format!("served-{i}")), served).expect("write seed");
        let mut payload = vec![1u8];
        payload.extend_from_slice(Envelope::from_bytes(bytes).expect("fixture").payload());
        std::fs::write(manifests.join(format!("payload-{i}")), payload).expect("write seed");
    }
    let roots = here.join("corpus/roots");
    std::fs::create_dir_all(&roots).expect("create corpus dir");
    let [_, v2, v3] = &f.roots;
    let chains: [(&str, Vec<&Vec<u8>>); 4] = [
        ("v2", vec![v2]),
        ("v2-v3", vec![v2, v3]),
        ("v3-skipped", vec![v3]),
        ("v2-twice", vec![v2, v2]),
    ];
    for (name, chain) in chains {
        let mut input = Vec::new();
        for document in chain {
            let len = u16::try_from(document.len()).expect("fixture root fits a u16 length");
            input.extend_from_slice(&len.to_le_bytes());
            input.extend_from_slice(document);
        }
        std::fs::write(roots.join(name), input).expect("write seed");
    }
    println!("seeds in {}", here.join("corpus").display());
}
