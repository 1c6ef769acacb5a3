//! A blocking client for the RabbitMQ management HTTP API, as served by
//! RabbitMQ's management plugin and by Leveret.
//!
//! Every failure becomes a one-line [`CtlError`]: the address that could not
//! be reached, or the HTTP status with the API's own reason.

use super::CtlError;
use base64::Engine;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use ureq::tls::{parse_pem, ClientCert, PemItem, RootCerts, TlsConfig};

/// Bodies can be large (definitions of a big broker); this only guards
/// against a runaway server.
const BODY_LIMIT: u64 = 1 << 30;

/// How to talk to an https:// URL (ignored for http://).
#[derive(Default)]
pub(crate) struct Tls<'a> {
    /// Trust only this CA (PEM) instead of the public ones.
    pub cacert: Option<&'a Path>,
    /// A client certificate and its key (PEM), for a server that asks.
    pub cert: Option<&'a Path>,
    pub key: Option<&'a Path>,
    /// Skip verifying the server's certificate.
    pub insecure: bool,
}

impl Tls<'_> {
    fn config(&self) -> Result<TlsConfig, CtlError> {
        let mut builder = TlsConfig::builder().disable_verification(self.insecure);
        if let Some(file) = self.cacert {
            let certs = read_pem(file, "--cacert")?
                .filter_map(|item| match item {
                    Ok(PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect::<Vec<_>>();
            if certs.is_empty() {
                return Err(no_pem(file, "--cacert", "certificate"));
            }
            builder = builder.root_certs(RootCerts::new_with_certs(&certs));
        }
        if let (Some(cert_file), Some(key_file)) = (self.cert, self.key) {
            let chain = read_pem(cert_file, "--cert")?
                .filter_map(|item| match item {
                    Ok(PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect::<Vec<_>>();
            if chain.is_empty() {
                return Err(no_pem(cert_file, "--cert", "certificate"));
            }
            let key = read_pem(key_file, "--key")?
                .find_map(|item| match item {
                    Ok(PemItem::PrivateKey(k)) => Some(k),
                    _ => None,
                })
                .ok_or_else(|| no_pem(key_file, "--key", "private key"))?;
            builder = builder.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
        }
        Ok(builder.build())
    }
}

/// The PEM items of `file`, or a usage error naming `flag` and the file.
fn read_pem(
    file: &Path,
    flag: &str,
) -> Result<impl Iterator<Item = Result<PemItem<'static>, ureq::Error>>, CtlError> {
    let bytes = std::fs::read(file)
        .map_err(|e| CtlError::usage(format!("{flag} {}: {e}", file.display())))?;
    Ok(parse_pem(&bytes).collect::<Vec<_>>().into_iter())
}

fn no_pem(file: &Path, flag: &str, what: &str) -> CtlError {
    CtlError::usage(format!(
        "{flag} {}: no PEM {what} in the file",
        file.display()
    ))
}

/// One management API endpoint, as one user.
pub(crate) struct Client {
    agent: ureq::Agent,
    /// `http://host:port[/prefix]/api`, no trailing slash.
    base: String,
    /// What the user gave as --url, normalised, for messages.
    url: String,
    user: String,
    authorization: String,
}

/// An HTTP reply, whatever its status.
pub(crate) struct Reply {
    pub status: u16,
    pub body: String,
    /// "GET /api/queues/%2F", for messages.
    pub request: String,
}

impl Reply {
    /// The body as JSON; `Null` when it is empty or not JSON.
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Method {
    Get,
    Put,
    Post,
    Delete,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Post => "POST",
            Method::Delete => "DELETE",
        }
    }
}

impl Client {
    /// A client for the API under `url` (`http://host:port`; a trailing
    /// `/api` or `/` is accepted, `http://` may be left out).
    pub(crate) fn new(
        url: &str,
        user: &str,
        password: &str,
        tls: &Tls<'_>,
    ) -> Result<Client, CtlError> {
        let mut url = url.trim().trim_end_matches('/').to_string();
        if !url.contains("://") {
            url = format!("http://{url}");
        }
        let scheme_len = if url.starts_with("https://") {
            "https://".len()
        } else if url.starts_with("http://") {
            "http://".len()
        } else {
            0
        };
        if scheme_len == 0 || url.len() == scheme_len {
            return Err(CtlError::usage(format!(
                "--url {url}: expected http://HOST:PORT or https://HOST:PORT"
            )));
        }
        if let Some(stripped) = url.strip_suffix("/api") {
            url = stripped.to_string();
        }
        let base = format!("{url}/api");
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_response(Some(Duration::from_secs(300)))
            .user_agent(concat!("leveret-ctl/", env!("CARGO_PKG_VERSION")))
            .max_redirects(0)
            .tls_config(tls.config()?)
            .build();
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Ok(Client {
            agent: config.new_agent(),
            base,
            url,
            user: user.to_string(),
            authorization: format!("Basic {token}"),
        })
    }

    /// Sends one request and returns the reply whatever its status; fails
    /// only when no reply came.
    pub(crate) fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
    ) -> Result<Reply, CtlError> {
        self.send_with(method, path, body, &[])
    }

    /// [`send`](Self::send) with extra request headers.
    pub(crate) fn send_with(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<Reply, CtlError> {
        let uri = format!("{}{path}", self.base);
        let result = match method {
            Method::Get | Method::Delete => {
                let mut req = if method == Method::Get {
                    self.agent.get(&uri)
                } else {
                    self.agent.delete(&uri)
                };
                req = req.header("authorization", &self.authorization);
                for (k, v) in headers {
                    req = req.header(*k, *v);
                }
                req.call()
            }
            Method::Put | Method::Post => {
                let mut req = if method == Method::Put {
                    self.agent.put(&uri)
                } else {
                    self.agent.post(&uri)
                };
                req = req
                    .header("authorization", &self.authorization)
                    .header("content-type", "application/json");
                for (k, v) in headers {
                    req = req.header(*k, *v);
                }
                req.send(body.unwrap_or(""))
            }
        };
        let mut response = result.map_err(|e| self.transport_error(e))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(BODY_LIMIT)
            .lossy_utf8(true)
            .read_to_string()
            .map_err(|e| self.transport_error(e))?;
        let request = format!("{} {}", method.name(), self.api_path(path));
        Ok(Reply {
            status,
            body,
            request,
        })
    }

    /// Sends one request and returns its JSON body (`Null` when empty);
    /// a non-2xx status is an error naming `what` (e.g. "queue 'q' in
    /// vhost '/'") when it is a 404.
    pub(crate) fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        what: &str,
    ) -> Result<Value, CtlError> {
        let text = body.map(|b| b.to_string());
        let reply = self.send(method, path, text.as_deref())?;
        self.check(&reply, what)?;
        Ok(reply.json())
    }

    pub(crate) fn get(&self, path: &str, what: &str) -> Result<Value, CtlError> {
        self.call(Method::Get, path, None, what)
    }

    /// Fails with the API's reason unless `reply` has a 2xx status.
    pub(crate) fn check(&self, reply: &Reply, what: &str) -> Result<(), CtlError> {
        if (200..300).contains(&reply.status) {
            return Ok(());
        }
        Err(CtlError::failed(self.status_message(reply, what)))
    }

    /// `404 Not Found: queue 'x' in vhost '/' (Object Not Found)`,
    /// `401 not authorized as guest (Login failed)`,
    /// `400 Bad Request: inequivalent arg 'durable' …`; without a reason
    /// from the API, the request: `405 Method Not Allowed: PUT /api/…`.
    fn status_message(&self, reply: &Reply, what: &str) -> String {
        let code = reply.status;
        let canonical = ureq::http::StatusCode::from_u16(code)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let detail = api_detail(&reply.body, canonical);
        match (code, detail) {
            (401, Some(d)) => format!("401 not authorized as {} ({d})", self.user),
            (401, None) => format!("401 not authorized as {}", self.user),
            (404, Some(d)) if !what.is_empty() => format!("404 {canonical}: {what} ({d})"),
            (404, None) if !what.is_empty() => {
                format!("404 {canonical}: {what} ({})", reply.request)
            }
            // A bare token ("vhost_or_user_not_found") says little alone.
            (_, Some(d)) if !what.is_empty() && !d.contains(char::is_whitespace) => {
                format!("{code} {canonical}: {d} ({what})")
            }
            (_, Some(d)) => format!("{code} {canonical}: {d}"),
            (_, None) => format!("{code} {canonical}: {}", reply.request),
        }
    }

    /// `path` as the server sees it: `/api/…`, any prefix of --url kept.
    fn api_path(&self, path: &str) -> String {
        let base_path = self
            .base
            .strip_prefix("http://")
            .and_then(|rest| rest.find('/').map(|i| &rest[i..]))
            .unwrap_or("/api");
        format!("{base_path}{path}")
    }

    fn transport_error(&self, e: ureq::Error) -> CtlError {
        let url = &self.url;
        let message = match e {
            ureq::Error::Io(io) => match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    format!("could not connect to {url}: connection refused")
                }
                std::io::ErrorKind::TimedOut => format!("could not connect to {url}: timed out"),
                std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted => {
                    format!("{url} closed the connection before replying ({io})")
                }
                _ if url.starts_with("https://") && is_tls_failure(&io) => {
                    format!("TLS with {url} failed: {io} (see --cacert, --cert and --insecure)")
                }
                _ => format!("could not connect to {url}: {io}"),
            },
            ureq::Error::HostNotFound => format!("could not connect to {url}: host not found"),
            ureq::Error::ConnectionFailed => {
                format!("could not connect to {url}: connection failed")
            }
            ureq::Error::Timeout(t) => format!("no reply from {url}: timed out ({t})"),
            ureq::Error::Protocol(e) => {
                format!("{url} did not answer as an HTTP server ({e}); is it the management port?")
            }
            ureq::Error::BadUri(u) => format!("--url {url}: invalid URL ({u})"),
            ureq::Error::Rustls(e) => {
                format!("TLS with {url} failed: {e} (see --cacert, --cert and --insecure)")
            }
            other => format!("request to {url} failed: {other}"),
        };
        CtlError::failed(message)
    }
}

/// Whether an I/O error is rustls refusing the handshake (ureq passes its
/// errors up as I/O errors wrapping them).
fn is_tls_failure(io: &std::io::Error) -> bool {
    let text = io.to_string();
    ["certificate", "alert", "handshake", "TLS"]
        .iter()
        .any(|w| text.contains(w))
}

/// The most useful text in an API error body: RabbitMQ answers
/// `{"error": "...", "reason": "..."}`, where `reason` is usually the
/// sentence ("inequivalent arg …") and `error` the category; for 404s the
/// reason is just "Not Found" and `error` says more.
fn api_detail(body: &str, canonical: &str) -> Option<String> {
    let text = |v: &Value| -> Option<String> {
        let s = match v {
            Value::Null => return None,
            Value::String(s) => s.trim().to_string(),
            other => other.to_string(),
        };
        // One line: RabbitMQ's policy errors are "Validation failed\n\n"
        // and a line per problem, with < and > escaped for HTML.
        let s = s
            .replace("\n\n", ": ")
            .replace('\n', "; ")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
        (!s.is_empty()).then_some(s)
    };
    match serde_json::from_str::<Value>(body) {
        Ok(json) => {
            let reason = json.get("reason").and_then(text);
            let error = json.get("error").and_then(text);
            match (reason, error) {
                (Some(r), Some(e)) if r.eq_ignore_ascii_case(canonical) => Some(e),
                (Some(r), _) => Some(r),
                (None, e) => e,
            }
        }
        Err(_) => {
            let line = body.lines().map(str::trim).find(|l| !l.is_empty())?;
            let mut line: String = line.chars().take(200).collect();
            if line.len() < body.trim().len() {
                line.push('…');
            }
            Some(line)
        }
    }
}

/// Percent-encodes one path segment: everything but RFC 3986's unreserved
/// characters, so `/` becomes `%2F` and a space `%20`.
pub(crate) fn enc(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_vhost_and_names() {
        assert_eq!(enc("/"), "%2F");
        assert_eq!(enc("a b/c"), "a%20b%2Fc");
        assert_eq!(enc("q.1-x_y~"), "q.1-x_y~");
        assert_eq!(enc("é"), "%C3%A9");
    }

    #[test]
    fn picks_the_useful_part_of_an_error_body() {
        let not_found = r#"{"error":"Object Not Found","reason":"Not Found"}"#;
        assert_eq!(
            api_detail(not_found, "Not Found").as_deref(),
            Some("Object Not Found")
        );
        let bad = r#"{"error":"bad_request","reason":"inequivalent arg"}"#;
        assert_eq!(
            api_detail(bad, "Bad Request").as_deref(),
            Some("inequivalent arg")
        );
        let odd = r#"{"error":"bad_request","reason":["invalid_regexp",[40]]}"#;
        assert_eq!(
            api_detail(odd, "Bad Request").as_deref(),
            Some(r#"["invalid_regexp",[40]]"#)
        );
        assert_eq!(api_detail("", "Bad Request"), None);
        assert_eq!(
            api_detail("<html>oops</html>", "x").as_deref(),
            Some("<html>oops</html>")
        );
    }

    #[test]
    fn a_cacert_that_is_missing_or_not_pem_is_a_usage_error() {
        let dir = std::env::temp_dir().join(format!("leveret-ctl-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let missing = dir.join("missing.pem");
        for (file, expect) in [(&not_pem, "no PEM certificate"), (&missing, "No such file")] {
            let tls = Tls {
                cacert: Some(file),
                ..Tls::default()
            };
            let err = match Client::new("https://h", "u", "p", &tls) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{} was accepted as a CA file", file.display()),
            };
            assert!(err.contains("--cacert") && err.contains(expect), "{err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn normalises_the_url() {
        let plain = Tls::default();
        let c = Client::new("127.0.0.1:15672/api/", "guest", "guest", &plain).unwrap();
        assert_eq!(c.base, "http://127.0.0.1:15672/api");
        assert_eq!(c.url, "http://127.0.0.1:15672");
        let c = Client::new("http://h:1/rabbit", "u", "p", &plain).unwrap();
        assert_eq!(c.base, "http://h:1/rabbit/api");
        assert_eq!(c.api_path("/overview"), "/rabbit/api/overview");
        let c = Client::new("https://h:15671/", "u", "p", &plain).unwrap();
        assert_eq!(c.base, "https://h:15671/api");
        assert!(Client::new("ftp://h", "u", "p", &plain).is_err());
    }
}
