//! Email receivers against a real SMTP server on loopback (aiosmtpd, see
//! `smtp_server.py`): the mail says what a person needs and carries the
//! delivery's key as its Message-ID; a refused recipient is a dead letter.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use outrider_alerting::NotificationKind;
use serde_json::json;

use crate::helpers::Server;
use crate::notify_support::{insert_outbox, notification};

const AGENT: &str = "0123456789abcdef0123";

/// The SMTP server process; stopped (stdin closed, then killed) on drop.
struct Smtp {
    child: Child,
    port: u16,
    outdir: tempfile::TempDir,
}

impl Smtp {
    fn start() -> Smtp {
        Smtp::start_with(&[])
    }

    /// With `extra` arguments of `smtp_server.py` (a TLS mode, cert, key).
    fn start_with(extra: &[&std::ffi::OsStr]) -> Smtp {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let outdir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/smtp_server.py");
        // Debian's interpreter, which python3-aiosmtpd is installed for (a
        // `python3` earlier on PATH, like pyenv's, does not have it).
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .arg(port.to_string())
            .arg(outdir.path())
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // Refused TLS handshakes are expected here; their tracebacks are noise.
            .stderr(Stdio::null())
            .spawn()
            .expect("/usr/bin/python3 with aiosmtpd (tests/deps installs python3-aiosmtpd)");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the SMTP server did not start");
        Smtp {
            child,
            port,
            outdir,
        }
    }

    fn messages(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.outdir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        files.sort();
        files
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn email_goes_over_real_smtp_and_a_refused_recipient_is_a_dead_letter() {
    let smtp = Smtp::start();
    let server = Server::start().await;
    for (name, to) in [("mail", "ops@example.com"), ("typo", "bad-ops@example.com")] {
        server
            .admin(
                "POST",
                "/api/v1/receivers",
                Some(&json!({"name": name, "config": {
                    "kind": "email", "host": "127.0.0.1", "port": smtp.port, "tls": "none",
                    "from": "Outrider <outrider@example.com>", "to": [to]}})),
            )
            .await;
    }
    let key = insert_outbox(
        &server.data_dir().join("outrider.db"),
        &[],
        &[notification(AGENT, "disk", NotificationKind::Firing, 1)],
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while smtp.messages().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no mail arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mail = std::fs::read_to_string(&smtp.messages()[0]).unwrap();
    let body: serde_json::Value = server.admin("GET", "/api/v1/receivers", None).await;
    assert!(
        body.to_string().contains("ops@example.com via 127.0.0.1"),
        "{body}"
    );
    for needle in [
        format!("Subject: [CRITICAL] disk CRITICAL on {AGENT}"),
        "To: ops@example.com".to_owned(),
        "Status: CRITICAL".to_owned(),
        format!("What: check disk on agent {AGENT}"),
        "Summary: disk / is 97% full".to_owned(),
        "Since: 2026-12-04 07:19:43 UTC".to_owned(),
    ] {
        assert!(mail.contains(&needle), "{needle:?} missing from\n{mail}");
    }
    let message_id = mail
        .lines()
        .find_map(|l| l.strip_prefix("Message-ID: "))
        .expect("a Message-ID");
    assert!(message_id.ends_with("@outrider>"), "{message_id}");

    // The refused recipient: SMTP 550 is permanent, no retry.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let dead = loop {
        let dead = server.admin("GET", "/api/v1/dead-letters", None).await;
        if !dead.as_array().unwrap().is_empty() {
            break dead;
        }
        assert!(tokio::time::Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(dead[0]["receiver"], "typo");
    assert_eq!(dead[0]["batch_key"], key);
    let error = dead[0]["error"].as_str().unwrap();
    assert!(
        error.contains("550") && error.contains("no such user"),
        "{error}"
    );
    assert_eq!(dead[0]["attempts"], 1);
    assert_eq!(smtp.messages().len(), 1, "exactly one mail");
    server.stop().await;
}

/// Waits for the `n`-th mail and returns it.
async fn mail(smtp: &Smtp, n: usize) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while smtp.messages().len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "mail {n} did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::read_to_string(&smtp.messages()[n - 1]).unwrap()
}

#[tokio::test]
async fn starttls_and_implicit_tls_verify_the_server_and_a_plain_only_server_is_retried() {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
    let tls_args = |mode: &'static str| {
        vec![
            std::ffi::OsStr::new(mode).to_owned(),
            cert_file.clone().into_os_string(),
            key_file.clone().into_os_string(),
        ]
    };
    let starttls_args = tls_args("starttls");
    let implicit_args = tls_args("tls");
    let starttls = Smtp::start_with(
        &starttls_args
            .iter()
            .map(|a| a.as_os_str())
            .collect::<Vec<_>>(),
    );
    let implicit = Smtp::start_with(
        &implicit_args
            .iter()
            .map(|a| a.as_os_str())
            .collect::<Vec<_>>(),
    );
    let plain_only = Smtp::start();
    let server = Server::start().await;
    let ca = cert.cert.pem();
    for (name, port, tls, ca_pem) in [
        ("starttls", starttls.port, "starttls", Some(ca.clone())),
        ("implicit", implicit.port, "tls", Some(ca.clone())),
        // The server does not offer STARTTLS: never downgraded to plain text.
        ("downgrade", plain_only.port, "starttls", Some(ca.clone())),
        // A certificate nobody vouches for is refused.
        ("untrusted", starttls.port, "starttls", None),
    ] {
        server
            .admin(
                "POST",
                "/api/v1/receivers",
                Some(&json!({"name": name, "config": {
                    "kind": "email", "host": "127.0.0.1", "port": port, "tls": tls, "ca_pem": ca_pem,
                    "from": "outrider@example.com", "to": ["ops@example.com"]}})),
            )
            .await;
    }
    insert_outbox(
        &server.data_dir().join("outrider.db"),
        &[],
        &[notification(AGENT, "disk", NotificationKind::Firing, 1)],
    );
    for smtp in [&starttls, &implicit] {
        let mail = mail(smtp, 1).await;
        assert!(mail.contains("Status: CRITICAL"), "{mail}");
    }
    // Neither is delivered, and both are kept for a retry (it may be a
    // passing misconfiguration), with the reason.
    for (receiver, reason) in [("downgrade", "tls"), ("untrusted", "certificate")] {
        let error = failed_attempt(&server.data_dir().join("outrider.db"), receiver).await;
        assert!(error.to_lowercase().contains(reason), "{receiver}: {error}");
    }
    assert_eq!(
        starttls.messages().len(),
        1,
        "only the trusted receiver's mail"
    );
    assert!(
        plain_only.messages().is_empty(),
        "nothing went out in clear text"
    );
    server.stop().await;
}

/// The error of the first failed attempt of `receiver`'s delivery, which
/// must still be pending.
async fn failed_attempt(db: &Path, receiver: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let row: Option<(String, u32, Option<String>)> = rusqlite::Connection::open(db)
            .unwrap()
            .query_row(
                "SELECT state, attempts, last_error FROM notify_deliveries WHERE receiver = ?1",
                [receiver],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .ok();
        if let Some((state, attempts, Some(error))) = row
            && attempts >= 1
        {
            assert_eq!(state, "pending", "{receiver}: {error}");
            return error;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no attempt of {receiver}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
