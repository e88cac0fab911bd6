//! What an acceptor knows of its peers' agents: which run of each is current, and the
//! connections it took from each.
//!
//! A donor that crashes in the middle of a one-phase handoff leaves a transfer that may still
//! reach the acceptor after the donor has restarted: the kernel keeps sending what the dead
//! process wrote to its channel. The restarted donor asks the acceptor whether it serves the
//! connection and, if not, revives its own copy; the acceptor must then never activate that
//! late transfer, or the connection would have two live endpoints. So each channel carries its
//! sender's run (in `Hello`), and a transfer is taken only while its channel's run is the last
//! one heard from that peer (a channel of a run superseded since is refused; so is one of a
//! run never heard from before whose start time is earlier than the current run's while a
//! channel of the current run is open — a hello read late, its process gone; a new run after a
//! backward step of the clock gets through once the old run's channels have closed). The
//! [`super::acceptor::Acceptor`] checks a transfer's run and lists it as arriving in one step,
//! so an answer about the connection given after the news of a new run either sees the
//! transfer or can rely on it being refused.
//!
//! A connection the acceptor took and that closed (or moved on) while its donor was down is
//! served nowhere either: the acceptor remembers what it took from whom, so that the restarted
//! donor does not revive a copy of a connection that went on without it.

use std::collections::{HashMap, HashSet, VecDeque};

use super::ids::{NodeName, RunId};
use crate::agent::proto::ConnId;

/// How many taken connections an acceptor remembers (the oldest are forgotten first).
const TAKEN_REMEMBERED: usize = 65_536;

/// A hello of a run that a later run of the same peer has superseded.
#[derive(Debug, PartialEq, Eq)]
pub struct Superseded;

/// The runs heard from and the connections taken.
#[derive(Debug, Default)]
pub struct Runs {
    /// The run of each peer's most recent hello.
    current: HashMap<NodeName, RunId>,
    /// The runs of each peer that a later one replaced.
    superseded: HashMap<NodeName, HashSet<RunId>>,
    /// Open channels per peer and run.
    open: HashMap<(NodeName, RunId), usize>,
    /// The donor each connection was last taken from, and when (a count), while this member
    /// has not handed the connection on.
    taken: HashMap<ConnId, (NodeName, u64)>,
    /// The same in the order taken, for forgetting the oldest.
    taken_order: VecDeque<(ConnId, u64)>,
    taken_count: u64,
}

impl Runs {
    /// A channel of `node`'s run `run` is up: that run is the current one, and the channel is
    /// counted open (until [`Runs::closed`]). Returns the run it replaces, if another, or
    /// `Superseded` if a later run has been heard from (the channel is refused: it belongs to a
    /// process that is gone; see the module for the order of runs).
    pub fn hello(&mut self, node: &NodeName, run: RunId) -> Result<Option<RunId>, Superseded> {
        let superseded = self.superseded.entry(node.clone()).or_default();
        let current = self.current.get(node).copied();
        let stale = superseded.contains(&run)
            || current.is_some_and(|current| {
                run < current
                    && self
                        .open
                        .get(&(node.clone(), current))
                        .is_some_and(|n| *n > 0)
            });
        if stale {
            superseded.insert(run);
            return Err(Superseded);
        }
        let previous = current.filter(|current| *current != run);
        if let Some(previous) = previous {
            superseded.insert(previous);
        }
        self.current.insert(node.clone(), run);
        *self.open.entry((node.clone(), run)).or_default() += 1;
        Ok(previous)
    }

    /// A channel of `node`'s run `run` (one [`Runs::hello`] let through) has closed.
    pub fn closed(&mut self, node: &NodeName, run: RunId) {
        let key = (node.clone(), run);
        if let Some(open) = self.open.get_mut(&key) {
            *open -= 1;
            if *open == 0 {
                self.open.remove(&key);
            }
        }
    }

    /// Whether `run` is `node`'s current run (its messages are news, not leftovers).
    pub fn is_current(&self, node: &NodeName, run: RunId) -> bool {
        self.current.get(node).is_none_or(|current| *current == run)
    }

    /// `conn` was taken from `donor` (activated here).
    pub fn took(&mut self, donor: &NodeName, conn: ConnId) {
        self.taken_count += 1;
        self.taken.insert(conn, (donor.clone(), self.taken_count));
        self.taken_order.push_back((conn, self.taken_count));
        if self.taken_order.len() > TAKEN_REMEMBERED
            && let Some((oldest, count)) = self.taken_order.pop_front()
            && self.taken.get(&oldest).is_some_and(|(_, c)| *c == count)
        {
            self.taken.remove(&oldest);
        }
    }

    /// `conn` left this member (handed on, or another member is handing it over: it holds the
    /// connection): whoever it was taken from does not hear of it from here any more.
    pub fn passed_on(&mut self, conn: &ConnId) {
        self.taken.remove(conn);
    }

    /// Whether `conn` was last taken from `donor` (and not handed on since).
    pub fn took_from(&self, donor: &NodeName, conn: &ConnId) -> bool {
        self.taken.get(conn).is_some_and(|(from, _)| from == donor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(port: u16) -> ConnId {
        ConnId {
            client: format!("[fd00::1]:{port}").parse().unwrap(),
            local: "[fd00:ff::1]:8080".parse().unwrap(),
        }
    }

    fn node(name: &str) -> NodeName {
        NodeName::from(name)
    }

    #[test]
    fn a_run_superseded_since_is_not_current() {
        let mut runs = Runs::default();
        let node1 = node("node1");
        assert_eq!(runs.hello(&node1, RunId(10)), Ok(None));
        // The same run on its second channel changes nothing.
        assert_eq!(runs.hello(&node1, RunId(10)), Ok(None));
        assert!(runs.is_current(&node1, RunId(10)));
        // node1 restarted: its new run said hello.
        assert_eq!(runs.hello(&node1, RunId(20)), Ok(Some(RunId(10))));
        assert!(!runs.is_current(&node1, RunId(10)));
        assert!(runs.is_current(&node1, RunId(20)));
        // Another member's runs are its own.
        assert!(runs.is_current(&node("node2"), RunId(10)));
    }

    #[test]
    fn a_hello_of_a_superseded_run_is_refused() {
        let mut runs = Runs::default();
        let node1 = node("node1");
        runs.hello(&node1, RunId(10)).unwrap();
        runs.hello(&node1, RunId(20)).unwrap();
        // A channel of run 10 whose hello is read late (its accept delayed past the restart):
        // refused, and run 20 stays the current one.
        assert_eq!(runs.hello(&node1, RunId(10)), Err(Superseded));
        assert!(!runs.is_current(&node1, RunId(10)));
        assert!(runs.is_current(&node1, RunId(20)));
        // A run never heard from, earlier than the current one while a channel of that is
        // open: a late hello of a process that died before the current one started.
        assert_eq!(runs.hello(&node1, RunId(15)), Err(Superseded));
        assert!(runs.is_current(&node1, RunId(20)));
        // A run that starts earlier than the current one by the clock (stepped back) once the
        // current run's channels have closed: the member restarted.
        runs.closed(&node1, RunId(20));
        assert_eq!(runs.hello(&node1, RunId(5)), Ok(Some(RunId(20))));
        assert!(runs.is_current(&node1, RunId(5)));
        assert!(!runs.is_current(&node1, RunId(20)));
        // A peer never heard from: whatever it says is news.
        assert!(runs.is_current(&node("node3"), RunId(1)));
    }

    #[test]
    fn a_taken_connection_is_remembered_until_handed_on() {
        let mut runs = Runs::default();
        let (node1, node3) = (node("node1"), node("node3"));
        runs.took(&node1, conn(1));
        assert!(runs.took_from(&node1, &conn(1)));
        assert!(!runs.took_from(&node3, &conn(1)));
        runs.passed_on(&conn(1));
        assert!(!runs.took_from(&node1, &conn(1)));
        // Taken again, from another member: that one is named.
        runs.took(&node1, conn(2));
        runs.took(&node3, conn(2));
        assert!(runs.took_from(&node3, &conn(2)));
        assert!(!runs.took_from(&node1, &conn(2)));
    }

    #[test]
    fn the_oldest_taken_connections_are_forgotten() {
        let mut runs = Runs::default();
        let node1 = node("node1");
        for port in 0..TAKEN_REMEMBERED as u32 + 2 {
            let conn = ConnId {
                client: format!("[fd00::{:x}]:{}", (port >> 16) + 1, port & 0xffff)
                    .parse()
                    .unwrap(),
                ..conn(0)
            };
            runs.took(&node1, conn);
        }
        assert_eq!(runs.taken.len(), TAKEN_REMEMBERED);
        assert!(!runs.took_from(&node1, &conn(0)));
        assert!(!runs.took_from(&node1, &conn(1)));
        assert!(runs.took_from(&node1, &conn(2)));
    }
}
