//! TLS for links' `amqps` URIs: the CA to verify the broker against and the client
//! certificate to present, from the files the URI's query names ([`crate::uri::TlsFiles`]).
//! Without `cacertfile` the system's trust store is used.

use crate::uri::AmqpUri;
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use std::io;
use std::path::Path;

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
pub(crate) fn read(param: &str, path: &Path) -> io::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("{param} {}: cannot read it ({e})", path.display()),
        )
    })
}
