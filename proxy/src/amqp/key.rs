//! The routing key of a client, taken from its Connection.StartOk: the SASL user name (PLAIN or
//! AMQPLAIN) or one client property. Never the password: the response is read where it lies and
//! the password is stepped over, never parsed or copied (the StartOk itself still holds it, as
//! it must, to be forwarded to the broker).

use amq_protocol::protocol::connection::StartOk;
use amq_protocol::types::parsing::{parse_long_uint, parse_short_string, parse_type, parse_value};
use amq_protocol::types::{AMQPType, AMQPValue};
use setgate_router::KeySource;

/// The key `source` names in `start_ok`, or `None` when the client did not send one.
pub fn routing_key(start_ok: &StartOk, source: &KeySource) -> Option<String> {
    match source {
        KeySource::Username => sasl_user(start_ok.mechanism.as_str(), start_ok.response.as_bytes()),
        KeySource::ClientProperty(name) => start_ok
            .client_properties
            .inner()
            .get(name.as_str())
            .and_then(value_text),
    }
}

/// The user name in a SASL response, for the mechanisms setgate advertises.
pub fn sasl_user(mechanism: &str, response: &[u8]) -> Option<String> {
    match mechanism {
        // RFC 4616: [authzid] NUL authcid NUL passwd
        "PLAIN" => {
            let mut fields = response.split(|b| *b == 0);
            let _authzid = fields.next()?;
            let authcid = fields.next()?;
            fields.next()?; // a PLAIN response without a password field is malformed
            std::str::from_utf8(authcid).ok().map(str::to_owned)
        }
        "AMQPLAIN" => amqplain_login(response),
        _ => None,
    }
}

/// LOGIN from an AMQPLAIN response: the entries of a field table without its 4-byte length
/// prefix, LOGIN and PASSWORD in either order. Entries before LOGIN are stepped over in place.
fn amqplain_login(mut rest: &[u8]) -> Option<String> {
    while !rest.is_empty() {
        let (value, name) = parse_short_string(rest).ok()?;
        if name.as_str() == "LOGIN" {
            let (_, login) = parse_value(value).ok()?;
            return value_text(&login);
        }
        rest = skip_value(value)?;
    }
    None
}

/// The bytes after one typed field value. Length-prefixed values (where a password would be)
/// are skipped by their length without being read; only fixed-size numbers are parsed.
fn skip_value(value: &[u8]) -> Option<&[u8]> {
    let (body, kind) = parse_type(value).ok()?;
    match kind {
        AMQPType::LongString
        | AMQPType::ByteArray
        | AMQPType::FieldTable
        | AMQPType::FieldArray => {
            let (body, len) = parse_long_uint(body).ok()?;
            body.get(usize::try_from(len).ok()?..)
        }
        _ => parse_value(value).ok().map(|(rest, _)| rest),
    }
}

fn value_text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        AMQPValue::ShortShortInt(n) => Some(n.to_string()),
        AMQPValue::ShortShortUInt(n) => Some(n.to_string()),
        AMQPValue::ShortInt(n) => Some(n.to_string()),
        AMQPValue::ShortUInt(n) => Some(n.to_string()),
        AMQPValue::LongInt(n) => Some(n.to_string()),
        AMQPValue::LongUInt(n) => Some(n.to_string()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        AMQPValue::Timestamp(n) => Some(n.to_string()),
        AMQPValue::ByteArray(b) => String::from_utf8(b.as_slice().to_vec()).ok(),
        _ => None,
    }
    .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_user() {
        assert_eq!(sasl_user("PLAIN", b"\0alice\0secret"), Some("alice".into()));
        assert_eq!(
            sasl_user("PLAIN", b"admin\0alice\0secret"),
            Some("alice".into())
        );
        assert_eq!(sasl_user("PLAIN", b"\0alice"), None);
        assert_eq!(sasl_user("PLAIN", b""), None);
        assert_eq!(sasl_user("EXTERNAL", b""), None);
    }

    #[test]
    fn amqplain_user() {
        // What lapin/amq-protocol send for guest/guest.
        let resp = b"\x05LOGINS\x00\x00\x00\x05guest\x08PASSWORDS\x00\x00\x00\x05guest";
        assert_eq!(sasl_user("AMQPLAIN", resp), Some("guest".into()));
        assert_eq!(sasl_user("AMQPLAIN", b"\x05LOG"), None);
        assert_eq!(sasl_user("AMQPLAIN", b""), None);
    }

    #[test]
    fn amqplain_login_after_the_password_is_found_without_reading_the_password() {
        // PASSWORD first, and its value is not even a valid table inside: stepping over it by
        // its length must not look at it (parsing the whole table would fail here).
        let mut resp = b"\x08PASSWORDF\x00\x00\x00\x04\xff\xff\xff\xff".to_vec();
        resp.extend_from_slice(b"\x05LOGINS\x00\x00\x00\x05alice");
        assert_eq!(sasl_user("AMQPLAIN", &resp), Some("alice".into()));
        // A password string in the usual 'S' form, first.
        let resp = b"\x08PASSWORDS\x00\x00\x00\x06s3cret\x05LOGINS\x00\x00\x00\x03bob";
        assert_eq!(sasl_user("AMQPLAIN", resp), Some("bob".into()));
        // A length past the end, or no LOGIN at all.
        assert_eq!(
            sasl_user("AMQPLAIN", b"\x08PASSWORDS\x00\x00\x01\x00abc"),
            None
        );
        assert_eq!(
            sasl_user("AMQPLAIN", b"\x08PASSWORDS\x00\x00\x00\x01x"),
            None
        );
        // Other entries of fixed size before LOGIN.
        let resp = b"\x01nI\x00\x00\x00\x07\x05LOGINS\x00\x00\x00\x01c";
        assert_eq!(sasl_user("AMQPLAIN", resp), Some("c".into()));
    }
}
