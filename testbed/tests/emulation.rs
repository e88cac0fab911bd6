//! Acceptance of the link emulator: measured delay, rate and loss match the settings within
//! the promised accuracy, and the same checks fail over a direct link (negative control).

mod common;

use common::{instance, is_root, measuring, two_hosts};
use testbed::{
    Testbed, WIRE_A,
    emulator::{Impairment, Loss},
    selftest::{self, Measurements, PathExpectation},
    topology::LinkSpec,
};

fn run(
    tag: &str,
    impairment: Impairment,
    expect: PathExpectation,
    which: Measurements,
) -> selftest::Report {
    let _lock = measuring();
    let testbed = Testbed::build(
        &instance(tag),
        &two_hosts(LinkSpec::emulated("a", "b", impairment)),
    )
    .unwrap();
    let report = selftest::check_path(
        testbed.host("a").unwrap(),
        testbed.host("b").unwrap(),
        testbed.address_on("b", "a").unwrap(),
        &expect,
        which,
    )
    .unwrap();
    let stats = testbed.emulator_stats();
    eprintln!("{tag}: {impairment:?}\n{report}emulator: {stats:?}");
    // With offloads off, no GSO/GRO super-packet ever reaches the wire.
    for [ab, ba] in stats.values() {
        assert_eq!((ab.oversize, ba.oversize), (0, 0), "{stats:?}");
        assert!(ab.sent > 0, "the emulator carried nothing: {stats:?}");
    }
    report
}

const DELAY: Measurements = Measurements {
    delay: true,
    rate: false,
    loss: false,
};

#[test]
fn privileged_delay_is_accurate_from_1_to_100_ms() {
    if !is_root() {
        return;
    }
    for delay_ms in [1.0, 20.0, 100.0] {
        let impairment = Impairment {
            delay_ms,
            ..Impairment::default()
        };
        let expect = PathExpectation {
            a_to_b_ms: delay_ms,
            b_to_a_ms: delay_ms,
            ..PathExpectation::default()
        };
        let report = run("dly", impairment, expect, DELAY);
        assert!(report.passed(), "delay {delay_ms} ms:\n{report}");
    }
}

#[test]
fn privileged_delay_is_set_per_direction() {
    if !is_root() {
        return;
    }
    let mut link = LinkSpec::emulated("a", "b", Impairment::default());
    link.a_to_b = Some(testbed::topology::ImpairmentPatch {
        delay_ms: Some(5.0),
        ..Default::default()
    });
    link.b_to_a = Some(testbed::topology::ImpairmentPatch {
        delay_ms: Some(15.0),
        ..Default::default()
    });
    let _lock = measuring();
    let testbed = Testbed::build(&instance("asym"), &two_hosts(link)).unwrap();
    let expect = PathExpectation {
        a_to_b_ms: 5.0,
        b_to_a_ms: 15.0,
        ..PathExpectation::default()
    };
    let report = selftest::check_path(
        testbed.host("a").unwrap(),
        testbed.host("b").unwrap(),
        testbed.address_on("b", "a").unwrap(),
        &expect,
        DELAY,
    )
    .unwrap();
    eprintln!("{report}");
    assert!(report.passed(), "{report}");
}

#[test]
fn privileged_rate_is_accurate_from_1_to_100_mbit() {
    if !is_root() {
        return;
    }
    for rate in [1.0, 10.0, 100.0] {
        let impairment = Impairment {
            delay_ms: 1.0,
            rate_mbit: Some(rate),
            ..Impairment::default()
        };
        let expect = PathExpectation {
            a_to_b_ms: 1.0,
            b_to_a_ms: 1.0,
            rate_mbit: Some(rate),
            ..PathExpectation::default()
        };
        let which = Measurements {
            delay: false,
            rate: true,
            loss: false,
        };
        let report = run("rate", impairment, expect, which);
        assert!(report.passed(), "rate {rate} Mbit/s:\n{report}");
    }
}

#[test]
fn privileged_loss_is_accurate_random_and_bursty() {
    if !is_root() {
        return;
    }
    let bursty = Loss::GilbertElliott {
        p_percent: 1.0,
        r_percent: 50.0,
        good_loss_percent: 0.0,
        bad_loss_percent: 100.0,
    };
    for loss in [Loss::Random { percent: 5.0 }, bursty] {
        let impairment = Impairment {
            loss: Some(loss),
            ..Impairment::default()
        };
        let expect = PathExpectation {
            loss_percent: loss.mean() * 100.0,
            ..PathExpectation::default()
        };
        let which = Measurements {
            delay: false,
            rate: false,
            loss: true,
        };
        let report = run("loss", impairment, expect, which);
        assert!(report.passed(), "{loss:?}:\n{report}");
    }
}

#[test]
fn privileged_selftest_fails_when_the_emulator_is_bypassed() {
    if !is_root() {
        return;
    }
    let _lock = measuring();
    // The same settings as a passing self-test, but the hosts are joined directly.
    let testbed =
        Testbed::build(&instance("bypass"), &two_hosts(LinkSpec::plain("a", "b"))).unwrap();
    let expect = PathExpectation {
        a_to_b_ms: 20.0,
        b_to_a_ms: 20.0,
        rate_mbit: Some(10.0),
        loss_percent: 2.0,
    };
    let report = selftest::check_path(
        testbed.host("a").unwrap(),
        testbed.host("b").unwrap(),
        testbed.address_on("b", "a").unwrap(),
        &expect,
        Measurements::ALL,
    )
    .unwrap();
    eprintln!("bypassed:\n{report}");
    assert!(!report.passed());
    // Every single check must notice, not just one of them.
    for check in &report.checks {
        assert!(
            !check.pass,
            "{} passed over a direct link:\n{report}",
            check.what
        );
    }
    assert_eq!(report.checks.len(), 5);
}

#[test]
fn privileged_emulated_links_have_offloads_off() {
    if !is_root() {
        return;
    }
    let _lock = measuring();
    let testbed = Testbed::build(
        &instance("offl"),
        &two_hosts(LinkSpec::emulated("a", "b", Impairment::default())),
    )
    .unwrap();
    let wire = testbed.wires().values().next().unwrap();
    for (netns, name) in [
        (testbed.host("a").unwrap(), "eth-b"),
        (testbed.host("b").unwrap(), "eth-a"),
        (wire, WIRE_A),
    ] {
        let offloads = netns.offloads(name).unwrap();
        assert!(
            !offloads.tx_checksum && !offloads.tso && !offloads.gso && !offloads.gro,
            "{name}: {offloads:?}"
        );
    }
    // A plain link keeps the veth defaults (the check above can fail) unless told otherwise.
    let plain = Testbed::build(&instance("offp"), &two_hosts(LinkSpec::plain("a", "b"))).unwrap();
    assert!(plain.host("a").unwrap().offloads("eth-b").unwrap().tso);
    let mut link = LinkSpec::plain("a", "b");
    link.offloads = Some(false);
    let off = Testbed::build(&instance("offq"), &two_hosts(link)).unwrap();
    let offloads = off.host("b").unwrap().offloads("eth-a").unwrap();
    assert!(!offloads.tso && !offloads.tx_checksum, "{offloads:?}");
}
