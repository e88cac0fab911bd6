//! The copies held in doubt: the captured sockets of handoffs whose outcome the donor never
//! learned, kept until the [`InDoubt`] table says what becomes of them — probes to the client,
//! a revival when the acceptor's next run asks for the connection, a release when the hold
//! ends.

use super::*;

/// A copy held in doubt: the captured socket, in repair mode, and what giving it back needs.
pub(super) struct HeldCopy {
    pub(super) app: AppId,
    pub(super) socket: OwnedFd,
    pub(super) capture: DonorCapture,
    pub(super) app_state: Vec<u8>,
}

impl Agent {
    /// Holds `copy`, the captured socket of `conn`'s handoff to `to`, whose outcome is unknown.
    pub(super) fn hold_in_doubt(
        self: &Arc<Self>,
        conn: ConnId,
        to: &str,
        id: HandoffId,
        copy: HeldCopy,
    ) {
        lock(&self.held).insert(conn, copy);
        self.on_doubt(|doubt, now| doubt.hold(conn, to.into(), id, now));
        tracing::warn!(
            %conn,
            %to,
            "copy held in doubt: revived if {to}'s next run asks for it, closed otherwise once \
             {to}'s lease and {} probes of the client have passed",
            HoldParams::PROBES_AFTER_LEASE
        );
    }

    /// A `Recover` from `from`: a copy held in doubt of a handoff to `from` is revived and the
    /// answer says so; otherwise the question is the acceptor's (a restored socket waiting for
    /// its commit). A handoff of `conn` still under way here is waited for first (its end may
    /// put the copy in doubt).
    pub(super) fn recover(
        self: &Arc<Self>,
        from: &str,
        run: RunId,
        channel: ChannelId,
        id: HandoffId,
        conn: ConnId,
    ) {
        self.wait_for_handoff_of(conn);
        let from_node = NodeName::from(from);
        if !self.on_doubt(|doubt, _| doubt.recover(&from_node, conn, channel, id)) {
            self.to_acceptor(from, run, channel, PeerMessage::Recover { id, conn });
        }
    }

    /// Waits (a bounded time) until no handoff of `conn` is under way here: its end may hold a
    /// copy in doubt, and takes the connection out of the table.
    fn wait_for_handoff_of(&self, conn: ConnId) {
        let deadline = Instant::now() + self.config.handoff.peer_timeout() * 2;
        while lock(&self.donating).contains(&conn) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Runs `f` on the [`InDoubt`] table, then performs the steps it asked for, in order,
    /// outside its lock.
    pub(super) fn on_doubt<T>(self: &Arc<Self>, f: impl FnOnce(&mut InDoubt, Instant) -> T) -> T {
        let (result, actions) = {
            let mut doubt = lock(&self.in_doubt);
            let result = f(&mut doubt, Instant::now());
            let actions: Vec<_> = std::iter::from_fn(|| doubt.poll_action()).collect();
            (result, actions)
        };
        for action in actions {
            self.perform_doubt(action);
        }
        result
    }

    fn perform_doubt(self: &Arc<Self>, action: DoubtAction) {
        match action {
            DoubtAction::Probe { conn } => {
                let bounced = lock(&self.datapath).maps().freeze().bounced(&flow(&conn));
                if bounced.unwrap_or(false) {
                    tracing::info!(
                        %conn,
                        "the client's packets come back from the acceptor: it does not hold the connection"
                    );
                    self.on_doubt(|doubt, _| doubt.bounced(conn));
                } else if let Some(copy) = lock(&self.held).get(&conn)
                    && let Err(e) = copy.capture.probe_peer()
                {
                    tracing::warn!(%conn, "cannot probe the client: {e}");
                }
            }
            // On a thread of its own: a late answer comes on a channel's reader, and the
            // revival waits for the end of the handoff that held the copy.
            DoubtAction::Revive { conn, answer } => {
                let agent = Arc::clone(self);
                thread::spawn(move || agent.revive_held(conn, answer));
            }
            DoubtAction::Release { conn, to } => {
                if let Some(HeldCopy {
                    app,
                    socket,
                    capture,
                    ..
                }) = lock(&self.held).remove(&conn)
                {
                    capture.release(socket);
                    self.handed_off(app, conn);
                }
                tracing::info!(
                    %conn,
                    %to,
                    "copy held in doubt closed: {to} never answered for the connection; it \
                     serves it, or the client was reset"
                );
            }
            DoubtAction::Send { channel, message } => self.answer(channel, &message),
        }
    }

    /// Revives the copy of `conn` held in doubt and reports how it went (answering the
    /// `Recover` that asked for it, if one did).
    fn revive_held(self: Arc<Self>, conn: ConnId, answer: Option<(ChannelId, HandoffId)>) {
        self.wait_for_handoff_of(conn);
        let result = match lock(&self.held).remove(&conn) {
            Some(copy) => self.revive(conn, copy),
            None => Err("its copy is gone".into()),
        };
        match &result {
            Ok(_) => tracing::info!(
                %conn,
                "copy held in doubt revived: the acceptor never activated it"
            ),
            Err(e) => tracing::error!(
                %conn,
                "connection lost: its copy held in doubt cannot be revived: {e}"
            ),
        }
        self.on_doubt(|doubt, _| doubt.revived(conn, answer, result));
    }

    /// Takes a copy held in doubt back: thaw (its flow here pointed at the acceptor), out of
    /// repair mode with a window probe, to its application. Returns when it serves again.
    fn revive(self: &Arc<Self>, conn: ConnId, copy: HeldCopy) -> Result<u64, String> {
        let HeldCopy {
            app,
            socket,
            capture,
            app_state,
        } = copy;
        let rolled = capture.rollback(lock(&self.datapath).maps().freeze(), &socket);
        let serves = tcpstate::in_repair_mode(&socket).is_ok_and(|repair| !repair);
        match rolled {
            Ok(()) => {}
            // The last step (SO_REUSEADDR) failed: the socket works, the flow is thawed.
            Err(e) if serves => tracing::warn!(%conn, "revived, but: {e}"),
            Err(e) => {
                self.handed_off(app, conn);
                return Err(e.to_string());
            }
        }
        let at = monotonic_ns();
        self.take_conn(app, conn, true);
        if let Err(e) = self.adopt(app, conn, socket.as_fd(), &app_state) {
            // The socket closes with this descriptor: the client sees the connection end.
            lock(&self.conns).remove(&conn);
            return Err(format!("cannot give it back to its application: {e}"));
        }
        if self.draining.load(Ordering::Relaxed) {
            self.move_new_connection(conn);
        }
        Ok(at)
    }
}
