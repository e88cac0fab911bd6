//! Unix `SOCK_SEQPACKET` sockets carrying one JSON message per datagram, with at most one file
//! descriptor attached (SCM_RIGHTS): the transport of the application protocol. Datagrams
//! keep message boundaries, so a socket never arrives without its message or vice versa.

use std::{
    io::{self, IoSlice, IoSliceMut},
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
        unix::fs::PermissionsExt,
    },
    path::Path,
};

use nix::sys::socket::{
    self, AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
    SockType, UnixAddr,
};

/// The largest datagram (message and application state) accepted.
pub const MAX_DATAGRAM: usize = 256 << 10;

/// A connected socket.
#[derive(Debug)]
pub struct SeqPacket(OwnedFd);

/// A listening socket.
#[derive(Debug)]
pub struct SeqPacketListener(OwnedFd);

fn new_socket() -> io::Result<OwnedFd> {
    Ok(socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

impl SeqPacketListener {
    /// Binds `path` (replacing a stale socket file) and listens; the socket is usable by the
    /// owner and group only.
    pub fn bind(path: &Path) -> io::Result<SeqPacketListener> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let fd = new_socket()?;
        socket::bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
        socket::listen(&fd, Backlog::new(64)?)?;
        Ok(SeqPacketListener(fd))
    }

    /// Waits for a connection.
    pub fn accept(&self) -> io::Result<SeqPacket> {
        let fd = socket::accept4(self.0.as_raw_fd(), SockFlag::SOCK_CLOEXEC)?;
        // SAFETY: accept4 returned a new descriptor that nothing else owns.
        Ok(SeqPacket(unsafe { OwnedFd::from_raw_fd(fd) }))
    }
}

impl SeqPacket {
    /// Connects to a listener at `path`.
    pub fn connect(path: &Path) -> io::Result<SeqPacket> {
        let fd = new_socket()?;
        socket::connect(fd.as_raw_fd(), &UnixAddr::new(path)?).map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("{}: {e}", path.display()),
            )
        })?;
        Ok(SeqPacket(fd))
    }

    /// Sends one message, with `fd` attached if given.
    pub fn send(&self, message: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        if message.len() > MAX_DATAGRAM {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("message of {} bytes (limit {MAX_DATAGRAM})", message.len()),
            ));
        }
        let iov = [IoSlice::new(message)];
        let raw: Vec<RawFd> = fd.iter().map(|fd| fd.as_raw_fd()).collect();
        let cmsgs: Vec<ControlMessage<'_>> = if raw.is_empty() {
            Vec::new()
        } else {
            vec![ControlMessage::ScmRights(&raw)]
        };
        socket::sendmsg::<()>(
            self.0.as_raw_fd(),
            &iov,
            &cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )?;
        Ok(())
    }

    /// Receives one message and the descriptor attached to it; `None` when the peer closed. A
    /// datagram over [`MAX_DATAGRAM`] or with more than one descriptor is consumed and refused
    /// with [`io::ErrorKind::InvalidData`] (its descriptors closed); the socket stays usable.
    pub fn recv(&self) -> io::Result<Option<(Vec<u8>, Option<OwnedFd>)>> {
        let mut buffer = vec![0u8; MAX_DATAGRAM];
        let mut cmsg = nix::cmsg_space!([RawFd; 4]);
        let (len, fds) = {
            let mut iov = [IoSliceMut::new(&mut buffer)];
            let msg = socket::recvmsg::<()>(
                self.0.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )?;
            let mut fds = Vec::new();
            for c in msg.cmsgs()? {
                if let ControlMessageOwned::ScmRights(received) = c {
                    // SAFETY: the kernel installed these descriptors for us; we own them now.
                    fds.extend(
                        received
                            .into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
            if msg.flags.contains(MsgFlags::MSG_TRUNC) || msg.flags.contains(MsgFlags::MSG_CTRUNC) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "datagram or its descriptors truncated",
                ));
            }
            (msg.bytes, fds)
        };
        if len == 0 && fds.is_empty() {
            return Ok(None);
        }
        if fds.len() > 1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "more than one descriptor attached to a message",
            ));
        }
        buffer.truncate(len);
        Ok(Some((buffer, fds.into_iter().next())))
    }

    /// A second handle on the same socket (one thread reads while others send).
    pub fn try_clone(&self) -> io::Result<SeqPacket> {
        Ok(SeqPacket(self.0.try_clone()?))
    }

    /// Shuts the socket down (a reader blocked in `recv` returns `None`).
    pub fn shutdown(&self) {
        let _ = socket::shutdown(self.0.as_raw_fd(), socket::Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use std::{net::TcpListener, os::fd::AsFd as _};

    use super::*;

    #[test]
    fn messages_and_descriptors_travel_together() {
        let dir = std::env::temp_dir().join(format!("dsl-seqpacket-{}", std::process::id()));
        let path = dir.join("s");
        let listener = SeqPacketListener::bind(&path).unwrap();
        let client = SeqPacket::connect(&path).unwrap();
        let server = listener.accept().unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        client.send(b"with fd", Some(tcp.as_fd())).unwrap();
        client.send(b"without", None).unwrap();
        let (message, fd) = server.recv().unwrap().unwrap();
        assert_eq!(message, b"with fd");
        let received = std::net::TcpListener::from(fd.unwrap());
        assert_eq!(received.local_addr().unwrap(), tcp.local_addr().unwrap());
        let (message, fd) = server.recv().unwrap().unwrap();
        assert_eq!(message, b"without");
        assert!(fd.is_none());
        drop(client);
        assert!(server.recv().unwrap().is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_oversized_datagram_is_refused_and_the_next_one_arrives() {
        let dir = std::env::temp_dir().join(format!("dsl-seqpacket-big-{}", std::process::id()));
        let path = dir.join("s");
        let listener = SeqPacketListener::bind(&path).unwrap();
        let client = SeqPacket::connect(&path).unwrap();
        let server = listener.accept().unwrap();
        // Past the sender's own check, as another implementation could send it (with a send
        // buffer that holds it: the kernel caps it at twice wmem_max, 416 KiB by default).
        socket::setsockopt(&client.0, socket::sockopt::SndBuf, &(512 << 10)).unwrap();
        let big = vec![b'x'; MAX_DATAGRAM + 1];
        socket::send(client.0.as_raw_fd(), &big, MsgFlags::empty()).unwrap();
        client.send(b"after", None).unwrap();
        let refused = server.recv().unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::InvalidData);
        let (message, _) = server.recv().unwrap().unwrap();
        assert_eq!(message, b"after");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
