//! `GET /api/v1/series` and `GET /api/v1/series/query`.
//!
//! Parameters are read as strings and parsed here, so every bad request gets
//! a 400 naming the parameter and what was wrong with it (serde's own
//! messages name neither), and unknown parameters are refused rather than
//! silently ignored (a typo like `form_ms` would otherwise return the
//! default range).
//!
//! `series/query` parameters: `agent`, `check`, `metric` (required);
//! `from_ms` (default `to_ms` − 1 h), `to_ms` (default now), both Unix ms,
//! the range being `[from_ms, to_ms)`; `step_secs` (optional bucket width).
//! Without `step_secs` the answer is raw points when the range lies in the
//! raw retention window and holds at most
//! [`MAX_QUERY_POINTS`], else
//! aggregated buckets (`resolution` says which).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use outrider_protocol::Fingerprint;

use crate::AppState;
use crate::error::ApiError;
use crate::store::metrics::{
    MAX_QUERY_POINTS, ROLLUP_BUCKET_MS, SeriesInfo, SeriesPoints, SeriesQuery, ceil_div,
};
use crate::store::now_ms;

/// Range used when `from_ms` is absent.
const DEFAULT_RANGE_MS: i64 = 3_600_000;

/// Largest accepted `step_secs`: 31 days.
const MAX_STEP_SECS: i64 = 31 * 86_400;

type Params = Query<HashMap<String, String>>;

/// `GET /api/v1/series[?agent=&check=]`.
pub async fn list(
    State(state): State<Arc<AppState>>,
    Query(params): Params,
) -> Result<Json<Vec<SeriesInfo>>, ApiError> {
    refuse_unknown(&params, &["agent", "check"])?;
    let agent = params.get("agent").map(|a| fingerprint(a)).transpose()?;
    let check = params.get("check").cloned();
    Ok(Json(state.store.series(agent, check).await?))
}

/// `GET /api/v1/series/query?agent=&check=&metric=[&from_ms=&to_ms=&step_secs=]`.
pub async fn points(
    State(state): State<Arc<AppState>>,
    Query(params): Params,
) -> Result<Json<SeriesPoints>, ApiError> {
    let raw_retention_ms = i64::from(state.metrics.config.raw_retention_days) * 86_400_000;
    let query = parse_query(&params, now_ms(), raw_retention_ms)?;
    let described = format!(
        "agent {} check {:?} metric {:?}",
        query.agent, query.check, query.metric
    );
    match state.store.query_series(query).await? {
        Some(points) => Ok(Json(points)),
        None => Err(ApiError::NotFound(format!(
            "no series for {described}; GET /api/v1/series lists them"
        ))),
    }
}

/// Builds the store query from the request parameters at time `now`.
fn parse_query(
    params: &HashMap<String, String>,
    now: i64,
    raw_retention_ms: i64,
) -> Result<SeriesQuery, ApiError> {
    refuse_unknown(
        params,
        &["agent", "check", "metric", "from_ms", "to_ms", "step_secs"],
    )?;
    let required = |name: &str| {
        params
            .get(name)
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or_else(|| ApiError::BadRequest(format!("the {name} parameter is required")))
    };
    let agent = fingerprint(&required("agent")?)?;
    let check = required("check")?;
    let metric = required("metric")?;
    let to_ms = integer(params, "to_ms")?.unwrap_or(now);
    let from_ms = integer(params, "from_ms")?.unwrap_or(to_ms.saturating_sub(DEFAULT_RANGE_MS));
    if from_ms < 0 {
        return Err(ApiError::BadRequest(format!(
            "from_ms must not be negative, got {from_ms}"
        )));
    }
    if from_ms >= to_ms {
        return Err(ApiError::BadRequest(format!(
            "from_ms ({from_ms}) must be before to_ms ({to_ms})"
        )));
    }
    let step_ms = match integer(params, "step_secs")? {
        None => None,
        Some(step) if !(1..=MAX_STEP_SECS).contains(&step) => {
            return Err(ApiError::BadRequest(format!(
                "step_secs must be between 1 and {MAX_STEP_SECS}, got {step}"
            )));
        }
        Some(step) => {
            let step_ms = step * 1000;
            let buckets = ceil_div(to_ms - from_ms, step_ms);
            if buckets > MAX_QUERY_POINTS as i64 {
                return Err(ApiError::BadRequest(format!(
                    "step_secs {step} gives {buckets} points over this range, more than {MAX_QUERY_POINTS}; use a larger step or a shorter range"
                )));
            }
            Some(step_ms)
        }
    };
    // Raw points before the bucket-aligned raw cut-off may already be
    // folded into rollups; later ones never are (cut-offs only move forward).
    let cutoff = now - raw_retention_ms;
    Ok(SeriesQuery {
        agent,
        check,
        metric,
        from_ms,
        to_ms,
        step_ms,
        raw_since_ms: cutoff - cutoff.rem_euclid(ROLLUP_BUCKET_MS),
    })
}

fn refuse_unknown(params: &HashMap<String, String>, known: &[&str]) -> Result<(), ApiError> {
    let mut unknown: Vec<&str> = params
        .keys()
        .map(String::as_str)
        .filter(|k| !known.contains(k))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    unknown.sort_unstable();
    Err(ApiError::BadRequest(format!(
        "unknown parameter {}; this route takes {}",
        unknown.join(", "),
        known.join(", ")
    )))
}

fn fingerprint(value: &str) -> Result<Fingerprint, ApiError> {
    value
        .parse()
        .map_err(|e| ApiError::BadRequest(format!("agent: {e}")))
}

fn integer(params: &HashMap<String, String>, name: &str) -> Result<Option<i64>, ApiError> {
    params
        .get(name)
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| ApiError::BadRequest(format!("{name} must be an integer, got {v:?}")))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "0123456789abcdef0123";

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn error(pairs: &[(&str, &str)]) -> String {
        match parse_query(&params(pairs), 10_000_000, 1_000_000) {
            Err(ApiError::BadRequest(msg)) => msg,
            other => panic!("expected a bad request, got {other:?}"),
        }
    }

    #[test]
    fn defaults_cover_the_last_hour() {
        let q = parse_query(
            &params(&[("agent", FP), ("check", "load"), ("metric", "load1")]),
            10_000_000,
            1_000_000,
        )
        .unwrap();
        assert_eq!(
            (q.from_ms, q.to_ms, q.step_ms),
            (6_400_000, 10_000_000, None)
        );
        // Cut-off now - retention = 9,000,000, a rollup bucket boundary.
        assert_eq!(q.raw_since_ms, 9_000_000);
    }

    #[test]
    fn every_bad_parameter_is_named() {
        let base = [("agent", FP), ("check", "load"), ("metric", "load1")];
        let with = |extra: (&'static str, &'static str)| {
            let mut p = base.to_vec();
            p.push(extra);
            error(&p)
        };
        assert!(
            error(&[("check", "load"), ("metric", "m")]).contains("agent parameter is required")
        );
        assert!(error(&[("agent", FP), ("metric", "m")]).contains("check parameter is required"));
        assert!(error(&[("agent", "nope"), ("check", "c"), ("metric", "m")]).starts_with("agent:"));
        assert!(with(("from_ms", "yesterday")).contains("from_ms must be an integer"));
        assert!(with(("to_ms", "1.5")).contains("to_ms must be an integer"));
        assert!(with(("from_ms", "20000000")).contains("must be before to_ms"));
        assert!(with(("from_ms", "-5")).contains("must not be negative"));
        assert!(with(("step_secs", "0")).contains("step_secs must be between"));
        assert!(with(("step_secs", "x")).contains("step_secs must be an integer"));
        // 20,000 s in 1 s buckets is too many points.
        let mut p = base.to_vec();
        p.extend([("from_ms", "0"), ("to_ms", "20000000"), ("step_secs", "1")]);
        assert!(error(&p).contains("more than 10000"));
        // The widest range is refused, not an overflow.
        let mut p = base.to_vec();
        p.extend([
            ("from_ms", "0"),
            ("to_ms", "9223372036854775807"),
            ("step_secs", "2678400"),
        ]);
        assert!(error(&p).contains("more than 10000"));
        assert!(with(("form_ms", "0")).contains("unknown parameter form_ms"));
    }
}
