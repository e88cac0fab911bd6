//! A drain's rules (docs/handoffd.md, "Drain"): which connection goes next and to which
//! target, when a failed handoff is tried again elsewhere, which targets are left out, when the
//! drain takes no more connections. The shell's workers ask for work ([`Drain::next`]), run
//! each handoff, and report how it ended ([`Drain::finished`]).

use std::{collections::VecDeque, time::Instant};

use super::{ids::NodeName, outcome::Fate};
use crate::agent::proto::ConnId;

/// What a worker does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Hand `conn` to `to`.
    Try {
        /// The connection.
        conn: ConnId,
        /// The target.
        to: NodeName,
    },
    /// `conn` cannot be handed to any target: every one is left out. `to` is its planned one.
    Fail {
        /// The connection.
        conn: ConnId,
        /// Its planned target.
        to: NodeName,
        /// Why.
        reason: String,
    },
    /// The connection is done with (moved, or failed for good).
    Done,
    /// No more work: the plan is through, the deadline passed, or the drain was stopped.
    Idle,
}

/// One connection's attempts.
#[derive(Clone, Debug)]
struct Attempts {
    conn: ConnId,
    /// Its place in the plan: its first target is `targets[first % len]`.
    first: usize,
    /// Targets tried so far, in turn from `first`.
    tried: usize,
}

/// A drain in progress: the plan, the targets left out, the retries.
#[derive(Debug)]
pub struct Drain {
    targets: Vec<NodeName>,
    queue: VecDeque<(usize, ConnId)>,
    deadline: Option<Instant>,
    stopped: bool,
    left_out: Vec<NodeName>,
    retries: usize,
    in_flight: Vec<Attempts>,
}

impl Drain {
    /// A drain of `conns` over `targets` (not empty), round robin in the order given, the
    /// first connection to `targets[first % len]`; no connection is taken after `deadline`.
    pub fn new(
        conns: impl IntoIterator<Item = ConnId>,
        targets: Vec<NodeName>,
        first: usize,
        deadline: Option<Instant>,
    ) -> Drain {
        Drain {
            queue: conns
                .into_iter()
                .enumerate()
                .map(|(i, c)| (first + i, c))
                .collect(),
            targets,
            deadline,
            stopped: false,
            left_out: Vec::new(),
            retries: 0,
            in_flight: Vec::new(),
        }
    }

    /// The plan: each connection not yet taken and its first target.
    pub fn plan(&self) -> Vec<(ConnId, NodeName)> {
        self.queue
            .iter()
            .map(|(i, conn)| (*conn, self.target(*i).clone()))
            .collect()
    }

    /// Takes no further connection (the agent is stopping): those in flight finish, and are
    /// not tried elsewhere.
    pub fn stop(&mut self) {
        self.stopped = true;
    }

    /// Handoffs tried again with another target.
    pub fn retries(&self) -> usize {
        self.retries
    }

    /// Targets that could not be reached, in the order found.
    pub fn left_out(&self) -> &[NodeName] {
        &self.left_out
    }

    fn target(&self, i: usize) -> &NodeName {
        &self.targets[i % self.targets.len()]
    }

    /// The first target from the `tried`-th on, in turn from `first`, that is not left out.
    fn try_from(&mut self, mut attempts: Attempts) -> Next {
        while attempts.tried < self.targets.len() {
            let to = self.target(attempts.first + attempts.tried).clone();
            if !self.left_out.contains(&to) {
                let conn = attempts.conn;
                self.in_flight.push(attempts);
                return Next::Try { conn, to };
            }
            attempts.tried += 1;
        }
        Next::Fail {
            conn: attempts.conn,
            to: self.target(attempts.first).clone(),
            reason: "every target was left out (none could be reached)".into(),
        }
    }

    /// The next connection to hand off, and its target.
    pub fn next(&mut self, now: Instant) -> Next {
        if self.stopped || self.deadline.is_some_and(|deadline| now >= deadline) {
            return Next::Idle;
        }
        let Some((first, conn)) = self.queue.pop_front() else {
            return Next::Idle;
        };
        self.try_from(Attempts {
            conn,
            first,
            tried: 0,
        })
    }

    /// The handoff of `conn` to `to` ended (`None`: moved; else where the connection is);
    /// `unreachable`: `to`'s agent could not be reached afterwards (no channel, and none
    /// opens), so no connection is sent there any more. A connection that stays here is tried
    /// with the next target in turn, each target at most once.
    pub fn finished(
        &mut self,
        conn: ConnId,
        to: &NodeName,
        fate: Option<Fate>,
        unreachable: bool,
    ) -> Next {
        if unreachable && !self.left_out.contains(to) {
            self.left_out.push(to.clone());
        }
        let Some(i) = self.in_flight.iter().position(|a| a.conn == conn) else {
            return Next::Done;
        };
        let mut attempts = self.in_flight.swap_remove(i);
        if fate != Some(Fate::Here) || self.stopped {
            return Next::Done;
        }
        attempts.tried += 1;
        match self.try_from(attempts) {
            retry @ Next::Try { .. } => {
                self.retries += 1;
                retry
            }
            // Every other target tried or left out: the last failure stands.
            _ => Next::Done,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn conn(port: u16) -> ConnId {
        ConnId {
            client: format!("[fd00:d51:1:1::1]:{port}").parse().unwrap(),
            local: "[fd00:d51:ff00::1]:8080".parse().unwrap(),
        }
    }

    fn nodes(names: &[&str]) -> Vec<NodeName> {
        names.iter().map(|n| NodeName::from(*n)).collect()
    }

    fn try_(port: u16, to: &str) -> Next {
        Next::Try {
            conn: conn(port),
            to: to.into(),
        }
    }

    #[test]
    fn connections_go_round_robin_over_the_targets() {
        let mut drain = Drain::new((1..=5).map(conn), nodes(&["node2", "node3"]), 0, None);
        let plan: Vec<_> = drain.plan().into_iter().map(|(_, to)| to).collect();
        assert_eq!(plan, nodes(&["node2", "node3", "node2", "node3", "node2"]));
        let now = Instant::now();
        assert_eq!(drain.next(now), try_(1, "node2"));
        assert_eq!(drain.next(now), try_(2, "node3"));
        // A new connection of a drained member starts where the turn is.
        let mut one = Drain::new([conn(9)], nodes(&["node2", "node3"]), 7, None);
        assert_eq!(one.next(now), try_(9, "node3"));
    }

    #[test]
    fn a_connection_that_stays_is_tried_with_each_other_target_once() {
        let now = Instant::now();
        let mut drain = Drain::new([conn(1)], nodes(&["node2", "node3", "node4"]), 0, None);
        assert_eq!(drain.next(now), try_(1, "node2"));
        let to = NodeName::from("node2");
        assert_eq!(
            drain.finished(conn(1), &to, Some(Fate::Here), false),
            try_(1, "node3")
        );
        let to = NodeName::from("node3");
        assert_eq!(
            drain.finished(conn(1), &to, Some(Fate::Here), false),
            try_(1, "node4")
        );
        let to = NodeName::from("node4");
        assert_eq!(
            drain.finished(conn(1), &to, Some(Fate::Here), false),
            Next::Done
        );
        assert_eq!(drain.retries(), 2);
        assert_eq!(drain.next(now), Next::Idle);
    }

    #[test]
    fn a_connection_that_moved_or_may_have_is_not_tried_again() {
        let now = Instant::now();
        for fate in [
            None,
            Some(Fate::Unknown),
            Some(Fate::Lost),
            Some(Fate::NotHere),
        ] {
            let mut drain = Drain::new([conn(1)], nodes(&["node2", "node3"]), 0, None);
            drain.next(now);
            let to = NodeName::from("node2");
            assert_eq!(drain.finished(conn(1), &to, fate, false), Next::Done);
            assert_eq!(drain.retries(), 0);
        }
    }

    #[test]
    fn an_unreachable_target_is_left_out_for_every_connection() {
        let now = Instant::now();
        let mut drain = Drain::new((1..=4).map(conn), nodes(&["node2", "node3"]), 0, None);
        assert_eq!(drain.next(now), try_(1, "node2"));
        assert_eq!(drain.next(now), try_(2, "node3"));
        let node3 = NodeName::from("node3");
        // node3 is down: conn 2 goes to node2, and so does every later one.
        assert_eq!(
            drain.finished(conn(2), &node3, Some(Fate::Here), true),
            try_(2, "node2")
        );
        assert_eq!(drain.next(now), try_(3, "node2"));
        assert_eq!(drain.next(now), try_(4, "node2"));
        assert_eq!(drain.left_out(), nodes(&["node3"]));
        // node2 goes down too: nothing is left to try.
        let node2 = NodeName::from("node2");
        assert_eq!(
            drain.finished(conn(3), &node2, Some(Fate::Here), true),
            Next::Done
        );
        let mut late = Drain::new([conn(5)], nodes(&["node2", "node3"]), 0, None);
        late.left_out = nodes(&["node2", "node3"]);
        assert!(matches!(late.next(now), Next::Fail { .. }));
    }

    #[test]
    fn no_connection_is_taken_after_the_deadline_or_a_stop() {
        let now = Instant::now();
        let deadline = now + Duration::from_secs(1);
        let mut drain = Drain::new((1..=3).map(conn), nodes(&["node2"]), 0, Some(deadline));
        assert_eq!(drain.next(now), try_(1, "node2"));
        assert_eq!(drain.next(deadline), Next::Idle);
        let mut drain = Drain::new((1..=3).map(conn), nodes(&["node2", "node3"]), 0, None);
        drain.next(now);
        drain.stop();
        assert_eq!(drain.next(now), Next::Idle);
        // The handoff in flight finishes, and is not tried elsewhere.
        let to = NodeName::from("node2");
        assert_eq!(
            drain.finished(conn(1), &to, Some(Fate::Here), false),
            Next::Done
        );
    }
}
