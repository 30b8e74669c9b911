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
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
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
