//! The application API: how a server application works with handoffd.
//!
//! An application registers the DSA and port it serves, reports the connections it accepts and
//! closes, and reacts to three events: **yield** (handoffd wants to move a connection: at the
//! next safe point, hand over the socket with the application's state), **adopt** (a connection
//! arrives — handed off from another member, or given back after a failed handoff — with the
//! state it was yielded with) and **refused** (handoffd could not take the request that handed a
//! connection over: the socket comes back, without a state). It may also move a connection on
//! its own ([`Service::move_to`]).
//!
//! Underneath is a Unix `SOCK_SEQPACKET` socket with one JSON message per datagram and the
//! sockets passed with SCM_RIGHTS ([`seqpacket`], messages in [`proto`]), documented in
//! docs/handoffd.md for other languages.
//!
//! **When handoffd restarts** (an upgrade, a crash) the application keeps its connections: they
//! are ordinary sockets of its own. [`Events::next_event`] returns `None`; reporting calls fail
//! (cleanly: an error, never a signal), but the library keeps track of what they report; the
//! application calls
//! [`Service::reconnect`] — every 100 ms or so until handoffd is back — which registers the
//! same service again, reports every connection the application still serves, and puts the new
//! socket under every clone of the [`Service`]. Nothing else changes: the clones held by the
//! connections' threads keep working.
//!
//! This crate is all an application links: it needs no eBPF build, nothing of the data path or
//! of `TCP_REPAIR` (handoffd does that). The demo application `handoff-fileserver` depends on it
//! alone; handoffd re-exports it as `handoff_user::app`.
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! use handoff_app::{Event, Service};
//! let (service, mut events) =
//!     Service::register("/run/handoffd/app.sock".as_ref(), "fd00:d51:ff00::1".parse().unwrap(), 8080)?;
//! loop {
//!     while let Some(event) = events.next_event()? {
//!         match event {
//!             Event::Yield(conn) => { /* tell the connection's worker to call service.yield_conn */ }
//!             Event::Adopt { conn, stream, state } => { /* resume serving from `state` on */ }
//!             Event::Refused { conn, stream, message } => { /* serve on, or close and report */ }
//!         }
//!     }
//!     // handoffd is gone: keep serving, and register again once it is back.
//!     events = loop {
//!         match service.reconnect() {
//!             Ok(events) => break events,
//!             Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
//!         }
//!     };
//! }
//! # }
//! ```

use std::{
    collections::{HashMap, HashSet},
    fmt, io,
    net::{Ipv6Addr, TcpStream},
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
};

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};

pub mod mtu;
pub mod proto;
pub mod seqpacket;

use crate::{
    proto::{AppEvent, AppRequest, ConnId},
    seqpacket::{Received, SeqPacket},
};

/// The largest application state that fits a message.
pub const MAX_STATE: usize = 64 << 10;

/// The sending side: cheap to clone and share between the application's threads. Every clone
/// sends on the current socket to handoffd, also after [`Service::reconnect`] replaced it.
#[derive(Clone, Debug)]
pub struct Service {
    shared: Arc<Shared>,
}

/// What every clone of a [`Service`] (and its [`Events`]) shares.
struct Shared {
    /// handoffd's application socket.
    agent: PathBuf,
    /// The service registered (again on reconnection).
    dsa: Ipv6Addr,
    port: u16,
    /// The member's name, as handoffd gave it at registration.
    node: String,
    session: Mutex<Session>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service")
            .field("agent", &self.agent)
            .field("dsa", &self.dsa)
            .field("port", &self.port)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// The current socket to handoffd and what it was told, under one lock: a reconnection's
/// report and the swap of the socket happen between two other sends, never across one.
struct Session {
    socket: SeqPacket,
    /// The connections the application serves as handoffd knows them: reported `accepted` or
    /// adopted, and not yet reported closed, yielded or moved. Reported again on reconnection.
    conns: HashSet<ConnId>,
    /// Connections handed over (yielded or moved) whose outcome has not come yet: a copy of
    /// the socket and the state, given back to handoffd with `unsettled` on reconnection, so
    /// that a crash of handoffd in the middle of their handoff loses nothing.
    kept: HashMap<ConnId, (TcpStream, Vec<u8>)>,
    /// handoffd tells outcomes (it answered `keeps_sockets`): copies are kept.
    keeps: bool,
}

impl Session {
    fn send(&self, request: &AppRequest, stream: Option<&TcpStream>) -> io::Result<()> {
        send(&self.socket, request, stream)
    }
}

fn send(socket: &SeqPacket, request: &AppRequest, stream: Option<&TcpStream>) -> io::Result<()> {
    let message = serde_json::to_vec(request).map_err(io::Error::other)?;
    // A socket whose handoffd is gone fails with EPIPE (the send asks for no SIGPIPE).
    socket.send(&message, stream.map(|s| s.as_fd()))
}

/// The next message from handoffd and its descriptor; `None` when handoffd closed the socket.
/// handoffd sends nothing a receiver refuses: such a datagram is an error here.
fn receive(socket: &SeqPacket) -> io::Result<Option<(Vec<u8>, Option<OwnedFd>)>> {
    match socket.recv()? {
        Some(Received::Message(message, fd)) => Ok(Some((message, fd))),
        Some(Received::Refused(refused)) => Err(refused.into()),
        None => Ok(None),
    }
}

/// The events handoffd sends; read them on one thread.
#[derive(Debug)]
pub struct Events {
    socket: SeqPacket,
    shared: Arc<Shared>,
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
    /// handoffd refused the request that handed this connection over (a `yielded` or `move`
    /// it could not read; `message` says why) and gives the socket back: the connection is the
    /// application's again, as handoffd still counts it. The state handed over does not come
    /// back (handoffd could not read it): serve on from the application's own record, or close
    /// the connection and report it with [`Service::closed`].
    Refused {
        /// The connection.
        conn: ConnId,
        /// Its socket, live.
        stream: TcpStream,
        /// handoffd's error message.
        message: String,
    },
}

/// A yield or a move that did not reach handoffd (it is gone, or the state is too large): the
/// connection is still the application's, with its socket given back, to be served on (or
/// closed). handoffd still counts it as the application's (a reconnection reports it again).
#[derive(Debug)]
pub struct NotHandedOver {
    /// Why.
    pub error: io::Error,
    /// The connection's socket, untouched.
    pub stream: TcpStream,
}

impl fmt::Display for NotHandedOver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "connection not handed over: {}", self.error)
    }
}

impl std::error::Error for NotHandedOver {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
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

/// Connects to handoffd's application socket and registers `dsa`:`port`; returns the socket,
/// the member's name and whether handoffd tells the outcome of handoffs (`keeps_sockets`).
fn open_session(agent: &Path, dsa: Ipv6Addr, port: u16) -> io::Result<(SeqPacket, String, bool)> {
    let socket = SeqPacket::connect(agent)?;
    let register = AppRequest::Register {
        dsa,
        port,
        keeps_sockets: true,
    };
    send(&socket, &register, None)?;
    let reply = receive(&socket)?
        .ok_or_else(|| invalid("handoffd closed the application socket".into()))?;
    match serde_json::from_slice(&reply.0) {
        Ok(AppEvent::Registered {
            node,
            keeps_sockets,
        }) => Ok((socket, node, keeps_sockets)),
        Ok(AppEvent::Error { message, .. }) => Err(io::Error::other(message)),
        other => Err(invalid(format!("unexpected answer to register: {other:?}"))),
    }
}

fn lock(session: &Mutex<Session>) -> MutexGuard<'_, Session> {
    // A panic elsewhere while sending leaves the session as consistent as any send does.
    session
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Service {
    /// Connects to handoffd's application socket and registers `dsa`:`port`.
    pub fn register(agent: &Path, dsa: Ipv6Addr, port: u16) -> io::Result<(Service, Events)> {
        let (socket, node, keeps) = open_session(agent, dsa, port)?;
        let shared = Arc::new(Shared {
            agent: agent.to_owned(),
            dsa,
            port,
            node,
            session: Mutex::new(Session {
                socket: socket.try_clone()?,
                conns: HashSet::new(),
                kept: HashMap::new(),
                keeps,
            }),
        });
        let events = Events {
            socket,
            shared: Arc::clone(&shared),
        };
        Ok((Service { shared }, events))
    }

    /// Registers again after handoffd closed the socket ([`Events::next_event`] returned
    /// `None`: handoffd stopped or restarted): connects to the same application socket,
    /// registers the same service, reports every connection the application still serves
    /// (`accepted` with `resumed`: accepted or adopted, and neither closed, yielded nor moved —
    /// also those reported while handoffd was away), and from then on every clone of this
    /// `Service` sends there. Returns the new session's events; the old [`Events`] is done.
    ///
    /// One attempt: an error (typically `ConnectionRefused` or `NotFound` while handoffd is
    /// down) leaves everything as it was; try again a little later. Calling it while the old
    /// session is still open ends that session first (handoffd then forgets its connections,
    /// until this call reports them again; it may refuse the registration until it has noticed
    /// the end: try again).
    pub fn reconnect(&self) -> io::Result<Events> {
        let shared = &self.shared;
        lock(&shared.session).socket.shutdown();
        let (socket, _node, keeps) = open_session(&shared.agent, shared.dsa, shared.port)?;
        let sender = socket.try_clone()?;
        let mut session = lock(&shared.session);
        if !keeps {
            // A handoffd that takes no `unsettled`: the copies can only be closed.
            session.kept.clear();
        }
        for &conn in &session.conns {
            send(
                &sender,
                &AppRequest::Accepted {
                    conn,
                    resumed: true,
                },
                None,
            )?;
        }
        for (&conn, (stream, state)) in &session.kept {
            let request = AppRequest::Unsettled {
                conn,
                state: Self::encode(state)?,
            };
            send(&sender, &request, Some(stream))?;
        }
        session.socket = sender;
        session.keeps = keeps;
        Ok(Events {
            socket,
            shared: Arc::clone(shared),
        })
    }

    /// The member this application runs on.
    pub fn node(&self) -> &str {
        &self.shared.node
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

    /// Reports an accepted connection (so that handoffd lists and can move it). An error other
    /// than the socket's own (`conn_id`) means handoffd is gone: the connection is remembered
    /// and reported by [`Service::reconnect`]; serve it all the same.
    pub fn accepted(&self, stream: &TcpStream) -> io::Result<ConnId> {
        let conn = conn_id(stream)?;
        let mut session = lock(&self.shared.session);
        session.conns.insert(conn);
        session.send(
            &AppRequest::Accepted {
                conn,
                resumed: false,
            },
            None,
        )?;
        Ok(conn)
    }

    /// Reports a closed connection. An error means handoffd is gone; nothing is left to do
    /// (the connection is forgotten here, so a reconnection does not report it).
    pub fn closed(&self, conn: ConnId) -> io::Result<()> {
        let mut session = lock(&self.shared.session);
        session.conns.remove(&conn);
        session.send(&AppRequest::Closed { conn }, None)
    }

    /// Sends the socket and `state` with `request`; the connection is handoffd's from then on.
    fn hand_over(
        &self,
        stream: TcpStream,
        state: &[u8],
        request: impl FnOnce(ConnId, String) -> AppRequest,
    ) -> Result<(), NotHandedOver> {
        let sent = conn_id(&stream).and_then(|conn| {
            let request = request(conn, Self::encode(state)?);
            let mut session = lock(&self.shared.session);
            let copy = session.keeps.then(|| stream.try_clone()).transpose()?;
            session.send(&request, Some(&stream))?;
            session.conns.remove(&conn);
            if let Some(copy) = copy {
                session.kept.insert(conn, (copy, state.to_vec()));
            }
            Ok(())
        });
        sent.map_err(|error| NotHandedOver { error, stream })
    }

    /// Hands a connection to handoffd after a [`Event::Yield`]; the stream is given up, or
    /// given back in the error if handoffd cannot take it (or later with [`Event::Refused`] if
    /// handoffd refuses the request).
    pub fn yield_conn(&self, stream: TcpStream, state: &[u8]) -> Result<(), NotHandedOver> {
        self.hand_over(stream, state, |conn, state| AppRequest::Yielded {
            conn,
            state,
        })
    }

    /// Answers a [`Event::Yield`] with "not now": the connection stays.
    pub fn decline(&self, conn: ConnId, reason: &str) -> io::Result<()> {
        lock(&self.shared.session).send(
            &AppRequest::Decline {
                conn,
                reason: reason.to_owned(),
            },
            None,
        )
    }

    /// Moves a connection to member `node` on the application's own initiative; the stream is
    /// given up, or given back in the error if handoffd cannot take it. A move that fails later
    /// gives the connection back with [`Event::Adopt`] (or [`Event::Refused`] if handoffd
    /// refuses the request).
    pub fn move_to(
        &self,
        stream: TcpStream,
        node: &str,
        state: &[u8],
    ) -> Result<(), NotHandedOver> {
        self.hand_over(stream, state, |conn, state| AppRequest::Move {
            conn,
            to: node.to_owned(),
            state,
        })
    }
}

impl Events {
    /// The next event; `None` when handoffd closed the socket (it stopped or restarted: see
    /// [`Service::reconnect`]).
    pub fn next_event(&mut self) -> io::Result<Option<Event>> {
        loop {
            let Some((message, fd)) = receive(&self.socket)? else {
                return Ok(None);
            };
            let event: AppEvent = serde_json::from_slice(&message)
                .map_err(|e| invalid(format!("bad message from handoffd: {e}")))?;
            return Ok(Some(match event {
                AppEvent::Yield { conn } => Event::Yield(conn),
                AppEvent::Adopt { conn, state } => {
                    let state = BASE64
                        .decode(state)
                        .map_err(|e| invalid(format!("adopt: state is not base64: {e}")))?;
                    Event::Adopt {
                        conn,
                        stream: self.take(conn, fd, "adopt")?,
                        state,
                    }
                }
                AppEvent::Error {
                    message,
                    conn: Some(conn),
                } => {
                    tracing::warn!(
                        %conn,
                        %message,
                        "handoffd refused a request and gave the connection back"
                    );
                    Event::Refused {
                        conn,
                        stream: self.take(conn, fd, "error with a connection")?,
                        message,
                    }
                }
                AppEvent::Error {
                    message,
                    conn: None,
                } => {
                    tracing::warn!(%message, "handoffd refused a request");
                    continue;
                }
                AppEvent::HandedOff { conn } => {
                    // The copy is in repair mode: closing it sends nothing.
                    lock(&self.shared.session).kept.remove(&conn);
                    continue;
                }
                AppEvent::Registered { .. } => continue,
            }));
        }
    }

    /// The socket of a connection handoffd gives the application with `event`, which handoffd
    /// lists as the application's from then on.
    fn take(&self, conn: ConnId, fd: Option<OwnedFd>, event: &str) -> io::Result<TcpStream> {
        let fd = fd.ok_or_else(|| invalid(format!("{event} without a socket")))?;
        let mut session = lock(&self.shared.session);
        session.conns.insert(conn);
        // A connection handed over and given back: the copy kept meanwhile goes.
        session.kept.remove(&conn);
        Ok(TcpStream::from(fd))
    }
}

/// Unsent bytes a connection of [`listen`] may hold (`TCP_NOTSENT_LOWAT`): writes wait
/// beyond it, so a handoff carries at most this much unsent data besides what is in flight.
pub const NOTSENT_LOWAT: u32 = 64 << 10;

/// A listening socket for a service on `addr`, with its MSS clamped for links of MTU `mtu` so
/// that the headers the data path adds (RH2, Home Address option, tunnel) always fit
/// ([`mtu`]), and its unsent data bounded by [`NOTSENT_LOWAT`] (inherited by
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
    mtu::clamp_mss(&socket, mtu)?;
    set_notsent_lowat(&socket, NOTSENT_LOWAT)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// `TCP_NOTSENT_LOWAT` (neither nix nor socket2 has it).
fn set_notsent_lowat(socket: &socket2::Socket, bytes: u32) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: `bytes` is a live u32 and its size is what we pass.
    let ret = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&bytes as *const u32).cast(),
            size_of::<u32>() as libc::socklen_t,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashSet,
        net::{TcpListener, TcpStream},
        thread,
    };

    use super::*;
    use crate::seqpacket::SeqPacketListener;

    /// A fake handoffd session: answers the registration, then returns the socket.
    fn fake_handoffd(listener: SeqPacketListener) -> thread::JoinHandle<SeqPacket> {
        fake_handoffd_telling_outcomes(listener, true)
    }

    /// [`fake_handoffd`]; `keeps_sockets`: its answer to the application's `keeps_sockets`
    /// (`false`: as a handoffd from before it).
    fn fake_handoffd_telling_outcomes(
        listener: SeqPacketListener,
        keeps_sockets: bool,
    ) -> thread::JoinHandle<SeqPacket> {
        thread::spawn(move || {
            let session = listener.accept().unwrap();
            let (message, _) = receive(&session).unwrap().unwrap();
            let request: AppRequest = serde_json::from_slice(&message).unwrap();
            assert_eq!(
                request,
                AppRequest::Register {
                    dsa: Ipv6Addr::LOCALHOST,
                    port: 8080,
                    keeps_sockets: true,
                }
            );
            let registered = AppEvent::Registered {
                node: "node1".into(),
                keeps_sockets,
            };
            session
                .send(&serde_json::to_vec(&registered).unwrap(), None)
                .unwrap();
            session
        })
    }

    /// The next request, and the socket attached to it.
    fn request_with_fd(session: &SeqPacket) -> (AppRequest, Option<OwnedFd>) {
        let (message, fd) = receive(session).unwrap().unwrap();
        (serde_json::from_slice(&message).unwrap(), fd)
    }

    fn request(session: &SeqPacket) -> AppRequest {
        request_with_fd(session).0
    }

    /// A connected pair over loopback: (the application's end, the client's end).
    fn connection(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        (listener.accept().unwrap().0, client)
    }

    #[test]
    fn reconnect_registers_again_and_reports_the_connections_still_served() {
        let dir = std::env::temp_dir().join(format!("dsl-app-{}", std::process::id()));
        let path = dir.join("node1.app");
        let first = fake_handoffd(SeqPacketListener::bind(&path).unwrap());
        let (service, mut events) = Service::register(&path, Ipv6Addr::LOCALHOST, 8080).unwrap();
        let session = first.join().unwrap();
        assert_eq!(service.node(), "node1");
        let tcp = TcpListener::bind("[::1]:0").unwrap();
        let (kept, _c1) = connection(&tcp);
        let (closed, _c2) = connection(&tcp);
        let (yielded, _c3) = connection(&tcp);
        let (kept_id, closed_id) = (conn_id(&kept).unwrap(), conn_id(&closed).unwrap());
        // A clone, as a connection's thread holds it: it follows the reconnection.
        let worker = service.clone();
        assert_eq!(worker.accepted(&kept).unwrap(), kept_id);
        worker.accepted(&closed).unwrap();
        let yielded_id = worker.accepted(&yielded).unwrap();
        for _ in 0..3 {
            assert!(matches!(
                request(&session),
                AppRequest::Accepted { resumed: false, .. }
            ));
        }

        // handoffd dies (its socket file stays behind, as after SIGKILL).
        drop(session);
        assert!(events.next_event().unwrap().is_none());
        // Meanwhile: a connection accepted, one closed, a yield that cannot reach handoffd
        // (the socket comes back). Every report fails cleanly.
        let (late, _c4) = connection(&tcp);
        let late_id = conn_id(&late).unwrap();
        assert_eq!(
            worker.accepted(&late).unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
        worker.closed(closed_id).unwrap_err();
        let back = worker.yield_conn(yielded, b"state").unwrap_err();
        assert_eq!(back.error.kind(), io::ErrorKind::BrokenPipe);
        assert_eq!(conn_id(&back.stream).unwrap(), yielded_id);
        // Not back yet: the attempt fails and can be repeated.
        assert_eq!(
            service.reconnect().unwrap_err().kind(),
            io::ErrorKind::ConnectionRefused
        );

        // handoffd is back on the same path (the stale file is replaced).
        let second = fake_handoffd(SeqPacketListener::bind(&path).unwrap());
        let mut events = service.reconnect().unwrap();
        let session = second.join().unwrap();
        let mut resumed = HashSet::new();
        for _ in 0..3 {
            match request(&session) {
                AppRequest::Accepted {
                    conn,
                    resumed: true,
                } => assert!(resumed.insert(conn)),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(resumed, HashSet::from([kept_id, yielded_id, late_id]));
        // The clone sends on the new socket, and events come on it.
        worker.closed(kept_id).unwrap();
        assert_eq!(request(&session), AppRequest::Closed { conn: kept_id });
        let event = AppEvent::Yield { conn: late_id };
        session
            .send(&serde_json::to_vec(&event).unwrap(), None)
            .unwrap();
        assert!(matches!(events.next_event().unwrap(), Some(Event::Yield(c)) if c == late_id));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A connection handed over stays in the library (a copy of its socket, and its state)
    /// until handoffd tells the outcome — `handed_off` closes the copy, `adopt` replaces it —,
    /// and one whose outcome never came (handoffd died) goes back to the next handoffd with
    /// `unsettled`, its socket still connected.
    #[test]
    fn handed_over_sockets_are_kept_until_their_outcome() {
        use std::io::{Read as _, Write as _};
        let dir = std::env::temp_dir().join(format!("dsl-app-kept-{}", std::process::id()));
        let path = dir.join("node1.app");
        let first = fake_handoffd(SeqPacketListener::bind(&path).unwrap());
        let (service, mut events) = Service::register(&path, Ipv6Addr::LOCALHOST, 8080).unwrap();
        let session = first.join().unwrap();
        let tcp = TcpListener::bind("[::1]:0").unwrap();
        let (moved, _c1) = connection(&tcp);
        let (unsettled, mut client) = connection(&tcp);
        let (back, _c3) = connection(&tcp);
        let kept = |conn| lock(&service.shared.session).kept.contains_key(&conn);
        let [moved_id, unsettled_id, back_id] = [&moved, &unsettled, &back].map(|stream| {
            let conn = service.accepted(stream).unwrap();
            request(&session);
            conn
        });
        service.yield_conn(moved, b"m").unwrap();
        service.yield_conn(unsettled, b"u").unwrap();
        service.move_to(back, "node2", b"b").unwrap();
        let mut back_fd = None;
        for _ in 0..3 {
            if let (AppRequest::Move { .. }, fd) = request_with_fd(&session) {
                back_fd = fd;
            }
        }
        assert!(kept(moved_id) && kept(unsettled_id) && kept(back_id));
        let send = |event: &AppEvent, fd: Option<&OwnedFd>| {
            let message = serde_json::to_vec(event).unwrap();
            session.send(&message, fd.map(|fd| fd.as_fd())).unwrap();
        };
        send(&AppEvent::HandedOff { conn: moved_id }, None);
        let adopt = AppEvent::Adopt {
            conn: back_id,
            state: BASE64.encode(b"b"),
        };
        send(&adopt, back_fd.as_ref());
        assert!(
            matches!(events.next_event().unwrap(), Some(Event::Adopt { conn, .. }) if conn == back_id)
        );
        assert!(!kept(moved_id) && kept(unsettled_id) && !kept(back_id));

        // handoffd dies before the outcome of the second; the next one gets it back.
        drop(session);
        assert!(events.next_event().unwrap().is_none());
        let second = fake_handoffd(SeqPacketListener::bind(&path).unwrap());
        let _events = service.reconnect().unwrap();
        let session = second.join().unwrap();
        assert_eq!(
            request(&session),
            AppRequest::Accepted {
                conn: back_id,
                resumed: true
            }
        );
        let (request, fd) = request_with_fd(&session);
        assert_eq!(
            request,
            AppRequest::Unsettled {
                conn: unsettled_id,
                state: BASE64.encode(b"u"),
            }
        );
        let mut socket = TcpStream::from(fd.expect("the socket comes with unsettled"));
        assert_eq!(conn_id(&socket).unwrap(), unsettled_id);
        socket.write_all(b"still here").unwrap();
        let mut bytes = [0u8; 10];
        client.read_exact(&mut bytes).unwrap();
        assert_eq!(&bytes, b"still here");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A handoffd that does not tell outcomes (from before `keeps_sockets`): no copy is kept,
    /// the socket handed over is its alone, as it always was.
    #[test]
    fn no_copy_is_kept_for_a_handoffd_that_tells_no_outcomes() {
        let dir = std::env::temp_dir().join(format!("dsl-app-old-{}", std::process::id()));
        let path = dir.join("node1.app");
        let handoffd =
            fake_handoffd_telling_outcomes(SeqPacketListener::bind(&path).unwrap(), false);
        let (service, _events) = Service::register(&path, Ipv6Addr::LOCALHOST, 8080).unwrap();
        let session = handoffd.join().unwrap();
        let tcp = TcpListener::bind("[::1]:0").unwrap();
        let (stream, _client) = connection(&tcp);
        service.accepted(&stream).unwrap();
        request(&session);
        service.yield_conn(stream, b"state").unwrap();
        assert!(matches!(request(&session), AppRequest::Yielded { .. }));
        assert!(lock(&service.shared.session).kept.is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// handoffd refuses a `yielded` and gives the socket back with the error: the application
    /// gets the live stream with [`Event::Refused`], and the connection is counted as its own
    /// again (a reconnection reports it).
    #[test]
    fn a_refused_hand_over_gives_the_stream_back() {
        use std::io::{Read as _, Write as _};
        let dir = std::env::temp_dir().join(format!("dsl-app-refused-{}", std::process::id()));
        let path = dir.join("node1.app");
        let handoffd = fake_handoffd(SeqPacketListener::bind(&path).unwrap());
        let (service, mut events) = Service::register(&path, Ipv6Addr::LOCALHOST, 8080).unwrap();
        let session = handoffd.join().unwrap();
        let tcp = TcpListener::bind("[::1]:0").unwrap();
        let (stream, mut client) = connection(&tcp);
        let conn = service.accepted(&stream).unwrap();
        request(&session);
        service.yield_conn(stream, b"state").unwrap();
        assert!(!lock(&service.shared.session).conns.contains(&conn));
        let (yielded, fd) = request_with_fd(&session);
        assert!(matches!(yielded, AppRequest::Yielded { conn: c, .. } if c == conn));
        let refused = AppEvent::Error {
            message: "message refused: too large".into(),
            conn: Some(conn),
        };
        session
            .send(
                &serde_json::to_vec(&refused).unwrap(),
                fd.as_ref().map(|fd| fd.as_fd()),
            )
            .unwrap();
        drop(fd);
        let Some(Event::Refused {
            conn: back,
            mut stream,
            message,
        }) = events.next_event().unwrap()
        else {
            panic!("no refused event");
        };
        assert_eq!(
            (back, message.as_str()),
            (conn, "message refused: too large")
        );
        assert_eq!(conn_id(&stream).unwrap(), conn);
        assert!(lock(&service.shared.session).conns.contains(&conn));
        stream.write_all(b"served on").unwrap();
        let mut got = [0u8; 9];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"served on");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
