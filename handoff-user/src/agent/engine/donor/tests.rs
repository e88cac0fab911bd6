//! The donor's rules, each as a test on a virtual clock: every step succeeds unless a test
//! says otherwise, and the acceptor's answers are given by the test.

use std::time::{Duration, Instant};

use super::*;

const TIMEOUT: Duration = Duration::from_millis(2000);

fn conn() -> ConnId {
    ConnId {
        client: "[fd00:d51:1:1::1]:40000".parse().unwrap(),
        local: "[fd00:d51:ff00::1]:8080".parse().unwrap(),
    }
}

fn params(commit: CommitMode) -> DonorParams {
    DonorParams {
        id: HandoffId(7),
        conn: conn(),
        node: NodeName::from("node1"),
        to: NodeName::from("node2"),
        commit,
        peer_timeout: TIMEOUT,
        fetch_home_token: false,
        yielded: false,
    }
}

fn ready() -> DonorInput {
    DonorInput::Peer(PeerMessage::Ready { id: HandoffId(7) })
}

fn activated() -> DonorInput {
    DonorInput::Peer(PeerMessage::Activated {
        id: HandoffId(7),
        received_ns: 1,
        restored_ns: 2,
        activated_ns: 3,
    })
}

fn refused() -> DonorInput {
    DonorInput::Peer(PeerMessage::Refused {
        id: HandoffId(7),
        reason: "node2 is draining".into(),
    })
}

/// A shell whose steps all succeed, except those `fail` answers for.
struct Shell {
    now: Instant,
    done: Vec<DonorAction>,
}

impl Shell {
    fn new() -> Shell {
        Shell {
            now: Instant::now(),
            done: Vec::new(),
        }
    }

    /// Performs every pending step; `fail` may answer one differently.
    fn run(&mut self, donor: &mut Donor, mut fail: impl FnMut(&DonorAction) -> Option<DonorInput>) {
        while let Some(action) = donor.poll_action() {
            let answer = fail(&action).or(match action {
                DonorAction::FetchHomeToken => Some(DonorInput::HomeToken),
                DonorAction::AskToYield => Some(DonorInput::Yielded),
                DonorAction::WaitSendQueue => Some(DonorInput::SendQueueWaited),
                DonorAction::Capture => Some(DonorInput::Captured),
                DonorAction::Redirect => Some(DonorInput::Redirected(Ok(()))),
                DonorAction::SendTransfer | DonorAction::SendCommit => {
                    Some(DonorInput::Sent(Ok(())))
                }
                DonorAction::RollBack => Some(DonorInput::RolledBack(Rollback::Done)),
                _ => None,
            });
            self.done.push(action);
            if let Some(answer) = answer {
                donor.handle(answer, self.now);
            }
        }
    }

    fn did(&self, action: &DonorAction) -> bool {
        self.done.contains(action)
    }
}

fn start(commit: CommitMode, shell: &mut Shell) -> Donor {
    let mut donor = Donor::new(params(commit));
    shell.run(&mut donor, |_| None);
    donor
}

fn fate(donor: &Donor) -> Fate {
    match donor.outcome() {
        Some(Err(e)) => e.fate,
        other => panic!("expected a failed handoff, got {other:?}"),
    }
}

#[test]
fn a_two_phase_handoff_commits_only_after_ready_and_the_redirect() {
    let mut shell = Shell::new();
    let mut donor = start(CommitMode::TwoPhase, &mut shell);
    use DonorAction::*;
    assert_eq!(
        shell.done,
        [
            SendPrepare { freeze: false },
            AskToYield,
            WaitSendQueue,
            Capture,
            SendTransfer
        ]
    );
    assert_eq!(donor.poll_timeout(), Some(shell.now + TIMEOUT));
    donor.handle(ready(), shell.now);
    shell.run(&mut donor, |_| None);
    assert_eq!(shell.done[5..], [Redirect, SendCommit]);
    donor.handle(activated(), shell.now);
    shell.run(&mut donor, |_| None);
    assert_eq!(shell.done[7..], [Release, TellHandedOff]);
    assert_eq!(
        donor.outcome(),
        Some(&Ok(Activation {
            received_ns: 1,
            restored_ns: 2,
            activated_ns: 3
        }))
    );
}

#[test]
fn a_one_phase_handoff_redirects_before_the_transfer_and_sends_no_commit() {
    let mut shell = Shell::new();
    let mut donor = start(CommitMode::OnePhase, &mut shell);
    use DonorAction::*;
    assert_eq!(
        shell.done,
        [
            SendPrepare { freeze: true },
            AskToYield,
            WaitSendQueue,
            Capture,
            Redirect,
            SendTransfer
        ]
    );
    donor.handle(ready(), shell.now);
    shell.run(&mut donor, |_| None);
    donor.handle(activated(), shell.now);
    shell.run(&mut donor, |_| None);
    assert!(!shell.did(&SendCommit) && !shell.did(&SendAbort));
    assert!(matches!(donor.outcome(), Some(Ok(_))));
}

#[test]
fn the_home_token_comes_first_and_a_moved_socket_is_not_asked_for() {
    let mut shell = Shell::new();
    let mut donor = Donor::new(DonorParams {
        fetch_home_token: true,
        yielded: true,
        ..params(CommitMode::TwoPhase)
    });
    shell.run(&mut donor, |_| None);
    use DonorAction::*;
    assert_eq!(
        shell.done,
        [
            SendPrepare { freeze: false },
            FetchHomeToken,
            WaitSendQueue,
            Capture,
            SendTransfer
        ]
    );
}

#[test]
fn an_application_that_does_not_yield_keeps_the_connection_untouched() {
    for commit in [CommitMode::TwoPhase, CommitMode::OnePhase] {
        let mut shell = Shell::new();
        let mut donor = Donor::new(params(commit));
        shell.run(&mut donor, |action| {
            (*action == DonorAction::AskToYield)
                .then(|| DonorInput::NotYielded("the application declined: busy".into()))
        });
        assert_eq!(fate(&donor), Fate::Here);
        assert!(!shell.did(&DonorAction::Capture));
        assert!(
            !shell.did(&DonorAction::GiveBack),
            "the application still has it"
        );
        // One-phase, the acceptor froze the flow at Prepare: it hears that nothing comes.
        assert_eq!(
            shell.did(&DonorAction::SendAbort),
            commit == CommitMode::OnePhase
        );
    }
}

#[test]
fn a_failed_capture_gives_the_socket_back_without_a_rollback() {
    let mut shell = Shell::new();
    let mut donor = Donor::new(params(CommitMode::TwoPhase));
    shell.run(&mut donor, |action| {
        (*action == DonorAction::Capture).then(|| DonorInput::CaptureFailed("EPERM".into()))
    });
    assert_eq!(fate(&donor), Fate::Here);
    assert!(shell.did(&DonorAction::GiveBack));
    assert!(!shell.did(&DonorAction::RollBack));
    assert!(!shell.did(&DonorAction::SendTransfer));
}

/// Where a fault is injected, for the matrix below.
#[derive(Clone, Copy, Debug)]
enum Fault {
    Unsendable,
    RedirectFails,
    TransferFails,
    RefusedBeforeReady,
    EndedBeforeReady,
    SilentBeforeReady,
    CommitFails,
    RefusedAfterCommit,
    EndedAfterCommit,
    SilentAfterCommit,
}

/// Runs a handoff with `fault`; returns the machine and the steps taken.
fn with_fault(commit: CommitMode, fault: Fault) -> (Donor, Shell) {
    let mut shell = Shell::new();
    let mut donor = Donor::new(params(commit));
    shell.run(&mut donor, |action| match (fault, action) {
        (Fault::Unsendable, DonorAction::Capture) => {
            Some(DonorInput::Unsendable("too large".into()))
        }
        (Fault::RedirectFails, DonorAction::Redirect) => {
            Some(DonorInput::Redirected(Err("ENOMEM".into())))
        }
        (Fault::TransferFails, DonorAction::SendTransfer) => {
            Some(DonorInput::Sent(Err("broken pipe".into())))
        }
        _ => None,
    });
    if donor.outcome().is_some() || matches!(donor.phase, Phase::RollBack(_)) {
        shell.run(&mut donor, |_| None);
        return (donor, shell);
    }
    let waiting = donor.poll_timeout().expect("waiting for Ready");
    match fault {
        Fault::RefusedBeforeReady => donor.handle(refused(), shell.now),
        Fault::EndedBeforeReady => donor.handle(DonorInput::ChannelEnded, shell.now),
        Fault::SilentBeforeReady => donor.handle_timeout(waiting),
        _ => donor.handle(ready(), shell.now),
    }
    shell.run(&mut donor, |action| match (fault, action) {
        (Fault::RedirectFails, DonorAction::Redirect) => {
            Some(DonorInput::Redirected(Err("ENOMEM".into())))
        }
        (Fault::CommitFails, DonorAction::SendCommit) => {
            Some(DonorInput::Sent(Err("broken pipe".into())))
        }
        _ => None,
    });
    if let Some(waiting) = donor.poll_timeout() {
        match fault {
            Fault::RefusedAfterCommit => donor.handle(refused(), shell.now),
            Fault::EndedAfterCommit => donor.handle(DonorInput::ChannelEnded, shell.now),
            Fault::SilentAfterCommit => {
                // Not a moment early.
                donor.handle_timeout(waiting - Duration::from_millis(1));
                assert!(donor.outcome().is_none());
                donor.handle_timeout(waiting)
            }
            _ => donor.handle(activated(), shell.now),
        }
    }
    shell.run(&mut donor, |_| None);
    (donor, shell)
}

#[test]
fn every_failure_before_the_commit_point_rolls_back_and_after_it_only_a_refusal_does() {
    use CommitMode::{OnePhase, TwoPhase};
    use Fate::{Here, Unknown};
    // (fault, two-phase fate, one-phase fate): one-phase's commit point is the transfer.
    let matrix = [
        (Fault::Unsendable, Here, Here),
        (Fault::RedirectFails, Here, Here),
        (Fault::TransferFails, Here, Here),
        (Fault::RefusedBeforeReady, Here, Here),
        (Fault::EndedBeforeReady, Here, Here),
        (Fault::SilentBeforeReady, Here, Unknown),
        (Fault::CommitFails, Here, Here),
        (Fault::RefusedAfterCommit, Here, Here),
        (Fault::EndedAfterCommit, Unknown, Unknown),
        (Fault::SilentAfterCommit, Unknown, Unknown),
    ];
    for (fault, two, one) in matrix {
        for (commit, expected) in [(TwoPhase, two), (OnePhase, one)] {
            if matches!(fault, Fault::CommitFails) && commit == OnePhase {
                continue; // one-phase sends no commit
            }
            let (donor, shell) = with_fault(commit, fault);
            let case = format!("{fault:?} {commit:?}: {:?}", donor.outcome());
            assert_eq!(fate(&donor), expected, "{case}");
            match expected {
                Here => {
                    assert!(shell.did(&DonorAction::RollBack), "{case}");
                    assert!(shell.did(&DonorAction::GiveBack), "{case}");
                    assert!(!shell.did(&DonorAction::Release), "{case}");
                    assert!(!shell.did(&DonorAction::TellHandedOff), "{case}");
                }
                _ => {
                    // Never two live endpoints: no rollback once the acceptor may serve it; and
                    // the copy is not closed either (the acceptor may have died with the only
                    // other one): it is held in doubt.
                    assert!(!shell.did(&DonorAction::RollBack), "{case}");
                    assert!(!shell.did(&DonorAction::GiveBack), "{case}");
                    assert!(!shell.did(&DonorAction::Release), "{case}");
                    assert!(!shell.did(&DonorAction::TellHandedOff), "{case}");
                    assert!(shell.did(&DonorAction::Hold), "{case}");
                }
            }
        }
    }
}

#[test]
fn the_acceptor_hears_abort_whenever_it_holds_something_the_donor_gave_up() {
    use CommitMode::{OnePhase, TwoPhase};
    // Two-phase: a restored socket waits there for a commit that will not come.
    for fault in [Fault::SilentBeforeReady, Fault::RedirectFails] {
        let (_, shell) = with_fault(TwoPhase, fault);
        assert!(shell.did(&DonorAction::SendAbort), "{fault:?}");
    }
    // One-phase: the flow frozen at Prepare, until the transfer has left.
    for fault in [
        Fault::Unsendable,
        Fault::RedirectFails,
        Fault::TransferFails,
    ] {
        let (_, shell) = with_fault(OnePhase, fault);
        assert!(shell.did(&DonorAction::SendAbort), "{fault:?}");
    }
    // A refusal or a clean end needs none: the acceptor has dropped what it had.
    for fault in [Fault::RefusedBeforeReady, Fault::EndedBeforeReady] {
        for commit in [TwoPhase, OnePhase] {
            let (_, shell) = with_fault(commit, fault);
            assert!(!shell.did(&DonorAction::SendAbort), "{fault:?} {commit:?}");
        }
    }
}

#[test]
fn a_failed_rollback_loses_the_connection_and_says_so() {
    for (rollback, expected) in [
        (Rollback::Failed("EBADF".into()), Fate::Lost),
        (Rollback::DoneDespite("SO_REUSEADDR".into()), Fate::Here),
    ] {
        let mut shell = Shell::new();
        let mut donor = Donor::new(params(CommitMode::TwoPhase));
        shell.run(&mut donor, |_| None);
        donor.handle(refused(), shell.now);
        shell.run(&mut donor, |action| {
            (*action == DonorAction::RollBack).then(|| DonorInput::RolledBack(rollback.clone()))
        });
        assert_eq!(fate(&donor), expected);
        let lost = expected == Fate::Lost;
        assert_eq!(shell.did(&DonorAction::TellHandedOff), lost);
        assert_eq!(shell.did(&DonorAction::GiveBack), !lost);
        let reason = &donor.outcome().unwrap().as_ref().unwrap_err().reason;
        assert!(
            reason.starts_with("node2 refused: node2 is draining; "),
            "{reason}"
        );
    }
}

#[test]
fn the_messages_say_what_failed_and_where_the_connection_is() {
    let reason = |commit, fault| {
        let (donor, _) = with_fault(commit, fault);
        donor
            .outcome()
            .unwrap()
            .as_ref()
            .unwrap_err()
            .reason
            .clone()
    };
    assert_eq!(
        reason(CommitMode::TwoPhase, Fault::SilentBeforeReady),
        "node2 did not answer within 2000 ms; rolled back, the connection stays on node1"
    );
    assert_eq!(
        reason(CommitMode::OnePhase, Fault::EndedBeforeReady),
        "the channel to node2 ended before it restored the connection; rolled back, the \
         connection stays on node1"
    );
    assert_eq!(
        reason(CommitMode::TwoPhase, Fault::SilentAfterCommit),
        "node2 did not confirm the activation (no answer within 2000 ms); the connection is \
         redirected to it and node1 holds its copy in doubt"
    );
}

#[test]
fn late_and_foreign_inputs_change_nothing() {
    let mut shell = Shell::new();
    let mut donor = start(CommitMode::TwoPhase, &mut shell);
    // Waiting for Ready: a step result nobody asked for, an early timeout.
    donor.handle(DonorInput::Captured, shell.now);
    donor.handle_timeout(shell.now);
    assert!(donor.poll_action().is_none());
    assert!(donor.outcome().is_none());
    donor.handle(ready(), shell.now);
    shell.run(&mut donor, |_| None);
    // Waiting for Activated: a Binding (it follows Activated) is not the answer.
    donor.handle(
        DonorInput::Peer(PeerMessage::Binding {
            id: HandoffId(7),
            result: Err("x".into()),
        }),
        shell.now,
    );
    assert!(donor.poll_action().is_none());
    assert!(donor.outcome().is_none());
    // Done: nothing moves it any more.
    donor.handle(activated(), shell.now);
    shell.run(&mut donor, |_| None);
    let done = shell.done.len();
    donor.handle(refused(), shell.now);
    donor.handle_timeout(shell.now + TIMEOUT * 10);
    shell.run(&mut donor, |_| None);
    assert_eq!(shell.done.len(), done);
    assert!(matches!(donor.outcome(), Some(Ok(_))));
}
