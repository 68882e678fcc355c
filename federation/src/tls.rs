//! TLS for links' `amqps` URIs: the CA to verify the broker against, the client certificate
//! to present and the name to verify, from what the URI's query names
//! ([`crate::uri::TlsFiles`]). Without `cacertfile` the system's trust store is used.
//!
//! One rustls configuration serves both kinds of connection: lapin's, which declares and
//! checks, and setgate's own hot-path ones (over tokio-rustls, whose socket stays setgate's:
//! see `wire::lazy`). See `connect`.

use crate::uri::{AmqpUri, ServerNameCheck};
use setgate_tls::{Identity, NameCheck, TlsError};
use std::sync::Arc;

/// The rustls configuration of connections to `uri` (an `amqps` one), its files read now
/// (each connect, so a renewed certificate is used at the next reconnect).
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
    let names = match files.server_name {
        ServerNameCheck::Disabled => NameCheck::ChainOnly,
        ServerNameCheck::Host | ServerNameCheck::Name(_) => NameCheck::Verify,
    };
    setgate_tls::client_config_checking(roots, identity, "amqps", names)
}

/// The name a TLS connection to `host` (the URI's) verifies and sends in SNI:
/// `server_name_indication`'s when the URI names one. With `disable` it is the host still,
/// which the configuration neither sends nor checks.
pub(crate) fn server_name<'a>(uri: &'a AmqpUri, host: &'a str) -> &'a str {
    match &uri.tls_files().server_name {
        ServerNameCheck::Name(name) => name,
        ServerNameCheck::Host | ServerNameCheck::Disabled => host,
    }
}
