//! Receiving IPv6 packets with their original extension headers on an `AF_PACKET` socket.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// ETH_P_IPV6 in network byte order, as `AF_PACKET` reports it.
const ETH_P_IPV6_BE: u16 = (libc::ETH_P_IPV6 as u16).to_be();
/// ETH_P_ALL in network byte order.
const ETH_P_ALL_BE: u16 = (libc::ETH_P_ALL as u16).to_be();

/// A packet socket bound to one interface, receiving every IPv6 packet that arrives on it
/// (cooked: without the link-layer header).
///
/// It is bound to `ETH_P_ALL`, not `ETH_P_IPV6`: the kernel hands packets to `ETH_P_ALL`
/// sockets (taps) before TC ingress, to protocol-specific ones after it. The data path drops
/// Mobility Header packets carrying an RH2 or a Home Address option at TC ingress (the kernel
/// would answer them with a Parameter Problem), so only a tap sees a Binding Update at a
/// client or a Binding Acknowledgement at a member. Other protocols are skipped in `recv`.
#[derive(Debug)]
pub struct PacketReceiver {
    fd: OwnedFd,
}

impl PacketReceiver {
    /// Opens the socket on `interface` in the calling thread's network namespace (needs
    /// CAP_NET_RAW).
    pub fn new(interface: &str) -> io::Result<Self> {
        let name = CString::new(interface)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name has NUL"))?;
        // SAFETY: `name` is a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no interface {interface} in this network namespace"),
            ));
        }
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value to start from.
        let mut addr: libc::sockaddr_ll = unsafe { core::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_ALL_BE;
        addr.sll_ifindex = i32::try_from(ifindex).unwrap_or(0);
        // SAFETY: `addr` is a valid sockaddr_ll whose size is passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                core::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let rx = PacketReceiver { fd };
        // Packets from other interfaces may have queued between socket() and bind().
        let mut scratch = [0u8; 2048];
        while rx.recv(&mut scratch)?.is_some() {}
        Ok(rx)
    }

    /// Waits until a packet is readable or `timeout` passes; returns whether one is.
    pub fn wait(&self, timeout: Duration) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // Round sub-millisecond waits up so that a due timer is not spun on.
        let ms = if ms == 0 && !timeout.is_zero() { 1 } else { ms };
        // SAFETY: `pfd` is one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(e);
        }
        Ok(rc > 0 && pfd.revents & libc::POLLIN != 0)
    }

    /// Receives one packet into `buf`: `Some((length, outgoing))`, `None` when nothing is
    /// queued. `outgoing` marks this host's own transmissions, which a packet socket also sees.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<(usize, bool)>> {
        loop {
            match self.recv_any(buf)? {
                None => return Ok(None),
                Some((n, outgoing, protocol)) if protocol == ETH_P_IPV6_BE => {
                    return Ok(Some((n, outgoing)));
                }
                Some(_) => {}
            }
        }
    }

    /// One packet of any protocol, with its `sll_protocol`.
    fn recv_any(&self, buf: &mut [u8]) -> io::Result<Option<(usize, bool, u16)>> {
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value to start from.
        let mut from: libc::sockaddr_ll = unsafe { core::mem::zeroed() };
        let mut len = core::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `buf` is a valid writable buffer of the given length; `from`/`len` describe a
        // valid sockaddr_ll.
        let n = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&raw mut from).cast(),
                &mut len,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some((
            n as usize,
            from.sll_pkttype == libc::PACKET_OUTGOING,
            from.sll_protocol,
        )))
    }
}

impl AsRawFd for PacketReceiver {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
