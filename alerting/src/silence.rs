//! Silences and maintenance windows: an operator mutes what matches, from
//! `starts_ms` to `ends_ms`, with an author and a comment.
//!
//! All matchers of a silence must match (Alertmanager semantics). A regex
//! matcher is anchored: it matches the whole value, as in Alertmanager, so
//! `web` does not silence `web-db`. A tag matcher matches when any of the
//! agent's tags matches. A silence never hides the resolve of something
//! already notified; that rule lives in `group.rs`, not here.
//!
//! `expire_on_resolve` (as Sensu's silences) ends the silence the first time
//! something it matches recovers: a silence for "until the fix is in".

use std::fmt;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::subject::Subject;

/// Most silences stored at once.
pub const MAX_SILENCES: usize = 10_000;
/// Most matchers in one silence.
pub const MAX_MATCHERS: usize = 32;
/// Longest matcher value or pattern, author or comment.
pub const MAX_TEXT_BYTES: usize = 1024;

/// What a matcher looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Field {
    /// The agent fingerprint (a site subject has none: never matches).
    Agent,
    /// The check name (only check subjects have one).
    Check,
    /// Any of the agent's tags, or a site subject's tag.
    Tag,
}

/// How a matcher compares.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Equal to this value.
    Equal(String),
    /// The whole value matches this regular expression.
    Regex(Pattern),
}

/// A compiled, anchored regular expression that serializes as its source.
#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Pattern {
    source: String,
    compiled: Regex,
}

impl Pattern {
    /// Compiles `source`, anchored at both ends.
    ///
    /// # Errors
    /// [`Error::BadRegex`] when it does not compile (or is too large).
    pub fn new(source: &str) -> Result<Pattern, Error> {
        if source.len() > MAX_TEXT_BYTES {
            return Err(Error::InvalidSilence {
                reason: format!("a pattern is longer than {MAX_TEXT_BYTES} bytes"),
            });
        }
        let compiled = regex::RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(1 << 20)
            .build()
            .map_err(|e| Error::BadRegex {
                pattern: source.to_owned(),
                source: Box::new(e),
            })?;
        Ok(Pattern {
            source: source.to_owned(),
            compiled,
        })
    }

    fn is_match(&self, value: &str) -> bool {
        self.compiled.is_match(value)
    }
}

impl TryFrom<String> for Pattern {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        Pattern::new(&s)
    }
}

impl From<Pattern> for String {
    fn from(p: Pattern) -> String {
        p.source
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}/", self.source)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl PartialEq for Op {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Op::Equal(a), Op::Equal(b)) => a == b,
            (Op::Regex(a), Op::Regex(b)) => a == b,
            _ => false,
        }
    }
}

/// One condition of a silence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Matcher {
    /// What it looks at.
    pub field: Field,
    /// How it compares.
    pub op: Op,
}

impl Matcher {
    fn matches_value(&self, value: &str) -> bool {
        match &self.op {
            Op::Equal(v) => v == value,
            Op::Regex(p) => p.is_match(value),
        }
    }

    fn matches(&self, subject: &Subject, tags: &[String]) -> bool {
        match self.field {
            Field::Agent => subject.agent().is_some_and(|a| self.matches_value(a)),
            Field::Check => subject.check().is_some_and(|c| self.matches_value(c)),
            Field::Tag => match subject {
                Subject::Site { tag } => self.matches_value(tag),
                _ => tags.iter().any(|t| self.matches_value(t)),
            },
        }
    }
}

/// A silence as an operator asks for it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilenceSpec {
    /// All must match; at least one.
    pub matchers: Vec<Matcher>,
    /// Active from (inclusive), Unix ms.
    pub starts_ms: u64,
    /// Active until (exclusive), Unix ms.
    pub ends_ms: u64,
    /// Who asked.
    pub author: String,
    /// Why (a ticket, "maintenance of the db cluster").
    pub comment: String,
    /// End the silence when something it matches recovers.
    #[serde(default)]
    pub expire_on_resolve: bool,
}

impl SilenceSpec {
    /// Checks the spec an operator gave.
    ///
    /// # Errors
    /// [`Error::InvalidSilence`] naming what is wrong.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |reason: String| Err(Error::InvalidSilence { reason });
        if self.matchers.is_empty() {
            return bad(
                "a silence needs at least one matcher (it would silence everything)".into(),
            );
        }
        if self.matchers.len() > MAX_MATCHERS {
            return bad(format!("more than {MAX_MATCHERS} matchers"));
        }
        if self.ends_ms <= self.starts_ms {
            return bad(format!(
                "it ends ({}) at or before it starts ({})",
                self.ends_ms, self.starts_ms
            ));
        }
        if self.author.trim().is_empty() {
            return bad("the author is empty; say who silences this".into());
        }
        let long = self.author.len() > MAX_TEXT_BYTES
            || self.comment.len() > MAX_TEXT_BYTES
            || self
                .matchers
                .iter()
                .any(|m| matches!(&m.op, Op::Equal(v) if v.len() > MAX_TEXT_BYTES));
        if long {
            return bad(format!("a value is longer than {MAX_TEXT_BYTES} bytes"));
        }
        Ok(())
    }
}

/// A stored silence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    /// Its id, unique for the life of the engine state.
    pub id: u64,
    /// What was asked; `ends_ms` moves earlier when it is expired.
    pub spec: SilenceSpec,
}

impl Silence {
    /// Whether it is in force at `now_ms`.
    pub fn is_active(&self, now_ms: u64) -> bool {
        self.spec.starts_ms <= now_ms && now_ms < self.spec.ends_ms
    }

    /// Whether every matcher matches `subject` (whose agent has `tags`).
    pub fn matches(&self, subject: &Subject, tags: &[String]) -> bool {
        self.spec.matchers.iter().all(|m| m.matches(subject, tags))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eq(field: Field, v: &str) -> Matcher {
        Matcher {
            field,
            op: Op::Equal(v.into()),
        }
    }

    fn re(field: Field, p: &str) -> Matcher {
        Matcher {
            field,
            op: Op::Regex(Pattern::new(p).unwrap()),
        }
    }

    fn silence(matchers: Vec<Matcher>) -> Silence {
        Silence {
            id: 1,
            spec: SilenceSpec {
                matchers,
                starts_ms: 100,
                ends_ms: 200,
                author: "ops".into(),
                comment: "db maintenance".into(),
                expire_on_resolve: false,
            },
        }
    }

    #[test]
    fn matcher_table() {
        let check = Subject::Check {
            agent: "web-1".into(),
            name: "disk".into(),
        };
        let agent = Subject::Agent {
            agent: "web-1".into(),
        };
        let site = Subject::Site {
            tag: "paris".into(),
        };
        let tags = vec!["paris".to_string(), "prod".to_string()];
        let table: Vec<(&str, Vec<Matcher>, &Subject, bool)> = vec![
            ("agent equal", vec![eq(Field::Agent, "web-1")], &check, true),
            (
                "agent differs",
                vec![eq(Field::Agent, "web-2")],
                &check,
                false,
            ),
            ("check equal", vec![eq(Field::Check, "disk")], &check, true),
            (
                "check matcher never matches an agent",
                vec![eq(Field::Check, "disk")],
                &agent,
                false,
            ),
            (
                "regex is anchored",
                vec![re(Field::Agent, "web")],
                &check,
                false,
            ),
            (
                "regex whole value",
                vec![re(Field::Agent, "web-\\d+")],
                &check,
                true,
            ),
            ("any tag", vec![eq(Field::Tag, "prod")], &agent, true),
            ("tag regex", vec![re(Field::Tag, "par.*")], &check, true),
            ("site tag", vec![eq(Field::Tag, "paris")], &site, true),
            (
                "agent matcher never matches a site",
                vec![re(Field::Agent, ".*")],
                &site,
                false,
            ),
            (
                "all must match",
                vec![eq(Field::Agent, "web-1"), eq(Field::Check, "load")],
                &check,
                false,
            ),
        ];
        for (name, matchers, subject, want) in table {
            assert_eq!(silence(matchers).matches(subject, &tags), want, "{name}");
        }
    }

    #[test]
    fn active_window_is_start_inclusive_end_exclusive() {
        let s = silence(vec![eq(Field::Agent, "a")]);
        assert!(!s.is_active(99));
        assert!(s.is_active(100));
        assert!(s.is_active(199));
        assert!(!s.is_active(200));
    }

    #[test]
    fn bad_input_gets_a_typed_error() {
        assert!(matches!(Pattern::new("web-("), Err(Error::BadRegex { .. })));
        let mut spec = silence(vec![]).spec;
        assert!(matches!(spec.validate(), Err(Error::InvalidSilence { .. })));
        spec.matchers.push(eq(Field::Agent, "a"));
        spec.validate().unwrap();
        spec.ends_ms = spec.starts_ms;
        assert!(matches!(spec.validate(), Err(Error::InvalidSilence { .. })));
        spec.ends_ms = spec.starts_ms + 1;
        spec.author = " ".into();
        assert!(matches!(spec.validate(), Err(Error::InvalidSilence { .. })));
    }

    #[test]
    fn patterns_round_trip_as_their_source_and_bad_ones_fail_to_load() {
        let m = re(Field::Check, "disk|load");
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, r#"{"field":"check","op":{"regex":"disk|load"}}"#);
        let back: Matcher = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
        assert!(
            serde_json::from_str::<Matcher>(r#"{"field":"check","op":{"regex":"("}}"#).is_err()
        );
    }
}
