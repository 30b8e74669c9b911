//! The Prometheus remote_write 1.0 wire format and the receiver's answer.
//!
//! A request body is a protobuf `prometheus.WriteRequest` (only field 1,
//! `timeseries`, is written) compressed with the snappy *block* format
//! (`snap::raw`, not the framed stream format), sent as `POST` with the
//! headers of [`HEADERS`]. The message types are written by hand with
//! `prost`'s derive (field numbers and types of the spec's
//! `types.proto`/`remote.proto`), so no `protoc` or build script is needed.
//!
//! The spec requires each series' labels sorted by name with `__name__`
//! present, and each series' samples in time order; [`super::series`]
//! builds series that way, [`encode`] only serialises.
//!
//! What to do with an answer is [`decide`], a pure function: 2xx is done,
//! 5xx and 429 are retried (honouring `Retry-After` when given), 400 and
//! the other 4xx drop the batch (the spec: a data error will fail again),
//! and the statuses that say the URL or credentials are wrong are retried
//! (a deliberate deviation from the spec, see [`decide`]); how long to
//! wait is [`retry_delay`].

use std::time::Duration;

use prost::Message as _;

/// `prometheus.WriteRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// `prometheus.TimeSeries`: labels sorted by name, samples by time.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `prometheus.Sample`: milliseconds since the Unix epoch.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// Headers every request carries (besides `User-Agent` and auth).
pub const HEADERS: [(&str, &str); 3] = [
    ("Content-Encoding", "snappy"),
    ("Content-Type", "application/x-protobuf"),
    ("X-Prometheus-Remote-Write-Version", "0.1.0"),
];

/// The request body of `series`: protobuf, then snappy (block format).
///
/// Fails only when snappy refuses the input (larger than ~4 GiB, which a
/// batch bounded by `--remote-write-batch-samples` never is).
pub fn encode(series: Vec<TimeSeries>) -> Result<Vec<u8>, snap::Error> {
    let proto = WriteRequest { timeseries: series }.encode_to_vec();
    snap::raw::Encoder::new().compress_vec(&proto)
}

/// The inverse of [`encode`], for tests and for checking a queued
/// segment's payload.
pub fn decode(body: &[u8]) -> Result<WriteRequest, DecodeError> {
    let proto = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(DecodeError::Snappy)?;
    WriteRequest::decode(proto.as_slice()).map_err(DecodeError::Protobuf)
}

/// Why a body is not a remote_write request.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not snappy block data: {0}")]
    Snappy(snap::Error),
    #[error("not a protobuf WriteRequest: {0}")]
    Protobuf(prost::DecodeError),
}

/// What to do with a batch after the receiver's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Stored: delete the batch.
    Done,
    /// Try the same batch again after at least this long (`None`: the
    /// sender's own backoff).
    Retry(Option<Duration>),
    /// The answer says the sender is set up wrong (URL, credentials, a
    /// proxy in between), not that the data is: keep the batch and retry
    /// it with the sender's own backoff until an operator fixes the setup.
    Misconfigured,
    /// The receiver will never take this batch (a data error): delete it,
    /// count it (`reason="rejected"`), log the receiver's answer.
    Drop,
}

/// Longest `Retry-After` honoured: a receiver asking for an hour would
/// otherwise park the queue while it fills.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// First retry delay ceiling.
pub const RETRY_BASE: Duration = Duration::from_millis(100);
/// Largest retry delay ceiling: shorter than the alert notifier's
/// (`notify/policy.rs`), since the whole queue waits behind the request
/// being retried and a receiver back from an outage should see the backlog
/// within seconds.
pub const RETRY_CAP: Duration = Duration::from_secs(5);

/// The decision for HTTP status `status` with `retry_after`, the
/// receiver's `Retry-After` already parsed
/// (`notify::policy::parse_retry_after`).
///
/// Deviation from the remote_write 1.0 spec, which says any 4xx other than
/// 429 must not be retried: 401, 403, 404, 405 and 407, every 3xx
/// (redirects are not followed) and any status outside 2xx/4xx/5xx are
/// [`Decision::Misconfigured`] and retried. They answer every request of a
/// wrong URL or token alike, so dropping would delete the whole disk queue
/// within seconds of a typo or an expired token; retried, the queue waits
/// (bounded by `--remote-write-queue-bytes`) and is sent once the setup is
/// fixed. 400 and the other 4xx keep the spec's rule: they judge the data
/// of this one request, which will fail again.
pub fn decide(status: u16, retry_after: Option<Duration>) -> Decision {
    match status {
        200..=299 => Decision::Done,
        429 | 500..=599 => Decision::Retry(retry_after.map(|d| d.min(MAX_RETRY_AFTER))),
        401 | 403 | 404 | 405 | 407 => Decision::Misconfigured,
        400..=499 => Decision::Drop,
        _ => Decision::Misconfigured,
    }
}

/// The delay before the next attempt after `attempts` failed ones: the
/// receiver's wish when it gave one, but at least [`RETRY_BASE`]
/// (`Retry-After: 0` or a date in the past would otherwise resend in a
/// tight loop for as long as the receiver keeps answering so), else the
/// same "equal jitter" exponential backoff as the notifier's
/// (`notify/policy.rs` `retry_delay`) between [`RETRY_BASE`] and
/// [`RETRY_CAP`]: a uniform pick (from `random`) in the upper half of the
/// ceiling, so servers that lost the same receiver do not come back in
/// lockstep.
pub fn retry_delay(attempts: u32, retry_after: Option<Duration>, random: u64) -> Duration {
    if let Some(after) = retry_after {
        return after.max(RETRY_BASE);
    }
    let factor = 1u32.checked_shl(attempts.min(31)).unwrap_or(u32::MAX);
    let ceiling = RETRY_BASE.saturating_mul(factor).min(RETRY_CAP);
    let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    let half = ceiling_ms / 2;
    Duration::from_millis(half + random % (ceiling_ms - half + 1))
}

/// The `/metrics` label of a status: `2xx`, `4xx`, `5xx`, or `other`.
pub fn status_class(status: u16) -> &'static str {
    match status {
        200..=299 => "2xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, points: &[(i64, f64)]) -> TimeSeries {
        TimeSeries {
            labels: vec![
                Label {
                    name: "__name__".into(),
                    value: name.into(),
                },
                Label {
                    name: "agent".into(),
                    value: "abc".into(),
                },
            ],
            samples: points
                .iter()
                .map(|&(timestamp, value)| Sample { value, timestamp })
                .collect(),
        }
    }

    #[test]
    fn a_request_decodes_back_to_what_was_encoded() {
        let sent = vec![
            series("up", &[(1_700_000_000_000, 1.0), (1_700_000_001_000, 0.5)]),
            series("load", &[(1_700_000_000_000, -2.25)]),
        ];
        let body = encode(sent.clone()).unwrap();
        assert_eq!(decode(&body).unwrap().timeseries, sent);
        // Snappy block format: the body starts with the uncompressed
        // length as a varint, not the framed format's stream identifier.
        let proto = WriteRequest {
            timeseries: sent.clone(),
        }
        .encode_to_vec();
        assert_eq!(snap::raw::decompress_len(&body).unwrap(), proto.len());
        assert_ne!(body[0], 0xff, "framed snappy starts with 0xff");
        assert_eq!(
            snap::raw::Decoder::new().decompress_vec(&body).unwrap(),
            proto
        );
    }

    #[test]
    fn the_wire_bytes_are_the_protos_field_numbers() {
        // Label{name:"a",value:"b"} = field 1 "a", field 2 "b".
        let label = Label {
            name: "a".into(),
            value: "b".into(),
        };
        assert_eq!(label.encode_to_vec(), [0x0a, 1, b'a', 0x12, 1, b'b']);
        // Sample{value:1.0,timestamp:2} = field 1 fixed64, field 2 varint.
        let sample = Sample {
            value: 1.0,
            timestamp: 2,
        };
        let mut want = vec![0x09];
        want.extend_from_slice(&1.0f64.to_le_bytes());
        want.extend_from_slice(&[0x10, 2]);
        assert_eq!(sample.encode_to_vec(), want);
    }

    #[test]
    fn garbage_is_a_decode_error_not_a_panic() {
        assert!(matches!(decode(b"\xff\xff"), Err(DecodeError::Snappy(_))));
        let not_proto = snap::raw::Encoder::new().compress_vec(b"\xff\xff").unwrap();
        assert!(matches!(decode(&not_proto), Err(DecodeError::Protobuf(_))));
    }

    #[test]
    fn answers_decide_retry_drop_or_done() {
        let s = Duration::from_secs;
        for (status, retry_after, want) in [
            (200, None, Decision::Done),
            (204, Some(s(5)), Decision::Done),
            (429, None, Decision::Retry(None)),
            (429, Some(s(7)), Decision::Retry(Some(s(7)))),
            (429, Some(s(86_400)), Decision::Retry(Some(MAX_RETRY_AFTER))),
            (500, None, Decision::Retry(None)),
            (502, Some(s(1)), Decision::Retry(Some(s(1)))),
            (503, None, Decision::Retry(None)),
            (599, None, Decision::Retry(None)),
            (400, Some(s(5)), Decision::Drop),
            (408, None, Decision::Drop),
            (409, None, Decision::Drop),
            (413, None, Decision::Drop),
            (422, None, Decision::Drop),
            // A wrong URL or token answers every request like this: the
            // queue must wait for the fix, not be emptied.
            (401, None, Decision::Misconfigured),
            (403, None, Decision::Misconfigured),
            (404, None, Decision::Misconfigured),
            (405, None, Decision::Misconfigured),
            (407, None, Decision::Misconfigured),
            (401, Some(s(5)), Decision::Misconfigured),
            (301, None, Decision::Misconfigured),
            (302, None, Decision::Misconfigured),
            (308, None, Decision::Misconfigured),
            (101, None, Decision::Misconfigured),
            (600, None, Decision::Misconfigured),
        ] {
            assert_eq!(
                decide(status, retry_after),
                want,
                "{status} {retry_after:?}"
            );
        }
    }

    #[test]
    fn retries_back_off_within_jitter_up_to_the_cap() {
        let ms = Duration::from_millis;
        for (attempts, random, want) in [
            (0, 0, ms(50)),
            (0, 37, ms(87)),
            (1, 0, ms(100)),
            (3, 0, ms(400)),
            (3, 400, ms(800)),
            (6, 0, ms(2_500)),
            (40, 0, ms(2_500)),
            (40, 2_500, ms(5_000)),
        ] {
            assert_eq!(
                retry_delay(attempts, None, random),
                want,
                "{attempts} {random}"
            );
        }
        // The receiver's wish, floored at the least backoff: Retry-After: 0
        // (or a date already past, parsed to zero) must not spin.
        for (retry_after, want) in [
            (ms(7_000), ms(7_000)),
            (MAX_RETRY_AFTER, MAX_RETRY_AFTER),
            (RETRY_BASE, RETRY_BASE),
            (ms(7), RETRY_BASE),
            (ms(0), RETRY_BASE),
        ] {
            for attempts in [0, 9] {
                assert_eq!(
                    retry_delay(attempts, Some(retry_after), 0),
                    want,
                    "{retry_after:?} after {attempts}"
                );
            }
        }
        let past = crate::notify::policy::parse_retry_after(
            "Sun, 06 Nov 1994 08:49:37 GMT",
            1_700_000_000_000,
        );
        assert_eq!(past, Some(ms(0)));
        assert_eq!(retry_delay(0, past, 0), RETRY_BASE);
    }

    #[test]
    fn statuses_fall_into_classes() {
        for (status, class) in [
            (200, "2xx"),
            (299, "2xx"),
            (400, "4xx"),
            (429, "4xx"),
            (503, "5xx"),
            (302, "other"),
        ] {
            assert_eq!(status_class(status), class);
        }
    }
}
