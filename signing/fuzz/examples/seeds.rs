//! Writes seed inputs for the `envelope` target into `corpus/envelope/`:
//! every fixture envelope of `src/lib.rs` (roots v1–v3, the four
//! manifests) in the raw mode, and one byte edit of each document, plus a
//! repeated signature, in the mutation mode.
//!
//! `cargo run --manifest-path signing/fuzz/Cargo.toml --example seeds`

use std::path::Path;

use outrider_signing_fuzz::fixtures;

fn main() {
    let f = fixtures();
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/envelope");
    std::fs::create_dir_all(&out).expect("create corpus dir");
    let documents = f.roots.iter().chain(&f.manifests);
    for (i, bytes) in documents.enumerate() {
        let mut input = vec![0u8];
        input.extend_from_slice(bytes);
        std::fs::write(out.join(format!("raw-{i}")), input).expect("write seed");
    }
    for document in 0..6u8 {
        // Mode 1, the document, then one edit: index 70 (a signature byte
        // of the short manifests, payload byte of the others) xor 1.
        let input = [1, document, 70, 0, 1];
        std::fs::write(out.join(format!("mutate-{document}")), input).expect("write seed");
    }
    println!("seeds in {}", out.display());
}
