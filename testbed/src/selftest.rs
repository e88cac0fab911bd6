//! The emulator's self-test: measure a path and compare with what its links promise. The same
//! check run over a direct (unemulated) link must fail, which the tests prove.

use std::{fmt, net::Ipv6Addr, time::Duration};

use serde::Serialize;

use crate::{
    Netns,
    error::Result,
    measure::{self, UdpReport},
};

/// Delay accuracy promised from 1 to 100 ms (one way), and for the RTT of a ping.
pub const DELAY_TOLERANCE_MS: f64 = 0.2;
/// Rate accuracy promised from 1 to 100 Mbit/s (relative).
pub const RATE_TOLERANCE: f64 = 0.05;
/// Loss accuracy promised over 10,000 packets (absolute, in percentage points).
pub const LOSS_TOLERANCE_PP: f64 = 1.0;
/// Packets of the loss measurement.
pub const LOSS_PACKETS: u64 = 10_000;

/// IPv6 + TCP header with timestamps: what a full-size TCP segment carries besides payload.
const TCP_OVERHEAD: f64 = 40.0 + 32.0;
/// IP packet of a 1500-byte MTU.
const MTU: f64 = 1500.0;
/// IP bytes of a default ping (56 data bytes + ICMPv6 8 + IPv6 40).
const PING_IP_BYTES: f64 = 104.0;
/// UDP payload of the delay probe, and its IP size.
const PROBE_PAYLOAD: usize = 64;
const PROBE_IP_BYTES: f64 = 64.0 + 8.0 + 40.0;

/// What a path from `a` to `b` is set up to do (one emulated link, or the sum along a path).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct PathExpectation {
    /// One-way delay a→b in ms.
    pub a_to_b_ms: f64,
    /// One-way delay b→a in ms.
    pub b_to_a_ms: f64,
    /// Bottleneck rate a→b in Mbit/s (IP layer), if limited.
    pub rate_mbit: Option<f64>,
    /// Loss a→b in percent (the model's mean).
    pub loss_percent: f64,
}

/// Which measurements to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Measurements {
    /// ping RTT and UDP one-way delays both ways.
    pub delay: bool,
    /// iperf3 throughput a→b (only when a rate is expected).
    pub rate: bool,
    /// UDP loss over [`LOSS_PACKETS`] datagrams.
    pub loss: bool,
}

impl Measurements {
    /// Everything.
    pub const ALL: Measurements = Measurements {
        delay: true,
        rate: true,
        loss: true,
    };
}

/// One comparison of a measured figure with its setting.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Check {
    /// What was measured.
    pub what: String,
    /// Expected value.
    pub expected: f64,
    /// Measured value.
    pub measured: f64,
    /// Allowed absolute deviation.
    pub tolerance: f64,
    /// Unit of the three numbers.
    pub unit: &'static str,
    /// Whether |measured − expected| ≤ tolerance.
    pub pass: bool,
    /// Supporting figures (e.g. min/max of a ping run).
    pub note: String,
}

impl Check {
    fn new(
        what: String,
        expected: f64,
        measured: f64,
        tolerance: f64,
        unit: &'static str,
    ) -> Check {
        Check {
            pass: (measured - expected).abs() <= tolerance,
            what,
            expected,
            measured,
            tolerance,
            unit,
            note: String::new(),
        }
    }

    fn with_note(mut self, note: String) -> Check {
        self.note = note;
        self
    }
}

/// All checks of one self-test run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Report {
    /// The checks, in the order run.
    pub checks: Vec<Check>,
}

impl Report {
    /// True when there is at least one check and all pass.
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.pass)
    }

    /// The check whose name starts with `prefix`.
    pub fn check(&self, prefix: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.what.starts_with(prefix))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<28} {:>12} {:>12} {:>10}  result",
            "check", "expected", "measured", "±"
        )?;
        for c in &self.checks {
            writeln!(
                f,
                "{:<28} {:>12.3} {:>12.3} {:>10.3}  {} {}  {}",
                c.what,
                c.expected,
                c.measured,
                c.tolerance,
                c.unit,
                if c.pass { "ok" } else { "FAIL" },
                c.note
            )?;
        }
        Ok(())
    }
}

/// Serialization time in ms of `bytes` at `rate_mbit` (0 when unlimited).
fn serialization_ms(bytes: f64, rate_mbit: Option<f64>) -> f64 {
    rate_mbit.map_or(0.0, |rate| bytes * 8.0 / (rate * 1e3))
}

/// Measures the path from `a` to `b_addr` (an address of `b`) and compares with `expect`.
/// The expected delay of a small packet includes its serialization at the bottleneck rate
/// (assumed on both directions when set).
pub fn check_path(
    a: &Netns,
    b: &Netns,
    b_addr: Ipv6Addr,
    expect: &PathExpectation,
    which: Measurements,
) -> Result<Report> {
    let mut report = Report::default();
    if which.delay {
        let count = if expect.a_to_b_ms + expect.b_to_a_ms > 100.0 {
            30
        } else {
            50
        };
        let expected = expect.a_to_b_ms
            + expect.b_to_a_ms
            + 2.0 * serialization_ms(PING_IP_BYTES, expect.rate_mbit);
        let mut rtt = measure::ping(a, b_addr, count, Duration::from_millis(10))?;
        if (rtt.avg_ms - expected).abs() > DELAY_TOLERANCE_MS {
            // The machine is shared: one stall of a few ms (seen under heavy load, from
            // outside the emulator) moves a 50-sample mean by 0.1 ms. Measure again and keep
            // the quieter run (smaller mean deviation); a wrong delay fails both runs.
            let again = measure::ping(a, b_addr, count, Duration::from_millis(10))?;
            tracing::info!(first = ?rtt, second = ?again, "ping RTT off; measured again");
            if again.mdev_ms < rtt.mdev_ms {
                rtt = again;
            }
        }
        report.checks.push(
            Check::new(
                "ping RTT (avg)".into(),
                expected,
                rtt.avg_ms,
                DELAY_TOLERANCE_MS,
                "ms",
            )
            .with_note(format!(
                "{}/{} replies, min {:.3} max {:.3} mdev {:.3}",
                rtt.received, rtt.transmitted, rtt.min_ms, rtt.max_ms, rtt.mdev_ms
            )),
        );
        let a_addr = source_towards(a, b_addr)?;
        for (what, from, to, dst, delay) in [
            ("one-way a→b (median)", a, b, b_addr, expect.a_to_b_ms),
            ("one-way b→a (median)", b, a, a_addr, expect.b_to_a_ms),
        ] {
            let probe =
                measure::udp_probe(from, to, dst, 200, Duration::from_millis(2), PROBE_PAYLOAD)?;
            let expected = delay + serialization_ms(PROBE_IP_BYTES, expect.rate_mbit);
            let max = probe.one_way_ms.iter().copied().fold(f64::NAN, f64::max);
            report.checks.push(
                Check::new(
                    what.into(),
                    expected,
                    probe.median_ms().unwrap_or(f64::INFINITY),
                    DELAY_TOLERANCE_MS,
                    "ms",
                )
                .with_note(format!(
                    "{}/{} received, max {max:.3}",
                    probe.received, probe.sent
                )),
            );
        }
    }
    if which.rate
        && let Some(rate) = expect.rate_mbit
    {
        let measured = measure::iperf3(b, a, b_addr, 3, 1)? / 1e6;
        let goodput = rate * (MTU - TCP_OVERHEAD) / MTU;
        report.checks.push(Check::new(
            "iperf3 goodput a→b".into(),
            goodput,
            measured,
            goodput * RATE_TOLERANCE,
            "Mbit/s",
        ));
    }
    if which.loss {
        let probe = loss_probe(a, b, b_addr, expect.rate_mbit)?;
        report.checks.push(Check::new(
            format!("loss a→b ({} packets)", probe.sent),
            expect.loss_percent,
            probe.loss() * 100.0,
            LOSS_TOLERANCE_PP,
            "%",
        ));
    }
    Ok(report)
}

/// Sends [`LOSS_PACKETS`] small datagrams at half the rate at most, so that only the loss
/// model drops them.
fn loss_probe(a: &Netns, b: &Netns, b_addr: Ipv6Addr, rate_mbit: Option<f64>) -> Result<UdpReport> {
    let per_packet_ms = 2.0 * serialization_ms(PROBE_IP_BYTES, rate_mbit);
    let interval = Duration::from_secs_f64((per_packet_ms / 1e3).max(0.000_2));
    measure::udp_probe(a, b, b_addr, LOSS_PACKETS, interval, PROBE_PAYLOAD)
}

/// The address `a` uses as source towards `dst` (the reply path's destination).
fn source_towards(a: &Netns, dst: Ipv6Addr) -> Result<Ipv6Addr> {
    use crate::error::IoContext as _;
    a.run(|| {
        let socket = std::net::UdpSocket::bind("[::]:0")?;
        socket.connect((dst, 9))?;
        match socket.local_addr()?.ip() {
            std::net::IpAddr::V6(v6) => Ok(v6),
            std::net::IpAddr::V4(_) => Err(std::io::Error::other("IPv4 source for an IPv6 peer")),
        }
    })
    .context_with(|| format!("finding the source address towards {dst} in {}", a.name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_fails_outside_its_tolerance() {
        assert!(Check::new("x".into(), 20.0, 20.19, 0.2, "ms").pass);
        assert!(!Check::new("x".into(), 20.0, 20.21, 0.2, "ms").pass);
        assert!(!Check::new("x".into(), 20.0, f64::INFINITY, 0.2, "ms").pass);
        assert!(!Check::new("x".into(), 20.0, f64::NAN, 0.2, "ms").pass);
        assert!(
            !Report::default().passed(),
            "an empty report proves nothing"
        );
    }
}
