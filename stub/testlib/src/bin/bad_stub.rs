//! `outrider-bad-stub`: a purpose-built *bad* stub binary for the stub
//! self-update tests (`tests/tests/e2e/stub_trial.rs`). Like the test
//! library, what it does is chosen per file by a trailer appended to a copy,
//! `\n#OUTRIDER-BADSTUB:<behaviour>\n`, as the last bytes of the file:
//!
//! - `exit-1`: exits with status 1, whatever the arguments;
//! - `segv`: kills itself with SIGSEGV;
//! - `hang`: sleeps forever (a self-test that never answers);
//! - `wrong-abi`: answers `--self-test` for another ABI major;
//! - `crash-loop`: answers `--self-test` like a real stub, then dies by
//!   SIGSEGV whenever it is started for real.
#![allow(unsafe_code)]

use std::io::{Read, Seek, SeekFrom};

const MARK: &str = "\n#OUTRIDER-BADSTUB:";

fn behaviour() -> String {
    let mut tail = Vec::new();
    if let Ok(mut file) = std::fs::File::open("/proc/self/exe") {
        let len = file.metadata().map_or(0, |m| m.len());
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(128)));
        let _ = file.read_to_end(&mut tail);
    }
    let tail = String::from_utf8_lossy(&tail);
    tail.rsplit_once(MARK)
        .map(|(_, b)| b.trim_end_matches('\n').to_owned())
        .unwrap_or_default()
}

fn segv() -> ! {
    // SAFETY: the Rust runtime's SIGSEGV handler (stack overflow checks)
    // is put back to the default, which kills; raise(3) only signals us.
    unsafe {
        libc::signal(libc::SIGSEGV, libc::SIG_DFL);
        libc::raise(libc::SIGSEGV);
    }
    std::process::exit(139)
}

fn main() {
    let self_test = std::env::args().any(|a| a == "--self-test");
    match behaviour().as_str() {
        "exit-1" => std::process::exit(1),
        "segv" => segv(),
        "hang" => loop {
            std::thread::sleep(std::time::Duration::from_secs(60));
        },
        "wrong-abi" => println!("outrider-agent 9.9.9 abi 2.0"),
        "crash-loop" if self_test => println!(
            "outrider-agent 9.9.9 abi {}.{}",
            outrider_abi::ABI_MAJOR,
            outrider_abi::ABI_MINOR
        ),
        "crash-loop" => segv(),
        other => {
            eprintln!("outrider-bad-stub: no behaviour trailer ({other:?})");
            std::process::exit(64)
        }
    }
}
