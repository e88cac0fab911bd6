//! handoffd's protocol engine: the rules of the agent, apart from any input or output. Nothing
//! here touches a socket, a thread, a clock, an eBPF map or a file: the shell
//! performs the actions the engine asks for and reports their results, with the time (`now`).
//! The test `the_engine_does_no_io` holds every module here to that (their unit tests aside).
//!
//! - [`ids`]: node names, handoff numbers, runs (newtypes, encoded as the bare values);
//! - [`outcome`]: where a connection is after a handoff that did not complete;
//! - [`donor`]: the donor's side of one handoff, as a state machine;
//! - [`acceptor`]: the acceptor's side of every handoff coming to this member;
//! - [`doubt`]: the donor's copies of connections whose handoff has no known outcome;
//! - [`drain`]: a drain's plan, retries and targets left out;
//! - [`recovery`]: a restart's recovery of the handoffs its earlier run left, and the redirect
//!   check's rule;
//! - [`runs`]: which run of each peer's agent is current (late transfers of a restarted donor),
//!   and the connections taken from each.

pub mod acceptor;
pub mod donor;
pub mod doubt;
pub mod drain;
pub mod ids;
pub mod outcome;
pub mod recovery;
pub mod runs;

#[cfg(test)]
mod tests {
    /// What a module of the engine must not name: sockets and threads, the clocks, the data
    /// path's maps and the system calls behind them, files. (`core::net` has only addresses.)
    const FORBIDDEN: &[&str] = &[
        "std::net",
        "std::thread",
        "std::fs",
        "std::os",
        "std::process",
        "Instant::now",
        "SystemTime",
        "monotonic_ns",
        "aya",
        "libc",
        "nix::",
        "socket2",
        "tokio",
        "OwnedFd",
        "crate::datapath",
        "crate::tcpstate",
        "channel::",
        "seqpacket",
        "daemon",
    ];

    #[test]
    fn the_engine_does_no_io() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/agent/engine");
        let mut checked = 0;
        let mut stack = vec![dir];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                // The tests of a module may use the clock (and this one names what it forbids).
                if path.ends_with("tests.rs") {
                    continue;
                }
                let code = text.split("#[cfg(test)]").next().unwrap_or_default();
                for word in FORBIDDEN {
                    assert!(
                        !code.contains(word),
                        "{} names {word}: the engine does no I/O",
                        path.display()
                    );
                }
                checked += 1;
            }
        }
        assert!(checked >= 3, "only {checked} engine files found");
    }
}
