//! Client-side update tests over real files and a real loopback HTTP server
//! that can misbehave on purpose (issue 3, items 5 and 7).

mod attacks;
mod repo;
mod server;
