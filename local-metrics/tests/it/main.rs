//! Integration tests of the parsers and the aggregator through the public
//! API: table tests per parser, aggregation tables with hand-computed
//! expectations, conformance fixtures (`tests/fixtures/`) and property
//! tests.

mod aggregate;
mod fixtures;
mod graphite;
mod props;
mod statsd;

use outrider_local_metrics::{Aggregator, AggregatorConfig, Sample, SampleKind};

/// A flush time far from zero.
pub const T0: i64 = 1_733_300_000_000;

/// An aggregator with the default configuration.
pub fn aggregator() -> Aggregator {
    Aggregator::new(AggregatorConfig::default()).expect("the default config is valid")
}

/// The value of the one sample named `name` (tags ignored) of `kind`.
pub fn value_of(samples: &[Sample], name: &str, kind: SampleKind) -> Option<f64> {
    let mut found = samples.iter().filter(|s| s.name == name && s.kind == kind);
    let first = found.next()?;
    assert!(
        found.next().is_none(),
        "more than one {name} {kind:?}: {samples:#?}"
    );
    Some(first.value)
}
