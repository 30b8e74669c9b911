//! Which metric samples of a batch are stored: the decision, pure.
//!
//! A sample is refused (counted on `/metrics` by reason, never stored; the
//! rest of its batch is stored and the whole batch acknowledged, so the
//! agent does not resend what will never be taken) when its name is empty,
//! when its series label (name and tags, `store/samples.rs`) does not fit
//! the label limit whole (cutting it would merge distinct series), when
//! name or tags hold control characters, when its value is not finite (a
//! number too large for f64 decodes as infinite), or when it comes after
//! the first [`MAX_BATCH_SAMPLES`] of its batch.

use outrider_protocol::{MAX_BATCH_SAMPLES, MetricSample};

use crate::store::metrics::MAX_LABEL_BYTES;
use crate::store::samples::series_label;

/// Why a sample was refused; counted under [`SampleRefusal::label`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum SampleRefusal {
    #[error("the metric name is empty")]
    Empty,
    #[error("name and tags are longer than {MAX_LABEL_BYTES} bytes")]
    TooLong,
    #[error("name or tags hold control characters")]
    BadCharacters,
    #[error("the value is not a finite number")]
    NotFinite,
    #[error("the batch holds more than {MAX_BATCH_SAMPLES} samples")]
    TooMany,
}

impl SampleRefusal {
    /// Every refusal, in the order `/metrics` lists them.
    pub const ALL: [SampleRefusal; 5] = [
        SampleRefusal::Empty,
        SampleRefusal::TooLong,
        SampleRefusal::BadCharacters,
        SampleRefusal::NotFinite,
        SampleRefusal::TooMany,
    ];

    /// The `reason` label of `outrider_refused_metric_samples_total`.
    pub fn label(self) -> &'static str {
        match self {
            SampleRefusal::Empty => "empty",
            SampleRefusal::TooLong => "too_long",
            SampleRefusal::BadCharacters => "bad_characters",
            SampleRefusal::NotFinite => "not_finite",
            SampleRefusal::TooMany => "too_many",
        }
    }

    /// Index into [`SampleRefusal::ALL`].
    pub fn index(self) -> usize {
        SampleRefusal::ALL
            .iter()
            .position(|r| *r == self)
            .unwrap_or_default()
    }
}

/// Whether one sample may be stored.
pub fn judge(sample: &MetricSample) -> Result<(), SampleRefusal> {
    if sample.name.is_empty() {
        return Err(SampleRefusal::Empty);
    }
    let control = |s: &str| s.chars().any(char::is_control);
    if control(&sample.name)
        || sample
            .tags
            .iter()
            .any(|t| control(&t.key) || control(&t.value))
    {
        return Err(SampleRefusal::BadCharacters);
    }
    if series_label(sample).len() > MAX_LABEL_BYTES {
        return Err(SampleRefusal::TooLong);
    }
    if !sample.value.is_finite() {
        return Err(SampleRefusal::NotFinite);
    }
    Ok(())
}

/// Splits a batch into the samples to store and the count refused per
/// [`SampleRefusal::index`].
pub fn screen(samples: Vec<MetricSample>) -> (Vec<MetricSample>, [u64; SampleRefusal::ALL.len()]) {
    let mut refused = [0; SampleRefusal::ALL.len()];
    let mut kept = Vec::with_capacity(samples.len().min(MAX_BATCH_SAMPLES));
    for (i, s) in samples.into_iter().enumerate() {
        let verdict = if i >= MAX_BATCH_SAMPLES {
            Err(SampleRefusal::TooMany)
        } else {
            judge(&s)
        };
        match verdict {
            Ok(()) => kept.push(s),
            Err(why) => refused[why.index()] += 1,
        }
    }
    (kept, refused)
}

#[cfg(test)]
mod tests {
    use outrider_protocol::MetricTag;

    use super::*;

    fn sample(name: &str, value: f64) -> MetricSample {
        MetricSample {
            name: name.into(),
            tags: vec![],
            value,
            kind: String::new(),
            unit: String::new(),
            timestamp_ms: 1,
        }
    }

    #[test]
    fn samples_are_judged_by_table() {
        let tagged = |key: &str, value: &str| MetricSample {
            tags: vec![MetricTag {
                key: key.into(),
                value: value.into(),
            }],
            ..sample("api.requests", 1.0)
        };
        let table = [
            (sample("api.requests", 1.0), Ok(())),
            (sample("", 1.0), Err(SampleRefusal::Empty)),
            (sample("a\nb", 1.0), Err(SampleRefusal::BadCharacters)),
            (tagged("env", "pr\0d"), Err(SampleRefusal::BadCharacters)),
            (tagged("env", "prod"), Ok(())),
            (sample(&"x".repeat(MAX_LABEL_BYTES), 1.0), Ok(())),
            (
                sample(&"x".repeat(MAX_LABEL_BYTES + 1), 1.0),
                Err(SampleRefusal::TooLong),
            ),
            (
                tagged("env", &"v".repeat(MAX_LABEL_BYTES)),
                Err(SampleRefusal::TooLong),
            ),
            (sample("a", f64::NAN), Err(SampleRefusal::NotFinite)),
            (sample("a", f64::INFINITY), Err(SampleRefusal::NotFinite)),
        ];
        for (s, want) in table {
            assert_eq!(judge(&s), want, "{s:?}");
        }
    }

    #[test]
    fn bad_and_excess_samples_are_counted_and_the_rest_kept() {
        let mut batch = vec![sample("a", 1.0), sample("", 2.0), sample("b", f64::NAN)];
        batch.extend((0..MAX_BATCH_SAMPLES).map(|i| sample(&format!("m{i}"), 1.0)));
        let (kept, refused) = screen(batch);
        // Three before the excess, one of them good; the batch is 3 over.
        assert_eq!(kept.len(), MAX_BATCH_SAMPLES - 2);
        assert_eq!(kept[0].name, "a");
        assert_eq!(refused[SampleRefusal::Empty.index()], 1);
        assert_eq!(refused[SampleRefusal::NotFinite.index()], 1);
        assert_eq!(refused[SampleRefusal::TooMany.index()], 3);
    }
}
