//! The agent channels: opening and accepting them, reading each, answering the members'
//! questions, and the announcements sent to every member.

use super::*;

impl Agent {
    pub(super) fn hello(&self) -> Vec<u8> {
        postcard::to_allocvec(&PeerMessage::Hello {
            node: self.config.node.as_str().into(),
            run: self.run,
        })
        .expect("a hello always encodes")
    }

    /// The member a hello names, and its run.
    pub(super) fn peer_name(&self, hello: &[u8]) -> Result<(String, RunId), String> {
        match postcard::from_bytes(hello) {
            Ok(PeerMessage::Hello { node, run }) if self.config.peer(node.as_str()).is_some() => {
                Ok((node.to_string(), run))
            }
            Ok(PeerMessage::Hello { node, .. }) => Err(format!("unknown member {node:?}")),
            _ => Err("no hello".into()),
        }
    }

    /// A channel of `node`'s run `run` is up, before any of its messages is read: from now on
    /// transfers on channels of an earlier run of `node` are refused. A channel of a run
    /// superseded since (its process is gone: a hello read late) is refused itself.
    pub(super) fn heard_from(self: &Arc<Self>, node: &str, run: RunId) -> Result<(), String> {
        let refused = self.on_acceptor(|acceptor, _| acceptor.hello(&node.into(), run));
        refused.map_err(|Superseded| {
            format!("a channel of {node}'s run {run}, which a later run has replaced")
        })
    }

    pub(super) fn accept_peers(self: Arc<Self>, listener: TcpListener) {
        for stream in listener.incoming() {
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("agent channel accept: {e}");
                    continue;
                }
            };
            let agent = Arc::clone(&self);
            thread::spawn(move || {
                let from = stream.peer_addr().ok();
                let refused = |why: String| {
                    tracing::warn!(?from, "refused agent channel: {why}");
                    agent.channel_failed_from(from, format!("refused its channel: {why}"));
                };
                match channel::accept(stream, &agent.key, &agent.hello()) {
                    Ok((sender, receiver, hello)) => match agent.peer_name(&hello) {
                        Ok((node, run)) => {
                            if let Err(why) = agent.heard_from(&node, run) {
                                // Not the member's fault: it is up, under its later run.
                                tracing::info!(?from, "refused agent channel: {why}");
                                sender.shutdown();
                                return;
                            }
                            tracing::info!(peer = %node, "agent channel up (incoming)");
                            lock(&agent.channel_errors).remove(&node);
                            lock(&agent.peers)
                                .entry(node.clone())
                                .or_insert_with(|| sender.clone());
                            agent.send_tokens(&node, &sender);
                            agent.read_peer(node, run, sender, receiver);
                        }
                        Err(why) => {
                            refused(why);
                            sender.shutdown();
                        }
                    },
                    Err(e) => refused(e.to_string()),
                }
            });
        }
    }

    /// Notes why a channel from `from` was refused, for the member at that address.
    pub(super) fn channel_failed_from(&self, from: Option<SocketAddr>, why: String) {
        let member = self
            .config
            .peers
            .iter()
            .find(|p| from.is_some_and(|from| from.ip() == IpAddr::V6(p.address)));
        if let Some(member) = member {
            lock(&self.channel_errors).insert(member.node.clone(), why);
        }
    }

    /// The open channel to `node`, connecting first if there is none.
    pub(super) fn peer(self: &Arc<Self>, node: &str) -> Result<ChannelSender, String> {
        if let Some(sender) = lock(&self.peers).get(node) {
            return Ok(sender.clone());
        }
        let asked = Instant::now();
        let slot = Arc::clone(lock(&self.opening).entry(node.to_owned()).or_default());
        let mut last_failure = lock(&slot);
        // While this thread waited, another may have opened the channel (or the member opened
        // one to us), or failed to.
        if let Some(sender) = lock(&self.peers).get(node) {
            return Ok(sender.clone());
        }
        if let Some((when, why)) = &*last_failure
            && *when >= asked
        {
            return Err(why.clone());
        }
        let opened = self.open_channel(node);
        *last_failure = opened.as_ref().err().map(|e| (Instant::now(), e.clone()));
        let mut errors = lock(&self.channel_errors);
        match &opened {
            Ok(_) => errors.remove(node),
            Err(e) => errors.insert(node.to_owned(), e.clone()),
        };
        opened
    }

    pub(super) fn open_channel(self: &Arc<Self>, node: &str) -> Result<ChannelSender, String> {
        let peer = self
            .config
            .peer(node)
            .ok_or_else(|| format!("{node} is not a member (see [[peer]] in the configuration)"))?;
        let (sender, receiver, hello) = channel::connect(
            peer.channel_addr(),
            &self.key,
            &self.hello(),
            self.config.handoff.peer_timeout(),
        )
        .map_err(|e| format!("agent channel to {node} at {}: {e}", peer.channel_addr()))?;
        let run = match self.peer_name(&hello) {
            Ok((name, run)) if name == node => run,
            Ok((name, _)) => {
                return Err(format!("{} answered as {name}, not {node}", peer.address));
            }
            Err(why) => return Err(format!("{node}: {why}")),
        };
        if let Err(why) = self.heard_from(node, run) {
            sender.shutdown();
            return Err(why);
        }
        tracing::info!(peer = %node, "agent channel up (outgoing)");
        lock(&self.peers).insert(node.to_owned(), sender.clone());
        self.send_tokens(node, &sender);
        let agent = Arc::clone(self);
        let reader_sender = sender.clone();
        let name = node.to_owned();
        thread::spawn(move || agent.read_peer(name, run, reader_sender, receiver));
        Ok(sender)
    }

    /// Reads the channel of `node`'s run `run`.
    pub(super) fn read_peer(
        self: Arc<Self>,
        node: String,
        run: RunId,
        sender: ChannelSender,
        mut receiver: ChannelReceiver,
    ) {
        let channel = ChannelId(self.next_channel.fetch_add(1, Ordering::Relaxed));
        lock(&self.channels).insert(channel, sender.clone());
        loop {
            let message = match receiver.recv() {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::info!(peer = %node, "agent channel closed: {e}");
                    lock(&self.channel_errors).insert(node.clone(), format!("channel closed: {e}"));
                    break;
                }
            };
            match postcard::from_bytes::<PeerMessage>(&message) {
                Ok(message) => self.on_peer_message(&node, run, channel, &sender, message),
                Err(e) => {
                    tracing::warn!(peer = %node, "undecodable message, channel dropped: {e}");
                    let why = format!("undecodable message, channel dropped: {e}");
                    lock(&self.channel_errors).insert(node.clone(), why);
                    break;
                }
            }
        }
        sender.shutdown();
        lock(&self.channels).remove(&channel);
        self.on_acceptor(|acceptor, _| acceptor.closed(&node.as_str().into(), run));
        let mut peers = lock(&self.peers);
        if peers.get(&node).is_some_and(|s| s.same_channel(&sender)) {
            peers.remove(&node);
        }
    }

    /// Sends `message` on channel `channel`: an answer goes back on the channel its question
    /// came on.
    pub(super) fn answer(&self, channel: ChannelId, message: &PeerMessage) {
        let sender = lock(&self.channels).get(&channel).cloned();
        let sent = sender
            .ok_or_else(|| "its channel is closed".to_owned())
            .and_then(|sender| Self::send_to(&sender, message));
        if let Err(e) = sent {
            tracing::warn!("cannot answer {message:?}: {e}");
        }
    }

    pub(super) fn send_to(sender: &ChannelSender, message: &PeerMessage) -> Result<(), String> {
        let bytes = postcard::to_allocvec(message).map_err(|e| e.to_string())?;
        sender.send(&bytes).map_err(|e| e.to_string())
    }

    pub(super) fn on_peer_message(
        self: &Arc<Self>,
        from: &str,
        run: RunId,
        channel: ChannelId,
        sender: &ChannelSender,
        message: PeerMessage,
    ) {
        match message {
            PeerMessage::Hello { .. } => {}
            PeerMessage::Transfer {
                id,
                conn,
                tcp_state,
                app_state,
                home_token,
                bu_sequence,
                one_phase,
            } => {
                // The shell keeps the contents (moved, not copied); the acceptor decides what
                // becomes of them and sees the transfer without them.
                let parked = Parked {
                    conn,
                    tcp_state,
                    app_state,
                    home_token,
                    bu_sequence,
                    received_ns: monotonic_ns(),
                    restored: None,
                };
                let key = HandoffKey {
                    donor: from.into(),
                    id,
                };
                lock(&self.parked).insert(key, parked);
                let transfer = PeerMessage::Transfer {
                    id,
                    conn,
                    tcp_state: Vec::new(),
                    app_state: Vec::new(),
                    home_token: None,
                    bu_sequence,
                    one_phase,
                };
                self.to_acceptor(from, run, channel, transfer);
            }
            PeerMessage::Prepare { .. }
            | PeerMessage::Commit { .. }
            | PeerMessage::Abort { .. } => self.to_acceptor(from, run, channel, message),
            // The donor's copy held in doubt, or the acceptor's restored socket (it may wait for
            // a handoff of the connection still under way here).
            PeerMessage::Recover { id, conn } => {
                let agent = Arc::clone(self);
                let from = from.to_owned();
                thread::spawn(move || agent.recover(&from, run, channel, id, conn));
            }
            PeerMessage::TokenRequest { id, dsa, client } => {
                let agent = Arc::clone(self);
                let sender = sender.clone();
                thread::spawn(move || {
                    let token = agent.local_home_token(dsa, client);
                    let _ = Self::send_to(&sender, &PeerMessage::TokenReply { id, token });
                });
            }
            reply @ (PeerMessage::Ready { id, .. }
            | PeerMessage::Refused { id, .. }
            | PeerMessage::Activated { id, .. }
            | PeerMessage::TokenReply { id, .. }
            | PeerMessage::Binding { id, .. }) => {
                let waiter = lock(&self.waiting).get(&id).cloned();
                match waiter {
                    Some(waiter) => {
                        let _ = waiter.send(reply);
                    }
                    // After its handoff ended: it may settle a copy held in doubt.
                    None => {
                        let from = NodeName::from(from);
                        self.on_doubt(|doubt, _| doubt.answered(&from, id, &reply));
                    }
                }
            }
            PeerMessage::WhoServes { id, conns } => {
                // One look at the acceptor: a connection on its way here is listed there until
                // it is served (and listed as served before it leaves).
                let (incoming, taken): (HashSet<ConnId>, Vec<ConnId>) = {
                    let acceptor = lock(&self.acceptor);
                    let from = from.into();
                    let arriving = acceptor.arriving();
                    let incoming = conns.iter().filter(|c| arriving.contains(c)).copied();
                    let taken = conns
                        .iter()
                        .filter(|c| acceptor.took_from(&from, c))
                        .copied();
                    (incoming.collect(), taken.collect())
                };
                let served: Vec<ConnId> = {
                    let owned = lock(&self.conns);
                    conns
                        .iter()
                        .filter(|c| owned.contains_key(c))
                        .copied()
                        .collect()
                };
                let answer = PeerMessage::Serves {
                    id,
                    node: self.config.node.as_str().into(),
                    conns: served,
                    arriving: conns.into_iter().filter(|c| incoming.contains(c)).collect(),
                    taken,
                };
                if let Err(e) = Self::send_to(sender, &answer) {
                    tracing::warn!(peer = %from, "cannot answer which connections are here: {e}");
                }
            }
            PeerMessage::Serves { id, ref node, .. } => {
                if node == from
                    && let Some(waiter) = lock(&self.waiting).get(&id)
                {
                    let _ = waiter.send(message);
                }
            }
            PeerMessage::Owner { conn, owner } => {
                if owner != self.config.care_of_address
                    && !lock(&self.conns).contains_key(&conn)
                    && let Err(e) = lock(&self.datapath)
                        .maps()
                        .freeze()
                        .redirect(flow(&conn), owner.octets())
                {
                    tracing::warn!(%conn, "cannot redirect: {e}");
                }
            }
            PeerMessage::ClientBound {
                dsa,
                client,
                sequence,
            } => {
                // Announcements travel apart from the bindings they report: one that is older
                // than a binding this member knows of (its own, made since, or one reported to
                // it) must not undo that binding.
                {
                    let mut sequences = lock(&self.sequences);
                    let known = sequences.get(&client).copied();
                    if known.is_some_and(|known| sequence_greater(known, sequence)) {
                        tracing::debug!(%client, sequence, ?known, "stale ClientBound ignored");
                        return;
                    }
                    sequences.insert(client, sequence);
                }
                // The client's one binding for the DSA names another member now. An entry of
                // this member would put a Home Address option the client no longer accepts on
                // the packets of the client's connections still served here, and mipv6d's
                // refresh would take the binding back: forget it (nothing goes to the client).
                // An entry that never bound (the contact node's home tokens) stays.
                let bound_here = lock(&self.datapath)
                    .maps()
                    .bindings()
                    .route_optimized(client.octets(), dsa.octets())
                    .is_ok_and(|care_of| care_of.is_some());
                if bound_here && let Some(mipv6d) = self.mipv6d.clone() {
                    let timeout = self.config.handoff.peer_timeout();
                    thread::spawn(move || {
                        if let Err(e) = mipv6d.forget(dsa, client, timeout) {
                            tracing::warn!(%client, "cannot drop this member's old binding: {e}");
                        }
                    });
                }
            }
            PeerMessage::Gone { conn } => {
                if !lock(&self.conns).contains_key(&conn) {
                    let _ = lock(&self.datapath).maps().freeze().thaw(&flow(&conn));
                }
            }
            PeerMessage::FreshToken { dsa, client, token } => {
                if self.config.contact_node.as_deref() == Some(from) {
                    lock(&self.tokens).insert(dsa, client, token, Instant::now());
                }
            }
        }
    }

    /// Queues `message` for every member but `except`; each member gets them in order (an
    /// `Owner` and the `Gone` of the same connection never overtake each other).
    pub(super) fn broadcast(&self, message: PeerMessage, except: Option<&str>) {
        let announcement = (message, except.map(str::to_owned), mark(&self.announcing));
        let queued = lock(&self.announcements).send(announcement);
        if queued.is_err() {
            tracing::warn!("announcements stopped");
        }
    }

    /// Hands each announcement to one queue per member, each sent by a thread of its own: a
    /// member that cannot be reached (each attempt may wait `peer_timeout` to connect) delays
    /// only its own announcements.
    pub(super) fn announce(self: Arc<Self>, queue: mpsc::Receiver<Announcement>) {
        let mut queues: HashMap<String, mpsc::Sender<(PeerMessage, Busy)>> = HashMap::new();
        for (message, except, _busy) in queue {
            for peer in &self.config.peers {
                if Some(&peer.node) == except.as_ref() {
                    continue;
                }
                let to_peer = queues.entry(peer.node.clone()).or_insert_with(|| {
                    let (to_peer, messages) = mpsc::channel();
                    let agent = Arc::clone(&self);
                    let node = peer.node.clone();
                    thread::spawn(move || agent.announce_to(&node, messages));
                    to_peer
                });
                let _ = to_peer.send((message.clone(), mark(&self.announcing)));
            }
        }
    }

    /// Sends `node` its announcements in order. When one cannot be sent, those queued
    /// meanwhile are dropped with it rather than each waiting for the member again: the
    /// periodic redirect check makes up for lost `Owner`/`Gone`, and the contact node sends
    /// its home tokens on the next channel.
    pub(super) fn announce_to(
        self: &Arc<Self>,
        node: &str,
        messages: mpsc::Receiver<(PeerMessage, Busy)>,
    ) {
        while let Ok((message, _busy)) = messages.recv() {
            let sent = self
                .peer(node)
                .and_then(|sender| Self::send_to(&sender, &message));
            if let Err(e) = sent {
                let dropped = messages.try_iter().count();
                tracing::warn!(peer = %node, dropped, "cannot tell {message:?}: {e}");
            }
        }
    }

    /// A slot for the answers to one request to the members: the request's id, the receiver
    /// of the messages that carry it, and the guard that removes the slot.
    pub(super) fn reply_slot(&self) -> (HandoffId, mpsc::Receiver<PeerMessage>, Unregister<'_>) {
        let id = HandoffId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let (answers_tx, answers) = mpsc::channel();
        lock(&self.waiting).insert(id, answers_tx);
        (id, answers, Unregister(self, id))
    }
}
