//! A restart's recovery and the redirect check: interrupted handoffs completed or undone, the
//! redirect entries checked with the members, `unsettled` connections settled.

use super::*;

impl Agent {
    /// At start: the handoffs the previous run was in the middle of, whose frozen entries it
    /// left. Their sockets died with it (repair-mode sockets close silently) unless the
    /// application kept a copy; a member that restored one and still waits for the commit
    /// holds the connection's only live copy, so each member is asked to activate it
    /// (`Recover`) and the flow is redirected to the one that does. An entry no member claims
    /// is removed, and the connection is the application's again if it kept the socket
    /// (`unsettled`); otherwise it is lost. Then the redirect entries are checked
    /// ([`Agent::check_redirects`]): a one-phase handoff redirects before its transfer leaves,
    /// so an entry no member serves may be one whose transfer never arrived — or arrives now,
    /// and is refused as coming from the earlier run (`engine::runs`) — and its connection too is the
    /// application's again if it kept the socket.
    pub(super) fn complete_interrupted(self: Arc<Self>) {
        /// Ends the recovery however it returns (a panic included).
        struct Done<'a>(&'a AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::SeqCst);
            }
        }
        let _busy = self.busy();
        let _done = Done(&self.recovering);
        self.complete_interrupted_flows();
        self.check_redirects(true);
    }

    /// Runs the [`Recovery`] of the entries the earlier run left frozen: asks the members
    /// (`Recover`, each connection's one at a time, the connections side by side), then
    /// redirects, removes or gives up each entry as it says.
    pub(super) fn complete_interrupted_flows(self: &Arc<Self>) {
        let flows = std::mem::take(&mut *lock(&self.interrupted));
        if flows.is_empty() {
            return;
        }
        let peers = self.config.peers.iter().map(|p| p.node.as_str().into());
        let conns = flows.iter().map(conn_of).collect();
        let timeout = self.config.handoff.peer_timeout();
        let mut recovery = Recovery::new(conns, peers.collect(), timeout);
        recovery.start(Instant::now());
        // Every question's answer comes on one queue; its number says what it answers.
        let (answers_tx, answers) = mpsc::channel();
        let mut asked: HashMap<HandoffId, (NodeName, ConnId)> = HashMap::new();
        loop {
            while let Some(action) = recovery.poll_action() {
                match action {
                    RecoveryAction::Ask { peer, conn } => {
                        let id = HandoffId(self.next_id.fetch_add(1, Ordering::Relaxed));
                        lock(&self.waiting).insert(id, answers_tx.clone());
                        let sent = self.peer(peer.as_str()).and_then(|sender| {
                            Self::send_to(&sender, &PeerMessage::Recover { id, conn })
                        });
                        match sent {
                            Ok(()) => {
                                asked.insert(id, (peer, conn));
                            }
                            Err(_) => {
                                lock(&self.waiting).remove(&id);
                                recovery.not_asked(&peer, conn, Instant::now());
                            }
                        }
                    }
                    RecoveryAction::Redirect { conn, peer } => self.completed_by(conn, &peer),
                    RecoveryAction::Remove { conn, unclaimed } => {
                        if let Err(e) = lock(&self.datapath).maps().freeze().thaw(&flow(&conn)) {
                            tracing::warn!(%conn, "cannot remove its entry: {e}");
                        }
                        if unclaimed {
                            lock(&self.unclaimed).insert(conn);
                            tracing::warn!(%conn, "no member holds the connection of an interrupted handoff: lost unless its application kept the socket");
                        } else {
                            // One that did not answer may activate it yet: reviving the socket
                            // here could put two live endpoints on the connection.
                            tracing::warn!(%conn, "connection of an interrupted handoff given up: not every member answered whether it holds it");
                        }
                    }
                }
            }
            if recovery.is_done() {
                break;
            }
            let until = recovery.poll_timeout().unwrap_or_else(Instant::now);
            match answers.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(message) => {
                    let (id, answer) = match &message {
                        PeerMessage::Activated { id, .. } => (*id, RecoverAnswer::Activated),
                        PeerMessage::Refused { id, .. } => (*id, RecoverAnswer::Refused),
                        PeerMessage::Ready { id }
                        | PeerMessage::TokenReply { id, .. }
                        | PeerMessage::Binding { id, .. } => (*id, RecoverAnswer::Other),
                        _ => continue,
                    };
                    if let Some((peer, conn)) = asked.remove(&id) {
                        lock(&self.waiting).remove(&id);
                        recovery.answered(&peer, conn, answer, Instant::now());
                    }
                }
                Err(_) => recovery.handle_timeout(Instant::now()),
            }
        }
        let mut waiting = lock(&self.waiting);
        for id in asked.keys() {
            waiting.remove(id);
        }
    }

    /// `peer` activated `conn`, an interrupted handoff's connection: its flow goes there.
    fn completed_by(&self, conn: ConnId, peer: &NodeName) {
        let Some(peer) = self.config.peer(peer.as_str()) else {
            return;
        };
        let redirected = lock(&self.datapath)
            .maps()
            .freeze()
            .redirect(flow(&conn), peer.address.octets());
        match redirected {
            Ok(()) => {
                tracing::info!(%conn, to = %peer.node, "interrupted handoff completed");
                self.broadcast(
                    PeerMessage::Owner {
                        conn,
                        owner: peer.address,
                    },
                    Some(&peer.node),
                );
            }
            Err(e) => {
                tracing::error!(%conn, to = %peer.node, "interrupted handoff completed, but cannot redirect: {e}")
            }
        }
    }

    /// Checks the redirect entries with the other members every `redirect_check_ms` (the check
    /// at start ends `complete_interrupted`). At start, entries left by an earlier run may be
    /// stale — the `Owner` and `Gone` announcements sent while this agent was down are lost;
    /// while it runs, one is lost whenever a member cannot be reached for a moment (the
    /// announcement is not sent again), and a stale entry would stay for good: a connection
    /// closed elsewhere leaves its entry in `FLOWS` (a map of bounded size), a connection moved
    /// on leaves its packets going to a member that no longer has it.
    pub(super) fn check_redirects_periodically(self: Arc<Self>) {
        // The check at start is the end of `complete_interrupted`.
        let Some(interval) = self.config.handoff.redirect_check() else {
            return;
        };
        loop {
            thread::sleep(interval);
            self.check_redirects(false);
        }
    }

    /// Asks every peer which of the connections of this member's redirect entries it serves,
    /// then re-points each entry to the one member that serves its connection. An entry no
    /// member claims is asked about once more a `peer_timeout` later — a connection between two
    /// members (after the donor let go, before the acceptor listed it) is claimed by neither for
    /// a moment — and removed only if every peer answered both times and none claims it. An
    /// entry that changed meanwhile (an announcement arrived) is left as it is. At start
    /// (`at_start`), an entry whose connection is only on its way to a member is asked about
    /// again (every `peer_timeout`, up to five rounds in all), and the connection of an entry
    /// removed goes to `unclaimed` unless a member took it (see `complete_interrupted`).
    pub(super) fn check_redirects(self: &Arc<Self>, at_start: bool) {
        let entries = match lock(&self.datapath).maps().freeze().redirects() {
            Ok(entries) if !entries.is_empty() => entries,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!("cannot read the redirect entries: {e}");
                return;
            }
        };
        let (mut kept, mut repointed, mut removed, mut unresolved) = (0, 0, 0, 0);
        // An entry nobody claims in the first round is asked about again in the second; at
        // start one whose connection is only on its way to a member is asked about again, up to
        // `ARRIVING_ROUNDS` rounds in all (its transfer may yet be refused, and then the
        // connection is nowhere but in the earlier run's socket).
        const ARRIVING_ROUNDS: usize = 5;
        let rounds = if at_start { ARRIVING_ROUNDS } else { 2 };
        let mut pending = entries;
        for round in 0..rounds {
            if round > 0 {
                if pending.is_empty() {
                    break;
                }
                thread::sleep(self.config.handoff.peer_timeout());
            }
            let (claims, everyone) = self.who_serves(&pending);
            let at = Round {
                round,
                rounds,
                at_start,
                everyone,
            };
            let mut again = Vec::new();
            for (entry, claims) in pending.iter().zip(claims) {
                match redirect_verdict(&Ipv6Addr::from(entry.1), &claims, at) {
                    Verdict::Again => again.push(*entry),
                    Verdict::Keep => kept += 1,
                    Verdict::Repoint(owner) => {
                        repointed += 1;
                        self.update_redirect(entry, Some(owner));
                    }
                    Verdict::Remove { unclaimed } => {
                        removed += 1;
                        if self.update_redirect(entry, None) && unclaimed {
                            // Served nowhere, and no member took it (to close it since): if
                            // the earlier run captured it and the application kept the socket,
                            // the connection is only there.
                            lock(&self.unclaimed).insert(conn_of(&entry.0));
                        }
                    }
                    Verdict::Unresolved => unresolved += 1,
                }
            }
            pending = again;
        }
        let peers = self.config.peers.len();
        let what = if at_start {
            "redirect entries from before the restart checked with the members"
        } else if repointed + removed + unresolved > 0 {
            "redirect entries checked with the members: some were stale (an announcement was lost)"
        } else {
            tracing::debug!(kept, peers, "redirect entries checked with the members");
            return;
        };
        tracing::info!(kept, repointed, removed, unresolved, peers, "{what}");
    }

    /// Asks every peer which of the connections of `entries` it serves (a peer not up yet is
    /// asked again for up to five `peer_timeout`s). Returns, per entry, what the members said
    /// of it, and whether every peer answered.
    pub(super) fn who_serves(
        self: &Arc<Self>,
        entries: &[(FlowKey, Addr)],
    ) -> (Vec<Claims<Ipv6Addr>>, bool) {
        let conns: Vec<ConnId> = entries.iter().map(|(flow, _)| conn_of(flow)).collect();
        let (id, answers, _waiting) = self.reply_slot();
        let question = PeerMessage::WhoServes {
            id,
            conns: conns.clone(),
        };
        let deadline = Instant::now() + self.config.handoff.peer_timeout() * 5;
        let mut unasked: Vec<String> = self.config.peers.iter().map(|p| p.node.clone()).collect();
        // Per member: the connections it serves, those on their way to it, those it took.
        type Said = [HashSet<ConnId>; 3];
        let mut served: HashMap<String, Said> = HashMap::new();
        while served.len() < self.config.peers.len() && Instant::now() < deadline {
            unasked.retain(|node| {
                let asked = self
                    .peer(node)
                    .and_then(|sender| Self::send_to(&sender, &question));
                asked.is_err()
            });
            if let Ok(PeerMessage::Serves {
                node,
                conns,
                arriving,
                taken,
                ..
            }) = answers.recv_timeout(Duration::from_millis(200))
            {
                let said = [conns, arriving, taken].map(|c| c.into_iter().collect());
                served.insert(node.to_string(), said);
            }
        }
        let members = |conn: &ConnId, what: usize| -> Vec<Ipv6Addr> {
            served
                .iter()
                .filter(|(_, said)| said[what].contains(conn))
                .filter_map(|(node, _)| self.config.peer(node).map(|p| p.address))
                .collect()
        };
        let claims = conns
            .iter()
            .map(|conn| Claims {
                serving: members(conn, 0),
                arriving: members(conn, 1),
                taken: !members(conn, 2).is_empty(),
            })
            .collect();
        (claims, served.len() == self.config.peers.len())
    }

    /// Points the redirect entry `(flow, target)` at `owner`, or removes it (`None`) — only if
    /// it still names `target`: an announcement since is newer news. Returns whether it did.
    pub(super) fn update_redirect(
        &self,
        (flow, target): &(FlowKey, Addr),
        owner: Option<Ipv6Addr>,
    ) -> bool {
        let mut datapath = lock(&self.datapath);
        let freeze = datapath.maps().freeze();
        if freeze.redirect_target(flow).ok().flatten() != Some(*target) {
            return false;
        }
        let updated = match owner {
            Some(owner) => freeze.redirect(*flow, owner.octets()),
            None => freeze.thaw(flow).map(|_| ()),
        };
        if let Err(e) = &updated {
            tracing::warn!(conn = %conn_of(flow), "cannot update its redirect entry: {e}");
        }
        updated.is_ok()
    }

    /// An `unsettled` connection: the application handed it over to an earlier session and
    /// kept the socket, and never heard the outcome. Once no handoff of this run holds the
    /// connection, the socket tells: not in repair mode, nothing was captured — the connection
    /// is the application's. In repair mode it was captured: it is the application's again
    /// (revived: out of repair mode) only if this run's recovery found it nowhere — its frozen
    /// entry every member refused to complete, or its redirect entry no member claims or took
    /// (see `complete_interrupted`) —, which a connection waits for until the recovery is
    /// done; otherwise another member serves it (or a failed rollback lost it) and the copy
    /// is closed. A report that comes again meanwhile (a later session of the application) is
    /// answered after this one, to that session.
    pub(super) fn settle(self: Arc<Self>, conn: ConnId) {
        loop {
            while lock(&self.donating).contains(&conn) {
                thread::sleep(Duration::from_millis(10));
            }
            // The entry stays, empty, until the answer is sent.
            let Some((app, socket, state)) =
                lock(&self.settling).get_mut(&conn).and_then(Option::take)
            else {
                return;
            };
            self.settle_one(app, conn, socket, state);
            let mut settling = lock(&self.settling);
            if settling.get(&conn).is_some_and(Option::is_none) {
                settling.remove(&conn);
                return;
            }
        }
    }

    pub(super) fn settle_one(
        self: &Arc<Self>,
        app: AppId,
        conn: ConnId,
        socket: OwnedFd,
        state: Vec<u8>,
    ) {
        let mut was_captured = false;
        let revived = tcpstate::in_repair_mode(&socket).and_then(|captured| {
            was_captured = captured;
            if !captured {
                return Ok(true);
            }
            // A connection found unclaimed need not wait for the rest of the recovery.
            while self.recovering.load(Ordering::SeqCst) && !lock(&self.unclaimed).contains(&conn) {
                thread::sleep(Duration::from_millis(10));
            }
            if !lock(&self.unclaimed).remove(&conn) {
                return Ok(false);
            }
            tcpstate::revive(&socket)
        });
        match revived {
            Ok(true) => {}
            Ok(false) => {
                self.handed_off(app, conn);
                tracing::info!(%conn, "unsettled connection: handed off before; its copy is closed");
                return;
            }
            Err(e) => {
                self.handed_off(app, conn);
                tracing::error!(%conn, "unsettled connection lost: cannot revive its socket: {e}");
                return;
            }
        }
        self.take_conn(app, conn, true);
        match self.adopt(app, conn, socket.as_fd(), &state) {
            Ok(()) if was_captured => {
                tracing::info!(%conn, "unsettled connection: captured, but no member took it: revived, it is the application's again")
            }
            Ok(()) => {
                tracing::info!(%conn, "unsettled connection: the handoff did not happen; it is the application's again")
            }
            Err(e) => tracing::warn!(%conn, "unsettled connection: cannot give it back: {e}"),
        }
        if self.draining.load(Ordering::Relaxed) {
            self.move_new_connection(conn);
        }
    }
}
