//! Which run of each peer's agent is current, and the transfers being taken in.
//!
//! A donor that crashes in the middle of a one-phase handoff leaves a transfer that may still
//! reach the acceptor after the donor has restarted: the kernel keeps sending what the dead
//! process wrote to its channel. The restarted donor asks the acceptor whether it serves the
//! connection and, if not, revives its own copy; the acceptor must then never activate that
//! late transfer, or the connection would have two live endpoints. So each channel carries its
//! sender's run (in `Hello`), and a transfer is taken only while its channel's run is the last
//! one heard from that peer. The check and the registration of the transfer as being received
//! happen under one lock with the news of a new run, so an answer about the connection given
//! after that news either sees the transfer or can rely on it being refused.

use std::collections::HashMap;

use super::proto::ConnId;

/// The runs heard from and the transfers in progress (one lock: see the module).
#[derive(Debug, Default)]
pub struct Runs {
    /// The run of each peer's most recent hello.
    current: HashMap<String, u64>,
    /// Transfers taken in and not yet done with (restored and parked, or activated), by donor,
    /// handoff number and connection, with how many (a donor's numbers start again at 1 when
    /// it restarts, so one of each run may be in progress).
    receiving: HashMap<(String, u64, ConnId), usize>,
}

impl Runs {
    /// A channel of `node`'s run `run` is up: that run is the current one. Returns the run it
    /// replaces, if another.
    pub fn hello(&mut self, node: &str, run: u64) -> Option<u64> {
        self.current
            .insert(node.to_owned(), run)
            .filter(|previous| *previous != run)
    }

    /// A transfer of `conn` (handoff `id`) arrives from `node` on a channel of its run `run`:
    /// registered as being received — unless a later run of `node` has been heard from, in
    /// which case it is refused (false).
    pub fn receive(&mut self, node: &str, run: u64, id: u64, conn: ConnId) -> bool {
        if self
            .current
            .get(node)
            .is_some_and(|current| *current != run)
        {
            return false;
        }
        self.activating(node, id, conn);
        true
    }

    /// Registers handoff `id` of `node` as being received whatever the run (its activation,
    /// which a `Commit` or `Recover` of the current run asked for).
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
        assert_eq!(runs.hello("node1", 10), None);
        // The same run on its second channel changes nothing.
        assert_eq!(runs.hello("node1", 10), None);
        assert!(runs.receive("node1", 10, 1, conn(1)));
        // node1 restarted: its new run said hello (and numbers its handoffs from 1 again).
        assert_eq!(runs.hello("node1", 20), Some(10));
        assert!(!runs.receive("node1", 10, 2, conn(2)));
        assert!(runs.receive("node1", 20, 1, conn(3)));
        // Another member's runs are its own.
        assert!(runs.receive("node2", 10, 1, conn(4)));
        let mut receiving: Vec<u16> = runs.receiving().map(|c| c.client.port()).collect();
        receiving.sort();
        assert_eq!(receiving, [1, 3, 4]);
    }

    #[test]
    fn a_transfer_taken_in_before_the_new_run_is_seen_until_done() {
        let mut runs = Runs::default();
        runs.hello("node1", 10);
        assert!(runs.receive("node1", 10, 7, conn(1)));
        runs.hello("node1", 20);
        // Whoever asks after the new run's hello still sees it…
        assert_eq!(runs.receiving().count(), 1);
        // …until it is parked or activated (then listed there) or refused.
        runs.done("node1", 7, conn(1));
        assert_eq!(runs.receiving().count(), 0);
        // An activation asked for by the current run is listed while it runs, also when its
        // transfer still is (one-phase: activated as soon as restored).
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
}
