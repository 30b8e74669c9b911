//! Presence and inhibition decisions: when an agent is down, when a site is,
//! and why a problem is muted. Pure functions over plain data.
//!
//! - An agent is down after `down_for` without a session, never within
//!   `down_for + restart_grace_extra` of the server's start (every session
//!   died with the old process; agents need time to come back), and never
//!   when it deregistered (a clean shutdown is not an outage).
//! - A site outage: among the agents sharing a tag (deregistered ones not
//!   counted), at least `min_agents` and at least `min_percent` % of them lost
//!   their sessions within `window_ms` of each other. The cluster is found on
//!   *lost* agents, not *down* ones, so the members that went first are muted
//!   before their own `down_for` runs out; the site itself is a problem once
//!   its earliest member would be down.
//! - Mutes, first match wins: the agent has no session (mutes its checks,
//!   update and collectors), the agent belongs to a site outage, a silence.
//!   Flapping mutes too, but `group.rs` handles it because flapping sends
//!   one notification of its own.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::config::{Config, SiteConfig};

/// An agent's session state, as the engine last heard it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Presence {
    /// It has a session.
    Connected,
    /// No session since then (lost without a Goodbye, or the server restarted).
    Lost {
        /// When the session was lost.
        since_ms: u64,
    },
    /// It said Goodbye: never an outage until it connects again.
    Deregistered,
}

impl Presence {
    /// When its session was lost, if it is lost.
    pub fn lost_since(self) -> Option<u64> {
        match self {
            Presence::Lost { since_ms } => Some(since_ms),
            _ => None,
        }
    }
}

/// Earliest time an agent-down may fire after a server start at `started_ms`.
pub fn grace_until(config: &Config, started_ms: u64) -> u64 {
    started_ms
        .saturating_add(config.down_for_ms)
        .saturating_add(config.restart_grace_extra_ms)
}

/// When an agent lost at `since_ms` becomes down.
pub fn down_at(config: &Config, started_ms: u64, since_ms: u64) -> u64 {
    since_ms
        .saturating_add(config.down_for_ms)
        .max(grace_until(config, started_ms))
}

/// Whether an agent with `presence` is down at `now_ms`.
pub fn is_down(config: &Config, started_ms: u64, presence: Presence, now_ms: u64) -> bool {
    presence
        .lost_since()
        .is_some_and(|since| now_ms >= down_at(config, started_ms, since))
}

/// One site outage: which agents of the tag are in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteOutage {
    /// The agents lost together.
    pub members: BTreeSet<String>,
    /// When the earliest member was lost.
    pub first_lost_ms: u64,
    /// Agents carrying the tag (not deregistered).
    pub total: usize,
}

/// Finds the site outages: for each tag, the largest group of lost agents
/// within `window_ms` of each other (earliest such group on ties), if it is
/// big enough. `agents` yields (agent, tags, presence).
pub fn site_outages<'a>(
    site: &SiteConfig,
    agents: impl Iterator<Item = (&'a str, &'a [String], Presence)>,
) -> BTreeMap<String, SiteOutage> {
    /// Per tag: agents carrying it, and (loss time, agent) of the lost ones.
    type TagCount<'b> = (usize, Vec<(u64, &'b str)>);
    let mut by_tag: BTreeMap<&str, TagCount<'_>> = BTreeMap::new();
    for (agent, tags, presence) in agents {
        if presence == Presence::Deregistered {
            continue;
        }
        for tag in tags {
            let entry = by_tag.entry(tag).or_default();
            entry.0 += 1;
            if let Some(since) = presence.lost_since() {
                entry.1.push((since, agent));
            }
        }
    }
    let mut out = BTreeMap::new();
    for (tag, (total, mut lost)) in by_tag {
        if lost.len() < site.min_agents as usize {
            continue;
        }
        lost.sort_unstable();
        // Sliding window over loss times: [start, end] spans ≤ window_ms.
        let (mut best_start, mut best_len, mut start) = (0, 0, 0);
        for end in 0..lost.len() {
            while lost[end].0 - lost[start].0 > site.window_ms {
                start += 1;
            }
            if end + 1 - start > best_len {
                (best_start, best_len) = (start, end + 1 - start);
            }
        }
        let big_enough = best_len >= site.min_agents as usize
            && best_len * 100 >= site.min_percent as usize * total;
        if big_enough {
            let cluster = &lost[best_start..best_start + best_len];
            out.insert(
                tag.to_owned(),
                SiteOutage {
                    members: cluster.iter().map(|(_, a)| (*a).to_owned()).collect(),
                    first_lost_ms: cluster[0].0,
                    total,
                },
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_down_table() {
        let c = Config::default(); // down_for 120 s, grace extra 60 s
        let start = 1_000_000;
        let lost = |since_ms| Presence::Lost { since_ms };
        let table = [
            ("connected", Presence::Connected, start + 999_000, false),
            (
                "deregistered",
                Presence::Deregistered,
                start + 999_000,
                false,
            ),
            ("lost 119 s", lost(start + 500_000), start + 619_000, false),
            ("lost 120 s", lost(start + 500_000), start + 620_000, true),
            (
                "lost at boot, 120 s: still in grace",
                lost(start),
                start + 120_000,
                false,
            ),
            (
                "lost at boot, 180 s: grace over",
                lost(start),
                start + 180_000,
                true,
            ),
        ];
        for (name, presence, now, want) in table {
            assert_eq!(is_down(&c, start, presence, now), want, "{name}");
        }
    }

    fn agents(spec: &[(&str, &[&str], Presence)]) -> Vec<(String, Vec<String>, Presence)> {
        spec.iter()
            .map(|(a, tags, p)| {
                (
                    a.to_string(),
                    tags.iter().map(|t| t.to_string()).collect(),
                    *p,
                )
            })
            .collect()
    }

    fn outages(list: &[(String, Vec<String>, Presence)]) -> BTreeMap<String, SiteOutage> {
        site_outages(
            &SiteConfig::default(),
            list.iter().map(|(a, t, p)| (a.as_str(), t.as_slice(), *p)),
        )
    }

    #[test]
    fn site_outage_table() {
        let lost = |s| Presence::Lost { since_ms: s };
        let up = Presence::Connected;
        // 10 agents tagged "paris": 3 lost within 60 s → 30 % ≥ 20 %, ≥ 3.
        let mut fleet: Vec<(&str, &[&str], Presence)> = vec![
            ("a", &["paris"], lost(0)),
            ("b", &["paris"], lost(30_000)),
            ("c", &["paris"], lost(60_000)),
        ];
        let names = ["d", "e", "f", "g", "h", "i", "j"];
        for n in names {
            fleet.push((n, &["paris"], up));
        }
        let found = outages(&agents(&fleet));
        let paris = &found["paris"];
        assert_eq!(paris.members.len(), 3);
        assert_eq!(paris.total, 10);
        assert_eq!(paris.first_lost_ms, 0);

        // Spread over more than 60 s: not one outage.
        fleet[2].2 = lost(61_000);
        assert!(outages(&agents(&fleet)).is_empty());

        // 2 lost: below min_agents whatever the share.
        let two: Vec<(&str, &[&str], Presence)> =
            vec![("a", &["x"], lost(0)), ("b", &["x"], lost(1))];
        assert!(outages(&agents(&two)).is_empty());

        // 3 of 20 = 15 % < 20 %.
        let mut big: Vec<(String, Vec<String>, Presence)> = (0..20)
            .map(|i| {
                (
                    format!("n{i}"),
                    vec!["dc".to_string()],
                    if i < 3 { lost(i) } else { up },
                )
            })
            .collect();
        assert!(outages(&big).is_empty());
        // 4 of 20 = 20 %: an outage.
        big[3].2 = lost(3);
        assert_eq!(outages(&big)["dc"].members.len(), 4);
        // Deregistered agents are not counted: 3 of 3 remaining… but they
        // are lost, deregistered ones are not part of any outage.
        big[0].2 = Presence::Deregistered;
        big[1].2 = Presence::Deregistered;
        assert!(outages(&big).is_empty(), "only 2 lost left");
    }
}
