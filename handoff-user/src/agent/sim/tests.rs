//! The simulation's schedules: the randomized run, and schedules kept for what they found.

use super::*;

#[test]
fn ten_thousand_random_schedules_never_give_a_connection_two_endpoints() {
    let start = Instant::now();
    let mut tally = Tally::default();
    for bytes in schedules(1, 10_000, 64) {
        let outcome = run(&bytes, start);
        tally.add(&outcome);
    }
    eprintln!("{tally:?}");
    // Every kind of ending is reached: the schedules exercise the rules.
    assert!(tally.moved > 1000, "{tally:?}");
    assert!(tally.stayed > 1000, "{tally:?}");
    assert!(tally.lost > 0, "{tally:?}");
    assert!(tally.unknown_served > 0, "{tally:?}");
    assert!(tally.unknown_revived > 0, "{tally:?}");
    assert!(tally.unknown_reset > 0, "{tally:?}");
}

/// Found by the fuzzer: one-phase; the acceptor (draining) refuses the handoff and gives
/// the flow back, and its agent is killed before the refusal reaches the donor. Restarted,
/// its redirect check removes the entry no member claims, and the client is reset
/// (the donor's probe of the client is answered before that: the copy is revived first).
/// Left down, each member's entry points at the other: the client's answer to the probe
/// comes back to the donor, which revives its copy.
#[test]
fn a_refusal_lost_after_the_flow_was_given_back_revives_the_copy() {
    let restarted = [
        255, 255, 255, 255, 255, 0, 255, 255, 255, 248, 239, 80, 80, 238, 255,
    ];
    let left_down = [
        255, 255, 255, 255, 0, 255, 255, 255, 248, 239, 80, 80, 238, 255,
    ];
    for schedule in [&restarted[..], &left_down] {
        let outcome = run(schedule, Instant::now());
        assert_eq!(outcome.fate, Some(Fate::Unknown));
        assert!(outcome.crashed);
        assert!(outcome.live_at_donor, "{outcome:?}");
        assert_eq!(outcome.client, Client::Served);
    }
}

#[test]
fn a_schedule_of_nothing_moves_the_connection() {
    let outcome = run(&[], Instant::now());
    assert_eq!(outcome.fate, None);
}
