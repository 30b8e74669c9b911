//! Integration tests of the agent library: real processes, real sockets.

mod builtin;
mod collectors;
mod config;
mod connect;
mod handover;
mod listeners;
mod protocol;
mod rpc;
mod runner;
mod servers;
mod session;
mod spool;
mod support;
