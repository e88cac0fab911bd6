//! The scenario runner end to end: the runnable demonstration scenario builds the reference
//! topology, runs commands on the client, captures with tshark, finds the gap, writes JSON.

mod common;

use common::{instance, is_root, measuring};
use testbed::scenario;

#[test]
fn privileged_gap_demo_measures_the_pause_between_two_servers() {
    if !is_root() {
        return;
    }
    let _lock = measuring();
    let out_dir = std::env::temp_dir().join(format!("dsl-scenario-{}", std::process::id()));
    let options = scenario::Options {
        runs: Some(2),
        out_dir: out_dir.clone(),
        instance: instance("sc"),
        force: false,
        max_points: None,
    };
    let outcome = scenario::run(&scenario::find("gap-demo").unwrap(), &options).unwrap();
    eprint!("{}", scenario::table(&outcome));
    assert_eq!(outcome.runs.len(), 2);
    // The pause is 300 ms of sleep plus one client—node2 RTT (2 × (10 + 1) ms) plus starting ping;
    // never less than the sleep and the RTT together.
    for run in &outcome.runs {
        let gap = run.gap_ms.expect("a gap in the capture");
        assert!((322.0..800.0).contains(&gap), "gap {gap} ms");
    }
    let json = std::fs::read_to_string(out_dir.join("gap-demo.json")).unwrap();
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["runs"].as_array().map(Vec::len), Some(2));

    // The same with the in-process capture instead of tshark.
    let mut in_process = scenario::find("gap-demo").unwrap();
    if let Some(capture) = in_process.capture.as_mut() {
        capture.tool = scenario::CaptureTool::InProcess;
    }
    let options = scenario::Options {
        runs: Some(1),
        ..options
    };
    let outcome = scenario::run(&in_process, &options).unwrap();
    let gap = outcome.runs[0]
        .gap_ms
        .expect("a gap in the in-process capture");
    assert!((322.0..800.0).contains(&gap), "gap {gap} ms");
    let _ = std::fs::remove_dir_all(&out_dir);
}
