//! Building rustls configurations from the PEM files a config names.
//!
//! Both directions allow TLS 1.2 and 1.3 only and use the `ring` provider explicitly, so the result
//! does not depend on which crypto provider other crates happen to enable.

use crate::config::{ClientTls, ServerTls};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::Path;
use std::sync::Arc;

/// A TLS setting that cannot be used, naming the file and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
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

fn key(path: &Path, what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        TlsError(format!(
            "{what} {}: no usable PEM private key: {e}",
            path.display()
        ))
    })
}

fn roots(path: &Path, what: &str) -> Result<RootCertStore, TlsError> {
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

/// The rustls server config of a TLS listener.
pub fn server_config(tls: &ServerTls, field: &str) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certs(&tls.cert, &format!("{field}.cert"))?;
    let key = key(&tls.key, &format!("{field}.key"))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError(format!("{field}: {e}")))?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let roots = roots(ca, &format!("{field}.client_ca"))?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError(format!("{field}.client_ca {}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(chain, key).map_err(|e| {
        TlsError(format!(
            "{field}: certificate {} and key {} do not form a usable pair: {e}",
            tls.cert.display(),
            tls.key.display()
        ))
    })?;
    Ok(Arc::new(config))
}

/// The rustls client config for a pool that speaks TLS to its brokers.
pub fn client_config(tls: &ClientTls, field: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = roots(&tls.ca, &format!("{field}.ca"))?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError(format!("{field}: {e}")))?
        .with_root_certificates(roots);
    let config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key_path)) => builder
            .with_client_auth_cert(
                certs(cert, &format!("{field}.cert"))?,
                key(key_path, &format!("{field}.key"))?,
            )
            .map_err(|e| {
                TlsError(format!(
                    "{field}: client certificate and key do not form a usable pair: {e}"
                ))
            })?,
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(TlsError(format!(
                "{field}: set both cert and key, or neither"
            )))
        }
    };
    Ok(Arc::new(config))
}

/// The name to verify in a broker's certificate: `server_name`, or the host part of `addr`.
pub fn server_name(tls: &ClientTls, addr: &str) -> Result<ServerName<'static>, TlsError> {
    let host = match &tls.server_name {
        Some(name) => name.clone(),
        None => crate::addr::split_host_port(addr)
            .map(|(h, _)| h.to_string())
            .map_err(TlsError)?,
    };
    ServerName::try_from(host.clone())
        .map_err(|e| TlsError(format!("TLS server name {host:?}: {e}")))
}
