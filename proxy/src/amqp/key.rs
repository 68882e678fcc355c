//! The routing key of a client, taken from its Connection.StartOk: the SASL user name (PLAIN or
//! AMQPLAIN) or one client property. Never the password: it is not even copied.

use amq_protocol::protocol::connection::StartOk;
use amq_protocol::types::parsing::parse_field_table;
use amq_protocol::types::AMQPValue;
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
        // A field table without its 4-byte length prefix, holding LOGIN and PASSWORD.
        "AMQPLAIN" => {
            let len = u32::try_from(response.len()).ok()?;
            let mut table = len.to_be_bytes().to_vec();
            table.extend_from_slice(response);
            let (_, table) = parse_field_table(table.as_slice()).ok()?;
            table.inner().get("LOGIN").and_then(value_text)
        }
        _ => None,
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
    }
}
