//! Client-side update tests over real files and a real loopback HTTP server
//! that can misbehave on purpose (docs/updates.md, "Attacks and where each is refused").

mod attacks;
/// The x86-64 ELF builds `outrider-delta` tests its ELF format on.
#[path = "../../../delta/tests/it/elf.rs"]
#[allow(dead_code)]
mod elf;
mod repo;
mod server;
