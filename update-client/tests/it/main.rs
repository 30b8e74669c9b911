//! Client-side update tests over real files and a real loopback HTTP server
//! that can misbehave on purpose (docs/updates.md, "Attacks and where each is refused").

mod attacks;
mod repo;
mod server;
