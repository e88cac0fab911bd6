//! A restart's recovery of the handoffs its earlier run was in the middle of (docs/handoffd.md,
//! Restarts, step 3), and the rule of the redirect check (step 6).
//!
//! [`Recovery`]: the earlier run left frozen entries; the sockets it held died with it, so a
//! member that restored the connection (an acceptor waiting for the commit) or holds a copy in
//! doubt (a donor whose handoff to this member had no known outcome) may hold its only live
//! copy. Each connection's members are asked in turn (`Recover`, [`RecoveryAction::Ask`]) until
//! one activates it ([`RecoveryAction::Redirect`]); if none does the entry goes
//! ([`RecoveryAction::Remove`]) — `unclaimed` when every member refused or could not be asked
//! (a restored socket there only goes live on a `Commit` or a `Recover`), so that a copy the
//! application kept is the connection's again; given up when a member asked did not answer (it
//! may activate it yet: reviving the copy here could make two live endpoints). Connections are
//! recovered side by side, each asking one member at a time.
//!
//! [`redirect_verdict`]: what the redirect check does with one entry, from what the members
//! said of its connection.

use std::{
    collections::{BTreeMap, VecDeque},
    time::{Duration, Instant},
};

use super::ids::NodeName;
use crate::agent::proto::ConnId;

/// A step for the shell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecoveryAction {
    /// `Recover{id, conn}` to `peer`. Answer: [`Recovery::answered`], or [`Recovery::not_asked`]
    /// when no channel to it opens.
    Ask {
        /// The member asked.
        peer: NodeName,
        /// The connection.
        conn: ConnId,
    },
    /// `peer` activated the connection: point its flow there and announce the owner.
    Redirect {
        /// The connection.
        conn: ConnId,
        /// The member that serves it now.
        peer: NodeName,
    },
    /// No member holds the connection: remove its entry.
    Remove {
        /// The connection.
        conn: ConnId,
        /// Every member refused or could not be asked: a copy the application kept (in repair
        /// mode) is the connection's, and may be revived. Otherwise a member asked did not
        /// answer, and the connection is given up.
        unclaimed: bool,
    },
}

/// What a member answered to `Recover`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoverAnswer {
    /// It activated the connection.
    Activated,
    /// It holds nothing of it.
    Refused,
    /// Anything else: it says nothing of the connection.
    Other,
}

/// One connection being recovered.
struct Asking {
    /// The index of the member asked now.
    next: usize,
    /// Until when its answer is waited for (`None`: not asked yet).
    until: Option<Instant>,
    /// Whether every member so far refused or could not be asked.
    all_refused: bool,
}

/// The recovery of the interrupted handoffs.
pub struct Recovery {
    peers: Vec<NodeName>,
    peer_timeout: Duration,
    asking: BTreeMap<ConnId, Asking>,
    actions: VecDeque<RecoveryAction>,
}

impl Recovery {
    /// Recovers `conns`, asking `peers` in this order, each for up to `peer_timeout`.
    pub fn new(conns: Vec<ConnId>, peers: Vec<NodeName>, peer_timeout: Duration) -> Recovery {
        let asking = conns
            .into_iter()
            .map(|conn| {
                let asking = Asking {
                    next: 0,
                    until: None,
                    all_refused: true,
                };
                (conn, asking)
            })
            .collect();
        Recovery {
            peers,
            peer_timeout,
            asking,
            actions: VecDeque::new(),
        }
    }

    /// Asks the first member about every connection.
    pub fn start(&mut self, now: Instant) {
        let conns: Vec<ConnId> = self.asking.keys().copied().collect();
        for conn in conns {
            self.ask(conn, now);
        }
    }

    /// Asks the member whose turn it is about `conn`, or ends its recovery when none is left.
    fn ask(&mut self, conn: ConnId, now: Instant) {
        let Some(asking) = self.asking.get_mut(&conn) else {
            return;
        };
        match self.peers.get(asking.next) {
            Some(peer) => {
                asking.until = Some(now + self.peer_timeout);
                let peer = peer.clone();
                self.actions.push_back(RecoveryAction::Ask { peer, conn });
            }
            None => {
                let unclaimed = asking.all_refused;
                self.asking.remove(&conn);
                self.actions
                    .push_back(RecoveryAction::Remove { conn, unclaimed });
            }
        }
    }

    /// Whether `peer` is the member asked about `conn` now.
    fn asked(&self, peer: &NodeName, conn: &ConnId) -> bool {
        self.asking
            .get(conn)
            .is_some_and(|asking| self.peers.get(asking.next) == Some(peer))
    }

    /// Moves on to the next member about `conn`; `refused`: the one asked holds nothing.
    fn next(&mut self, conn: ConnId, refused: bool, now: Instant) {
        if let Some(asking) = self.asking.get_mut(&conn) {
            asking.next += 1;
            asking.all_refused &= refused;
        }
        self.ask(conn, now);
    }

    /// No channel to `peer` opens: it cannot be asked. A socket it restored only goes live on a
    /// `Commit` or a `Recover`, neither of which will come: it holds nothing live.
    pub fn not_asked(&mut self, peer: &NodeName, conn: ConnId, now: Instant) {
        if self.asked(peer, &conn) {
            self.next(conn, true, now);
        }
    }

    /// `peer`'s answer about `conn`.
    pub fn answered(&mut self, peer: &NodeName, conn: ConnId, answer: RecoverAnswer, now: Instant) {
        if !self.asked(peer, &conn) {
            return;
        }
        match answer {
            RecoverAnswer::Activated => {
                self.asking.remove(&conn);
                let peer = peer.clone();
                self.actions
                    .push_back(RecoveryAction::Redirect { conn, peer });
            }
            RecoverAnswer::Refused => self.next(conn, true, now),
            RecoverAnswer::Other => self.next(conn, false, now),
        }
    }

    /// The next step for the shell.
    pub fn poll_action(&mut self) -> Option<RecoveryAction> {
        self.actions.pop_front()
    }

    /// Until when an answer is waited for.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.asking.values().filter_map(|asking| asking.until).min()
    }

    /// The members that did not answer in time: each may activate the connection yet.
    pub fn handle_timeout(&mut self, now: Instant) {
        let late: Vec<ConnId> = self
            .asking
            .iter()
            .filter(|(_, asking)| asking.until.is_some_and(|until| until <= now))
            .map(|(conn, _)| *conn)
            .collect();
        for conn in late {
            self.next(conn, false, now);
        }
    }

    /// Whether every connection is settled.
    pub fn is_done(&self) -> bool {
        self.asking.is_empty()
    }
}

/// What the members said of the connection of one redirect entry (`Serves`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claims<A> {
    /// The members that serve it.
    pub serving: Vec<A>,
    /// The members it is on its way to.
    pub arriving: Vec<A>,
    /// Whether a member took it from the asker (and has not handed it on).
    pub taken: bool,
}

impl<A: Clone + Ord> Claims<A> {
    /// The members that have it or are taking it over.
    pub fn owners(&self) -> Vec<A> {
        let mut owners: Vec<A> = self.serving.iter().chain(&self.arriving).cloned().collect();
        owners.sort();
        owners.dedup();
        owners
    }
}

/// What the redirect check does with one entry this round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict<A> {
    /// It names the one member that has the connection.
    Keep,
    /// One member has it, another is named: point it there.
    Repoint(A),
    /// No member has it: remove it. `unclaimed` (at start, when no member took the connection
    /// from this one): a copy the application kept is the connection's again.
    Remove {
        /// Whether the application's copy may be revived.
        unclaimed: bool,
    },
    /// Ask about it again next round.
    Again,
    /// Several members claim it, or not every member answered: leave it.
    Unresolved,
}

/// Where a redirect check stands: which round of how many, whether it runs at start, and
/// whether every peer answered this round.
#[derive(Clone, Copy, Debug)]
pub struct Round {
    /// This round (0 first).
    pub round: usize,
    /// The rounds in all.
    pub rounds: usize,
    /// The check at start (entries of an earlier run).
    pub at_start: bool,
    /// Every peer answered this round.
    pub everyone: bool,
}

/// The redirect check's rule for one entry naming `target`, given `claims`: an entry no member
/// claims is removed only in a second round where every peer answered (a connection between two
/// members is claimed by neither for a moment); at start, an entry whose connection is only on
/// its way to a member is asked about again until the last round (its transfer may yet be
/// refused, and then the connection is nowhere but in the earlier run's socket).
pub fn redirect_verdict<A: Clone + Ord>(target: &A, claims: &Claims<A>, at: Round) -> Verdict<A> {
    let arriving_only = claims.serving.is_empty() && !claims.arriving.is_empty();
    let last = at.round + 1 == at.rounds;
    match claims.owners().as_slice() {
        // Only while every peer answers: else nothing can be removed anyway, and each round
        // would wait for the silent one.
        _ if at.at_start && arriving_only && at.everyone && !last => Verdict::Again,
        [owner] if owner == target => Verdict::Keep,
        [owner] => Verdict::Repoint(owner.clone()),
        [] if at.everyone && at.round > 0 => Verdict::Remove {
            unclaimed: at.at_start && !claims.taken,
        },
        [] if at.everyone => Verdict::Again,
        _ => Verdict::Unresolved,
    }
}

#[cfg(test)]
mod tests;
