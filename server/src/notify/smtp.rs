//! One SMTP send over a connection this module opens itself, so that it can
//! set `TCP_NODELAY`: lettre writes the message body and its terminating
//! `.` as two writes, and with Nagle's algorithm the second waits for the
//! server's delayed ACK of the first — 40 ms of every mail on a LAN
//! (measured with bench/notify.sh: p50 45 ms before, see
//! docs/benchmarks.md). lettre still speaks the protocol
//! (`AsyncSmtpConnection`): EHLO, STARTTLS, AUTH, MAIL/RCPT/DATA, QUIT.
//!
//! - `none`: plain TCP (loopback only, checked when the receiver is added).
//! - `starttls`: plain TCP, then STARTTLS is *required*: a server that does
//!   not offer it fails the send, nothing goes out in clear text.
//! - `tls`: TLS from the first byte (rustls with ring; the bundled web PKI
//!   roots plus the receiver's `ca_pem`).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{
    AsyncSmtpConnection, AsyncTokioStream, Certificate, TlsParameters,
};
use lettre::transport::smtp::extension::ClientId;
use outrider_protocol::api::SmtpTls;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use super::policy::Outcome;

/// Where and how to send.
#[derive(Debug)]
pub struct Target<'a> {
    pub host: &'a str,
    pub port: u16,
    pub tls: SmtpTls,
    pub credentials: Option<Credentials>,
    pub ca_pem: Option<&'a str>,
}

/// Sends `mail` within `timeout`. SMTP 5xx answers (bad recipient,
/// refused sender) are permanent; everything else is retried.
pub async fn send(target: &Target<'_>, mail: &lettre::Message, timeout: Duration) -> Outcome {
    match tokio::time::timeout(timeout, send_inner(target, mail)).await {
        Ok(Ok(())) => Outcome::Accepted,
        Ok(Err(Failure::Smtp(e))) if e.is_permanent() => Outcome::Permanent(format!("SMTP: {e}")),
        Ok(Err(Failure::Smtp(e))) => Outcome::Retry {
            after: None,
            error: format!("SMTP: {e}"),
        },
        Ok(Err(Failure::Connect(e))) => Outcome::Retry {
            after: None,
            error: format!("SMTP {}:{}: {e}", target.host, target.port),
        },
        Ok(Err(Failure::Config(e))) => Outcome::Permanent(e),
        Err(_) => Outcome::Retry {
            after: None,
            error: format!(
                "SMTP {}:{}: no answer within {timeout:?}",
                target.host, target.port
            ),
        },
    }
}

enum Failure {
    /// The SMTP exchange failed (lettre says whether permanently).
    Smtp(lettre::transport::smtp::Error),
    /// No connection, or the TLS handshake of implicit TLS failed.
    Connect(String),
    /// The receiver's settings cannot work (a bad CA).
    Config(String),
}

impl From<lettre::transport::smtp::Error> for Failure {
    fn from(e: lettre::transport::smtp::Error) -> Self {
        Failure::Smtp(e)
    }
}

async fn send_inner(target: &Target<'_>, mail: &lettre::Message) -> Result<(), Failure> {
    let tcp = TcpStream::connect((target.host, target.port))
        .await
        .map_err(|e| Failure::Connect(e.to_string()))?;
    // The point of this module (see the module docs).
    tcp.set_nodelay(true)
        .map_err(|e| Failure::Connect(e.to_string()))?;
    let hello = ClientId::default();
    let mut conn = match target.tls {
        SmtpTls::None => AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &hello).await?,
        SmtpTls::Starttls => {
            let mut conn =
                AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &hello).await?;
            let mut params = TlsParameters::builder(target.host.to_owned());
            if let Some(pem) = target.ca_pem {
                let ca = Certificate::from_pem(pem.as_bytes())
                    .map_err(|e| Failure::Config(format!("ca_pem: {e}")))?;
                params = params.add_root_certificate(ca);
            }
            let params = params
                .build_rustls()
                .map_err(|e| Failure::Config(format!("TLS settings: {e}")))?;
            conn.starttls(params, &hello).await?;
            conn
        }
        SmtpTls::Tls => {
            let config = client_config(target.ca_pem).map_err(Failure::Config)?;
            let name = ServerName::try_from(target.host.to_owned())
                .map_err(|e| Failure::Config(format!("host {:?}: {e}", target.host)))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| Failure::Connect(format!("TLS: {e}")))?;
            AsyncSmtpConnection::connect_with_transport(Box::new(TlsTcp(tls)), &hello).await?
        }
    };
    if let Some(credentials) = &target.credentials {
        conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials)
            .await?;
    }
    let sent = conn.send(mail.envelope(), &mail.formatted()).await;
    // The mail is accepted once DATA is answered; QUIT is politeness.
    if sent.is_ok() {
        let _ = conn.quit().await;
    } else {
        conn.abort().await;
    }
    sent.map(drop).map_err(Failure::Smtp)
}

/// rustls with ring, the bundled web PKI roots and `ca_pem`. Also the TLS
/// of the PostgreSQL store backend (`crate::backend::PgTls::with_ca_pem`).
pub(crate) fn client_config(ca_pem: Option<&str>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = ca_pem {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|e| format!("ca_pem: {e}"))?;
            roots.add(cert).map_err(|e| format!("ca_pem: {e}"))?;
        }
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS settings: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A TLS stream lettre can speak SMTP over.
#[derive(Debug)]
struct TlsTcp(tokio_rustls::client::TlsStream<TcpStream>);

impl AsyncTokioStream for TlsTcp {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.0.get_ref().0.peer_addr()
    }
}

impl AsyncRead for TlsTcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsTcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
