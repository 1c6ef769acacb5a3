//! Listening sockets: every address of a setting bound, or an error naming
//! the one that could not be, and accepting from several listeners at once.

use crate::config::Addresses;
use std::future::Future;
use std::net::SocketAddr;
use std::task::Poll;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

#[derive(Debug, thiserror::Error)]
#[error("cannot listen for {what} on {addr}: {source}")]
pub struct BindError {
    pub what: &'static str,
    pub addr: String,
    pub source: std::io::Error,
}

/// Binds each of `addrs` (for `what`, named in errors). Accepted sockets
/// inherit the buffer sizes (RabbitMQ's `tcp_listen_options`
/// `recbuf`/`sndbuf`); 0 leaves a buffer to the kernel's autotuning.
pub(crate) async fn bind_all(
    what: &'static str,
    addrs: &Addresses,
    recv_buffer: u32,
    send_buffer: u32,
) -> Result<Vec<TcpListener>, BindError> {
    let mut resolved = Vec::new();
    for addr in &addrs.0 {
        let error = |source| BindError {
            what,
            addr: addr.clone(),
            source,
        };
        let all: Vec<SocketAddr> = tokio::net::lookup_host(addr.as_str())
            .await
            .map_err(error)?
            .collect();
        resolved.push((addr, all));
    }
    // An IPv6 wildcard beside an IPv4 address on the same port takes IPv6
    // only, or the two would clash over IPv4 (Linux makes `[::]` dual-stack).
    let v4_ports: Vec<u16> = resolved
        .iter()
        .flat_map(|(_, all)| all.iter().filter(|a| a.is_ipv4()).map(|a| a.port()))
        .filter(|&p| p != 0)
        .collect();
    let mut listeners = Vec::with_capacity(resolved.len());
    for (addr, all) in resolved {
        let mut last = std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the address resolves to nothing",
        );
        let mut bound = None;
        for a in all {
            let v6_only = a.is_ipv6() && v4_ports.contains(&a.port());
            match bind_one(a, recv_buffer, send_buffer, v6_only) {
                Ok(l) => {
                    bound = Some(l);
                    break;
                }
                Err(e) => last = e,
            }
        }
        match bound {
            Some(l) => listeners.push(l),
            None => {
                return Err(BindError {
                    what,
                    addr: addr.clone(),
                    source: last,
                })
            }
        }
    }
    Ok(listeners)
}

fn bind_one(
    a: SocketAddr,
    recv_buffer: u32,
    send_buffer: u32,
    v6_only: bool,
) -> std::io::Result<TcpListener> {
    let socket = if a.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if v6_only {
        set_v6_only(&socket)?;
    }
    if recv_buffer > 0 {
        socket.set_recv_buffer_size(recv_buffer)?;
    }
    if send_buffer > 0 {
        socket.set_send_buffer_size(send_buffer)?;
    }
    socket.bind(a)?;
    socket.listen(1024)
}

#[cfg(unix)]
fn set_v6_only(socket: &TcpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and an int option of the right size.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(unix))]
fn set_v6_only(_: &TcpSocket) -> std::io::Result<()> {
    Ok(())
}

/// The next connection on any of `listeners`, with the tag of the listener
/// that took it.
pub(crate) fn accept_any<T>(
    listeners: &[(TcpListener, T)],
) -> impl Future<Output = (std::io::Result<(TcpStream, SocketAddr)>, &T)> {
    std::future::poll_fn(move |cx| {
        for (listener, tag) in listeners {
            if let Poll::Ready(accepted) = listener.poll_accept(cx) {
                return Poll::Ready((accepted, tag));
            }
        }
        Poll::Pending
    })
}

/// Logs where each listener listens.
pub(crate) fn log_bound(what: &str, listeners: &[TcpListener]) {
    for l in listeners {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(%addr, "{what} listening");
        }
    }
}
