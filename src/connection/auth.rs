//! SASL PLAIN and AMQPLAIN responses, and who counts as local for
//! `loopback_users`.

use std::net::IpAddr;

/// RabbitMQ's `rabbit_net:is_loopback`: 127.0.0.0/8, ::1, and 127.x
/// mapped into IPv6 (how a dual-stack listener sees a 127.0.0.1 client).
pub(crate) fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Extracts (user, password) from a start-ok response, or `None` when the
/// mechanism is unsupported or the response malformed.
pub fn credentials(mechanism: &str, response: &[u8]) -> Option<(String, String)> {
    match mechanism {
        "PLAIN" => {
            // authzid \0 authcid \0 password
            let mut parts = response.split(|&b| b == 0);
            let _authzid = parts.next()?;
            let user = parts.next()?;
            let pass = parts.next()?;
            if parts.next().is_some() {
                return None;
            }
            Some((
                String::from_utf8(user.to_vec()).ok()?,
                String::from_utf8(pass.to_vec()).ok()?,
            ))
        }
        "AMQPLAIN" => {
            // A field table without its length prefix.
            let mut table = Vec::with_capacity(response.len() + 4);
            table.extend_from_slice(&(response.len() as u32).to_be_bytes());
            table.extend_from_slice(response);
            // Checked first: the parser below recurses into nested tables.
            crate::protocol::field_table::check(&table).ok()?;
            let (_, t) = amq_protocol::types::parsing::parse_field_table(&table[..]).ok()?;
            let get = |k: &str| match t.inner().get(k)? {
                amq_protocol::types::AMQPValue::LongString(s) => {
                    String::from_utf8(s.as_bytes().to_vec()).ok()
                }
                amq_protocol::types::AMQPValue::ShortString(s) => Some(s.to_string()),
                _ => None,
            };
            Some((get("LOGIN")?, get("PASSWORD")?))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_as_rabbitmq() {
        for local in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback(local.parse().unwrap()), "{local}");
        }
        for remote in ["192.0.2.2", "0.0.0.0", "::", "::ffff:192.0.2.2", "fd00::2"] {
            assert!(!is_loopback(remote.parse().unwrap()), "{remote}");
        }
    }

    #[test]
    fn plain() {
        assert_eq!(
            credentials("PLAIN", b"\0guest\0secret"),
            Some(("guest".into(), "secret".into()))
        );
        assert_eq!(credentials("PLAIN", b"guest"), None);
        assert_eq!(credentials("EXTERNAL", b""), None);
    }

    #[test]
    fn amqplain() {
        let mut t = amq_protocol::types::FieldTable::default();
        t.insert(
            "LOGIN".into(),
            amq_protocol::types::AMQPValue::LongString("u".into()),
        );
        t.insert(
            "PASSWORD".into(),
            amq_protocol::types::AMQPValue::LongString("p".into()),
        );
        let bytes = cookie_factory::gen_simple(
            amq_protocol::types::generation::gen_field_table(&t),
            Vec::new(),
        )
        .unwrap();
        assert_eq!(
            credentials("AMQPLAIN", &bytes[4..]),
            Some(("u".into(), "p".into()))
        );
    }
}
