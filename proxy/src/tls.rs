//! The rustls configurations of the proxy's TLS listeners and pools, from the PEM files a config
//! names (read by `setgate-tls`, shared with federation).

use crate::config::{ClientTls, ServerTls};
use rustls::pki_types::ServerName;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ServerConfig};
use setgate_tls::{certs, key, provider, roots, Identity, NameCheck, VERSIONS};
use std::sync::Arc;

pub use setgate_tls::TlsError;

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
    if !tls.verify_name && tls.server_name.is_some() {
        return Err(TlsError(format!(
            "{field}: server_name is never checked with verify_name = false; drop one of them"
        )));
    }
    let roots = roots(&tls.ca, &format!("{field}.ca"))?;
    let (cert_field, key_field) = (format!("{field}.cert"), format!("{field}.key"));
    let identity = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => Some(Identity {
            cert: (cert, &cert_field),
            key: (key, &key_field),
        }),
        (None, None) => None,
        _ => {
            return Err(TlsError(format!(
                "{field}: set both cert and key, or neither"
            )))
        }
    };
    let names = if tls.verify_name {
        NameCheck::Verify
    } else {
        NameCheck::ChainOnly
    };
    setgate_tls::client_config_checking(roots, identity, field, names)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_to_verify_and_no_name_check_are_refused_together() {
        let tls = ClientTls {
            ca: "/nonexistent/ca.pem".into(),
            server_name: Some("rabbit.dc1".into()),
            verify_name: false,
            cert: None,
            key: None,
        };
        let e = client_config(&tls, "pool[0] (p).tls")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "pool[0] (p).tls: server_name is never checked with verify_name = false; drop one of \
             them"
        );
    }
}
