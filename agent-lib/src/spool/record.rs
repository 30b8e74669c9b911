//! One spool record: `len: u32 LE | crc32(body): u32 LE | body`, and the
//! payloads a body carries.
//!
//! The length comes first so a reader can skip a record without decoding
//! it; the CRC-32 (IEEE, `crc32fast`) covers the body, so a record torn by a
//! crash mid-write, or flipped bits, is detected rather than decoded.
//!
//! The body is one JSON object, a [`Payload`]:
//! - a check result: the bare `CheckResult` object, exactly as version 1 of
//!   the spool (the only version before payload kinds) wrote it, so a spool
//!   of check results stays readable by an older build after a rollback;
//! - a batch of metric samples: `{"kind":"samples","seq":N,"samples":[…]}`.
//!
//! A body without `kind` is a check result; a `kind` this build does not
//! know is an error naming it (a newer build wrote it), which the spool
//! treats as damage. Both kinds carry `seq`, the *stored* sequence number
//! (see the spool's `seq_shift`). Bodies of the two kinds never share a
//! spool directory (see `outbox.rs`): an older reader would take a samples
//! record for a damaged check result, and each kind numbers its own records.

use std::io::{self, Read};

use outrider_protocol::CheckResult;
use serde::{Deserialize, Serialize};

/// Bytes of `len` + `crc`.
pub const HEADER_BYTES: usize = 8;
/// Largest JSON body a record may carry; anything longer is corruption
/// (results are shrunk, and sample batches split, below a protocol frame
/// before they are spooled).
pub const MAX_BODY_BYTES: usize = outrider_protocol::MAX_MESSAGE_BYTES;

/// The `kind` of a samples body.
const SAMPLES_KIND: &str = "samples";

/// The samples' types are the protocol's (`protocol/src/samples.rs`): what
/// is spooled is exactly what is sent.
pub use outrider_protocol::{MetricSample, MetricTag as Tag, SampleBatch};

/// What one record carries; see the module docs for the encoding.
#[derive(Clone, Debug, PartialEq)]
pub enum Payload {
    /// A check result (spool version 1 encoding).
    Result(CheckResult),
    /// A batch of metric samples.
    Samples(SampleBatch),
}

/// Which [`Payload`] variant; a spool holds one kind only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Result,
    Samples,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Result => "check result",
            Kind::Samples => "metric samples",
        })
    }
}

impl Payload {
    /// The payload's sequence number.
    pub fn seq(&self) -> u64 {
        match self {
            Payload::Result(r) => r.seq,
            Payload::Samples(b) => b.seq,
        }
    }

    /// Replaces the sequence number.
    pub fn set_seq(&mut self, seq: u64) {
        match self {
            Payload::Result(r) => r.seq = seq,
            Payload::Samples(b) => b.seq = seq,
        }
    }

    /// Which variant this is.
    pub fn kind(&self) -> Kind {
        match self {
            Payload::Result(_) => Kind::Result,
            Payload::Samples(_) => Kind::Samples,
        }
    }

    /// The JSON body of the payload's record. Fails only for a sample
    /// whose value is not finite, which JSON cannot carry.
    pub fn to_body(&self) -> Result<Vec<u8>, String> {
        match self {
            Payload::Result(r) => serde_json::to_vec(r).map_err(|e| e.to_string()),
            Payload::Samples(b) => {
                if let Some(bad) = b.samples.iter().find(|s| !s.value.is_finite()) {
                    return Err(format!(
                        "metric sample {:?} has the value {}, which cannot be stored",
                        bad.name, bad.value
                    ));
                }
                #[derive(Serialize)]
                struct Tagged<'a> {
                    kind: &'static str,
                    #[serde(flatten)]
                    batch: &'a SampleBatch,
                }
                serde_json::to_vec(&Tagged {
                    kind: SAMPLES_KIND,
                    batch: b,
                })
                .map_err(|e| e.to_string())
            }
        }
    }

    /// Decodes a record body; the error names what is wrong with it.
    pub fn from_body(body: &[u8]) -> Result<Payload, String> {
        #[derive(Deserialize)]
        struct KindOnly {
            #[serde(default)]
            kind: Option<String>,
        }
        let kind = serde_json::from_slice::<KindOnly>(body)
            .map_err(|e| format!("undecodable record: {e}"))?
            .kind;
        match kind.as_deref() {
            None => serde_json::from_slice(body)
                .map(Payload::Result)
                .map_err(|e| format!("undecodable check result record: {e}")),
            Some(SAMPLES_KIND) => serde_json::from_slice(body)
                .map(Payload::Samples)
                .map_err(|e| format!("undecodable metric samples record: {e}")),
            Some(other) => Err(format!(
                "record kind {other:?} is unknown to this build (written by a newer one?)"
            )),
        }
    }
}

/// Encodes one record around a body.
pub fn encode(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + json.len());
    // Bodies are bounded by MAX_BODY_BYTES (1 MiB), far below u32::MAX.
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(json).to_le_bytes());
    out.extend_from_slice(json);
    out
}

/// Why the bytes at some offset are not a valid record.
#[derive(Debug, PartialEq, Eq)]
pub enum Bad {
    /// The data ends inside the record: a write torn by a crash.
    Truncated,
    /// The length field is out of range.
    Length(u32),
    /// The body does not match its checksum.
    Checksum,
}

impl std::fmt::Display for Bad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bad::Truncated => f.write_str("the last record is incomplete"),
            Bad::Length(n) => write!(f, "a record claims {n} bytes"),
            Bad::Checksum => f.write_str("a record fails its CRC-32 check"),
        }
    }
}

/// Reads the next record body from `reader` into `body`.
///
/// `Ok(None)` at a clean end of data, `Ok(Some(Err(bad)))` for a record that
/// is not valid, `Err` only for I/O errors.
pub fn read(reader: &mut impl Read, body: &mut Vec<u8>) -> io::Result<Option<Result<(), Bad>>> {
    let mut header = [0u8; HEADER_BYTES];
    let got = read_full(reader, &mut header)?;
    if got == 0 {
        return Ok(None);
    }
    if got < HEADER_BYTES {
        return Ok(Some(Err(Bad::Truncated)));
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 || len as usize > MAX_BODY_BYTES {
        return Ok(Some(Err(Bad::Length(len))));
    }
    body.clear();
    body.resize(len as usize, 0);
    if read_full(reader, body)? < body.len() {
        return Ok(Some(Err(Bad::Truncated)));
    }
    if crc32fast::hash(body) != crc {
        return Ok(Some(Err(Bad::Checksum)));
    }
    Ok(Some(Ok(())))
}

/// Fills `buf` as far as the data goes; returns how much was read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use outrider_protocol::CheckState;

    use super::*;

    fn check_result(seq: u64) -> CheckResult {
        CheckResult {
            seq,
            check: "c".into(),
            state: CheckState::Critical,
            summary: "s".into(),
            long_output: String::new(),
            perfdata: vec![],
            unknown_perfdata: Vec::new(),
            started_at_ms: 1,
            duration_ms: 2,
            update_event: None,
        }
    }

    fn samples(seq: u64) -> SampleBatch {
        SampleBatch {
            seq,
            samples: vec![
                MetricSample {
                    name: "app.requests".into(),
                    value: 12.5,
                    tags: vec![
                        Tag {
                            key: "env".into(),
                            value: "prod".into(),
                        },
                        Tag {
                            key: "env".into(),
                            value: "canary".into(),
                        },
                        Tag {
                            key: "beta".into(),
                            value: String::new(),
                        },
                    ],
                    kind: "timer".into(),
                    unit: "ms".into(),
                    timestamp_ms: 1_764_806_410_000,
                },
                MetricSample {
                    name: "app.up".into(),
                    value: -1e300,
                    tags: Vec::new(),
                    kind: String::new(),
                    unit: String::new(),
                    timestamp_ms: 0,
                },
            ],
        }
    }

    #[test]
    fn payloads_round_trip_and_results_keep_the_version_1_body() {
        for payload in [
            Payload::Result(check_result(7)),
            Payload::Samples(samples(9)),
            Payload::Samples(SampleBatch {
                seq: u64::MAX,
                samples: vec![],
            }),
        ] {
            let body = payload.to_body().unwrap();
            assert_eq!(Payload::from_body(&body).unwrap(), payload);
        }
        // A result's body is exactly what version 1 wrote: the bare
        // CheckResult, which an older build decodes.
        let body = Payload::Result(check_result(7)).to_body().unwrap();
        assert_eq!(body, serde_json::to_vec(&check_result(7)).unwrap());
        let body = Payload::Samples(samples(9)).to_body().unwrap();
        assert!(
            body.starts_with(br#"{"kind":"samples","seq":9,"#),
            "{body:?}"
        );
    }

    #[test]
    fn bad_bodies_are_named() {
        let table: &[(&[u8], &str)] = &[
            (b"not json", "undecodable record"),
            (b"[1,2]", "undecodable record"),
            (br#"{"kind":5,"seq":1}"#, "undecodable record"),
            (br#"{"seq":1,"check":"c"}"#, "undecodable check result record"),
            (br#"{"kind":"samples","seq":1}"#, "undecodable metric samples record"),
            (
                br#"{"kind":"samples","seq":1,"samples":[{"name":"a","value":null,"timestamp_ms":1}]}"#,
                "undecodable metric samples record",
            ),
            (br#"{"kind":"events","seq":1}"#, r#"record kind "events" is unknown"#),
        ];
        for (body, want) in table {
            let err = Payload::from_body(body).unwrap_err();
            assert!(
                err.contains(want),
                "{}: {err}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn non_finite_sample_values_are_refused_by_name() {
        for value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut batch = samples(1);
            batch.samples[1].value = value;
            let err = Payload::Samples(batch).to_body().unwrap_err();
            assert!(err.contains(r#""app.up""#), "{err}");
        }
    }

    fn read_all(bytes: &[u8]) -> Vec<Result<Vec<u8>, Bad>> {
        let mut r = bytes;
        let mut body = Vec::new();
        let mut out = Vec::new();
        while let Some(rec) = read(&mut r, &mut body).unwrap() {
            let stop = rec.is_err();
            out.push(rec.map(|()| body.clone()));
            if stop {
                break;
            }
        }
        out
    }

    #[test]
    fn round_trip_and_damage_is_named() {
        let mut bytes = encode(b"{\"a\":1}");
        bytes.extend(encode(b"[2]"));
        assert_eq!(
            read_all(&bytes),
            [Ok(b"{\"a\":1}".to_vec()), Ok(b"[2]".to_vec())]
        );
        assert_eq!(read_all(&bytes[..bytes.len() - 1])[1], Err(Bad::Truncated));
        assert_eq!(read_all(&bytes[..17])[1], Err(Bad::Truncated));
        let mut flipped = bytes.clone();
        flipped[10] ^= 1;
        assert_eq!(read_all(&flipped)[0], Err(Bad::Checksum));
        assert_eq!(read_all(&[0; 8])[0], Err(Bad::Length(0)));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

        /// Any sample batch with finite values survives encoding, framing
        /// and decoding unchanged.
        #[test]
        fn any_sample_batch_round_trips(
            seq in proptest::prelude::any::<u64>(),
            raw in proptest::collection::vec(
                (
                    ".{1,40}",
                    proptest::num::f64::NORMAL | proptest::num::f64::ZERO | proptest::num::f64::SUBNORMAL,
                    proptest::collection::vec((".{1,10}", ".{0,10}"), 0..4),
                    ".{0,8}",
                    proptest::prelude::any::<i64>(),
                ),
                0..20,
            ),
        ) {
            let payload = Payload::Samples(SampleBatch {
                seq,
                samples: raw
                    .into_iter()
                    .map(|(name, value, tags, kind, timestamp_ms)| MetricSample {
                        name,
                        tags: tags.into_iter().map(|(key, value)| Tag { key, value }).collect(),
                        value,
                        unit: kind.chars().rev().collect(),
                        kind,
                        timestamp_ms,
                    })
                    .collect(),
            });
            let framed = encode(&payload.to_body().unwrap());
            let mut body = Vec::new();
            let rec = read(&mut &framed[..], &mut body).unwrap();
            proptest::prop_assert_eq!(rec, Some(Ok(())));
            proptest::prop_assert_eq!(Payload::from_body(&body).unwrap(), payload);
        }
    }
}
