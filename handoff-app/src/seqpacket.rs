//! Unix `SOCK_SEQPACKET` sockets carrying one JSON message per datagram, with at most one file
//! descriptor attached (SCM_RIGHTS): the transport of the application protocol. Datagrams
//! keep message boundaries, so a socket never arrives without its message or vice versa; a
//! datagram the receiver cannot take comes with the descriptors it carried, never without
//! them.

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

/// The most descriptors one message can carry (the kernel's `SCM_MAX_FD`): [`SeqPacket::recv`]
/// has room for all of them, so that a refused datagram comes with every one.
const SCM_MAX_FD: usize = 253;

/// A connected socket.
#[derive(Debug)]
pub struct SeqPacket(OwnedFd);

/// One datagram, as [`SeqPacket::recv`] takes it.
#[derive(Debug)]
pub enum Received {
    /// A message and the descriptor attached to it.
    Message(Vec<u8>, Option<OwnedFd>),
    /// A datagram consumed but not taken.
    Refused(Refused),
}

/// A datagram [`SeqPacket::recv`] does not take: over [`MAX_DATAGRAM`] (the message is cut),
/// with its control data truncated (which descriptors alone cannot cause: there is room for
/// the most one message carries), or with more than one descriptor.
#[derive(Debug)]
pub struct Refused {
    /// Why.
    pub reason: &'static str,
    /// The descriptors it carried, for the receiver to give back to the sender or close.
    pub fds: Vec<OwnedFd>,
}

impl From<Refused> for io::Error {
    /// For a receiver that gives nothing back: [`io::ErrorKind::InvalidData`], the descriptors
    /// closed.
    fn from(refused: Refused) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, refused.reason)
    }
}

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

    /// Receives one datagram; `None` when the peer closed. A datagram over [`MAX_DATAGRAM`],
    /// with its control data truncated or with more than one descriptor is consumed and
    /// [`Received::Refused`], with the descriptors it carried; the socket stays usable.
    pub fn recv(&self) -> io::Result<Option<Received>> {
        let mut buffer = vec![0u8; MAX_DATAGRAM];
        let mut cmsg = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
        let (len, truncated, mut fds) = {
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
            let truncated =
                msg.flags.contains(MsgFlags::MSG_TRUNC) || msg.flags.contains(MsgFlags::MSG_CTRUNC);
            (msg.bytes, truncated, fds)
        };
        if truncated || fds.len() > 1 {
            let reason = if truncated {
                "datagram or its descriptors truncated"
            } else {
                "more than one descriptor attached to a message"
            };
            return Ok(Some(Received::Refused(Refused { reason, fds })));
        }
        if len == 0 && fds.is_empty() {
            return Ok(None);
        }
        buffer.truncate(len);
        Ok(Some(Received::Message(buffer, fds.pop())))
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

    /// A connected pair: (client, server).
    fn pair(tag: &str) -> (SeqPacket, SeqPacket, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("dsl-seqpacket-{tag}-{}", std::process::id()));
        let listener = SeqPacketListener::bind(&dir.join("s")).unwrap();
        let client = SeqPacket::connect(&dir.join("s")).unwrap();
        (client, listener.accept().unwrap(), dir)
    }

    fn taken(received: Option<Received>) -> (Vec<u8>, Option<OwnedFd>) {
        match received {
            Some(Received::Message(message, fd)) => (message, fd),
            other => panic!("not a message: {other:?}"),
        }
    }

    fn refused(received: Option<Received>) -> Refused {
        match received {
            Some(Received::Refused(refused)) => refused,
            other => panic!("not refused: {other:?}"),
        }
    }

    /// The listening sockets `fds` are, by their addresses.
    fn listeners(fds: Vec<OwnedFd>) -> Vec<std::net::SocketAddr> {
        fds.into_iter()
            .map(|fd| TcpListener::from(fd).local_addr().unwrap())
            .collect()
    }

    #[test]
    fn messages_and_descriptors_travel_together() {
        let (client, server, dir) = pair("fd");
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        client.send(b"with fd", Some(tcp.as_fd())).unwrap();
        client.send(b"without", None).unwrap();
        let (message, fd) = taken(server.recv().unwrap());
        assert_eq!(message, b"with fd");
        assert_eq!(
            listeners(fd.into_iter().collect()),
            [tcp.local_addr().unwrap()]
        );
        let (message, fd) = taken(server.recv().unwrap());
        assert_eq!(message, b"without");
        assert!(fd.is_none());
        drop(client);
        assert!(server.recv().unwrap().is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A datagram too large, or with one descriptor too many, is consumed and refused with the
    /// descriptors it carried (the receiver can give them back); the next one arrives.
    #[test]
    fn a_refused_datagram_comes_with_its_descriptors_and_the_next_one_arrives() {
        let (client, server, dir) = pair("big");
        let (a, b) = (
            TcpListener::bind("127.0.0.1:0").unwrap(),
            TcpListener::bind("127.0.0.1:0").unwrap(),
        );
        let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        // Past the sender's own check, as another implementation could send it (with a send
        // buffer that holds it: the kernel caps it at twice wmem_max, 416 KiB by default).
        socket::setsockopt(&client.0, socket::sockopt::SndBuf, &(512 << 10)).unwrap();
        let big = vec![b'x'; MAX_DATAGRAM + 1];
        let send_raw = |message: &[u8], fds: &[RawFd]| {
            let iov = [IoSlice::new(message)];
            let cmsg = [ControlMessage::ScmRights(fds)];
            socket::sendmsg::<()>(client.0.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
                .unwrap();
        };
        send_raw(&big, &[a.as_raw_fd()]);
        send_raw(b"two", &[a.as_raw_fd(), b.as_raw_fd()]);
        client.send(b"after", None).unwrap();
        let too_large = refused(server.recv().unwrap());
        assert_eq!(too_large.reason, "datagram or its descriptors truncated");
        assert_eq!(listeners(too_large.fds), [a_addr]);
        let too_many = refused(server.recv().unwrap());
        assert_eq!(
            too_many.reason,
            "more than one descriptor attached to a message"
        );
        assert_eq!(listeners(too_many.fds), [a_addr, b_addr]);
        let (message, _) = taken(server.recv().unwrap());
        assert_eq!(message, b"after");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
