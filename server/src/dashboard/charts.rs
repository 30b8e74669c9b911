//! Perfdata graphs on the agent page: `GET /agents/{fp}/series` answers one
//! series as `{"metric", "uom", "t": [Unix s], "v": [value or null]}`,
//! downsampled on the server to about `points` buckets (the chart's width
//! in pixels; `static/chart.js` asks with it), so a graph never carries
//! more points than it can draw. One store read per graph.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use outrider_protocol::Fingerprint;
use serde::{Deserialize, Serialize};

use super::{Authed, Dashboard, PageError};
use crate::store::metrics::{ROLLUP_BUCKET_MS, SeriesQuery, ceil_div};
use crate::store::now_ms;

/// Bounds of `points`: the widest screen, and a floor that still draws a line.
const POINTS: std::ops::RangeInclusive<u32> = 10..=4000;

/// Bounds of `hours`: up to 30 days back.
const HOURS: std::ops::RangeInclusive<u32> = 1..=720;

/// The query of one graph.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesParams {
    check: String,
    metric: String,
    #[serde(default = "default_hours")]
    hours: u32,
    #[serde(default = "default_points")]
    points: u32,
}

fn default_hours() -> u32 {
    24
}

fn default_points() -> u32 {
    600
}

/// One series, as uPlot takes it.
#[derive(Debug, Serialize)]
pub struct Graph {
    metric: String,
    uom: String,
    t: Vec<f64>,
    v: Vec<Option<f64>>,
}

/// The bucket width that gives about `points` buckets over `[from, to)`,
/// never finer than a second, nor than the rollups when the range reaches
/// back before `raw_since_ms` (only rollups are left there).
pub fn step_ms(from_ms: i64, to_ms: i64, points: u32, raw_since_ms: i64) -> i64 {
    let step = ceil_div(to_ms - from_ms, i64::from(points.max(1))).max(1000);
    if from_ms < raw_since_ms {
        step.max(ROLLUP_BUCKET_MS)
    } else {
        step
    }
}

/// `GET /agents/{fp}/series?check=&metric=[&hours=24&points=600]`.
pub async fn series(
    State(dash): State<Arc<Dashboard>>,
    Authed(_session): Authed,
    Path(fp): Path<String>,
    params: Result<Query<SeriesParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Graph>, PageError> {
    let Query(params) = params.map_err(|e| {
        PageError::bad_request(format!(
            "a graph takes check, metric, hours and points: {}",
            e.body_text()
        ))
    })?;
    let agent: Fingerprint = fp
        .parse()
        .map_err(|e| PageError::bad_request(format!("{fp:?} is not an agent fingerprint: {e}")))?;
    if !HOURS.contains(&params.hours) || !POINTS.contains(&params.points) {
        return Err(PageError::bad_request(format!(
            "hours must be from {} to {} and points from {} to {}",
            HOURS.start(),
            HOURS.end(),
            POINTS.start(),
            POINTS.end()
        )));
    }
    let now = now_ms();
    let raw_retention_ms = i64::from(dash.app.metrics.config.raw_retention_days) * 86_400_000;
    let cutoff = now - raw_retention_ms;
    let raw_since_ms = cutoff - cutoff.rem_euclid(ROLLUP_BUCKET_MS);
    let from_ms = now - i64::from(params.hours) * 3_600_000;
    let query = SeriesQuery {
        agent,
        check: params.check.clone(),
        metric: params.metric.clone(),
        from_ms,
        to_ms: now,
        step_ms: Some(step_ms(from_ms, now, params.points, raw_since_ms)),
        raw_since_ms,
    };
    let found = dash.app.store.query_series(query).await?.ok_or_else(|| {
        PageError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no series {:?} of check {:?} on agent {fp}",
                params.metric, params.check
            ),
        )
    })?;
    Ok(Json(Graph {
        metric: found.metric,
        uom: found.uom,
        t: found
            .points
            .iter()
            .map(|p| p.ts_ms as f64 / 1000.0)
            .collect(),
        v: found.points.iter().map(|p| p.value).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn about_one_bucket_per_pixel_by_table() {
        let day = 86_400_000;
        for (from, to, points, raw_since, step) in [
            (0, day, 600, 0, 144_000),
            (0, 60_000, 600, 0, 1000),
            (0, day, 4000, 0, 21_600),
            (0, day, 600, 1, ROLLUP_BUCKET_MS),
            (0, 30 * day, 600, 1, 4_320_000),
        ] {
            assert_eq!(
                step_ms(from, to, points, raw_since),
                step,
                "{from} {to} {points}"
            );
        }
    }
}
