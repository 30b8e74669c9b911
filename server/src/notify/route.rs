//! Which receivers get an outbox row: a pure decision over plain data,
//! tested by table below; `store/notify.rs` runs it inside the routing
//! transaction.
//!
//! Rules, in order:
//! 1. A receiver already told about one of the row's incidents gets it:
//!    repeats, flapping news and the resolve follow the first notification
//!    (a resolve's severity is `ok`, which a `critical` route would miss —
//!    an orphaned PagerDuty incident).
//! 2. A receiver without routes gets everything: adding a receiver is the
//!    only configuration an operator must do.
//! 3. Otherwise it gets the row when one of its routes matches: every tag of
//!    the route is among the group's tags, and the route's severities are
//!    empty or include the row's severity.

use std::collections::BTreeSet;

/// One route of a receiver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteRule {
    /// All must be among the group's tags.
    pub tags: Vec<String>,
    /// Any may match the row's severity; empty matches every severity.
    pub severities: Vec<String>,
}

impl RouteRule {
    fn matches(&self, tags: &[String], severity: &str) -> bool {
        self.tags.iter().all(|t| tags.contains(t))
            && (self.severities.is_empty() || self.severities.iter().any(|s| s == severity))
    }
}

/// A receiver and its routes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiverRoutes {
    pub name: String,
    pub routes: Vec<RouteRule>,
}

/// The receivers (in the order given) that get a row with these `tags` and
/// `severity`; `told` holds the receivers already told about one of its
/// incidents.
pub fn select(
    receivers: &[ReceiverRoutes],
    tags: &[String],
    severity: &str,
    told: &BTreeSet<String>,
) -> Vec<String> {
    receivers
        .iter()
        .filter(|r| {
            told.contains(&r.name)
                || r.routes.is_empty()
                || r.routes.iter().any(|rule| rule.matches(tags, severity))
        })
        .map(|r| r.name.clone())
        .collect()
}

/// The incident keys of a batch key (`<incident>#<seq>` joined by spaces).
pub fn incidents_of(batch_key: &str) -> Vec<&str> {
    batch_key
        .split(' ')
        .filter(|part| !part.is_empty())
        .map(|part| part.rsplit_once('#').map_or(part, |(incident, _)| incident))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(tags: &[&str], severities: &[&str]) -> RouteRule {
        RouteRule {
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            severities: severities.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn receiver(name: &str, routes: Vec<RouteRule>) -> ReceiverRoutes {
        ReceiverRoutes {
            name: name.to_owned(),
            routes,
        }
    }

    #[test]
    fn routes_select_by_tags_and_severity_by_table() {
        let receivers = vec![
            receiver("all", vec![]),
            receiver("db-pager", vec![rule(&["db", "prod"], &["critical"])]),
            receiver("web", vec![rule(&["web"], &[])]),
            receiver(
                "either",
                vec![rule(&["db"], &["warning"]), rule(&[], &["unknown"])],
            ),
        ];
        // (group tags, severity, receivers told before, expected)
        type Row<'a> = (&'a [&'a str], &'a str, &'a [&'a str], &'a [&'a str]);
        let table: &[Row] = &[
            (&[], "critical", &[], &["all"]),
            (&["db", "prod"], "critical", &[], &["all", "db-pager"]),
            (&["db"], "critical", &[], &["all"]),
            (&["db", "prod"], "warning", &[], &["all", "either"]),
            (&["web", "eu"], "ok", &[], &["all", "web"]),
            (&["x"], "unknown", &[], &["all", "either"]),
            // The resolve (`ok`) follows the trigger to the pager.
            (&["db", "prod"], "ok", &["db-pager"], &["all", "db-pager"]),
            (&["db", "prod"], "ok", &[], &["all"]),
        ];
        for (tags, severity, told, expected) in table {
            let tags: Vec<String> = tags.iter().map(|t| (*t).to_owned()).collect();
            let told: BTreeSet<String> = told.iter().map(|t| (*t).to_owned()).collect();
            assert_eq!(
                select(&receivers, &tags, severity, &told),
                expected.to_vec(),
                "tags {tags:?} severity {severity} told {told:?}"
            );
        }
    }

    #[test]
    fn no_receivers_select_nobody() {
        assert!(select(&[], &[], "critical", &BTreeSet::new()).is_empty());
    }

    #[test]
    fn incidents_come_from_the_batch_key() {
        assert_eq!(
            incidents_of("agent/ab@100#1 check/ab/disk@90#3"),
            vec!["agent/ab@100", "check/ab/disk@90"]
        );
    }
}
