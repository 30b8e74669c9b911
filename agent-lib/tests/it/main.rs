//! Integration tests of the agent library: real processes, real sockets.

mod runner;
mod session;
mod support;
