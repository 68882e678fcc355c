//! AMQP URIs whose password never leaves this module except to open a connection.
//!
//! A URI is kept exactly as configured (to connect with) next to two safe renderings: the
//! masked form `amqp://user:***@host:port/vhost` for logs, status and `setgate check`, and the
//! form without any credentials that goes into the `x-received-from` header.

use lapin::uri::AMQPUri;
use serde::{Deserialize, Deserializer};
use std::fmt;

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
    problem: Option<String>,
}

impl AmqpUri {
    /// Parses a URI. Never fails: a malformed URI records its problem.
    pub fn new(raw: impl Into<String>) -> AmqpUri {
        let raw = raw.into();
        match parse(&raw) {
            Ok((masked, anonymous, vhost)) => AmqpUri {
                raw,
                masked,
                anonymous,
                vhost,
                problem: None,
            },
            Err(problem) => AmqpUri {
                masked: mask_unparsed(&raw),
                anonymous: String::new(),
                vhost: String::new(),
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

/// Returns (masked, without credentials, vhost).
fn parse(raw: &str) -> Result<(String, String, String), String> {
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
    let mut masked = url.clone();
    if url.password().is_some() {
        let _ = masked.set_password(Some("***"));
    }
    let mut anonymous = url.clone();
    let _ = anonymous.set_password(None);
    let _ = anonymous.set_username("");
    anonymous.set_query(None);
    Ok((masked.to_string(), anonymous.to_string(), amqp.vhost))
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
}
