//! End-to-end tests of the walking skeleton: stub → signed build → agent →
//! server → check result, with the real binaries on loopback.

mod alerting;
mod cluster;
mod collectors;
mod dos;
mod enrollment;
mod fleet;
mod idle_pages;
mod install;
mod outage;
mod policy;
mod portable;
mod receivers;
mod secrets;
mod servers;
mod services;
mod skeleton;
mod static_hosting;
mod stub_trial;
mod swap;
mod tamper;
mod trust;
mod update_health;
mod verifier;
