//! StatsD and DogStatsD lines: what each good line parses to, and the
//! exact error of each bad one.

use outrider_local_metrics::ParseError;
use outrider_local_metrics::statsd::{
    MAX_LINE_BYTES, MAX_NAME_BYTES, MAX_TAG_BYTES, MAX_TAGS, MAX_VALUES_PER_LINE, MetricType,
    Value, parse_datagram, parse_line,
};

/// What a good line must parse to.
struct Want<'a> {
    line: &'a str,
    name: &'a str,
    metric_type: MetricType,
    values: Vec<Value<'a>>,
    rate: f64,
    tags: Vec<(&'a str, &'a str)>,
    container: Option<&'a str>,
    timestamp: Option<i64>,
}

fn want<'a>(line: &'a str, name: &'a str, t: MetricType, values: Vec<Value<'a>>) -> Want<'a> {
    Want {
        line,
        name,
        metric_type: t,
        values,
        rate: 1.0,
        tags: vec![],
        container: None,
        timestamp: None,
    }
}

#[test]
fn good_lines() {
    use MetricType::*;
    use Value::*;
    let cases = vec![
        want("hits:1|c", "hits", Counter, vec![Number(1.0)]),
        want("hits:1|c\r", "hits", Counter, vec![Number(1.0)]),
        Want {
            rate: 0.1,
            ..want("hits:3|c|@0.1", "hits", Counter, vec![Number(3.0)])
        },
        want("a.b-c_d:-2.5|c", "a.b-c_d", Counter, vec![Number(-2.5)]),
        want("temp:21.5|g", "temp", Gauge, vec![Number(21.5)]),
        want("temp:+3|g", "temp", Gauge, vec![Delta(3.0)]),
        want("temp:-3|g", "temp", Gauge, vec![Delta(-3.0)]),
        want("rt:320|ms", "rt", Timer, vec![Number(320.0)]),
        want("rt:1e3|ms", "rt", Timer, vec![Number(1000.0)]),
        want("size:.5|h", "size", Histogram, vec![Number(0.5)]),
        want("size:7|d", "size", Distribution, vec![Number(7.0)]),
        want("users:alice|s", "users", Set, vec![Member("alice")]),
        want("users:4711|s", "users", Set, vec![Member("4711")]),
        // DogStatsD 1.1 packed values.
        want(
            "rt:1:2:3|h",
            "rt",
            Histogram,
            vec![Number(1.0), Number(2.0), Number(3.0)],
        ),
        want(
            "u:a:b:a|s",
            "u",
            Set,
            vec![Member("a"), Member("b"), Member("a")],
        ),
        Want {
            tags: vec![("env", "prod"), ("canary", ""), ("url", "http://x:1/")],
            ..want(
                "page.views:1|c|#env:prod,canary,url:http://x:1/",
                "page.views",
                Counter,
                vec![Number(1.0)],
            )
        },
        Want {
            rate: 0.5,
            tags: vec![("a", "b")],
            ..want("x:1|ms|#a:b|@0.5", "x", Timer, vec![Number(1.0)])
        },
        Want {
            tags: vec![("a", "b")],
            container: Some("83c0a99c0a54c0c187f461c7980e9b57f3f6a8b0c918c8d93df19a9de6f3fe1d"),
            timestamp: Some(1_656_581_400),
            ..want(
                "x:1|g|#a:b|c:83c0a99c0a54c0c187f461c7980e9b57f3f6a8b0c918c8d93df19a9de6f3fe1d|T1656581400",
                "x",
                Gauge,
                vec![Number(1.0)],
            )
        },
        // `#` without tags; an unknown field of a later version is skipped.
        want("x:1|c|#", "x", Counter, vec![Number(1.0)]),
        want("x:1|c|e:it-false,cn-nginx", "x", Counter, vec![Number(1.0)]),
        want("x:1|c|card:high", "x", Counter, vec![Number(1.0)]),
        // Names may carry Graphite-style tags and non-ASCII letters.
        want("db;env=prod:1|c", "db;env=prod", Counter, vec![Number(1.0)]),
        want("température:1|g", "température", Gauge, vec![Number(1.0)]),
    ];
    for w in cases {
        let line = parse_line(w.line.as_bytes()).unwrap_or_else(|e| panic!("{}: {e}", w.line));
        assert_eq!(line.name, w.name, "{}", w.line);
        assert_eq!(line.metric_type, w.metric_type, "{}", w.line);
        assert_eq!(line.values().collect::<Vec<_>>(), w.values, "{}", w.line);
        assert_eq!(line.sample_rate, w.rate, "{}", w.line);
        assert_eq!(line.tags().collect::<Vec<_>>(), w.tags, "{}", w.line);
        assert_eq!(line.container_id, w.container, "{}", w.line);
        assert_eq!(line.timestamp_secs, w.timestamp, "{}", w.line);
    }
}

#[test]
fn bad_lines_name_what_is_wrong() {
    use ParseError::*;
    let s = |t: &str| t.to_owned();
    let long_name = "n".repeat(MAX_NAME_BYTES + 1);
    let long_tag = "t".repeat(MAX_TAG_BYTES + 1);
    let many_values = format!("x{}|c", ":1".repeat(MAX_VALUES_PER_LINE + 1));
    let ok_values = format!("x{}|c", ":1".repeat(MAX_VALUES_PER_LINE));
    let many_tags = format!("x:1|c|#{}", vec!["t"; MAX_TAGS + 1].join(","));
    let long_line = format!("x:1|c|#{}", "a".repeat(MAX_LINE_BYTES));
    let cases: Vec<(&[u8], ParseError)> = vec![
        (b"hits", MissingValue { name: s("hits") }),
        (b"hits|c", MissingValue { name: s("hits") }),
        (b"hits:1", MissingType { line: s("hits:1") }),
        (b":1|c", EmptyName),
        (b"hits:1|", UnknownType { found: s("") }),
        (b"hits:1|x", UnknownType { found: s("x") }),
        (b"hits:1|C", UnknownType { found: s("C") }),
        (b"hits:1|msx", UnknownType { found: s("msx") }),
        // The old etsy multi-type form; DogStatsD packing took its syntax.
        (b"glork:320|ms:2|c", UnknownType { found: s("ms:2") }),
        (b"hits:|c", EmptyValue),
        (b"hits:1::2|c", EmptyValue),
        (b"hits:1:|c", EmptyValue),
        (b"u:|s", EmptyValue),
        (b"hits:abc|c", InvalidValue { found: s("abc") }),
        (b"hits:1,5|c", InvalidValue { found: s("1,5") }),
        (b"hits:0x10|c", InvalidValue { found: s("0x10") }),
        (b"hits:inf|c", NonFiniteValue { found: s("inf") }),
        (b"temp:NaN|g", NonFiniteValue { found: s("NaN") }),
        (b"hits:1e999|c", NonFiniteValue { found: s("1e999") }),
        (b"hits:1|c|@0", InvalidSampleRate { found: s("0") }),
        (b"hits:1|c|@1.5", InvalidSampleRate { found: s("1.5") }),
        (b"hits:1|c|@-0.5", InvalidSampleRate { found: s("-0.5") }),
        (b"hits:1|c|@", InvalidSampleRate { found: s("") }),
        (b"hits:1|c|@nan", InvalidSampleRate { found: s("nan") }),
        (b"hits:1|c|@0.5|@0.5", DuplicateField { field: "@" }),
        (b"hits:1|c|#a|#b", DuplicateField { field: "#" }),
        (b"hits:1|c|c:a|c:b", DuplicateField { field: "c:" }),
        (b"hits:1|c|T1|T2", DuplicateField { field: "T" }),
        (b"hits:1|c||#a", EmptyField),
        (b"hits:1|c|", EmptyField),
        (b"hits:1|c|#a,,b", EmptyTag { tag: s("") }),
        (b"hits:1|c|#a,", EmptyTag { tag: s("") }),
        (b"hits:1|c|#:v", EmptyTag { tag: s(":v") }),
        (b"hits:1|c|c:", EmptyContainerId),
        (b"hits:1|c|T", InvalidTimestamp { found: s("") }),
        (b"hits:1|c|T-5", InvalidTimestamp { found: s("-5") }),
        (b"hits:1|c|T1.5", InvalidTimestamp { found: s("1.5") }),
        (
            b"hits:1|c|T999999999999",
            InvalidTimestamp {
                found: s("999999999999"),
            },
        ),
        (
            b"my hits:1|c",
            InvalidNameChar {
                name: s("my hits"),
                ch: ' ',
            },
        ),
        (
            b"hi\ts:1|c",
            InvalidNameChar {
                name: s("hi\ts"),
                ch: '\t',
            },
        ),
        (
            b"hi\0s:1|c",
            InvalidNameChar {
                name: s("hi\0s"),
                ch: '\0',
            },
        ),
        (
            b"x:1|c|#a\x01",
            InvalidTagChar {
                tag: s("a\x01"),
                ch: '\x01',
            },
        ),
        (
            b"u:a\x1bb|s",
            InvalidMemberChar {
                member: s("a\x1bb"),
                ch: '\x1b',
            },
        ),
        (b"\xffx:1|c", NotUtf8 { valid_up_to: 0 }),
        (b"x:1|c|#\xc3", NotUtf8 { valid_up_to: 7 }),
        (b"_e{5,4}:title|text|#a", Unsupported { what: "events" }),
        (
            b"_sc|my.check|0|#a",
            Unsupported {
                what: "service checks",
            },
        ),
        (
            long_name.as_bytes(),
            MissingValue {
                name: "n".repeat(64),
            },
        ),
        (
            format!("{long_name}:1|c").leak().as_bytes(),
            NameTooLong {
                len: MAX_NAME_BYTES + 1,
                limit: MAX_NAME_BYTES,
            },
        ),
        (
            format!("x:1|c|#{long_tag}").leak().as_bytes(),
            TagTooLong {
                len: MAX_TAG_BYTES + 1,
                limit: MAX_TAG_BYTES,
            },
        ),
        (
            many_values.as_bytes(),
            TooManyValues {
                limit: MAX_VALUES_PER_LINE,
            },
        ),
        (many_tags.as_bytes(), TooManyTags { limit: MAX_TAGS }),
        (
            long_line.as_bytes(),
            LineTooLong {
                len: long_line.len(),
                limit: MAX_LINE_BYTES,
            },
        ),
    ];
    for (line, want) in cases {
        let got = parse_line(line).expect_err(&String::from_utf8_lossy(line));
        assert_eq!(got, want, "{}", String::from_utf8_lossy(line));
        assert!(!got.to_string().is_empty());
    }
    assert_eq!(
        parse_line(ok_values.as_bytes()).unwrap().value_count(),
        MAX_VALUES_PER_LINE
    );
}

#[test]
fn one_bad_line_does_not_poison_its_datagram() {
    let datagram = b"a:1|c\nbroken\r\nb:2|g\n\nc:x|ms\r\nd:3|ms\n";
    let results: Vec<_> = parse_datagram(datagram).collect();
    let names: Vec<_> = results.iter().map(|r| r.as_ref().map(|l| l.name)).collect();
    assert_eq!(
        names,
        vec![
            Ok("a"),
            Err(&ParseError::MissingValue {
                name: "broken".into()
            }),
            Ok("b"),
            Err(&ParseError::InvalidValue { found: "x".into() }),
            Ok("d"),
        ]
    );
}

#[test]
fn errors_read_as_one_sentence_naming_the_input() {
    let cases: [(&[u8], &str); 4] = [
        (
            b"hits:1|x",
            "unknown metric type \"x\" (expected c, g, ms, h, d or s)",
        ),
        (
            b"hits:1|c|@2",
            "sample rate \"2\" is not a number in (0, 1]",
        ),
        (b"hits", "no ':' and value after the name \"hits\""),
        (b"_e{1,1}:a|b", "DogStatsD events are not supported"),
    ];
    for (line, want) in cases {
        assert_eq!(parse_line(line).unwrap_err().to_string(), want);
    }
}
