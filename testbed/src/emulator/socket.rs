//! AF_PACKET sockets bound to one interface: the emulator's view of a wire end.

use std::{
    io, mem,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

/// `PACKET_IGNORE_OUTGOING` (Linux 4.20): not in every libc release.
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
/// Socket buffers large enough for a 100 Mbit/s burst of a few hundred ms.
const BUFFER_BYTES: libc::c_int = 8 << 20;

/// A raw frame socket on one interface of the calling thread's namespace.
#[derive(Debug)]
pub(crate) struct PacketSocket {
    fd: OwnedFd,
}

/// One received frame's metadata.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Received {
    /// Bytes copied into the buffer.
    pub(crate) len: usize,
    /// The frame's real length (larger than `len` when it did not fit).
    pub(crate) wire_len: usize,
    /// When the kernel received it, CLOCK_REALTIME nanoseconds (SO_TIMESTAMPNS).
    pub(crate) kernel_realtime_ns: Option<u64>,
}

impl PacketSocket {
    /// Opens a socket on interface `ifindex`. A receiving socket gets every frame arriving on
    /// the interface (not those sent through it); a sending one receives nothing.
    pub(crate) fn open(ifindex: u32, receive: bool) -> io::Result<PacketSocket> {
        // Protocol 0 at creation: an ETH_P_ALL socket would see frames of every interface until
        // bind() narrows it down.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        let socket = PacketSocket {
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
        };
        if receive {
            socket.set_int(libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)?;
            socket.set_int(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, BUFFER_BYTES)?;
            socket.set_int(libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)?;
            socket.set_receive_timeout(Duration::from_millis(100))?;
        } else {
            socket.set_int(libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, BUFFER_BYTES)?;
        }
        let protocol = if receive {
            (libc::ETH_P_ALL as u16).to_be()
        } else {
            0
        };
        let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol;
        addr.sll_ifindex = ifindex as i32;
        let rc = unsafe {
            libc::bind(
                socket.fd.as_raw_fd(),
                (&raw const addr).cast(),
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(socket)
    }

    fn set_int(&self, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (&raw const value).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn set_receive_timeout(&self, timeout: Duration) -> io::Result<()> {
        let value = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const value).cast(),
                mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Receives one incoming frame into `buf`; `Ok(None)` after the receive timeout or for a
    /// frame the interface itself sent (PACKET_OUTGOING: the ignore option makes these rare).
    pub(crate) fn recv(&self, buf: &mut [u8]) -> io::Result<Option<Received>> {
        let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // Room for one SCM_TIMESTAMPNS (a timespec) with its header, u64-aligned.
        let mut control = [0u64; 8];
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_name = (&raw mut addr).cast();
        msg.msg_namelen = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = mem::size_of_val(&control);
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &raw mut msg, libc::MSG_TRUNC) };
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(err),
            };
        }
        if addr.sll_pkttype == libc::PACKET_OUTGOING {
            return Ok(None);
        }
        let wire_len = n as usize;
        let mut kernel_realtime_ns = None;
        // SAFETY: msg was filled by recvmsg; the CMSG_* walk stays within msg_controllen.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET
                    && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
                {
                    let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                    kernel_realtime_ns = Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
                }
                cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
            }
        }
        Ok(Some(Received {
            len: wire_len.min(buf.len()),
            wire_len,
            kernel_realtime_ns,
        }))
    }

    /// Sends one complete Ethernet frame out of the interface.
    pub(crate) fn send(&self, frame: &[u8]) -> io::Result<()> {
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every namespace of the host.
pub(crate) fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CLOCK_REALTIME in nanoseconds (the clock of socket timestamps).
pub(crate) fn realtime_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // clock_gettime cannot fail for these clocks with a valid pointer.
    unsafe { libc::clock_gettime(clock, &raw mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
