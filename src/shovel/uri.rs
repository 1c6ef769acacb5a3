//! AMQP URIs as RabbitMQ's `amqp_uri:parse` reads them: `amqp://` or
//! `amqps://`, optional `user:password@`, host and port, and the vhost as
//! the path (percent-decoded, `/` when absent). No host means the local
//! broker (RabbitMQ's direct connection). Errors are its terms, for its
//! validation message.

/// Where one end of a shovel connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AmqpUri {
    pub(crate) tls: bool,
    /// None: the local broker.
    pub(crate) host: Option<String>,
    pub(crate) port: Option<u16>,
    pub(crate) vhost: String,
    pub(crate) user: Option<String>,
    pub(crate) password: Option<String>,
}

impl AmqpUri {
    pub(crate) fn is_local(&self) -> bool {
        self.host.is_none()
    }
}

/// RabbitMQ's `"<uri>" not a valid URI: {Reason,"<uri>"}`.
pub(crate) fn parse(uri: &str) -> Result<AmqpUri, String> {
    parse_inner(uri).map_err(|reason| {
        format!(
            "{} not a valid URI: {{{reason},{}}}",
            erlang_string(uri),
            erlang_string(uri)
        )
    })
}

fn erlang_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn parse_inner(uri: &str) -> Result<AmqpUri, String> {
    let unparsable = || "{unable_to_parse_uri,no_scheme}".to_string();
    let (scheme, rest) = uri.split_once(':').ok_or_else(unparsable)?;
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "amqp" => false,
        "amqps" => true,
        other => {
            return Err(format!(
                "{{unexpected_uri_scheme,{}}}",
                erlang_string(other)
            ))
        }
    };
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let rest = rest.split_once('?').map_or(rest, |(r, _query)| r);
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (host, port) = split_port(hostport)?;
    let port = match port {
        None => None,
        Some(p) => {
            let n: u64 = p
                .parse()
                .map_err(|_| "{unable_to_parse_uri,{invalid_port}}".to_string())?;
            if n == 0 || n > 65535 {
                return Err(format!("{{port_out_of_range,{n}}}"));
            }
            Some(n as u16)
        }
    };
    let vhost = match path {
        None => "/".to_string(),
        Some(p) if p.contains('/') => {
            return Err(format!("{{invalid_vhost,{}}}", erlang_string(p)))
        }
        Some(p) => unescape(p)?,
    };
    let host = (!host.is_empty()).then(|| unescape(host)).transpose()?;
    if host.is_none() && port.is_some() {
        return Err("port_requires_host".into());
    }
    let (user, password) = match userinfo {
        None | Some("") => (None, None),
        Some(u) => match u.split_once(':') {
            Some((u, p)) => (Some(unescape(u)?), Some(unescape(p)?)),
            None => (Some(unescape(u)?), None),
        },
    };
    Ok(AmqpUri {
        tls,
        host,
        port,
        vhost,
        user,
        password,
    })
}

/// `host:port`, `[v6]:port` or a host alone.
fn split_port(hostport: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| "{unable_to_parse_uri,{invalid_ipv6}}".to_string())?;
        return Ok((host, after.strip_prefix(':').filter(|p| !p.is_empty())));
    }
    Ok(match hostport.rsplit_once(':') {
        Some((h, p)) => (h, (!p.is_empty()).then_some(p)),
        None => (hostport, None),
    })
}

/// Percent-decoding, with RabbitMQ's errors for a bad escape.
fn unescape(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(v) => {
                    out.push(v);
                    i += 3;
                    continue;
                }
                None if i + 2 >= b.len() => {
                    return Err(format!(
                        "{{unterminated_entity,{}}}",
                        erlang_string(&s[i..])
                    ))
                }
                None => {
                    return Err(format!(
                        "{{invalid_entitiy,{}}}",
                        erlang_string(&s[i..i + 3])
                    ))
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "{unable_to_parse_uri,not_utf8}".to_string())
}

/// The URI without its credentials, as RabbitMQ shows it
/// (`amqp_uri:remove_credentials`).
pub(crate) fn without_credentials(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_string();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => uri.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_and_remote_uris() {
        let u = parse("amqp://").unwrap();
        assert!(u.is_local());
        assert_eq!(u.vhost, "/");
        assert_eq!(parse("amqp:///%2f").unwrap().vhost, "/");
        assert_eq!(parse("amqp:///").unwrap().vhost, "");
        assert_eq!(parse("amqp:///vh").unwrap().vhost, "vh");
        let r = parse("amqps://us%40r:p%3Aw@example.com:5671/v%2Fh?heartbeat=5").unwrap();
        assert!(r.tls);
        assert_eq!(r.host.as_deref(), Some("example.com"));
        assert_eq!(r.port, Some(5671));
        assert_eq!(r.vhost, "v/h");
        assert_eq!(r.user.as_deref(), Some("us@r"));
        assert_eq!(r.password.as_deref(), Some("p:w"));
        assert_eq!(
            parse("amqp://[::1]:5672").unwrap().host.as_deref(),
            Some("::1")
        );
    }

    #[test]
    fn rabbitmq_errors() {
        assert_eq!(
            parse("foo://x").unwrap_err(),
            r#""foo://x" not a valid URI: {{unexpected_uri_scheme,"foo"},"foo://x"}"#
        );
        assert_eq!(
            parse("amqp://h:99999").unwrap_err(),
            r#""amqp://h:99999" not a valid URI: {{port_out_of_range,99999},"amqp://h:99999"}"#
        );
        assert!(parse("amqp:///a/b").unwrap_err().contains("invalid_vhost"));
        assert!(parse("amqp://:5672")
            .unwrap_err()
            .contains("port_requires_host"));
    }

    #[test]
    fn credentials_are_hidden() {
        assert_eq!(
            without_credentials("amqp://u:p@h:1/v"),
            "amqp://h:1/v".to_string()
        );
        assert_eq!(without_credentials("amqp:///%2f"), "amqp:///%2f");
    }
}
