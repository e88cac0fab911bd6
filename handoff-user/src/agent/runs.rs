//! What an acceptor knows of the transfers its peers send it: which run of each peer's agent is
//! current, the transfers being taken in, and the connections it took.
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
//! backward step of the clock gets through once the old run's channels have closed). The check
//! and the registration of the transfer as being received happen under one lock with the news of a new
//! run, so an answer about the connection given after that news either sees the transfer or
//! can rely on it being refused.
//!
//! A connection the acceptor took and that closed (or moved on) while its donor was down is
//! served nowhere either: the acceptor remembers what it took from whom, so that the restarted
//! donor does not revive a copy of a connection that went on without it.

use std::collections::{HashMap, HashSet, VecDeque};

use super::proto::ConnId;

/// How many taken connections an acceptor remembers (the oldest are forgotten first).
const TAKEN_REMEMBERED: usize = 65_536;

/// A hello of a run that a later run of the same peer has superseded.
#[derive(Debug, PartialEq, Eq)]
pub struct Superseded;

/// The runs heard from, the transfers in progress and the connections taken (one lock: see
/// the module).
#[derive(Debug, Default)]
pub struct Runs {
    /// The run of each peer's most recent hello.
    current: HashMap<String, u64>,
    /// The runs of each peer that a later one replaced.
    superseded: HashMap<String, HashSet<u64>>,
    /// Open channels per peer and run.
    open: HashMap<(String, u64), usize>,
    /// Transfers taken in and not yet done with (restored and parked, or activated), by donor,
    /// handoff number and connection, with how many listings (a one-phase activation is
    /// listed while its transfer still is).
    receiving: HashMap<(String, u64, ConnId), usize>,
    /// The donor each connection was last taken from, and when (a count), while this member
    /// has not handed the connection on.
    taken: HashMap<ConnId, (String, u64)>,
    /// The same in the order taken, for forgetting the oldest.
    taken_order: VecDeque<(ConnId, u64)>,
    taken_count: u64,
}

impl Runs {
    /// A channel of `node`'s run `run` is up: that run is the current one, and the channel is
    /// counted open (until [`Runs::closed`]). Returns the run it replaces, if another, or
    /// `Superseded` if a later run has been heard from (the channel is refused: it belongs to a
    /// process that is gone; see the module for the order of runs).
    pub fn hello(&mut self, node: &str, run: u64) -> Result<Option<u64>, Superseded> {
        let superseded = self.superseded.entry(node.to_owned()).or_default();
        let current = self.current.get(node).copied();
        let stale = superseded.contains(&run)
            || current.is_some_and(|current| {
                run < current
                    && self
                        .open
                        .get(&(node.to_owned(), current))
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
        self.current.insert(node.to_owned(), run);
        *self.open.entry((node.to_owned(), run)).or_default() += 1;
        Ok(previous)
    }

    /// A channel of `node`'s run `run` (one [`Runs::hello`] let through) has closed.
    pub fn closed(&mut self, node: &str, run: u64) {
        let key = (node.to_owned(), run);
        if let Some(open) = self.open.get_mut(&key) {
            *open -= 1;
            if *open == 0 {
                self.open.remove(&key);
            }
        }
    }

    /// Whether `run` is `node`'s current run (its messages are news, not leftovers).
    pub fn is_current(&self, node: &str, run: u64) -> bool {
        self.current.get(node).is_none_or(|current| *current == run)
    }

    /// A transfer of `conn` (handoff `id`) arrives from `node` on a channel of its run `run`:
    /// registered as being received — unless a later run of `node` has been heard from, in
    /// which case it is refused (false).
    pub fn receive(&mut self, node: &str, run: u64, id: u64, conn: ConnId) -> bool {
        if !self.is_current(node, run) {
            return false;
        }
        self.activating(node, id, conn);
        true
    }

    /// Registers handoff `id` of `node` as being received whatever the run: its activation,
    /// which its transfer (one-phase), a `Commit` or a `Recover` asked for.
    pub fn activating(&mut self, node: &str, id: u64, conn: ConnId) {
        *self
            .receiving
            .entry((node.to_owned(), id, conn))
            .or_default() += 1;
    }

    /// Handoff `id` of `node` (of `conn`) is done with: restored and parked, activated, or
    /// refused.
    pub fn done(&mut self, node: &str, id: u64, conn: ConnId) {
        let key = (node.to_owned(), id, conn);
        if let Some(count) = self.receiving.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                self.receiving.remove(&key);
            }
        }
    }

    /// The connections of the transfers being received.
    pub fn receiving(&self) -> impl Iterator<Item = &ConnId> {
        self.receiving.keys().map(|(_, _, conn)| conn)
    }

    /// `conn` was taken from `donor` (activated here).
    pub fn took(&mut self, donor: &str, conn: ConnId) {
        self.taken_count += 1;
        self.taken
            .insert(conn, (donor.to_owned(), self.taken_count));
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
    pub fn took_from(&self, donor: &str, conn: &ConnId) -> bool {
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

    #[test]
    fn a_transfer_of_a_run_superseded_since_is_refused() {
        let mut runs = Runs::default();
        assert_eq!(runs.hello("node1", 10), Ok(None));
        // The same run on its second channel changes nothing.
        assert_eq!(runs.hello("node1", 10), Ok(None));
        assert!(runs.receive("node1", 10, 1, conn(1)));
        // node1 restarted: its new run said hello.
        assert_eq!(runs.hello("node1", 20), Ok(Some(10)));
        assert!(!runs.receive("node1", 10, 2, conn(2)));
        assert!(runs.receive("node1", 20, 3, conn(3)));
        // Another member's runs are its own.
        assert!(runs.receive("node2", 10, 1, conn(4)));
        let mut receiving: Vec<u16> = runs.receiving().map(|c| c.client.port()).collect();
        receiving.sort();
        assert_eq!(receiving, [1, 3, 4]);
    }

    #[test]
    fn a_hello_of_a_superseded_run_is_refused() {
        let mut runs = Runs::default();
        runs.hello("node1", 10).unwrap();
        runs.hello("node1", 20).unwrap();
        // A channel of run 10 whose hello is read late (its accept delayed past the restart):
        // refused, and run 20 stays the current one.
        assert_eq!(runs.hello("node1", 10), Err(Superseded));
        assert!(!runs.receive("node1", 10, 1, conn(1)));
        assert!(runs.receive("node1", 20, 1, conn(1)));
        // A run never heard from, earlier than the current one while a channel of that is
        // open: a late hello of a process that died before the current one started.
        assert_eq!(runs.hello("node1", 15), Err(Superseded));
        assert!(runs.is_current("node1", 20));
        // A run that starts earlier than the current one by the clock (stepped back) once the
        // current run's channels have closed: the member restarted.
        runs.closed("node1", 20);
        assert_eq!(runs.hello("node1", 5), Ok(Some(20)));
        assert!(!runs.receive("node1", 20, 2, conn(2)));
        assert!(runs.is_current("node1", 5));
        assert!(!runs.is_current("node1", 20));
        // A peer never heard from: whatever it says is news.
        assert!(runs.is_current("node3", 1));
    }

    #[test]
    fn a_transfer_taken_in_before_the_new_run_is_seen_until_done() {
        let mut runs = Runs::default();
        runs.hello("node1", 10).unwrap();
        assert!(runs.receive("node1", 10, 7, conn(1)));
        runs.hello("node1", 20).unwrap();
        // Whoever asks after the new run's hello still sees it…
        assert_eq!(runs.receiving().count(), 1);
        // …until it is parked or activated (then listed there) or refused.
        runs.done("node1", 7, conn(1));
        assert_eq!(runs.receiving().count(), 0);
        // A one-phase activation is listed while its transfer still is.
        runs.activating("node1", 8, conn(2));
        runs.activating("node1", 8, conn(2));
        runs.done("node1", 8, conn(2));
        assert_eq!(runs.receiving().count(), 1);
        runs.done("node1", 8, conn(2));
        assert_eq!(runs.receiving().count(), 0);
        // Done with something never listed: nothing happens.
        runs.done("node1", 9, conn(3));
        assert_eq!(runs.receiving().count(), 0);
    }

    #[test]
    fn a_taken_connection_is_remembered_until_handed_on() {
        let mut runs = Runs::default();
        runs.took("node1", conn(1));
        assert!(runs.took_from("node1", &conn(1)));
        assert!(!runs.took_from("node3", &conn(1)));
        runs.passed_on(&conn(1));
        assert!(!runs.took_from("node1", &conn(1)));
        // Taken again, from another member: that one is named.
        runs.took("node1", conn(2));
        runs.took("node3", conn(2));
        assert!(runs.took_from("node3", &conn(2)));
        assert!(!runs.took_from("node1", &conn(2)));
    }

    #[test]
    fn the_oldest_taken_connections_are_forgotten() {
        let mut runs = Runs::default();
        for port in 0..TAKEN_REMEMBERED as u32 + 2 {
            let conn = ConnId {
                client: format!("[fd00::{:x}]:{}", (port >> 16) + 1, port & 0xffff)
                    .parse()
                    .unwrap(),
                ..conn(0)
            };
            runs.took("node1", conn);
        }
        assert_eq!(runs.taken.len(), TAKEN_REMEMBERED);
        assert!(!runs.took_from("node1", &conn(0)));
        assert!(!runs.took_from("node1", &conn(1)));
        assert!(runs.took_from("node1", &conn(2)));
    }
}
