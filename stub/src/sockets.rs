//! Listening sockets the stub owns and lends to each generation (ABI 1.2,
//! `HostApiV1::borrow_socket`), so the agent's loopback metric listeners
//! survive hot swaps: a datagram or connection that arrives while one
//! generation stops and the next starts waits in the socket's buffer or
//! backlog instead of being refused.
//!
//! Rules:
//! - Only loopback addresses are bound (`-EACCES` otherwise): the listeners
//!   accept unauthenticated metrics and must not be reachable from the
//!   network, whatever a library asks for.
//! - A socket is bound on the first request for its (kind, address) and
//!   kept in a process-wide table; every borrow returns a new `dup`
//!   (close-on-exec) that the borrower owns. An exec of a new stub closes
//!   them all (close-on-exec): that one gap is documented in
//!   `docs/architecture.md`.
//! - The well-defined points where sockets are closed: when a generation
//!   ends, every socket it did not borrow ([`keep_only`]); and before a
//!   library older than ABI 1.2 starts, all of them ([`close_all`]), since
//!   such a library binds its own sockets and would find the port taken.
//! - UDP sockets get a large receive buffer ([`UDP_RECEIVE_BUFFER`]), so a
//!   swap's worth of datagrams fits.
// `setsockopt` for the receive buffer; the one use has a SAFETY note.
#![allow(unsafe_code)]

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, IntoRawFd, OwnedFd};
use std::sync::Mutex;

use outrider_abi::socket_kind;

/// Receive buffer asked for on each UDP socket, bytes. The kernel caps
/// `SO_RCVBUF` at `net.core.rmem_max`; as root `SO_RCVBUFFORCE` passes it.
/// At 10,000 small datagrams a second (about 1 KiB of buffer each, kernel
/// overhead included) this holds close to a second of traffic.
pub const UDP_RECEIVE_BUFFER: usize = 8 << 20;

/// Which socket: a [`socket_kind`] and the address.
pub type SocketKey = (u32, SocketAddr);

/// Why a borrow request is refused before anything is bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Unknown kind, or the address is not UTF-8 `ip:port`.
    Invalid,
    /// The address is not loopback.
    NotLoopback,
}

impl Refusal {
    /// The negative errno the ABI returns for it.
    pub fn errno(self) -> i32 {
        match self {
            Refusal::Invalid => -libc::EINVAL,
            Refusal::NotLoopback => -libc::EACCES,
        }
    }
}

/// Reads a request: a known kind and a loopback `ip:port`.
pub fn parse_request(kind: u32, addr: &[u8]) -> Result<SocketKey, Refusal> {
    if kind != socket_kind::UDP && kind != socket_kind::TCP {
        return Err(Refusal::Invalid);
    }
    let addr: SocketAddr = std::str::from_utf8(addr)
        .ok()
        .and_then(|a| a.parse().ok())
        .ok_or(Refusal::Invalid)?;
    if !addr.ip().is_loopback() {
        return Err(Refusal::NotLoopback);
    }
    Ok((kind, addr))
}

/// Serialises the tests that use the process-wide table.
#[cfg(test)]
pub(crate) static TEST_LOCK: Mutex<()> = Mutex::new(());

/// The process-wide table of lent sockets. It holds a handful at most (one
/// per listener), so a `Vec` searched linearly: a map's generic code would
/// cost the stub kilobytes for nothing.
static SOCKETS: Mutex<Vec<(SocketKey, OwnedFd)>> = Mutex::new(Vec::new());

fn table() -> std::sync::MutexGuard<'static, Vec<(SocketKey, OwnedFd)>> {
    SOCKETS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Lends the socket `key` (binding it on first use): a new descriptor the
/// caller owns, or the `io::Error` of binding or duplicating.
pub fn borrow(key: SocketKey) -> std::io::Result<OwnedFd> {
    let mut sockets = table();
    if let Some((_, fd)) = sockets.iter().find(|(held, _)| *held == key) {
        return fd.try_clone();
    }
    let fd = bind(key)?;
    let lent = fd.try_clone()?;
    sockets.push((key, fd));
    Ok(lent)
}

/// The ABI callback's body: a raw descriptor or a negative errno.
pub fn borrow_raw(kind: u32, addr: &[u8]) -> (i32, Option<SocketKey>) {
    let key = match parse_request(kind, addr) {
        Ok(key) => key,
        Err(refusal) => return (refusal.errno(), None),
    };
    match borrow(key) {
        Ok(fd) => (fd.into_raw_fd(), Some(key)),
        Err(e) => (-e.raw_os_error().unwrap_or(libc::EIO), None),
    }
}

fn bind((kind, addr): SocketKey) -> std::io::Result<OwnedFd> {
    if kind == socket_kind::UDP {
        let socket = std::net::UdpSocket::bind(addr)?;
        grow_receive_buffer(&socket);
        Ok(OwnedFd::from(socket))
    } else {
        Ok(OwnedFd::from(std::net::TcpListener::bind(addr)?))
    }
}

/// Asks for [`UDP_RECEIVE_BUFFER`]; best effort (the default buffer still
/// works, with less room during a swap).
fn grow_receive_buffer(socket: &impl AsFd) {
    let size = UDP_RECEIVE_BUFFER as libc::c_int;
    let fd = socket.as_fd().as_raw_fd();
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: `fd` is an open socket for the call; the option value is
        // a c_int on our stack with its exact size.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&raw const size).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

/// Closes every socket not in `borrowed` (the end of a generation).
pub fn keep_only(borrowed: &[SocketKey]) {
    table().retain(|(key, _)| borrowed.contains(key));
}

/// Closes every socket (before a library that binds its own).
pub fn close_all() {
    table().clear();
}

/// The sockets held now.
pub fn held() -> Vec<SocketKey> {
    table().iter().map(|(key, _)| *key).collect()
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn requests_are_read_by_table() {
        let udp = socket_kind::UDP;
        let cases: [(u32, &[u8], Result<(), Refusal>); 8] = [
            (udp, b"127.0.0.1:8125", Ok(())),
            (socket_kind::TCP, b"[::1]:2003", Ok(())),
            (udp, b"127.8.9.10:1", Ok(())),
            (udp, b"0.0.0.0:8125", Err(Refusal::NotLoopback)),
            (udp, b"192.0.2.1:8125", Err(Refusal::NotLoopback)),
            (udp, b"localhost:8125", Err(Refusal::Invalid)),
            (3, b"127.0.0.1:8125", Err(Refusal::Invalid)),
            (udp, b"\xff:1", Err(Refusal::Invalid)),
        ];
        for (kind, addr, want) in cases {
            assert_eq!(
                parse_request(kind, addr).map(|_| ()),
                want,
                "{kind} {addr:?}"
            );
        }
        assert_eq!(Refusal::NotLoopback.errno(), -libc::EACCES);
    }

    /// One test for the process-wide table, so no other test races it.
    #[test]
    fn sockets_are_bound_once_lent_as_dups_and_closed_when_unborrowed() {
        let _table = TEST_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let (first, key) = borrow_raw(socket_kind::UDP, addr.as_bytes());
        assert!(first >= 0, "{first}");
        let key = key.unwrap();
        // SAFETY: a descriptor borrow_raw just handed to us.
        let first = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(first) };
        let first = std::net::UdpSocket::from(first);
        // A datagram sent while no generation holds a dup waits.
        drop(first);
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.send_to(b"during the swap", &addr).unwrap();
        let second = std::net::UdpSocket::from(borrow(key).unwrap());
        let mut buf = [0u8; 64];
        second
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let n = second.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"during the swap");
        // Not loopback: refused, nothing bound.
        assert_eq!(borrow_raw(socket_kind::UDP, b"0.0.0.0:0").0, -libc::EACCES);
        // TCP: bound and listening; a connection made between generations
        // waits in the backlog.
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp_addr = tcp.local_addr().unwrap();
        drop(tcp);
        let tcp_key = parse_request(socket_kind::TCP, tcp_addr.to_string().as_bytes()).unwrap();
        drop(borrow(tcp_key).unwrap());
        let mut client = std::net::TcpStream::connect(tcp_addr).unwrap();
        client.write_all(b"a.b 1 1\n").unwrap();
        let listener = std::net::TcpListener::from(borrow(tcp_key).unwrap());
        assert!(listener.accept().is_ok());
        assert_eq!(held(), [key, tcp_key]);
        // A generation that borrowed only the UDP socket ends: TCP closes.
        keep_only(&[key]);
        drop(listener);
        assert_eq!(held(), [key]);
        assert!(std::net::TcpStream::connect(tcp_addr).is_err());
        close_all();
        drop(second);
        assert!(held().is_empty());
        // The port is free again for a library that binds its own.
        std::net::UdpSocket::bind(&addr).unwrap();
    }
}
