//! The restart's recovery and the redirect check's rule, each as a test on a virtual clock.

use std::time::{Duration, Instant};

use super::*;

const TIMEOUT: Duration = Duration::from_millis(2000);

fn conn(port: u16) -> ConnId {
    ConnId {
        client: format!("[fd00:d51:1:1::1]:{port}").parse().unwrap(),
        local: "[fd00:d51:ff00::1]:8080".parse().unwrap(),
    }
}

fn node(name: &str) -> NodeName {
    NodeName::from(name)
}

fn actions(recovery: &mut Recovery) -> Vec<RecoveryAction> {
    std::iter::from_fn(|| recovery.poll_action()).collect()
}

fn ask(peer: &str, port: u16) -> RecoveryAction {
    RecoveryAction::Ask {
        peer: node(peer),
        conn: conn(port),
    }
}

/// A recovery of `conn(1)` on a member whose peers are node2 and node3.
fn recovery(now: Instant) -> Recovery {
    let mut recovery = Recovery::new(vec![conn(1)], vec![node("node2"), node("node3")], TIMEOUT);
    recovery.start(now);
    recovery
}

#[test]
fn the_member_that_activates_the_connection_gets_its_flow_and_no_one_else_is_asked() {
    let t0 = Instant::now();
    let mut recovery = recovery(t0);
    assert_eq!(actions(&mut recovery), [ask("node2", 1)]);
    recovery.answered(&node("node2"), conn(1), RecoverAnswer::Refused, t0);
    assert_eq!(actions(&mut recovery), [ask("node3", 1)]);
    recovery.answered(&node("node3"), conn(1), RecoverAnswer::Activated, t0);
    assert_eq!(
        actions(&mut recovery),
        [RecoveryAction::Redirect {
            conn: conn(1),
            peer: node("node3")
        }]
    );
    assert!(recovery.is_done());
}

#[test]
fn an_entry_every_member_refuses_is_removed_and_the_applications_copy_may_come_back() {
    let t0 = Instant::now();
    let mut recovery = recovery(t0);
    actions(&mut recovery);
    recovery.answered(&node("node2"), conn(1), RecoverAnswer::Refused, t0);
    // node3 cannot be asked (no channel): a socket it restored never goes live.
    recovery.not_asked(&node("node3"), conn(1), t0);
    assert_eq!(
        actions(&mut recovery)[1..],
        [RecoveryAction::Remove {
            conn: conn(1),
            unclaimed: true
        }]
    );
    assert!(recovery.is_done());
}

#[test]
fn a_member_that_does_not_answer_may_activate_it_yet_so_the_connection_is_given_up() {
    let t0 = Instant::now();
    let mut recovery = recovery(t0);
    actions(&mut recovery);
    assert_eq!(recovery.poll_timeout(), Some(t0 + TIMEOUT));
    recovery.handle_timeout(t0 + TIMEOUT);
    assert_eq!(actions(&mut recovery), [ask("node3", 1)]);
    recovery.answered(
        &node("node3"),
        conn(1),
        RecoverAnswer::Refused,
        t0 + TIMEOUT,
    );
    assert_eq!(
        actions(&mut recovery),
        [RecoveryAction::Remove {
            conn: conn(1),
            unclaimed: false
        }]
    );
}

#[test]
fn an_answer_that_says_nothing_counts_as_no_answer() {
    let t0 = Instant::now();
    let mut recovery = recovery(t0);
    actions(&mut recovery);
    recovery.answered(&node("node2"), conn(1), RecoverAnswer::Other, t0);
    recovery.answered(&node("node3"), conn(1), RecoverAnswer::Refused, t0);
    assert_eq!(
        actions(&mut recovery)[1..],
        [RecoveryAction::Remove {
            conn: conn(1),
            unclaimed: false
        }]
    );
}

#[test]
fn answers_from_a_member_not_asked_now_are_ignored() {
    let t0 = Instant::now();
    let mut recovery = recovery(t0);
    actions(&mut recovery);
    // node3's turn has not come; a late answer of node2 after it was passed over changes
    // nothing either.
    recovery.answered(&node("node3"), conn(1), RecoverAnswer::Activated, t0);
    assert!(actions(&mut recovery).is_empty());
    recovery.handle_timeout(t0 + TIMEOUT);
    actions(&mut recovery);
    recovery.answered(
        &node("node2"),
        conn(1),
        RecoverAnswer::Activated,
        t0 + TIMEOUT,
    );
    assert!(actions(&mut recovery).is_empty());
    assert!(!recovery.is_done());
}

#[test]
fn connections_are_recovered_side_by_side() {
    let t0 = Instant::now();
    let mut recovery = Recovery::new(
        vec![conn(1), conn(2)],
        vec![node("node2"), node("node3")],
        TIMEOUT,
    );
    recovery.start(t0);
    assert_eq!(actions(&mut recovery), [ask("node2", 1), ask("node2", 2)]);
    recovery.answered(&node("node2"), conn(2), RecoverAnswer::Activated, t0);
    recovery.handle_timeout(t0 + TIMEOUT);
    assert_eq!(
        actions(&mut recovery),
        [
            RecoveryAction::Redirect {
                conn: conn(2),
                peer: node("node2")
            },
            ask("node3", 1)
        ]
    );
}

#[test]
fn without_peers_every_entry_is_unclaimed_at_once() {
    let mut recovery = Recovery::new(vec![conn(1)], Vec::new(), TIMEOUT);
    recovery.start(Instant::now());
    assert_eq!(
        actions(&mut recovery),
        [RecoveryAction::Remove {
            conn: conn(1),
            unclaimed: true
        }]
    );
}

// ---- the redirect check ---------------------------------------------------------------------

fn claims(serving: &[u8], arriving: &[u8], taken: bool) -> Claims<u8> {
    Claims {
        serving: serving.to_vec(),
        arriving: arriving.to_vec(),
        taken,
    }
}

fn round(round: usize, at_start: bool, everyone: bool) -> Round {
    Round {
        round,
        rounds: if at_start { 5 } else { 2 },
        at_start,
        everyone,
    }
}

#[test]
fn an_entry_naming_the_one_owner_is_kept_and_one_naming_another_is_repointed() {
    let at = round(0, false, true);
    assert_eq!(
        redirect_verdict(&2, &claims(&[2], &[], false), at),
        Verdict::Keep
    );
    assert_eq!(
        redirect_verdict(&2, &claims(&[3], &[], false), at),
        Verdict::Repoint(3)
    );
    // On its way to a member counts as owned by it (while it runs).
    assert_eq!(
        redirect_verdict(&2, &claims(&[], &[3], false), at),
        Verdict::Repoint(3)
    );
}

#[test]
fn an_entry_no_one_claims_is_removed_only_in_a_second_round_where_everyone_answered() {
    let none = claims(&[], &[], false);
    assert_eq!(
        redirect_verdict(&2, &none, round(0, false, true)),
        Verdict::Again
    );
    assert_eq!(
        redirect_verdict(&2, &none, round(1, false, true)),
        Verdict::Remove { unclaimed: false }
    );
    assert_eq!(
        redirect_verdict(&2, &none, round(1, false, false)),
        Verdict::Unresolved
    );
}

#[test]
fn at_start_an_unclaimed_entry_gives_the_connection_back_unless_a_member_took_it() {
    assert_eq!(
        redirect_verdict(&2, &claims(&[], &[], false), round(1, true, true)),
        Verdict::Remove { unclaimed: true }
    );
    assert_eq!(
        redirect_verdict(&2, &claims(&[], &[], true), round(1, true, true)),
        Verdict::Remove { unclaimed: false }
    );
}

#[test]
fn at_start_a_connection_only_on_its_way_is_asked_about_again_until_the_last_round() {
    let arriving = claims(&[], &[2], false);
    assert_eq!(
        redirect_verdict(&2, &arriving, round(0, true, true)),
        Verdict::Again
    );
    assert_eq!(
        redirect_verdict(&2, &arriving, round(3, true, true)),
        Verdict::Again
    );
    assert_eq!(
        redirect_verdict(&2, &arriving, round(4, true, true)),
        Verdict::Keep
    );
    // Not while a peer is silent: nothing could be removed anyway.
    assert_eq!(
        redirect_verdict(&2, &arriving, round(0, true, false)),
        Verdict::Keep
    );
}

#[test]
fn two_claimants_leave_the_entry_alone() {
    assert_eq!(
        redirect_verdict(&2, &claims(&[2], &[3], false), round(1, false, true)),
        Verdict::Unresolved
    );
}
