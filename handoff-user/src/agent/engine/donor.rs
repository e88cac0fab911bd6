//! The donor's side of one handoff (docs/handoffd.md, "The handoff sequence", "Rollback",
//! "Commit") as a state machine: it decides every step and what each failure means for the
//! connection, and never performs one. The shell asks [`Donor::poll_action`] what to do, does
//! it (a message on the agent channel, the yield, the capture, the redirect, the rollback), and
//! reports the result with [`Donor::handle`]; while the machine waits for the acceptor it
//! reports what the channel brought, or [`Donor::handle_timeout`] once [`Donor::poll_timeout`]
//! has passed. The clock is the caller's (`now`).
//!
//! ```text
//!  Prepare ─▶ [home token] ─▶ [yield] ─▶ send queue ─▶ capture ─▶ (one-phase: redirect)
//!    ─▶ Transfer ─▶ await Ready ─▶ (two-phase: redirect, Commit) ─▶ await Activated ─▶ done
//!  any failure after the capture and before the commit point ─▶ roll back ─▶ stays here
//! ```
//!
//! The commit point: two-phase, the `Commit` sent; one-phase, the transfer sent. Past it, a
//! refusal still rolls back (the acceptor says nothing of the connection lives there), and
//! silence, a channel that ends, or any other answer leaves the outcome unknown: the acceptor
//! may serve the connection, so the donor must not take it back ([`Fate::Unknown`]).

use std::time::{Duration, Instant};

use super::{
    ids::{HandoffId, NodeName},
    outcome::{Fate, HandoffError},
};
use crate::agent::{
    config::CommitMode,
    proto::{ConnId, Nanos, PeerMessage},
};

/// What a handoff is, fixed at its start.
#[derive(Clone, Debug)]
pub struct DonorParams {
    /// The handoff's number (its messages carry it).
    pub id: HandoffId,
    /// The connection.
    pub conn: ConnId,
    /// This member.
    pub node: NodeName,
    /// The acceptor.
    pub to: NodeName,
    /// Two- or one-phase commit.
    pub commit: CommitMode,
    /// How long the acceptor has to answer each step.
    pub peer_timeout: Duration,
    /// Route optimization: the client's home token is fetched first (phase 4).
    pub fetch_home_token: bool,
    /// The application already gave the socket up (its own `move`): no yield.
    pub yielded: bool,
}

/// A step for the shell. Those marked "answer" expect the named [`DonorInput`] before the
/// machine goes on; the others are done when the shell has done them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DonorAction {
    /// `Prepare{id, conn, freeze}` to the acceptor; best effort (a failure is not reported).
    SendPrepare {
        /// One-phase: the acceptor freezes the flow now.
        freeze: bool,
    },
    /// Get the client's home token (phase 4). Answer: [`DonorInput::HomeToken`] (with it or
    /// without: a handoff goes on without route optimization).
    FetchHomeToken,
    /// Ask the application to yield the connection. Answer: [`DonorInput::Yielded`] or
    /// [`DonorInput::NotYielded`].
    AskToYield,
    /// Wait (bounded) for the socket's send queue to empty. Answer:
    /// [`DonorInput::SendQueueWaited`].
    WaitSendQueue,
    /// Freeze the flow and capture the socket (`TCP_REPAIR`), and encode its state. Answer:
    /// [`DonorInput::Captured`], [`DonorInput::Unsendable`] or [`DonorInput::CaptureFailed`].
    Capture,
    /// Point the flow at the acceptor. Answer: [`DonorInput::Redirected`].
    Redirect,
    /// `Transfer{…}` to the acceptor. Answer: [`DonorInput::Sent`].
    SendTransfer,
    /// `Commit{id}` to the acceptor. Answer: [`DonorInput::Sent`].
    SendCommit,
    /// `Abort{id}` to the acceptor; best effort.
    SendAbort,
    /// Undo the capture (thaw, repair off with a window probe). Answer:
    /// [`DonorInput::RolledBack`].
    RollBack,
    /// Give the socket and the state back to the application (`adopt`).
    GiveBack,
    /// Close the socket in repair mode (nothing reaches the client).
    Release,
    /// Tell an application that keeps its sockets that the connection is not its any more
    /// (`handed_off`).
    TellHandedOff,
    /// The outcome is unknown: keep the captured socket, in repair mode, as the connection's
    /// copy in doubt ([`super::doubt::InDoubt::hold`]).
    Hold,
}

/// How a rollback went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rollback {
    /// The socket serves again, the flow is thawed.
    Done,
    /// Its last step failed (the error), but the socket is out of repair mode and the flow
    /// thawed: it serves.
    DoneDespite(String),
    /// The socket is still in repair mode (the error): the connection is lost.
    Failed(String),
}

/// What the shell reports: an action's result, or what the acceptor's channel brought.
#[derive(Clone, Debug, PartialEq)]
pub enum DonorInput {
    /// [`DonorAction::FetchHomeToken`] is done (whether a token came or not).
    HomeToken,
    /// The application yielded: the shell holds the socket and its state.
    Yielded,
    /// The application declined, did not answer in time, is gone, or the agent is stopping.
    NotYielded(String),
    /// [`DonorAction::WaitSendQueue`] is done.
    SendQueueWaited,
    /// Frozen and captured; the state is ready to send.
    Captured,
    /// Frozen and captured, but the state cannot be sent (the reason).
    Unsendable(String),
    /// The capture failed and was undone inside the capture: the socket serves as before.
    CaptureFailed(String),
    /// The redirect was written, or why not.
    Redirected(Result<(), String>),
    /// A message was sent, or why not.
    Sent(Result<(), String>),
    /// [`DonorAction::RollBack`] is done.
    RolledBack(Rollback),
    /// An answer of the acceptor for this handoff.
    Peer(PeerMessage),
    /// The acceptor's channel ended cleanly (a FIN) with nothing more for this handoff on it.
    ChannelEnded,
}

/// The acceptor's times of a completed handoff (CLOCK_MONOTONIC, for the phase report).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Activation {
    /// When the transfer arrived.
    pub received_ns: Nanos,
    /// When the socket was re-created.
    pub restored_ns: Nanos,
    /// When the socket left repair mode.
    pub activated_ns: Nanos,
}

/// Where one handoff is.
#[derive(Clone, Debug, PartialEq)]
enum Phase {
    /// Waiting for the home token.
    HomeToken,
    /// Waiting for the application's socket.
    Yield,
    /// Waiting for the send queue.
    SendQueue,
    /// Waiting for the capture.
    Capture,
    /// One-phase: waiting for the redirect before the transfer.
    RedirectFirst,
    /// Waiting for the transfer to be sent.
    Transfer,
    /// Waiting for `Ready` until the deadline.
    AwaitReady(Instant),
    /// Two-phase: waiting for the redirect after `Ready`.
    RedirectAfterReady,
    /// Two-phase: waiting for `Commit` to be sent.
    Commit,
    /// Waiting for `Activated` until the deadline (the commit point is behind).
    AwaitActivated(Instant),
    /// Waiting for the rollback, and why it was needed.
    RollBack(String),
    /// Over.
    Done(Result<Activation, HandoffError>),
}

/// The donor's side of one handoff.
#[derive(Debug)]
pub struct Donor {
    params: DonorParams,
    phase: Phase,
    /// One-phase, before the transfer is sent: the acceptor froze the flow at `Prepare`, so a
    /// handoff that ends here must tell it (`Abort` gives the flow back).
    abort_owed: bool,
    actions: std::collections::VecDeque<DonorAction>,
}

impl Donor {
    /// A handoff about to start: `Prepare` goes out first.
    pub fn new(params: DonorParams) -> Donor {
        let one_phase = params.commit == CommitMode::OnePhase;
        let mut donor = Donor {
            phase: Phase::HomeToken,
            abort_owed: one_phase,
            actions: [DonorAction::SendPrepare { freeze: one_phase }].into(),
            params,
        };
        if donor.params.fetch_home_token {
            donor.actions.push_back(DonorAction::FetchHomeToken);
        } else {
            donor.after_home_token();
        }
        donor
    }

    /// The handoff's parameters.
    pub fn params(&self) -> &DonorParams {
        &self.params
    }

    /// The next step for the shell.
    pub fn poll_action(&mut self) -> Option<DonorAction> {
        self.actions.pop_front()
    }

    /// Until when the machine waits for the acceptor (nothing else is pending then).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::AwaitReady(until) | Phase::AwaitActivated(until) => Some(until),
            _ => None,
        }
    }

    /// How the handoff ended, once it has.
    pub fn outcome(&self) -> Option<&Result<Activation, HandoffError>> {
        match &self.phase {
            Phase::Done(outcome) => Some(outcome),
            _ => None,
        }
    }

    fn one_phase(&self) -> bool {
        self.params.commit == CommitMode::OnePhase
    }

    fn push(&mut self, action: DonorAction) {
        self.actions.push_back(action);
    }

    fn after_home_token(&mut self) {
        if self.params.yielded {
            self.phase = Phase::SendQueue;
            self.push(DonorAction::WaitSendQueue);
        } else {
            self.phase = Phase::Yield;
            self.push(DonorAction::AskToYield);
        }
    }

    fn pay_abort(&mut self) {
        if std::mem::take(&mut self.abort_owed) {
            self.push(DonorAction::SendAbort);
        }
    }

    /// Ends the handoff with the connection untouched (still the application's, or given back
    /// by the caller of `end_here`).
    fn end_here(&mut self, reason: String) {
        self.pay_abort();
        self.phase = Phase::Done(Err(HandoffError::stays(reason)));
    }

    fn roll_back(&mut self, why: String) {
        self.pay_abort();
        self.phase = Phase::RollBack(why);
        self.push(DonorAction::RollBack);
    }

    fn transfer(&mut self) {
        self.phase = Phase::Transfer;
        self.push(DonorAction::SendTransfer);
    }

    fn no_answer(&self) -> String {
        format!(
            "{} did not answer within {} ms",
            self.params.to,
            self.params.peer_timeout.as_millis()
        )
    }

    /// The acceptor's answer once the commit point is behind (`None`: silence).
    fn on_activation_answer(&mut self, answer: Option<DonorInput>) {
        let to = self.params.to.clone();
        let why = match answer {
            Some(DonorInput::Peer(PeerMessage::Activated {
                received_ns,
                restored_ns,
                activated_ns,
                ..
            })) => {
                self.push(DonorAction::Release);
                self.push(DonorAction::TellHandedOff);
                self.phase = Phase::Done(Ok(Activation {
                    received_ns,
                    restored_ns,
                    activated_ns,
                }));
                return;
            }
            Some(DonorInput::Peer(PeerMessage::Refused { reason, .. })) => {
                return self.roll_back(format!("{to} refused: {reason}"));
            }
            None => format!(
                "no answer within {} ms",
                self.params.peer_timeout.as_millis()
            ),
            Some(DonorInput::ChannelEnded) => "its channel ended".to_owned(),
            Some(DonorInput::Peer(message)) => format!("it answered {message:?}"),
            Some(other) => format!("the agent reported {other:?}"),
        };
        // Unknown outcome: the acceptor may be serving the connection, or may have died with
        // its only other copy. Taking it back could put two live endpoints on one connection,
        // closing the copy could lose it: it stays redirected there, and the copy is held in
        // doubt (`doubt`) until the acceptor's next run asks for it or the hold ends.
        self.push(DonorAction::Hold);
        self.phase = Phase::Done(Err(HandoffError {
            fate: Fate::Unknown,
            reason: format!(
                "{to} did not confirm the activation ({why}); the connection is redirected to it \
                 and {} holds its copy in doubt",
                self.params.node
            ),
        }));
    }

    /// Takes the result of the step asked for, or what the acceptor's channel brought.
    /// Anything the current phase does not wait for (a late answer of this handoff's peer, a
    /// second `Binding`) is ignored.
    pub fn handle(&mut self, input: DonorInput, now: Instant) {
        let to = self.params.to.clone();
        let timeout = self.params.peer_timeout;
        match (self.phase.clone(), input) {
            (Phase::HomeToken, DonorInput::HomeToken) => self.after_home_token(),
            (Phase::Yield, DonorInput::Yielded) => {
                self.phase = Phase::SendQueue;
                self.push(DonorAction::WaitSendQueue);
            }
            (Phase::Yield, DonorInput::NotYielded(reason)) => self.end_here(reason),
            (Phase::SendQueue, DonorInput::SendQueueWaited) => {
                self.phase = Phase::Capture;
                self.push(DonorAction::Capture);
            }
            (Phase::Capture, DonorInput::CaptureFailed(e)) => {
                self.push(DonorAction::GiveBack);
                self.end_here(format!("capture failed (connection stays): {e}"));
            }
            (Phase::Capture, DonorInput::Unsendable(e)) => {
                self.roll_back(format!("state does not encode: {e}"))
            }
            (Phase::Capture, DonorInput::Captured) if self.one_phase() => {
                self.phase = Phase::RedirectFirst;
                self.push(DonorAction::Redirect);
            }
            (Phase::Capture, DonorInput::Captured) => self.transfer(),
            (Phase::RedirectFirst, DonorInput::Redirected(Ok(()))) => self.transfer(),
            (Phase::RedirectFirst, DonorInput::Redirected(Err(e))) => {
                self.roll_back(format!("cannot redirect: {e}"))
            }
            (Phase::Transfer, DonorInput::Sent(Err(e))) => {
                self.roll_back(format!("transfer to {to} failed: {e}"))
            }
            (Phase::Transfer, DonorInput::Sent(Ok(()))) => {
                // The acceptor has the transfer (or will): a refusal gives the flow back there.
                self.abort_owed = false;
                self.phase = Phase::AwaitReady(now + timeout);
            }
            // `Ready`: restored there; one-phase, activated right after, and only if `Ready`
            // could be sent. Until then nothing of the connection is live there: a refusal, or
            // a channel that ends cleanly, rolls back.
            (Phase::AwaitReady(_), DonorInput::Peer(PeerMessage::Ready { .. })) => {
                if self.one_phase() {
                    self.phase = Phase::AwaitActivated(now + timeout);
                } else {
                    self.phase = Phase::RedirectAfterReady;
                    self.push(DonorAction::Redirect);
                }
            }
            (Phase::AwaitReady(_), DonorInput::Peer(PeerMessage::Refused { reason, .. })) => {
                self.roll_back(format!("{to} refused: {reason}"))
            }
            (Phase::AwaitReady(_), DonorInput::ChannelEnded) => self.roll_back(format!(
                "the channel to {to} ended before it restored the connection"
            )),
            // One-phase, the commit point is behind: anything but those is the outcome's answer.
            (Phase::AwaitReady(_), answer) if self.one_phase() => {
                self.on_activation_answer(Some(answer))
            }
            (Phase::AwaitReady(_), DonorInput::Peer(other)) => {
                self.roll_back(format!("{to} answered {other:?}"))
            }
            // From here the connection is the acceptor's, unless it refuses the commit.
            (Phase::RedirectAfterReady, DonorInput::Redirected(Ok(()))) => {
                self.phase = Phase::Commit;
                self.push(DonorAction::SendCommit);
            }
            (Phase::RedirectAfterReady, DonorInput::Redirected(Err(e))) => {
                self.push(DonorAction::SendAbort);
                self.roll_back(format!("cannot redirect: {e}"));
            }
            // The socket stays here, frozen in repair mode, until the acceptor confirms.
            (Phase::Commit, DonorInput::Sent(Ok(()))) => {
                self.phase = Phase::AwaitActivated(now + timeout)
            }
            (Phase::Commit, DonorInput::Sent(Err(e))) => {
                self.roll_back(format!("commit to {to} failed: {e}"))
            }
            // A `Binding` follows `Activated`: it is not the answer.
            (Phase::AwaitActivated(_), DonorInput::Peer(PeerMessage::Binding { .. })) => {}
            (
                Phase::AwaitActivated(_),
                answer @ (DonorInput::Peer(_) | DonorInput::ChannelEnded),
            ) => self.on_activation_answer(Some(answer)),
            (Phase::RollBack(why), DonorInput::RolledBack(rollback)) => {
                let node = &self.params.node;
                let (fate, reason) = match rollback {
                    Rollback::Done => (
                        Fate::Here,
                        format!("{why}; rolled back, the connection stays on {node}"),
                    ),
                    Rollback::DoneDespite(e) => (
                        Fate::Here,
                        format!("{why}; rolled back ({e}), the connection stays on {node}"),
                    ),
                    Rollback::Failed(e) => (
                        Fate::Lost,
                        format!("{why}; rollback failed, connection lost: {e}"),
                    ),
                };
                self.push(match fate {
                    Fate::Here => DonorAction::GiveBack,
                    _ => DonorAction::TellHandedOff,
                });
                self.phase = Phase::Done(Err(HandoffError { fate, reason }));
            }
            _ => {}
        }
    }

    /// The wait for the acceptor has passed [`Donor::poll_timeout`] with no answer.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::AwaitReady(until) if now >= until => {
                if self.one_phase() {
                    // The acceptor may yet activate: the outcome is unknown.
                    self.on_activation_answer(None);
                } else {
                    // Two-phase: the acceptor activates on `Commit` only, which never went out.
                    self.push(DonorAction::SendAbort);
                    let why = self.no_answer();
                    self.roll_back(why);
                }
            }
            Phase::AwaitActivated(until) if now >= until => self.on_activation_answer(None),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
