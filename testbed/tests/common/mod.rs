//! Helpers shared by the privileged integration tests.

#![allow(dead_code)]

use std::sync::{Mutex, MutexGuard};

use testbed::{
    Topology,
    topology::{HostSpec, LinkSpec},
};

/// True when running as root; otherwise says loudly that the test is skipped.
pub fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIPPED: privileged test needs root");
    false
}

/// Timing measurements of one test binary run one at a time: two emulators busy-polling at
/// once on a 2-core machine would measure each other.
pub fn measuring() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Hosts `a` and `b` joined by `link`.
pub fn two_hosts(link: LinkSpec) -> Topology {
    let host = |name: &str| HostSpec {
        name: name.into(),
        ..HostSpec::default()
    };
    Topology {
        hosts: vec![host("a"), host("b")],
        links: vec![link],
    }
}

/// An instance name unique to this test process and `tag`.
pub fn instance(tag: &str) -> String {
    format!("{tag}{}", std::process::id() % 1_000_000)
}
