//! Which certificates an `https://` update repository may present: the
//! operating system's store plus the operator's own CA (`tls_ca_file` of
//! agent.toml), the same roots the agent library trusts for the server
//! connection (agent-lib/src/tls.rs), minus the bundled Mozilla list.
//!
//! Why no bundled list here: the stub carries this code and can never be
//! updated, so it stays small (docs/benchmarks.md, "The stub since then"),
//! and a host that fetched the installer over `https://` with `curl` has a
//! system store. `ureq` is built with its `native-certs` feature only so
//! that its unused default configuration does not link the bundled list;
//! the configuration used is always the one built here.

use std::path::Path;
use std::sync::Arc;

pub use rustls::ClientConfig;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tracing::{debug, warn};

use crate::UpdateError;

/// The client configuration for update downloads: the system's roots and
/// `extra_roots`.
///
/// Fails when one of `extra_roots` is not usable as a trust anchor. A
/// system store that cannot be read only logs: `extra_roots` may be all the
/// repository needs.
pub fn client_config(
    extra_roots: &[CertificateDer<'static>],
) -> Result<Arc<ClientConfig>, UpdateError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    if let Some(first) = native.errors.first() {
        warn!("reading the system's CA certificates partly failed: {first}");
    }
    let (_, skipped) = roots.add_parsable_certificates(native.certs);
    if skipped > 0 {
        debug!("skipped {skipped} unparsable system CA certificates");
    }
    for cert in extra_roots {
        roots.add(cert.clone()).map_err(|e| UpdateError::TlsSetup {
            reason: format!("an extra CA certificate is not a usable trust anchor: {e}"),
        })?;
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| UpdateError::TlsSetup {
                reason: e.to_string(),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Every certificate of a PEM file (`tls_ca_file`).
///
/// Fails when the file cannot be read, a PEM block is malformed, or it holds
/// no certificate at all; the message says which.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("holds no `BEGIN CERTIFICATE` block".into());
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_files_are_read_or_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".into()]).unwrap();
        let good = dir.path().join("good.pem");
        let two = format!("{}{}", ca.cert.pem(), ca.cert.pem());
        std::fs::write(&good, &two).unwrap();
        assert_eq!(read_ca_file(&good).unwrap().len(), 2);
        assert!(client_config(&read_ca_file(&good).unwrap()).is_ok());

        let cases = [
            ("missing.pem", None, "cannot read"),
            (
                "empty.pem",
                Some("no certificate here\n"),
                "holds no `BEGIN CERTIFICATE` block",
            ),
            (
                "broken.pem",
                Some("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n"),
                "not valid PEM",
            ),
        ];
        for (name, text, want) in cases {
            let path = dir.path().join(name);
            if let Some(text) = text {
                std::fs::write(&path, text).unwrap();
            }
            let err = read_ca_file(&path).unwrap_err();
            assert!(err.starts_with(want), "{name}: {err}");
        }
    }

    #[test]
    fn a_certificate_that_is_no_trust_anchor_is_refused() {
        let err =
            client_config(&[CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00])]).unwrap_err();
        assert!(matches!(err, UpdateError::TlsSetup { .. }), "{err:?}");
    }
}
