//! The named scenarios: a runnable demonstration of the machinery, and the seed's experiments
//! (Table 1 and Figure 2 of the Distributed Servers evaluation), defined and waiting for the
//! handoff to exist.
//!
//! Switching the seed scenarios on, once `handoffd` and `handoff move` exist: check the
//! command lines in [`handoff_steps`] against the real CLI, set `readiness` to
//! [`Readiness::Ready`], and make the agents append their phase records to `{phases}`.

use std::{collections::BTreeMap, time::Duration};

use super::{Capture, CaptureTool, Point, Readiness, Scenario, Step, plot::PlotSpec};
use crate::{
    emulator::Impairment,
    topology::{ReferenceParams, Topology},
};

/// Every scenario, in listing order.
pub fn all() -> Vec<Scenario> {
    vec![gap_demo(), table1(), figure2()]
}

/// The scenario called `name`.
pub fn find(name: &str) -> Option<Scenario> {
    all().into_iter().find(|s| s.name == name)
}

/// Inter-node rates of Table 1, Mbit/s.
pub const TABLE1_RATES: [f64; 4] = [100.0, 2.0, 1.5, 1.0];
/// Rates of Figure 2's three curves, Mbit/s (the low rates, where the send queue matters).
pub const FIGURE2_RATES: [f64; 3] = [2.0, 1.5, 1.0];
/// Figure 2's x axis: the donor's wait before freezing, 0–1000 ms in 25 ms steps.
pub fn figure2_waits() -> impl Iterator<Item = f64> {
    (0..=40).map(|i| f64::from(i) * 25.0)
}

/// One-way delay of the client's access link in the seed scenarios.
const CLIENT_DELAY_MS: f64 = 10.0;
/// One-way delay of each router—site link.
const SITE_DELAY_MS: f64 = 1.0;

fn reference_at(rate_mbit: f64) -> Topology {
    Topology::reference(&ReferenceParams {
        nodes: 2,
        clients: 1,
        client_link: Impairment {
            delay_ms: CLIENT_DELAY_MS,
            ..Impairment::default()
        },
        site_link: Impairment {
            delay_ms: SITE_DELAY_MS,
            rate_mbit: Some(rate_mbit),
            ..Impairment::default()
        },
        plain_when_unimpaired: false,
    })
}

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
}

fn client_capture() -> Capture {
    Capture {
        tool: CaptureTool::Tshark,
        host: "client1".into(),
        interface: "eth-router".into(),
        donor: "node1".into(),
        acceptor: "node2".into(),
    }
}

/// Runnable today: the client pings node1, pauses, then pings node2; the "gap" is the pause as
/// the client's link sees it (≈ 300 ms + one RTT + process start). It exercises the runner end
/// to end: per-point topology, steps on hosts, tshark capture, gap, JSON, table.
fn gap_demo() -> Scenario {
    Scenario {
        name: "gap-demo",
        description: "Runner self-check: client pings node1, waits 300 ms, pings node2; gap = \
                      last reply from node1 → first reply from node2 on the client's link.",
        readiness: Readiness::Ready,
        runs: 3,
        points: vec![Point {
            label: "delay=10".into(),
            params: BTreeMap::from([("client_delay_ms".to_owned(), CLIENT_DELAY_MS)]),
            topology: reference_at(100.0),
        }],
        steps: vec![
            Step::Run {
                host: "client1".into(),
                argv: argv(&[
                    "ping",
                    "-6",
                    "-n",
                    "-q",
                    "-c",
                    "5",
                    "-i",
                    "0.05",
                    "{addr:node1}",
                ]),
                timeout: Duration::from_secs(10),
            },
            Step::Sleep(Duration::from_millis(300)),
            Step::Run {
                host: "client1".into(),
                argv: argv(&[
                    "ping",
                    "-6",
                    "-n",
                    "-q",
                    "-c",
                    "5",
                    "-i",
                    "0.05",
                    "{addr:node2}",
                ]),
                timeout: Duration::from_secs(10),
            },
        ],
        capture: Some(client_capture()),
        plot: None,
    }
}

const WAITING_FOR_HANDOFF: &str = "the handoff (handoffd and `handoff move`, DESIGN.md §4)";

/// One handoff of a live download from node1 (donor) to node2 (acceptor), with phase records.
/// The command lines are the expected interface of the handoff issue; adjust them there.
fn handoff_steps(wait_ms: Option<&str>) -> Vec<Step> {
    let mut moving = argv(&["handoff", "move", "--all", "--to", "{addr:node2}"]);
    if let Some(wait) = wait_ms {
        moving.extend(argv(&["--wait-ms", wait]));
    }
    vec![
        Step::Start {
            host: "node1".into(),
            argv: argv(&["handoffd", "--phases", "{phases}"]),
        },
        Step::Start {
            host: "node2".into(),
            argv: argv(&["handoffd", "--phases", "{phases}"]),
        },
        Step::Sleep(Duration::from_millis(500)),
        // A long download from the contact node, live during the handoff.
        Step::Start {
            host: "client1".into(),
            argv: argv(&[
                "curl",
                "-sS",
                "-g",
                "-o",
                "/dev/null",
                "http://[{addr:node1}]:8080/large",
            ]),
        },
        Step::Sleep(Duration::from_secs(1)),
        Step::Run {
            host: "node1".into(),
            argv: moving,
            timeout: Duration::from_secs(30),
        },
        Step::Sleep(Duration::from_secs(2)),
    ]
}

/// Table 1: the handoff's phase decomposition at inter-node rates 100, 2, 1.5 and 1 Mbit/s.
fn table1() -> Scenario {
    Scenario {
        name: "table1",
        description: "Seed Table 1: handoff phase decomposition (extraction, transfer, \
                      re-creation, RR, BU, binding, activation) at inter-node rates 100, 2, 1.5, \
                      1 Mbit/s; plus the client-perceived gap.",
        readiness: Readiness::Waiting {
            on: WAITING_FOR_HANDOFF.into(),
        },
        runs: 10,
        points: TABLE1_RATES
            .iter()
            .map(|&rate| Point {
                label: format!("rate={rate}"),
                params: BTreeMap::from([("rate_mbit".to_owned(), rate)]),
                topology: reference_at(rate),
            })
            .collect(),
        steps: handoff_steps(None),
        capture: Some(client_capture()),
        plot: Some(PlotSpec {
            x: "rate_mbit",
            series: None,
        }),
    }
}

/// Figure 2: client-perceived handoff time vs. the donor's wait before freezing, at three rates.
fn figure2() -> Scenario {
    let mut points = Vec::new();
    for &rate in &FIGURE2_RATES {
        for wait in figure2_waits() {
            points.push(Point {
                label: format!("rate={rate} wait={wait}"),
                params: BTreeMap::from([
                    ("rate_mbit".to_owned(), rate),
                    ("wait_ms".to_owned(), wait),
                ]),
                topology: reference_at(rate),
            });
        }
    }
    Scenario {
        name: "figure2",
        description: "Seed Figure 2: client-perceived handoff time vs. the donor's wait before \
                      freezing (0–1000 ms, 25 ms steps) at 2, 1.5 and 1 Mbit/s.",
        readiness: Readiness::Waiting {
            on: WAITING_FOR_HANDOFF.into(),
        },
        runs: 5,
        points,
        steps: handoff_steps(Some("{param:wait_ms}")),
        capture: Some(client_capture()),
        plot: Some(PlotSpec {
            x: "wait_ms",
            series: Some("rate_mbit"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_scenarios_are_defined_with_their_sweeps_and_wait_for_the_handoff() {
        let table1 = find("table1").unwrap();
        assert_eq!(table1.points.len(), 4);
        assert!(matches!(table1.readiness, Readiness::Waiting { .. }));
        let rates: Vec<f64> = table1
            .points
            .iter()
            .map(|p| p.params["rate_mbit"])
            .collect();
        assert_eq!(rates, TABLE1_RATES);
        let figure2 = find("figure2").unwrap();
        assert_eq!(figure2.points.len(), 3 * 41);
        assert_eq!(figure2.points[40].params["wait_ms"], 1000.0);
        assert!(matches!(figure2.readiness, Readiness::Waiting { .. }));
        // Every point's topology is valid and limits the inter-site links to its rate.
        for scenario in all() {
            for point in &scenario.points {
                let plan = point.topology.plan().unwrap();
                if let Some(rate) = point.params.get("rate_mbit") {
                    let (ab, _) = plan.link("router", "ha2").unwrap().emulation.unwrap();
                    assert_eq!(ab.rate_mbit, Some(*rate));
                }
            }
        }
        assert!(find("gap-demo").is_some_and(|s| s.readiness == Readiness::Ready));
    }

    #[test]
    fn waiting_scenarios_refuse_to_run_without_force() {
        let options = super::super::Options {
            runs: Some(1),
            out_dir: std::env::temp_dir(),
            instance: "never".into(),
            force: false,
            max_points: None,
        };
        let err = super::super::run(&find("table1").unwrap(), &options).unwrap_err();
        assert!(err.to_string().contains("waits for"), "{err}");
    }
}
