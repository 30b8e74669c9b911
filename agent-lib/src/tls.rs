//! The TLS client configuration of the server connection.
//!
//! rustls with the `ring` provider (no C toolchain beyond ring's, no
//! aws-lc). Trusted roots, all three added together:
//! 1. the operating system's store (`rustls-native-certs`), so an operator's
//!    corporate CA installed system-wide just works;
//! 2. the bundled Mozilla roots (`webpki-roots`), so a minimal container
//!    without a CA bundle still reaches a publicly certified server;
//! 3. `tls_ca_file` from agent.toml (a private CA, and the tests).
//!
//! The certificate is always verified against the *host name* of
//! `server_url`, also when the DNS fallback dials a remembered IP address:
//! the connection code passes the URL (not the IP) to the TLS handshake, so
//! SNI and verification use the name.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

use crate::error::AgentError;
use crate::host::HostHooks;

/// Builds the client configuration. Certificates of the system store that
/// rustls cannot parse are skipped (and counted in the log); failing to read
/// the system store at all only logs, since the bundled roots remain.
///
/// Fails when rustls cannot build a configuration from the ring provider or
/// one of `extra_roots` is unusable as a trust anchor.
pub fn client_config(
    extra_roots: &[CertificateDer<'static>],
    hooks: &dyn HostHooks,
) -> Result<Arc<ClientConfig>, AgentError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    if !native.errors.is_empty() {
        hooks.log(
            crate::host::Level::Warn,
            &format!(
                "reading the system's CA certificates partly failed ({}); the bundled roots still apply",
                native.errors[0]
            ),
        );
    }
    let (_, skipped) = roots.add_parsable_certificates(native.certs);
    if skipped > 0 {
        hooks.log(
            crate::host::Level::Debug,
            &format!("skipped {skipped} unparsable system CA certificates"),
        );
    }
    for cert in extra_roots {
        roots.add(cert.clone()).map_err(AgentError::TlsSetup)?;
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(AgentError::TlsSetup)?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}
