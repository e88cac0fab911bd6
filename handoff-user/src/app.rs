//! The application API: how a server application works with handoffd.
//!
//! An application registers the DSA and port it serves, reports the connections it accepts and
//! closes, and reacts to two events: **yield** (handoffd wants to move a connection: at the next
//! safe point, hand over the socket with the application's state) and **adopt** (a connection
//! arrives — handed off from another member, or given back after a failed handoff — with the
//! state it was yielded with). It may also move a connection on its own ([`Service::move_to`]).
//!
//! Underneath is a Unix `SOCK_SEQPACKET` socket with one JSON message per datagram and the
//! sockets passed with SCM_RIGHTS, documented in docs/handoffd.md for other languages.
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! use handoff_user::app::{Event, Service};
//! let (service, mut events) =
//!     Service::register("/run/handoffd/app.sock".as_ref(), "fd00:d51:ff00::1".parse().unwrap(), 8080)?;
//! while let Some(event) = events.next_event()? {
//!     match event {
//!         Event::Yield(conn) => { /* tell the connection's worker to call service.yield_conn */ }
//!         Event::Adopt { conn, stream, state } => { /* resume serving from `state` */ }
//!     }
//! }
//! # Ok(()) }
//! ```

use std::{
    io,
    net::{Ipv6Addr, TcpStream},
    os::fd::AsFd as _,
    path::Path,
    sync::Arc,
};

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};

use crate::agent::{
    proto::{AppEvent, AppRequest, ConnId},
    seqpacket::SeqPacket,
};

/// The largest application state that fits a message.
pub const MAX_STATE: usize = 64 << 10;

/// The sending side: cheap to clone and share between the application's threads.
#[derive(Clone, Debug)]
pub struct Service {
    socket: Arc<SeqPacket>,
    node: Arc<str>,
}

/// The events handoffd sends; read them on one thread.
#[derive(Debug)]
pub struct Events {
    socket: SeqPacket,
}

/// What handoffd asks of the application.
#[derive(Debug)]
pub enum Event {
    /// Yield this connection at the next safe point ([`Service::yield_conn`]), or decline.
    Yield(ConnId),
    /// Serve this connection from `state` on.
    Adopt {
        /// The connection.
        conn: ConnId,
        /// Its socket, live.
        stream: TcpStream,
        /// The state it was yielded with.
        state: Vec<u8>,
    },
}

/// The connection a socket belongs to.
pub fn conn_id(stream: &TcpStream) -> io::Result<ConnId> {
    Ok(ConnId {
        client: stream.peer_addr()?,
        local: stream.local_addr()?,
    })
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

impl Service {
    /// Connects to handoffd's application socket and registers `dsa`:`port`.
    pub fn register(agent: &Path, dsa: Ipv6Addr, port: u16) -> io::Result<(Service, Events)> {
        let socket = SeqPacket::connect(agent)?;
        let service = Service {
            socket: Arc::new(socket.try_clone()?),
            node: Arc::from(""),
        };
        service.send(&AppRequest::Register { dsa, port }, None)?;
        let reply = socket
            .recv()?
            .ok_or_else(|| invalid("handoffd closed the application socket".into()))?;
        match serde_json::from_slice(&reply.0) {
            Ok(AppEvent::Registered { node }) => Ok((
                Service {
                    node: Arc::from(node),
                    ..service
                },
                Events { socket },
            )),
            Ok(AppEvent::Error { message }) => Err(io::Error::other(message)),
            other => Err(invalid(format!("unexpected answer to register: {other:?}"))),
        }
    }

    /// The member this application runs on.
    pub fn node(&self) -> &str {
        &self.node
    }

    fn send(&self, request: &AppRequest, stream: Option<&TcpStream>) -> io::Result<()> {
        let message = serde_json::to_vec(request).map_err(io::Error::other)?;
        self.socket.send(&message, stream.map(|s| s.as_fd()))
    }

    fn encode(state: &[u8]) -> io::Result<String> {
        if state.len() > MAX_STATE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "application state of {} bytes (limit {MAX_STATE})",
                    state.len()
                ),
            ));
        }
        Ok(BASE64.encode(state))
    }

    /// Reports an accepted connection (so that handoffd lists and can move it).
    pub fn accepted(&self, stream: &TcpStream) -> io::Result<ConnId> {
        let conn = conn_id(stream)?;
        self.send(&AppRequest::Accepted { conn }, None)?;
        Ok(conn)
    }

    /// Reports a closed connection.
    pub fn closed(&self, conn: ConnId) -> io::Result<()> {
        self.send(&AppRequest::Closed { conn }, None)
    }

    /// Hands a connection to handoffd after a [`Event::Yield`]; the stream is given up.
    pub fn yield_conn(&self, stream: TcpStream, state: &[u8]) -> io::Result<()> {
        let conn = conn_id(&stream)?;
        let state = Self::encode(state)?;
        self.send(&AppRequest::Yielded { conn, state }, Some(&stream))
    }

    /// Answers a [`Event::Yield`] with "not now": the connection stays.
    pub fn decline(&self, conn: ConnId, reason: &str) -> io::Result<()> {
        self.send(
            &AppRequest::Decline {
                conn,
                reason: reason.to_owned(),
            },
            None,
        )
    }

    /// Moves a connection to member `node` on the application's own initiative.
    pub fn move_to(&self, stream: TcpStream, node: &str, state: &[u8]) -> io::Result<()> {
        let conn = conn_id(&stream)?;
        let state = Self::encode(state)?;
        self.send(
            &AppRequest::Move {
                conn,
                to: node.to_owned(),
                state,
            },
            Some(&stream),
        )
    }
}

impl Events {
    /// The next event; `None` when handoffd closed the socket.
    pub fn next_event(&mut self) -> io::Result<Option<Event>> {
        loop {
            let Some((message, fd)) = self.socket.recv()? else {
                return Ok(None);
            };
            let event: AppEvent = serde_json::from_slice(&message)
                .map_err(|e| invalid(format!("bad message from handoffd: {e}")))?;
            return Ok(Some(match event {
                AppEvent::Yield { conn } => Event::Yield(conn),
                AppEvent::Adopt { conn, state } => {
                    let fd = fd.ok_or_else(|| invalid("adopt without a socket".into()))?;
                    let state = BASE64
                        .decode(state)
                        .map_err(|e| invalid(format!("adopt: state is not base64: {e}")))?;
                    Event::Adopt {
                        conn,
                        stream: TcpStream::from(fd),
                        state,
                    }
                }
                AppEvent::Error { message } => {
                    tracing::warn!(%message, "handoffd refused a request");
                    continue;
                }
                AppEvent::Registered { .. } => continue,
            }));
        }
    }
}

/// Unsent bytes a connection of [`listen`] may hold (`TCP_NOTSENT_LOWAT`): writes wait
/// beyond it, so a handoff carries at most this much unsent data besides what is in flight.
pub const NOTSENT_LOWAT: u32 = 64 << 10;

/// A listening socket for a service on `addr`, with its MSS clamped for links of MTU `mtu` so
/// that the headers the data path adds (RH2, Home Address option, tunnel) always fit
/// ([`crate::datapath::mtu`]), and its unsent data bounded by [`NOTSENT_LOWAT`] (inherited by
/// the accepted connections): a socket buffer of megabytes would otherwise travel with every
/// handoff of a fast writer.
pub fn listen(addr: std::net::SocketAddr, mtu: u32) -> io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    crate::datapath::mtu::clamp_mss(&socket, mtu)?;
    crate::tcpstate::sys::setsockopt(
        socket.as_fd(),
        libc::IPPROTO_TCP,
        libc::TCP_NOTSENT_LOWAT,
        &NOTSENT_LOWAT,
    )?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}
