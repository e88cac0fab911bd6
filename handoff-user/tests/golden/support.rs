//! Golden-packet cases shared by the golden test and the data-path benchmark: the addresses of
//! `packets.py`, its frames, and the map state each program group expects.

// Each includer (a test, a benchmark) uses a different subset.
#![allow(dead_code)]

use std::{collections::HashMap, net::Ipv6Addr, path::Path, process::Command};

use handoff_common::{Addr, FlowKey, NODE_REVERSE_TUNNEL, NodeConfig};
use handoff_user::datapath::{Datapath, Program};

pub const CLIENT: &str = "2001:db8:c::1";
pub const DSA: &str = "2001:db8:d5a::1";
pub const NODE1: &str = "2001:db8:1::10";
pub const NODE2: &str = "2001:db8:2::20";
pub const HA: &str = "2001:db8:a::1";
pub const OTHER: &str = "2001:db8:e::99";

pub fn addr(text: &str) -> Addr {
    text.parse::<Ipv6Addr>().expect("test address").octets()
}

pub fn flow(src: &str, sport: u16, dst: &str, dport: u16) -> FlowKey {
    FlowKey::new((text_ip(src), sport).into(), (text_ip(dst), dport).into())
}

pub fn text_ip(text: &str) -> std::net::IpAddr {
    text.parse().expect("test address")
}

/// The golden frames: case → (input, expected output or None for "unchanged").
pub fn golden_frames() -> HashMap<String, (Vec<u8>, Option<Vec<u8>>)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/packets.py");
    // Debian's interpreter: python3-scapy is installed for it, not for other pythons on PATH.
    let out = Command::new("/usr/bin/python3")
        .arg(&script)
        .output()
        .expect("run /usr/bin/python3 (python3-scapy comes with `cargo xtask setup`)");
    assert!(
        out.status.success(),
        "{}: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let cases: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&out.stdout).expect("JSON from packets.py");
    let hex = |value: &serde_json::Value| -> Option<Vec<u8>> {
        let text = value.as_str()?;
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
            .collect()
    };
    cases
        .iter()
        .map(|(name, case)| {
            let input = hex(&case["input"]).expect("input hex");
            (name.clone(), (input, hex(&case["expected"])))
        })
        .collect()
}

/// Programs one Datapath with the state every case group expects.
pub fn configure(datapath: &mut Datapath, program: Program) {
    let maps = datapath.maps();
    let local = match program {
        Program::HaIngress => addr(HA),
        _ => addr(NODE1),
    };
    maps.set_config(NodeConfig {
        local,
        home_agent: addr(HA),
        flags: NODE_REVERSE_TUNNEL,
    })
    .unwrap();
}

pub fn seed_maps(datapath: &mut Datapath) {
    let maps = datapath.maps();
    maps.set_local_home(addr(DSA), true).unwrap();
    maps.freeze()
        .redirect(flow(CLIENT, 40001, DSA, 80), addr(NODE2))
        .unwrap();
    maps.freeze().freeze(flow(CLIENT, 40002, DSA, 80)).unwrap();
    maps.bindings()
        .set_route_optimized(addr(CLIENT), addr(DSA), Some(addr(NODE1)))
        .unwrap();
    maps.bindings()
        .set_tunnel(addr(DSA), Some(addr(NODE1)))
        .unwrap();
    maps.bindings()
        .set_correspondent(addr(DSA), Some(addr(NODE1)))
        .unwrap();
}
