//! Graphite plaintext lines: what each good line parses to, and the exact
//! error of each bad one.

use outrider_local_metrics::ParseError;
use outrider_local_metrics::graphite::{
    MAX_LINE_BYTES, MAX_PATH_BYTES, MAX_TAG_BYTES, MAX_TAGS, Timestamp, parse_line, parse_lines,
};

/// A good line and what it parses to: name, tags, value, timestamp.
type Good<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, f64, Timestamp);

#[test]
fn good_lines() {
    use Timestamp::*;
    let cases: Vec<Good<'_>> = vec![
        (
            "a.b.c 1 1733300000",
            "a.b.c",
            vec![],
            1.0,
            UnixMs(1_733_300_000_000),
        ),
        (
            "a.b.c 1 1733300000\r",
            "a.b.c",
            vec![],
            1.0,
            UnixMs(1_733_300_000_000),
        ),
        (
            "  a.b.c\t-2.5   1733300000.5  ",
            "a.b.c",
            vec![],
            -2.5,
            UnixMs(1_733_300_000_500),
        ),
        ("a 1e3 -1", "a", vec![], 1000.0, Now),
        ("a 42", "a", vec![], 42.0, Now),
        ("a 0 0", "a", vec![], 0.0, UnixMs(0)),
        (
            "disk.used;host=web01;mount=/var 12.5 1733300000",
            "disk.used",
            vec![("host", "web01"), ("mount", "/var")],
            12.5,
            UnixMs(1_733_300_000_000),
        ),
        // Values may contain `=` and `~` after the first character.
        (
            "m;q=a=b;t=x~ 1",
            "m",
            vec![("q", "a=b"), ("t", "x~")],
            1.0,
            Now,
        ),
        // A repeated tag is kept twice here; the aggregator keeps the last.
        ("m;a=1;a=2 1", "m", vec![("a", "1"), ("a", "2")], 1.0, Now),
        // Names may hold characters carbon would escape into file names.
        ("a-b_c:d/e 1", "a-b_c:d/e", vec![], 1.0, Now),
    ];
    for (text, name, tags, value, timestamp) in cases {
        let line = parse_line(text.as_bytes()).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(line.name, name, "{text}");
        assert_eq!(line.tags().collect::<Vec<_>>(), tags, "{text}");
        assert_eq!(line.value, value, "{text}");
        assert_eq!(line.timestamp, timestamp, "{text}");
    }
}

#[test]
fn bad_lines_name_what_is_wrong() {
    use ParseError::*;
    let s = |t: &str| t.to_owned();
    let long_path = format!("{} 1", "p".repeat(MAX_PATH_BYTES + 1));
    let long_tag = format!("m;t={} 1", "v".repeat(MAX_TAG_BYTES));
    let many_tags = format!("m{} 1", ";t=v".repeat(MAX_TAGS + 1));
    let long_line = format!("m 1 {}", "1".repeat(MAX_LINE_BYTES));
    let cases: Vec<(&[u8], ParseError)> = vec![
        (b"", WrongFieldCount { found: 0 }),
        (b"   ", WrongFieldCount { found: 0 }),
        (b"a.b.c", WrongFieldCount { found: 1 }),
        (b"a.b.c 1 2 3", WrongFieldCount { found: 4 }),
        (b"a b c d e", WrongFieldCount { found: 5 }),
        (b"a.b.c one 1733300000", InvalidValue { found: s("one") }),
        (b"a.b.c nan 1733300000", NotANumber),
        (b"a.b.c NaN 1733300000", NotANumber),
        (b"a.b.c inf 1733300000", NonFiniteValue { found: s("inf") }),
        (b"a.b.c -inf", NonFiniteValue { found: s("-inf") }),
        (
            b"a.b.c 1 yesterday",
            InvalidTimestamp {
                found: s("yesterday"),
            },
        ),
        (b"a.b.c 1 -2", InvalidTimestamp { found: s("-2") }),
        (
            b"a.b.c 1 253402300800",
            InvalidTimestamp {
                found: s("253402300800"),
            },
        ),
        (b"a.b.c 1 nan", InvalidTimestamp { found: s("nan") }),
        (b";a=b 1", EmptyName),
        (
            b"a\x01b 1",
            InvalidNameChar {
                name: s("a\x01b"),
                ch: '\x01',
            },
        ),
        (b"m; 1", TagWithoutValue { tag: s("") }),
        (b"m;tag 1", TagWithoutValue { tag: s("tag") }),
        (b"m;a=b;; 1", TagWithoutValue { tag: s("") }),
        (b"m;=v 1", EmptyTag { tag: s("=v") }),
        (b"m;k= 1", EmptyTag { tag: s("k=") }),
        (b"m;name=x 1", ReservedTagName),
        (
            b"m;a!b=v 1",
            InvalidTagChar {
                tag: s("a!b=v"),
                ch: '!',
            },
        ),
        (
            b"m;a^b=v 1",
            InvalidTagChar {
                tag: s("a^b=v"),
                ch: '^',
            },
        ),
        (
            b"m;k=~v 1",
            InvalidTagChar {
                tag: s("k=~v"),
                ch: '~',
            },
        ),
        (
            b"m;k=v\x7f 1",
            InvalidTagChar {
                tag: s("k=v\x7f"),
                ch: '\x7f',
            },
        ),
        (b"m\xff 1", NotUtf8 { valid_up_to: 1 }),
        (
            long_path.as_bytes(),
            NameTooLong {
                len: MAX_PATH_BYTES + 1,
                limit: MAX_PATH_BYTES,
            },
        ),
        (
            long_tag.as_bytes(),
            TagTooLong {
                len: MAX_TAG_BYTES + 2,
                limit: MAX_TAG_BYTES,
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
    }
}

#[test]
fn invalid_lines_are_skipped_and_the_rest_parsed() {
    let chunk = b"a 1 10\r\nnot-a-metric line\r\n\r\nb nan 10\nc 3 10\n";
    let results: Vec<_> = parse_lines(chunk).map(|r| r.map(|l| l.name)).collect();
    assert_eq!(
        results,
        vec![
            Ok("a"),
            Err(ParseError::InvalidValue {
                found: "line".into()
            }),
            Err(ParseError::NotANumber),
            Ok("c"),
        ]
    );
}
