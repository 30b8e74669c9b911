//! `outrider receivers` and `outrider routes`: where alert notifications
//! go. Secrets (webhook secret, Slack URL, PagerDuty routing key, SMTP
//! password) are read from a file or standard input, never from the
//! command line (shell history, `ps`), and the server never shows them
//! again.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use outrider_protocol::api::{
    DeadLetter, NewReceiver, NewRoute, ReceiverConfig, ReceiverInfo, ReceiverTestResult, RouteInfo,
    SmtpTls,
};
use serde_json::Value;

use crate::client::{ApiClient, path_segment};
use crate::output::{Align, Table, ago, print_json};
use crate::{GlobalArgs, UsageError};

/// Arguments of `outrider receivers`.
#[derive(Debug, clap::Args)]
pub struct ReceiversArgs {
    #[command(subcommand)]
    command: Option<ReceiversCommand>,
}

#[derive(Debug, clap::Subcommand)]
enum ReceiversCommand {
    /// Every receiver (the default), without secrets, with its queue counts.
    List,
    /// Add a receiver. Without routes it gets every notification.
    #[command(subcommand)]
    Add(AddCommand),
    /// Send a test message (a warning and its resolve) now.
    Test {
        #[arg(value_parser = path_segment)]
        name: String,
    },
    /// Delete a receiver and its routes; its queue becomes dead letters.
    Delete {
        #[arg(value_parser = path_segment)]
        name: String,
    },
    /// Deliveries given up, newest first, with the error.
    DeadLetters {
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

/// Options every kind of receiver takes.
#[derive(Debug, clap::Args)]
struct Common {
    /// Receiver name (a-z, 0-9, '_', '.', '-').
    name: String,
    /// Most messages per second (default: Slack 1, PagerDuty 2, webhook 10, email 5).
    #[arg(long)]
    rate: Option<u32>,
}

#[derive(Debug, clap::Subcommand)]
enum AddCommand {
    /// A JSON webhook signed with X-Outrider-Signature (HMAC-SHA256).
    Webhook {
        #[command(flatten)]
        common: Common,
        /// https URL (plain http only to a loopback address).
        #[arg(long)]
        url: String,
        /// File holding the HMAC secret (at least 16 bytes); `-` reads stdin.
        #[arg(long)]
        secret_file: PathBuf,
    },
    /// A Slack incoming webhook.
    Slack {
        #[command(flatten)]
        common: Common,
        /// File holding the incoming-webhook URL (it is a secret); `-` reads stdin.
        #[arg(long)]
        url_file: PathBuf,
    },
    /// PagerDuty Events API v2.
    Pagerduty {
        #[command(flatten)]
        common: Common,
        /// File holding the integration's routing key; `-` reads stdin.
        #[arg(long)]
        routing_key_file: PathBuf,
        /// Events endpoint (default `https://events.pagerduty.com/v2/enqueue`).
        #[arg(long)]
        url: Option<String>,
    },
    /// Email over SMTP.
    Email {
        #[command(flatten)]
        common: Common,
        /// SMTP server.
        #[arg(long)]
        host: String,
        /// SMTP port (default 587 for starttls, 465 for tls, 25 for none).
        #[arg(long)]
        port: Option<u16>,
        /// starttls, tls (implicit), or none (loopback only).
        #[arg(long, default_value = "starttls", value_parser = parse_tls)]
        tls: SmtpTls,
        /// SMTP user, with --password-file.
        #[arg(long, requires = "password_file")]
        username: Option<String>,
        /// File holding the SMTP password; `-` reads stdin.
        #[arg(long, requires = "username")]
        password_file: Option<PathBuf>,
        /// Sender address.
        #[arg(long)]
        from: String,
        /// Recipient address (repeat for more).
        #[arg(long, required = true)]
        to: Vec<String>,
        /// PEM file of a CA to trust besides the public roots (a relay with a private CA).
        #[arg(long)]
        ca_file: Option<PathBuf>,
    },
}

fn parse_tls(text: &str) -> Result<SmtpTls, String> {
    match text {
        "starttls" => Ok(SmtpTls::Starttls),
        "tls" => Ok(SmtpTls::Tls),
        "none" => Ok(SmtpTls::None),
        _ => Err(format!("{text:?}: give starttls, tls or none")),
    }
}

/// A secret from `path` (`-`: standard input), without its trailing newline.
fn read_secret(path: &Path, what: &str) -> Result<String> {
    let mut text = String::new();
    if path == Path::new("-") {
        std::io::stdin()
            .read_to_string(&mut text)
            .with_context(|| format!("reading the {what} from standard input"))?;
    } else {
        text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the {what} from {}", path.display()))?;
    }
    let text = text.trim_end_matches(['\r', '\n']).to_owned();
    if text.is_empty() {
        return Err(UsageError(format!("the {what} in {} is empty", path.display())).into());
    }
    Ok(text)
}

/// The API request of `outrider receivers add …`.
fn new_receiver(add: AddCommand) -> Result<NewReceiver> {
    let (common, config) = match add {
        AddCommand::Webhook {
            common,
            url,
            secret_file,
        } => (
            common,
            ReceiverConfig::Webhook {
                url,
                secret: read_secret(&secret_file, "webhook secret")?,
            },
        ),
        AddCommand::Slack { common, url_file } => (
            common,
            ReceiverConfig::Slack {
                url: read_secret(&url_file, "Slack webhook URL")?,
            },
        ),
        AddCommand::Pagerduty {
            common,
            routing_key_file,
            url,
        } => (
            common,
            ReceiverConfig::Pagerduty {
                routing_key: read_secret(&routing_key_file, "PagerDuty routing key")?,
                url,
            },
        ),
        AddCommand::Email {
            common,
            host,
            port,
            tls,
            username,
            password_file,
            from,
            to,
            ca_file,
        } => (
            common,
            ReceiverConfig::Email {
                ca_pem: ca_file
                    .map(|p| {
                        std::fs::read_to_string(&p)
                            .with_context(|| format!("reading the CA certificate {}", p.display()))
                    })
                    .transpose()?,
                host,
                port,
                tls,
                username,
                password: password_file
                    .map(|p| read_secret(&p, "SMTP password"))
                    .transpose()?,
                from,
                to,
            },
        ),
    };
    Ok(NewReceiver {
        name: common.name,
        config,
        rate_per_sec: common.rate,
    })
}

/// Runs `outrider receivers …`.
pub fn run(client: &ApiClient, global: &GlobalArgs, args: ReceiversArgs) -> Result<()> {
    match args.command.unwrap_or(ReceiversCommand::List) {
        ReceiversCommand::List => {
            let receivers: Vec<ReceiverInfo> = client.get_json("/api/v1/receivers")?;
            if global.json {
                return print_json(&receivers);
            }
            if receivers.is_empty() {
                println!(
                    "no receivers: alerts reach nobody; add one with `outrider receivers add`"
                );
                return Ok(());
            }
            let mut table = Table::new(&[
                ("NAME", Align::Left),
                ("KIND", Align::Left),
                ("TARGET", Align::Left),
                ("RATE/S", Align::Right),
                ("PENDING", Align::Right),
                ("SENT", Align::Right),
                ("DEAD", Align::Right),
                ("ADDED", Align::Left),
            ]);
            for r in receivers {
                table.row(vec![
                    r.name,
                    r.kind,
                    r.target,
                    r.rate_per_sec.to_string(),
                    r.pending.to_string(),
                    r.sent.to_string(),
                    r.dead.to_string(),
                    ago(r.created_at_ms),
                ]);
            }
            table.print();
            Ok(())
        }
        ReceiversCommand::Add(add) => {
            let request = new_receiver(add)?;
            let info: ReceiverInfo = client.send_json("POST", "/api/v1/receivers", &request)?;
            if global.json {
                return print_json(&info);
            }
            println!(
                "receiver {} added: {} {} (secrets are stored by the server and not shown again)",
                info.name, info.kind, info.target
            );
            println!("check it with: outrider receivers test {}", info.name);
            Ok(())
        }
        ReceiversCommand::Test { name } => {
            let result: ReceiverTestResult =
                client.send_json("POST", &format!("/api/v1/receivers/{name}/test"), &())?;
            if global.json {
                print_json(&result)?;
            }
            match result.error {
                None => {
                    if !global.json {
                        println!("receiver {name} accepted the test message");
                    }
                    Ok(())
                }
                Some(error) => {
                    anyhow::bail!("receiver {name} did not accept the test message: {error}")
                }
            }
        }
        ReceiversCommand::Delete { name } => {
            let answer: Value = client.delete_json(&format!("/api/v1/receivers/{name}"))?;
            if global.json {
                return print_json(&answer);
            }
            println!("receiver {name} deleted");
            Ok(())
        }
        ReceiversCommand::DeadLetters { limit } => {
            let dead: Vec<DeadLetter> =
                client.get_json(&format!("/api/v1/dead-letters?limit={limit}"))?;
            if global.json {
                return print_json(&dead);
            }
            if dead.is_empty() {
                println!("no dead letters");
                return Ok(());
            }
            let mut table = Table::new(&[
                ("FAILED", Align::Left),
                ("RECEIVER", Align::Left),
                ("TRIES", Align::Right),
                ("WHAT", Align::Left),
                ("ERROR", Align::Left),
            ]);
            for d in dead {
                table.row(vec![
                    ago(d.failed_at_ms),
                    d.receiver,
                    d.attempts.to_string(),
                    d.titles.join("; "),
                    d.error,
                ]);
            }
            table.print();
            Ok(())
        }
    }
}

/// Arguments of `outrider routes`.
#[derive(Debug, clap::Args)]
pub struct RoutesArgs {
    #[command(subcommand)]
    command: Option<RoutesCommand>,
}

#[derive(Debug, clap::Subcommand)]
enum RoutesCommand {
    /// Every route (the default).
    List,
    /// Send a receiver only the groups with all these tags and one of
    /// these severities (plus the follow-ups of what it was sent).
    Add {
        /// The receiver.
        #[arg(long)]
        receiver: String,
        /// A tag the group must have (repeat for more).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// critical, warning, unknown or ok (repeat for more; none: any).
        #[arg(long = "severity")]
        severities: Vec<String>,
    },
    /// Delete a route by its id.
    Delete { id: i64 },
}

/// Runs `outrider routes …`.
pub fn run_routes(client: &ApiClient, global: &GlobalArgs, args: RoutesArgs) -> Result<()> {
    match args.command.unwrap_or(RoutesCommand::List) {
        RoutesCommand::List => {
            let routes: Vec<RouteInfo> = client.get_json("/api/v1/routes")?;
            if global.json {
                return print_json(&routes);
            }
            if routes.is_empty() {
                println!("no routes: every receiver gets every notification");
                return Ok(());
            }
            let mut table = Table::new(&[
                ("ID", Align::Right),
                ("RECEIVER", Align::Left),
                ("TAGS", Align::Left),
                ("SEVERITIES", Align::Left),
            ]);
            for r in routes {
                table.row(vec![
                    r.id.to_string(),
                    r.receiver,
                    if r.tags.is_empty() {
                        "any".into()
                    } else {
                        r.tags.join(",")
                    },
                    if r.severities.is_empty() {
                        "any".into()
                    } else {
                        r.severities.join(",")
                    },
                ]);
            }
            table.print();
            Ok(())
        }
        RoutesCommand::Add {
            receiver,
            tags,
            severities,
        } => {
            let route: RouteInfo = client.send_json(
                "POST",
                "/api/v1/routes",
                &NewRoute {
                    receiver,
                    tags,
                    severities,
                },
            )?;
            if global.json {
                return print_json(&route);
            }
            println!("route {} added for receiver {}", route.id, route.receiver);
            Ok(())
        }
        RoutesCommand::Delete { id } => {
            let answer: Value = client.delete_json(&format!("/api/v1/routes/{id}"))?;
            if global.json {
                return print_json(&answer);
            }
            println!("route {id} deleted");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        add: AddCommand,
    }

    fn parse(args: &[&str]) -> AddCommand {
        Cli::try_parse_from(std::iter::once("add").chain(args.iter().copied()))
            .unwrap()
            .add
    }

    #[test]
    fn secrets_come_from_files_not_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "0123456789abcdef-secret\n").unwrap();
        let secret = secret.to_str().unwrap();
        let request = new_receiver(parse(&[
            "webhook",
            "ops",
            "--url",
            "https://hooks.example.com/x",
            "--secret-file",
            secret,
            "--rate",
            "3",
        ]))
        .unwrap();
        assert_eq!(request.name, "ops");
        assert_eq!(request.rate_per_sec, Some(3));
        assert_eq!(
            request.config,
            ReceiverConfig::Webhook {
                url: "https://hooks.example.com/x".into(),
                secret: "0123456789abcdef-secret".into()
            }
        );
        let request = new_receiver(parse(&[
            "email",
            "mail",
            "--host",
            "127.0.0.1",
            "--tls",
            "none",
            "--from",
            "a@b.c",
            "--to",
            "d@e.f",
            "--to",
            "g@h.i",
            "--username",
            "u",
            "--password-file",
            secret,
        ]))
        .unwrap();
        let ReceiverConfig::Email {
            tls, to, password, ..
        } = request.config
        else {
            panic!("not email");
        };
        assert_eq!(
            (tls, to.len(), password.as_deref()),
            (SmtpTls::None, 2, Some("0123456789abcdef-secret"))
        );
        // There is no flag taking a secret's value.
        assert!(
            Cli::try_parse_from([
                "add",
                "webhook",
                "ops",
                "--url",
                "https://x",
                "--secret",
                "s"
            ])
            .is_err()
        );
        assert!(
            Cli::try_parse_from([
                "add",
                "email",
                "m",
                "--host",
                "h",
                "--from",
                "a@b",
                "--to",
                "c@d",
                "--username",
                "u"
            ])
            .is_err(),
            "a user needs a password file"
        );
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let error = new_receiver(parse(&[
            "slack",
            "chat",
            "--url-file",
            empty.to_str().unwrap(),
        ]))
        .unwrap_err();
        assert!(error.to_string().contains("is empty"), "{error}");
        assert!(
            Cli::try_parse_from([
                "add", "email", "m", "--host", "h", "--tls", "ssl", "--from", "a@b", "--to", "c@d"
            ])
            .is_err()
        );
    }
}
