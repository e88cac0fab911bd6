//! The acceptor's rules, each as a test on a virtual clock.

use std::{
    cell::Cell,
    time::{Duration, Instant},
};

use super::*;

const TIMEOUT: Duration = Duration::from_millis(2000);
const EXPIRY: Duration = Duration::from_millis(8000);
const CH: ChannelId = ChannelId(1);

fn conn(port: u16) -> ConnId {
    ConnId {
        client: format!("[fd00:d51:1:1::1]:{port}").parse().unwrap(),
        local: "[fd00:d51:ff00::1]:8080".parse().unwrap(),
    }
}

fn node1() -> NodeName {
    NodeName::from("node1")
}

fn key(id: u64) -> HandoffKey {
    HandoffKey {
        donor: node1(),
        id: HandoffId(id),
    }
}

#[derive(Default)]
struct FakeMember {
    serves: Cell<Option<ConnId>>,
    refuses: Option<String>,
}

impl Member for FakeMember {
    fn serves(&self, conn: &ConnId) -> bool {
        self.serves.get() == Some(*conn)
    }
    fn refuses(&self) -> Option<String> {
        self.refuses.clone()
    }
}

struct Test {
    acceptor: Acceptor,
    member: FakeMember,
    now: Instant,
}

impl Test {
    fn new() -> Test {
        let mut acceptor = Acceptor::new(NodeName::from("node2"), TIMEOUT);
        acceptor.hello(&node1(), RunId(10)).unwrap();
        Test {
            acceptor,
            member: FakeMember::default(),
            now: Instant::now(),
        }
    }

    /// Every step asked for, logs left out.
    fn actions(&mut self) -> Vec<AcceptorAction> {
        std::iter::from_fn(|| self.acceptor.poll_action())
            .filter(|a| !matches!(a, AcceptorAction::Log { .. }))
            .collect()
    }

    fn message(
        &mut self,
        channel: ChannelId,
        run: u64,
        message: PeerMessage,
    ) -> Vec<AcceptorAction> {
        let input = AcceptorInput::Peer {
            from: node1(),
            run: RunId(run),
            channel,
            message,
        };
        self.acceptor.handle(input, self.now, &self.member);
        self.actions()
    }

    fn input(&mut self, input: AcceptorInput) -> Vec<AcceptorAction> {
        self.acceptor.handle(input, self.now, &self.member);
        self.actions()
    }

    fn transfer(&mut self, id: u64, port: u16, one_phase: bool) -> Vec<AcceptorAction> {
        self.message(
            CH,
            10,
            PeerMessage::Transfer {
                id: HandoffId(id),
                conn: conn(port),
                tcp_state: vec![1],
                app_state: vec![2],
                home_token: None,
                bu_sequence: None,
                one_phase,
            },
        )
    }

    fn restored(&mut self, id: u64) -> Vec<AcceptorAction> {
        self.input(AcceptorInput::Restored {
            key: key(id),
            result: Ok(RestoreTimes {
                received_ns: 1,
                restored_ns: 2,
            }),
        })
    }

    fn timeout(&mut self, after: Duration) -> Vec<AcceptorAction> {
        self.acceptor.handle_timeout(self.now + after, &self.member);
        self.actions()
    }
}

fn send(message: PeerMessage) -> AcceptorAction {
    AcceptorAction::Send {
        channel: CH,
        message,
    }
}

fn refused(actions: &[AcceptorAction]) -> Option<String> {
    actions.iter().find_map(|a| match a {
        AcceptorAction::Send {
            message: PeerMessage::Refused { reason, .. },
            ..
        } => Some(reason.clone()),
        _ => None,
    })
}

fn returns_flow(actions: &[AcceptorAction], port: u16) -> bool {
    actions.contains(&AcceptorAction::ReturnFlow {
        conn: conn(port),
        donor: node1(),
    })
}

#[test]
fn a_two_phase_transfer_is_restored_parked_and_activated_on_commit_only() {
    let mut t = Test::new();
    assert_eq!(
        t.transfer(7, 1, false),
        [AcceptorAction::Restore {
            key: key(7),
            conn: conn(1)
        }]
    );
    assert!(t.acceptor.arriving().contains(&conn(1)));
    assert_eq!(
        t.restored(7),
        [send(PeerMessage::Ready { id: HandoffId(7) })]
    );
    assert_eq!(t.acceptor.waiting_commit(), 1);
    assert_eq!(
        t.message(CH, 10, PeerMessage::Commit { id: HandoffId(7) }),
        [AcceptorAction::Activate { key: key(7) }]
    );
    let done = t.input(AcceptorInput::Activated {
        key: key(7),
        result: Ok(3),
    });
    assert_eq!(
        done,
        [
            send(PeerMessage::Activated {
                id: HandoffId(7),
                received_ns: 1,
                restored_ns: 2,
                activated_ns: 3
            }),
            AcceptorAction::Bind {
                key: key(7),
                channel: CH,
                id: HandoffId(7)
            }
        ]
    );
    assert!(!t.acceptor.arriving().contains(&conn(1)));
    assert!(t.acceptor.took_from(&node1(), &conn(1)));
    assert_eq!(t.acceptor.pending(), 0);
}

#[test]
fn a_one_phase_transfer_goes_live_only_once_ready_was_sent() {
    // Ready sent before or after the restore ends: activated either way.
    for ready_first in [true, false] {
        let mut t = Test::new();
        assert_eq!(
            t.transfer(7, 1, true),
            [
                AcceptorAction::Restore {
                    key: key(7),
                    conn: conn(1)
                },
                AcceptorAction::SendReady {
                    key: key(7),
                    channel: CH
                }
            ]
        );
        let ready = AcceptorInput::ReadySent {
            key: key(7),
            result: Ok(()),
        };
        let activate = [AcceptorAction::Activate { key: key(7) }];
        if ready_first {
            assert_eq!(t.input(ready), []);
            assert_eq!(t.restored(7), activate);
        } else {
            assert_eq!(t.restored(7), []);
            assert_eq!(t.input(ready), activate);
        }
    }
    // Ready could not be sent: the donor may roll back, so the socket is dropped unused.
    let mut t = Test::new();
    t.transfer(7, 1, true);
    t.restored(7);
    let actions = t.input(AcceptorInput::ReadySent {
        key: key(7),
        result: Err("broken pipe".into()),
    });
    assert!(actions.contains(&AcceptorAction::Discard { key: key(7) }));
    assert!(returns_flow(&actions, 1));
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, AcceptorAction::Activate { .. }))
    );
    assert_eq!(t.acceptor.pending(), 0);
}

#[test]
fn a_transfer_from_a_donors_earlier_run_is_refused_and_its_flow_goes_back() {
    let mut t = Test::new();
    t.acceptor.hello(&node1(), RunId(20)).unwrap();
    let actions = t.transfer(7, 1, true);
    assert_eq!(
        refused(&actions).as_deref(),
        Some("node1 restarted since this transfer was sent")
    );
    assert!(returns_flow(&actions, 1));
    assert!(actions.contains(&AcceptorAction::Discard { key: key(7) }));
    assert!(!t.acceptor.arriving().contains(&conn(1)));
}

#[test]
fn a_draining_or_stopping_member_refuses_transfers() {
    let mut t = Test::new();
    t.member.refuses = Some("node2 is draining".into());
    let actions = t.transfer(7, 1, false);
    assert_eq!(refused(&actions).as_deref(), Some("node2 is draining"));
    assert!(returns_flow(&actions, 1));
    assert_eq!(t.acceptor.pending(), 0);
}

#[test]
fn a_failed_restore_or_activation_is_refused_and_the_flow_goes_back() {
    let mut t = Test::new();
    t.transfer(7, 1, false);
    let actions = t.input(AcceptorInput::Restored {
        key: key(7),
        result: Err("state refused: bad checksum".into()),
    });
    assert_eq!(
        refused(&actions).as_deref(),
        Some("state refused: bad checksum")
    );
    assert!(returns_flow(&actions, 1));
    t.transfer(8, 2, false);
    t.restored(8);
    t.message(CH, 10, PeerMessage::Commit { id: HandoffId(8) });
    let actions = t.input(AcceptorInput::Activated {
        key: key(8),
        result: Err("EINVAL".into()),
    });
    assert_eq!(
        refused(&actions).as_deref(),
        Some("activation failed: EINVAL")
    );
    assert!(returns_flow(&actions, 2));
    assert!(!t.acceptor.took_from(&node1(), &conn(2)));
}

#[test]
fn abort_drops_what_the_acceptor_holds_at_every_stage() {
    // Prepared (one-phase): the frozen flow goes back.
    let mut t = Test::new();
    t.message(
        CH,
        10,
        PeerMessage::Prepare {
            id: HandoffId(7),
            conn: conn(1),
            freeze: true,
        },
    );
    let actions = t.message(CH, 10, PeerMessage::Abort { id: HandoffId(7) });
    assert!(returns_flow(&actions, 1));
    // Parked: the restored socket is dropped.
    t.transfer(8, 2, false);
    t.restored(8);
    let actions = t.message(CH, 10, PeerMessage::Abort { id: HandoffId(8) });
    assert!(actions.contains(&AcceptorAction::Discard { key: key(8) }));
    assert!(returns_flow(&actions, 2));
    // Restoring: dropped when the restore is done, and refused.
    t.transfer(9, 3, false);
    assert_eq!(
        t.message(CH, 10, PeerMessage::Abort { id: HandoffId(9) }),
        []
    );
    let actions = t.restored(9);
    assert_eq!(refused(&actions).as_deref(), Some("aborted by the donor"));
    assert!(actions.contains(&AcceptorAction::Discard { key: key(9) }));
    assert_eq!(t.acceptor.pending(), 0);
}

#[test]
fn a_restored_socket_waits_for_its_commit_four_peer_timeouts_and_no_longer() {
    let mut t = Test::new();
    t.transfer(7, 1, false);
    t.restored(7);
    assert_eq!(t.acceptor.poll_timeout(), Some(t.now + EXPIRY));
    assert_eq!(t.timeout(EXPIRY - Duration::from_millis(1)), []);
    let actions = t.timeout(EXPIRY);
    assert!(actions.contains(&AcceptorAction::Discard { key: key(7) }));
    assert!(returns_flow(&actions, 1));
    // A commit after that is refused: the donor rolls back.
    let actions = t.message(ChannelId(2), 10, PeerMessage::Commit { id: HandoffId(7) });
    assert_eq!(
        actions,
        [AcceptorAction::Send {
            channel: ChannelId(2),
            message: PeerMessage::Refused {
                id: HandoffId(7),
                reason: "no restored socket waits for this commit (expired)".into()
            }
        }]
    );
}

#[test]
fn a_prepared_flow_whose_transfer_never_came_goes_back_unless_the_connection_came_here() {
    let prepare = |id| PeerMessage::Prepare {
        id: HandoffId(id),
        conn: conn(1),
        freeze: true,
    };
    let mut t = Test::new();
    let actions = t.message(CH, 10, prepare(7));
    assert_eq!(
        actions,
        [
            AcceptorAction::Freeze {
                key: key(7),
                conn: conn(1)
            },
            AcceptorAction::PrimeNeighbour { conn: conn(1) }
        ]
    );
    // Not arriving yet: only announced.
    assert!(!t.acceptor.arriving().contains(&conn(1)));
    assert_eq!(
        t.timeout(EXPIRY),
        [AcceptorAction::ReturnFlowIfFrozen {
            conn: conn(1),
            donor: node1()
        }]
    );
    // Served here since (another handoff brought it): left alone.
    t.message(CH, 10, prepare(8));
    t.member.serves.set(Some(conn(1)));
    assert_eq!(t.timeout(EXPIRY), []);
    assert_eq!(t.acceptor.pending(), 0);
    // And a Prepare{freeze} for a connection served here is ignored.
    assert_eq!(t.message(CH, 10, prepare(9)), []);
}

#[test]
fn a_new_transfer_replaces_earlier_announcements_and_abandoned_sockets_of_its_connection() {
    let mut t = Test::new();
    t.message(
        CH,
        10,
        PeerMessage::Prepare {
            id: HandoffId(6),
            conn: conn(1),
            freeze: true,
        },
    );
    t.transfer(7, 1, false);
    t.restored(7);
    // Abandoned by the donor (its Abort lost); a new attempt of the same connection.
    let actions = t.transfer(8, 1, false);
    assert!(actions.contains(&AcceptorAction::Discard { key: key(7) }));
    // The announcement of attempt 6 is gone: its expiry gives nothing back.
    t.restored(8);
    t.message(CH, 10, PeerMessage::Commit { id: HandoffId(8) });
    assert_eq!(t.timeout(EXPIRY), []);
}

#[test]
fn a_restarted_donor_recovers_a_parked_socket_under_its_new_number() {
    let mut t = Test::new();
    t.transfer(7, 1, false);
    t.restored(7);
    // node1 restarted; it asks on its new channel.
    t.acceptor.hello(&node1(), RunId(20)).unwrap();
    let new = ChannelId(2);
    let actions = t.message(
        new,
        20,
        PeerMessage::Recover {
            id: HandoffId(99),
            conn: conn(1),
        },
    );
    assert_eq!(actions, [AcceptorAction::Activate { key: key(7) }]);
    let actions = t.input(AcceptorInput::Activated {
        key: key(7),
        result: Ok(3),
    });
    assert!(matches!(
        &actions[0],
        AcceptorAction::Send {
            channel,
            message: PeerMessage::Activated { id: HandoffId(99), .. }
        } if *channel == new
    ));
    // Nothing parked for another connection: refused.
    let actions = t.message(
        new,
        20,
        PeerMessage::Recover {
            id: HandoffId(100),
            conn: conn(2),
        },
    );
    assert_eq!(
        refused(&actions).as_deref(),
        Some(format!("node2 holds no restored socket of {}", conn(2)).as_str())
    );
}

#[test]
fn a_donors_new_run_takes_back_the_flows_of_its_earlier_announcements_not_arriving() {
    let mut t = Test::new();
    for (id, port) in [(6, 1), (7, 2)] {
        t.message(
            CH,
            10,
            PeerMessage::Prepare {
                id: HandoffId(id),
                conn: conn(port),
                freeze: true,
            },
        );
    }
    // The transfer of conn 2 is being taken in (it came before the restart's hello).
    t.transfer(7, 2, true);
    t.acceptor.hello(&node1(), RunId(20)).unwrap();
    let actions = t.actions();
    assert!(returns_flow(&actions, 1));
    assert!(!returns_flow(&actions, 2));
    assert!(t.acceptor.arriving().contains(&conn(2)));
    // A Prepare still coming from the earlier run is ignored.
    let late = t.message(
        CH,
        10,
        PeerMessage::Prepare {
            id: HandoffId(8),
            conn: conn(3),
            freeze: true,
        },
    );
    assert_eq!(late, []);
}

#[test]
fn answers_go_back_on_the_channel_the_transfer_came_on() {
    let mut t = Test::new();
    let transfer = PeerMessage::Transfer {
        id: HandoffId(7),
        conn: conn(1),
        tcp_state: vec![],
        app_state: vec![],
        home_token: None,
        bu_sequence: None,
        one_phase: false,
    };
    t.message(ChannelId(5), 10, transfer);
    let actions = t.restored(7);
    assert_eq!(
        actions,
        [AcceptorAction::Send {
            channel: ChannelId(5),
            message: PeerMessage::Ready { id: HandoffId(7) }
        }]
    );
}
