//! The acceptor's side of the handoffs coming to this member (docs/handoffd.md, "The handoff
//! sequence" steps 1 and 6–8, "Commit", "Restarts" step 3): every rule about a `Prepare`, a
//! `Transfer`, a `Commit`, an `Abort` or a `Recover`, about restored sockets waiting for their
//! commit and flows frozen ahead of a one-phase transfer, and about transfers from a donor's
//! earlier run ([`Runs`]). It performs nothing: the shell restores, activates, writes the flow
//! entries and sends what [`Acceptor::poll_action`] asks for, and reports the results.
//!
//! Each handoff is keyed by its donor and number ([`HandoffKey`]) and goes through
//! ```text
//!  (one-phase Prepare) Prepared ─▶ Restoring ─▶ two-phase: Parked ─▶ Activating ─▶ served
//!                                             └ one-phase (Ready sent): ────────┘
//! ```
//! and its answers go back on the channel its transfer came on ([`ChannelId`]): a one-phase
//! donor whose channel ends before `Ready` reached it rolls back, so `Ready` must travel on the
//! channel the donor watches, and the socket leaves repair mode only once it was sent.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    time::{Duration, Instant},
};

use super::{
    ids::{ChannelId, HandoffId, NodeName, RunId},
    runs::{Runs, Superseded},
};
use crate::agent::proto::{ConnId, Nanos, PeerMessage};

/// How long (in `peer_timeout`s) a restored socket waits for its commit, and a flow frozen at
/// a one-phase `Prepare` for its transfer. The donor gives up waiting for `Ready` after one
/// `peer_timeout` and commits at once after it, so a commit never arrives this late unless the
/// channel stalls — and one that does is refused, which the donor answers by rolling back.
pub const COMMIT_TIMEOUT_FACTOR: u32 = 4;

/// One handoff to this member: its donor and the donor's number for it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HandoffKey {
    /// The donor.
    pub donor: NodeName,
    /// The donor's number.
    pub id: HandoffId,
}

/// What the acceptor needs to know of the rest of its member.
pub trait Member {
    /// Whether an application of this member serves `conn`.
    fn serves(&self, conn: &ConnId) -> bool;
    /// Why this member takes no handoff now (draining, stopping), if it takes none.
    fn refuses(&self) -> Option<String>;
}

/// How loud a log line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Routine detail.
    Debug,
    /// Worth knowing.
    Info,
    /// Something did not go as it should.
    Warn,
    /// A connection is in danger.
    Error,
}

/// A step for the shell. "Answer" names the input the acceptor waits for.
#[derive(Clone, Debug, PartialEq)]
pub enum AcceptorAction {
    /// One-phase `Prepare`: freeze the connection's flow here (the donor redirects it here
    /// before the state arrives; a packet finding no socket would draw a reset). Answer:
    /// [`AcceptorInput::Frozen`].
    Freeze {
        /// The handoff.
        key: HandoffKey,
        /// Its connection.
        conn: ConnId,
    },
    /// Resolve the next hop toward the client now.
    PrimeNeighbour {
        /// The connection.
        conn: ConnId,
    },
    /// Send `message` on `channel` (best effort).
    Send {
        /// The channel to answer on.
        channel: ChannelId,
        /// The message.
        message: PeerMessage,
    },
    /// One-phase: send `Ready` on the transfer's channel while the restore runs. Answer:
    /// [`AcceptorInput::ReadySent`].
    SendReady {
        /// The handoff.
        key: HandoffKey,
        /// The transfer's channel.
        channel: ChannelId,
    },
    /// Check the transfer the shell holds for `key` and re-create its socket frozen, in repair
    /// mode. Answer: [`AcceptorInput::Restored`].
    Restore {
        /// The handoff.
        key: HandoffKey,
        /// Its connection.
        conn: ConnId,
    },
    /// Thaw the flow, take the restored socket out of repair mode and give it to its
    /// application. Answer: [`AcceptorInput::Activated`].
    Activate {
        /// The handoff.
        key: HandoffKey,
    },
    /// After an activation: bind the client to this member (phases 5–6) and report the
    /// binding to the donor on `channel` under `id`.
    Bind {
        /// The handoff (the shell holds its home token and sequence number).
        key: HandoffKey,
        /// The channel to report on.
        channel: ChannelId,
        /// The number the donor knows the handoff by.
        id: HandoffId,
    },
    /// Drop whatever the shell holds for `key`: a restored socket (closed in repair mode,
    /// silently, and its flow thawed) and the transfer's contents.
    Discard {
        /// The handoff.
        key: HandoffKey,
    },
    /// The connection stays with `donor`: its packets that reach this member go there.
    ReturnFlow {
        /// The connection.
        conn: ConnId,
        /// The donor.
        donor: NodeName,
    },
    /// Like [`AcceptorAction::ReturnFlow`], but only while the flow is still frozen (an
    /// activation may thaw it at any moment: one map update with `BPF_EXIST`).
    ReturnFlowIfFrozen {
        /// The connection.
        conn: ConnId,
        /// The donor.
        donor: NodeName,
    },
    /// A line for the log.
    Log {
        /// How loud.
        level: Level,
        /// The connection it is about, if one.
        conn: Option<ConnId>,
        /// The line.
        message: String,
    },
}

/// The acceptor's times of a restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestoreTimes {
    /// When the transfer arrived.
    pub received_ns: Nanos,
    /// When the socket was re-created.
    pub restored_ns: Nanos,
}

/// What the shell reports.
#[derive(Clone, Debug, PartialEq)]
pub enum AcceptorInput {
    /// A message from `from`, on a channel of its run `run`.
    Peer {
        /// The sender.
        from: NodeName,
        /// The run of the sender's channel.
        run: RunId,
        /// The channel it came on.
        channel: ChannelId,
        /// The message (those of a donor to its acceptor; others are ignored).
        message: PeerMessage,
    },
    /// [`AcceptorAction::Freeze`] is done, or why not.
    Frozen {
        /// The handoff.
        key: HandoffKey,
        /// The result.
        result: Result<(), String>,
    },
    /// [`AcceptorAction::SendReady`] is done, or why not.
    ReadySent {
        /// The handoff.
        key: HandoffKey,
        /// The result.
        result: Result<(), String>,
    },
    /// [`AcceptorAction::Restore`] is done (the socket waits, frozen), or why the transfer is
    /// refused.
    Restored {
        /// The handoff.
        key: HandoffKey,
        /// The times, or the refusal.
        result: Result<RestoreTimes, String>,
    },
    /// [`AcceptorAction::Activate`] is done (with when the socket left repair mode), or why
    /// it failed (nothing was sent from the socket: the donor can take the connection back).
    Activated {
        /// The handoff.
        key: HandoffKey,
        /// The time, or the failure.
        result: Result<Nanos, String>,
    },
}

/// Where one handoff to this member is.
#[derive(Clone, Debug, PartialEq)]
enum Stage {
    /// One-phase: the flow is frozen here until the transfer comes, or the deadline.
    Prepared(Instant),
    /// The transfer is taken in and being restored.
    Restoring {
        /// One-phase: activated once restored (`Incoming::times` set), if `Ready` was sent
        /// (`ready`).
        one_phase: bool,
        ready: Option<bool>,
        /// The donor aborted meanwhile.
        aborted: bool,
    },
    /// Two-phase: restored, waiting for `Commit` until the deadline.
    Parked(Instant),
    /// Being activated.
    Activating,
}

#[derive(Clone, Debug)]
struct Incoming {
    conn: ConnId,
    stage: Stage,
    /// The channel answers go on.
    channel: ChannelId,
    /// The number the donor expects in the answers (a `Recover` brings a new one).
    answer_id: HandoffId,
    /// Set when the socket is restored.
    times: Option<RestoreTimes>,
}

impl Incoming {
    fn arriving(&self) -> bool {
        !matches!(self.stage, Stage::Prepared(_))
    }
}

/// The acceptor's side of the handoffs coming to one member.
#[derive(Debug)]
pub struct Acceptor {
    node: NodeName,
    peer_timeout: Duration,
    runs: Runs,
    incoming: HashMap<HandoffKey, Incoming>,
    actions: VecDeque<AcceptorAction>,
}

impl Acceptor {
    /// The acceptor of member `node`, whose donors wait `peer_timeout` for each answer.
    pub fn new(node: NodeName, peer_timeout: Duration) -> Acceptor {
        Acceptor {
            node,
            peer_timeout,
            runs: Runs::default(),
            incoming: HashMap::new(),
            actions: VecDeque::new(),
        }
    }

    /// The next step for the shell.
    pub fn poll_action(&mut self) -> Option<AcceptorAction> {
        self.actions.pop_front()
    }

    /// The earliest deadline: a restored socket's commit, or a frozen flow's transfer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.incoming
            .values()
            .filter_map(|incoming| match incoming.stage {
                Stage::Prepared(until) | Stage::Parked(until) => Some(until),
                _ => None,
            })
            .min()
    }

    /// Handoffs to this member in flight (a stop waits for them).
    pub fn pending(&self) -> usize {
        self.incoming.len()
    }

    /// Restored sockets waiting for their commit.
    pub fn waiting_commit(&self) -> usize {
        self.incoming
            .values()
            .filter(|i| matches!(i.stage, Stage::Parked(_)))
            .count()
    }

    /// The connections on their way here: a transfer being restored, a socket waiting for
    /// its commit, an activation in progress.
    pub fn arriving(&self) -> HashSet<ConnId> {
        self.incoming
            .values()
            .filter(|incoming| incoming.arriving())
            .map(|incoming| incoming.conn)
            .collect()
    }

    /// Whether `conn` was last taken from `donor` here and not handed on since.
    pub fn took_from(&self, donor: &NodeName, conn: &ConnId) -> bool {
        self.runs.took_from(donor, conn)
    }

    /// This member hands `conn` on (or another member is handing it here): whoever it was
    /// taken from does not hear of it from here any more.
    pub fn passed_on(&mut self, conn: &ConnId) {
        self.runs.passed_on(conn);
    }

    /// A channel of `peer`'s run `run` is up, before any of its messages is read: from now on
    /// transfers on channels of an earlier run of `peer` are refused, and the flows frozen for
    /// that run's announced handoffs whose transfer is not on its way go back to it (the
    /// restarted member may revive the connections). A channel of a run superseded since is
    /// refused itself.
    pub fn hello(&mut self, peer: &NodeName, run: RunId) -> Result<(), Superseded> {
        let Some(earlier) = self.runs.hello(peer, run)? else {
            return Ok(());
        };
        self.log(
            Level::Info,
            None,
            format!(
                "{peer}: the member restarted (run={run}, earlier={earlier}): transfers still \
                 coming from its earlier run are refused"
            ),
        );
        let arriving = self.arriving();
        let given_back: Vec<HandoffKey> = self
            .incoming
            .iter()
            .filter(|(key, i)| {
                key.donor == *peer
                    && matches!(i.stage, Stage::Prepared(_))
                    && !arriving.contains(&i.conn)
            })
            .map(|(key, _)| key.clone())
            .collect();
        if !given_back.is_empty() {
            self.log(
                Level::Info,
                None,
                format!(
                    "{} flows frozen for {peer}'s earlier run's handoffs given back to it",
                    given_back.len()
                ),
            );
        }
        for key in given_back {
            if let Some(incoming) = self.incoming.remove(&key) {
                self.return_flow(incoming.conn, &key.donor);
            }
        }
        Ok(())
    }

    /// A channel of `peer`'s run `run` (one [`Acceptor::hello`] let through) has closed.
    pub fn closed(&mut self, peer: &NodeName, run: RunId) {
        self.runs.closed(peer, run);
    }

    fn push(&mut self, action: AcceptorAction) {
        self.actions.push_back(action);
    }

    fn log(&mut self, level: Level, conn: Option<ConnId>, message: String) {
        self.push(AcceptorAction::Log {
            level,
            conn,
            message,
        });
    }

    fn return_flow(&mut self, conn: ConnId, donor: &NodeName) {
        self.push(AcceptorAction::ReturnFlow {
            conn,
            donor: donor.clone(),
        });
    }

    fn send(&mut self, channel: ChannelId, message: PeerMessage) {
        self.push(AcceptorAction::Send { channel, message });
    }

    fn deadline(&self, now: Instant) -> Instant {
        now + self.peer_timeout * COMMIT_TIMEOUT_FACTOR
    }

    /// Refuses handoff `key` of `conn`: the connection stays with the donor.
    fn refuse(&mut self, key: &HandoffKey, conn: ConnId, channel: ChannelId, reason: String) {
        self.push(AcceptorAction::Discard { key: key.clone() });
        self.return_flow(conn, &key.donor);
        self.log(
            Level::Warn,
            Some(conn),
            format!("handoff from {} refused: {reason}", key.donor),
        );
        let id = key.id;
        self.send(channel, PeerMessage::Refused { id, reason });
    }

    /// Takes a message, or the result of a step it asked for.
    pub fn handle(&mut self, input: AcceptorInput, now: Instant, member: &dyn Member) {
        match input {
            AcceptorInput::Peer {
                from,
                run,
                channel,
                message,
            } => self.on_message(from, run, channel, message, now, member),
            AcceptorInput::Frozen { key, result } => {
                let Some(incoming) = self.incoming.get(&key) else {
                    return;
                };
                let conn = incoming.conn;
                if let Err(e) = result {
                    self.incoming.remove(&key);
                    self.log(
                        Level::Warn,
                        Some(conn),
                        format!("cannot freeze ahead of a handoff: {e}"),
                    );
                }
            }
            AcceptorInput::ReadySent { key, result } => {
                if let Some(Incoming {
                    stage: Stage::Restoring { ready, .. },
                    conn,
                    ..
                }) = self.incoming.get_mut(&key)
                {
                    *ready = Some(result.is_ok());
                    let conn = *conn;
                    if let Err(e) = result {
                        self.log(
                            Level::Warn,
                            Some(conn),
                            format!("cannot tell {} of the activation ({e})", key.donor),
                        );
                    }
                    self.after_restore(&key, now);
                }
            }
            AcceptorInput::Restored { key, result } => {
                let Some(incoming) = self.incoming.get_mut(&key) else {
                    return;
                };
                if !matches!(incoming.stage, Stage::Restoring { .. }) {
                    return;
                }
                match result {
                    Ok(times) => {
                        incoming.times = Some(times);
                        self.after_restore(&key, now);
                    }
                    Err(reason) => {
                        let (conn, channel) = (incoming.conn, incoming.channel);
                        self.incoming.remove(&key);
                        self.refuse(&key, conn, channel, reason);
                    }
                }
            }
            AcceptorInput::Activated { key, result } => {
                let Some(incoming) = self.incoming.remove(&key) else {
                    return;
                };
                let (conn, channel, id) = (incoming.conn, incoming.channel, incoming.answer_id);
                match result {
                    Ok(activated_ns) => {
                        self.runs.took(&key.donor, conn);
                        let times = incoming.times.unwrap_or(RestoreTimes {
                            received_ns: activated_ns,
                            restored_ns: activated_ns,
                        });
                        self.send(
                            channel,
                            PeerMessage::Activated {
                                id,
                                received_ns: times.received_ns,
                                restored_ns: times.restored_ns,
                                activated_ns,
                            },
                        );
                        // Phases 5–6 after activation: until the client has the binding, its
                        // packets come through the redirect, so the binding's round trips
                        // are not part of the pause.
                        self.push(AcceptorAction::Bind { key, channel, id });
                    }
                    Err(e) => {
                        // Nothing was sent from here: the donor can still take it back.
                        self.log(Level::Error, Some(conn), format!("activation failed: {e}"));
                        self.push(AcceptorAction::Discard { key: key.clone() });
                        self.return_flow(conn, &key.donor);
                        let reason = format!("activation failed: {e}");
                        self.send(channel, PeerMessage::Refused { id, reason });
                    }
                }
            }
        }
    }

    /// A restore finished, or (one-phase) `Ready` went out: what comes next, once both are in.
    fn after_restore(&mut self, key: &HandoffKey, now: Instant) {
        let Some(incoming) = self.incoming.get(key) else {
            return;
        };
        let (
            Stage::Restoring {
                one_phase,
                ready,
                aborted,
            },
            Some(_),
        ) = (&incoming.stage, incoming.times)
        else {
            return;
        };
        let (one_phase, ready, aborted) = (*one_phase, *ready, *aborted);
        let (conn, channel) = (incoming.conn, incoming.channel);
        if aborted {
            self.incoming.remove(key);
            return self.refuse(key, conn, channel, "aborted by the donor".into());
        }
        match (one_phase, ready) {
            (false, _) => {
                let until = self.deadline(now);
                if let Some(incoming) = self.incoming.get_mut(key) {
                    incoming.stage = Stage::Parked(until);
                }
                let id = key.id;
                self.send(channel, PeerMessage::Ready { id });
            }
            (true, Some(true)) => self.activate(key),
            (true, Some(false)) => {
                // The donor may not know the transfer arrived: it must not go live here.
                self.incoming.remove(key);
                self.push(AcceptorAction::Discard { key: key.clone() });
                self.return_flow(conn, &key.donor);
                self.log(
                    Level::Warn,
                    Some(conn),
                    "restored socket dropped: the donor was not told it arrived".into(),
                );
            }
            (true, None) => {}
        }
    }

    fn activate(&mut self, key: &HandoffKey) {
        if let Some(incoming) = self.incoming.get_mut(key) {
            incoming.stage = Stage::Activating;
            self.push(AcceptorAction::Activate { key: key.clone() });
        }
    }

    fn on_message(
        &mut self,
        from: NodeName,
        run: RunId,
        channel: ChannelId,
        message: PeerMessage,
        now: Instant,
        member: &dyn Member,
    ) {
        match message {
            PeerMessage::Prepare { id, conn, freeze } => {
                if !self.runs.is_current(&from, run) {
                    // A leftover of the member's run before a restart: its handoff is over.
                    let message = format!("Prepare from {from}'s earlier run ignored");
                    return self.log(Level::Debug, Some(conn), message);
                }
                // The sender holds the connection now.
                self.runs.passed_on(&conn);
                if freeze && member.serves(&conn) {
                    let message =
                        format!("Prepare from {from} for a connection served here ignored");
                    return self.log(Level::Warn, Some(conn), message);
                }
                if freeze {
                    let key = HandoffKey { donor: from, id };
                    self.incoming.insert(
                        key.clone(),
                        Incoming {
                            conn,
                            stage: Stage::Prepared(self.deadline(now)),
                            channel,
                            answer_id: key.id,
                            times: None,
                        },
                    );
                    self.push(AcceptorAction::Freeze { key, conn });
                }
                self.push(AcceptorAction::PrimeNeighbour { conn });
            }
            PeerMessage::Transfer {
                id,
                conn,
                one_phase,
                ..
            } => {
                let key = HandoffKey {
                    donor: from.clone(),
                    id,
                };
                self.runs.passed_on(&conn);
                // Announced by its `Prepare` — and any other announcement of this connection:
                // an earlier attempt whose transfer never came must not give the flow back
                // later.
                self.incoming
                    .retain(|_, i| !(i.conn == conn && matches!(i.stage, Stage::Prepared(_))));
                if !self.runs.is_current(&from, run) {
                    // The donor restarted since it sent this, and may have taken the
                    // connection back (asked whether this member serves it).
                    let reason = format!("{from} restarted since this transfer was sent");
                    return self.refuse(&key, conn, channel, reason);
                }
                if let Some(reason) = member.refuses() {
                    return self.refuse(&key, conn, channel, reason);
                }
                // A socket still parked for this connection belongs to an earlier attempt the
                // donor gave up (it holds the 4-tuple): this transfer replaces it.
                let stale: Vec<HandoffKey> = self
                    .incoming
                    .iter()
                    .filter(|(_, i)| i.conn == conn && matches!(i.stage, Stage::Parked(_)))
                    .map(|(key, _)| key.clone())
                    .collect();
                for stale in stale {
                    self.incoming.remove(&stale);
                    self.push(AcceptorAction::Discard { key: stale });
                    let message = "dropping the socket of an abandoned earlier attempt".into();
                    self.log(Level::Info, Some(conn), message);
                }
                self.incoming.insert(
                    key.clone(),
                    Incoming {
                        conn,
                        stage: Stage::Restoring {
                            one_phase,
                            ready: None,
                            aborted: false,
                        },
                        channel,
                        answer_id: key.id,
                        times: None,
                    },
                );
                // The restore first, so that the shell starts it before it sends `Ready`
                // (one-phase: the send costs tens of µs, and both go on at once).
                self.push(AcceptorAction::Restore {
                    key: key.clone(),
                    conn,
                });
                if one_phase {
                    self.push(AcceptorAction::SendReady { key, channel });
                }
            }
            PeerMessage::Commit { id } => {
                let key = HandoffKey { donor: from, id };
                match self.incoming.get(&key).map(|i| &i.stage) {
                    Some(Stage::Parked(_)) => self.activate(&key),
                    _ => {
                        let message = format!(
                            "commit {id} from {} for an unknown or expired handoff: refused",
                            key.donor
                        );
                        self.log(Level::Warn, None, message);
                        let reason = "no restored socket waits for this commit (expired)".into();
                        self.send(channel, PeerMessage::Refused { id, reason });
                    }
                }
            }
            PeerMessage::Abort { id } => {
                let key = HandoffKey { donor: from, id };
                let Some(incoming) = self.incoming.get_mut(&key) else {
                    return;
                };
                let conn = incoming.conn;
                match &mut incoming.stage {
                    Stage::Prepared(_) => {
                        self.incoming.remove(&key);
                        self.return_flow(conn, &key.donor);
                    }
                    Stage::Parked(_) => {
                        self.incoming.remove(&key);
                        self.log(
                            Level::Info,
                            Some(conn),
                            "handoff aborted by the donor".into(),
                        );
                        self.push(AcceptorAction::Discard { key: key.clone() });
                        self.return_flow(conn, &key.donor);
                    }
                    // It drops the socket when the restore is done.
                    Stage::Restoring { aborted, .. } => *aborted = true,
                    // Too late: it goes live (the donor sent `Commit` before).
                    Stage::Activating => {}
                }
            }
            PeerMessage::Recover { id, conn } => {
                // The donor restarted in the middle of handing `conn` here: its socket died
                // with its previous run, so the one restored here is the connection's only
                // copy. Committed under the new number, answered on the new channel.
                let parked = self
                    .incoming
                    .iter_mut()
                    .find(|(key, i)| {
                        key.donor == from && i.conn == conn && matches!(i.stage, Stage::Parked(_))
                    })
                    .map(|(key, incoming)| {
                        incoming.channel = channel;
                        incoming.answer_id = id;
                        key.clone()
                    });
                match parked {
                    Some(key) => {
                        let message = format!("completing a handoff {from}'s previous run left");
                        self.log(Level::Info, Some(conn), message);
                        self.activate(&key);
                    }
                    None => {
                        let reason = format!("{} holds no restored socket of {conn}", self.node);
                        self.send(channel, PeerMessage::Refused { id, reason });
                    }
                }
            }
            _ => {}
        }
    }

    /// Drops restored sockets whose commit never came (the donor rolled back or died), and
    /// gives back the flows frozen for transfers that never came — unless the connection came
    /// here since by another handoff (served here, or its flow thawed by an activation).
    pub fn handle_timeout(&mut self, now: Instant, member: &dyn Member) {
        let expired: Vec<HandoffKey> = self
            .incoming
            .iter()
            .filter(|(_, i)| matches!(i.stage, Stage::Prepared(until) | Stage::Parked(until) if until <= now))
            .map(|(key, _)| key.clone())
            .collect();
        for key in expired {
            let Some(incoming) = self.incoming.remove(&key) else {
                continue;
            };
            let conn = incoming.conn;
            match incoming.stage {
                Stage::Parked(_) => {
                    let message = format!("no commit from {}: restored socket dropped", key.donor);
                    self.log(Level::Warn, Some(conn), message);
                    self.push(AcceptorAction::Discard { key: key.clone() });
                    self.return_flow(conn, &key.donor);
                }
                _ if member.serves(&conn) => {}
                _ => {
                    let message = format!(
                        "prepared handoff never came: flow given back to {} (if still frozen)",
                        key.donor
                    );
                    self.log(Level::Warn, Some(conn), message);
                    self.push(AcceptorAction::ReturnFlowIfFrozen {
                        conn,
                        donor: key.donor,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
