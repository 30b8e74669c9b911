//! `outrider tokens`: enrollment tokens agents present on first registration.

use anyhow::Result;
use outrider_protocol::api::{CreatedEnrollmentToken, EnrollmentTokenInfo, NewEnrollmentToken};
use serde_json::Value;

use crate::client::{ApiClient, path_segment};
use crate::duration::parse_secs;
use crate::output::{Align, Table, ago, now_ms, print_json};
use crate::{GlobalArgs, UsageError};

/// Arguments of `outrider tokens`.
#[derive(Debug, clap::Args)]
pub struct TokensArgs {
    #[command(subcommand)]
    command: Option<TokensCommand>,
}

#[derive(Debug, clap::Subcommand)]
enum TokensCommand {
    /// Every token (the default); secrets are never shown again.
    List,
    /// Create a token and print its secret once.
    Create {
        /// Where the token is meant to be used.
        #[arg(long, default_value = "")]
        note: String,
        /// Lifetime: seconds, or a number with s, m, h or d (`30d`); at
        /// most a year. Default: a day (every token expires).
        #[arg(long, alias = "expires", value_parser = parse_secs)]
        expires_in: Option<u64>,
        /// Registrations allowed; default unlimited.
        #[arg(long, alias = "uses")]
        max_uses: Option<u32>,
        /// Tags agents enrolled with this token may declare to select checks
        /// (comma-separated or repeated); others they declare are ignored.
        /// Default: any tag.
        #[arg(long, value_delimiter = ',')]
        tags: Option<Vec<String>>,
    },
    /// Revoke a token by its id.
    Revoke {
        #[arg(value_parser = path_segment)]
        id: String,
    },
}

/// When `at_ms` is, seen from `now_ms`: "in 3h", or "3h ago" once past.
fn until(at_ms: i64, now_ms: i64) -> String {
    if at_ms <= now_ms {
        return ago(at_ms);
    }
    // Rounded to the nearest unit: a token created for a day reads
    // "in 24h" a moment later, not "in 23h".
    let secs = (at_ms - now_ms + 500) / 1000;
    let (n, unit) = match secs {
        s if s < 120 => (s, 1),
        s if s < 7200 => (s, 60),
        s if s < 2 * 86_400 => (s, 3600),
        s => (s, 86_400),
    };
    let suffix = match unit {
        1 => "s",
        60 => "m",
        3600 => "h",
        _ => "d",
    };
    format!("in {}{suffix}", (n + unit / 2) / unit)
}

/// Runs `outrider tokens …`.
pub fn run(client: &ApiClient, global: &GlobalArgs, args: TokensArgs) -> Result<()> {
    match args.command.unwrap_or(TokensCommand::List) {
        TokensCommand::List => {
            let tokens: Vec<EnrollmentTokenInfo> = client.get_json("/api/v1/tokens")?;
            if global.json {
                print_json(&tokens)?;
                return Ok(());
            }
            if tokens.is_empty() {
                println!("no enrollment tokens");
                return Ok(());
            }
            let mut table = Table::new(&[
                ("ID", Align::Left),
                ("CREATED", Align::Left),
                ("STATUS", Align::Left),
                ("EXPIRES", Align::Left),
                ("USED", Align::Right),
                ("USES LEFT", Align::Right),
                ("REFUSED", Align::Right),
                ("TAGS", Align::Left),
                ("NOTE", Align::Left),
            ]);
            let now = now_ms();
            for t in tokens {
                let status = if t.revoked_at_ms.is_some() {
                    "revoked"
                } else if t.expires_at_ms.is_some_and(|e| e <= now) {
                    "expired"
                } else if t.uses_left == Some(0) {
                    "used up"
                } else {
                    "active"
                };
                table.row(vec![
                    t.id,
                    ago(t.created_at_ms),
                    status.to_owned(),
                    t.expires_at_ms
                        .map(|e| until(e, now))
                        .unwrap_or_else(|| "never".into()),
                    t.used.to_string(),
                    t.uses_left
                        .map(|u| u.to_string())
                        .unwrap_or_else(|| "unlimited".into()),
                    t.refused.to_string(),
                    t.allowed_tags
                        .map(|tags| tags.join(","))
                        .unwrap_or_else(|| "any".into()),
                    t.note,
                ]);
            }
            table.print();
            Ok(())
        }
        TokensCommand::Create {
            note,
            expires_in,
            max_uses,
            tags,
        } => {
            if max_uses == Some(0) {
                return Err(UsageError("--max-uses must be at least 1".into()).into());
            }
            let req = NewEnrollmentToken {
                note,
                expires_in_secs: expires_in,
                uses: max_uses,
                allowed_tags: tags,
            };
            let created: CreatedEnrollmentToken =
                client.send_json("POST", "/api/v1/tokens", &req)?;
            if global.json {
                print_json(&created)?;
            } else {
                println!(
                    "token {} created; its secret (shown only now):",
                    created.info.id
                );
                println!("{}", created.token);
            }
            Ok(())
        }
        TokensCommand::Revoke { id } => {
            let answer: Value = client.delete_json(&format!("/api/v1/tokens/{id}"))?;
            if global.json {
                print_json(&answer)?;
            } else {
                println!("token {id} revoked");
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_read_as_a_time_to_go() {
        assert_eq!(until(61_000, 1_000), "in 60s");
        assert_eq!(until(3_601_000, 1_000), "in 60m");
        assert_eq!(until(86_400_000, 0), "in 24h");
        assert_eq!(until(30 * 86_400_000, 0), "in 30d");
        assert_eq!(until(86_399_000, 0), "in 24h");
        assert_eq!(until(7_199_000, 0), "in 120m");
    }
}
