//! The listener: TLS, and one JSON error body for every bad API request
//! (the agent connection cap: `dos.rs`).

use std::sync::Arc;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

use crate::helpers::{STEP, Server};

#[tokio::test]
async fn every_bad_api_request_gets_a_json_error_sentence() {
    let server = Server::start().await;
    let auth = format!("Bearer {}", server.admin_token);
    let auth = Some(auth.as_str());
    let check =
        json!({ "command": ["/bin/true"], "interval_secs": 10, "timeout_secs": 5 }).to_string();
    /// method, path, auth, content type, body, status, words of the error
    type Case<'a> = (
        &'a str,
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
        &'a [u8],
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        ("GET", "/api/v1/nothing", auth, None, b"", 404, "no route"),
        (
            "DELETE",
            "/api/v1/agents",
            auth,
            None,
            b"",
            405,
            "does not accept",
        ),
        (
            "PUT",
            "/api/v1/checks/x",
            auth,
            Some("application/json"),
            b"{\"command\": [",
            400,
            "request body",
        ),
        (
            "PUT",
            "/api/v1/checks/x",
            auth,
            Some("text/plain"),
            b"{}",
            400,
            "Content-Type",
        ),
        (
            "PUT",
            "/api/v1/checks/x",
            auth,
            Some("application/json"),
            br#"{"command": ["/bin/true"], "interval_secs": 10, "timeout_secs": 5, "colour": 1}"#,
            400,
            "colour",
        ),
        (
            "PUT",
            "/api/v1/checks/x",
            auth,
            Some("application/json"),
            br#"{"command": ["/bin/true"], "interval_secs": "ten", "timeout_secs": 5}"#,
            400,
            "interval_secs",
        ),
        (
            "PUT",
            "/api/v1/checks/Bad%20Name",
            auth,
            Some("application/json"),
            check.as_bytes(),
            400,
            "Bad Name",
        ),
        (
            "GET",
            "/api/v1/agents/not-a-fingerprint",
            auth,
            None,
            b"",
            400,
            "not-a-fingerprint",
        ),
        (
            "GET",
            "/api/v1/results/latest?agent=zz",
            auth,
            None,
            b"",
            400,
            "zz",
        ),
        (
            "GET",
            "/api/v1/results/latest?colour=1",
            auth,
            None,
            b"",
            400,
            "colour",
        ),
        (
            "GET",
            "/api/v1/agents",
            Some("Bearer wrong"),
            None,
            b"",
            401,
            "not valid",
        ),
        (
            "GET",
            "/api/v1/agents",
            None,
            None,
            b"",
            401,
            "Authorization",
        ),
        (
            "PUT",
            "/api/v1/plugins/BAD",
            auth,
            None,
            b"#!/bin/sh",
            400,
            "BAD",
        ),
        (
            "PUT",
            "/api/v1/plugins/empty",
            auth,
            None,
            b"",
            400,
            "empty",
        ),
        (
            "DELETE",
            "/api/v1/plugins/none",
            auth,
            None,
            b"",
            404,
            "none",
        ),
        (
            "DELETE",
            "/api/v1/checks/none",
            auth,
            None,
            b"",
            404,
            "none",
        ),
    ];
    for (method, path, auth, content_type, body, want, words) in cases {
        let (status, answer) = server
            .http_raw(method, path, auth, content_type, body)
            .await;
        assert_eq!(status, want, "{method} {path}: {answer}");
        let error = answer["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path}: {answer} is not an error body"));
        assert!(
            error.contains(words),
            "{method} {path}: {error:?} lacks {words:?}"
        );
    }
    // Nothing was created by the refused requests.
    assert_eq!(server.admin("GET", "/api/v1/checks", None).await, json!([]));
    server.stop().await;
}

#[tokio::test]
async fn the_installer_is_served() {
    let server = Server::start().await;
    let (status, body) = server.http("GET", "/install.sh", None, None).await;
    assert_eq!(status, 200);
    assert!(body.as_str().unwrap().starts_with("#!/bin/sh"), "{body}");
    server.stop().await;
}

#[tokio::test]
async fn tls_is_served_from_the_given_certificate_and_key() {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let server = Server::start_tls(&cert_path, &key_path).await;

    // A plain-HTTP client gets no answer, and does not disturb the server.
    let mut plain = TcpStream::connect(server.addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(STEP, plain.read_to_end(&mut buf))
        .await
        .unwrap();
    assert!(!String::from_utf8_lossy(&buf).contains("ok"));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let exchange = async {
        let tcp = TcpStream::connect(server.addr).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await?;
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        tls.read_to_end(&mut buf).await?;
        std::io::Result::Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    let answer = tokio::time::timeout(STEP, exchange).await.unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok\n"), "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn plain_http_on_a_network_address_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config =
        outrider_server::ServerConfig::new(dir.path().to_owned(), "0.0.0.0:8470".parse().unwrap());
    let err = outrider_server::run(config, listener, Default::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--insecure-plain-http"), "{err:#}");
}
