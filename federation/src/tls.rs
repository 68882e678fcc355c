//! TLS for links' `amqps` URIs: the CA to verify the broker against and the client
//! certificate to present, from the files the URI's query names ([`crate::uri::TlsFiles`]).
//! Without `cacertfile` the system's trust store is used.
//!
//! Two configurations from the same files: lapin's for the connection that declares and
//! checks ([`tls_config`]), and rustls' for setgate's own hot-path connections
//! ([`client_config`], over tokio-rustls, whose socket stays setgate's: see `wire::lazy`).

use crate::uri::AmqpUri;
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use setgate_tls::{Identity, TlsError};
use std::io;
use std::path::Path;
use std::sync::Arc;

/// The rustls configuration of setgate's own connections to `uri` (an `amqps` one), its
/// files read now, as [`tls_config`]'s are.
pub(crate) fn client_config(uri: &AmqpUri) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let files = uri.tls_files();
    let roots = match &files.ca {
        Some(ca) => setgate_tls::roots(ca, "cacertfile")?,
        None => setgate_tls::system_roots("amqps")?,
    };
    let identity = files.cert.as_ref().map(|(cert, key)| Identity {
        cert: (cert, "certfile"),
        key: (key, "keyfile"),
    });
    setgate_tls::client_config(roots, identity, "amqps")
}

/// The TLS configuration `uri` asks for, its files read now (each connect, so a renewed
/// certificate is used at the next reconnect).
pub(crate) fn tls_config(uri: &AmqpUri) -> io::Result<OwnedTLSConfig> {
    let files = uri.tls_files();
    let cert_chain = match &files.ca {
        Some(ca) => Some(String::from_utf8_lossy(&read("cacertfile", ca)?).into_owned()),
        None => None,
    };
    let identity = match &files.cert {
        Some((cert, key)) => Some(OwnedIdentity::PKCS8 {
            pem: read("certfile", cert)?,
            key: read("keyfile", key)?,
        }),
        None => None,
    };
    Ok(OwnedTLSConfig {
        identity,
        cert_chain,
    })
}

/// Reads a file a URI names, the error naming the parameter and the path.
fn read(param: &str, path: &Path) -> io::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("{param} {}: cannot read it ({e})", path.display()),
        )
    })
}
