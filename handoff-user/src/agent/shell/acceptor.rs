//! The acceptor's shell: hands the donors' messages to the [`Acceptor`] and performs its steps —
//! restores and activations on threads of their own, flow entries, answers on the channels.

use super::*;

/// Makes the kernel resolve the next hop toward `client` now (a datagram with hop limit 1,
/// which the first router drops), so that the restored socket's first burst does not meet an
/// unresolved neighbour (the kernel queues only a few packets for one; the rest would wait for
/// the retransmission timer: a one-second pause, measured in tests/tcpstate_lo.rs).
pub(super) fn prime_neighbour(client: SocketAddr) {
    let probe = || -> std::io::Result<()> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(client),
            socket2::Type::DGRAM,
            None,
        )?;
        if client.is_ipv6() {
            socket.set_unicast_hops_v6(1)?;
        } else {
            socket.set_ttl_v4(1)?;
        }
        socket.send_to(b"", &SocketAddr::new(client.ip(), 9).into())?;
        Ok(())
    };
    if let Err(e) = probe() {
        tracing::debug!(%client, "neighbour probe: {e}");
    }
}

impl Agent {
    pub(super) fn app_serving(&self, local: SocketAddr) -> Option<AppId> {
        let IpAddr::V6(dsa) = local.ip() else {
            return None;
        };
        lock(&self.apps)
            .iter()
            .find(|(_, app)| app.services.contains(&(dsa, local.port())))
            .map(|(id, _)| *id)
    }

    /// Hands a donor's message to the [`Acceptor`].
    pub(super) fn to_acceptor(
        self: &Arc<Self>,
        from: &str,
        run: RunId,
        channel: ChannelId,
        message: PeerMessage,
    ) {
        let input = AcceptorInput::Peer {
            from: from.into(),
            run,
            channel,
            message,
        };
        self.acceptor_input(input);
    }

    /// Gives the [`Acceptor`] an input, then performs the steps it asks for.
    pub(super) fn acceptor_input(self: &Arc<Self>, input: AcceptorInput) {
        let member = MemberView(self);
        self.on_acceptor(|acceptor, now| acceptor.handle(input, now, &member));
    }

    /// Runs `f` on the [`Acceptor`], then performs — in order, outside its lock — the steps
    /// that asked for. A step whose result the acceptor waits for reports it the same way
    /// (the slow ones, restore and activation, from threads of their own: a drain has many
    /// handoffs in flight on one channel, and one slow handoff must not hold up the others).
    pub(super) fn on_acceptor<T>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Acceptor, Instant) -> T,
    ) -> T {
        let (result, actions) = {
            let mut acceptor = lock(&self.acceptor);
            let result = f(&mut acceptor, Instant::now());
            let actions: Vec<_> = std::iter::from_fn(|| acceptor.poll_action()).collect();
            (result, actions)
        };
        for action in actions {
            self.perform(action);
        }
        result
    }

    pub(super) fn perform(self: &Arc<Self>, action: AcceptorAction) {
        match action {
            AcceptorAction::Freeze { key, conn } => {
                let result = lock(&self.datapath)
                    .maps()
                    .freeze()
                    .freeze_leased(flow(&conn), 0)
                    .map_err(|e| e.to_string());
                self.acceptor_input(AcceptorInput::Frozen { key, result });
            }
            AcceptorAction::PrimeNeighbour { conn } => prime_neighbour(conn.client),
            AcceptorAction::Send { channel, message } => self.answer(channel, &message),
            AcceptorAction::SendReady { key, channel } => {
                let sender = lock(&self.channels).get(&channel).cloned();
                let result = sender
                    .ok_or_else(|| "its channel is closed".to_owned())
                    .and_then(|sender| Self::send_to(&sender, &PeerMessage::Ready { id: key.id }));
                self.acceptor_input(AcceptorInput::ReadySent { key, result });
            }
            AcceptorAction::Restore { key, conn } => {
                let agent = Arc::clone(self);
                thread::spawn(move || {
                    let result = agent.restore(&key, conn);
                    agent.acceptor_input(AcceptorInput::Restored { key, result });
                });
            }
            AcceptorAction::Activate { key } => {
                let agent = Arc::clone(self);
                thread::spawn(move || {
                    // Held through the binding that follows the activation.
                    let _busy = agent.busy();
                    let result = agent.activate(&key);
                    agent.acceptor_input(AcceptorInput::Activated { key, result });
                });
            }
            AcceptorAction::Bind { key, channel, id } => self.bind_client(&key, channel, id),
            AcceptorAction::Discard { key } => {
                let parked = lock(&self.parked).remove(&key);
                if let Some(Parked {
                    conn,
                    restored: Some((restore, _)),
                    ..
                }) = parked
                {
                    let mut datapath = lock(&self.datapath);
                    if let Err(e) = restore.abort(datapath.maps().freeze()) {
                        tracing::warn!(%conn, "abort: {e}");
                    }
                }
            }
            AcceptorAction::ReturnFlow { conn, donor } => {
                self.return_flow(conn, donor.as_str(), false)
            }
            AcceptorAction::ReturnFlowIfFrozen { conn, donor } => {
                self.return_flow(conn, donor.as_str(), true)
            }
            AcceptorAction::Log {
                level,
                conn,
                message,
            } => {
                let conn = conn.map(|c| c.to_string()).unwrap_or_default();
                match level {
                    Level::Debug => tracing::debug!(%conn, "{message}"),
                    Level::Info => tracing::info!(%conn, "{message}"),
                    Level::Warn => tracing::warn!(%conn, "{message}"),
                    Level::Error => tracing::error!(%conn, "{message}"),
                }
            }
        }
    }

    /// Phase 3: checks the transfer held for `key` and re-creates its socket, frozen, in
    /// repair mode (kept in `parked` until the commit).
    pub(super) fn restore(&self, key: &HandoffKey, conn: ConnId) -> Result<RestoreTimes, String> {
        let (tcp_state, received_ns) = lock(&self.parked)
            .get(key)
            .map(|parked| (parked.tcp_state.clone(), parked.received_ns))
            .ok_or("the transfer is gone")?;
        let app = self.app_serving(conn.local).ok_or_else(|| {
            format!(
                "no application on {} serves {}",
                self.config.node, conn.local
            )
        })?;
        let state = ConnState::from_bytes(&tcp_state).map_err(|e| format!("state refused: {e}"))?;
        if state.local != conn.local || state.peer != conn.client {
            return Err(format!(
                "state is for {}-{}, not {conn}",
                state.peer, state.local
            ));
        }
        // The map lock covers the map updates only, not the restore's system calls: a drain
        // restores dozens of connections at once.
        let frozen = AcceptorRestore::freeze_leased(lock(&self.datapath).maps().freeze(), &state)
            .map_err(|e| format!("cannot freeze: {e}"))?;
        let restore =
            match AcceptorRestore::restore_frozen(frozen, &state, RestoreOptions::default()) {
                Ok(restore) => restore,
                Err(e) => {
                    let _ = lock(&self.datapath).maps().freeze().thaw(&frozen);
                    return Err(format!("restore failed: {e}"));
                }
            };
        let restored_ns = monotonic_ns();
        match lock(&self.parked).get_mut(key) {
            Some(parked) => parked.restored = Some((restore, app)),
            None => {
                let _ = restore.abort(lock(&self.datapath).maps().freeze());
                return Err("the transfer is gone".into());
            }
        }
        Ok(RestoreTimes {
            received_ns,
            restored_ns,
        })
    }

    /// Phase 7 at the acceptor: thaw, out of repair mode, to the application. Returns when the
    /// socket left repair mode.
    pub(super) fn activate(&self, key: &HandoffKey) -> Result<u64, String> {
        let (restore, app, conn, app_state) = {
            let mut parked = lock(&self.parked);
            let parked = parked.get_mut(key).ok_or("the restored socket is gone")?;
            let (restore, app) = parked.restored.take().ok_or("nothing restored")?;
            (restore, app, parked.conn, parked.app_state.clone())
        };
        let frozen = restore.key();
        let stream = match lock(&self.datapath).maps().freeze().thaw(&frozen) {
            Ok(_) => restore.into_restored().activate_auto(),
            Err(e) => Err(e.into()),
        };
        let activated_ns = monotonic_ns();
        let stream = stream.map_err(|e| e.to_string())?;
        lock(&self.unclaimed).remove(&conn);
        lock(&self.conns).insert(conn, Conn::new(app, true));
        if let Err(e) = self.adopt(app, conn, stream.as_fd(), &app_state) {
            tracing::error!(%conn, "cannot hand the connection to its application: {e}");
            lock(&self.conns).remove(&conn);
        }
        // The application has its own descriptor now; ours would keep the socket (and its
        // 4-tuple) here after the application closes it or the connection moves on.
        drop(stream);
        Ok(activated_ns)
    }

    /// Phases 5–6 after an activation: binds the client to this member and reports the
    /// binding to the donor (on `channel`, as handoff `id`).
    pub(super) fn bind_client(&self, key: &HandoffKey, channel: ChannelId, id: HandoffId) {
        let Some(Parked {
            conn,
            home_token,
            bu_sequence,
            ..
        }) = lock(&self.parked).remove(key)
        else {
            return;
        };
        let (Some(mipv6d), IpAddr::V6(dsa), IpAddr::V6(client)) =
            (&self.mipv6d, conn.local.ip(), conn.client.ip())
        else {
            return;
        };
        let sequence = bu_sequence.or_else(|| lock(&self.sequences).get(&client).copied());
        let result = mipv6d
            .bind(
                dsa,
                client,
                home_token.as_ref(),
                sequence,
                self.config.handoff.peer_timeout(),
            )
            .map(|bound| {
                lock(&self.sequences).insert(client, bound.sequence);
                (bound.sequence, bound.elapsed_us)
            });
        match &result {
            Ok((sequence, _)) => self.broadcast(
                PeerMessage::ClientBound {
                    dsa,
                    client,
                    sequence: *sequence,
                },
                None,
            ),
            Err(e) => tracing::info!(%conn, "client not bound, served through the redirect: {e}"),
        }
        let sender = lock(&self.channels).get(&channel).cloned();
        if let Some(sender) = sender {
            let _ = Self::send_to(&sender, &PeerMessage::Binding { id, result });
        }
    }

    /// After a handoff to this member was given up: the connection stays with `donor`, so its
    /// packets that reach this member (the client's binding may name it: path D) go there.
    /// `only_if_frozen`: only while its entry is still the freeze of an announcement (an
    /// activation may thaw it at any moment: one map update with `BPF_EXIST`).
    pub(super) fn return_flow(&self, conn: ConnId, donor: &str, only_if_frozen: bool) {
        let Some(peer) = self.config.peer(donor) else {
            return;
        };
        let mut datapath = lock(&self.datapath);
        let freeze = datapath.maps().freeze();
        let (flow, to) = (flow(&conn), peer.address.octets());
        let redirected = if only_if_frozen {
            freeze.redirect_if_present(flow, to).map(drop)
        } else {
            freeze.redirect(flow, to)
        };
        if let Err(e) = redirected {
            tracing::warn!(%conn, "cannot redirect back to {donor}: {e}");
        }
    }

    /// Renews the agent's lease four times per `lease_ms`, for as long as the process lives:
    /// this member's freezes for incoming handoffs hold while it does (their restored sockets
    /// live in this process; see [`FreezeMap::freeze_leased`]).
    pub(super) fn keep_lease(self: Arc<Self>) {
        let lease = self.config.handoff.lease();
        loop {
            let until = monotonic_ns() + lease.as_nanos() as u64;
            if let Err(e) = lock(&self.datapath).maps().renew_lease(until) {
                tracing::error!("cannot renew the data path's lease: {e}");
            }
            thread::sleep(lease / 4);
        }
    }

    /// The engine's timers: drops restored sockets whose commit never came and gives back
    /// flows frozen for transfers that never came, when the [`Acceptor`] says they are due;
    /// probes and releases the copies held in doubt when [`InDoubt`] says so.
    pub(super) fn run_timers(self: Arc<Self>) {
        const AT_MOST: Duration = Duration::from_millis(100);
        loop {
            let acceptor = lock(&self.acceptor).poll_timeout();
            let doubt = lock(&self.in_doubt).poll_timeout();
            let due = acceptor.into_iter().chain(doubt).min();
            let wait = due.map_or(AT_MOST, |due| due.saturating_duration_since(Instant::now()));
            thread::sleep(wait.min(AT_MOST));
            let member = MemberView(self.as_ref());
            self.on_acceptor(|acceptor, now| acceptor.handle_timeout(now, &member));
            self.on_doubt(|doubt, now| doubt.handle_timeout(now));
        }
    }
}
