//! Integration tests of `outrider-server`: the real server runs in-process
//! on an ephemeral port and is driven over a real websocket (as an agent)
//! and over HTTP (as an admin).

mod admin_api;
mod agent_ws;
mod alerting;
mod browser;
mod cluster;
mod collectors;
mod config_push;
mod dashboard;
mod dos;
mod enrollment;
mod enrollment_lifecycle;
mod events;
mod golden;
mod helpers;
mod ingest_bounds;
mod library;
mod metrics;
mod negotiation;
mod notify;
mod notify_crash;
mod notify_email;
mod notify_support;
mod nudges;
mod openapi;
mod release_caps;
mod remote_write;
mod rpc;
mod samples;
mod shared_storage;
mod transport;
mod update_health;
