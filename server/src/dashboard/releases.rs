//! `GET /releases`: per channel, the current manifest's builds with their
//! rollout, and from the agents' own reports how many run each build, who
//! fails to take one and why, and rollbacks of the last 24 h.
//!
//! Costs one read of the store (`Store::update_health`) and, per channel,
//! one lookup in the release store: bounded by the channels, not the fleet.

use std::collections::BTreeMap;
use std::sync::Arc;

use askama::Template;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use outrider_protocol::api::ChannelHealth;
use outrider_signing::{Envelope, ReleaseManifest};
use outrider_update_server::ArtefactStore;

use super::{Authed, Chrome, Dashboard, PageError};

/// One build a channel's manifest offers for one target triple.
#[derive(Debug)]
pub struct TargetView {
    pub triple: String,
    pub version: String,
    /// `100%`, `12.5%`, with `(paused)` when paused.
    pub rollout: String,
    pub previous: String,
}

/// One channel as the page shows it.
#[derive(Debug)]
pub struct ChannelView {
    pub name: String,
    /// Sequence of the current manifest; 0 when agents report a channel
    /// the release store does not have.
    pub sequence: u64,
    pub targets: Vec<TargetView>,
    /// `(version, agents)` per build agents run, most agents first.
    pub builds: Vec<(String, u64)>,
    /// One sentence per group of agents failing to take a build.
    pub failing: Vec<String>,
    pub rollbacks_24h: u64,
    /// Why the manifest could not be shown, if it could not.
    pub problem: String,
}

#[derive(Template)]
#[template(path = "releases.html")]
struct ReleasesTemplate {
    chrome: Chrome,
    channels: Vec<ChannelView>,
}

/// `100%`, `12.5%`, `0.01%` of `basis_points`.
pub fn percent(basis_points: u32) -> String {
    let whole = basis_points / 100;
    match basis_points % 100 {
        0 => format!("{whole}%"),
        frac if frac % 10 == 0 => format!("{whole}.{}%", frac / 10),
        frac => format!("{whole}.{frac:02}%"),
    }
}

fn targets(manifest: &ReleaseManifest) -> Vec<TargetView> {
    manifest
        .targets
        .iter()
        .map(|(triple, t)| {
            let rollout = match &t.rollout {
                None => "100%".to_owned(),
                Some(r) if r.paused => format!("{} (paused)", percent(r.basis_points)),
                Some(r) => percent(r.basis_points),
            };
            TargetView {
                triple: triple.clone(),
                version: t.version.clone(),
                rollout,
                previous: t
                    .previous
                    .as_ref()
                    .map(|p| p.version.clone())
                    .unwrap_or_default(),
            }
        })
        .collect()
}

fn health_parts(health: Option<ChannelHealth>) -> (Vec<(String, u64)>, Vec<String>, u64) {
    let Some(h) = health else {
        return (Vec::new(), Vec::new(), 0);
    };
    (
        h.builds
            .iter()
            .map(|b| (b.version.clone(), b.agents))
            .collect(),
        h.failing.iter().map(|f| f.describe()).collect(),
        h.rollbacks_24h,
    )
}

/// `GET /releases`.
pub async fn page(
    State(dash): State<Arc<Dashboard>>,
    Authed(session): Authed,
) -> Result<Response, PageError> {
    let health = dash.app.store.update_health().await?;
    let mut by_channel: BTreeMap<String, ChannelHealth> = health
        .channels
        .into_iter()
        .map(|c| (c.channel.clone(), c))
        .collect();
    let releases = &dash.app.releases;
    let mut stored = Vec::new();
    for info in releases.channels().await.map_err(anyhow::Error::from)? {
        let manifest = releases
            .manifest(info.channel.clone())
            .await
            .map_err(anyhow::Error::from)?;
        stored.push((info, manifest));
    }
    let mut channels = Vec::new();
    for (info, bytes) in stored {
        let name = info.channel.as_str().to_owned();
        let decoded = bytes
            .ok_or_else(|| "no manifest stored".to_owned())
            .and_then(|b| Envelope::from_bytes(&b).map_err(|e| e.to_string()))
            .and_then(|env| {
                serde_json::from_slice::<ReleaseManifest>(env.payload()).map_err(|e| e.to_string())
            });
        let (targets, problem) = match decoded {
            Ok(manifest) => (targets(&manifest), String::new()),
            Err(e) => (
                Vec::new(),
                format!("the current manifest cannot be read: {e}"),
            ),
        };
        let (builds, failing, rollbacks_24h) = health_parts(by_channel.remove(&name));
        channels.push(ChannelView {
            name,
            sequence: info.sequence,
            targets,
            builds,
            failing,
            rollbacks_24h,
            problem,
        });
    }
    // Channels agents report that the release store has no manifest for.
    for (name, health) in by_channel {
        let (builds, failing, rollbacks_24h) = health_parts(Some(health));
        channels.push(ChannelView {
            problem: if name.is_empty() {
                "agents that report no channel".to_owned()
            } else {
                "no release published to this channel".to_owned()
            },
            name,
            sequence: 0,
            targets: Vec::new(),
            builds,
            failing,
            rollbacks_24h,
        });
    }
    let page = ReleasesTemplate {
        chrome: dash.chrome(&session),
        channels,
    };
    Ok(Html(page.render()?).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollout_shares_by_table() {
        for (bp, text) in [
            (10_000, "100%"),
            (1_250, "12.5%"),
            (1, "0.01%"),
            (5_005, "50.05%"),
            (0, "0%"),
        ] {
            assert_eq!(percent(bp), text, "{bp}");
        }
    }
}
