//! Building rustls configurations from the PEM files a config or a URI names: the proxy's
//! listeners and pools, and federation's `amqps` links.
//!
//! Every configuration allows TLS 1.2 and 1.3 only and uses the `ring` provider explicitly, so
//! the result does not depend on which crypto provider other crates happen to enable. Errors
//! name the setting (`what`) and the file, so an operator knows which line to fix.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use std::path::Path;
use std::sync::Arc;

/// A TLS setting that cannot be used, naming the setting, the file and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

/// The crypto provider of every configuration.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The protocol versions every configuration allows.
pub const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The PEM certificates of `path` (at least one), for the setting `what`.
pub fn certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| {
            TlsError(format!(
                "{what} {}: cannot read PEM certificates: {e}",
                path.display()
            ))
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| {
            TlsError(format!(
                "{what} {}: bad PEM certificate: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "{what} {}: no PEM certificate found (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(certs)
}

/// The PEM private key of `path` (PKCS#8, PKCS#1 or SEC1), for the setting `what`.
pub fn key(path: &Path, what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        TlsError(format!(
            "{what} {}: no usable PEM private key: {e}",
            path.display()
        ))
    })
}

/// The CA certificates of `path` as trust anchors, for the setting `what`.
pub fn roots(path: &Path, what: &str) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certs(path, what)? {
        store.add(cert).map_err(|e| {
            TlsError(format!(
                "{what} {}: not a usable CA certificate: {e}",
                path.display()
            ))
        })?;
    }
    Ok(store)
}

/// The system's trust store (what `openssl` and browsers on this machine trust), for a
/// setting that names no CA.
pub fn system_roots(what: &str) -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    store.add_parsable_certificates(found.certs);
    if store.is_empty() {
        return Err(TlsError(format!(
            "{what}: no CA is named and the system trust store has no usable certificate \
             ({} errors); name the broker's CA",
            found.errors.len()
        )));
    }
    Ok(store)
}

/// A client's certificate chain (`cert`) and key (`key`), each named by its setting.
pub struct Identity<'a> {
    /// The PEM certificate chain's file, and the setting that names it.
    pub cert: (&'a Path, &'a str),
    /// The PEM private key's file, and the setting that names it.
    pub key: (&'a Path, &'a str),
}

/// A client configuration verifying servers against `roots` and presenting `identity` when
/// one is given; `what` names the setting in errors.
pub fn client_config(
    roots: RootCertStore,
    identity: Option<Identity<'_>>,
    what: &str,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError(format!("{what}: {e}")))?
        .with_root_certificates(roots);
    let config = match identity {
        Some(id) => builder
            .with_client_auth_cert(certs(id.cert.0, id.cert.1)?, key(id.key.0, id.key.1)?)
            .map_err(|e| {
                TlsError(format!(
                    "{what}: client certificate {} and key {} do not form a usable pair: {e}",
                    id.cert.0.display(),
                    id.key.0.display()
                ))
            })?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_setting_and_the_file() {
        let missing = Path::new("/nonexistent/ca.pem");
        let e = roots(missing, "cacertfile").unwrap_err().to_string();
        assert!(
            e.starts_with("cacertfile /nonexistent/ca.pem: cannot read"),
            "{e}"
        );

        let dir = std::env::temp_dir().join(format!("setgate-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = certs(&empty, "tls.cert").unwrap_err().to_string();
        assert!(e.contains("no PEM certificate found"), "{e}");
        let e = key(&empty, "tls.key").unwrap_err().to_string();
        assert!(
            e.starts_with("tls.key ") && e.contains("no usable PEM private key"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
