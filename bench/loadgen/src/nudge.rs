//! The nudge phase: a release published to the agents' channel makes the
//! server nudge every connected agent (`check_update`, spread over its
//! nudge window, see `server/src/nudges.rs`); each simulated agent then does
//! what a stub does on a nudge: `GET` the channel's manifest and the build's
//! blob named in it (unverified: the server's load is what is measured).
//! Meanwhile the harness times run-now calls, so the report shows whether a
//! fleet-wide nudge disturbs interactive use.
//!
//! Counted at the agents: nudges received (and when, relative to the
//! publish), manifest and blob requests that succeeded or failed.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use anyhow::Context;
use outrider_signing::{Envelope, ReleaseManifest};

use crate::server::{ServerProcess, http_get};

/// The channel the simulated agents follow.
pub const CHANNEL: &str = "bench";

/// Size of the build published for the phase: about a delta's size, so
/// 10,000 downloads stay a loopback-sized load.
const BUILD_BYTES: usize = 256 * 1024;

/// What the agents saw of the nudges.
#[derive(Debug, Default)]
pub struct Nudges {
    /// Unix ms when the harness started publishing; 0 before the phase.
    published_at_ms: AtomicI64,
    pub received: AtomicU64,
    pub manifest_ok: AtomicU64,
    pub manifest_failed: AtomicU64,
    pub blob_ok: AtomicU64,
    pub blob_failed: AtomicU64,
    /// Per nudge: ms from the start of the publish to its arrival.
    pub arrivals_ms: Mutex<Vec<f64>>,
    /// Failure texts, the first few.
    pub errors: Mutex<Vec<String>>,
}

impl Nudges {
    fn fail(&self, counter: &AtomicU64, why: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if errors.len() < 5 {
            errors.push(why);
        }
    }

    /// One agent's reaction to `check_update`: the manifest, then the blob
    /// of the first target's full build, fetched from the agent's own
    /// `source` address (from one address, 10,000 agents would meet the
    /// server's per-address connection limits).
    pub async fn on_nudge(&self, server: SocketAddr, source: Ipv4Addr) {
        let published = self.published_at_ms.load(Ordering::Relaxed);
        self.received.fetch_add(1, Ordering::Relaxed);
        if published > 0 {
            let ms = (outrider_protocol::unix_now_ms() - published) as f64;
            self.arrivals_ms
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(ms);
        }
        let path = format!("/v1/updates/channels/{CHANNEL}/manifest.json");
        let blob = match http_get(Some(source), server, &path).await {
            Ok((200, body)) => {
                self.manifest_ok.fetch_add(1, Ordering::Relaxed);
                match first_blob(&body) {
                    Ok(blob) => blob,
                    Err(e) => return self.fail(&self.manifest_failed, format!("{e:#}")),
                }
            }
            Ok((status, _)) => {
                return self.fail(&self.manifest_failed, format!("manifest: {status}"));
            }
            Err(e) => return self.fail(&self.manifest_failed, format!("manifest: {e:#}")),
        };
        match http_get(Some(source), server, &format!("/v1/updates/blobs/{blob}")).await {
            Ok((200, body)) if !body.is_empty() => {
                self.blob_ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok((status, body)) => self.fail(
                &self.blob_failed,
                format!("blob: {status}, {} bytes", body.len()),
            ),
            Err(e) => self.fail(&self.blob_failed, format!("blob: {e:#}")),
        }
    }
}

/// The zstd blob of the first target's build in a manifest envelope.
fn first_blob(envelope: &[u8]) -> anyhow::Result<String> {
    let envelope = Envelope::from_bytes(envelope).context("manifest envelope")?;
    let manifest: ReleaseManifest =
        serde_json::from_slice(envelope.payload()).context("manifest payload")?;
    let target = manifest
        .targets
        .values()
        .next()
        .context("the manifest has no target")?;
    Ok(target.artifact.zstd_sha256.to_string())
}

/// Creates signing keys and publishes a build to [`CHANNEL`] with the real
/// CLI, noting the start time so nudge arrivals can be measured from it.
pub fn publish(
    cli: &Path,
    server: &ServerProcess,
    dir: &Path,
    nudges: &Nudges,
) -> anyhow::Result<()> {
    let keys = dir.join("keys");
    let build = dir.join("nudge-build.so");
    // Incompressible bytes, so the blob is as large as the build.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let bytes: Vec<u8> = (0..BUILD_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(&build, bytes)?;
    run(Command::new(cli).args(["keys", "init", "--dir"]).arg(&keys))?;
    nudges
        .published_at_ms
        .store(outrider_protocol::unix_now_ms(), Ordering::Relaxed);
    run(Command::new(cli)
        .args(["--server", &format!("http://{}", server.addr)])
        .args(["--token", &server.admin_token])
        .args([
            "release",
            "publish",
            "--channel",
            CHANNEL,
            "--version",
            "n1",
        ])
        .args(["--deltas", "0", "--keys"])
        .arg(&keys)
        .arg(&build))
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
