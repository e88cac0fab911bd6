//! The donor's copies of connections whose handoff passed the commit point without an answer
//! (docs/handoffd.md, "No single copy in a process that can crash"). The acceptor may serve the
//! connection, or may have died with the only other copy in its process; the donor cannot tell
//! which, so it neither revives its copy (two live endpoints) nor drops it (the connection's
//! last copy). It holds it, captured in repair mode, until one of these settles it:
//!
//! - the acceptor's late answer to the handoff: `Activated` (it serves the connection: the copy
//!   is closed, [`DoubtAction::Release`]) or `Refused` (its commit came too late, and nothing of
//!   the connection is live there: the copy is revived, [`DoubtAction::Revive`]);
//! - the client's packets come back from the acceptor (the data path marks the donor's
//!   redirect entry, `FLOW_BOUNCED`, and the shell reports it before each probe,
//!   [`InDoubt::bounced`]): the acceptor has no socket for the connection and points it back
//!   here — it gave the handoff up, and its refusal was lost. The copy is revived;
//! - the acceptor's next run asks for it (`Recover`): it restarted and found the connection's
//!   flow still frozen, so it never activated it; the copy is revived here and the answer
//!   (`Activated`, or `Refused` if the revival failed) lets the acceptor point the flow back
//!   here;
//! - the hold ends ([`HoldParams::hold_for`]): the copy is closed in repair mode
//!   ([`DoubtAction::Release`]). By then the acceptor's freeze has lapsed if its agent is gone
//!   (the freezes of an incoming handoff are leased, `lease_ms`) and the probes have made the
//!   client send to it: a connection the acceptor lost has been reset, one it serves went on.
//!
//! Meanwhile the copy's state makes the client speak ([`DoubtAction::Probe`], every
//! [`HoldParams::probe_every`]): a segment below its window, which it answers with an ACK. A
//! client that is only receiving sends nothing while nothing arrives, so without the probe the
//! stack behind a lapsed freeze would never get a packet to answer with a reset.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use super::ids::{ChannelId, HandoffId, NodeName};
use crate::agent::proto::{ConnId, Nanos, PeerMessage};

/// How copies are held.
#[derive(Clone, Copy, Debug)]
pub struct HoldParams {
    /// How long a copy is held at most: the acceptor's lease (after which its freeze lapses if
    /// its agent is gone) and a few probes more.
    pub hold_for: Duration,
    /// How often the client is probed. A client answers a segment without data below its
    /// window at most once per `tcp_invalid_ratelimit` (500 ms by default).
    pub probe_every: Duration,
}

impl HoldParams {
    /// The probes sent after the acceptor's lease has run out, before the copy is released.
    pub const PROBES_AFTER_LEASE: u32 = 4;
    /// The interval of the probes.
    pub const PROBE_EVERY: Duration = Duration::from_secs(1);

    /// The hold for a cluster whose members' leases last `lease`.
    pub fn for_lease(lease: Duration) -> HoldParams {
        HoldParams {
            hold_for: lease + Self::PROBE_EVERY * Self::PROBES_AFTER_LEASE,
            probe_every: Self::PROBE_EVERY,
        }
    }
}

/// A step for the shell.
#[derive(Clone, Debug, PartialEq)]
pub enum DoubtAction {
    /// Unless the connection's packets came back from the acceptor (then report
    /// [`InDoubt::bounced`] instead), send the client a segment just below its window from the
    /// copy's state (it answers with an ACK, which goes wherever the connection's packets go).
    Probe {
        /// The connection.
        conn: ConnId,
    },
    /// Revive the copy: thaw, out of repair mode, back to its application. Answer:
    /// [`InDoubt::revived`].
    Revive {
        /// The connection.
        conn: ConnId,
        /// The `Recover` to answer: the channel it came on and its number.
        answer: Option<(ChannelId, HandoffId)>,
    },
    /// Close the copy in repair mode (nothing reaches the client) and tell its application the
    /// connection is not its any more.
    Release {
        /// The connection.
        conn: ConnId,
        /// The acceptor that never confirmed.
        to: NodeName,
    },
    /// Send `message` on `channel`.
    Send {
        /// The channel the question came on.
        channel: ChannelId,
        /// The answer.
        message: PeerMessage,
    },
}

struct Held {
    to: NodeName,
    id: HandoffId,
    next_probe: Instant,
    until: Instant,
}

/// The copies this member holds in doubt, and when each is probed and released.
pub struct InDoubt {
    params: HoldParams,
    held: HashMap<ConnId, Held>,
    actions: VecDeque<DoubtAction>,
}

impl InDoubt {
    /// No copy held.
    pub fn new(params: HoldParams) -> InDoubt {
        InDoubt {
            params,
            held: HashMap::new(),
            actions: VecDeque::new(),
        }
    }

    /// Holds the copy of `conn`, whose handoff `id` to `to` ended without an answer past the
    /// commit point. (The shell keeps the socket; this table decides what becomes of it.)
    pub fn hold(&mut self, conn: ConnId, to: NodeName, id: HandoffId, now: Instant) {
        let held = Held {
            to,
            id,
            next_probe: now + self.params.probe_every,
            until: now + self.params.hold_for,
        };
        self.held.insert(conn, held);
    }

    /// Whether a copy of `conn` is held.
    pub fn holds(&self, conn: &ConnId) -> bool {
        self.held.contains_key(conn)
    }

    /// How many copies are held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether no copy is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// A `Recover{id, conn}` from `from` on `channel`: the acceptor's next run found the flow
    /// of `conn` frozen, so it never activated it. If the copy held is of a handoff to `from`,
    /// it is revived (returns `true`); otherwise it is not this table's question.
    pub fn recover(
        &mut self,
        from: &NodeName,
        conn: ConnId,
        channel: ChannelId,
        id: HandoffId,
    ) -> bool {
        if self.held.get(&conn).is_none_or(|held| &held.to != from) {
            return false;
        }
        self.held.remove(&conn);
        self.actions.push_back(DoubtAction::Revive {
            conn,
            answer: Some((channel, id)),
        });
        true
    }

    /// The client's packets of `conn` came back from the acceptor: it has no socket for them
    /// and sends them here, so nothing of the connection is live there. A copy held of `conn`
    /// is revived (returns `true`).
    pub fn bounced(&mut self, conn: ConnId) -> bool {
        if self.held.remove(&conn).is_none() {
            return false;
        }
        self.actions
            .push_back(DoubtAction::Revive { conn, answer: None });
        true
    }

    /// An answer from `from` to handoff `id` that came after the handoff ended: if it is the
    /// answer of a copy held here, it settles it (returns `true`). `Activated`: the acceptor
    /// serves the connection, the copy is closed. `Refused`: nothing of it is live there (a
    /// commit refused because it came after the restored socket was dropped), the copy is
    /// revived. Anything else says nothing of the outcome.
    pub fn answered(&mut self, from: &NodeName, id: HandoffId, message: &PeerMessage) -> bool {
        let Some(conn) = self
            .held
            .iter()
            .find(|(_, held)| &held.to == from && held.id == id)
            .map(|(conn, _)| *conn)
        else {
            return false;
        };
        let action = match message {
            PeerMessage::Activated { .. } => DoubtAction::Release {
                conn,
                to: from.clone(),
            },
            PeerMessage::Refused { .. } => DoubtAction::Revive { conn, answer: None },
            _ => return false,
        };
        self.held.remove(&conn);
        self.actions.push_back(action);
        true
    }

    /// How the revival asked for by [`DoubtAction::Revive`] went: `Ok(when)` (the socket
    /// serves again, its application has it), or why not (the connection is lost; the
    /// refusal lets the acceptor remove its frozen entry, so the client's next packet there
    /// draws a reset).
    pub fn revived(
        &mut self,
        conn: ConnId,
        answer: Option<(ChannelId, HandoffId)>,
        result: Result<Nanos, String>,
    ) {
        let Some((channel, id)) = answer else {
            return;
        };
        let message = match result {
            Ok(at) => PeerMessage::Activated {
                id,
                received_ns: at,
                restored_ns: at,
                activated_ns: at,
            },
            Err(e) => PeerMessage::Refused {
                id,
                reason: format!("the donor's copy of {conn} cannot be revived: {e}"),
            },
        };
        self.actions
            .push_back(DoubtAction::Send { channel, message });
    }

    /// The next step for the shell.
    pub fn poll_action(&mut self) -> Option<DoubtAction> {
        self.actions.pop_front()
    }

    /// When [`InDoubt::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.held
            .values()
            .map(|held| held.next_probe.min(held.until))
            .min()
    }

    /// Probes the clients whose probe is due and releases the copies whose hold has ended.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut ended: Vec<ConnId> = Vec::new();
        for (conn, held) in &mut self.held {
            if held.until <= now {
                ended.push(*conn);
            } else if held.next_probe <= now {
                held.next_probe = now + self.params.probe_every;
                self.actions.push_back(DoubtAction::Probe { conn: *conn });
            }
        }
        ended.sort();
        for conn in ended {
            if let Some(held) = self.held.remove(&conn) {
                self.actions
                    .push_back(DoubtAction::Release { conn, to: held.to });
            }
        }
    }
}

#[cfg(test)]
mod tests;
