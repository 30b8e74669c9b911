//! Check results as they travel from agent to server.
//!
//! The agent parses plugin output (Nagios contract) into these types; the
//! server stores them as-is. Perfdata values keep their unit of measure and
//! thresholds as the plugin printed them, so nothing is lost in transit.

use serde::{Deserialize, Serialize};

/// Nagios plugin state, from the exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CheckState {
    Ok,
    Warning,
    Critical,
    Unknown,
}

impl CheckState {
    /// Maps a plugin exit code: 0/1/2/3, anything else is UNKNOWN.
    pub fn from_exit_code(code: i32) -> CheckState {
        match code {
            0 => CheckState::Ok,
            1 => CheckState::Warning,
            2 => CheckState::Critical,
            _ => CheckState::Unknown,
        }
    }

    /// The Nagios exit code of this state.
    pub fn exit_code(self) -> i32 {
        match self {
            CheckState::Ok => 0,
            CheckState::Warning => 1,
            CheckState::Critical => 2,
            CheckState::Unknown => 3,
        }
    }

    /// `OK`, `WARNING`, `CRITICAL` or `UNKNOWN`.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckState::Ok => "OK",
            CheckState::Warning => "WARNING",
            CheckState::Critical => "CRITICAL",
            CheckState::Unknown => "UNKNOWN",
        }
    }
}

impl std::str::FromStr for CheckState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "OK" => Ok(CheckState::Ok),
            "WARNING" => Ok(CheckState::Warning),
            "CRITICAL" => Ok(CheckState::Critical),
            "UNKNOWN" => Ok(CheckState::Unknown),
            other => Err(format!("unknown check state {other:?}")),
        }
    }
}

/// One perfdata item: `'label'=value[UOM];[warn];[crit];[min];[max]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PerfData {
    pub label: String,
    pub value: f64,
    /// Unit of measure as printed (`s`, `%`, `B`, `c`, …); empty when absent.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uom: String,
    /// Warning range as printed (Nagios range syntax), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn: Option<String>,
    /// Critical range as printed, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// A perfdata item whose value the plugin could not determine: it printed
/// `U` (plugin guidelines, "Performance data"), e.g. `'rta'=U;100;500`.
///
/// Kept apart from [`PerfData`] because `PerfData::value` is a number on
/// the wire and older servers close a session on a message they cannot
/// decode: these travel in [`CheckResult::unknown_perfdata`], a field older
/// servers ignore, so for them an unknown sample is simply absent, as it
/// always was.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnknownPerfData {
    pub label: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uom: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// The outcome of one check run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    /// Per-agent sequence number; strictly increasing, never reused.
    pub seq: u64,
    /// Name of the [`crate::CheckSpec`] that ran.
    pub check: String,
    pub state: CheckState,
    /// First line of output, before `|`.
    pub summary: String,
    /// Later lines of output (long output), perfdata removed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub long_output: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub perfdata: Vec<PerfData>,
    /// Perfdata items printed as `U` (value undetermined), in order; see
    /// [`UnknownPerfData`] for why they are not in `perfdata`. Absent from
    /// agents older than the field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unknown_perfdata: Vec<UnknownPerfData>,
    /// Wall-clock start of the run, Unix milliseconds.
    pub started_at_ms: i64,
    /// How long the plugin ran.
    pub duration_ms: u64,
    /// On results of the synthetic check `outrider.update`: the stub's
    /// update outcome this result reports (capability
    /// [`crate::capability::UPDATE_EVENTS`]). Servers that do not know the
    /// field still store the readable summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_event: Option<Box<UpdateEvent>>,
}

/// One outcome of the stub's update work, as the stub hands it to the
/// library (`outrider_abi::update_events` describes the same JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateEvent {
    /// Assigned by the stub, strictly increasing over the install's life.
    pub id: u64,
    /// `installed`, `refused`, `probation_passed`, `probation_failed`,
    /// `rolled_back`, `stub_updated`, `stub_refused`, or a kind a newer
    /// stub added (passed through unchanged).
    pub kind: String,
    /// When it happened, Unix milliseconds.
    pub at_unix_ms: i64,
    /// The build (or stub) the event is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// For `rolled_back`: the build running now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_version: Option<String>,
    /// The exact error or cause; empty when there is none.
    #[serde(default)]
    pub reason: String,
}

impl UpdateEvent {
    /// Whether this kind means the host did not take (or gave up) a build.
    pub fn is_failure(&self) -> bool {
        matches!(
            self.kind.as_str(),
            "refused" | "probation_failed" | "rolled_back" | "stub_refused"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `CheckResult` and `PerfData` as servers before `unknown_perfdata`
    /// decoded them (serde's default: unknown fields ignored).
    mod old {
        use serde::Deserialize;

        #[derive(Debug, Deserialize)]
        pub struct PerfData {
            pub label: String,
            pub value: f64,
        }

        #[derive(Debug, Deserialize)]
        pub struct CheckResult {
            pub seq: u64,
            pub check: String,
            pub summary: String,
            #[serde(default)]
            pub perfdata: Vec<PerfData>,
        }
    }

    fn perf(label: &str, value: f64) -> PerfData {
        PerfData {
            label: label.into(),
            value,
            uom: "ms".into(),
            warn: None,
            crit: None,
            min: None,
            max: None,
        }
    }

    #[test]
    fn unknown_samples_stay_invisible_to_old_decoders_and_never_null_a_value() {
        let result = CheckResult {
            seq: 7,
            check: "ping".into(),
            state: CheckState::Ok,
            summary: "PING OK".into(),
            long_output: String::new(),
            perfdata: vec![perf("rta", 0.5)],
            unknown_perfdata: vec![UnknownPerfData {
                label: "pl".into(),
                uom: "%".into(),
                warn: Some("20".into()),
                crit: None,
                min: Some(0.0),
                max: None,
            }],
            started_at_ms: 1,
            duration_ms: 2,
            update_event: None,
        };
        let json = serde_json::to_value(&result).unwrap();
        for p in json["perfdata"].as_array().unwrap() {
            assert!(p["value"].is_number(), "{json}");
        }
        let old: old::CheckResult = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(
            (old.seq, old.check.as_str(), old.summary.as_str()),
            (7, "ping", "PING OK")
        );
        assert_eq!(old.perfdata.len(), 1);
        assert_eq!(
            (old.perfdata[0].label.as_str(), old.perfdata[0].value),
            ("rta", 0.5)
        );
        assert_eq!(serde_json::from_value::<CheckResult>(json).unwrap(), result);
    }

    #[test]
    fn results_of_old_agents_have_no_unknown_samples() {
        let old = r#"{"seq":1,"check":"c","state":"OK","summary":"s","perfdata":[{"label":"a","value":1}],"started_at_ms":0,"duration_ms":0}"#;
        let result: CheckResult = serde_json::from_str(old).unwrap();
        assert!(result.unknown_perfdata.is_empty());
        assert_eq!(result.perfdata[0].value, 1.0);
        assert!(
            !serde_json::to_string(&result)
                .unwrap()
                .contains("unknown_perfdata")
        );
    }
}
