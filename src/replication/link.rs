//! The connection between a leader and a follower: plain TCP, or TLS when
//! `cluster.replication_tls` is on (the leader presents the node's `[tls]`
//! certificate; the follower verifies it against `[tls] ca_file`). Either
//! way both sides then prove the cluster's secret (`wire`), so TLS adds
//! privacy and integrity, not who may replicate.

use crate::config::TlsConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// One replication connection, either kind.
pub(crate) type Link = Box<dyn Io>;
pub(crate) type LinkReader = ReadHalf<Link>;
pub(crate) type LinkWriter = WriteHalf<Link>;

/// How this node speaks on the replication port.
#[derive(Clone, Default)]
pub(crate) enum Security {
    #[default]
    Plain,
    Tls {
        acceptor: TlsAcceptor,
        connector: TlsConnector,
    },
}

impl Security {
    /// Plain, or TLS built from `[tls]`'s certificate, key and CA files.
    pub(crate) fn new(tls: bool, settings: &TlsConfig) -> Result<Security, crate::tls::TlsError> {
        if !tls {
            return Ok(Security::Plain);
        }
        let (server, client) = crate::tls::replication(settings)?;
        Ok(Security::Tls {
            acceptor: TlsAcceptor::from(server),
            connector: TlsConnector::from(client),
        })
    }

    /// The leader's side of an accepted connection.
    pub(crate) async fn accept(&self, stream: TcpStream) -> std::io::Result<Link> {
        stream.set_nodelay(true)?;
        Ok(match self {
            Security::Plain => Box::new(stream),
            Security::Tls { acceptor, .. } => Box::new(acceptor.accept(stream).await?),
        })
    }

    /// The follower's side: connects to `leader` (`HOST:PORT`), whose
    /// certificate must name `HOST`.
    pub(crate) async fn connect(&self, leader: &str) -> std::io::Result<Link> {
        let stream = TcpStream::connect(leader).await?;
        stream.set_nodelay(true)?;
        Ok(match self {
            Security::Plain => Box::new(stream),
            Security::Tls { connector, .. } => {
                let name = server_name(leader).ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("no host name in the leader's replication address {leader}"),
                    )
                })?;
                Box::new(connector.connect(name, stream).await?)
            }
        })
    }
}

/// The host of `HOST:PORT` (`[v6]:PORT` too) as a TLS server name.
fn server_name(addr: &str) -> Option<ServerName<'static>> {
    let (host, _port) = addr.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).ok()
}

/// Splits a link for a reader task and a writer.
pub(crate) fn split(link: Link) -> (LinkReader, LinkWriter) {
    tokio::io::split(link)
}

#[cfg(test)]
mod tests {
    use super::server_name;

    #[test]
    fn the_server_name_of_a_replication_address() {
        assert!(matches!(
            server_name("127.0.0.1:5679"),
            Some(rustls::pki_types::ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("[::1]:5679"),
            Some(rustls::pki_types::ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("n1.example:5679"),
            Some(rustls::pki_types::ServerName::DnsName(_))
        ));
        assert!(server_name("nonsense").is_none());
    }
}
