//! The application socket: registrations, connections reported, yields, moves, `unsettled`.

use super::{control::log_report, *};

/// The connection of `fd` if it is a connected TCP socket (as the application names it:
/// [`app::conn_id`]), with `fd`; `None` for any other descriptor (dropped: closed).
pub(super) fn connection_of(fd: OwnedFd) -> Option<(ConnId, OwnedFd)> {
    let protocol = sys::get_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_PROTOCOL).ok()?;
    if protocol != libc::IPPROTO_TCP {
        return None;
    }
    let stream = std::net::TcpStream::from(fd);
    let conn = app::conn_id(&stream).ok()?;
    Some((conn, stream.into()))
}

impl Agent {
    pub(super) fn adopt(
        &self,
        app: AppId,
        conn: ConnId,
        socket: std::os::fd::BorrowedFd<'_>,
        state: &[u8],
    ) -> Result<(), String> {
        let socket_of_app = lock(&self.apps)
            .get(&app)
            .map(|a| Arc::clone(&a.socket))
            .ok_or("the application is gone")?;
        let event = AppEvent::Adopt {
            conn,
            state: BASE64.encode(state),
        };
        let message = serde_json::to_vec(&event).map_err(|e| e.to_string())?;
        socket_of_app
            .send(&message, Some(socket))
            .map_err(|e| e.to_string())
    }

    /// Lists `conn` as served by `app` and announces it. `arrived`: handed over from another
    /// member, or not known to be new (reported again after a restart).
    pub(super) fn take_conn(self: &Arc<Self>, app: AppId, conn: ConnId, arrived: bool) {
        // With route optimization a client's packets for the DSA go wherever its one binding
        // points (the last member that took one of its connections): every member must know
        // where each connection is served (path D). A resumed connection (reported again after
        // a restart of this agent) is announced too: it may have arrived from another member,
        // whose redirect then points here.
        self.broadcast(
            PeerMessage::Owner {
                conn,
                owner: self.config.care_of_address,
            },
            None,
        );
        lock(&self.conns).insert(conn, Conn::new(app, arrived));
        self.prefetch_home_token(conn);
    }

    /// Tells an application that keeps the sockets it hands over that `conn` is not its any
    /// more (the handoff went through, or a failed rollback lost it): it closes its copy.
    pub(super) fn handed_off(&self, app: AppId, conn: ConnId) {
        let Some(socket) = lock(&self.apps)
            .get(&app)
            .filter(|a| a.keeps_sockets)
            .map(|a| Arc::clone(&a.socket))
        else {
            return;
        };
        let sent = serde_json::to_vec(&AppEvent::HandedOff { conn })
            .map_err(|e| e.to_string())
            .and_then(|message| socket.send(&message, None).map_err(|e| e.to_string()));
        if let Err(e) = sent {
            // It gives the copy back with `unsettled` when it reconnects.
            tracing::warn!(app, %conn, "cannot tell the application its connection moved: {e}");
        }
    }

    pub(super) fn accept_apps(self: Arc<Self>, listener: SeqPacketListener) {
        loop {
            match listener.accept() {
                Ok(socket) => {
                    let agent = Arc::clone(&self);
                    thread::spawn(move || agent.serve_app(socket));
                }
                Err(e) => tracing::warn!("application socket accept: {e}"),
            }
        }
    }

    pub(super) fn serve_app(self: Arc<Self>, socket: SeqPacket) {
        let id = self.next_app.fetch_add(1, Ordering::Relaxed);
        let sender = match socket.try_clone() {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::warn!("application socket: {e}");
                return;
            }
        };
        lock(&self.apps).insert(
            id,
            App {
                socket: Arc::clone(&sender),
                services: Vec::new(),
                keeps_sockets: false,
            },
        );
        loop {
            let (message, mut fd) = match socket.recv() {
                Ok(Some(Received::Message(message, fd))) => (message, fd),
                // One datagram refused (too large, too many descriptors; already consumed):
                // the application hears why and gets its connections back, and its session
                // goes on.
                Ok(Some(Received::Refused(refused))) => {
                    let message = format!("message refused: {}", refused.reason);
                    self.refuse(id, &sender, message, refused.fds);
                    continue;
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(app = id, "application socket: {e}");
                    break;
                }
            };
            let request = match serde_json::from_slice::<AppRequest>(&message) {
                Ok(r) => r,
                Err(e) => {
                    self.refuse(id, &sender, format!("bad request: {e}"), fd);
                    continue;
                }
            };
            // A descriptor left by a request carried out is one it does not take: closed.
            if let Err(message) = self.on_app_request(id, &sender, request, &mut fd) {
                self.refuse(id, &sender, message, fd);
            }
        }
        lock(&self.apps).remove(&id);
        lock(&self.conns).retain(|_, c| c.app != id);
        tracing::info!(app = id, "application disconnected");
    }

    /// Refuses an application's request with an `error` event. A refused request takes
    /// nothing: each connected TCP socket that came with it goes back to the application, one
    /// `error` event each, naming its connection (`conn`); other descriptors are closed.
    pub(super) fn refuse(
        &self,
        app: AppId,
        socket: &SeqPacket,
        message: String,
        fds: impl IntoIterator<Item = OwnedFd>,
    ) {
        tracing::warn!(app, "application request refused: {message}");
        let mut events: Vec<(Option<ConnId>, Option<OwnedFd>)> = fds
            .into_iter()
            .filter_map(connection_of)
            .map(|(conn, fd)| (Some(conn), Some(fd)))
            .collect();
        if events.is_empty() {
            events.push((None, None));
        }
        for (conn, fd) in events {
            let event = AppEvent::Error {
                message: message.clone(),
                conn,
            };
            let sent = serde_json::to_vec(&event)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    socket
                        .send(&bytes, fd.as_ref().map(|fd| fd.as_fd()))
                        .map_err(|e| e.to_string())
                });
            let Some(conn) = conn else { continue };
            match sent {
                Ok(()) => tracing::info!(app, %conn, "connection given back to the application"),
                Err(e) => tracing::warn!(app, %conn, "connection lost, cannot give it back: {e}"),
            }
            // A handoff waiting for this connection's yield ends now, not at its timeout.
            if let Some(waiter) = lock(&self.yields).remove(&conn) {
                let _ = waiter.send(YieldAnswer::Declined(message.clone()));
            }
        }
    }

    /// Carries out an application's request. `fd`, the descriptor that came with it, is taken
    /// by the requests that take a socket (`yielded`, `move`) once they are accepted; a
    /// refused request leaves it for the caller to give back.
    pub(super) fn on_app_request(
        self: &Arc<Self>,
        app: AppId,
        socket: &SeqPacket,
        request: AppRequest,
        fd: &mut Option<OwnedFd>,
    ) -> Result<(), String> {
        let decode = |state: &str| {
            BASE64
                .decode(state)
                .map_err(|e| format!("state is not base64: {e}"))
        };
        match request {
            AppRequest::Register {
                dsa,
                port,
                keeps_sockets,
            } => {
                if !self.config.dsas.contains(&dsa) {
                    return Err(format!(
                        "{dsa} is not a DSA of {} (dsas in its configuration)",
                        self.config.node
                    ));
                }
                {
                    let mut apps = lock(&self.apps);
                    if apps
                        .iter()
                        .any(|(id, a)| *id != app && a.services.contains(&(dsa, port)))
                    {
                        return Err(format!(
                            "[{dsa}]:{port} is already served by another application on {}",
                            self.config.node
                        ));
                    }
                    if let Some(entry) = apps.get_mut(&app) {
                        entry.services.push((dsa, port));
                        entry.keeps_sockets |= keeps_sockets;
                    }
                }
                let reply = AppEvent::Registered {
                    node: self.config.node.clone(),
                    keeps_sockets,
                };
                let bytes = serde_json::to_vec(&reply).map_err(|e| e.to_string())?;
                socket.send(&bytes, None).map_err(|e| e.to_string())
            }
            AppRequest::Accepted { conn, resumed } => {
                // After a restart this agent cannot know where a resumed connection came
                // from: treated as arrived.
                self.take_conn(app, conn, resumed);
                if self.draining.load(Ordering::Relaxed) {
                    self.move_new_connection(conn);
                }
                Ok(())
            }
            AppRequest::Closed { conn } => {
                if lock(&self.conns).remove(&conn).is_some() {
                    self.broadcast(PeerMessage::Gone { conn }, None);
                }
                Ok(())
            }
            AppRequest::Yielded { conn, state } => {
                let state = decode(&state)?;
                let fd = fd.take().ok_or("yielded without the socket")?;
                match lock(&self.yields).remove(&conn) {
                    Some(waiter) => {
                        let _ = waiter.send(YieldAnswer::Yielded(fd, state));
                        Ok(())
                    }
                    None => {
                        // Too late: the handoff gave up waiting. The connection goes back.
                        self.adopt(app, conn, fd.as_fd(), &state)
                    }
                }
            }
            AppRequest::Unsettled { conn, state } => {
                let state = decode(&state)?;
                let fd = fd.take().ok_or("unsettled without the socket")?;
                if lock(&self.settling)
                    .insert(conn, Some((app, fd, state)))
                    .is_none()
                {
                    let agent = Arc::clone(self);
                    thread::spawn(move || agent.settle(conn));
                }
                Ok(())
            }
            AppRequest::Decline { conn, reason } => {
                if let Some(waiter) = lock(&self.yields).remove(&conn) {
                    let _ = waiter.send(YieldAnswer::Declined(reason));
                }
                Ok(())
            }
            AppRequest::Move { conn, to, state } => {
                let state = decode(&state)?;
                let fd = fd.take().ok_or("move without the socket")?;
                let movable = lock(&self.conns).get(&conn).is_some_and(|c| !c.moving);
                if !movable {
                    // Not reported as accepted, or already moving: the socket goes back
                    // rather than being closed.
                    self.adopt(app, conn, fd.as_fd(), &state)?;
                    return Err(format!(
                        "{conn} cannot move now (unknown or already moving)"
                    ));
                }
                let agent = Arc::clone(self);
                // This member holds the only descriptor now: a stop waits until the handoff
                // has it (or, stopping, gives it back).
                let busy = self.busy();
                thread::spawn(move || {
                    let _busy = busy;
                    match agent.hand_off(conn, &to, Some((fd, state))) {
                        Ok(report) => log_report(&report),
                        Err(e) => tracing::warn!(%conn, %to, "move failed: {e}"),
                    }
                });
                Ok(())
            }
        }
    }

    /// Marks the node drained or not, here and in the data path's settings (where a restarted
    /// handoffd finds it).
    pub(super) fn set_drained(&self, drained: bool) -> Result<(), String> {
        self.draining.store(drained, Ordering::Relaxed);
        lock(&self.datapath)
            .maps()
            .set_config(node_config(&self.config, drained))
            .map_err(|e| format!("recording the drain in the data path: {e}"))
    }

    /// A draining member passes each new connection on at once (to the next target in turn, or
    /// the one after if that fails).
    pub(super) fn move_new_connection(self: &Arc<Self>, conn: ConnId) {
        let targets = lock(&self.drain_targets).clone();
        if targets.is_empty() {
            return;
        }
        let first = self.round_robin.fetch_add(1, Ordering::Relaxed);
        let targets = targets.into_iter().map(NodeName::from).collect();
        let drain = Mutex::new(Drain::new([conn], targets, first, None));
        let agent = Arc::clone(self);
        thread::spawn(move || {
            if let Some((conn, to, Err(e))) = agent.hand_off_next(&drain) {
                tracing::warn!(%conn, %to, "new connection on a drained node not moved: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_connected_tcp_socket_goes_back_to_the_application() {
        let listener = TcpListener::bind("[::1]:0").unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let conn = app::conn_id(&server).unwrap();
        let (named, fd) = connection_of(server.into()).expect("a connected TCP socket");
        assert_eq!(named, conn);
        assert_eq!(app::conn_id(&fd.into()).unwrap(), conn);
        let udp = std::net::UdpSocket::bind("[::1]:0").unwrap();
        udp.connect(listener.local_addr().unwrap()).unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        for other in [listener.into(), udp.into(), file.into()] {
            assert!(connection_of(other).is_none());
        }
    }
}
