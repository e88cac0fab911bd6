//! Sending whole IPv6 packets on an `IPPROTO_RAW` socket (implies `IPV6_HDRINCL`).

use std::io;
use std::net::Ipv6Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::transmit::Transmit;

/// A raw IPv6 socket that sends packets exactly as built by the cores.
#[derive(Debug)]
pub struct RawSender {
    fd: OwnedFd,
}

impl RawSender {
    /// Opens the socket in the calling thread's network namespace (needs CAP_NET_RAW).
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET6,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::IPPROTO_RAW,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
        Ok(RawSender {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Sends one datagram to its IPv6 destination (the kernel routes on it and resolves the
    /// next hop; the header, RH2 and HAO go out unchanged).
    pub fn send(&self, transmit: &Transmit) -> io::Result<()> {
        self.send_packet(&transmit.packet, transmit.destination)
    }

    /// Sends raw packet bytes (starting with the IPv6 header) towards `destination`.
    pub fn send_packet(&self, packet: &[u8], destination: Ipv6Addr) -> io::Result<()> {
        // SAFETY: sockaddr_in6 is plain data; all-zero is a valid value to start from.
        let mut addr: libc::sockaddr_in6 = unsafe { core::mem::zeroed() };
        addr.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        addr.sin6_addr.s6_addr = destination.octets();
        // SAFETY: `packet` is a valid buffer of the given length; `addr` is a valid
        // sockaddr_in6 whose size is passed.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&raw const addr).cast(),
                core::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize != packet.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("raw socket sent {n} of {} bytes", packet.len()),
            ));
        }
        Ok(())
    }
}
