//! Building rustls configurations from the PEM files a config or a URI names: the proxy's
//! listeners and pools, and federation's `amqps` links.
//!
//! Every configuration allows TLS 1.2 and 1.3 only and uses the `ring` provider explicitly, so
//! the result does not depend on which crypto provider other crates happen to enable. Errors
//! name the setting (`what`) and the file, so an operator knows which line to fix.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
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
    client_config_checking(roots, identity, what, NameCheck::Verify)
}

/// Whether a client checks that the server's certificate names the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameCheck {
    /// It must name the server (the host connected to, or the name given): the default.
    Verify,
    /// Any name in a certificate that chains to the roots is taken, and no SNI is sent: the
    /// Erlang client's `server_name_indication=disable`, for brokers whose certificates do not
    /// name the address they are reached at.
    ChainOnly,
}

/// [`client_config`], the server's name checked or not as `names` says.
pub fn client_config_checking(
    roots: RootCertStore,
    identity: Option<Identity<'_>>,
    what: &str,
    names: NameCheck,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError(format!("{what}: {e}")))?;
    let builder = match names {
        NameCheck::Verify => builder.with_root_certificates(roots),
        NameCheck::ChainOnly => {
            let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError(format!("{what}: {e}")))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(chain)))
        }
    };
    let mut config = match identity {
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
    config.enable_sni = names == NameCheck::Verify;
    Ok(Arc::new(config))
}

/// webpki's verification without its last step, the check of the name: webpki verifies the
/// chain to the roots first and the name after, so a certificate refused only for its name has
/// a good chain.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
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

    /// A CA called `ca_name` and a server certificate for `localhost` it signed: the trust anchor (DER) and the
    /// server's configuration.
    fn ca_and_server(ca_name: &str) -> (CertificateDer<'static>, Arc<rustls::ServerConfig>) {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name.push(DnType::CommonName, ca_name);
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        (ca.der().clone(), Arc::new(server))
    }

    /// A handshake in memory between `client`, connecting to `name`, and `server`.
    fn handshake(
        client: Arc<ClientConfig>,
        name: &str,
        server: Arc<rustls::ServerConfig>,
    ) -> Result<(), rustls::Error> {
        let name = ServerName::try_from(name.to_string()).unwrap();
        let mut c = rustls::ClientConnection::new(client, name)?;
        let mut s = rustls::ServerConnection::new(server)?;
        let mut wire = Vec::new();
        while c.is_handshaking() || s.is_handshaking() {
            wire.clear();
            c.write_tls(&mut wire).unwrap();
            s.read_tls(&mut wire.as_slice()).unwrap();
            // The server's error is what a refused client certificate would be; the client's
            // error is the one under test, carried to it by the server's next flight or alert.
            let _ = s.process_new_packets();
            wire.clear();
            s.write_tls(&mut wire).unwrap();
            c.read_tls(&mut wire.as_slice()).unwrap();
            c.process_new_packets()?;
        }
        Ok(())
    }

    fn trusting(anchor: &CertificateDer<'static>) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(anchor.clone()).unwrap();
        roots
    }

    #[test]
    fn chain_only_takes_any_name_but_still_verifies_the_chain() {
        let (anchor, server) = ca_and_server("dc1 CA");
        let (other_anchor, _) = ca_and_server("another CA");
        let config = |anchor, names| client_config_checking(trusting(anchor), None, "t", names);
        let verify = config(&anchor, NameCheck::Verify).unwrap();
        let chain_only = config(&anchor, NameCheck::ChainOnly).unwrap();
        assert!(verify.enable_sni && !chain_only.enable_sni);

        handshake(verify.clone(), "localhost", server.clone()).unwrap();
        let e = handshake(verify, "broker.dc1", server.clone()).unwrap_err();
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })
            ),
            "{e:?}"
        );
        handshake(chain_only.clone(), "broker.dc1", server.clone()).unwrap();
        handshake(chain_only, "10.0.0.5", server.clone()).unwrap();

        let stranger = config(&other_anchor, NameCheck::ChainOnly).unwrap();
        let e = handshake(stranger, "localhost", server).unwrap_err();
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
            ),
            "{e:?}"
        );
    }
}
