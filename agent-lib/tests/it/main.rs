//! Integration tests of the agent library: real processes, real sockets.

mod config;
mod connect;
mod rpc;
mod runner;
mod session;
mod support;
