//! The donor's shell: runs one handoff's [`Donor`] machine, performing each step it asks
//! for, and the send-queue wait.

use super::*;

/// What a donor heard from its acceptor while it waited for an answer to a handoff.
pub(super) enum Heard {
    /// An answer.
    Message(PeerMessage),
    /// The channel ended cleanly with no (further) answer on it: the acceptor sent none.
    Ended,
    /// Nothing within the time allowed (or no one to hear it from any more).
    Silent,
}

/// The next answer on `replies` (those coming over `channel`), waiting at most `timeout`, or
/// [`Heard::Ended`] as soon as the peer ends the channel cleanly with nothing more said.
pub(super) fn hear(
    replies: &mpsc::Receiver<PeerMessage>,
    channel: &ChannelSender,
    timeout: Duration,
) -> Heard {
    /// How often the channel's end is looked for (only while no answer comes).
    const LOOK: Duration = Duration::from_millis(5);
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Heard::Silent;
        }
        match replies.recv_timeout(LOOK.min(left)) {
            Ok(message) => return Heard::Message(message),
            Err(mpsc::RecvTimeoutError::Disconnected) => return Heard::Silent,
            Err(mpsc::RecvTimeoutError::Timeout) if channel.ended_by_peer() => {
                // The channel's reader hands every answer over before it reads the end.
                return replies.try_recv().map_or(Heard::Ended, Heard::Message);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
}

/// Waits until everything sent on `socket` is acknowledged — at most one and a half smoothed
/// round trips (what acknowledging the bytes in flight takes; longer means loss, and the queue
/// had better travel) and never beyond `limit` — unless, with the members' rate known, sending
/// what is queued along with the state is quicker than waiting on ([`ship_rather_than_wait`]).
/// Returns what is left.
pub(super) fn wait_send_queue(socket: &OwnedFd, limit: Duration, peer_rate: Option<f64>) -> usize {
    let rtt = crate::tcpstate::sys::smoothed_rtt(socket.as_fd()).unwrap_or(limit);
    let bound = (rtt * 3 / 2 + Duration::from_millis(1)).min(limit);
    let start = Instant::now();
    loop {
        let mut queued: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int.
        let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
        let queued = queued.max(0) as usize;
        let waited = start.elapsed();
        if rc != 0
            || queued == 0
            || waited >= bound
            || peer_rate.is_some_and(|rate| ship_rather_than_wait(queued, rate, rtt, waited))
        {
            return queued;
        }
        thread::sleep(SEND_QUEUE_POLL);
    }
}

/// Whether `queued` bytes had better travel with the state (at `peer_rate` bytes per second)
/// than be waited for: the last of them, sent at most when the wait began, is acknowledged
/// about one round trip (`rtt`) after that, so about `rtt - waited` of waiting is left, against
/// `queued / peer_rate` of extra transfer. (Both end in the acceptor sending: the transfer's
/// own latency is paid either way.)
pub(super) fn ship_rather_than_wait(
    queued: usize,
    peer_rate: f64,
    rtt: Duration,
    waited: Duration,
) -> bool {
    let shipping = Duration::from_secs_f64(queued as f64 / peer_rate);
    shipping < rtt.saturating_sub(waited)
}

impl Agent {
    /// Hands `conn` to member `to`. `yielded`: the socket and state, when the application
    /// started the move; otherwise the application is asked to yield.
    pub fn hand_off(
        self: &Arc<Self>,
        conn: ConnId,
        to: &str,
        yielded: Option<(OwnedFd, Vec<u8>)>,
    ) -> Result<PhaseReport, HandoffError> {
        let start_ns = monotonic_ns();
        let app = {
            let mut conns = lock(&self.conns);
            match conns.get_mut(&conn) {
                None => Err((
                    None,
                    HandoffError {
                        fate: Fate::NotHere,
                        reason: format!("{conn} is not served by {}", self.config.node),
                    },
                )),
                Some(entry) if entry.moving => Err((
                    Some(entry.app),
                    HandoffError {
                        fate: Fate::Moving,
                        reason: format!("{conn} is already moving"),
                    },
                )),
                Some(entry) => {
                    entry.moving = true;
                    Ok(entry.app)
                }
            }
        };
        let app = match app {
            Ok(app) => app,
            Err((app, e)) => {
                // A `move` whose connection another handoff took up meanwhile: its socket goes
                // back (the other handoff asks the application to yield it).
                if let (Some(app), Some((socket, state))) = (app, &yielded)
                    && let Err(e) = self.adopt(app, conn, socket.as_fd(), state)
                {
                    tracing::error!(%conn, "cannot give the connection back: {e}");
                }
                return Err(e);
            }
        };
        lock(&self.donating).insert(conn);
        // Served here again since the recovery: no longer a connection it left unclaimed.
        lock(&self.unclaimed).remove(&conn);
        let result = self.hand_off_inner(conn, app, to, yielded, start_ns);
        match &result {
            Err(HandoffError {
                fate: Fate::Here, ..
            }) => {
                if let Some(entry) = lock(&self.conns).get_mut(&conn) {
                    entry.moving = false;
                }
            }
            // Served elsewhere, possibly served elsewhere, or gone: not here any more.
            _ => {
                lock(&self.conns).remove(&conn);
            }
        }
        if !matches!(&result, Err(e) if e.fate != Fate::Unknown) {
            lock(&self.acceptor).passed_on(&conn);
        }
        // Last: a copy held in doubt is revived only after this (it waits for it), so that the
        // table above does not drop the revived connection.
        lock(&self.donating).remove(&conn);
        result
    }

    /// Runs one handoff's [`Donor`] machine: performs each step it asks for, and waits for the
    /// acceptor while it does.
    pub(super) fn hand_off_inner(
        self: &Arc<Self>,
        conn: ConnId,
        app: AppId,
        to: &str,
        yielded: Option<(OwnedFd, Vec<u8>)>,
        start_ns: u64,
    ) -> Result<PhaseReport, HandoffError> {
        let give_back = |socket: &OwnedFd, state: &[u8]| {
            if let Err(e) = self.adopt(app, conn, socket.as_fd(), state) {
                tracing::error!(%conn, "cannot give the connection back: {e}");
            }
        };
        let refuse = |why: String| {
            if let Some((socket, state)) = &yielded {
                give_back(socket, state);
            }
            Err(HandoffError::stays(why))
        };
        let Some(_busy) = self.busy_unless_stopping() else {
            return refuse(self.stopping_error());
        };
        if to == self.config.node {
            return refuse(format!("{conn} is already on {to}"));
        }
        let (to_address, sender) = match (self.config.peer(to), self.peer(to)) {
            (Some(peer), Ok(sender)) => (peer.address, sender),
            (_, Err(e)) => return refuse(e),
            (None, Ok(_)) => unreachable!("peer() only opens channels to configured members"),
        };
        let (id, replies, _waiting) = self.reply_slot();
        let timeout = self.config.handoff.peer_timeout();
        let mut donor = Donor::new(DonorParams {
            id,
            conn,
            node: self.config.node.as_str().into(),
            to: to.into(),
            commit: self.config.handoff.commit,
            peer_timeout: timeout,
            fetch_home_token: self.mipv6d.is_some(),
            yielded: yielded.is_some(),
        });
        // What the steps produce, for the steps after them and for the report.
        let (mut socket, mut app_state) = yielded.map_or((None, Vec::new()), |(s, a)| (Some(s), a));
        let mut capture: Option<DonorCapture> = None;
        let mut home_token = None;
        let mut binding_error =
            (self.mipv6d.is_none()).then(|| "route optimization is off (no mipv6d_socket)".into());
        let bu_sequence = match conn.client.ip() {
            IpAddr::V6(client) => lock(&self.sequences).get(&client).copied(),
            IpAddr::V4(_) => None,
        };
        let (mut state_bytes, mut send_queue_bytes, mut unsent) = (Vec::new(), 0, 0);
        let mut token_ns = monotonic_ns();
        let (mut yielded_ns, mut waited_ns, mut captured_ns) = (token_ns, token_ns, token_ns);
        let outcome = loop {
            while let Some(action) = donor.poll_action() {
                let input = match action {
                    DonorAction::SendPrepare { freeze } => {
                        let _ = Self::send_to(&sender, &PeerMessage::Prepare { id, conn, freeze });
                        // The report's first phase ends after Prepare and the home token.
                        token_ns = monotonic_ns();
                        None
                    }
                    DonorAction::FetchHomeToken => {
                        match self.home_token(&conn, &replies, id) {
                            Ok(token) => home_token = Some(token),
                            Err(e) => binding_error = Some(e),
                        }
                        token_ns = monotonic_ns();
                        Some(DonorInput::HomeToken)
                    }
                    DonorAction::AskToYield => {
                        // A stop that came while the channels opened: nothing is touched yet,
                        // so this handoff ends here rather than outlive the stop's bound.
                        let answer = if self.stopping.load(Ordering::SeqCst) {
                            Err(self.stopping_error())
                        } else {
                            self.ask_to_yield(app, conn)
                        };
                        Some(match answer {
                            Ok((yielded, state)) => {
                                (socket, app_state) = (Some(yielded), state);
                                DonorInput::Yielded
                            }
                            Err(e) => DonorInput::NotYielded(e),
                        })
                    }
                    DonorAction::WaitSendQueue => {
                        yielded_ns = monotonic_ns();
                        if let Some(socket) = &socket {
                            unsent = wait_send_queue(
                                socket,
                                self.config.handoff.send_queue_wait(),
                                self.config.handoff.peer_rate_bytes(),
                            );
                        }
                        waited_ns = monotonic_ns();
                        Some(DonorInput::SendQueueWaited)
                    }
                    DonorAction::Capture => {
                        let captured = socket.as_ref().map(|socket| {
                            let mut datapath = lock(&self.datapath);
                            DonorCapture::freeze_and_capture(datapath.maps().freeze(), socket)
                        });
                        captured_ns = monotonic_ns();
                        Some(match captured {
                            Some(Ok(captured)) => {
                                send_queue_bytes =
                                    captured.state.unacked.len() + captured.state.unsent.len();
                                let encoded = captured.state.to_bytes();
                                capture = Some(captured);
                                match encoded {
                                    Ok(bytes) => {
                                        state_bytes = bytes;
                                        DonorInput::Captured
                                    }
                                    Err(e) => DonorInput::Unsendable(e.to_string()),
                                }
                            }
                            Some(Err(e)) => DonorInput::CaptureFailed(e.to_string()),
                            None => DonorInput::CaptureFailed("no socket".into()),
                        })
                    }
                    DonorAction::Redirect => {
                        let redirected = capture.as_ref().map(|capture| {
                            lock(&self.datapath)
                                .maps()
                                .freeze()
                                .redirect(capture.key(), to_address.octets())
                        });
                        Some(DonorInput::Redirected(match redirected {
                            Some(result) => result.map_err(|e| e.to_string()),
                            None => Err("nothing captured".into()),
                        }))
                    }
                    DonorAction::SendTransfer => {
                        let transfer = PeerMessage::Transfer {
                            id,
                            conn,
                            tcp_state: state_bytes.clone(),
                            app_state: app_state.clone(),
                            home_token: home_token.clone(),
                            bu_sequence,
                            one_phase: self.config.handoff.commit == CommitMode::OnePhase,
                        };
                        Some(DonorInput::Sent(Self::send_to(&sender, &transfer)))
                    }
                    DonorAction::SendCommit => Some(DonorInput::Sent(Self::send_to(
                        &sender,
                        &PeerMessage::Commit { id },
                    ))),
                    DonorAction::SendAbort => {
                        let _ = Self::send_to(&sender, &PeerMessage::Abort { id });
                        None
                    }
                    DonorAction::RollBack => {
                        let rolled = match (capture.take(), &socket) {
                            (Some(capture), Some(socket)) => {
                                let mut datapath = lock(&self.datapath);
                                capture
                                    .rollback(datapath.maps().freeze(), socket)
                                    .map_err(|e| e.to_string())
                            }
                            _ => Err("nothing captured".into()),
                        };
                        let serves = |socket: &Option<OwnedFd>| {
                            socket.as_ref().is_some_and(|socket| {
                                tcpstate::in_repair_mode(socket).is_ok_and(|repair| !repair)
                            })
                        };
                        Some(DonorInput::RolledBack(match rolled {
                            Ok(()) => Rollback::Done,
                            // The last step (SO_REUSEADDR) failed: the socket works, the flow
                            // is thawed.
                            Err(e) if serves(&socket) => Rollback::DoneDespite(e),
                            Err(e) => Rollback::Failed(e),
                        }))
                    }
                    DonorAction::GiveBack => {
                        if let Some(socket) = &socket {
                            give_back(socket, &app_state);
                        }
                        None
                    }
                    DonorAction::Release => {
                        if let (Some(capture), Some(socket)) = (capture.take(), socket.take()) {
                            capture.release(socket);
                        }
                        None
                    }
                    DonorAction::TellHandedOff => {
                        self.handed_off(app, conn);
                        None
                    }
                    DonorAction::Hold => {
                        if let (Some(capture), Some(socket)) = (capture.take(), socket.take()) {
                            let app_state = std::mem::take(&mut app_state);
                            let copy = doubt::HeldCopy {
                                app,
                                socket,
                                capture,
                                app_state,
                            };
                            self.hold_in_doubt(conn, to, id, copy);
                        }
                        None
                    }
                };
                if let Some(input) = input {
                    donor.handle(input, Instant::now());
                }
            }
            if let Some(outcome) = donor.outcome() {
                break outcome.clone();
            }
            // With no step left and no outcome, the machine waits for the acceptor.
            let until = donor.poll_timeout().unwrap_or_else(Instant::now);
            match hear(
                &replies,
                &sender,
                until.saturating_duration_since(Instant::now()),
            ) {
                Heard::Message(message) => donor.handle(DonorInput::Peer(message), Instant::now()),
                Heard::Ended => donor.handle(DonorInput::ChannelEnded, Instant::now()),
                Heard::Silent => donor.handle_timeout(until.max(Instant::now())),
            }
        };
        let Activation {
            received_ns,
            restored_ns,
            activated_ns,
        } = outcome?;
        self.broadcast(
            PeerMessage::Owner {
                conn,
                owner: to_address,
            },
            Some(to),
        );
        let report = PhaseReport {
            conn: Some(conn),
            from: self.config.node.clone(),
            to: to.to_owned(),
            home_token_us: micros(start_ns, token_ns),
            yield_us: micros(token_ns, yielded_ns),
            send_queue_wait_us: micros(yielded_ns, waited_ns),
            capture_us: micros(waited_ns, captured_ns),
            transfer_us: micros(captured_ns, received_ns),
            recreation_us: micros(received_ns, restored_ns),
            binding_us: 0.0,
            binding_error,
            activation_us: micros(restored_ns, activated_ns),
            frozen_us: micros(waited_ns, activated_ns),
            total_us: micros(start_ns, activated_ns),
            state_bytes: state_bytes.len(),
            send_queue_bytes,
        };
        {
            let mut history = lock(&self.history);
            if history.len() == HISTORY {
                history.pop_front();
            }
            history.push_back(report.clone());
        }
        tracing::debug!(%conn, %to, unsent, "handed off");
        if self.mipv6d.is_some() && report.binding_error.is_none() {
            // The acceptor reports the client's binding after activation; the report in the
            // history is completed when it arrives.
            let agent = Arc::clone(self);
            _waiting.keep();
            thread::spawn(move || {
                let outcome = replies.recv_timeout(timeout);
                lock(&agent.waiting).remove(&id);
                agent.record_binding(conn, outcome);
            });
        }
        Ok(report)
    }

    /// Completes the history's report of `conn`'s last handoff with the acceptor's binding
    /// report (phases 5–6).
    pub(super) fn record_binding(
        &self,
        conn: ConnId,
        outcome: Result<PeerMessage, mpsc::RecvTimeoutError>,
    ) {
        let (binding_us, binding_error) = match outcome {
            Ok(PeerMessage::Binding {
                result: Ok((sequence, elapsed_us)),
                ..
            }) => {
                if let IpAddr::V6(client) = conn.client.ip() {
                    lock(&self.sequences).insert(client, sequence);
                }
                (elapsed_us, None)
            }
            Ok(PeerMessage::Binding { result: Err(e), .. }) => (0.0, Some(e)),
            _ => (0.0, Some("no binding report from the acceptor".to_owned())),
        };
        if let Some(report) = lock(&self.history)
            .iter_mut()
            .rev()
            .find(|r| r.conn == Some(conn))
        {
            report.binding_us = binding_us;
            report.binding_error = binding_error;
        }
    }

    pub(super) fn ask_to_yield(
        &self,
        app: AppId,
        conn: ConnId,
    ) -> Result<(OwnedFd, Vec<u8>), String> {
        let socket = lock(&self.apps)
            .get(&app)
            .map(|a| Arc::clone(&a.socket))
            .ok_or("the application is gone")?;
        let (tx, rx) = mpsc::channel();
        lock(&self.yields).insert(conn, tx);
        let message = serde_json::to_vec(&AppEvent::Yield { conn }).map_err(|e| e.to_string())?;
        let asked = socket.send(&message, None);
        let timeout = self.config.handoff.yield_timeout();
        let answer = asked
            .map_err(|e| format!("cannot ask the application to yield: {e}"))
            .and_then(|()| {
                rx.recv_timeout(timeout).map_err(|_| {
                    format!(
                        "the application did not yield {conn} within {} ms",
                        timeout.as_millis()
                    )
                })
            });
        lock(&self.yields).remove(&conn);
        // A `yielded` that came between the timeout and the removal is in the channel: the
        // connection goes back.
        if answer.is_err()
            && let Ok(YieldAnswer::Yielded(socket, state)) = rx.try_recv()
            && let Err(e) = self.adopt(app, conn, socket.as_fd(), &state)
        {
            tracing::error!(%conn, "cannot give the connection back: {e}");
        }
        match answer? {
            YieldAnswer::Yielded(socket, state) => Ok((socket, state)),
            YieldAnswer::Declined(reason) => Err(format!("the application declined: {reason}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_streams_window_travels_over_a_fast_interconnect() {
        // 25 kB in flight (4 MiB/s over a 6 ms round trip); 100 Mbit/s between members: 2 ms
        // of transfer against ~6 ms of waiting.
        assert!(ship_rather_than_wait(
            25_000,
            12.5e6,
            6 * MS,
            Duration::ZERO
        ));
        // Most of the round trip already waited: finishing the wait is quicker.
        assert!(!ship_rather_than_wait(25_000, 12.5e6, 6 * MS, 5 * MS));
    }

    #[test]
    fn a_large_queue_over_a_slow_interconnect_is_waited_for() {
        // The seed's Figure 2 case: 90 kB at 1 Mbit/s is 720 ms of transfer.
        assert!(!ship_rather_than_wait(
            90_000,
            125e3,
            6 * MS,
            Duration::ZERO
        ));
        // A small rest at that rate travels.
        assert!(ship_rather_than_wait(500, 125e3, 6 * MS, Duration::ZERO));
    }
}
