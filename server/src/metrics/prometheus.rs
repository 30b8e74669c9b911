//! `GET /metrics`: the latest values in the Prometheus text exposition
//! format, version 0.0.4.
//!
//! Families (all samples of a family are contiguous, after one `# HELP` and
//! one `# TYPE` line):
//! - `outrider_agent_up{agent,hostname}` 1 while a session is open, else 0;
//! - `outrider_check_state{agent,hostname,check}` 0 OK, 1 WARNING,
//!   2 CRITICAL, 3 UNKNOWN: the check's latest result;
//! - `outrider_perfdata{agent,check,label,uom}` each value of the check's
//!   latest result (a label printed twice in one result is exported once,
//!   the last value winning: duplicate series would fail the whole scrape);
//!   a value the plugin printed as `U` (undetermined) is `NaN`;
//! - `outrider_ingested_results_total`, `outrider_ingested_samples_total`,
//!   `outrider_graphite_dropped_lines_total`,
//!   `outrider_unknown_agent_messages_total`,
//!   `outrider_series_limit_dropped_samples_total`,
//!   `outrider_future_results_clamped_total`,
//!   `outrider_graphite_oversized_lines_total` and
//!   `outrider_refused_results_total{reason}` and
//!   `outrider_refused_enrollments_total{reason}` counters of this process;
//! - with `--remote-write-url`, the `outrider_remote_write_*` families of
//!   `metrics/remote_write.rs` (`Stats::render`).
//!
//! Access ([`MetricsAccess`]): open on a loopback-only server, else only
//! with the metrics token; without one, a non-loopback server answers 401.
//!
//! No timestamps: each value is the latest this server has, and Prometheus
//! stamps it with the scrape time (a check that stops reporting keeps its
//! last value; `outrider_agent_up` says whether its agent is there). Label
//! values are escaped (`\` → `\\`, `"` → `\"`, newline → `\n`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use outrider_protocol::api::{AgentInfo, Presence, ResultInfo};

use crate::AppState;
use crate::auth::{bearer, constant_time_eq};
use crate::error::ApiError;
use crate::ingest::names::Refusal;
use crate::ingest::samples::SampleRefusal;
use crate::metrics::MetricsAccess;
use crate::store::EnrollmentRefusal;

/// Media type of the text exposition format.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The handler; checks the optional token, then renders.
pub async fn handler(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    match &state.metrics.access {
        MetricsAccess::Open => {}
        MetricsAccess::Token(token) => match bearer(&headers) {
            Some(p) if constant_time_eq(p.as_bytes(), token.as_bytes()) => {}
            Some(_) => return Err(ApiError::Unauthorized("the metrics token is not valid")),
            None => {
                return Err(ApiError::Unauthorized(
                    "missing 'Authorization: Bearer <metrics token>' header",
                ));
            }
        },
        MetricsAccess::Closed { .. } => {
            return Err(ApiError::Unauthorized(
                "this server listens beyond loopback and has no metrics token: start it with --metrics-token-file (or OUTRIDER_METRICS_TOKEN) and scrape with 'Authorization: Bearer <token>'",
            ));
        }
    }
    let agents = state.store.agents().await?;
    let latest = state.store.latest_results(None).await?;
    let counters = Counters {
        results: state.metrics.counters.results.load(Ordering::Relaxed),
        samples: state.metrics.counters.samples.load(Ordering::Relaxed),
        graphite_dropped: state.metrics.graphite.as_ref().map_or(0, |q| q.dropped()),
        unknown_messages: state
            .metrics
            .counters
            .unknown_messages
            .load(Ordering::Relaxed),
        refused: std::array::from_fn(|i| state.metrics.counters.refused[i].load(Ordering::Relaxed)),
        enrollment_refused: std::array::from_fn(|i| {
            state.metrics.counters.enrollment_refused[i].load(Ordering::Relaxed)
        }),
        series_dropped: state
            .metrics
            .counters
            .series_dropped
            .load(Ordering::Relaxed),
        future_clamped: state
            .metrics
            .counters
            .future_clamped
            .load(Ordering::Relaxed),
        graphite_oversized: state.metrics.graphite.as_ref().map_or(0, |q| q.oversized()),
        metric_samples: state
            .metrics
            .counters
            .metric_samples
            .load(Ordering::Relaxed),
        samples_refused: std::array::from_fn(|i| {
            state.metrics.counters.samples_refused[i].load(Ordering::Relaxed)
        }),
    };
    let mut body = render(&agents, &latest, &counters);
    body.push_str(&state.limits.refusals.render());
    if let Some(feed) = &state.metrics.remote_write {
        body.push_str(&feed.stats.render());
    }
    Ok((
        [(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_TEXT))],
        body,
    )
        .into_response())
}

/// Process counters included in the exposition.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    pub results: u64,
    pub samples: u64,
    pub graphite_dropped: u64,
    pub unknown_messages: u64,
    /// Results refused for their check name, by [`Refusal::index`].
    pub refused: [u64; Refusal::ALL.len()],
    /// Unknown agents refused enrollment, by [`EnrollmentRefusal::index`].
    pub enrollment_refused: [u64; EnrollmentRefusal::ALL.len()],
    pub series_dropped: u64,
    pub future_clamped: u64,
    pub graphite_oversized: u64,
    /// Metric samples stored as points.
    pub metric_samples: u64,
    /// Metric samples refused, by [`SampleRefusal::index`].
    pub samples_refused: [u64; SampleRefusal::ALL.len()],
}

/// Renders the whole exposition.
pub fn render(agents: &[AgentInfo], latest: &[ResultInfo], counters: &Counters) -> String {
    let mut out = String::with_capacity(256 + 160 * (agents.len() + 3 * latest.len()));
    family(
        &mut out,
        "outrider_agent_up",
        "gauge",
        "Whether the agent has a session open (1) or is down or deregistered (0).",
    );
    for a in agents {
        let up = u8::from(a.presence == Presence::Connected);
        sample(
            &mut out,
            "outrider_agent_up",
            &[("agent", a.fingerprint.as_str()), ("hostname", &a.hostname)],
            &up.to_string(),
        );
    }
    family(
        &mut out,
        "outrider_check_state",
        "gauge",
        "State of the check's latest result: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.",
    );
    for r in latest {
        sample(
            &mut out,
            "outrider_check_state",
            &[
                ("agent", r.agent.as_str()),
                ("hostname", &r.hostname),
                ("check", &r.check),
            ],
            &r.state.exit_code().to_string(),
        );
    }
    family(
        &mut out,
        "outrider_perfdata",
        "gauge",
        "Performance data value of the check's latest result.",
    );
    for r in latest {
        // Last value wins for a label printed twice with the same unit.
        let mut values: Vec<(&str, &str, f64)> = Vec::with_capacity(r.perfdata.len());
        let mut index: HashMap<(&str, &str), usize> = HashMap::new();
        for p in &r.perfdata {
            let key = (p.label.as_str(), p.uom.as_str());
            match index.get(&key) {
                Some(&i) => values[i].2 = p.value,
                None => {
                    index.insert(key, values.len());
                    values.push((key.0, key.1, p.value));
                }
            }
        }
        // An undetermined value (`U`) is NaN, Prometheus' own "no value",
        // unless the label also has a number in the same result.
        for u in &r.unknown_perfdata {
            let key = (u.label.as_str(), u.uom.as_str());
            if let std::collections::hash_map::Entry::Vacant(slot) = index.entry(key) {
                slot.insert(values.len());
                values.push((key.0, key.1, f64::NAN));
            }
        }
        for (label, uom, value) in values {
            sample(
                &mut out,
                "outrider_perfdata",
                &[
                    ("agent", r.agent.as_str()),
                    ("check", &r.check),
                    ("label", label),
                    ("uom", uom),
                ],
                &float(value),
            );
        }
    }
    for (name, help, value) in [
        (
            "outrider_ingested_results_total",
            "Check results stored since this server started (resent duplicates not counted).",
            counters.results,
        ),
        (
            "outrider_ingested_samples_total",
            "Perfdata samples stored since this server started.",
            counters.samples,
        ),
        (
            "outrider_graphite_dropped_lines_total",
            "Graphite lines dropped because the forwarding queue was full.",
            counters.graphite_dropped,
        ),
        (
            "outrider_unknown_agent_messages_total",
            "Agent messages of a type this server does not know, skipped.",
            counters.unknown_messages,
        ),
        (
            "outrider_series_limit_dropped_samples_total",
            "Perfdata samples dropped because their agent reached --max-series-per-agent.",
            counters.series_dropped,
        ),
        (
            "outrider_future_results_clamped_total",
            "Results dated more than ten minutes ahead of the server's clock, stored at that limit.",
            counters.future_clamped,
        ),
        (
            "outrider_graphite_oversized_lines_total",
            "Graphite lines dropped because they exceeded the line length limit.",
            counters.graphite_oversized,
        ),
        (
            "outrider_ingested_metric_samples_total",
            "Metric samples from agents' collectors stored as points (series of check outrider.samples).",
            counters.metric_samples,
        ),
    ] {
        family(&mut out, name, "counter", help);
        sample(&mut out, name, &[], &value.to_string());
    }
    let name = "outrider_refused_results_total";
    family(
        &mut out,
        name,
        "counter",
        "Results not stored because of their check name, by reason (acknowledged to the agent).",
    );
    for why in Refusal::ALL {
        let value = counters.refused[why.index()].to_string();
        sample(&mut out, name, &[("reason", why.label())], &value);
    }
    let name = "outrider_refused_metric_samples_total";
    family(
        &mut out,
        name,
        "counter",
        "Metric samples not stored, by reason (the rest of their batch is stored and acknowledged).",
    );
    for why in SampleRefusal::ALL {
        let value = counters.samples_refused[why.index()].to_string();
        sample(&mut out, name, &[("reason", why.label())], &value);
    }
    let name = "outrider_refused_enrollments_total";
    family(
        &mut out,
        name,
        "counter",
        "Unknown agents refused registration, by what was wrong with their enrollment token.",
    );
    for why in EnrollmentRefusal::ALL {
        let value = counters.enrollment_refused[why.index()].to_string();
        sample(&mut out, name, &[("reason", why.label())], &value);
    }
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    // HELP text escapes only `\` and newline; ours contain neither.
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: &str) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (key, value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(key);
            out.push_str("=\"");
            escape_label_value(out, value);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(value);
    out.push('\n');
}

/// Appends `value` escaped for a label value: `\` → `\\`, `"` → `\"`,
/// newline → `\n`; everything else (any UTF-8) as is.
pub fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A sample value as the format spells it (Go's `ParseFloat` syntax).
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        // Rust's shortest round-trip representation; never exponent-only
        // forms Go would refuse.
        format!("{v:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        escape_label_value(&mut out, "a\\b\"c\nd é");
        assert_eq!(out, r#"a\\b\"c\nd é"#);
    }

    #[test]
    fn floats_use_the_formats_spelling() {
        assert_eq!(float(1.0), "1.0");
        assert_eq!(float(0.25), "0.25");
        assert_eq!(float(1e300), "1e300");
        assert_eq!(float(f64::NAN), "NaN");
        assert_eq!(float(f64::NEG_INFINITY), "-Inf");
    }
}
