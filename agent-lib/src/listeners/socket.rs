//! Where a listener's socket comes from: lent by the stub (ABI 1.2), or
//! bound by the library itself when the stub cannot lend (an older stub,
//! or no stub: tests and `run_agent`).
//!
//! A lent socket outlives the generation, so what arrives during a hot
//! swap waits in its buffer (`stub/src/sockets.rs`). A socket the library
//! binds itself is closed when the generation ends: datagrams sent between
//! that close and the next generation's bind are lost, and a Graphite
//! sender's connection attempts are refused meanwhile (collectd retries).
//! A stub that refuses (the port is taken, the address is not loopback)
//! is not second-guessed: the library does not then bind on its own.

use std::io;
use std::net::SocketAddr;

use crate::host::{HostHooks, SocketKind};

/// Receive buffer asked for on a UDP socket this generation binds: room
/// for a burst, or for the start of a generation before its first read.
pub const UDP_RECEIVE_BUFFER: usize = 8 << 20;

/// Whether the socket is the stub's or the library's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Lent by the stub; survives the generation.
    Lent,
    /// Bound by this generation; closed with it.
    Bound,
}

impl Source {
    /// How the log line names it.
    pub fn describe(self) -> &'static str {
        match self {
            Source::Lent => "lent by the stub, kept across hot swaps",
            Source::Bound => "bound by this generation (the stub cannot lend sockets)",
        }
    }
}

/// The UDP socket for `addr`, non-blocking, ready for tokio.
pub fn udp(hooks: &dyn HostHooks, addr: SocketAddr) -> io::Result<(tokio::net::UdpSocket, Source)> {
    let (socket, source) = match hooks.borrow_socket(SocketKind::Udp, addr) {
        Some(lent) => (std::net::UdpSocket::from(lent?), Source::Lent),
        None => {
            let socket = std::net::UdpSocket::bind(addr)?;
            // As the stub does for the sockets it lends (`stub/src/sockets.rs`).
            crate::sys::grow_receive_buffer(&socket, UDP_RECEIVE_BUFFER);
            (socket, Source::Bound)
        }
    };
    check_address(socket.local_addr()?, addr)?;
    socket.set_nonblocking(true)?;
    Ok((tokio::net::UdpSocket::from_std(socket)?, source))
}

/// The listening TCP socket for `addr`, non-blocking, ready for tokio.
pub fn tcp(
    hooks: &dyn HostHooks,
    addr: SocketAddr,
) -> io::Result<(tokio::net::TcpListener, Source)> {
    let (listener, source) = match hooks.borrow_socket(SocketKind::Tcp, addr) {
        Some(lent) => (std::net::TcpListener::from(lent?), Source::Lent),
        None => (std::net::TcpListener::bind(addr)?, Source::Bound),
    };
    check_address(listener.local_addr()?, addr)?;
    listener.set_nonblocking(true)?;
    Ok((tokio::net::TcpListener::from_std(listener)?, source))
}

/// A lent socket must be bound where we asked: anything else is a stub bug
/// that would make the listener silently deaf.
fn check_address(actual: SocketAddr, wanted: SocketAddr) -> io::Result<()> {
    if actual == wanted {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "the socket is bound to {actual}, not {wanted}"
        )))
    }
}
