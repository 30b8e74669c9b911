//! Fixtures shared by the store's unit tests (and the modules built on it):
//! a real SQLite file in a temporary directory with registered agents.

use outrider_protocol::{CheckResult, CheckState, Fingerprint, PerfData};

use super::{Registration, Store};

/// The fingerprint of the agent [`store_with_agent`] registers.
pub(crate) const TEST_FP: &str = "0123456789abcdef0123";

/// A registration of `fp` on Linux x86_64 with `hostname` and `tags`.
pub(crate) fn registration(fp: &Fingerprint, hostname: &str, tags: &[&str]) -> Registration {
    Registration {
        fingerprint: fp.clone(),
        public_key: "00".repeat(32),
        hostname: hostname.into(),
        os: "linux".into(),
        arch: "x86_64".into(),
        agent_version: "0.1.0".into(),
        build_sha256: None,
        build_version: None,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        stub_version: None,
        channel: None,
        protocol_version: 2,
        admission: super::Admission::Enrolled(super::TokenGrant {
            id: "test".into(),
            allowed_tags: None,
        }),
    }
}

/// A fresh store (kept alive by the returned directory) with one agent,
/// [`TEST_FP`], registered as `hostname`.
pub(crate) async fn store_with_agent(hostname: &str) -> (tempfile::TempDir, Store, Fingerprint) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("test.db")).await.unwrap();
    let fp: Fingerprint = TEST_FP.parse().unwrap();
    store
        .register(registration(&fp, hostname, &[]))
        .await
        .unwrap();
    (dir, store, fp)
}

/// Result `seq` of `check` in `state`, started at `1000 × seq` ms, with one
/// perfdata value `load1 = seq` (warning at 5, minimum 0).
pub(crate) fn load_result(seq: u64, check: &str, state: CheckState) -> CheckResult {
    CheckResult {
        seq,
        check: check.into(),
        state,
        summary: format!("run {seq}"),
        long_output: String::new(),
        perfdata: vec![PerfData {
            label: "load1".into(),
            value: seq as f64,
            uom: String::new(),
            warn: Some("5".into()),
            crit: None,
            min: Some(0.0),
            max: None,
        }],
        unknown_perfdata: Vec::new(),
        started_at_ms: 1_000 * seq as i64,
        duration_ms: 3,
        update_event: None,
    }
}
