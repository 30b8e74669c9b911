//! Writes seed inputs for the `messages` target into `corpus/messages/`:
//! every frame of every golden transcript (`protocol/tests/golden/v*/`), as
//! the compact JSON text a peer sends.
//!
//! `cargo run --manifest-path protocol/fuzz/Cargo.toml --example seeds`

use std::path::Path;

fn main() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = here.join("corpus/messages");
    std::fs::create_dir_all(&out).expect("create corpus dir");
    let golden = here.join("../tests/golden");
    let mut written = 0;
    for version in std::fs::read_dir(&golden).expect("golden dir") {
        let version = version.expect("dir entry").path();
        for file in std::fs::read_dir(&version).expect("version dir") {
            let path = file.expect("dir entry").path();
            let text = std::fs::read_to_string(&path).expect("read transcript");
            let transcript: serde_json::Value = serde_json::from_str(&text).expect("JSON");
            let Some(frames) = transcript["frames"].as_array() else {
                continue;
            };
            let stem = path.file_stem().expect("file name").to_string_lossy();
            for (i, frame) in frames.iter().enumerate() {
                let name = format!(
                    "{}-{stem}-{i:02}",
                    version.file_name().expect("name").to_string_lossy()
                );
                std::fs::write(out.join(name), frame["message"].to_string()).expect("write seed");
                written += 1;
            }
        }
    }
    println!("{written} seeds in {}", out.display());
}
