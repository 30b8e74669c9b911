//! What receivers are sent, as pure functions of a [`Batch`]: the webhook
//! JSON and its signature, the Slack message, PagerDuty events, the email.
//! Every message says what a person needs: title, status, agent or check,
//! summary, since when, and for a resolve why.

use hmac::{Hmac, Mac};
use outrider_alerting::model::ResolveCause;
use outrider_alerting::{Notification, NotificationKind, Status, Subject};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::policy::days_from_civil;

/// Version of the webhook body; bumped only on an incompatible change.
pub const WEBHOOK_VERSION: u32 = 1;

/// The webhook's signature header: `sha256=<hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "X-Outrider-Signature";

/// The idempotency key header of webhook (and Slack) requests.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

/// Longest PagerDuty `dedup_key` and `summary`.
const PD_MAX_DEDUP_KEY: usize = 255;
const PD_MAX_SUMMARY: usize = 1024;

/// One message to one receiver: an outbox row's notifications.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// The outbox row's `batch_key`.
    pub batch_key: String,
    /// `agent/<fingerprint>` or `site/<tag>`.
    pub group: String,
    pub tags: Vec<String>,
    pub severity: String,
    pub notifications: Vec<Notification>,
}

impl Batch {
    /// The delivery's idempotency key: the same for every attempt (and after
    /// a restart), different for every other message. Hex SHA-256 of the
    /// batch key, truncated to 128 bits.
    pub fn idempotency_key(&self) -> String {
        hex::encode(&Sha256::digest(self.batch_key.as_bytes())[..16])
    }

    /// One line for a subject or email subject.
    pub fn headline(&self) -> String {
        match self.notifications.as_slice() {
            [one] => format!("[{}] {}", label(one), one.title),
            many => format!(
                "[{}] {} and {} more",
                label(&many[0]),
                many[0].title,
                many.len() - 1
            ),
        }
    }
}

/// `FIRING`, `RESOLVED`, `FLAPPING`… for a notification.
fn label(n: &Notification) -> String {
    if n.is_resolve() {
        return "RESOLVED".to_owned();
    }
    match n.kind {
        NotificationKind::FlappingStarted => "FLAPPING".to_owned(),
        NotificationKind::Repeat => format!("STILL {}", n.status),
        _ => n.status.to_string(),
    }
}

/// What a subject is, for a person.
fn subject_text(subject: &Subject) -> String {
    match subject {
        Subject::Agent { agent } => format!("agent {agent}"),
        Subject::Check { agent, name } => format!("check {name} on agent {agent}"),
        Subject::Update { agent } => format!("updates of agent {agent}"),
        Subject::Collector { agent, name } => format!("collector {name} on agent {agent}"),
        Subject::Site { tag } => format!("agents tagged {tag}"),
        other => other.to_string(),
    }
}

fn cause_text(cause: Option<ResolveCause>) -> Option<&'static str> {
    match cause? {
        ResolveCause::Recovered => Some("recovered"),
        ResolveCause::Deregistered => Some("the agent shut down cleanly (deregistered)"),
        _ => Some("resolved"),
    }
}

/// Unix milliseconds as `2026-12-04 07:19:43 UTC`.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Inverse of `days_from_civil` (H. Hinnant's `civil_from_days`).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    debug_assert_eq!(days_from_civil(year, month, day), days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The lines describing one notification, for text receivers.
fn describe(n: &Notification) -> Vec<String> {
    let mut lines = vec![
        format!("{} — {}", label(n), n.title),
        format!("Status: {}", n.status),
        format!("What: {}", subject_text(&n.subject)),
    ];
    if !n.summary.is_empty() {
        lines.push(format!("Summary: {}", n.summary));
    }
    lines.push(format!("Since: {}", utc(n.incident_started_ms)));
    if let Some(cause) = cause_text(n.resolve_cause) {
        lines.push(format!("Resolved because: {cause}"));
    }
    lines
}

/// The plain text of the batch (email body, Slack fallback text).
pub fn text(batch: &Batch) -> String {
    let mut out = String::new();
    for n in &batch.notifications {
        for line in describe(n) {
            out.push_str(&line);
            out.push('\n');
        }
        out.push('\n');
    }
    out.push_str(&format!(
        "Group: {}\nIdempotency key: {}\n",
        batch.group,
        batch.idempotency_key()
    ));
    out
}

/// The webhook body. Each notification is `alerting::Notification`'s JSON
/// plus `incident_key`, `dedup_key` and `resolved`.
pub fn webhook_body(batch: &Batch, receiver: &str) -> Vec<u8> {
    let notifications: Vec<Value> = batch
        .notifications
        .iter()
        .map(|n| {
            let mut v = serde_json::to_value(n).unwrap_or(Value::Null);
            if let Value::Object(map) = &mut v {
                map.insert("incident_key".into(), n.incident_key().into());
                map.insert("dedup_key".into(), n.subject.to_string().into());
                map.insert("resolved".into(), n.is_resolve().into());
                map.insert("since".into(), utc(n.incident_started_ms).into());
            }
            v
        })
        .collect();
    let body = json!({
        "version": WEBHOOK_VERSION,
        "idempotency_key": batch.idempotency_key(),
        "batch_key": batch.batch_key,
        "receiver": receiver,
        "group": batch.group,
        "tags": batch.tags,
        "severity": batch.severity,
        "title": batch.headline(),
        "notifications": notifications,
    });
    // Serialising a `Value` cannot fail.
    serde_json::to_vec(&body).expect("JSON value serialises")
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The Slack incoming-webhook body: `text` (notifications, fallback) and
/// one section block per notification.
pub fn slack_body(batch: &Batch) -> Vec<u8> {
    let blocks: Vec<Value> = batch
        .notifications
        .iter()
        .map(|n| {
            let mut lines = describe(n);
            lines[0] = format!("*{}*", lines[0]);
            json!({"type": "section", "text": {"type": "mrkdwn", "text": lines.join("\n")}})
        })
        .collect();
    let body = json!({ "text": batch.headline(), "blocks": blocks });
    serde_json::to_vec(&body).expect("JSON value serialises")
}

/// PagerDuty severity of a status.
fn pd_severity(status: Status) -> &'static str {
    match status {
        Status::Critical => "critical",
        Status::Warning => "warning",
        Status::Unknown => "error",
        Status::Ok => "info",
    }
}

/// The PagerDuty `dedup_key` of a notification: its subject (the same for
/// the trigger and the resolve), hashed only if longer than PagerDuty allows.
pub fn dedup_key(n: &Notification) -> String {
    let key = n.subject.to_string();
    if key.len() <= PD_MAX_DEDUP_KEY {
        key
    } else {
        format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
    }
}

/// One Events v2 event per notification: `resolve` for a resolve,
/// `trigger` otherwise (a repeat re-triggers the same alert).
pub fn pagerduty_events(batch: &Batch, routing_key: &str) -> Vec<Vec<u8>> {
    batch
        .notifications
        .iter()
        .map(|n| {
            let action = if n.is_resolve() { "resolve" } else { "trigger" };
            let mut summary = format!("{}: {}", n.title, n.summary);
            if summary.len() > PD_MAX_SUMMARY {
                let mut end = PD_MAX_SUMMARY;
                while !summary.is_char_boundary(end) {
                    end -= 1;
                }
                summary.truncate(end);
            }
            let source = n
                .subject
                .agent()
                .map(str::to_owned)
                .unwrap_or_else(|| batch.group.clone());
            let event = json!({
                "routing_key": routing_key,
                "event_action": action,
                "dedup_key": dedup_key(n),
                "payload": {
                    "summary": summary,
                    "source": source,
                    "severity": pd_severity(n.status),
                    "custom_details": {
                        "status": n.status.to_string(),
                        "kind": n.kind,
                        "what": subject_text(&n.subject),
                        "since": utc(n.incident_started_ms),
                        "resolve_cause": cause_text(n.resolve_cause),
                        "incident_key": n.incident_key(),
                        "seq": n.seq,
                        "group": batch.group,
                        "tags": batch.tags,
                    }
                }
            });
            serde_json::to_vec(&event).expect("JSON value serialises")
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn notification(kind: NotificationKind, status: Status, seq: u32) -> Notification {
        Notification {
            subject: Subject::Check {
                agent: "f00d".into(),
                name: "disk".into(),
            },
            kind,
            status,
            title: "disk CRITICAL on web-1".into(),
            summary: "/ is 97% full".into(),
            resolve_cause: (kind == NotificationKind::Resolved).then_some(ResolveCause::Recovered),
            incident_started_ms: 1_796_368_783_000,
            seq,
        }
    }

    fn batch(notifications: Vec<Notification>) -> Batch {
        Batch {
            batch_key: notifications
                .iter()
                .map(|n| format!("{}#{}", n.incident_key(), n.seq))
                .collect::<Vec<_>>()
                .join(" "),
            group: "agent/f00d".into(),
            tags: vec!["prod".into()],
            severity: "critical".into(),
            notifications,
        }
    }

    #[test]
    fn dates_are_printed_in_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_796_368_783_000), "2026-12-04 07:19:43 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn text_says_what_a_person_needs() {
        let firing = batch(vec![notification(
            NotificationKind::Firing,
            Status::Critical,
            1,
        )]);
        let text = text(&firing);
        for needle in [
            "CRITICAL — disk CRITICAL on web-1",
            "Status: CRITICAL",
            "What: check disk on agent f00d",
            "Summary: / is 97% full",
            "Since: 2026-12-04 07:19:43 UTC",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from\n{text}");
        }
        assert!(!text.contains("Resolved because"));
        let resolved = batch(vec![notification(
            NotificationKind::Resolved,
            Status::Ok,
            2,
        )]);
        let text = super::text(&resolved);
        assert!(text.contains("RESOLVED — "), "{text}");
        assert!(text.contains("Resolved because: recovered"), "{text}");
        assert_eq!(resolved.headline(), "[RESOLVED] disk CRITICAL on web-1");
    }

    #[test]
    fn idempotency_keys_differ_per_transition_and_repeat_per_attempt() {
        let first = batch(vec![notification(
            NotificationKind::Firing,
            Status::Critical,
            1,
        )]);
        let again = batch(vec![notification(
            NotificationKind::Firing,
            Status::Critical,
            1,
        )]);
        let resolve = batch(vec![notification(
            NotificationKind::Resolved,
            Status::Ok,
            2,
        )]);
        assert_eq!(first.idempotency_key(), again.idempotency_key());
        assert_ne!(first.idempotency_key(), resolve.idempotency_key());
        assert_eq!(first.idempotency_key().len(), 32);
    }

    #[test]
    fn webhook_signature_is_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let b = batch(vec![notification(
            NotificationKind::Firing,
            Status::Critical,
            1,
        )]);
        let body: Value = serde_json::from_slice(&webhook_body(&b, "ops")).unwrap();
        assert_eq!(body["idempotency_key"], b.idempotency_key());
        assert_eq!(body["notifications"][0]["dedup_key"], "check/f00d/disk");
        assert_eq!(body["notifications"][0]["resolved"], false);
        assert_eq!(body["notifications"][0]["seq"], 1);
    }

    #[test]
    fn pagerduty_triggers_and_resolves_with_the_subject_as_dedup_key() {
        let b = batch(vec![
            notification(NotificationKind::Firing, Status::Critical, 1),
            notification(NotificationKind::Resolved, Status::Ok, 2),
            notification(NotificationKind::FlappingStopped, Status::Ok, 3),
            notification(NotificationKind::FlappingStopped, Status::Warning, 4),
        ]);
        let events: Vec<Value> = pagerduty_events(&b, "rk")
            .iter()
            .map(|e| serde_json::from_slice(e).unwrap())
            .collect();
        let actions: Vec<&str> = events
            .iter()
            .map(|e| e["event_action"].as_str().unwrap())
            .collect();
        assert_eq!(actions, ["trigger", "resolve", "resolve", "trigger"]);
        assert!(events.iter().all(|e| e["dedup_key"] == "check/f00d/disk"));
        assert_eq!(events[0]["payload"]["severity"], "critical");
        assert_eq!(events[3]["payload"]["severity"], "warning");
        assert_eq!(events[0]["payload"]["source"], "f00d");
        let mut long = notification(NotificationKind::Firing, Status::Critical, 1);
        long.summary = "é".repeat(2000);
        long.subject = Subject::Check {
            agent: "a".repeat(300),
            name: "x".into(),
        };
        let event: Value =
            serde_json::from_slice(&pagerduty_events(&batch(vec![long]), "rk")[0]).unwrap();
        assert!(event["payload"]["summary"].as_str().unwrap().len() <= 1024);
        assert!(event["dedup_key"].as_str().unwrap().len() <= 255);
    }

    #[test]
    fn slack_message_has_text_and_a_block_per_notification() {
        let b = batch(vec![
            notification(NotificationKind::Firing, Status::Critical, 1),
            notification(NotificationKind::FlappingStarted, Status::Warning, 1),
        ]);
        let body: Value = serde_json::from_slice(&slack_body(&b)).unwrap();
        assert_eq!(body["text"], "[CRITICAL] disk CRITICAL on web-1 and 1 more");
        assert_eq!(body["blocks"].as_array().unwrap().len(), 2);
        assert!(
            body["blocks"][1]["text"]["text"]
                .as_str()
                .unwrap()
                .starts_with("*FLAPPING")
        );
    }
}
