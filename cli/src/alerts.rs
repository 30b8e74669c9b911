//! `outrider alerts` (open problems, muted ones and why; the history of
//! decided notifications) and `outrider silences add|list|expire`.
//!
//! Silence matchers: `--agent`, `--check` and `--tag` each take a value to
//! match exactly, or `~regex` to match the whole value against a regular
//! expression (`--check '~disk.*'`); all given must match. Times: `now`,
//! `+<duration>` from now (`+30m`), or Unix milliseconds.

use anyhow::Result;
use outrider_alerting::MuteReason;
use outrider_alerting::api::{HistoryEntry, OpenAlert, SilenceInfo};
use outrider_alerting::silence::{Field, Matcher, Op, Pattern, SilenceSpec};
use serde_json::Value;

use crate::client::ApiClient;
use crate::duration::parse_secs;
use crate::output::{Align, Table, ago, now_ms, print_json};
use crate::{GlobalArgs, UsageError};

/// Default length of a silence without `--end` or `--duration`.
const DEFAULT_SILENCE_SECS: u64 = 2 * 3600;

/// Arguments of `outrider alerts`.
#[derive(Debug, clap::Args)]
pub struct AlertsArgs {
    #[command(subcommand)]
    command: Option<AlertsCommand>,
}

#[derive(Debug, clap::Subcommand)]
enum AlertsCommand {
    /// Open problems and flapping subjects, and why muted ones are muted (the default).
    List,
    /// Notifications decided, newest first.
    History {
        /// Rows at most (1-1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

/// Arguments of `outrider silences`.
#[derive(Debug, clap::Args)]
pub struct SilencesArgs {
    #[command(subcommand)]
    command: Option<SilencesCommand>,
}

#[derive(Debug, clap::Subcommand)]
enum SilencesCommand {
    /// Every silence: active, future and recently ended (the default).
    List,
    /// Silence what matches every matcher given, from --start to --end.
    Add {
        /// Agent fingerprint, or `~regex`.
        #[arg(long)]
        agent: Vec<String>,
        /// Check name, or `~regex`.
        #[arg(long)]
        check: Vec<String>,
        /// A tag of the agent (or a site's tag), or `~regex`.
        #[arg(long)]
        tag: Vec<String>,
        /// When it starts: `now`, `+<duration>`, or Unix ms.
        #[arg(long, default_value = "now")]
        start: String,
        /// When it ends: `+<duration>` or Unix ms (default: 2 hours after the start).
        #[arg(long, conflicts_with = "duration")]
        end: Option<String>,
        /// How long it lasts from its start (`90m`, `2h`, `1d`).
        #[arg(long)]
        duration: Option<String>,
        /// Who silences (default: $USER).
        #[arg(long)]
        author: Option<String>,
        /// Why: a ticket, "maintenance of db-1".
        #[arg(long)]
        comment: String,
        /// End the silence when something it matches recovers.
        #[arg(long)]
        expire_on_resolve: bool,
    },
    /// End a silence now.
    Expire {
        /// Its id (from `outrider silences list`).
        id: u64,
    },
}

/// Runs `outrider alerts …`.
pub fn run_alerts(client: &ApiClient, global: &GlobalArgs, args: AlertsArgs) -> Result<()> {
    match args.command.unwrap_or(AlertsCommand::List) {
        AlertsCommand::List => {
            let open: Vec<OpenAlert> = client.get_json("/api/v1/alerts")?;
            if global.json {
                return print_json(&open);
            }
            if open.is_empty() {
                println!("no open alerts");
                return Ok(());
            }
            let mut table = Table::new(&[("ALERT", Align::Left), ("MUTED", Align::Left)]);
            for a in open {
                table.row(vec![a.key, a.muted.as_ref().map(why).unwrap_or_default()]);
            }
            table.print();
            Ok(())
        }
        AlertsCommand::History { limit } => {
            let rows: Vec<HistoryEntry> =
                client.get_json(&format!("/api/v1/alerts/history?limit={limit}"))?;
            if global.json {
                return print_json(&rows);
            }
            if rows.is_empty() {
                println!("no notifications yet");
                return Ok(());
            }
            let mut table = Table::new(&[
                ("DECIDED", Align::Left),
                ("GROUP", Align::Left),
                ("SEVERITY", Align::Left),
                ("ROUTED", Align::Left),
                ("NOTIFICATION", Align::Left),
            ]);
            for r in rows {
                let titles: Vec<&str> = r.notifications.iter().map(|n| n.title.as_str()).collect();
                table.row(vec![
                    ago(r.created_at_ms),
                    r.group_key,
                    r.severity,
                    r.routed_at_ms.map(ago).unwrap_or_else(|| "waiting".into()),
                    titles.join("; "),
                ]);
            }
            table.print();
            Ok(())
        }
    }
}

/// Why a problem is muted, for a person.
fn why(reason: &MuteReason) -> String {
    match reason {
        MuteReason::AgentDown { agent } => format!("agent {agent} has no session"),
        MuteReason::SiteOutage { tag } => format!("part of the site outage of {tag}"),
        MuteReason::Silenced { id } => format!("silence {id}"),
        MuteReason::Flapping => "flapping".into(),
        other => format!("{other:?}"),
    }
}

/// Runs `outrider silences …`.
pub fn run_silences(client: &ApiClient, global: &GlobalArgs, args: SilencesArgs) -> Result<()> {
    match args.command.unwrap_or(SilencesCommand::List) {
        SilencesCommand::List => {
            let list: Vec<SilenceInfo> = client.get_json("/api/v1/silences")?;
            if global.json {
                return print_json(&list);
            }
            if list.is_empty() {
                println!("no silences");
                return Ok(());
            }
            let mut table = Table::new(&[
                ("ID", Align::Right),
                ("STATUS", Align::Left),
                ("MATCHERS", Align::Left),
                ("ENDS", Align::Left),
                ("AUTHOR", Align::Left),
                ("COMMENT", Align::Left),
            ]);
            let now = now_ms();
            for s in list {
                let status = if s.active {
                    "active"
                } else if (s.spec.starts_ms as i64) > now {
                    "pending"
                } else {
                    "ended"
                };
                table.row(vec![
                    s.id.to_string(),
                    status.into(),
                    matchers_text(&s.spec.matchers),
                    when(s.spec.ends_ms as i64, now),
                    s.spec.author,
                    s.spec.comment,
                ]);
            }
            table.print();
            Ok(())
        }
        SilencesCommand::Add {
            agent,
            check,
            tag,
            start,
            end,
            duration,
            author,
            comment,
            expire_on_resolve,
        } => {
            let now = now_ms().max(0) as u64;
            let mut matchers = Vec::new();
            for (field, values) in [
                (Field::Agent, agent),
                (Field::Check, check),
                (Field::Tag, tag),
            ] {
                for v in values {
                    matchers.push(matcher(field, &v)?);
                }
            }
            if matchers.is_empty() {
                return Err(UsageError(
                    "give at least one of --agent, --check, --tag: a silence without matchers would silence everything".into(),
                )
                .into());
            }
            let starts_ms = parse_when(&start, now).map_err(UsageError)?;
            let ends_ms = match (end, duration) {
                (Some(end), _) => parse_when(&end, now).map_err(UsageError)?,
                (None, Some(d)) => starts_ms + parse_secs(&d).map_err(UsageError)? * 1000,
                (None, None) => starts_ms + DEFAULT_SILENCE_SECS * 1000,
            };
            let author = author
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_default();
            let spec = SilenceSpec {
                matchers,
                starts_ms,
                ends_ms,
                author,
                comment,
                expire_on_resolve,
            };
            // The server says what is wrong, but a local check names it
            // without a round trip.
            spec.validate().map_err(|e| UsageError(e.to_string()))?;
            let answer: Value = client.send_json("POST", "/api/v1/silences", &spec)?;
            if global.json {
                return print_json(&answer);
            }
            println!(
                "silence {} added: {} until {}",
                answer["id"],
                matchers_text(&spec.matchers),
                when(ends_ms as i64, now as i64)
            );
            Ok(())
        }
        SilencesCommand::Expire { id } => {
            let answer: Value =
                client.send_json("POST", &format!("/api/v1/silences/{id}/expire"), &())?;
            if global.json {
                return print_json(&answer);
            }
            println!("silence {id} expired");
            Ok(())
        }
    }
}

/// `value` matched exactly, or `~regex` against the whole value.
fn matcher(field: Field, value: &str) -> Result<Matcher, UsageError> {
    let op = match value.strip_prefix('~') {
        Some(pattern) => Op::Regex(Pattern::new(pattern).map_err(|e| UsageError(e.to_string()))?),
        None if value.is_empty() => {
            return Err(UsageError(format!(
                "an empty {} matcher matches nothing; give a value",
                field_name(field)
            )));
        }
        None => Op::Equal(value.to_owned()),
    };
    Ok(Matcher { field, op })
}

fn field_name(field: Field) -> &'static str {
    match field {
        Field::Agent => "agent",
        Field::Check => "check",
        Field::Tag => "tag",
        _ => "other",
    }
}

fn matchers_text(matchers: &[Matcher]) -> String {
    matchers
        .iter()
        .map(|m| match &m.op {
            Op::Equal(v) => format!("{}={v}", field_name(m.field)),
            Op::Regex(p) => format!("{}=~{}", field_name(m.field), String::from(p.clone())),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// "in 2h", "5m ago".
fn when(ms: i64, now: i64) -> String {
    if ms <= now {
        return ago(ms);
    }
    let secs = (ms - now) / 1000;
    match secs {
        0..60 => format!("in {secs}s"),
        60..3600 => format!("in {}m", secs / 60),
        3600..86400 => format!("in {}h", secs / 3600),
        _ => format!("in {}d", secs / 86400),
    }
}

/// `now`, `+<duration>` from `now_ms`, or Unix milliseconds.
fn parse_when(text: &str, now_ms: u64) -> Result<u64, String> {
    if text == "now" {
        return Ok(now_ms);
    }
    if let Some(d) = text.strip_prefix('+') {
        return Ok(now_ms + parse_secs(d)? * 1000);
    }
    text.parse().map_err(|_| {
        format!("{text:?} is not a time: give now, +<duration> (+30m) or Unix milliseconds")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_now_relative_or_absolute() {
        let table = [
            ("now", Ok(1_000)),
            ("+30s", Ok(31_000)),
            ("+2m", Ok(121_000)),
            ("5000", Ok(5_000)),
        ];
        for (text, want) in table {
            assert_eq!(parse_when(text, 1_000), want, "{text}");
        }
        assert!(
            parse_when("tomorrow", 0)
                .unwrap_err()
                .contains("not a time")
        );
        assert!(parse_when("+0m", 0).unwrap_err().contains("positive"));
        assert!(parse_when("+3w", 0).unwrap_err().contains("unit"));
    }

    #[test]
    fn matchers_are_exact_or_anchored_regex() {
        let m = matcher(Field::Check, "disk").unwrap();
        assert_eq!(m.op, Op::Equal("disk".into()));
        let m = matcher(Field::Agent, "~web-.*").unwrap();
        assert_eq!(matchers_text(&[m]), "agent=~web-.*");
        assert!(
            matcher(Field::Tag, "~(")
                .unwrap_err()
                .0
                .contains("regular expression")
        );
        assert!(matcher(Field::Tag, "").unwrap_err().0.contains("empty tag"));
    }
}
