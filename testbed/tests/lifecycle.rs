//! `dsl-testbed up` / `down` leave nothing behind — namespaces, processes, pins, state, links —
//! also when the daemon or the `up` runner is killed with SIGKILL.

mod common;

use std::{
    collections::BTreeSet,
    fs,
    path::Path,
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{instance, is_root};
use testbed::lifecycle::{self, State};

const EXE: &str = env!("CARGO_BIN_EXE_dsl-testbed");

fn testbed(instance: &str, args: &[&str]) -> Output {
    let output = Command::new(EXE)
        .arg("--instance")
        .arg(instance)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    eprintln!(
        "dsl-testbed {args:?}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn up(instance: &str) -> State {
    let output = testbed(instance, &["up", "--json"]);
    assert!(output.status.success());
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Interfaces of the root namespace: a testbed must never add any.
fn root_links() -> BTreeSet<String> {
    fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Starts a process that outlives `exec` inside `host`: the kind of leftover `down` must find.
fn leave_a_process(instance: &str, host: &str) {
    let output = testbed(
        instance,
        &[
            "exec",
            host,
            "--",
            "sh",
            "-c",
            "sleep 600 >/dev/null 2>&1 &",
        ],
    );
    assert!(output.status.success());
}

/// Pinned-map directories as handoff-user would create them (if bpffs is mounted).
fn leave_pins(instance: &str, state: &State) -> Vec<std::path::PathBuf> {
    let root = Path::new("/sys/fs/bpf/dsl");
    let dirs = vec![root.join(instance), root.join(&state.hosts["node1"])];
    dirs.into_iter()
        .filter(|dir| fs::create_dir_all(dir).is_ok())
        .collect()
}

fn assert_clean(
    instance: &str,
    inodes: &BTreeSet<u64>,
    pins: &[std::path::PathBuf],
    links: &BTreeSet<String>,
) {
    assert_eq!(
        lifecycle::instance_namespaces(instance),
        Vec::<String>::new()
    );
    assert_eq!(
        lifecycle::processes_in(inodes),
        Vec::<u32>::new(),
        "processes left"
    );
    assert_eq!(
        lifecycle::daemon_pids(instance),
        Vec::<u32>::new(),
        "daemon left"
    );
    assert!(
        !Path::new(lifecycle::RUN_ROOT).join(instance).exists(),
        "state left"
    );
    for pin in pins {
        assert!(!pin.exists(), "{} left", pin.display());
    }
    assert_eq!(&root_links(), links, "root namespace links changed");
}

#[test]
fn privileged_up_then_down_leaves_nothing_behind() {
    if !is_root() {
        return;
    }
    let instance = instance("lc");
    let links = root_links();
    let state = up(&instance);
    assert_eq!(state.hosts.len(), 6);
    assert_eq!(state.wires.len(), 3);
    // Idempotent: a second `up` finds the same daemon.
    assert_eq!(up(&instance).daemon_pid, state.daemon_pid);
    // The testbed works: the client reaches node2's loopback through router and ha2.
    let ping = testbed(
        &instance,
        &[
            "exec",
            "client1",
            "--",
            "ping",
            "-6",
            "-c",
            "1",
            "-W",
            "5",
            "fd00:d51:ff::6",
        ],
    );
    assert!(ping.status.success());
    leave_a_process(&instance, "node1");
    let pins = leave_pins(&instance, &state);
    let inodes: BTreeSet<u64> = state.netns_inodes.iter().copied().collect();
    assert!(
        !lifecycle::processes_in(&inodes).is_empty(),
        "the leftover process is not seen"
    );

    let down = testbed(&instance, &["down", "--json"]);
    assert!(down.status.success());
    let report: serde_json::Value = serde_json::from_slice(&down.stdout).unwrap();
    assert_eq!(
        report["daemons"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );
    assert_clean(&instance, &inodes, &pins, &links);
    // Idempotent: nothing left to do.
    let again = testbed(&instance, &["down", "--json"]);
    assert!(again.status.success());
    let report: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(report["state_dir"], false, "{report}");
}

#[test]
fn privileged_down_cleans_up_after_sigkill() {
    if !is_root() {
        return;
    }
    let links = root_links();

    // 1. The daemon killed once the testbed is up, with a process left inside.
    let instance = instance("kill");
    let state = up(&instance);
    leave_a_process(&instance, "router");
    let pins = leave_pins(&instance, &state);
    let inodes: BTreeSet<u64> = state.netns_inodes.iter().copied().collect();
    Command::new("kill")
        .args(["-KILL", &state.daemon_pid.to_string()])
        .status()
        .unwrap();
    let started = Instant::now();
    while lifecycle::is_alive(state.daemon_pid) && started.elapsed() < Duration::from_secs(5) {
        thread::sleep(Duration::from_millis(20));
    }
    assert!(!lifecycle::is_alive(state.daemon_pid));
    // Leftovers exist (so the checks below can fail): names and the process inside.
    assert!(!lifecycle::instance_namespaces(&instance).is_empty());
    assert!(!lifecycle::processes_in(&inodes).is_empty());
    let status = testbed(&instance, &["status"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("daemon dead"));
    assert!(testbed(&instance, &["down"]).status.success());
    assert_clean(&instance, &inodes, &pins, &links);

    // 2. The `up` runner and its daemon killed in the middle of building.
    let instance = format!("{instance}b");
    let mut runner = Command::new(EXE)
        .args(["--instance", &instance, "up"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while lifecycle::instance_namespaces(&instance).len() < 2
        && started.elapsed() < Duration::from_secs(10)
    {
        thread::sleep(Duration::from_millis(5));
    }
    runner.kill().unwrap();
    runner.wait().unwrap();
    for pid in lifecycle::daemon_pids(&instance) {
        Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
    }
    let inodes: BTreeSet<u64> = lifecycle::instance_namespaces(&instance)
        .iter()
        .filter_map(|name| fs::metadata(Path::new("/run/netns").join(name)).ok())
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .collect();
    assert!(!inodes.is_empty(), "the build was not caught half-way");
    assert!(testbed(&instance, &["down"]).status.success());
    assert_clean(&instance, &inodes, &[], &links);
}
