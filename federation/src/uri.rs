//! AMQP URIs whose password never leaves this module except to open a connection.
//!
//! A URI is kept exactly as configured (to connect with) next to two safe renderings: the
//! masked form `amqp://user:***@host:port/vhost` for logs, status and `setgate check`, and the
//! form without any credentials that goes into the `x-received-from` header.
//!
//! The query takes what lapin takes (`heartbeat`, `frame_max`, `channel_max`,
//! `connection_timeout`, `auth_mechanism`) and, for `amqps`, the TLS parameters as RabbitMQ's
//! federation and shovel plugins (the Erlang client) name them:
//! - `cacertfile`: the CA to verify the broker against; without it, the system's trust store;
//! - `certfile` and `keyfile`: a client certificate, PEM;
//! - `server_name_indication=<name>`: the name sent in SNI and the broker's certificate is
//!   verified against, instead of the URI's host; `server_name_indication=disable` sends no
//!   SNI and, as the Erlang client does, skips the name check (the chain is still verified);
//! - `verify=verify_peer` and `customize_hostname_check=https`: what setgate always does;
//! - `fail_if_no_peer_cert=true|false`: a server's option, which the Erlang client takes and
//!   has no effect on a client; accepted so the plugins' URIs work unchanged.
//!
//! Any other parameter is refused, `password` and `depth` with what to do instead: a TLS
//! option silently ignored would be a surprise at connect time.

use lapin::uri::AMQPUri;
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::path::PathBuf;

/// Query parameters lapin reads.
const LAPIN_PARAMS: [&str; 5] = [
    "heartbeat",
    "frame_max",
    "channel_max",
    "connection_timeout",
    "auth_mechanism",
];

/// The TLS files an `amqps` URI names, and its server name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// `cacertfile`: PEM CA certificates the broker's certificate must chain to.
    pub ca: Option<PathBuf>,
    /// `certfile` and `keyfile`: the client certificate and its key, both PEM.
    pub cert: Option<(PathBuf, PathBuf)>,
    /// `server_name_indication`.
    pub server_name: ServerNameCheck,
}

/// The name a TLS connection sends in SNI and verifies the broker's certificate against.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ServerNameCheck {
    /// The URI's host (no `server_name_indication`).
    #[default]
    Host,
    /// `server_name_indication=<name>`.
    Name(String),
    /// `server_name_indication=disable`: no SNI, and any name in a certificate the CA vouches
    /// for is accepted.
    Disabled,
}

/// One `amqp://` or `amqps://` URI from the config.
///
/// `Debug` and `Display` print the masked form. A URI that does not parse is still
/// deserialized (so `validate` can report every bad URI at once); [`AmqpUri::problem`] says why.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUri {
    raw: String,
    masked: String,
    anonymous: String,
    vhost: String,
    tls: TlsFiles,
    problem: Option<String>,
}

impl AmqpUri {
    /// Parses a URI. Never fails: a malformed URI records its problem.
    pub fn new(raw: impl Into<String>) -> AmqpUri {
        let raw = raw.into();
        match parse(&raw) {
            Ok(Parsed {
                masked,
                anonymous,
                vhost,
                tls,
            }) => AmqpUri {
                raw,
                masked,
                anonymous,
                vhost,
                tls,
                problem: None,
            },
            Err(problem) => AmqpUri {
                masked: mask_unparsed(&raw),
                anonymous: String::new(),
                vhost: String::new(),
                tls: TlsFiles::default(),
                raw,
                problem: Some(problem),
            },
        }
    }

    /// `amqp://user:***@host:port/vhost`: safe for logs, status, metrics and summaries.
    pub fn masked(&self) -> &str {
        &self.masked
    }

    /// `amqp://host:port/vhost` without user or password (the `uri` of `x-received-from`).
    pub fn without_credentials(&self) -> &str {
        &self.anonymous
    }

    /// The virtual host, decoded (`/` for `%2f`).
    pub fn vhost(&self) -> &str {
        &self.vhost
    }

    /// Whether it is an `amqps` URI.
    pub fn is_tls(&self) -> bool {
        self.raw
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("amqps://"))
    }

    /// The TLS files its query names (none for `amqp`).
    pub fn tls_files(&self) -> &TlsFiles {
        &self.tls
    }

    /// Why the URI is unusable, or `None` when it parses.
    pub fn problem(&self) -> Option<&str> {
        self.problem.as_deref()
    }

    /// The URI with its password, for `Connection::connect` only.
    pub(crate) fn expose(&self) -> &str {
        &self.raw
    }
}

impl fmt::Debug for AmqpUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.masked)
    }
}

impl fmt::Display for AmqpUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked)
    }
}

impl<'de> Deserialize<'de> for AmqpUri {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(AmqpUri::new)
    }
}

/// What [`parse`] gets from a URI.
struct Parsed {
    masked: String,
    anonymous: String,
    vhost: String,
    tls: TlsFiles,
}

fn parse(raw: &str) -> Result<Parsed, String> {
    let url = url::Url::parse(raw).map_err(|e| format!("not a URI ({e})"))?;
    if url.scheme() != "amqp" && url.scheme() != "amqps" {
        return Err(format!(
            "scheme must be amqp or amqps, not {:?}",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    // lapin's own parser decides what it can connect to; agree with it.
    let amqp: AMQPUri = raw
        .parse()
        .map_err(|e: String| format!("not an AMQP URI ({e})"))?;
    let tls = tls_files(&url)?;
    let mut masked = url.clone();
    if url.password().is_some() {
        let _ = masked.set_password(Some("***"));
    }
    let mut anonymous = url.clone();
    let _ = anonymous.set_password(None);
    let _ = anonymous.set_username("");
    anonymous.set_query(None);
    Ok(Parsed {
        masked: masked.to_string(),
        anonymous: anonymous.to_string(),
        vhost: amqp.vhost,
        tls,
    })
}

/// The TLS files of the query; refuses parameters neither lapin nor setgate reads.
fn tls_files(url: &url::Url) -> Result<TlsFiles, String> {
    let (mut ca, mut cert, mut key) = (None, None, None);
    let mut server_name = ServerNameCheck::Host;
    let mut tls_only = None;
    for (k, v) in url.query_pairs() {
        let file = || Some(PathBuf::from(v.as_ref()));
        if !LAPIN_PARAMS.contains(&k.as_ref()) {
            tls_only.get_or_insert_with(|| k.to_string());
        }
        match k.as_ref() {
            k if LAPIN_PARAMS.contains(&k) => {}
            "cacertfile" => ca = file(),
            "certfile" => cert = file(),
            "keyfile" => key = file(),
            "server_name_indication" if v == "disable" => server_name = ServerNameCheck::Disabled,
            "server_name_indication" => {
                rustls::pki_types::ServerName::try_from(v.as_ref()).map_err(|e| {
                    format!("server_name_indication={v} is not a DNS name or an IP address ({e})")
                })?;
                server_name = ServerNameCheck::Name(v.to_string());
            }
            "verify" if v == "verify_peer" => {}
            "verify" => {
                return Err(format!(
                    "verify={v} is not supported: setgate always verifies the broker \
                     (verify_peer); name its CA with cacertfile, and when the certificate \
                     does not name the host, name it with server_name_indication=<name> (or \
                     skip the name check with server_name_indication=disable)"
                ))
            }
            "customize_hostname_check" if v == "https" => {}
            "fail_if_no_peer_cert" if v == "true" || v == "false" => {}
            "fail_if_no_peer_cert" => {
                return Err(format!("fail_if_no_peer_cert={v}: write true or false"))
            }
            "password" => {
                return Err(
                    "password (of an encrypted keyfile) is not supported: setgate reads \
                            unencrypted PEM keys; decrypt it (openssl pkey -in key.pem -out \
                            plain.pem), keep it readable by setgate only, and drop password"
                        .into(),
                )
            }
            "depth" => {
                return Err(
                    "depth is not supported: setgate verifies the broker's chain to \
                            cacertfile whatever its length (up to webpki's own limit); drop \
                            depth"
                        .into(),
                )
            }
            other => {
                return Err(format!(
                    "query parameter {other:?} is not one setgate reads; it reads {}, and for \
                     amqps cacertfile, certfile, keyfile, server_name_indication, \
                     verify=verify_peer, customize_hostname_check=https and \
                     fail_if_no_peer_cert",
                    LAPIN_PARAMS.join(", ")
                ))
            }
        }
    }
    if let Some(param) = tls_only.filter(|_| url.scheme() != "amqps") {
        return Err(format!(
            "names the TLS parameter {param} but is not amqps://; write amqps://"
        ));
    }
    let cert = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => {
            return Err(
                "names only one of certfile and keyfile; a client certificate needs both".into(),
            )
        }
    };
    Ok(TlsFiles {
        ca,
        cert,
        server_name,
    })
}

/// Best-effort masking of something that is not even a URI: hide everything between `://` and
/// the last `@`, keeping the user name when there is one.
fn mask_unparsed(raw: &str) -> String {
    let start = raw.find("://").map_or(0, |s| s + 3);
    match raw.rfind('@') {
        Some(at) if at >= start => {
            let user = raw[start..at].split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &raw[..start], &raw[at..])
        }
        _ => raw.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn masks_the_password_everywhere() {
        let u = AmqpUri::new("amqp://fed:s3cret@dc1-a:5672/%2f");
        assert_eq!(u.masked(), "amqp://fed:***@dc1-a:5672/%2f");
        assert_eq!(format!("{u}"), "amqp://fed:***@dc1-a:5672/%2f");
        assert_eq!(format!("{u:?}"), "\"amqp://fed:***@dc1-a:5672/%2f\"");
        assert_eq!(u.without_credentials(), "amqp://dc1-a:5672/%2f");
        assert_eq!(u.vhost(), "/");
        assert_eq!(u.problem(), None);
        assert_eq!(u.expose(), "amqp://fed:s3cret@dc1-a:5672/%2f");
    }

    #[test]
    fn keeps_user_without_password_and_query() {
        let u = AmqpUri::new("amqps://fed@dc1:5671/prod?heartbeat=10");
        assert_eq!(u.masked(), "amqps://fed@dc1:5671/prod?heartbeat=10");
        assert_eq!(u.without_credentials(), "amqps://dc1:5671/prod");
        assert_eq!(u.vhost(), "prod");
    }

    #[test]
    fn password_with_special_characters_is_hidden() {
        let u = AmqpUri::new("amqp://fed:p%40ss%3Aw@h:5672/%2f");
        assert!(!u.masked().contains("ss"), "{}", u.masked());
        assert!(!format!("{u:?}").contains("p%40"));
    }

    #[test]
    fn bad_uris_record_a_problem_and_stay_masked() {
        let u = AmqpUri::new("http://fed:secret@h:5672/");
        assert_eq!(
            u.problem(),
            Some("scheme must be amqp or amqps, not \"http\"")
        );
        assert!(!format!("{u:?}").contains("secret"));
        let u = AmqpUri::new("fed:secret@nohost");
        assert_eq!(
            u.problem(),
            Some("scheme must be amqp or amqps, not \"fed\"")
        );
        assert_eq!(u.masked(), "fed:***@nohost");
        let u = AmqpUri::new("dc1-a:5672");
        assert!(u.problem().is_some());
        let u = AmqpUri::new("no uri at all");
        assert!(
            u.problem().unwrap().starts_with("not a URI"),
            "{:?}",
            u.problem()
        );
        let u = AmqpUri::new("amqp://fed:secret@h:notaport/");
        assert!(u.problem().is_some());
        assert!(!u.masked().contains("secret"), "{}", u.masked());
    }

    #[test]
    fn amqps_names_its_tls_files_as_the_plugins_do() {
        let u = AmqpUri::new(
            "amqps://fed:secret@dc1:5671/prod?heartbeat=10&cacertfile=/etc/ca.pem\
             &certfile=/etc/c.pem&keyfile=/etc/c.key&verify=verify_peer",
        );
        assert_eq!(u.problem(), None);
        let tls = u.tls_files();
        assert_eq!(tls.ca.as_deref(), Some(Path::new("/etc/ca.pem")));
        let (cert, key) = tls.cert.clone().unwrap();
        assert_eq!(
            (cert.to_str(), key.to_str()),
            (Some("/etc/c.pem"), Some("/etc/c.key"))
        );
        assert!(u.is_tls() && !AmqpUri::new("amqp://h/").is_tls());
        // No path of ours goes into x-received-from.
        assert_eq!(u.without_credentials(), "amqps://dc1:5671/prod");
        assert_eq!(AmqpUri::new("amqps://h/").tls_files(), &TlsFiles::default());
        assert_eq!(tls.server_name, ServerNameCheck::Host);
    }

    /// The URIs of RabbitMQ's documentation and of deployed shovels work unchanged.
    #[test]
    fn the_plugins_tls_parameters_are_taken() {
        let u = AmqpUri::new(
            "amqps://myhost?cacertfile=/ca.pem&certfile=/c.pem&keyfile=/c.key\
             &verify=verify_peer&server_name_indication=myhost",
        );
        assert_eq!(u.problem(), None);
        assert_eq!(
            u.tls_files().server_name,
            ServerNameCheck::Name("myhost".into())
        );
        let u = AmqpUri::new(
            "amqps://10.0.0.5:5671/%2f?cacertfile=/ca.pem&verify=verify_peer\
             &fail_if_no_peer_cert=true&server_name_indication=disable\
             &customize_hostname_check=https&auth_mechanism=external",
        );
        assert_eq!(u.problem(), None);
        assert_eq!(u.tls_files().server_name, ServerNameCheck::Disabled);
        let u = AmqpUri::new("amqps://h/?server_name_indication=10.1.2.3");
        assert_eq!(
            u.tls_files().server_name,
            ServerNameCheck::Name("10.1.2.3".into())
        );
    }

    #[test]
    fn query_parameters_nobody_reads_are_refused_with_what_is_read() {
        let problem = |raw: &str| AmqpUri::new(raw).problem().map(str::to_string);
        let p = problem("amqps://h/?cacertfil=/ca.pem").unwrap();
        assert!(
            p.starts_with(
                "query parameter \"cacertfil\" is not one setgate reads; it reads heartbeat,"
            ),
            "{p}"
        );
        assert!(p.contains("cacertfile, certfile, keyfile"), "{p}");
        let p = problem("amqp://h/?cacertfile=/ca.pem").unwrap();
        assert!(
            p.contains("TLS parameter cacertfile but is not amqps://"),
            "{p}"
        );
        let p = problem("amqp://h/?heartbeat=5&server_name_indication=disable").unwrap();
        assert!(
            p.contains("server_name_indication but is not amqps://"),
            "{p}"
        );
        let p = problem("amqps://h/?keyfile=/k.pem&certfile=/c.pem&password=x").unwrap();
        assert!(p.starts_with("password (of an encrypted keyfile)"), "{p}");
        assert!(p.contains("openssl pkey"), "{p}");
        let p = problem("amqps://h/?depth=5").unwrap();
        assert!(p.starts_with("depth is not supported"), "{p}");
        let p = problem("amqps://h/?fail_if_no_peer_cert=yes").unwrap();
        assert_eq!(p, "fail_if_no_peer_cert=yes: write true or false");
        let p = problem("amqps://h/?customize_hostname_check=none").unwrap();
        assert!(p.contains("customize_hostname_check=https"), "{p}");
        let p = problem("amqps://h/?server_name_indication=a%20b").unwrap();
        assert!(
            p.starts_with("server_name_indication=a b is not a DNS name"),
            "{p}"
        );
        let p = problem("amqps://h/?certfile=/c.pem").unwrap();
        assert!(p.contains("needs both"), "{p}");
        let p = problem("amqps://h/?verify=verify_none").unwrap();
        assert!(p.starts_with("verify=verify_none is not supported"), "{p}");
        assert_eq!(
            problem("amqp://h/?heartbeat=5&connection_timeout=3000"),
            None
        );
    }
}
