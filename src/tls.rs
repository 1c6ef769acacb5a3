//! TLS for the AMQP, management and stream protocol listeners (`[tls]`): the certificate
//! files read into rustls server configurations, the swap that reloads them
//! (SIGHUP, `POST /api/tls/reload`), and the user name a verified client
//! certificate gives SASL EXTERNAL.
//!
//! rustls with its `ring` provider; every file problem is an error naming
//! the file. A reload builds new configurations completely before swapping
//! them in, so a bad file leaves the old ones serving.

use crate::config::{CertLoginFrom, SanType, TlsConfig};
use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use x509_parser::extensions::GeneralName;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} file {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} file {path} holds no PEM {expected} ({detail})")]
    NotPem {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
        detail: String,
    },
    #[error("{what} file {path}: {detail}")]
    Invalid {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("the private key in {key} does not match the certificate in {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("the certificate in {path} expired on {not_after}")]
    Expired { path: PathBuf, not_after: String },
    #[error("the certificate in {path} is not valid before {not_before}")]
    NotYetValid { path: PathBuf, not_before: String },
    #[error("TLS settings: {0}")]
    Settings(String),
}

/// The TLS server configurations in use, swapped whole on a reload: a
/// connection reads the current one once, at accept.
pub struct Tls {
    settings: TlsConfig,
    amqp: RwLock<Arc<ServerConfig>>,
    mgmt: RwLock<Arc<ServerConfig>>,
    expiry: RwLock<Arc<Expiry>>,
}

/// When the certificates in use expire (Unix seconds, each certificate
/// of the file in order), for the certificate-expiration health check.
#[derive(Debug, Default)]
pub(crate) struct Expiry {
    pub(crate) cert: Vec<i64>,
    pub(crate) mgmt_cert: Vec<i64>,
    /// Empty when no CA file is set (or it cannot be read).
    pub(crate) ca: Vec<i64>,
}

impl Tls {
    /// Reads the files `settings` names (for a broker with a TLS
    /// listener: `Config::uses_tls`).
    pub fn load(settings: &TlsConfig) -> Result<Arc<Tls>, TlsError> {
        let (amqp, mgmt, expiry) = build(settings)?;
        Ok(Arc::new(Tls {
            settings: settings.clone(),
            amqp: RwLock::new(amqp),
            mgmt: RwLock::new(mgmt),
            expiry: RwLock::new(Arc::new(expiry)),
        }))
    }

    /// The configuration for a new AMQPS connection, and for a new stream
    /// protocol connection over TLS: RabbitMQ's stream TLS listener takes
    /// the broker's `ssl_options`, as AMQPS does (same certificate,
    /// versions and peer verification, no ALPN).
    pub fn amqp(&self) -> Arc<ServerConfig> {
        self.amqp.read().clone()
    }

    /// The configuration for a new HTTPS connection.
    pub fn mgmt(&self) -> Arc<ServerConfig> {
        self.mgmt.read().clone()
    }

    pub fn settings(&self) -> &TlsConfig {
        &self.settings
    }

    /// When the loaded certificates expire.
    pub(crate) fn expiry(&self) -> Arc<Expiry> {
        self.expiry.read().clone()
    }

    /// Reads the files again and, if every one is good, serves new
    /// connections with them; otherwise keeps the old ones. Logs either way.
    pub fn reload(&self) -> Result<(), TlsError> {
        match build(&self.settings) {
            Ok((amqp, mgmt, expiry)) => {
                *self.amqp.write() = amqp;
                *self.mgmt.write() = mgmt;
                *self.expiry.write() = Arc::new(expiry);
                tracing::info!(cert = %self.settings.cert.display(), "TLS certificates reloaded; new connections use them");
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS reload refused; the certificates in use stay");
                Err(e)
            }
        }
    }
}

/// rustls' `ring` provider: it builds with a C compiler alone, where the
/// default aws-lc-rs needs cmake. Its price (the deprecation) is no
/// post-quantum key exchange; TLS 1.3 uses X25519 or the NIST curves.
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

type Built = (Arc<ServerConfig>, Arc<ServerConfig>, Expiry);

fn build(s: &TlsConfig) -> Result<Built, TlsError> {
    let provider = provider();
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = s
        .versions
        .iter()
        .filter_map(|v| match v.as_str() {
            "1.2" => Some(&rustls::version::TLS12),
            "1.3" => Some(&rustls::version::TLS13),
            _ => None,
        })
        .collect();
    let amqp_key = certified_key(("tls.cert", &s.cert), ("tls.key", &s.key), &provider)?;
    let mgmt_key = if s.mgmt_cert.as_os_str().is_empty() {
        amqp_key.clone()
    } else {
        certified_key(
            ("tls.mgmt_cert", &s.mgmt_cert),
            ("tls.mgmt_key", &s.mgmt_key),
            &provider,
        )?
    };
    let verifier = if s.verify_peer {
        let roots = read_roots(&s.ca)?;
        let builder =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
        let builder = if s.fail_if_no_peer_cert {
            builder
        } else {
            builder.allow_unauthenticated()
        };
        Some(builder.build().map_err(|e| TlsError::Invalid {
            what: "tls.ca",
            path: s.ca.clone(),
            detail: e.to_string(),
        })?)
    } else {
        None
    };
    let config = |key: Arc<CertifiedKey>,
                  verifier: Option<&Arc<dyn ClientCertVerifier>>,
                  alpn: &[&[u8]]|
     -> Result<Arc<ServerConfig>, TlsError> {
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|e| TlsError::Settings(e.to_string()))?;
        let builder = match verifier {
            Some(v) => builder.with_client_cert_verifier(v.clone()),
            None => builder.with_no_client_auth(),
        };
        let mut config =
            builder.with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(key)));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    };
    let expiry = Expiry {
        cert: not_after(&amqp_key.cert),
        mgmt_cert: not_after(&mgmt_key.cert),
        ca: if s.ca.as_os_str().is_empty() {
            Vec::new()
        } else {
            read_certs("tls.ca", &s.ca).map_or(Vec::new(), |certs| not_after(&certs))
        },
    };
    // HTTPS asks for no client certificate (RabbitMQ's management.ssl
    // verifies none by default): API users log in with passwords.
    Ok((
        config(amqp_key, verifier.as_ref(), &[])?,
        config(mgmt_key, None, &[b"http/1.1"])?,
        expiry,
    ))
}

/// The replication port's configurations (`cluster.replication_tls`): the
/// leader presents the node's certificate and asks for none (followers
/// prove the cluster's secret instead); a follower trusts only `tls.ca`.
/// Read at each term and connection, so rotated files are picked up.
pub(crate) fn replication(
    s: &TlsConfig,
) -> Result<(Arc<ServerConfig>, Arc<rustls::ClientConfig>), TlsError> {
    let provider = provider();
    let key = certified_key(("tls.cert", &s.cert), ("tls.key", &s.key), &provider)?;
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Settings(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(key)));
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Settings(e.to_string()))?
        .with_root_certificates(read_roots(&s.ca)?)
        .with_no_client_auth();
    Ok((Arc::new(server), Arc::new(client)))
}

/// Each certificate's end of validity (Unix seconds); one that does not
/// parse counts as expired.
fn not_after(certs: &[CertificateDer<'_>]) -> Vec<i64> {
    certs
        .iter()
        .map(|c| {
            x509_parser::parse_x509_certificate(c)
                .map_or(0, |(_, parsed)| parsed.validity().not_after.timestamp())
        })
        .collect()
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn pem_detail(e: pem::Error) -> String {
    match e {
        pem::Error::NoItemsFound => "no PEM section of that kind found".into(),
        other => other.to_string(),
    }
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::NotPem {
            what,
            path: path.to_owned(),
            expected: "certificate",
            detail: pem_detail(e),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NotPem {
            what,
            path: path.to_owned(),
            expected: "certificate",
            detail: "no -----BEGIN CERTIFICATE----- section".into(),
        });
    }
    Ok(certs)
}

/// The certificate chain and key, checked: PEM, the key matches the
/// certificate, the certificate valid now.
fn certified_key(
    (cert_setting, cert): (&'static str, &Path),
    (key_setting, key): (&'static str, &Path),
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = read_certs(cert_setting, cert)?;
    check_validity(cert_setting, cert, &chain[0])?;
    let key_bytes = read(key_setting, key)?;
    let private = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| TlsError::NotPem {
        what: key_setting,
        path: key.to_owned(),
        expected: "private key",
        detail: pem_detail(e),
    })?;
    CertifiedKey::from_der(chain, private, provider)
        .map(Arc::new)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
                cert: cert.to_owned(),
                key: key.to_owned(),
            },
            other => TlsError::Invalid {
                what: key_setting,
                path: key.to_owned(),
                detail: other.to_string(),
            },
        })
}

fn check_validity(
    setting: &'static str,
    path: &Path,
    cert: &CertificateDer<'_>,
) -> Result<(), TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|e| TlsError::Invalid {
        what: setting,
        path: path.to_owned(),
        detail: format!("not an X.509 certificate: {e}"),
    })?;
    let validity = parsed.validity();
    let now = x509_parser::time::ASN1Time::now();
    if now > validity.not_after {
        return Err(TlsError::Expired {
            path: path.to_owned(),
            not_after: validity.not_after.to_string(),
        });
    }
    if now < validity.not_before {
        return Err(TlsError::NotYetValid {
            path: path.to_owned(),
            not_before: validity.not_before.to_string(),
        });
    }
    Ok(())
}

fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs("tls.ca", path)? {
        roots.add(cert).map_err(|e| TlsError::Invalid {
            what: "tls.ca",
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// The user name SASL EXTERNAL logs in as, from a verified client
/// certificate, or why there is none (RabbitMQ's texts, for the log).
pub(crate) fn cert_login_name(
    cert: &CertificateDer<'_>,
    settings: &TlsConfig,
) -> Result<String, &'static str> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|_| "no name found")?;
    let name = match settings.ssl_cert_login_from {
        CertLoginFrom::CommonName => parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string),
        CertLoginFrom::SubjectAlternativeName => {
            let names = parsed.subject_alternative_name().ok().flatten();
            names.and_then(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match (n, settings.ssl_cert_login_san_type) {
                        (GeneralName::DNSName(s), SanType::Dns)
                        | (GeneralName::RFC822Name(s), SanType::Email)
                        | (GeneralName::URI(s), SanType::Uri) => Some(s.to_string()),
                        _ => None,
                    })
                    .nth(settings.ssl_cert_login_san_index)
            })
        }
    };
    name.filter(|n| !n.is_empty()).ok_or("no name found")
}

/// Why a server-side TLS handshake gave no stream.
#[derive(Debug)]
pub(crate) enum HandshakeError {
    Failed(std::io::Error),
    TimedOut,
    /// The broker is shutting down: no protocol connection to close yet.
    ShuttingDown,
}

/// The TLS handshake of an accepted connection with `config`, which must
/// end by `deadline` (the handshake timeout counted from accept) or when
/// `shutdown` turns true; then what the session negotiated. Runs in the
/// connection's own task, so a client stalling in it holds up no one.
pub(crate) async fn accept<S>(
    config: Arc<ServerConfig>,
    settings: &TlsConfig,
    socket: S,
    deadline: tokio::time::Instant,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(tokio_rustls::server::TlsStream<S>, TlsSession), HandshakeError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let handshake = tokio::time::timeout_at(deadline, acceptor.accept(socket));
    let stream = tokio::select! {
        done = handshake => match done {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(HandshakeError::Failed(e)),
            Err(_) => return Err(HandshakeError::TimedOut),
        },
        _ = shutdown.wait_for(|stop| *stop) => return Err(HandshakeError::ShuttingDown),
    };
    let session = TlsSession::of(stream.get_ref().1, settings);
    Ok((stream, session))
}

impl Tls {
    /// [`Tls::reload`] on a blocking thread: it reads files.
    pub async fn reload_in_background(self: Arc<Self>) -> Result<(), TlsError> {
        tokio::task::spawn_blocking(move || self.reload())
            .await
            .unwrap_or_else(|e| Err(TlsError::Settings(format!("the reload failed: {e}"))))
    }
}

/// What a client's TLS session negotiated, in RabbitMQ's words for the
/// management API (`ssl_protocol` "tlsv1.3", `ssl_cipher` "aes_256_gcm"…),
/// and the user name its certificate gives SASL EXTERNAL.
#[derive(Debug)]
pub struct TlsSession {
    /// The name EXTERNAL logs in as, or why there is none.
    pub(crate) login: Result<String, &'static str>,
    pub(crate) protocol: String,
    pub(crate) key_exchange: String,
    pub(crate) cipher: String,
    pub(crate) hash: String,
    pub(crate) peer_cert: Option<PeerCert>,
}

/// The client's certificate as RabbitMQ shows it: RFC 4514 names (most
/// significant last) and `start - end` validity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerCert {
    pub(crate) subject: String,
    pub(crate) issuer: String,
    pub(crate) validity: String,
}

impl TlsSession {
    /// The session of a finished handshake.
    pub(crate) fn of(conn: &rustls::ServerConnection, settings: &TlsConfig) -> TlsSession {
        let cert = match conn.peer_certificates() {
            Some([cert, ..]) => Some(cert),
            _ => None,
        };
        let login = match cert {
            Some(cert) => cert_login_name(cert, settings),
            None => Err("connection peer presented no TLS (x.509) certificate"),
        };
        let protocol = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "tlsv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "tlsv1.2",
            _ => "unknown",
        };
        let suite = conn
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default();
        let (key_exchange, cipher, hash) = suite_names(&suite);
        TlsSession {
            login,
            protocol: protocol.to_string(),
            key_exchange,
            cipher,
            hash,
            peer_cert: cert.and_then(peer_cert),
        }
    }
}

/// A suite's name (`TLS13_AES_256_GCM_SHA384`,
/// `TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`) as Erlang's ssl names its
/// parts: key exchange (`any` in TLS 1.3), cipher, and MAC (`aead` for
/// AEAD ciphers, which every suite rustls offers is).
fn suite_names(suite: &str) -> (String, String, String) {
    let (key_exchange, rest) = match suite.strip_prefix("TLS13_") {
        Some(rest) => ("any".to_string(), rest),
        None => match suite
            .strip_prefix("TLS_")
            .and_then(|s| s.split_once("_WITH_"))
        {
            Some((kx, rest)) => (kx.to_ascii_lowercase(), rest),
            None => (String::new(), suite),
        },
    };
    let cipher = rest.rsplit_once("_SHA").map_or(rest, |(c, _)| c);
    (
        key_exchange,
        cipher.to_ascii_lowercase(),
        "aead".to_string(),
    )
}

fn peer_cert(cert: &CertificateDer<'_>) -> Option<PeerCert> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let validity = parsed.validity();
    Some(PeerCert {
        subject: rfc4514(parsed.subject()),
        issuer: rfc4514(parsed.issuer()),
        validity: format!(
            "{} - {}",
            asn1_time(&validity.not_before),
            asn1_time(&validity.not_after)
        ),
    })
}

/// RabbitMQ's `format_rdn_sequence`: RDNs most significant last, joined
/// by ",", the attributes of one RDN by "+", values escaped as RFC 4514.
fn rfc4514(name: &x509_parser::x509::X509Name<'_>) -> String {
    let rdns: Vec<String> = name
        .iter()
        .map(|rdn| {
            let parts: Vec<String> = rdn
                .iter()
                .map(|attr| {
                    let oid = attr.attr_type();
                    let key =
                        x509_parser::objects::oid2abbrev(oid, x509_parser::objects::oid_registry())
                            .map(|a| a.to_ascii_uppercase())
                            .unwrap_or_else(|_| oid.to_id_string());
                    let value = attr.as_str().map_or_else(
                        |_| format!("#{}", hex(attr.attr_value().data)),
                        escape_rdn_value,
                    );
                    format!("{key}={value}")
                })
                .collect();
            parts.join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

fn escape_rdn_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        let edge = (i == 0 && (c == ' ' || c == '#')) || (i == last && c == ' ');
        if edge || matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `2026-12-06T10:00:00Z`, as RabbitMQ formats certificate times.
fn asn1_time(t: &x509_parser::time::ASN1Time) -> String {
    let d = t.to_datetime();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        d.year(),
        u8::from(d.month()),
        d.day(),
        d.hour(),
        d.minute(),
        d.second()
    )
}

#[cfg(test)]
mod session_tests {
    use super::{escape_rdn_value, suite_names};

    #[test]
    fn rdn_values_are_escaped_as_rfc_4514_in_linear_time() {
        assert_eq!(escape_rdn_value(" a,b+c "), "\\ a\\,b\\+c\\ ");
        assert_eq!(escape_rdn_value("#x"), "\\#x");
        // A client controls its certificate: a long value costs its
        // length (counting the characters per character never finishes).
        let long = "a".repeat(1 << 20);
        assert_eq!(escape_rdn_value(&long).len(), 1 << 20);
    }

    #[test]
    fn suites_are_named_as_erlang_ssl_names_them() {
        let names = |s: &str| {
            let (k, c, h) = suite_names(s);
            (k, c, h)
        };
        assert_eq!(
            names("TLS13_AES_256_GCM_SHA384"),
            ("any".into(), "aes_256_gcm".into(), "aead".into())
        );
        assert_eq!(
            names("TLS13_CHACHA20_POLY1305_SHA256"),
            ("any".into(), "chacha20_poly1305".into(), "aead".into())
        );
        assert_eq!(
            names("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
            ("ecdhe_rsa".into(), "aes_128_gcm".into(), "aead".into())
        );
    }
}
