//! Alerting settings, with the defaults every check and agent gets when the
//! operator configured nothing (zero configuration still alerts sensibly).
//!
//! A leaf module. The defaults and where they come from:
//! - gate: problem after 3 consecutive non-OK results (Nagios `max_check_attempts 3`,
//!   Gatus `failure-threshold 3`), recovered after 2 consecutive OK (Gatus
//!   `success-threshold 2`: hysteresis against flapping notifications);
//! - a duration gate defaults to 2 minutes, like an agent's `down_for`;
//! - flapping thresholds low 25 % / high 30 % (Icinga 2's defaults, gentler than
//!   the 5/20 of a stock `nagios.cfg`);
//! - site outage: at least 20 % and at least 3 agents sharing a tag lost within 60 s;
//! - grouping: `group_wait` 30 s, `group_interval` 5 min, `repeat_interval` 4 h,
//!   Alertmanager's `DefaultRouteOpts`;
//! - restart grace: no agent-down before `down_for + 60 s` after the server
//!   started, like Prometheus's `--rules.alert.for-grace-period`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Consecutive non-OK results before a check is a problem.
pub const DEFAULT_FAILURES: u32 = 3;
/// Non-OK duration before a check with a duration gate is a problem.
pub const DEFAULT_PROBLEM_FOR_MS: u64 = 2 * 60 * 1000;
/// Consecutive OK results before a problem counts as recovered.
pub const DEFAULT_RECOVER_AFTER: u32 = 2;
/// How long an agent may be without a session before it is down.
pub const DEFAULT_DOWN_FOR_MS: u64 = 2 * 60 * 1000;
/// Added to `down_for` after a server start before any agent-down fires.
pub const DEFAULT_RESTART_GRACE_EXTRA_MS: u64 = 60 * 1000;
/// Flapping stops at or below this percent state change.
pub const DEFAULT_FLAP_LOW: f64 = 25.0;
/// Flapping starts at or above this percent state change.
pub const DEFAULT_FLAP_HIGH: f64 = 30.0;
/// Smallest share of a tag's agents (percent) that makes a site outage.
pub const DEFAULT_SITE_MIN_PERCENT: u32 = 20;
/// Smallest number of agents that makes a site outage.
pub const DEFAULT_SITE_MIN_AGENTS: u32 = 3;
/// Agents must be lost within this window to count as one site outage.
pub const DEFAULT_SITE_WINDOW_MS: u64 = 60 * 1000;
/// Wait before the first notification of a new group.
pub const DEFAULT_GROUP_WAIT_MS: u64 = 30 * 1000;
/// Wait between notifications of a group that changed.
pub const DEFAULT_GROUP_INTERVAL_MS: u64 = 5 * 60 * 1000;
/// Wait before re-sending a problem that is still firing.
pub const DEFAULT_REPEAT_INTERVAL_MS: u64 = 4 * 60 * 60 * 1000;
/// Name of the agent's synthetic resolver check (`agent-lib/src/dns.rs`).
pub const DNS_CHECK: &str = "outrider.dns";
/// Longest duration setting accepted (30 days): bounds arithmetic and typos.
pub const MAX_DURATION_MS: u64 = 30 * 24 * 60 * 60 * 1000;
/// Most consecutive results a gate may ask for.
pub const MAX_COUNT: u32 = 1000;

/// When a check's non-OK results make it a problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum GateRule {
    /// After this many consecutive non-OK results.
    Consecutive {
        /// Number of results, at least 1.
        count: u32,
    },
    /// When results have been non-OK without interruption for this long.
    /// Also fires between results (on a tick), so a check that reports only
    /// changes (the resolver check) still trips it.
    Duration {
        /// Milliseconds, at least 1.
        for_ms: u64,
    },
}

impl Default for GateRule {
    fn default() -> Self {
        GateRule::Consecutive {
            count: DEFAULT_FAILURES,
        }
    }
}

/// Flap-detection thresholds, in percent state change (see `flap.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlapConfig {
    /// Whether flap detection runs at all.
    pub enabled: bool,
    /// Flapping stops at or below this percent.
    pub low_percent: f64,
    /// Flapping starts at or above this percent.
    pub high_percent: f64,
}

impl Default for FlapConfig {
    fn default() -> Self {
        FlapConfig {
            enabled: true,
            low_percent: DEFAULT_FLAP_LOW,
            high_percent: DEFAULT_FLAP_HIGH,
        }
    }
}

/// The rules of one check (or collector): gate, recovery and flapping.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckRules {
    /// When it becomes a problem.
    pub gate: GateRule,
    /// Consecutive OK results before a problem recovers, at least 1.
    pub recover_after: u32,
    /// Flapping thresholds.
    pub flap: FlapConfig,
}

impl Default for CheckRules {
    fn default() -> Self {
        CheckRules {
            gate: GateRule::default(),
            recover_after: DEFAULT_RECOVER_AFTER,
            flap: FlapConfig::default(),
        }
    }
}

/// Grouping and repeat timers (Alertmanager's route options).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupConfig {
    /// Wait before the first notification of a new group, so that problems
    /// starting together go out together and a problem shorter than this is
    /// never sent.
    pub group_wait_ms: u64,
    /// Wait between two notifications of one group.
    pub group_interval_ms: u64,
    /// Re-send a still-firing, unmuted problem after this long.
    pub repeat_interval_ms: u64,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            group_wait_ms: DEFAULT_GROUP_WAIT_MS,
            group_interval_ms: DEFAULT_GROUP_INTERVAL_MS,
            repeat_interval_ms: DEFAULT_REPEAT_INTERVAL_MS,
        }
    }
}

/// Site-outage detection: many agents sharing a tag lost together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SiteConfig {
    /// Smallest share of the tag's agents, in percent (1..=100).
    pub min_percent: u32,
    /// Smallest number of agents, at least 1.
    pub min_agents: u32,
    /// The agents must have lost their sessions within this window.
    pub window_ms: u64,
}

impl Default for SiteConfig {
    fn default() -> Self {
        SiteConfig {
            min_percent: DEFAULT_SITE_MIN_PERCENT,
            min_agents: DEFAULT_SITE_MIN_AGENTS,
            window_ms: DEFAULT_SITE_WINDOW_MS,
        }
    }
}

/// Every alerting setting. `Config::default()` is the zero-configuration
/// behaviour.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Rules for every check without an entry in `checks`.
    pub check_defaults: CheckRules,
    /// Rules by check name (from the check definitions). Without an entry,
    /// the resolver check [`DNS_CHECK`] gets a duration gate of `down_for_ms`
    /// and recovers on one OK, because the agent reports it only when it
    /// changes: one CRITICAL result, later one OK result.
    pub checks: BTreeMap<String, CheckRules>,
    /// How long an agent may be without a session before it is down.
    pub down_for_ms: u64,
    /// Added to `down_for_ms` after a server start before agent-down fires.
    pub restart_grace_extra_ms: u64,
    /// Site-outage detection.
    pub site: SiteConfig,
    /// Grouping and repeat timers.
    pub group: GroupConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            check_defaults: CheckRules::default(),
            checks: BTreeMap::new(),
            down_for_ms: DEFAULT_DOWN_FOR_MS,
            restart_grace_extra_ms: DEFAULT_RESTART_GRACE_EXTRA_MS,
            site: SiteConfig::default(),
            group: GroupConfig::default(),
        }
    }
}

impl Config {
    /// The rules that apply to the check called `name`.
    pub fn rules_for(&self, name: &str) -> CheckRules {
        if let Some(rules) = self.checks.get(name) {
            return *rules;
        }
        if name == DNS_CHECK {
            return CheckRules {
                gate: GateRule::Duration {
                    for_ms: self.down_for_ms,
                },
                recover_after: 1,
                ..self.check_defaults
            };
        }
        self.check_defaults
    }

    /// Checks every value's range.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the first field out of range.
    pub fn validate(&self) -> Result<(), Error> {
        validate_rules("check_defaults", &self.check_defaults)?;
        for rules in self.checks.values() {
            validate_rules("checks", rules)?;
        }
        duration("down_for_ms", self.down_for_ms)?;
        duration("restart_grace_extra_ms", self.restart_grace_extra_ms)?;
        duration("site.window_ms", self.site.window_ms)?;
        if !(1..=100).contains(&self.site.min_percent) {
            return Err(invalid("site.min_percent", "must be between 1 and 100"));
        }
        count("site.min_agents", self.site.min_agents)?;
        duration("group.group_wait_ms", self.group.group_wait_ms)?;
        duration("group.group_interval_ms", self.group.group_interval_ms)?;
        duration("group.repeat_interval_ms", self.group.repeat_interval_ms)?;
        if self.group.group_interval_ms == 0 || self.group.repeat_interval_ms == 0 {
            return Err(invalid(
                "group",
                "group_interval_ms and repeat_interval_ms must be positive",
            ));
        }
        Ok(())
    }
}

fn validate_rules(field: &'static str, rules: &CheckRules) -> Result<(), Error> {
    match rules.gate {
        GateRule::Consecutive { count: n } => count(field, n)?,
        GateRule::Duration { for_ms: 0 } => {
            return Err(invalid(field, "a duration gate needs for_ms > 0"));
        }
        GateRule::Duration { for_ms } => duration(field, for_ms)?,
    }
    count(field, rules.recover_after)?;
    let FlapConfig {
        low_percent: low,
        high_percent: high,
        ..
    } = rules.flap;
    if !(0.0..=100.0).contains(&low) || !(0.0..=100.0).contains(&high) || low > high {
        return Err(invalid(
            field,
            format!("flap thresholds need 0 <= low <= high <= 100, got low {low}, high {high}"),
        ));
    }
    Ok(())
}

fn count(field: &'static str, n: u32) -> Result<(), Error> {
    if n == 0 || n > MAX_COUNT {
        return Err(invalid(
            field,
            format!("a count must be between 1 and {MAX_COUNT}, got {n}"),
        ));
    }
    Ok(())
}

fn duration(field: &'static str, ms: u64) -> Result<(), Error> {
    if ms > MAX_DURATION_MS {
        return Err(invalid(
            field,
            format!("{ms} ms is longer than the limit of {MAX_DURATION_MS} ms (30 days)"),
        ));
    }
    Ok(())
}

fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidConfig {
        field,
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones_and_valid() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.rules_for("disk").gate, GateRule::Consecutive { count: 3 });
        assert_eq!(c.rules_for("disk").recover_after, 2);
        assert_eq!(
            c.rules_for(DNS_CHECK).gate,
            GateRule::Duration { for_ms: 120_000 }
        );
        assert_eq!(c.rules_for(DNS_CHECK).recover_after, 1);
        assert_eq!(c.group.group_wait_ms, 30_000);
        assert_eq!(c.group.group_interval_ms, 300_000);
        assert_eq!(c.group.repeat_interval_ms, 14_400_000);
    }

    #[test]
    fn out_of_range_values_name_their_field() {
        let table: Vec<(Config, &str)> = vec![
            (
                Config {
                    check_defaults: CheckRules {
                        gate: GateRule::Consecutive { count: 0 },
                        ..CheckRules::default()
                    },
                    ..Config::default()
                },
                "check_defaults",
            ),
            (
                Config {
                    check_defaults: CheckRules {
                        flap: FlapConfig {
                            enabled: true,
                            low_percent: 40.0,
                            high_percent: 30.0,
                        },
                        ..CheckRules::default()
                    },
                    ..Config::default()
                },
                "check_defaults",
            ),
            (
                Config {
                    site: SiteConfig {
                        min_percent: 0,
                        ..SiteConfig::default()
                    },
                    ..Config::default()
                },
                "site.min_percent",
            ),
            (
                Config {
                    down_for_ms: MAX_DURATION_MS + 1,
                    ..Config::default()
                },
                "down_for_ms",
            ),
        ];
        for (config, want) in table {
            match config.validate() {
                Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, want),
                other => panic!("expected InvalidConfig({want}), got {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<Config>(r#"{"down_for":5}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}
