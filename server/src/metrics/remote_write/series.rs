//! Naming: what a stored result or metric sample is called in Prometheus,
//! and the batch that groups points into series.
//!
//! The names are those of the server's own `/metrics` exposition
//! (`metrics/prometheus.rs`), so a dashboard works on either path:
//! - each result's state: `outrider_check_state{agent,check,hostname}`
//!   (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN);
//! - each perfdata value: `outrider_perfdata{agent,check,hostname,label,uom}`;
//! - each metric sample of a collector (stored as check `outrider.samples`,
//!   label `name;key=value;…`, `store/samples.rs`): its own name,
//!   sanitised, with labels `agent`, `hostname`, `uom` and its tags.
//!
//! Prometheus' rules: a metric name matches `[a-zA-Z_:][a-zA-Z0-9_:]*`, a
//! label name `[a-zA-Z_][a-zA-Z0-9_]*` and must not start with `__`
//! (reserved), labels are sorted by name and unique, and an empty label
//! value is the same as no label, so empty values are left out. Every
//! other byte becomes `_` (a leading digit gets a `_` in front). A tag
//! whose name collides with a label the server sets, or that starts with
//! `__`, is renamed `exported_<name>` (Prometheus' own convention for
//! scraped labels that collide); a tag without value gets the value
//! `true`; of two tags that sanitise to the same name, the first wins. A
//! receiver answers a duplicate label name with 400, losing the whole
//! batch, so this is decided here, never left to the receiver.

use std::collections::HashMap;

use super::wire::{Label, Sample, TimeSeries};

/// The metric name of a result's state.
pub const STATE_METRIC: &str = "outrider_check_state";
/// The metric name of a perfdata value.
pub const PERFDATA_METRIC: &str = "outrider_perfdata";

/// Labels the server sets on a metric sample; a tag of the same name is
/// renamed.
const SAMPLE_RESERVED: &[&str] = &["agent", "hostname", "uom"];

/// Who a point belongs to.
#[derive(Clone, Copy, Debug)]
pub struct Origin<'a> {
    /// The agent's fingerprint.
    pub agent: &'a str,
    /// Its hostname as registered (empty when unknown).
    pub hostname: &'a str,
}

/// Labels of check `check`'s state.
pub fn state_labels(origin: Origin<'_>, check: &str) -> Vec<Label> {
    sorted(vec![
        label("__name__", STATE_METRIC),
        label("agent", origin.agent),
        label("check", check),
        label("hostname", origin.hostname),
    ])
}

/// Labels of perfdata value `perf_label` (unit `uom`) of check `check`.
pub fn perfdata_labels(origin: Origin<'_>, check: &str, perf_label: &str, uom: &str) -> Vec<Label> {
    sorted(vec![
        label("__name__", PERFDATA_METRIC),
        label("agent", origin.agent),
        label("check", check),
        label("hostname", origin.hostname),
        label("label", perf_label),
        label("uom", uom),
    ])
}

/// Labels of a metric sample stored under series label `stored`
/// (`name;key=value;key;…`) with unit `uom`.
pub fn sample_labels(origin: Origin<'_>, stored: &str, uom: &str) -> Vec<Label> {
    let mut parts = stored.split(';');
    let name = metric_name(parts.next().unwrap_or_default());
    let mut labels = vec![
        label("__name__", &name),
        label("agent", origin.agent),
        label("hostname", origin.hostname),
        label("uom", uom),
    ];
    for tag in parts {
        let (key, value) = match tag.split_once('=') {
            Some((key, value)) => (key, value),
            None => (tag, "true"),
        };
        let mut key = label_name(key);
        if key.starts_with("__") || SAMPLE_RESERVED.contains(&key.as_str()) {
            key.insert_str(0, "exported_");
        }
        if !labels.iter().any(|l| l.name == key) {
            labels.push(Label {
                name: key,
                value: value.to_owned(),
            });
        }
    }
    sorted(labels)
}

/// `name` as a valid metric name.
pub fn metric_name(name: &str) -> String {
    sanitise(name, |b| {
        b.is_ascii_alphanumeric() || b == b'_' || b == b':'
    })
}

/// `name` as a valid label name (possibly starting with `__`; the caller
/// decides about those).
pub fn label_name(name: &str) -> String {
    sanitise(name, |b| b.is_ascii_alphanumeric() || b == b'_')
}

fn sanitise(name: &str, allowed: impl Fn(u8) -> bool) -> String {
    let mut out = String::with_capacity(name.len() + 1);
    if name.is_empty() || name.as_bytes()[0].is_ascii_digit() {
        out.push('_');
    }
    // Bytes, not chars: a multi-byte character becomes one `_` per byte,
    // which keeps distinct names distinct more often than one `_` would.
    for b in name.bytes() {
        out.push(if allowed(b) { b as char } else { '_' });
    }
    out
}

fn label(name: &str, value: &str) -> Label {
    Label {
        name: name.to_owned(),
        value: value.to_owned(),
    }
}

/// Drops empty values and sorts by name, as the spec requires.
fn sorted(mut labels: Vec<Label>) -> Vec<Label> {
    labels.retain(|l| !l.value.is_empty());
    labels.sort_by(|a, b| a.name.cmp(&b.name));
    labels
}

/// Points grouped by series until they are sent.
#[derive(Debug, Default)]
pub struct Batch {
    series: HashMap<Vec<Label>, Vec<Sample>>,
    samples: usize,
}

impl Batch {
    /// Adds one point; non-finite values are skipped (a perfdata `U` is
    /// never a value here; an infinity is a plugin's bug, as for Graphite).
    pub fn push(&mut self, labels: Vec<Label>, timestamp_ms: i64, value: f64) {
        if !value.is_finite() {
            return;
        }
        self.series.entry(labels).or_default().push(Sample {
            value,
            timestamp: timestamp_ms,
        });
        self.samples += 1;
    }

    /// Points held.
    pub fn len(&self) -> usize {
        self.samples
    }

    /// Whether no point is held.
    pub fn is_empty(&self) -> bool {
        self.samples == 0
    }

    /// Takes every series, samples in time order; of two samples of one
    /// series at the same millisecond the later pushed wins (a receiver
    /// refuses a duplicate timestamp with another value). Returns the
    /// series and the number of samples in them.
    pub fn take(&mut self) -> (Vec<TimeSeries>, usize) {
        self.samples = 0;
        let mut count = 0;
        let mut out: Vec<TimeSeries> = self
            .series
            .drain()
            .map(|(labels, mut samples)| {
                // Stable: equal timestamps keep their push order.
                samples.sort_by_key(|s| s.timestamp);
                let mut kept: Vec<Sample> = Vec::with_capacity(samples.len());
                for s in samples {
                    match kept.last_mut() {
                        Some(last) if last.timestamp == s.timestamp => *last = s,
                        _ => kept.push(s),
                    }
                }
                count += kept.len();
                TimeSeries {
                    labels,
                    samples: kept,
                }
            })
            .collect();
        // A stable order makes requests reproducible (and tests simple).
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        (out, count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: Origin<'static> = Origin {
        agent: "0123456789abcdef0123",
        hostname: "web-1",
    };

    fn pairs(labels: &[Label]) -> Vec<(String, String)> {
        labels
            .iter()
            .map(|l| (l.name.clone(), l.value.clone()))
            .collect()
    }

    fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn names_are_sanitised_to_prometheus_rules() {
        for (input, metric, label) in [
            ("api.latency", "api_latency", "api_latency"),
            ("ns:sub_total", "ns:sub_total", "ns_sub_total"),
            ("9lives", "_9lives", "_9lives"),
            ("", "_", "_"),
            ("a b-c/d", "a_b_c_d", "a_b_c_d"),
            ("é", "__", "__"),
            ("Up", "Up", "Up"),
        ] {
            assert_eq!(metric_name(input), metric, "metric {input:?}");
            assert_eq!(label_name(input), label, "label {input:?}");
        }
    }

    #[test]
    fn results_map_to_the_expositions_names() {
        assert_eq!(
            pairs(&state_labels(ORIGIN, "disk.root")),
            owned(&[
                ("__name__", "outrider_check_state"),
                ("agent", "0123456789abcdef0123"),
                ("check", "disk.root"),
                ("hostname", "web-1"),
            ])
        );
        assert_eq!(
            pairs(&perfdata_labels(ORIGIN, "disk.root", "/ used", "B")),
            owned(&[
                ("__name__", "outrider_perfdata"),
                ("agent", "0123456789abcdef0123"),
                ("check", "disk.root"),
                ("hostname", "web-1"),
                ("label", "/ used"),
                ("uom", "B"),
            ])
        );
        // Empty values are absent labels: no unit, unknown host.
        let unknown_host = Origin {
            hostname: "",
            ..ORIGIN
        };
        assert_eq!(
            pairs(&perfdata_labels(unknown_host, "load", "load1", "")),
            owned(&[
                ("__name__", "outrider_perfdata"),
                ("agent", "0123456789abcdef0123"),
                ("check", "load"),
                ("label", "load1"),
            ])
        );
    }

    #[test]
    fn samples_keep_their_name_and_tags_as_labels() {
        let fp = "0123456789abcdef0123";
        for (stored, uom, want) in [
            (
                "api.requests",
                "",
                vec![
                    ("__name__", "api_requests"),
                    ("agent", fp),
                    ("hostname", "web-1"),
                ],
            ),
            (
                "hits;env=prod;canary",
                "ms",
                vec![
                    ("__name__", "hits"),
                    ("agent", fp),
                    ("canary", "true"),
                    ("env", "prod"),
                    ("hostname", "web-1"),
                    ("uom", "ms"),
                ],
            ),
            // Collisions with the server's labels and reserved names.
            (
                "x;agent=other;hostname=h;__name__=evil;uom=s",
                "",
                vec![
                    ("__name__", "x"),
                    ("agent", fp),
                    ("exported___name__", "evil"),
                    ("exported_agent", "other"),
                    ("exported_hostname", "h"),
                    ("exported_uom", "s"),
                    ("hostname", "web-1"),
                ],
            ),
            // Two tags that sanitise alike: the first wins; bad bytes and
            // leading digits are fixed; an empty value is no label.
            (
                "cpu.user;core.id=1;core_id=2;1st=a;empty=",
                "",
                vec![
                    ("_1st", "a"),
                    ("__name__", "cpu_user"),
                    ("agent", fp),
                    ("core_id", "1"),
                    ("hostname", "web-1"),
                ],
            ),
        ] {
            assert_eq!(
                pairs(&sample_labels(ORIGIN, stored, uom)),
                owned(&want),
                "{stored:?}"
            );
        }
    }

    #[test]
    fn every_mapped_name_is_valid_and_labels_are_sorted_and_unique() {
        let metric_ok = |n: &str| {
            let b = n.as_bytes();
            !b.is_empty()
                && (b[0].is_ascii_alphabetic() || b[0] == b'_' || b[0] == b':')
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b':')
        };
        for stored in [
            "",
            "0",
            ";",
            ";=",
            "a;;b",
            "ä.ö;ü=1;ü=2",
            "a;b=c=d",
            "a;__x",
        ] {
            let labels = sample_labels(ORIGIN, stored, "");
            assert!(metric_ok(
                &labels.iter().find(|l| l.name == "__name__").unwrap().value
            ));
            for w in labels.windows(2) {
                assert!(w[0].name < w[1].name, "{stored:?}: {labels:?}");
            }
            for l in labels.iter().filter(|l| l.name != "__name__") {
                assert!(!l.name.starts_with("__"), "{stored:?}: {labels:?}");
                assert!(metric_ok(&l.name) && !l.name.contains(':'), "{l:?}");
                assert!(!l.value.is_empty());
            }
        }
    }

    #[test]
    fn a_batch_orders_samples_and_keeps_the_last_of_a_millisecond() {
        let mut batch = Batch::default();
        let a = state_labels(ORIGIN, "a");
        let b = state_labels(ORIGIN, "b");
        batch.push(a.clone(), 3_000, 3.0);
        batch.push(a.clone(), 1_000, 1.0);
        batch.push(b.clone(), 1_000, 9.0);
        batch.push(a.clone(), 3_000, 4.0);
        batch.push(a.clone(), 2_000, f64::NAN);
        batch.push(a.clone(), 2_000, f64::INFINITY);
        assert_eq!(batch.len(), 4);
        let (series, count) = batch.take();
        assert!(batch.is_empty());
        assert_eq!(count, 3);
        assert_eq!(series.len(), 2);
        assert_eq!(series[0].labels, a);
        let points: Vec<(i64, f64)> = series[0]
            .samples
            .iter()
            .map(|s| (s.timestamp, s.value))
            .collect();
        assert_eq!(points, [(1_000, 1.0), (3_000, 4.0)]);
        assert_eq!(series[1].labels, b);
    }
}
