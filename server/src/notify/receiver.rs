//! Receivers: checking an operator's [`ReceiverConfig`], describing it
//! without secrets, and sending a [`Batch`] to it (the only I/O of the
//! notifier besides the store).
//!
//! HTTP receivers share one `reqwest` client (rustls, no redirects, a
//! timeout per request); email goes over SMTP with `lettre`.

use std::net::IpAddr;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::Certificate;
use outrider_protocol::api::{ReceiverConfig, SmtpTls};
use outrider_protocol::is_valid_name;

use super::message::{self, Batch, IDEMPOTENCY_HEADER, SIGNATURE_HEADER};
use super::policy::{Outcome, RateLimiter, classify_http};

/// PagerDuty's Events API v2 endpoint.
pub const PAGERDUTY_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// One attempt (connect, send, answer) may take this long.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Most recipients of an email receiver.
const MAX_RECIPIENTS: usize = 32;
/// Longest URL, key or secret accepted.
const MAX_FIELD_BYTES: usize = 2048;
/// Longest `ca_pem` accepted.
const MAX_CA_PEM_BYTES: usize = 64 * 1024;
/// Bytes of an error answer kept for the dead-letter list.
const MAX_ANSWER_BYTES: usize = 300;

/// Why a receiver configuration is refused (a 400 naming the field).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("name {0:?} must be 1-64 characters of a-z, 0-9, '_', '.', '-'")]
    Name(String),
    #[error("{field}: {problem}")]
    Field {
        field: &'static str,
        problem: String,
    },
    #[error("rate_per_sec: {rate} is outside 1..={max} for a {kind} receiver")]
    Rate {
        rate: u32,
        max: u32,
        kind: &'static str,
    },
}

fn field(field: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field,
        problem: problem.into(),
    }
}

fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// An `https` URL, or `http` to a loopback host (a local relay or a test).
fn check_url(name: &'static str, url: &str) -> Result<(), ConfigError> {
    if url.len() > MAX_FIELD_BYTES {
        return Err(field(name, "longer than 2048 bytes"));
    }
    let parsed =
        reqwest::Url::parse(url).map_err(|e| field(name, format!("{url:?} is not a URL: {e}")))?;
    let host = parsed.host_str().unwrap_or_default();
    match parsed.scheme() {
        "https" if !host.is_empty() => Ok(()),
        "http" if is_loopback_host(host) => Ok(()),
        "http" => Err(field(
            name,
            "plain http is allowed only to a loopback address; use https",
        )),
        _ => Err(field(name, format!("{url:?} must be an https URL"))),
    }
}

fn check_secret(name: &'static str, value: &str, min: usize) -> Result<(), ConfigError> {
    if value.len() < min || value.len() > MAX_FIELD_BYTES {
        return Err(field(
            name,
            format!("must be {min} to {MAX_FIELD_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// Checks a new receiver and returns its rate (the kind's default when not
/// given). Fails naming the first bad field.
pub fn validate(
    name: &str,
    config: &ReceiverConfig,
    rate: Option<u32>,
) -> Result<u32, ConfigError> {
    if !is_valid_name(name) {
        return Err(ConfigError::Name(name.to_owned()));
    }
    match config {
        ReceiverConfig::Webhook { url, secret } => {
            check_url("url", url)?;
            check_secret("secret", secret, 16)?;
        }
        ReceiverConfig::Slack { url } => check_url("url", url)?,
        ReceiverConfig::Pagerduty { routing_key, url } => {
            check_secret("routing_key", routing_key, 1)?;
            if let Some(url) = url {
                check_url("url", url)?;
            }
        }
        ReceiverConfig::Email {
            host,
            tls,
            username,
            password,
            from,
            to,
            ca_pem,
            ..
        } => {
            if let Some(pem) = ca_pem {
                // lettre accepts a PEM without any certificate: check for one.
                if pem.len() > MAX_CA_PEM_BYTES || !pem.contains("-----BEGIN CERTIFICATE-----") {
                    return Err(field(
                        "ca_pem",
                        "not a PEM certificate (-----BEGIN CERTIFICATE-----, at most 64 KiB)",
                    ));
                }
                Certificate::from_pem(pem.as_bytes())
                    .map_err(|e| field("ca_pem", format!("not a PEM certificate: {e}")))?;
            }
            if host.is_empty() || host.len() > 253 {
                return Err(field("host", "must be a host name or address"));
            }
            if *tls == SmtpTls::None && !is_loopback_host(host) {
                return Err(field(
                    "tls",
                    "\"none\" sends mail unencrypted and is allowed only to a loopback host; use starttls or tls",
                ));
            }
            if username.is_some() != password.is_some() {
                return Err(field(
                    "username",
                    "give both username and password, or neither",
                ));
            }
            from.parse::<lettre::message::Mailbox>()
                .map_err(|e| field("from", format!("{from:?} is not an email address: {e}")))?;
            if to.is_empty() || to.len() > MAX_RECIPIENTS {
                return Err(field(
                    "to",
                    format!("give 1 to {MAX_RECIPIENTS} recipients"),
                ));
            }
            for address in to {
                address.parse::<lettre::message::Mailbox>().map_err(|e| {
                    field("to", format!("{address:?} is not an email address: {e}"))
                })?;
            }
        }
        _ => return Err(field("kind", "unsupported receiver kind")),
    }
    let kind = crate::store::notify::kind_of(config);
    let (default, max) = super::policy::rate_limits(kind);
    match rate {
        None => Ok(default),
        Some(rate) if (1..=max).contains(&rate) => Ok(rate),
        Some(rate) => Err(ConfigError::Rate { rate, max, kind }),
    }
}

/// `scheme://host/…`: where a URL points, without path, query or userinfo
/// (a Slack URL's path is its secret).
fn url_target(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => match u.port() {
            Some(port) => format!("{}://{}:{port}/…", u.scheme(), u.host_str().unwrap_or("?")),
            None => format!("{}://{}/…", u.scheme(), u.host_str().unwrap_or("?")),
        },
        Err(_) => "(invalid URL)".to_owned(),
    }
}

/// Where a receiver sends, without any secret.
pub fn target(config: &ReceiverConfig) -> String {
    match config {
        ReceiverConfig::Webhook { url, .. } | ReceiverConfig::Slack { url } => url_target(url),
        ReceiverConfig::Pagerduty { url, .. } => {
            url_target(url.as_deref().unwrap_or(PAGERDUTY_URL))
        }
        ReceiverConfig::Email {
            host,
            port,
            tls,
            to,
            ..
        } => format!(
            "{} via {host}:{} ({})",
            to.join(", "),
            smtp_port(*port, *tls),
            match tls {
                SmtpTls::Starttls => "starttls",
                SmtpTls::Tls => "tls",
                SmtpTls::None => "plain",
            }
        ),
        _ => "?".to_owned(),
    }
}

fn smtp_port(port: Option<u16>, tls: SmtpTls) -> u16 {
    port.unwrap_or(match tls {
        SmtpTls::Starttls => 587,
        SmtpTls::Tls => 465,
        SmtpTls::None => 25,
    })
}

/// The shared HTTP client of the HTTP receivers.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(SEND_TIMEOUT)
        .connect_timeout(SEND_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("outrider-server/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// Sends `batch` to the receiver named `name` with `config`, each request
/// waiting for its slot of `limiter`; `busy` grows by the time spent on
/// requests (not on waiting for a slot), which the worker logs. PagerDuty takes one event per
/// notification: a failure after some were accepted retries them all, which
/// PagerDuty's `dedup_key` makes harmless.
pub async fn send(
    http: &reqwest::Client,
    name: &str,
    config: &ReceiverConfig,
    batch: &Batch,
    limiter: &mut RateLimiter,
    busy: &mut Duration,
) -> Outcome {
    match config {
        ReceiverConfig::Webhook { url, secret } => {
            let body = message::webhook_body(batch, name);
            let request = http
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(SIGNATURE_HEADER, message::signature(secret, &body))
                .header(IDEMPOTENCY_HEADER, batch.idempotency_key())
                .body(body);
            post(request, limiter, busy).await
        }
        ReceiverConfig::Slack { url } => {
            let request = http
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(IDEMPOTENCY_HEADER, batch.idempotency_key())
                .body(message::slack_body(batch));
            post(request, limiter, busy).await
        }
        ReceiverConfig::Pagerduty { routing_key, url } => {
            let url = url.as_deref().unwrap_or(PAGERDUTY_URL);
            for event in message::pagerduty_events(batch, routing_key) {
                let request = http
                    .post(url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(event);
                match post(request, limiter, busy).await {
                    Outcome::Accepted => {}
                    other => return other,
                }
            }
            Outcome::Accepted
        }
        ReceiverConfig::Email { .. } => {
            wait_for_slot(limiter).await;
            let started = std::time::Instant::now();
            let outcome = send_email(config, batch).await;
            let finished = std::time::Instant::now();
            *busy += finished - started;
            limiter.finished(finished);
            outcome
        }
        _ => Outcome::Permanent("unsupported receiver kind".to_owned()),
    }
}

async fn wait_for_slot(limiter: &RateLimiter) {
    let at = limiter.ready_at(std::time::Instant::now());
    tokio::time::sleep_until(at.into()).await;
}

async fn post(
    request: reqwest::RequestBuilder,
    limiter: &mut RateLimiter,
    busy: &mut Duration,
) -> Outcome {
    wait_for_slot(limiter).await;
    let started = std::time::Instant::now();
    let outcome = post_now(request).await;
    let finished = std::time::Instant::now();
    *busy += finished - started;
    limiter.finished(finished);
    outcome
}

async fn post_now(request: reqwest::RequestBuilder) -> Outcome {
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => {
            // Without the URL: a Slack webhook's URL is its secret, and this
            // text goes to the log, the dead-letter list and the test answer.
            return Outcome::Retry {
                after: None,
                error: format!("{:#}", anyhow::Error::new(e.without_url())),
            };
        }
    };
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // Only the start of an error answer is read (a receiver cannot make
    // us buffer a large body); a success body is not read at all.
    let body = if (200..300).contains(&status) {
        String::new()
    } else {
        let mut response = response;
        let mut head = Vec::new();
        let read = async {
            while head.len() < MAX_ANSWER_BYTES {
                match response.chunk().await {
                    Ok(Some(chunk)) => head.extend_from_slice(&chunk),
                    _ => break,
                }
            }
        };
        let _ = tokio::time::timeout(SEND_TIMEOUT, read).await;
        head.truncate(MAX_ANSWER_BYTES);
        String::from_utf8_lossy(&head).into_owned()
    };
    classify_http(
        status,
        retry_after.as_deref(),
        &body,
        crate::store::now_ms().max(0) as u64,
    )
}

/// Builds the mail and sends it over a fresh SMTP connection (`smtp.rs`).
async fn send_email(config: &ReceiverConfig, batch: &Batch) -> Outcome {
    let ReceiverConfig::Email {
        host,
        port,
        tls,
        username,
        password,
        from,
        to,
        ca_pem,
    } = config
    else {
        return Outcome::Permanent("not an email receiver".to_owned());
    };
    let mut builder = lettre::Message::builder()
        .subject(batch.headline())
        .message_id(Some(format!("<{}@outrider>", batch.idempotency_key())))
        .header(ContentType::TEXT_PLAIN);
    match from.parse() {
        Ok(from) => builder = builder.from(from),
        Err(e) => return Outcome::Permanent(format!("from {from:?}: {e}")),
    }
    for address in to {
        match address.parse() {
            Ok(to) => builder = builder.to(to),
            Err(e) => return Outcome::Permanent(format!("to {address:?}: {e}")),
        }
    }
    let mail = match builder.body(message::text(batch)) {
        Ok(m) => m,
        Err(e) => return Outcome::Permanent(format!("building the mail: {e}")),
    };
    let target = super::smtp::Target {
        host,
        port: smtp_port(*port, *tls),
        tls: *tls,
        credentials: match (username, password) {
            (Some(user), Some(password)) => Some(Credentials::new(user.clone(), password.clone())),
            _ => None,
        },
        ca_pem: ca_pem.as_deref(),
    };
    super::smtp::send(&target, &mail, SEND_TIMEOUT).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email(host: &str, tls: SmtpTls, to: &[&str]) -> ReceiverConfig {
        ReceiverConfig::Email {
            host: host.into(),
            port: None,
            tls,
            username: None,
            password: None,
            from: "outrider@example.com".into(),
            to: to.iter().map(|t| (*t).to_owned()).collect(),
            ca_pem: None,
        }
    }

    fn with_ca(mut config: ReceiverConfig, pem: &str) -> ReceiverConfig {
        if let ReceiverConfig::Email { ca_pem, .. } = &mut config {
            *ca_pem = Some(pem.to_owned());
        }
        config
    }

    #[test]
    fn receiver_configs_are_checked_by_table() {
        let webhook = |url: &str, secret: &str| ReceiverConfig::Webhook {
            url: url.into(),
            secret: secret.into(),
        };
        let secret = "0123456789abcdef";
        let ok: &[(ReceiverConfig, Option<u32>, u32)] = &[
            (webhook("https://hooks.example.com/x", secret), None, 10),
            (webhook("http://127.0.0.1:9/x", secret), Some(50), 50),
            (webhook("http://[::1]:9/x", secret), None, 10),
            (
                ReceiverConfig::Slack {
                    url: "https://hooks.slack.com/services/T/B/X".into(),
                },
                None,
                1,
            ),
            (
                ReceiverConfig::Pagerduty {
                    routing_key: "rk".into(),
                    url: None,
                },
                Some(1),
                1,
            ),
            (
                email("smtp.example.com", SmtpTls::Starttls, &["ops@example.com"]),
                None,
                5,
            ),
            (
                email("127.0.0.1", SmtpTls::None, &["Ops <ops@example.com>"]),
                None,
                5,
            ),
        ];
        for (config, rate, expected) in ok {
            assert_eq!(validate("ops", config, *rate), Ok(*expected), "{config:?}");
        }
        let bad: &[(&str, ReceiverConfig, Option<u32>, &str)] = &[
            (
                "Ops!",
                webhook("https://x.example/", secret),
                None,
                "name \"Ops!\"",
            ),
            (
                "ops",
                webhook("https://x.example/", "short"),
                None,
                "secret: must be 16",
            ),
            (
                "ops",
                webhook("http://hooks.example.com/", secret),
                None,
                "url: plain http is allowed only to a loopback",
            ),
            (
                "ops",
                webhook("ftp://x.example/", secret),
                None,
                "must be an https URL",
            ),
            ("ops", webhook("not a url", secret), None, "is not a URL"),
            (
                "ops",
                ReceiverConfig::Slack {
                    url: "https://hooks.slack.com/x".into(),
                },
                Some(5),
                "rate_per_sec: 5 is outside 1..=1 for a slack",
            ),
            (
                "ops",
                ReceiverConfig::Pagerduty {
                    routing_key: "rk".into(),
                    url: None,
                },
                Some(3),
                "outside 1..=2",
            ),
            (
                "ops",
                ReceiverConfig::Pagerduty {
                    routing_key: "".into(),
                    url: None,
                },
                None,
                "routing_key",
            ),
            (
                "ops",
                email("smtp.example.com", SmtpTls::None, &["ops@example.com"]),
                None,
                "tls: \"none\" sends mail unencrypted",
            ),
            (
                "ops",
                email("smtp.example.com", SmtpTls::Tls, &[]),
                None,
                "to: give 1 to 32",
            ),
            (
                "ops",
                email("smtp.example.com", SmtpTls::Tls, &["not-an-address"]),
                None,
                "to: \"not-an-address\" is not an email address",
            ),
            (
                "ops",
                webhook("https://x.example/", secret),
                Some(0),
                "outside 1..=1000",
            ),
            (
                "ops",
                with_ca(email("smtp.example.com", SmtpTls::Tls, &["a@b.c"]), "junk"),
                None,
                "ca_pem: not a PEM certificate",
            ),
        ];
        for (name, config, rate, needle) in bad {
            let error = validate(name, config, *rate).unwrap_err().to_string();
            assert!(error.contains(needle), "{config:?}: {error}");
        }
    }

    #[test]
    fn targets_never_show_secrets() {
        let slack = ReceiverConfig::Slack {
            url: "https://hooks.slack.com/services/T000/B000/SECRETSECRET".into(),
        };
        assert_eq!(target(&slack), "https://hooks.slack.com/…");
        let hook = ReceiverConfig::Webhook {
            url: "http://user:pw@127.0.0.1:8080/hook?token=SECRET".into(),
            secret: "SECRETSECRETSECRET".into(),
        };
        assert_eq!(target(&hook), "http://127.0.0.1:8080/…");
        let pd = ReceiverConfig::Pagerduty {
            routing_key: "SECRET".into(),
            url: None,
        };
        assert_eq!(target(&pd), "https://events.pagerduty.com/…");
        let mut mail = email("smtp.example.com", SmtpTls::Tls, &["ops@example.com"]);
        if let ReceiverConfig::Email {
            password, username, ..
        } = &mut mail
        {
            *username = Some("u".into());
            *password = Some("SECRET".into());
        }
        assert_eq!(
            target(&mail),
            "ops@example.com via smtp.example.com:465 (tls)"
        );
    }
}
