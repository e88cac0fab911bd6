//! The rules of the copies held in doubt, each as a test on a virtual clock.

use std::time::{Duration, Instant};

use super::*;

const S: Duration = Duration::from_secs(1);
const CH: ChannelId = ChannelId(7);

fn conn(port: u16) -> ConnId {
    ConnId {
        client: format!("[fd00:d51:1:1::1]:{port}").parse().unwrap(),
        local: "[fd00:d51:ff00::1]:8080".parse().unwrap(),
    }
}

fn node(name: &str) -> NodeName {
    NodeName::from(name)
}

fn actions(doubt: &mut InDoubt) -> Vec<DoubtAction> {
    std::iter::from_fn(|| doubt.poll_action()).collect()
}

/// A table with a 2 s lease: copies held 6 s, probed every second.
fn table() -> InDoubt {
    InDoubt::new(HoldParams::for_lease(2 * S))
}

#[test]
fn a_copy_is_probed_every_second_then_released_once_the_lease_and_four_probes_have_passed() {
    let t0 = Instant::now();
    let mut doubt = table();
    doubt.hold(conn(1), node("node3"), HandoffId(5), t0);
    assert!(doubt.holds(&conn(1)));
    assert!(actions(&mut doubt).is_empty(), "nothing at once");
    let mut probes = 0;
    let mut now = t0;
    loop {
        let due = doubt.poll_timeout().expect("a held copy has a deadline");
        assert!(due > now, "the deadline moves on");
        now = due;
        doubt.handle_timeout(now);
        match actions(&mut doubt).as_slice() {
            [DoubtAction::Probe { conn: c }] if *c == conn(1) => probes += 1,
            [DoubtAction::Release { conn: c, to }] => {
                assert_eq!((*c, to), (conn(1), &node("node3")));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        now,
        t0 + 6 * S,
        "released after the lease and four probe intervals"
    );
    assert_eq!(probes, 5, "probed at 1, 2, 3, 4 and 5 s");
    assert!(!doubt.holds(&conn(1)));
    assert_eq!(doubt.poll_timeout(), None);
}

#[test]
fn a_timeout_before_anything_is_due_does_nothing() {
    let t0 = Instant::now();
    let mut doubt = table();
    doubt.hold(conn(1), node("node3"), HandoffId(5), t0);
    doubt.handle_timeout(t0 + S / 2);
    assert!(actions(&mut doubt).is_empty());
    assert!(doubt.holds(&conn(1)));
}

#[test]
fn the_acceptors_next_run_asking_to_recover_revives_the_copy_and_is_answered_activated() {
    let t0 = Instant::now();
    let mut doubt = table();
    doubt.hold(conn(1), node("node3"), HandoffId(5), t0);
    assert!(doubt.recover(&node("node3"), conn(1), CH, HandoffId(9)));
    assert_eq!(
        actions(&mut doubt),
        [DoubtAction::Revive {
            conn: conn(1),
            answer: Some((CH, HandoffId(9)))
        }]
    );
    assert!(!doubt.holds(&conn(1)), "revived: no longer in doubt");
    doubt.revived(conn(1), Some((CH, HandoffId(9))), Ok(42));
    assert_eq!(
        actions(&mut doubt),
        [DoubtAction::Send {
            channel: CH,
            message: PeerMessage::Activated {
                id: HandoffId(9),
                received_ns: 42,
                restored_ns: 42,
                activated_ns: 42
            }
        }]
    );
    // Not probed or released after that.
    doubt.handle_timeout(t0 + 10 * S);
    assert!(actions(&mut doubt).is_empty());
}

#[test]
fn a_copy_that_cannot_be_revived_is_refused_so_that_the_acceptor_lets_the_client_be_reset() {
    let mut doubt = table();
    doubt.hold(conn(1), node("node3"), HandoffId(5), Instant::now());
    assert!(doubt.recover(&node("node3"), conn(1), CH, HandoffId(9)));
    actions(&mut doubt);
    doubt.revived(
        conn(1),
        Some((CH, HandoffId(9))),
        Err("still in repair mode".into()),
    );
    match actions(&mut doubt).as_slice() {
        [
            DoubtAction::Send {
                channel: CH,
                message: PeerMessage::Refused { id, reason },
            },
        ] => {
            assert_eq!(*id, HandoffId(9));
            assert!(reason.contains("still in repair mode"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn only_the_acceptor_of_the_handoff_can_have_the_copy_revived() {
    let mut doubt = table();
    doubt.hold(conn(1), node("node3"), HandoffId(5), Instant::now());
    assert!(!doubt.recover(&node("node2"), conn(1), CH, HandoffId(9)));
    assert!(!doubt.recover(&node("node3"), conn(2), CH, HandoffId(9)));
    assert!(actions(&mut doubt).is_empty());
    assert!(doubt.holds(&conn(1)));
}

#[test]
fn a_copy_released_cannot_be_revived_any_more() {
    let t0 = Instant::now();
    let mut doubt = table();
    doubt.hold(conn(1), node("node3"), HandoffId(5), t0);
    doubt.handle_timeout(t0 + 6 * S);
    assert!(matches!(
        actions(&mut doubt).as_slice(),
        [DoubtAction::Release { .. }]
    ));
    assert!(!doubt.recover(&node("node3"), conn(1), CH, HandoffId(9)));
    assert!(actions(&mut doubt).is_empty());
}

#[test]
fn copies_are_timed_each_on_its_own() {
    let t0 = Instant::now();
    let mut doubt = table();
    doubt.hold(conn(1), node("node3"), HandoffId(5), t0);
    doubt.hold(conn(2), node("node2"), HandoffId(6), t0 + S / 2);
    assert_eq!(doubt.len(), 2);
    doubt.handle_timeout(t0 + S);
    assert_eq!(actions(&mut doubt), [DoubtAction::Probe { conn: conn(1) }]);
    assert_eq!(doubt.poll_timeout(), Some(t0 + S + S / 2));
    doubt.handle_timeout(t0 + 6 * S);
    // conn(1)'s hold ends; conn(2)'s probe is due (its hold ends half a second later).
    let mut got = actions(&mut doubt);
    got.sort_by_key(|a| format!("{a:?}"));
    assert_eq!(
        got,
        [
            DoubtAction::Probe { conn: conn(2) },
            DoubtAction::Release {
                conn: conn(1),
                to: node("node3")
            },
        ]
    );
    assert_eq!(doubt.len(), 1);
}

fn activated(id: u64) -> PeerMessage {
    PeerMessage::Activated {
        id: HandoffId(id),
        received_ns: 1,
        restored_ns: 2,
        activated_ns: 3,
    }
}

fn refused(id: u64) -> PeerMessage {
    PeerMessage::Refused {
        id: HandoffId(id),
        reason: "too late".into(),
    }
}

#[test]
fn a_late_activated_closes_the_copy_the_acceptor_serves_the_connection() {
    let mut doubt = table();
    doubt.hold(conn(1), node("node3"), HandoffId(5), Instant::now());
    assert!(doubt.answered(&node("node3"), HandoffId(5), &activated(5)));
    assert_eq!(
        actions(&mut doubt),
        [DoubtAction::Release {
            conn: conn(1),
            to: node("node3")
        }]
    );
    assert!(doubt.is_empty());
}

#[test]
fn a_late_refusal_revives_the_copy_without_an_answer() {
    let mut doubt = table();
    doubt.hold(conn(1), node("node3"), HandoffId(5), Instant::now());
    assert!(doubt.answered(&node("node3"), HandoffId(5), &refused(5)));
    assert_eq!(
        actions(&mut doubt),
        [DoubtAction::Revive {
            conn: conn(1),
            answer: None
        }]
    );
    doubt.revived(conn(1), None, Ok(7));
    assert!(
        actions(&mut doubt).is_empty(),
        "nobody asked: nothing to answer"
    );
}

#[test]
fn late_answers_of_other_handoffs_or_members_or_that_say_nothing_are_not_the_tables() {
    let mut doubt = table();
    doubt.hold(conn(1), node("node3"), HandoffId(5), Instant::now());
    assert!(!doubt.answered(&node("node3"), HandoffId(4), &refused(4)));
    assert!(!doubt.answered(&node("node2"), HandoffId(5), &refused(5)));
    let ready = PeerMessage::Ready { id: HandoffId(5) };
    assert!(!doubt.answered(&node("node3"), HandoffId(5), &ready));
    assert!(actions(&mut doubt).is_empty());
    assert!(doubt.holds(&conn(1)));
}

#[test]
fn packets_coming_back_from_the_acceptor_revive_the_copy() {
    let mut doubt = table();
    doubt.hold(conn(1), node("node3"), HandoffId(5), Instant::now());
    assert!(!doubt.bounced(conn(2)), "not held");
    assert!(doubt.bounced(conn(1)));
    assert_eq!(
        actions(&mut doubt),
        [DoubtAction::Revive {
            conn: conn(1),
            answer: None
        }]
    );
    assert!(doubt.is_empty());
}
